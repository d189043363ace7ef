// Python bindings for the Token2Wav vocoder (original HiFT) of a loaded model: conversion and
// validation only.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "minicpm/minicpm.h"
#include "models/hift.h"
#include "runtime/model_impl.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

// The vocoder's compute state for one owner, over the component a Model loaded.
class PyVocoder {
public:
    PyVocoder(std::shared_ptr<Model> model, int n_threads) : model_(std::move(model)) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        const auto & comps = model_->impl().components;
        auto it = comps.find("hift");
        if (it == comps.end()) {
            throw Error(ErrorKind::Unsupported, "the model has no vocoder (convert a MiniCPM-o 4.5 checkpoint with "
                                                "assets/token2wav/hift_original.pt)");
        }
        hift_ = static_cast<const HiftModel *>(it->second.get());
        backends_ = std::make_unique<ComputeBackends>(*model_->impl().devices, n_threads);
        vocoder_ = std::make_unique<Vocoder>(*hift_, *backends_);
    }

    // The vocoder component alone from one GGUF file (ours, or llama.cpp-omni's hifigan2.gguf).
    PyVocoder(const std::string & path, const std::string & device, int n_threads) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        file_ = std::make_unique<GgufFile>(path);
        if (!kHiftComponent.present(*file_)) {
            throw Error(ErrorKind::Format, path + " has no vocoder (hift.* tensors, or llama.cpp-omni's hifigan2.gguf)");
        }
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        devices_ = std::make_unique<Devices>(device, n_threads);
        own_ = kHiftComponent.load(ComponentLoad{*file_, *devices_, params});
        hift_ = static_cast<const HiftModel *>(own_.get());
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        vocoder_ = std::make_unique<Vocoder>(*hift_, *backends_);
    }

    py::dict hparams() const {
        const HiftHparams & h = hift_->hp;
        py::dict d;
        d["omni_layout"] = h.omni_layout;
        d["sample_rate"] = h.sample_rate;
        d["n_mel"] = h.n_mel;
        d["base_channels"] = h.base;
        d["n_harmonics"] = h.n_harmonics;
        d["n_f0_layers"] = h.n_f0_layers;
        d["upsample_rates"] = h.up_rates;
        d["upsample_kernel_sizes"] = h.up_kernels;
        d["n_fft"] = h.n_fft;
        d["hop"] = h.hop;
        d["samples_per_frame"] = h.upsample_scale();
        d["resblock_kernel_sizes"] = h.rb_kernels;
        d["resblock_dilation_sizes"] = h.rb_dilations;
        d["source_resblock_kernel_sizes"] = h.srb_kernels;
        d["source_resblock_dilation_sizes"] = h.srb_dilations;
        d["sine_amp"] = h.sine_amp;
        d["noise_std"] = h.noise_std;
        d["voiced_threshold"] = h.voiced_threshold;
        d["lrelu_slope"] = h.lrelu_slope;
        d["post_lrelu_slope"] = h.post_lrelu_slope;
        d["audio_limit"] = h.audio_limit;
        d["magnitude_clip"] = h.magnitude_clip;
        d["device"] = backends_->main_name();
        return d;
    }

    // (wav [L], f0 [T], source [L])
    py::tuple vocode(const py::handle & mel, uint64_t seed, bool add_noise, const py::object & noise,
                     const py::object & phases, const py::object & f0) {
        const int64_t n_mel = hift_->hp.n_mel;
        auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(mel);
        if (!a || a.ndim() != 2 || a.shape(0) != n_mel) {
            throw Error(ErrorKind::InvalidArgument,
                        "mel must be a float32 array of shape [" + std::to_string(n_mel) + ", frames]");
        }
        VocodeOptions opt;
        opt.seed = seed;
        opt.add_noise = add_noise;
        opt.noise = floats(noise, "noise");
        opt.phases = floats(phases, "phases");
        opt.f0 = floats(f0, "f0");
        std::vector<float> in(a.data(), a.data() + a.size());
        VocodeResult r;
        {
            py::gil_scoped_release nogil;
            r = vocoder_->vocode(in.data(), (int64_t) a.shape(1), opt);
        }
        return py::make_tuple(arr(r.wav), arr(r.f0), arr(r.source));
    }

private:
    static std::vector<float> floats(const py::object & o, const char * what) {
        if (o.is_none()) return {};
        auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(o);
        if (!a) throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a float array");
        if (a.size() == 0) throw Error(ErrorKind::InvalidArgument, std::string(what) + " is empty");
        return std::vector<float>(a.data(), a.data() + a.size());
    }
    static py::array_t<float> arr(const std::vector<float> & v) {
        py::array_t<float> out((py::ssize_t) v.size());
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }

    std::shared_ptr<Model>           model_;
    std::unique_ptr<GgufFile>        file_;      // (file-only handle)
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<Component>       own_;
    const HiftModel *                hift_ = nullptr;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<Vocoder>         vocoder_;
};

} // namespace

void bind_hift(py::module_ & mod) {
    py::class_<PyVocoder>(mod, "Vocoder")
        .def(py::init<std::shared_ptr<Model>, int>(), py::arg("model"), py::arg("n_threads") = 0,
             py::call_guard<py::gil_scoped_release>())
        .def(py::init<const std::string &, const std::string &, int>(), py::arg("path"), py::arg("device") = "auto",
             py::arg("n_threads") = 0, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyVocoder::hparams)
        .def("vocode", &PyVocoder::vocode, py::arg("mel"), py::arg("seed") = 0, py::arg("add_noise") = true,
             py::arg("noise") = py::none(), py::arg("phases") = py::none(), py::arg("f0") = py::none());
}
