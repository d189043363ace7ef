// Python bindings for full-duplex sessions (minicpm/duplex.h). Conversion and validation only;
// the GIL is released while a unit runs.
#include "bind_common.h"
#include "core/error.h"
#include "minicpm/duplex.h"

#include <pybind11/functional.h>
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
using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

std::vector<float> f32_vector(const py::handle & h, const char * what) {
    auto a = F32::ensure(h);
    if (!a || a.ndim() != 1) throw Error(ErrorKind::InvalidArgument, std::string(what) + " must be a 1-D float array");
    return std::vector<float>(a.data(), a.data() + a.size());
}

// frames: a list of [H, W, 3] uint8 arrays
std::vector<std::shared_ptr<const RgbImage>> to_frames(const py::handle & frames) {
    std::vector<std::shared_ptr<const RgbImage>> out;
    if (frames.is_none()) return out;
    for (const py::handle & f : frames) {
        auto a = U8::ensure(f);
        if (!a || a.ndim() != 3 || a.shape(2) != 3 || a.shape(0) < 1 || a.shape(1) < 1) {
            throw Error(ErrorKind::InvalidArgument, "duplex: a frame must be an [height, width, 3] uint8 RGB array");
        }
        auto img = std::make_shared<RgbImage>();
        img->height = (int) a.shape(0);
        img->width = (int) a.shape(1);
        img->pixels.assign(a.data(), a.data() + a.size());
        out.push_back(std::move(img));
    }
    return out;
}

py::dict result_dict(const DuplexUnitResult & r, int64_t n_embd, bool capture) {
    py::dict d;
    d["unit"] = r.unit;
    d["listening"] = r.listening;
    d["text"] = minicpm_py::utf8(r.text);
    py::array_t<float> a((py::ssize_t) r.audio.size());
    if (!r.audio.empty()) std::memcpy(a.mutable_data(), r.audio.data(), r.audio.size() * sizeof(float));
    d["audio"] = a;
    d["end_of_turn"] = r.end_of_turn;
    d["tokens"] = r.tokens;
    d["unit_tokens"] = r.unit_tokens;
    d["codes"] = r.codes;
    if (capture) {
        d["tts_tokens"] = r.tts_tokens;
        py::array_t<float> h({(py::ssize_t) r.tts_tokens.size(), (py::ssize_t) n_embd});
        if (!r.tts_hidden.empty()) std::memcpy(h.mutable_data(), r.tts_hidden.data(), r.tts_hidden.size() * sizeof(float));
        d["tts_hidden"] = h;
    }
    d["ms_decision"] = r.ms_decision;
    d["ms_first_audio"] = r.ms_first_audio;
    d["ms_total"] = r.ms_total;
    d["ms_llm"] = r.ms_llm;
    d["ms_talker"] = r.ms_talker;
    d["ms_token2wav"] = r.ms_token2wav;
    d["ms_encoder"] = r.ms_encoder;
    d["ms_prefill"] = r.ms_prefill;
    d["ms_sample"] = r.ms_sample;
    d["ms_flow"] = r.ms_flow;
    d["ms_vocoder"] = r.ms_vocoder;
    return d;
}

class PyDuplex {
public:
    PyDuplex(std::shared_ptr<Model> model, const py::dict & kw) {
        DuplexParams p;
        for (auto item : kw) {
            const std::string k = py::str(item.first);
            const py::handle  v = item.second;
            if (k == "system") p.system = v.cast<std::string>();
            else if (k == "prefix") { if (!v.is_none()) p.prefix = v.cast<std::string>(); }
            else if (k == "suffix") { if (!v.is_none()) p.suffix = v.cast<std::string>(); }
            else if (k == "voice") {
                if (!v.is_none()) {
                    py::tuple t = v.cast<py::tuple>();   // (tokens, speaker, prompt_mel, audio_16k or None)
                    Voice vo;
                    auto tk = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(t[0]);
                    if (!tk || tk.ndim() != 1) throw Error(ErrorKind::InvalidArgument, "voice: tokens must be a 1-D integer array");
                    vo.tokens.assign(tk.data(), tk.data() + tk.size());
                    vo.speaker = f32_vector(t[1], "voice: speaker");
                    auto m = F32::ensure(t[2]);
                    if (!m || m.ndim() != 2) throw Error(ErrorKind::InvalidArgument, "voice: prompt_mel must be [frames, bins]");
                    vo.prompt_mel.assign(m.data(), m.data() + m.size());
                    vo.n_mel = (int64_t) m.shape(1);
                    if (!t[3].is_none()) vo.audio_16k = f32_vector(t[3], "voice: audio_16k");
                    p.voice = std::move(vo);
                }
            }
            else if (k == "max_speak_tokens") p.max_speak_tokens = v.cast<int>();
            else if (k == "force_listen_count") p.force_listen_count = v.cast<int>();
            else if (k == "window") p.window = v.cast<std::string>();
            else if (k == "window_max_tokens") p.window_max_tokens = v.cast<int>();
            else if (k == "window_target_tokens") p.window_target_tokens = v.cast<int>();
            else if (k == "context_max_units") p.context_max_units = v.cast<int>();
            else if (k == "max_previous_tokens") p.max_previous_tokens = v.cast<int>();
            else if (k == "temperature") p.temperature = v.cast<float>();
            else if (k == "top_k") p.top_k = v.cast<int>();
            else if (k == "top_p") p.top_p = v.cast<float>();
            else if (k == "repetition_penalty") p.repetition_penalty = v.cast<float>();
            else if (k == "repetition_window") p.repetition_window = v.cast<int>();
            else if (k == "length_penalty") p.length_penalty = v.cast<float>();
            else if (k == "greedy") p.greedy = v.cast<bool>();
            else if (k == "seed") { if (!v.is_none()) p.seed = v.cast<uint64_t>(); }
            else if (k == "generate_audio") p.generate_audio = v.cast<bool>();
            else if (k == "tts_steps") { if (!v.is_none()) p.tts_steps = v.cast<int>(); }
            else if (k == "tts_temperature") p.tts_temperature = v.cast<float>();
            else if (k == "tts_repetition_penalty") p.tts_repetition_penalty = v.cast<float>();
            else if (k == "capture") p.capture = v.cast<bool>();
            else if (k == "n_ctx") p.n_ctx = v.cast<int>();
            else if (k == "n_threads") p.n_threads = v.cast<int>();
            else if (k == "batch") p.batch = v.cast<bool>();
            else if (k == "warmup") { if (!v.is_none()) p.warmup = v.cast<bool>(); }
            else throw Error(ErrorKind::InvalidArgument, "DuplexSession: unknown parameter '" + k + "'");
        }
        capture_ = p.capture;
        py::gil_scoped_release nogil;
        d_ = std::make_unique<DuplexSession>(std::move(model), p);
    }

