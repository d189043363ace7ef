// Python bindings for Token2Wav's flow-matching model (models/flow.h): a compute state over a
// loaded Model's "flow" component, with the stages for tests and custom pipelines. Conversion
// and validation only; arrays are frames-major ([frames, channels]) as in the C++ API.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "minicpm/minicpm.h"
#include "models/flow.h"
#include "runtime/model_impl.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

class PyFlow {
public:
    PyFlow(std::shared_ptr<Model> model, int n_threads) : model_(std::move(model)) {
        if (!model_) throw Error(ErrorKind::InvalidArgument, "token2wav: no model");
        check_n_threads(n_threads);
        auto & comps = model_->impl().components;
        auto it = comps.find("flow");
        if (it == comps.end()) {
            throw Error(ErrorKind::Unsupported, "the model has no Token2Wav flow-matching weights (t2w.flow.*): convert a "
                                                "MiniCPM-o 4.5 checkpoint with its assets/token2wav folder");
        }
        flow_ = static_cast<const FlowModel *>(it->second.get());
        // n_threads 0: the model's thread count (its own default when that is 0 too)
        backends_ = std::make_unique<ComputeBackends>(*model_->impl().devices,
                                                      n_threads > 0 ? n_threads : model_->params().n_threads);
        runner_ = std::make_unique<FlowRunner>(*flow_, *backends_);
    }

    // The flow component alone from one GGUF file (tests, tools): no LLM needed.
    PyFlow(const std::string & path, const std::string & device, int n_threads) {
        check_n_threads(n_threads);
        file_ = std::make_unique<GgufFile>(path);
        if (!kFlowComponent.present(*file_)) {
            throw Error(ErrorKind::Format, path + " has no Token2Wav flow model (t2w.flow.*, or llama.cpp-omni's "
                                                  "flow_matching.gguf)");
        }
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        devices_ = std::make_unique<Devices>(device, n_threads);
        own_ = kFlowComponent.load(ComponentLoad{*file_, *devices_, params});
        flow_ = static_cast<const FlowModel *>(own_.get());
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        runner_ = std::make_unique<FlowRunner>(*flow_, *backends_);
    }

    py::dict hparams() const {
        const FlowHparams & h = flow_->hp;
        py::dict d;
        d["omni_layout"] = h.omni_layout;
        d["vocab_size"] = h.n_vocab;
        d["n_mel"] = h.n_mel;
        d["spk_embed_dim"] = h.n_spk;
        d["encoder_width"] = h.n_embd;
        d["encoder_heads"] = h.n_head;
        d["num_blocks"] = h.n_blocks;
        d["num_up_blocks"] = h.n_up_blocks;
        d["pre_lookahead_len"] = h.lookahead;
        d["up_rate"] = h.up_stride;
        d["dit_width"] = h.dit_embd;
        d["dit_depth"] = h.dit_depth;
        d["dit_heads"] = h.dit_head;
        d["cfg_rate"] = h.cfg_rate;
        d["n_timesteps"] = h.n_timesteps;
        d["device"] = backends_->main_name();
        return d;
    }

    py::tuple encode(const py::handle & tokens, const py::handle & spk) {
        const std::vector<int32_t> t = to_tokens(tokens, "tokens");
        const std::vector<float> s = spk.is_none() ? std::vector<float>() : to_vector(spk, flow_->hp.n_spk, "spk");
        std::vector<float> mu, spk80;
        {
            py::gil_scoped_release nogil;
            mu = runner_->encode(t, s, &spk80);
        }
        return py::make_tuple(frames(mu, 1), rows(spk80));
    }

    FloatArray dit(const py::handle & x, const py::handle & mu, const py::handle & spk, const py::handle & cond,
                   float t) {
        std::vector<float> xv = to_frames(x, "x"), mv = to_frames(mu, "mu"), cv = to_frames(cond, "cond");
        std::vector<float> sv = to_vector(spk, flow_->hp.n_mel, "spk");
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = runner_->dit(xv, mv, sv, cv, t);
        }
        return frames(out, 2);
    }

    FloatArray solve(const py::handle & noise, const py::handle & mu, const py::handle & spk, const py::handle & cond,
                     int n_timesteps) {
        std::vector<float> zv = to_frames(noise, "noise"), mv = to_frames(mu, "mu"), cv = to_frames(cond, "cond");
        std::vector<float> sv = to_vector(spk, flow_->hp.n_mel, "spk");
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = runner_->solve(zv, mv, sv, cv, n_timesteps);
        }
        return frames(out, 1);
    }

    FloatArray flow_mel(const py::handle & tokens, const py::handle & prompt_tokens, const py::handle & prompt_mel,
                        const py::handle & spk, int n_timesteps, const py::handle & noise, uint64_t seed) {
        FlowPrompt p;
        p.tokens = to_tokens(prompt_tokens, "prompt_tokens", /*allow_empty=*/true);
        p.mel = to_frames(prompt_mel, "prompt_mel", /*allow_empty=*/true);
        p.spk = to_vector(spk, flow_->hp.n_spk, "spk");
        const std::vector<int32_t> t = to_tokens(tokens, "tokens");
        std::vector<float> z;
        if (!noise.is_none()) z = to_frames(noise, "noise");
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = runner_->flow_mel(t, p, n_timesteps, noise.is_none() ? nullptr : &z, seed);
        }
        return frames(out, 1);
    }

    void stream_start(const py::handle & prompt_tokens, const py::handle & prompt_mel, const py::handle & spk,
                      int n_timesteps, const py::handle & noise, uint64_t seed) {
        FlowPrompt p;
        p.tokens = to_tokens(prompt_tokens, "prompt_tokens", /*allow_empty=*/true);
        p.mel = to_frames(prompt_mel, "prompt_mel", /*allow_empty=*/true);
        p.spk = to_vector(spk, flow_->hp.n_spk, "spk");
        std::vector<float> z;
        if (!noise.is_none()) z = to_frames(noise, "noise");
        py::gil_scoped_release nogil;
        runner_->stream_start(p, n_timesteps, noise.is_none() ? nullptr : &z, seed);
    }

    FloatArray stream_push(const py::handle & tokens, bool last) {
        const std::vector<int32_t> t = to_tokens(tokens, "tokens", /*allow_empty=*/last);
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = runner_->stream_push(t, last);
        }
        return frames(out, 1);
    }

    py::tuple stream_frames() const {
        const auto f = runner_->stream_frames();
        return py::make_tuple(f.first, f.second);
    }

    FloatArray default_noise(int64_t first, int64_t n, uint64_t seed) const {
        if (first < 0 || n < 0 || n > (1 << 24) || first > std::numeric_limits<int64_t>::max() / 2) {
            throw Error(ErrorKind::InvalidArgument, "default_noise: first and n must be >= 0 (n <= 2^24)");
        }
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = runner_->default_noise(first, n, seed);
        }
        return frames(out, 1);
    }

