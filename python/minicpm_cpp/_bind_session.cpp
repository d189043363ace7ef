// Python bindings of Session, ImageEncoder and chat prompts: conversion and validation only.
//
// Messages arrive normalised by session.py: a list of dicts {"role": str, "content": list of
// parts, "reasoning_content": str | None}, each part a str, an HxWx3 uint8 numpy array (an
// RGB image) or a 1-D float32 numpy array (16 kHz mono audio). Sampling overrides arrive as a dict whose missing or None values take the
// model's defaults.
#include "minicpm/minicpm.h"

#include "runtime/prompt.h"
#include "core/cpu_ops.h"

#include "bind_common.h"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>

namespace py = pybind11;
using namespace minicpm;
using minicpm_py::utf8;

namespace {

std::string text_of(const py::handle & h, const std::string & what) {
    if (!py::isinstance<py::str>(h)) {
        throw Error(ErrorKind::InvalidArgument, what + " must be a str, got " + std::string(Py_TYPE(h.ptr())->tp_name));
    }
    // A lone surrogate cannot be encoded as UTF-8: a clear error instead of a bare RuntimeError.
    PyObject * b = PyUnicode_AsUTF8String(h.ptr());
    if (!b) {
        PyErr_Clear();
        throw Error(ErrorKind::InvalidArgument, what + " is not valid Unicode text (it holds a lone surrogate)");
    }
    std::string out(PyBytes_AS_STRING(b), (size_t) PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    return out;
}

std::shared_ptr<const RgbImage> to_rgb(const py::handle & h, const std::string & what) {
    auto arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(h);
    if (!arr || arr.ndim() != 3 || arr.shape(2) != 3 || !py::isinstance<py::array>(h) ||
        !py::reinterpret_borrow<py::array>(h).dtype().is(py::dtype::of<uint8_t>())) {
        throw Error(ErrorKind::InvalidArgument, what + " must be an HxWx3 uint8 array");
    }
    auto img = std::make_shared<RgbImage>();
    img->height = (int) arr.shape(0);
    img->width = (int) arr.shape(1);
    img->pixels.assign(arr.data(), arr.data() + arr.size());   // one pass (no zero fill first)
    return img;
}

std::shared_ptr<const AudioPcm> to_pcm(const py::handle & h, const std::string & what) {
    auto a = py::reinterpret_borrow<py::array>(h);
    if (a.ndim() != 1 || !a.dtype().is(py::dtype::of<float>())) {
        throw Error(ErrorKind::InvalidArgument, what + " must be a 1-D float32 array (16 kHz mono PCM)");
    }
    auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(h);
    auto pcm = std::make_shared<AudioPcm>();
    pcm->samples.assign(arr.data(), arr.data() + arr.size());
    return pcm;
}

// A video part as content.py hands it over: {"video_frames": [HxWx3 uint8, ...],
// "temporal_ids": [[int, ...], ...] or None, "max_slice_nums": int}.
std::shared_ptr<const VideoFrames> to_video(const py::dict & d, const std::string & what) {
    auto v = std::make_shared<VideoFrames>();
    if (!py::isinstance<py::list>(d["video_frames"])) throw Error(ErrorKind::InvalidArgument, what + ": frames must be a list");
    size_t k = 0;
    for (const auto & f : d["video_frames"].cast<py::list>()) v->frames.push_back(to_rgb(f, what + " frame " + std::to_string(k++)));
    if (d.contains("temporal_ids") && !d["temporal_ids"].is_none()) {
        for (const auto & g : d["temporal_ids"].cast<py::list>()) {
            std::vector<int> ids;
            for (const auto & t : g.cast<py::list>()) ids.push_back(t.cast<int>());
            v->temporal_ids.push_back(std::move(ids));
        }
    }
    if (d.contains("max_slice_nums") && !d["max_slice_nums"].is_none()) v->max_slice_nums = d["max_slice_nums"].cast<int>();
    return v;
}

std::vector<Message> to_messages(const py::list & messages) {
    std::vector<Message> out;
    size_t i = 0;
    for (const auto & item : messages) {
        const std::string where = "message " + std::to_string(i++);
        if (!py::isinstance<py::dict>(item)) throw Error(ErrorKind::InvalidArgument, where + " must be a dict");
        py::dict d = item.cast<py::dict>();
        Message m;
        m.role = text_of(d["role"], where + " role");
        py::object content = d["content"];
        if (!py::isinstance<py::list>(content)) throw Error(ErrorKind::InvalidArgument, where + " content must be a list");
        size_t j = 0;
        for (const auto & part : content.cast<py::list>()) {
            const std::string pw = where + " part " + std::to_string(j++);
            if (py::isinstance<py::str>(part)) m.content.push_back(ContentPart::make_text(text_of(part, pw)));
            else if (py::isinstance<py::dict>(part) && part.cast<py::dict>().contains("video_frames"))
                m.content.push_back(ContentPart::make_video(to_video(part.cast<py::dict>(), pw)));
            else if (py::isinstance<py::array>(part) && py::reinterpret_borrow<py::array>(part).ndim() == 1)
                m.content.push_back(ContentPart::make_audio(to_pcm(part, pw)));
            else m.content.push_back(ContentPart::make_image(to_rgb(part, pw)));
        }
        if (d.contains("reasoning_content") && !d["reasoning_content"].is_none()) {
            m.reasoning_content = text_of(d["reasoning_content"], where + " reasoning_content");
        }
        out.push_back(std::move(m));
    }
    return out;
}

SamplingParams to_sampling(const py::dict & d) {
    SamplingParams p;
    auto f = [&](const char * k, std::optional<float> & dst) {
        if (d.contains(k) && !d[k].is_none()) dst = d[k].cast<float>();
    };
    auto n = [&](const char * k, std::optional<int> & dst) {
        if (d.contains(k) && !d[k].is_none()) dst = d[k].cast<int>();
    };
    f("temperature", p.temperature);
    f("top_p", p.top_p);
    f("min_p", p.min_p);
    f("repeat_penalty", p.repeat_penalty);
    f("presence_penalty", p.presence_penalty);
    n("top_k", p.top_k);
    n("repeat_last_n", p.repeat_last_n);
    return p;
}

GenerationParams to_generation(std::optional<int> max_tokens, std::vector<std::string> stop, const py::dict & sampling,
                               bool stop_at_end_of_turn, bool skip_special) {
    GenerationParams g;
    g.max_tokens = max_tokens;
    g.stop = std::move(stop);
    g.sampling = to_sampling(sampling);
    g.stop_at_end_of_turn = stop_at_end_of_turn;
    g.skip_special = skip_special;
    return g;
}

ChatParams to_chat_params(std::optional<bool> enable_thinking, bool add_generation_prompt, int max_slice_nums,
                          std::optional<bool> use_image_id, std::optional<bool> use_tts_template = std::nullopt,
                          bool omni_mode = false) {
    ChatParams c;
    c.use_tts_template = use_tts_template;
    c.omni_mode = omni_mode;
    c.enable_thinking = enable_thinking;
    c.add_generation_prompt = add_generation_prompt;
    c.max_slice_nums = max_slice_nums;
    c.use_image_id = use_image_id;
    return c;
}

// Segments from Python: each item is a list of token ids or an ImageChunk.
std::vector<PromptSegment> to_segments(const py::list & segs) {
    std::vector<PromptSegment> out;
    for (const auto & item : segs) {
        PromptSegment seg;
        if (py::isinstance<ImageChunk>(item)) {
            seg.media = item.cast<std::shared_ptr<ImageChunk>>();
        } else {
            try {
                seg.tokens = item.cast<std::vector<int32_t>>();
            } catch (const py::cast_error &) {
                throw Error(ErrorKind::InvalidArgument, "a prompt segment must be a list of token ids or an ImageChunk");
            }
        }
        out.push_back(std::move(seg));
    }
    return out;
}

py::tuple prompt_tuple(const ChatPrompt & p) {
    py::list segs;
    for (const auto & s : p.segments) {
        if (s.media) segs.append(std::const_pointer_cast<ImageChunk>(s.media));
        else segs.append(py::cast(s.tokens));
    }
    return py::make_tuple(segs, utf8(p.text), p.thinking, utf8(p.answer_prefix), p.tts);
}

py::array_t<float> rows(const std::vector<float> & v, size_t n, size_t width) {
    py::array_t<float> out({(py::ssize_t) n, (py::ssize_t) width});
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
    return out;
}

// Debug options from Python: on_tensor(name, array) is called with the GIL held.
DebugOptions to_debug(const py::object & on_tensor, const std::string & filter, bool profile_ops) {
    DebugOptions d;
    d.tensor_filter = filter;
    d.profile_ops = profile_ops;
    if (!on_tensor.is_none()) {
        auto fn = std::make_shared<py::object>(on_tensor);
        d.on_tensor = [fn](const TensorDump & t) {
            py::gil_scoped_acquire gil;
            std::vector<py::ssize_t> shape(t.shape.rbegin(), t.shape.rend());   // numpy order
            py::array_t<float> a(shape);
            if (!t.data.empty()) std::memcpy(a.mutable_data(), t.data.data(), t.data.size() * sizeof(float));
            (*fn)(t.graph + ":" + t.name, a);
        };
    }
    return d;
}

std::shared_ptr<ImageChunk> encode_with(const std::function<std::shared_ptr<const ImageChunk>(
                                            const uint8_t *, int, int, const ImageOptions &)> & enc,
                                        const py::array_t<uint8_t, py::array::c_style | py::array::forcecast> & rgb,
                                        int max_slice_nums, std::optional<bool> use_image_id, int image_id) {
    if (rgb.ndim() != 3 || rgb.shape(2) != 3) throw Error(ErrorKind::InvalidArgument, "image must be an HxWx3 uint8 array");
    ImageOptions o;
    o.max_slice_nums = max_slice_nums;
    o.use_image_id = use_image_id;
    o.image_id = image_id;
    const uint8_t * data = rgb.data();
    const int h = (int) rgb.shape(0), w = (int) rgb.shape(1);
    py::gil_scoped_release nogil;
    return std::const_pointer_cast<ImageChunk>(enc(data, w, h, o));
}

} // namespace

void bind_session(py::module_ & mod) {
    py::class_<ImageEncoder>(mod, "ImageEncoder")
        .def(py::init([](std::shared_ptr<Model> model, int n_threads) {
            py::gil_scoped_release nogil;
            return std::make_unique<ImageEncoder>(std::move(model), n_threads);
        }), py::arg("model"), py::arg("n_threads") = 0)
        .def("encode", [](ImageEncoder & e, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> rgb,
                          int max_slice_nums, std::optional<bool> use_image_id, int image_id) {
            return encode_with([&](const uint8_t * d, int w, int h, const ImageOptions & o) { return e.encode(d, w, h, o); },
                               rgb, max_slice_nums, use_image_id, image_id);
        }, py::arg("rgb"), py::arg("max_slice_nums") = 0, py::arg("use_image_id") = py::none(), py::arg("image_id") = 0);

    mod.def("cpu_kernels", [] { return minicpm::cpu_ops::available(); },
            "Whether the library's AVX2 CPU kernels (matrix products, GELU, Mish) run on this machine; "
            "MINICPM_CPU_OPS=0 in the environment turns them off.");

    mod.def("render_chat", [](const Model & m, const py::list & messages, bool add_generation_prompt,
                              std::optional<bool> enable_thinking, std::optional<bool> use_tts_template, bool omni_mode) {
        auto msgs = to_messages(messages);
        return utf8(render_chat_text(
            m, msgs, to_chat_params(enable_thinking, add_generation_prompt, 0, std::nullopt, use_tts_template, omni_mode)));
    }, py::arg("model"), py::arg("messages"), py::arg("add_generation_prompt") = true,
        py::arg("enable_thinking") = py::none(), py::arg("use_tts_template") = py::none(), py::arg("omni_mode") = false);

    mod.def("chat_prompt_with", [](const Model & m, ImageEncoder & enc, const py::list & messages,
                                   bool add_generation_prompt, std::optional<bool> enable_thinking, int max_slice_nums,
                                   std::optional<bool> use_image_id) {
        auto msgs = to_messages(messages);
        const ChatParams cp = to_chat_params(enable_thinking, add_generation_prompt, max_slice_nums, use_image_id);
        ChatPrompt p;
        {
            py::gil_scoped_release nogil;
            p = build_chat_prompt(
                m, msgs, cp,
                [&](const RgbImage & img, const ImageOptions & o) {
                    return enc.encode(img.pixels.data(), img.width, img.height, o);
                },
                {}, [&](const VideoFrames & v) { return enc.encode_video(v); });
        }
        return prompt_tuple(p);
    }, py::arg("model"), py::arg("encoder"), py::arg("messages"), py::arg("add_generation_prompt") = true,
        py::arg("enable_thinking") = py::none(), py::arg("max_slice_nums") = 0, py::arg("use_image_id") = py::none());

    py::class_<Session>(mod, "Session")
        .def(py::init([](std::shared_ptr<Model> model, int n_ctx, int n_batch, std::optional<uint64_t> seed,
                         const std::string & kv_type, const std::string & flash_attn, int n_threads,
                         const py::object & eval_callback, const std::string & eval_filter, bool profile_ops, bool batch) {
            SessionParams p;
            p.n_ctx = n_ctx;
            p.n_batch = n_batch;
            p.seed = seed;
            p.kv_type = kv_type;
            p.flash_attn = flash_attn;
            p.n_threads = n_threads;
            p.batch = batch;
            p.debug = to_debug(eval_callback, eval_filter, profile_ops);
            py::gil_scoped_release nogil;
            return std::make_unique<Session>(std::move(model), p);
        }), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::arg("seed") = py::none(),
            py::arg("kv_type") = "auto", py::arg("flash_attn") = "auto", py::arg("n_threads") = 0,
            py::arg("eval_callback") = py::none(), py::arg("eval_filter") = "", py::arg("profile_ops") = false,
            py::arg("batch") = false)
        .def("prefill", py::overload_cast<const std::vector<int32_t> &>(&Session::prefill), py::arg("tokens"),
             py::call_guard<py::gil_scoped_release>())
        .def("sync", py::overload_cast<const std::vector<int32_t> &>(&Session::sync), py::arg("tokens"),
             py::call_guard<py::gil_scoped_release>())
        .def("prefill_segments", [](Session & s, const py::list & segs) {
            auto v = to_segments(segs);
            py::gil_scoped_release nogil;
            return s.prefill(v);
        }, py::arg("segments"))
        .def("sync_segments", [](Session & s, const py::list & segs) {
            auto v = to_segments(segs);
            py::gil_scoped_release nogil;
            return s.sync(v);
        }, py::arg("segments"))
        .def("encode_image", [](Session & s, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> rgb,
                                int max_slice_nums, std::optional<bool> use_image_id, int image_id) {
            return encode_with([&](const uint8_t * d, int w, int h, const ImageOptions & o) {
                return s.encode_image(d, w, h, o);
            }, rgb, max_slice_nums, use_image_id, image_id);
        }, py::arg("rgb"), py::arg("max_slice_nums") = 0, py::arg("use_image_id") = py::none(), py::arg("image_id") = 0)
        .def("encode_audio", [](Session & s, const py::array & pcm) {
            auto a = to_pcm(pcm, "audio");
            std::vector<std::shared_ptr<const AudioChunk>> chunks;
            {
                py::gil_scoped_release nogil;
                chunks = s.encode_audio(*a);
            }
            py::list out;
            for (auto & c : chunks) out.append(std::const_pointer_cast<ImageChunk>(c));
            return out;
        }, py::arg("pcm"))
        .def("begin_audio_stream", &Session::begin_audio_stream, py::call_guard<py::gil_scoped_release>())
        .def("push_audio", [](Session & s, const py::array & pcm) {
            auto a = to_pcm(pcm, "audio chunk");
            py::gil_scoped_release nogil;
            return s.push_audio(a->samples.data(), a->samples.size());
        }, py::arg("pcm"))
        .def("end_audio_stream", &Session::end_audio_stream, py::call_guard<py::gil_scoped_release>())
        .def("begin_stream_response", [](Session & s, std::optional<int> max_tokens, std::vector<std::string> stop,
                                         const py::dict & sampling, bool skip_special) {
            GenerationParams g = to_generation(max_tokens, std::move(stop), sampling, true, skip_special);
            py::gil_scoped_release nogil;
            s.begin_stream_response(g);
        }, py::arg("max_tokens"), py::arg("stop"), py::arg("sampling"), py::arg("skip_special"))
        .def_property_readonly("audio_stream_active", &Session::audio_stream_active)
        .def("streaming_prefill", [](Session & s, const py::dict & msg, bool omni_mode, bool is_last_chunk,
                                     int max_slice_nums, bool use_tts_template, bool enable_thinking) {
            py::list one;
            one.append(msg);
            const Message m = to_messages(one).front();
            StreamingPrefillParams p;
            p.omni_mode = omni_mode;
            p.is_last_chunk = is_last_chunk;
            p.max_slice_nums = max_slice_nums;
            p.use_tts_template = use_tts_template;
            p.enable_thinking = enable_thinking;
            py::gil_scoped_release nogil;
            return s.streaming_prefill(m, p);
        }, py::arg("msg"), py::arg("omni_mode") = true, py::arg("is_last_chunk") = false, py::arg("max_slice_nums") = 1,
            py::arg("use_tts_template") = true, py::arg("enable_thinking") = false)
        .def_property_readonly("streaming_started", &Session::streaming_started)
        .def("chat_prompt", [](Session & s, const py::list & messages, bool add_generation_prompt,
                               std::optional<bool> enable_thinking, int max_slice_nums, std::optional<bool> use_image_id,
                               std::optional<bool> use_tts_template, bool omni_mode) {
            auto msgs = to_messages(messages);
            const ChatParams cp = to_chat_params(enable_thinking, add_generation_prompt, max_slice_nums, use_image_id,
                                                 use_tts_template, omni_mode);
            ChatPrompt p;
            {
                py::gil_scoped_release nogil;
                p = s.chat_prompt(msgs, cp);
            }
            return prompt_tuple(p);
        }, py::arg("messages"), py::arg("add_generation_prompt") = true, py::arg("enable_thinking") = py::none(),
            py::arg("max_slice_nums") = 0, py::arg("use_image_id") = py::none(), py::arg("use_tts_template") = py::none(),
            py::arg("omni_mode") = false)
        .def("begin_chat", [](Session & s, const py::list & messages, std::optional<bool> enable_thinking,
                              int max_slice_nums, std::optional<bool> use_image_id, std::optional<int> max_tokens,
                              std::vector<std::string> stop, const py::dict & sampling, bool stop_at_end_of_turn,
                              bool skip_special, std::optional<bool> use_tts_template, bool omni_mode, bool speech) {
            auto msgs = to_messages(messages);
            ChatParams cp = to_chat_params(enable_thinking, true, max_slice_nums, use_image_id, use_tts_template, omni_mode);
            cp.generation = to_generation(max_tokens, std::move(stop), sampling, stop_at_end_of_turn, skip_special);
            cp.speech = speech;
            ChatPrompt p;
            {
                py::gil_scoped_release nogil;
                p = s.begin_chat(msgs, cp);
            }
            return prompt_tuple(p);
        }, py::arg("messages"), py::arg("enable_thinking"), py::arg("max_slice_nums"), py::arg("use_image_id"),
            py::arg("max_tokens"), py::arg("stop"), py::arg("sampling"), py::arg("stop_at_end_of_turn"),
            py::arg("skip_special"), py::arg("use_tts_template") = py::none(), py::arg("omni_mode") = false,
            py::arg("speech") = false)
        .def("logits", [](Session & s) {
            std::vector<float> l;
            {
                py::gil_scoped_release nogil;
                l = s.logits();
            }
            py::array_t<float> out((py::ssize_t) l.size());
            if (!l.empty()) std::memcpy(out.mutable_data(), l.data(), l.size() * sizeof(float));
            return out;
        })
        .def("set_capture", &Session::set_capture, py::arg("hidden"), py::arg("logits"))
        .def("hidden_states", [](const Session & s, int first, int n) {
            return rows(s.hidden_states(first, n), (size_t) n, (size_t) s.model()->info().n_embd);
        }, py::arg("first"), py::arg("n"))
        .def("position_logits", [](const Session & s, int first, int n) {
            return rows(s.position_logits(first, n), (size_t) n, (size_t) s.model()->info().n_vocab);
        }, py::arg("first"), py::arg("n"))
        .def("remove", [](Session & s, int first, int last, bool realign) { s.remove(first, last, realign); },
             py::arg("first"), py::arg("last"), py::arg("realign") = false, py::call_guard<py::gil_scoped_release>())
        .def("replace", &Session::replace, py::arg("first"), py::arg("last"), py::arg("tokens"),
             py::call_guard<py::gil_scoped_release>())
        .def("sample", [](Session & s, const py::dict & sampling) {
            SamplingParams p = to_sampling(sampling);
            py::gil_scoped_release nogil;
            return s.sample(p);
        }, py::arg("sampling"))
        .def("begin_generation", [](Session & s, std::optional<int> max_tokens, std::vector<std::string> stop,
                                    const py::dict & sampling, bool stop_at_end_of_turn, bool skip_special,
                                    bool thinking) {
            GenerationParams g = to_generation(max_tokens, std::move(stop), sampling, stop_at_end_of_turn, skip_special);
            g.thinking = thinking;
            s.begin_generation(g);
        }, py::arg("max_tokens"), py::arg("stop"), py::arg("sampling"), py::arg("stop_at_end_of_turn"),
            py::arg("skip_special"), py::arg("thinking") = false)
        .def("next", [](Session & s) {
            GenerationStep st;
            {
                py::gil_scoped_release nogil;
                st = s.next();
            }
            return py::make_tuple(utf8(st.text), st.token, st.done, stop_reason_name(st.reason));
        })
        .def("reset", &Session::reset)
        .def_property_readonly("n_past", &Session::n_past)
        .def_property_readonly("n_ctx", &Session::n_ctx)
        .def_property_readonly("tokens", &Session::tokens)
        .def_property_readonly("positions", &Session::positions)
        .def_property_readonly("timings", [](const Session & s) {
            const Timings & t = s.timings();
            py::dict d;
            d["prefill_ms"] = t.prefill_ms;
            d["decode_ms"] = t.decode_ms;
            d["sample_ms"] = t.sample_ms;
            d["encode_ms"] = t.encode_ms;
            d["n_prefill"] = t.n_prefill;
            d["n_decode"] = t.n_decode;
            d["n_images"] = t.n_images;
            d["audio_ms"] = t.audio_ms;
            d["n_audio"] = t.n_audio;
            return d;
        })
        .def("reset_timings", &Session::reset_timings);
}
