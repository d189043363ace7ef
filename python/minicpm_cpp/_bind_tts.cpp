// Python bindings for the TTS talker (MiniCPM-o 4.5): a handle with its own compute state (runners,
// K/V cache, streamed turn) on a loaded Model's talker, or on a GGUF file of its own. Conversion
// and validation only.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "minicpm/minicpm.h"
#include "model/names.h"
#include "models/tts.h"
#include "runtime/busy.h"
#include "runtime/model_impl.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

class PyTts {
public:
    // On the talker of a loaded model (its weights are shared, the state is this handle's own).
    PyTts(std::shared_ptr<Model> model, int n_threads, int64_t n_ctx) : model_(std::move(model)) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        const Model::Impl & m = model_->impl();
        auto it = m.components.find("tts");
        if (it == m.components.end()) {
            throw Error(ErrorKind::Unsupported, "the model has no TTS talker (" + m.files.front()->path() +
                                                    ": no tts.* tensors; convert a MiniCPM-o 4.5 checkpoint with "
                                                    "minicpm-convert)");
        }
        tts_ = static_cast<const TtsModel *>(it->second.get());
        backends_ = std::make_unique<ComputeBackends>(*m.devices, n_threads ? n_threads : m.params.n_threads);
        ctx_ = std::make_unique<TtsContext>(*tts_, *backends_, n_ctx);
    }

    // On a GGUF file holding the talker (no LLM needed), or llama.cpp-omni's TTS file with its
    // projector file.
    PyTts(const std::string & path, const std::string & device, int n_threads, int64_t n_ctx, const std::string & projector) {
        if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "n_threads must be >= 0");
        file_ = std::make_unique<GgufFile>(path);
        if (!projector.empty() || is_omni_tts_file(*file_)) {
            if (projector.empty()) {
                throw Error(ErrorKind::InvalidArgument, path + " is llama.cpp-omni's TTS file: give its projector file "
                                                               "(tts/<name>-projector-F16.gguf) as projector=");
            }
            proj_file_ = std::make_unique<GgufFile>(projector);
            ModelParams params;
            params.device = device;
            params.n_threads = n_threads;
            devices_ = std::make_unique<Devices>(device, n_threads);
            own_ = load_tts_omni(*file_, *proj_file_, *devices_, params);
            tts_ = own_.get();
            backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
            ctx_ = std::make_unique<TtsContext>(*tts_, *backends_, n_ctx);
            return;
        }
        if (!kTtsComponent.present(*file_)) {
            throw Error(ErrorKind::Unsupported, path + " has no TTS talker (no " +
                                                    key_name(KeyName::MINICPM_TTS_HAS_TTS) + " / tts.* tensors)");
        }
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        devices_ = std::make_unique<Devices>(device, n_threads);
        auto c = kTtsComponent.load(ComponentLoad{*file_, *devices_, params});
        own_.reset(static_cast<TtsModel *>(c.release()));
        tts_ = own_.get();
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        ctx_ = std::make_unique<TtsContext>(*tts_, *backends_, n_ctx);
    }

    py::dict hparams() const {
        const TtsHparams & h = tts_->hp;
        py::dict d;
        d["n_embd"] = h.n_embd;
        d["n_ff"] = h.n_ff;
        d["n_head"] = h.n_head;
        d["n_head_kv"] = h.n_head_kv;
        d["head_dim"] = h.head_dim;
        d["n_layer"] = h.n_layer;
        d["n_ctx_train"] = h.n_ctx;
        d["n_ctx"] = ctx_->n_ctx();
        d["llm_dim"] = h.llm_dim;
        d["num_text_tokens"] = h.n_text;
        d["num_audio_tokens"] = h.n_audio;
        d["eos"] = h.eos();
        d["audio_bos_token_id"] = h.audio_bos;
        d["text_eos_token_id"] = h.text_eos;
        d["rms_eps"] = h.eps;
        d["rope_theta"] = h.rope_base;
        d["normalize_projected_hidden"] = h.normalize_hidden;
        d["interleaved"] = h.interleaved;
        d["attention_type"] = h.attention_name;
        d["sliding_window"] = h.sliding_window;
        d["exact"] = tts_->exact;
        d["omni_layout"] = h.omni_layout;
        d["device"] = backends_->main_name();
        py::dict s;
        s["temperature"] = h.sampling.temperature;
        s["top_p"] = h.sampling.top_p;
        s["top_k"] = h.sampling.top_k;
        s["repetition_penalty"] = h.sampling.repetition_penalty;
        s["penalty_window"] = h.sampling.penalty_window;
        d["sampling"] = s;
        return d;
    }

    py::array_t<float> condition(const py::handle & tokens, const py::handle & hidden) {
        std::vector<int32_t> ids = to_ids(tokens, "tokens");
        std::vector<float>   h;
        if (!hidden.is_none()) h = rows_of(hidden, (int64_t) ids.size(), tts_->hp.llm_dim, "hidden");
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            BusyGuard guard(busy_, "TTS");
            out = ctx_->condition(ids.data(), hidden.is_none() ? nullptr : h.data(), (int64_t) ids.size());
        }
        return rows(out, tts_->hp.n_embd);
    }

    py::array_t<float> code_embeddings(const py::handle & codes) const {
        std::vector<int32_t> ids = to_ids(codes, "audio_tokens", true);
        return rows(ctx_->code_embeddings(ids.data(), (int64_t) ids.size()), tts_->hp.n_embd);
    }

    py::array_t<float> logits(const py::handle & embeds, const py::handle & audio_tokens) {
        std::vector<float>   e = rows_of(embeds, -1, tts_->hp.n_embd, "inputs_embeds");
        std::vector<int32_t> a = to_ids(audio_tokens, "audio_tokens", true);
        std::vector<float>   out;
        {
            py::gil_scoped_release nogil;
            BusyGuard guard(busy_, "TTS");
            out = ctx_->logits(e.data(), (int64_t) (e.size() / (size_t) tts_->hp.n_embd), a.data(), (int64_t) a.size());
        }
        return rows(out, tts_->hp.n_audio);
    }

    std::vector<int32_t> generate(const py::handle & condition, uint64_t seed, const TtsSampling & s, int min_new,
                                  int max_new) {
        std::vector<float> c = rows_of(condition, -1, tts_->hp.n_embd, "condition");
        TtsGenerateParams  p;
        p.sampling = s;
        p.min_new_tokens = min_new;
        p.max_new_tokens = max_new;
        py::gil_scoped_release nogil;
        BusyGuard guard(busy_, "TTS");
        TtsRng rng(seed);
        return ctx_->generate(c.data(), (int64_t) (c.size() / (size_t) tts_->hp.n_embd), p, rng);
    }

    void stream_begin(uint64_t seed, const TtsSampling & s) {
        BusyGuard guard(busy_, "TTS");
        ctx_->stream_reset();
        stream_rng_ = TtsRng(seed);
        stream_sampling_ = s;
    }

    std::vector<int32_t> stream_push(const py::handle & condition, bool last, int max_new) {
        std::vector<float> c = rows_of(condition, -1, tts_->hp.n_embd, "condition");
        py::gil_scoped_release nogil;
        BusyGuard guard(busy_, "TTS");
        return ctx_->stream_push(c.data(), (int64_t) (c.size() / (size_t) tts_->hp.n_embd), last, stream_sampling_,
                                 stream_rng_, max_new);
    }

    std::vector<int32_t> stream_tokens() const { return ctx_->stream_tokens(); }
    int64_t              stream_position() const { return ctx_->stream_position(); }

    TtsSampling defaults() const { return tts_->hp.sampling; }
    int32_t     eos() const { return tts_->hp.eos(); }

    static std::vector<int32_t> to_ids(const py::handle & h, const char * what, bool allow_empty = false) {
        auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(h);
        if (!a || a.ndim() != 1) throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a 1-D sequence of ints");
        if (!allow_empty && a.size() == 0) throw Error(ErrorKind::InvalidArgument, std::string(what) + " is empty");
        std::vector<int32_t> out((size_t) a.size());
        for (py::ssize_t i = 0; i < a.size(); ++i) {
            const int64_t v = a.data()[i];
            if (v < INT32_MIN || v > INT32_MAX) throw Error(ErrorKind::InvalidArgument, std::string(what) + ": id out of range");
            out[(size_t) i] = (int32_t) v;
        }
        return out;
    }

    // A float32 [n, width] array (n = -1: any, >= 1) as row-major values.
    static std::vector<float> rows_of(const py::handle & h, int64_t n, int64_t width, const char * what) {
        auto a = F32::ensure(h);
        if (!a || a.ndim() != 2 || a.shape(1) != width || (n >= 0 && a.shape(0) != n) || a.shape(0) < 1) {
            throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a float32 array of shape [" +
                                                        (n >= 0 ? std::to_string(n) : std::string("n >= 1")) + ", " +
                                                        std::to_string(width) + "]");
        }
        return std::vector<float>(a.data(), a.data() + a.size());
    }

    static py::array_t<float> rows(const std::vector<float> & v, int64_t width) {
        const py::ssize_t  n = width > 0 ? (py::ssize_t) (v.size() / (size_t) width) : 0;
        py::array_t<float> out({n, (py::ssize_t) width});
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }

