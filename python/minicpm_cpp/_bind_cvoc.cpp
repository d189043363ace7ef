// Python bindings for the streaming Token2Wav vocoder (CosyVoice3 CausalHiFTGenerator) of a loaded
// model: one stream per object; conversion and validation only.
#include "core/backend.h"
#include "core/error.h"
#include "minicpm/minicpm.h"
#include "models/causal_vocoder.h"
#include "runtime/model_impl.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

class PyCausalVocoder {
public:
    PyCausalVocoder(std::shared_ptr<Model> model, int n_threads) : model_(std::move(model)) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        const auto & comps = model_->impl().components;
        auto it = comps.find("cvoc");
        if (it == comps.end()) {
            throw Error(ErrorKind::Unsupported, "the model has no streaming vocoder (convert a MiniCPM-o 4.5 checkpoint "
                                                "with assets/token2wav/hift.pt and config.yaml)");
        }
        cv_ = static_cast<const CausalVocoderModel *>(it->second.get());
        backends_ = std::make_unique<ComputeBackends>(*model_->impl().devices, n_threads);
        vocoder_ = std::make_unique<CausalVocoder>(*cv_, *backends_);
    }

    py::dict hparams() const {
        const CvocHparams & h = cv_->hp;
        py::dict d;
        d["sample_rate"] = h.sample_rate;
        d["n_mel"] = h.n_mel;
        d["base_channels"] = h.base;
        d["n_harmonics"] = h.n_harmonics;
        d["n_f0_layers"] = h.n_f0_layers;
        d["f0_kernels"] = h.f0_kernels;
        d["upsample_rates"] = h.up_rates;
        d["upsample_kernel_sizes"] = h.up_kernels;
        d["n_fft"] = h.n_fft;
        d["hop"] = h.hop;
        d["samples_per_frame"] = h.samples_per_frame();
        d["resblock_kernel_sizes"] = h.rb_kernels;
        d["resblock_dilation_sizes"] = h.rb_dilations;
        d["source_resblock_kernel_sizes"] = h.srb_kernels;
        d["source_resblock_dilation_sizes"] = h.srb_dilations;
        d["conv_pre_look_right"] = h.look_right;
        d["f0_left_frames"] = h.f0_left;
        d["f0_right_frames"] = h.f0_right;
        d["decoder_history_frames"] = h.history;
        d["delay_frames"] = h.delay_frames();
        d["block_frames"] = h.block_frames;
        d["noise_table_rows"] = h.noise_table_rows;
        d["sine_amp"] = h.sine_amp;
        d["noise_std"] = h.noise_std;
        d["voiced_threshold"] = h.voiced_threshold;
        d["audio_limit"] = h.audio_limit;
        d["device"] = backends_->main_name();
        return d;
    }

    void reset(uint64_t seed, const py::object & table, bool prefix_silence) {
        CvocNoise nz;
        nz.seed = seed;
        if (!table.is_none()) {
            auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(table);
            const int64_t H = cv_->hp.n_sines();
            if (!a || a.ndim() != 2 || a.shape(1) != H || a.shape(0) < 1) {
                throw Error(ErrorKind::InvalidArgument,
                            "noise must be a float32 array of shape [rows >= 1, " + std::to_string(H) + "]");
            }
            nz.rows = (int64_t) a.shape(0);
            nz.table = std::make_shared<const std::vector<float>>(a.data(), a.data() + a.size());
        }
        py::gil_scoped_release nogil;
        vocoder_->reset(nz, prefix_silence);
    }

    py::array_t<float> push(const py::handle & mel, bool last) {
        const int64_t n_mel = cv_->hp.n_mel;
        auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(mel);
        if (!a || a.ndim() != 2 || a.shape(0) != n_mel) {
            throw Error(ErrorKind::InvalidArgument,
                        "mel must be a float32 array of shape [" + std::to_string(n_mel) + ", frames]");
        }
        std::vector<float> in(a.data(), a.data() + a.size());
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = vocoder_->push(in.data(), (int64_t) a.shape(1), last);
        }
        py::array_t<float> r((py::ssize_t) out.size());
        if (!out.empty()) std::memcpy(r.mutable_data(), out.data(), out.size() * sizeof(float));
        return r;
    }

    void set_record(bool on) { vocoder_->set_record(on); }
    py::array_t<float> recorded_f0() const { return arr(vocoder_->recorded_f0()); }
    py::array_t<float> recorded_source() const { return arr(vocoder_->recorded_source()); }
    static py::array_t<float> arr(const std::vector<float> & v) {
        py::array_t<float> r((py::ssize_t) v.size());
        if (!v.empty()) std::memcpy(r.mutable_data(), v.data(), v.size() * sizeof(float));
        return r;
    }

    bool finalized() const { return vocoder_->finalized(); }
    int64_t frames_received() const { return vocoder_->frames_received(); }
    int64_t samples_emitted() const { return vocoder_->samples_emitted(); }

private:
    std::shared_ptr<Model>           model_;
    const CausalVocoderModel *       cv_ = nullptr;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<CausalVocoder>   vocoder_;
};

} // namespace

void bind_cvoc(py::module_ & mod) {
    py::class_<PyCausalVocoder>(mod, "CausalVocoder")
        .def(py::init<std::shared_ptr<Model>, int>(), py::arg("model"), py::arg("n_threads") = 0,
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyCausalVocoder::hparams)
        .def("reset", &PyCausalVocoder::reset, py::arg("seed") = 0, py::arg("noise") = py::none(),
             py::arg("prefix_silence") = true)
        .def("push", &PyCausalVocoder::push, py::arg("mel"), py::arg("last") = false)
        .def_property("record", [](const PyCausalVocoder &) { return false; }, &PyCausalVocoder::set_record)
        .def_property_readonly("recorded_f0", &PyCausalVocoder::recorded_f0)
        .def_property_readonly("recorded_source", &PyCausalVocoder::recorded_source)
        .def_property_readonly("finalized", &PyCausalVocoder::finalized)
        .def_property_readonly("frames_received", &PyCausalVocoder::frames_received)
        .def_property_readonly("samples_emitted", &PyCausalVocoder::samples_emitted);
}
