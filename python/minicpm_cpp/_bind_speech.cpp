// Python bindings for a spoken turn (minicpm/speech.h): the C++ SpeechTurn on a session whose
// answer Python began (Session.begin_chat with speech on). Conversion and validation only.
#include "bind_common.h"
#include "core/error.h"
#include "minicpm/minicpm.h"
#include "minicpm/speech.h"

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

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

Voice to_voice(const py::handle & tokens, const py::handle & speaker, const py::handle & prompt_mel) {
    auto t = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(tokens);
    auto s = F32::ensure(speaker);
    auto m = F32::ensure(prompt_mel);
    if (!t || t.ndim() != 1) throw Error(ErrorKind::InvalidArgument, "voice: tokens must be a 1-D integer array");
    if (!s || s.ndim() != 1) throw Error(ErrorKind::InvalidArgument, "voice: speaker must be a 1-D float array");
    if (!m || m.ndim() != 2) throw Error(ErrorKind::InvalidArgument, "voice: prompt_mel must be a [frames, bins] float array");
    Voice v;
    v.tokens.assign(t.data(), t.data() + t.size());
    v.speaker.assign(s.data(), s.data() + s.size());
    v.prompt_mel.assign(m.data(), m.data() + m.size());
    v.n_mel = (int64_t) m.shape(1);
    return v;
}

// The next event of a turn (SpeechTurn, StreamingTurn), pulled without the GIL: None at the
// end, a str for text, (pcm float32 array, last, sample rate) for audio.
template <class Turn> py::object next_event(Turn & turn) {
    SpeechEvent ev;
    bool        more;
    {
        py::gil_scoped_release nogil;
        more = turn.next(ev);
    }
    if (!more) return py::none();
    if (ev.kind == SpeechEvent::Kind::Text) return minicpm_py::utf8(ev.text);
    py::array_t<float> a((py::ssize_t) ev.pcm.size());
    if (!ev.pcm.empty()) std::memcpy(a.mutable_data(), ev.pcm.data(), ev.pcm.size() * sizeof(float));
    return py::make_tuple(a, ev.last, ev.sample_rate);
}

class PySpeechTurn {
public:
    PySpeechTurn(Session & s, const py::handle & tokens, const py::handle & speaker, const py::handle & prompt_mel,
                 int n_timesteps, uint64_t seed, std::optional<bool> whole) {
        SpeechParams p;
        if (!tokens.is_none()) p.voice = to_voice(tokens, speaker, prompt_mel);
        p.n_timesteps = n_timesteps;
        p.seed = seed;
        p.whole_audio = whole;
        py::gil_scoped_release nogil;
        turn_ = std::make_unique<SpeechTurn>(s, p);
    }

    void start_begun(const std::string & prefix) { turn_->start_begun(prefix); }

    py::object next() { return next_event(*turn_); }

    std::vector<int32_t> codes() const { return turn_->codes(); }
    const char *         stop_reason() const { return stop_reason_name(turn_->stop_reason()); }
    bool                 whole() const { return turn_->whole_audio(); }
    uint64_t             seed() const { return turn_->seed(); }

private:
    std::unique_ptr<SpeechTurn> turn_;
};

// A simplex streamed answer (StreamingTurn): begun by the constructor (GIL released).
class PyStreamingTurn {
public:
    PyStreamingTurn(Session & s, bool generate_audio, int max_new_tokens, bool do_sample, float temperature, float top_p,
                    int top_k, float repetition_penalty, bool enable_thinking, bool use_tts_template,
                    std::optional<std::string> bos_input, const py::handle & tokens, const py::handle & speaker,
                    const py::handle & prompt_mel, int n_timesteps, uint64_t seed, std::optional<bool> whole, bool capture)
        : n_embd_(s.model()->info().n_embd) {
        StreamingGenerateParams p;
        p.generate_audio = generate_audio;
        p.max_new_tokens = max_new_tokens;
        p.do_sample = do_sample;
        p.temperature = temperature;
        p.top_p = top_p;
        p.top_k = top_k;
        p.repetition_penalty = repetition_penalty;
        p.enable_thinking = enable_thinking;
        p.use_tts_template = use_tts_template;
        p.bos_input = std::move(bos_input);
        if (!tokens.is_none()) p.speech.voice = to_voice(tokens, speaker, prompt_mel);
        p.speech.n_timesteps = n_timesteps;
        p.speech.seed = seed;
        p.speech.whole_audio = whole;
        p.capture = capture;
        py::gil_scoped_release nogil;
        turn_ = std::make_unique<StreamingTurn>(s, p);
    }

    py::object next() { return next_event(*turn_); }

