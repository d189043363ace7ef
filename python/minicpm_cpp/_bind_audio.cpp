// Python bindings for the audio component: a test/benchmark handle on the Whisper encoder,
// projector and pooling of one GGUF file (ours, or llama.cpp-omni's audio file). Conversion and
// validation only.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "minicpm/minicpm.h"
#include "models/audio.h"

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

class PyAudioModel {
public:
    PyAudioModel(const std::string & path, const std::string & device, int n_threads, bool profile_ops,
                 std::optional<bool> fuse_qkv, std::optional<bool> fold_norms) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        file_ = std::make_unique<GgufFile>(path);
        if (!kAudioComponent.present(*file_)) throw Error(ErrorKind::Format, path + " has no MiniCPM-o audio encoder");
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        params.fuse_qkv = fuse_qkv;
        params.audio_fold_norms = fold_norms;
        devices_ = std::make_unique<Devices>(device, n_threads);
        auto c = kAudioComponent.load(ComponentLoad{*file_, *devices_, params});
        model_.reset(static_cast<AudioModel *>(c.release()));
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        DebugOptions debug;
        debug.profile_ops = profile_ops;
        encoder_ = std::make_unique<AudioEncoder>(*model_, *backends_, debug);
    }

    py::dict hparams() const {
        const AudioHparams & h = model_->hp;
        py::dict d;
        d["n_embd"] = h.n_embd;
        d["n_ff"] = h.n_ff;
        d["n_head"] = h.n_head;
        d["n_layer"] = h.n_layer;
        d["n_mel"] = h.n_mel;
        d["n_pos"] = h.n_pos;
        d["proj_dim"] = h.proj_dim;
        d["pool_step"] = h.pool_step;
        d["chunk_frames"] = h.chunk_frames;
        d["omni_layout"] = h.omni_layout;
        d["exact"] = model_->exact;
        d["flash"] = model_->flash;
        d["fused_qkv"] = model_->fused_qkv;
        d["folded_norms"] = model_->folded_norms;
        d["device"] = backends_->main_name();
        return d;
    }

    // (embeddings [N, D], states [C, E])
    py::tuple encode(const py::handle & mel, int64_t batch_frames, bool chunked, bool want_states) {
        auto [data, n] = to_mel(mel);
        std::vector<float> states, out;
        {
            py::gil_scoped_release nogil;
            out = encoder_->encode(data.data(), n, batch_frames, chunked, want_states ? &states : nullptr);
        }
        return py::make_tuple(rows(out, model_->hp.proj_dim), rows(states, model_->hp.n_embd));
    }

    py::tuple encode_stream(const py::handle & mel, bool extra_context, int prefix, int suffix, bool want_states) {
        auto [data, n] = to_mel(mel);
        std::vector<float> states, out;
        {
            py::gil_scoped_release nogil;
            out = encoder_->encode_stream(data.data(), n, extra_context, prefix, suffix, want_states ? &states : nullptr);
        }
        return py::make_tuple(rows(out, model_->hp.proj_dim), rows(states, model_->hp.n_embd));
    }

    void reset_stream() { encoder_->reset_stream(); }
    int64_t stream_frames() const { return encoder_->stream_frames(); }

private:
    std::pair<std::vector<float>, int64_t> to_mel(const py::handle & h) const {
        auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(h);
        if (!a || a.ndim() != 2 || a.shape(0) != model_->hp.n_mel) {
            throw Error(ErrorKind::InvalidArgument, "mel must be a float32 array of shape [" +
                                                        std::to_string(model_->hp.n_mel) + ", frames]");
        }
        return {std::vector<float>(a.data(), a.data() + a.size()), (int64_t) a.shape(1)};
    }
    static py::array_t<float> rows(const std::vector<float> & v, int64_t width) {
        const py::ssize_t n = width > 0 ? (py::ssize_t) (v.size() / (size_t) width) : 0;
        py::array_t<float> out({n, (py::ssize_t) width});
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }

    std::unique_ptr<GgufFile>        file_;
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<AudioModel>      model_;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<AudioEncoder>    encoder_;
};

} // namespace

void bind_audio(py::module_ & mod) {
    py::class_<PyAudioModel>(mod, "AudioModel")
        .def(py::init<const std::string &, const std::string &, int, bool, std::optional<bool>, std::optional<bool>>(),
             py::arg("path"), py::arg("device") = "auto", py::arg("n_threads") = 0, py::arg("profile_ops") = false,
             py::arg("fuse_qkv") = py::none(), py::arg("fold_norms") = py::none(), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyAudioModel::hparams)
        .def("encode", &PyAudioModel::encode, py::arg("mel"), py::arg("batch_frames") = 0, py::arg("chunked") = true,
             py::arg("states") = true)
        .def("encode_stream", &PyAudioModel::encode_stream, py::arg("mel"), py::arg("extra_context") = false,
             py::arg("prefix") = 0, py::arg("suffix") = 0, py::arg("states") = true)
        .def("reset_stream", &PyAudioModel::reset_stream)
        .def_property_readonly("stream_frames", &PyAudioModel::stream_frames);
}