    py::dict step(const py::handle & audio, const py::handle & frames, const py::handle & text, const py::handle & bias) {
        std::vector<float> pcm;
        if (!audio.is_none()) pcm = f32_vector(audio, "duplex: audio");
        std::vector<std::shared_ptr<const RgbImage>> fr = to_frames(frames);
        std::string t = text.is_none() ? std::string() : text.cast<std::string>();
        std::vector<std::pair<int32_t, float>> b;
        if (!bias.is_none()) {
            for (auto item : bias.cast<py::dict>()) b.emplace_back(item.first.cast<int32_t>(), item.second.cast<float>());
        }
        DuplexUnitResult r;
        {
            py::gil_scoped_release nogil;
            r = d_->step(pcm.empty() ? nullptr : pcm.data(), pcm.size(), fr, t, b);
        }
        return result_dict(r, d_->n_embd(), capture_);
    }

    void push(const py::handle & audio, const py::handle & frames) {
        std::vector<float> pcm = f32_vector(audio, "duplex: audio");
        std::vector<std::shared_ptr<const RgbImage>> fr = to_frames(frames);
        py::gil_scoped_release nogil;
        d_->push(pcm.data(), pcm.size(), fr);
    }

    py::object poll(int timeout_ms) {
        DuplexUnitResult r;
        bool got;
        {
            py::gil_scoped_release nogil;
            got = d_->poll(r, timeout_ms);
        }
        if (!got) return py::none();
        return result_dict(r, d_->n_embd(), capture_);
    }

    DuplexSession & d() { return *d_; }

private:
    std::unique_ptr<DuplexSession> d_;
    bool                           capture_ = false;
};

} // namespace

void bind_duplex(py::module_ & mod) {
    mod.attr("DUPLEX_UNIT_SAMPLES") = kDuplexUnitSamples;
    py::class_<PyDuplex>(mod, "DuplexSession")
        .def(py::init<std::shared_ptr<Model>, const py::dict &>(), py::arg("model"), py::arg("params"))
        .def("step", &PyDuplex::step, py::arg("audio"), py::arg("frames") = py::none(), py::arg("text") = py::none(),
             py::arg("logit_bias") = py::none())
        .def("interrupt", [](PyDuplex & s) { s.d().interrupt(); }, py::call_guard<py::gil_scoped_release>())
        .def("reset", [](PyDuplex & s) { s.d().reset(); }, py::call_guard<py::gil_scoped_release>())
        .def("start_async", [](PyDuplex & s) { s.d().start_async(); })
        .def("push", &PyDuplex::push, py::arg("audio"), py::arg("frames") = py::none())
        .def("poll", &PyDuplex::poll, py::arg("timeout_ms") = 0)
        .def("stop_async", [](PyDuplex & s) { s.d().stop_async(); }, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("async_active", [](PyDuplex & s) { return s.d().async_active(); })
        .def_property_readonly("n_past", [](PyDuplex & s) { return s.d().n_past(); })
        .def_property_readonly("tokens", [](PyDuplex & s) { return s.d().tokens(); })
        .def_property_readonly("positions", [](PyDuplex & s) { return s.d().positions(); })
        .def_property_readonly("system_length", [](PyDuplex & s) { return s.d().system_length(); })
        .def_property_readonly("units", [](PyDuplex & s) { return s.d().units(); })
        .def_property_readonly("n_ctx", [](PyDuplex & s) { return s.d().session().n_ctx(); });
}