    std::vector<int32_t> codes() const { return turn_->codes(); }
    std::vector<int32_t> answer_tokens() const { return turn_->answer_tokens(); }
    py::array_t<float>   talker_hidden() const {
        const std::vector<float> & h = turn_->talker_hidden();
        const py::ssize_t n = n_embd_ > 0 ? (py::ssize_t) (h.size() / (size_t) n_embd_) : 0;
        py::array_t<float> a({n, (py::ssize_t) n_embd_});
        if (!h.empty()) std::memcpy(a.mutable_data(), h.data(), h.size() * sizeof(float));
        return a;
    }
    const char * stop_reason() const { return stop_reason_name(turn_->stop_reason()); }
    uint64_t     seed() const { return turn_->seed(); }

private:
    int64_t                        n_embd_;
    std::unique_ptr<StreamingTurn> turn_;
};

} // namespace

void bind_speech(py::module_ & mod) {
    py::class_<PyStreamingTurn>(mod, "StreamingTurn")
        .def(py::init<Session &, bool, int, bool, float, float, int, float, bool, bool, std::optional<std::string>,
                      const py::handle &, const py::handle &, const py::handle &, int, uint64_t, std::optional<bool>, bool>(),
             py::arg("session"), py::arg("generate_audio"), py::arg("max_new_tokens"), py::arg("do_sample"),
             py::arg("temperature"), py::arg("top_p"), py::arg("top_k"), py::arg("repetition_penalty"),
             py::arg("enable_thinking"), py::arg("use_tts_template"), py::arg("bos_input"), py::arg("tokens"),
             py::arg("speaker"), py::arg("prompt_mel"), py::arg("n_timesteps"), py::arg("seed"), py::arg("whole"),
             py::arg("capture"), py::keep_alive<1, 2>())
        .def("next", &PyStreamingTurn::next)
        .def_property_readonly("codes", &PyStreamingTurn::codes)
        .def_property_readonly("answer_tokens", &PyStreamingTurn::answer_tokens)
        .def_property_readonly("talker_hidden", &PyStreamingTurn::talker_hidden)
        .def_property_readonly("stop_reason", &PyStreamingTurn::stop_reason)
        .def_property_readonly("seed", &PyStreamingTurn::seed);
    py::class_<PySpeechTurn>(mod, "SpeechTurn")
        .def(py::init<Session &, const py::handle &, const py::handle &, const py::handle &, int, uint64_t,
                      std::optional<bool>>(),
             py::arg("session"), py::arg("tokens"), py::arg("speaker"), py::arg("prompt_mel"), py::arg("n_timesteps"),
             py::arg("seed"), py::arg("whole") = py::none(), py::keep_alive<1, 2>())
        .def("start_begun", &PySpeechTurn::start_begun, py::arg("answer_prefix"), py::call_guard<py::gil_scoped_release>())
        .def("next", &PySpeechTurn::next)
        .def_property_readonly("codes", &PySpeechTurn::codes)
        .def_property_readonly("stop_reason", &PySpeechTurn::stop_reason)
        .def_property_readonly("whole", &PySpeechTurn::whole)
        .def_property_readonly("seed", &PySpeechTurn::seed);
    // Voice::load: (tokens, speaker, prompt_mel [frames, bins], source_sample_rate, audio_16k or None).
    mod.def("voice_load", [](const std::string & path, bool embedded) {
        Voice v;
        {
            py::gil_scoped_release nogil;
            v = Voice::load(path, embedded);
        }
        py::array_t<int32_t> t((py::ssize_t) v.tokens.size());
        std::memcpy(t.mutable_data(), v.tokens.data(), v.tokens.size() * sizeof(int32_t));
        F32 s((py::ssize_t) v.speaker.size());
        std::memcpy(s.mutable_data(), v.speaker.data(), v.speaker.size() * sizeof(float));
        F32 m({(py::ssize_t) (v.prompt_mel.size() / (size_t) v.n_mel), (py::ssize_t) v.n_mel});
        std::memcpy(m.mutable_data(), v.prompt_mel.data(), v.prompt_mel.size() * sizeof(float));
        py::object a = py::none();
        if (!v.audio_16k.empty()) {
            F32 x((py::ssize_t) v.audio_16k.size());
            std::memcpy(x.mutable_data(), v.audio_16k.data(), v.audio_16k.size() * sizeof(float));
            a = x;
        }
        return py::make_tuple(t, s, m, v.source_sample_rate, a);
    }, py::arg("path"), py::arg("embedded") = false);
    mod.def("can_speak", [](const std::shared_ptr<Model> & m) { return can_speak(*m); }, py::arg("model"));
}
