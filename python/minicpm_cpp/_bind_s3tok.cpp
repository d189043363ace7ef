// Python bindings for the S3Tokenizer v2 component (voice cloning: reference audio -> speech
// tokens) and its 128-bin log-mel. Conversion and validation only.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "minicpm/minicpm.h"
#include "models/s3tok.h"
#include "preprocess/s3_mel.h"

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

[[noreturn]] void invalid(const std::string & msg) { throw Error(ErrorKind::InvalidArgument, msg); }

std::vector<float> pcm_of(const py::handle & obj) {
    if (!py::isinstance<py::array>(obj)) {
        invalid(std::string("pcm must be a 1-D numpy float32 array, got ") + Py_TYPE(obj.ptr())->tp_name);
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<float>())) {
        invalid("pcm must have dtype float32, got " + py::str(a.dtype()).cast<std::string>());
    }
    if (a.ndim() != 1) invalid("pcm must be 1-D (mono samples), got " + std::to_string(a.ndim()) + " dimensions");
    auto c = py::array_t<float, py::array::c_style>::ensure(a);
    if (!c) throw py::error_already_set();
    return std::vector<float>(c.data(), c.data() + c.size());
}

py::array_t<float> matrix(const std::vector<float> & v, py::ssize_t rows, py::ssize_t cols) {
    py::array_t<float> out({rows, cols});
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
    return out;
}

py::array_t<int32_t> ints(const std::vector<int32_t> & v) {
    py::array_t<int32_t> out((py::ssize_t) v.size());
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(int32_t));
    return out;
}

class PyS3Tokenizer {
public:
    PyS3Tokenizer(const std::string & path, const std::string & device, int n_threads) {
        if (n_threads < 0) invalid("n_threads must be >= 0");
        file_ = std::make_unique<GgufFile>(path);
        if (!kS3TokComponent.present(*file_)) throw Error(ErrorKind::Format, path + " has no S3Tokenizer (s3.* tensors)");
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        devices_ = std::make_unique<Devices>(device, n_threads);
        auto c = kS3TokComponent.load(ComponentLoad{*file_, *devices_, params});
        model_.reset(static_cast<S3TokModel *>(c.release()));
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        tok_ = std::make_unique<S3Tokenizer>(*model_, *backends_);
    }

    py::dict hparams() const {
        const S3Hparams & h = model_->hp;
        py::dict d;
        d["n_mels"] = h.n_mels;
        d["n_state"] = h.n_state;
        d["n_head"] = h.n_head;
        d["n_layer"] = h.n_layer;
        d["n_ff"] = h.n_ff;
        d["fsmn_kernel"] = h.fsmn_kernel;
        d["rope_dim"] = h.rope_dim;
        d["fsq_levels"] = h.fsq_levels;
        d["fsq_dim"] = h.fsq_dim;
        d["sample_rate"] = h.sample_rate;
        d["token_rate"] = h.token_rate;
        d["window_s"] = h.window_s;
        d["overlap_s"] = h.overlap_s;
        d["device"] = backends_->main_name();
        return d;
    }

    py::array_t<int32_t> tokens(const py::handle & pcm) {
        std::vector<float>   x = pcm_of(pcm);
        std::vector<int32_t> out;
        {
            py::gil_scoped_release nogil;
            out = tok_->tokens(x.data(), x.size());
        }
        return ints(out);
    }

    // (tokens, FSQ inputs [sum of window tokens, fsq_dim])
    py::tuple tokens_from_mel(const py::handle & mel) {
        auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(mel);
        if (!a || a.ndim() != 2 || a.shape(0) != model_->hp.n_mels) {
            invalid("mel must be a float32 array of shape [" + std::to_string(model_->hp.n_mels) + ", frames]");
        }
        std::vector<float> m(a.data(), a.data() + a.size()), proj;
        std::vector<int32_t> out;
        {
            py::gil_scoped_release nogil;
            out = tok_->tokens_from_mel(m.data(), (int64_t) a.shape(1), &proj);
        }
        const py::ssize_t D = (py::ssize_t) model_->hp.fsq_dim;
        return py::make_tuple(ints(out), matrix(proj, (py::ssize_t) proj.size() / D, D));
    }

private:
    std::unique_ptr<GgufFile>        file_;
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<S3TokModel>      model_;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<S3Tokenizer>     tok_;
};

} // namespace

void bind_s3tok(py::module_ & mod) {
    mod.def("s3_log_mel", [](const py::object & pcm, int n_mels, int n_threads) {
        std::vector<float> x = pcm_of(pcm);
        MelFeatures        m;
        {
            py::gil_scoped_release nogil;
            m = s3_log_mel(x.data(), x.size(), n_mels, n_threads);
        }
        return matrix(m.data, n_mels, m.n_frames);
    }, py::arg("pcm"), py::arg("n_mels") = 128, py::arg("n_threads") = 1,
       "S3Tokenizer's log-mel of 16 kHz mono float32 PCM: [n_mels, len // 160] (s3tokenizer.log_mel_spectrogram).");
    mod.def("s3_mel_filters", [](int n_mels) { return matrix(s3_mel_filters(n_mels), n_mels, 201); },
            py::arg("n_mels") = 128);
    // Raw bytes of one tensor of a GGUF file (an embedded file such as spk.campplus.onnx), read
    // through the validated mapping; None when the file has no such tensor.
    mod.def("gguf_tensor_bytes", [](const std::string & path, const std::string & name) -> py::object {
        GgufFile f(path);
        const TensorInfo * t = f.find_tensor(name);
        if (!t) return py::none();
        return py::bytes(reinterpret_cast<const char *>(f.mapping().data() + t->offset), t->nbytes);
    }, py::arg("path"), py::arg("name"));
    mod.def("gguf_has_tensor", [](const std::string & path, const std::string & name) {
        GgufFile f(path);
        return f.find_tensor(name) != nullptr;
    }, py::arg("path"), py::arg("name"), py::call_guard<py::gil_scoped_release>());
    py::class_<PyS3Tokenizer>(mod, "S3Tokenizer")
        .def(py::init<const std::string &, const std::string &, int>(), py::arg("path"), py::arg("device") = "auto",
             py::arg("n_threads") = 0, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyS3Tokenizer::hparams)
        .def("tokens", &PyS3Tokenizer::tokens, py::arg("pcm"))
        .def("tokens_from_mel", &PyS3Tokenizer::tokens_from_mel, py::arg("mel"));
}