private:
    std::shared_ptr<Model>           model_;   // keeps the shared weights alive
    std::unique_ptr<GgufFile>        file_;
    std::unique_ptr<GgufFile>        proj_file_;
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<TtsModel>        own_;
    const TtsModel *                 tts_ = nullptr;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<TtsContext>      ctx_;
    TtsRng                           stream_rng_{0};
    TtsSampling                      stream_sampling_;
    std::atomic<bool>                busy_{false};
};

TtsSampling make_sampling(float temperature, float top_p, int top_k, float repetition_penalty, int penalty_window) {
    TtsSampling s;
    s.temperature = temperature;
    s.top_p = top_p;
    s.top_k = top_k;
    s.repetition_penalty = repetition_penalty;
    s.penalty_window = penalty_window;
    return s;
}

} // namespace

void bind_tts(py::module_ & mod) {
    py::class_<TtsSampling>(mod, "TtsSampling")
        .def(py::init(&make_sampling), py::arg("temperature") = 0.8f, py::arg("top_p") = 0.85f, py::arg("top_k") = 25,
             py::arg("repetition_penalty") = 1.05f, py::arg("penalty_window") = 16)
        .def_readwrite("temperature", &TtsSampling::temperature)
        .def_readwrite("top_p", &TtsSampling::top_p)
        .def_readwrite("top_k", &TtsSampling::top_k)
        .def_readwrite("repetition_penalty", &TtsSampling::repetition_penalty)
        .def_readwrite("penalty_window", &TtsSampling::penalty_window);

    py::class_<PyTts>(mod, "Tts")
        .def(py::init<std::shared_ptr<Model>, int, int64_t>(), py::arg("model"), py::arg("n_threads") = 0,
             py::arg("n_ctx") = 0, py::call_guard<py::gil_scoped_release>())
        .def(py::init<const std::string &, const std::string &, int, int64_t, const std::string &>(), py::arg("path"),
             py::arg("device") = "auto", py::arg("n_threads") = 0, py::arg("n_ctx") = 0, py::arg("projector") = "",
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", &PyTts::hparams)
        .def_property_readonly("defaults", &PyTts::defaults)
        .def_property_readonly("eos", &PyTts::eos)
        .def("condition", &PyTts::condition, py::arg("tokens"), py::arg("hidden") = py::none())
        .def("code_embeddings", &PyTts::code_embeddings, py::arg("audio_tokens"))
        .def("logits", &PyTts::logits, py::arg("inputs_embeds"), py::arg("audio_tokens"))
        .def("generate", &PyTts::generate, py::arg("condition"), py::arg("seed"), py::arg("sampling"),
             py::arg("min_new_tokens"), py::arg("max_new_tokens"))
        .def("stream_begin", &PyTts::stream_begin, py::arg("seed"), py::arg("sampling"))
        .def("stream_push", &PyTts::stream_push, py::arg("condition"), py::arg("last"), py::arg("max_new_tokens") = 500)
        .def_property_readonly("stream_tokens", &PyTts::stream_tokens)
        .def_property_readonly("stream_position", &PyTts::stream_position);

    // The sampler alone (for tests and own pipelines): probabilities after the warpers, a draw.
    mod.def("tts_probs", [](const py::handle & logits, const std::vector<int32_t> & history, const TtsSampling & s,
                            bool bos_step, int32_t eos, bool mask_eos) {
        auto a = F32::ensure(logits);
        if (!a || a.ndim() != 1) throw Error(ErrorKind::InvalidArgument, "logits must be a 1-D float32 array");
        const std::vector<float> p = tts_probs(a.data(), (int64_t) a.size(), history, s, bos_step, eos, mask_eos);
        py::array_t<float> out((py::ssize_t) p.size());
        std::memcpy(out.mutable_data(), p.data(), p.size() * sizeof(float));
        return out;
    }, py::arg("logits"), py::arg("history"), py::arg("sampling"), py::arg("bos_step") = false, py::arg("eos") = -1,
       py::arg("mask_eos") = false);
    mod.def("tts_draw", [](const py::handle & probs, uint64_t seed, int n) {
        auto a = F32::ensure(probs);
        if (!a || a.ndim() != 1) throw Error(ErrorKind::InvalidArgument, "probs must be a 1-D float32 array");
        if (n < 0) throw Error(ErrorKind::InvalidArgument, "n must be >= 0");
        std::vector<float>   p(a.data(), a.data() + a.size());
        TtsRng               rng(seed);
        std::vector<int32_t> ids;
        for (int i = 0; i < n; ++i) ids.push_back(tts_draw(p, rng));
        return ids;
    }, py::arg("probs"), py::arg("seed"), py::arg("n") = 1);
    mod.def("tts_uniforms", [](uint64_t seed, int n) {
        TtsRng              rng(seed);
        std::vector<double> u;
        for (int i = 0; i < n; ++i) u.push_back(rng.uniform());
        return u;
    }, py::arg("seed"), py::arg("n"));
}