private:
    std::vector<int32_t> to_tokens(const py::handle & h, const char * what, bool allow_empty = false) const {
        auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(h);
        if (!a || a.ndim() != 1) throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a 1-D sequence of ints");
        if (!allow_empty && a.size() == 0) throw Error(ErrorKind::InvalidArgument, std::string(what) + " is empty");
        std::vector<int32_t> out((size_t) a.size());
        const int64_t * d = a.data();
        for (py::ssize_t i = 0; i < a.size(); ++i) {
            if (d[i] < 0 || d[i] >= flow_->hp.n_vocab) {
                throw Error(ErrorKind::InvalidArgument, std::string(what) + ": speech token " + std::to_string(d[i]) +
                                                            " is out of range [0, " + std::to_string(flow_->hp.n_vocab - 1) + "]");
            }
            out[(size_t) i] = (int32_t) d[i];
        }
        return out;
    }
    // A [frames, n_mel] float array (frame counts are checked by the runner).
    std::vector<float> to_frames(const py::handle & h, const char * what, bool allow_empty = false) const {
        auto a = FloatArray::ensure(h);
        const int64_t M = flow_->hp.n_mel;
        if (!a || a.ndim() != 2 || a.shape(1) != M) {
            throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a float32 array of shape [frames, " +
                                                        std::to_string(M) + "]");
        }
        if (!allow_empty && a.shape(0) == 0) throw Error(ErrorKind::InvalidArgument, std::string(what) + " has no frames");
        return std::vector<float>(a.data(), a.data() + a.size());
    }
    static std::vector<float> to_vector(const py::handle & h, int64_t len, const char * what) {
        auto a = FloatArray::ensure(h);
        if (!a || a.size() != len || (a.ndim() != 1 && !(a.ndim() == 2 && a.shape(0) == 1))) {
            throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a float32 vector of " + std::to_string(len) +
                                                        " values");
        }
        return std::vector<float>(a.data(), a.data() + a.size());
    }
    FloatArray frames(const std::vector<float> & v, py::ssize_t batch) const {
        const py::ssize_t M = (py::ssize_t) flow_->hp.n_mel;
        const py::ssize_t n = (py::ssize_t) v.size() / (M * batch);
        FloatArray out = batch == 1 ? FloatArray({n, M}) : FloatArray({batch, n, M});
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }
    static FloatArray rows(const std::vector<float> & v) {
        FloatArray out({(py::ssize_t) v.size()});
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }

    std::shared_ptr<Model>           model_;
    std::unique_ptr<GgufFile>        file_;      // (file-only handle)
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<Component>       own_;
    const FlowModel *                flow_ = nullptr;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<FlowRunner>      runner_;
};

} // namespace

void bind_flow(py::module_ & mod) {
    py::class_<PyFlow>(mod, "Token2WavFlow")
        .def(py::init<std::shared_ptr<Model>, int>(), py::arg("model"), py::arg("n_threads") = 0,
             py::call_guard<py::gil_scoped_release>())
        .def(py::init<const std::string &, const std::string &, int>(), py::arg("path"), py::arg("device") = "auto",
             py::arg("n_threads") = 0, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyFlow::hparams)
        .def("encode", &PyFlow::encode, py::arg("tokens"), py::arg("spk") = py::none())
        .def("dit", &PyFlow::dit, py::arg("x"), py::arg("mu"), py::arg("spk"), py::arg("cond"), py::arg("t"))
        .def("solve", &PyFlow::solve, py::arg("noise"), py::arg("mu"), py::arg("spk"), py::arg("cond"),
             py::arg("n_timesteps"))
        .def("flow_mel", &PyFlow::flow_mel, py::arg("tokens"), py::arg("prompt_tokens"), py::arg("prompt_mel"),
             py::arg("spk"), py::arg("n_timesteps"), py::arg("noise") = py::none(), py::arg("seed") = 0)
        .def("stream_start", &PyFlow::stream_start, py::arg("prompt_tokens"), py::arg("prompt_mel"), py::arg("spk"),
             py::arg("n_timesteps"), py::arg("noise") = py::none(), py::arg("seed") = 0)
        .def("stream_push", &PyFlow::stream_push, py::arg("tokens"), py::arg("last") = false)
        .def("stream_frames", &PyFlow::stream_frames)
        .def("default_noise", &PyFlow::default_noise, py::arg("first"), py::arg("n"), py::arg("seed") = 0);
}
