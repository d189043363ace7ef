// Python bindings: conversion and validation only; behaviour lives in the C++ core.
#include "minicpm/minicpm.h"

#include "core/backend.h"
#include "core/gguf_file.h"
#include "core/log.h"
#include "preprocess/tokenizer.h"
#include "minicpm/chat.h"
#include "runtime/defaults.h"

#include "bind_common.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>

namespace py = pybind11;
using namespace minicpm;
using minicpm_py::utf8;
using minicpm_py::PyTokenizer;

namespace {

const char * error_class(ErrorKind k) {
    switch (k) {
        case ErrorKind::File: return "FileError";
        case ErrorKind::Format: return "FormatError";
        case ErrorKind::Unsupported: return "UnsupportedError";
        case ErrorKind::InvalidArgument: return "InvalidArgumentError";
        case ErrorKind::ContextFull: return "ContextFullError";
        case ErrorKind::Backend: return "BackendError";
        case ErrorKind::Busy: return "BusyError";
        default: return "Error";
    }
}

std::vector<ChatMessage> to_messages(const py::list & messages) {
    std::vector<ChatMessage> out;
    for (const auto & item : messages) {
        if (!py::isinstance<py::dict>(item)) {
            throw Error(ErrorKind::InvalidArgument, "each message must be a dict with 'role' and 'content'");
        }
        py::dict d = item.cast<py::dict>();
        if (!d.contains("role") || !d.contains("content")) {
            throw Error(ErrorKind::InvalidArgument, "each message needs 'role' and 'content' keys");
        }
        ChatMessage m;
        m.role = py::str(d["role"]);
        py::object content = d["content"];
        if (!py::isinstance<py::str>(content) && !content.is_none()) {
            throw Error(ErrorKind::InvalidArgument, "message content must be a string here, got " +
                                                        std::string(Py_TYPE(content.ptr())->tp_name));
        }
        m.content = content.is_none() ? std::string() : content.cast<std::string>();
        if (d.contains("reasoning_content") && !d["reasoning_content"].is_none()) {
            m.reasoning_content = py::str(d["reasoning_content"]).cast<std::string>();
        }
        out.push_back(std::move(m));
    }
    return out;
}

py::dict model_info(const Model & m) {
    const ModelInfo & i = m.info();
    py::dict d;
    d["path"] = i.path;
    d["arch"] = i.arch;
    d["model_type"] = i.model_type;
    d["name"] = i.name;
    d["device"] = i.device;
    d["n_vocab"] = i.n_vocab;
    d["n_embd"] = i.n_embd;
    d["n_layer"] = i.n_layer;
    d["n_head"] = i.n_head;
    d["n_head_kv"] = i.n_head_kv;
    d["head_dim"] = i.head_dim;
    d["n_ff"] = i.n_ff;
    d["n_ctx_train"] = i.n_ctx_train;
    d["rope_base"] = i.rope_base;
    d["rms_eps"] = i.rms_eps;
    d["weight_bytes"] = i.weight_bytes;
    d["repacked_bytes"] = i.repacked_bytes;
    d["weight_type"] = i.weight_type;
    d["components"] = i.components;
    return d;
}

py::dict sampler_dict(const SamplerConfig & c) {
    py::dict d;
    d["temperature"] = c.temperature;
    d["top_k"] = c.top_k;
    d["top_p"] = c.top_p;
    d["min_p"] = c.min_p;
    d["repeat_penalty"] = c.repeat_penalty;
    d["presence_penalty"] = c.presence_penalty;
    d["repeat_last_n"] = c.repeat_last_n;
    return d;
}

py::dict defaults_dict(const GenerationDefaults & g) {
    py::dict d;
    d["enable_thinking"] = g.enable_thinking ? py::cast(*g.enable_thinking) : py::none();
    d["sampling"] = sampler_dict(g.sampling);
    d["sampling_think"] = sampler_dict(g.sampling_think);
    d["max_tokens"] = g.max_tokens;
    d["source"] = g.source;
    return d;
}

} // namespace

// Bindings of other components, one file each (_bind_*.cpp).
void bind_image(py::module_ & mod);
void bind_audio_mel(py::module_ & mod);
void bind_vision(py::module_ & mod);
void bind_audio(py::module_ & mod);
void bind_s3tok(py::module_ & mod);
void bind_quant(py::module_ & mod);
void bind_tts(py::module_ & mod);
void bind_session(py::module_ & mod);
void bind_hift(py::module_ & mod);
void bind_flow(py::module_ & mod);
void bind_cvoc(py::module_ & mod);
void bind_speech(py::module_ & mod);
void bind_duplex(py::module_ & mod);
void bind_duplex_window(py::module_ & mod);

PYBIND11_MODULE(_core, mod) {
    mod.doc() = "minicpm.cpp native core";

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error & e) {
            py::gil_scoped_acquire gil;
            py::object errors = py::module_::import("minicpm_cpp.errors");
            py::object cls = errors.attr(error_class(e.kind()));
            PyErr_SetObject(cls.ptr(), utf8(e.what()).ptr());
        }
    });

    bind_image(mod);
    bind_audio_mel(mod);
    bind_vision(mod);
    bind_audio(mod);
    bind_s3tok(mod);
    bind_quant(mod);
    bind_flow(mod);
    bind_tts(mod);

    mod.def("set_log_level", [](const std::string & level) {
        if (level == "error") set_log_level(LogLevel::Error);
        else if (level == "warn") set_log_level(LogLevel::Warn);
        else if (level == "info") set_log_level(LogLevel::Info);
        else if (level == "debug") set_log_level(LogLevel::Debug);
        else throw Error(ErrorKind::InvalidArgument, "log level must be error|warn|info|debug, got '" + level + "'");
    });

    mod.def("model_defaults", [](const std::string & path) {
        GgufFile f(path);
        return defaults_dict(read_generation_defaults(f));
    }, py::arg("path"), "The generation defaults recorded in a GGUF file (reads its metadata only).");

    mod.def("list_devices", [] {
        py::list out;
        for (const auto & d : list_devices()) {
            py::dict e;
            e["name"] = d.name;
            e["description"] = d.description;
            e["type"] = d.type;
            e["memory_free"] = d.memory_free;
            e["memory_total"] = d.memory_total;
            out.append(e);
        }
        return out;
    });

    py::class_<PyTokenizer>(mod, "Tokenizer")
        .def(py::init<const std::string &>(), py::arg("path"))
        .def("encode", [](const PyTokenizer & t, const std::string & text, bool parse_special) {
            return t.tok->encode(text, parse_special);
        }, py::arg("text"), py::arg("parse_special") = true, py::call_guard<py::gil_scoped_release>())
        .def("decode", [](const PyTokenizer & t, const std::vector<int32_t> & ids, bool skip_special) {
            return utf8(t.tok->decode(ids, skip_special));
        }, py::arg("ids"), py::arg("skip_special") = false)
        .def("token_bytes", [](const PyTokenizer & t, int32_t id) { return py::bytes(t.tok->token_bytes(id)); })
        .def("find_token", [](const PyTokenizer & t, const std::string & s) { return t.tok->find_token(s); })
        .def("token_type", [](const PyTokenizer & t, int32_t id) { return t.tok->token_type(id); })
        .def("decode_stream", [](const PyTokenizer & t, const std::vector<int32_t> & ids, bool skip_special) {
            // Pieces as a streaming decoder returns them (for tests of streaming).
            StreamDecoder dec(*t.tok, skip_special);
            py::list out;
            for (int32_t id : ids) out.append(utf8(dec.push(id)));
            out.append(utf8(dec.flush()));
            return out;
        }, py::arg("ids"), py::arg("skip_special") = false)
        .def_property_readonly("n_tokens", [](const PyTokenizer & t) { return t.tok->n_tokens(); });

    py::class_<ChatTemplate>(mod, "ChatTemplate")
        .def(py::init([](const py::object & src) {
            if (!py::isinstance<py::str>(src)) {
                throw Error(ErrorKind::InvalidArgument, "ChatTemplate source must be a str (a Jinja chat template)");
            }
            return ChatTemplate::from_source(src.cast<std::string>());
        }), py::arg("source"))
        .def("render", [](const ChatTemplate & t, const py::list & messages, bool add_generation_prompt,
                          std::optional<bool> enable_thinking) {
            ChatOptions o;
            o.add_generation_prompt = add_generation_prompt;
            o.enable_thinking = enable_thinking;
            return utf8(t.render(to_messages(messages), o));
        }, py::arg("messages"), py::arg("add_generation_prompt") = true, py::arg("enable_thinking") = py::none())
        .def_property_readonly("family", &ChatTemplate::family);

    // Images and audio clips ready for the LLM (MediaChunk; the Python name is historical).
    py::class_<ImageChunk, std::shared_ptr<ImageChunk>>(mod, "ImageChunk")
        .def_property_readonly("kind", [](const ImageChunk & c) {
            return c.kind == MediaChunk::Kind::Audio ? "audio" : "image";
        })
        .def_property_readonly("n_samples", [](const ImageChunk & c) { return c.n_samples; })
        .def_property_readonly("tokens", [](const ImageChunk & c) { return c.tokens; })
        .def_property_readonly("embed_pos", [](const ImageChunk & c) { return c.embed_pos; })
        .def_property_readonly("n_tokens", [](const ImageChunk & c) { return c.tokens.size(); })
        .def_property_readonly("grid", [](const ImageChunk & c) { return py::make_tuple(c.cols, c.rows); })
        .def_property_readonly("n_slices", [](const ImageChunk & c) { return c.n_slices; })
        .def("embeddings", [](const ImageChunk & c) {
            py::array_t<float> out({(py::ssize_t) c.embed_pos.size(), (py::ssize_t) c.n_embd});
            if (!c.embeddings.empty()) std::memcpy(out.mutable_data(), c.embeddings.data(), c.embeddings.size() * sizeof(float));
            return out;
        })
        .def("__repr__", [](const ImageChunk & c) {
            if (c.kind == MediaChunk::Kind::Audio) {
                return "AudioChunk(tokens=" + std::to_string(c.tokens.size()) + ", samples=" + std::to_string(c.n_samples) +
                       ", audio_tokens=" + std::to_string(c.embed_pos.size()) + ")";
            }
            return "ImageChunk(tokens=" + std::to_string(c.tokens.size()) + ", slices=" + std::to_string(c.n_slices) +
                   ", grid=" + std::to_string(c.cols) + "x" + std::to_string(c.rows) + ")";
        });

    py::class_<Model, std::shared_ptr<Model>>(mod, "Model")
        .def(py::init([](const std::string & path, const std::string & device, int n_threads, const std::string & mmproj,
                         std::vector<std::string> extra_files, bool cpu_repack, std::optional<bool> fuse_qkv, bool warmup,
                         const std::string & vision_flash_attn, std::optional<bool> vision_pad_heads,
                         const std::string & audio, std::optional<bool> audio_fold_norms, int64_t max_image_patches,
                         std::optional<bool> flow_lean, int64_t batch_cache_cells, std::optional<bool> vision_fold_norms) {
            ModelParams p;
            p.device = device;
            p.n_threads = n_threads;
            p.mmproj = mmproj;
            p.extra_files = std::move(extra_files);
            p.cpu_repack = cpu_repack;
            p.fuse_qkv = fuse_qkv;
            p.warmup = warmup;
            p.vision_flash_attn = vision_flash_attn;
            p.vision_pad_heads = vision_pad_heads;
            p.vision_fold_norms = vision_fold_norms;
            p.audio = audio;
            p.audio_fold_norms = audio_fold_norms;
            p.max_image_patches = max_image_patches;
            p.flow_lean = flow_lean;
            p.batch_cache_cells = batch_cache_cells;
            py::gil_scoped_release nogil;
            return Model::load(path, p);
        }), py::arg("path"), py::arg("device") = "auto", py::arg("n_threads") = 0, py::arg("mmproj") = "",
            py::arg("extra_files") = std::vector<std::string>{}, py::arg("cpu_repack") = true,
            py::arg("fuse_qkv") = py::none(), py::arg("warmup") = true, py::arg("vision_flash_attn") = "auto",
            py::arg("vision_pad_heads") = py::none(), py::arg("audio") = "", py::arg("audio_fold_norms") = py::none(),
            py::arg("max_image_patches") = 4096, py::arg("flow_lean") = py::none(), py::arg("batch_cache_cells") = 0,
            py::arg("vision_fold_norms") = py::none())
        .def_property_readonly("has_vision", &Model::has_vision)
        .def_property_readonly("has_audio", &Model::has_audio)
        .def("has_component", &Model::has_component, py::arg("kind"))
        .def("batch_stats", [](const Model & m) {
            const Model::BatchStats s = m.batch_stats();
            py::dict d;
            d["batches"] = s.batches;
            d["parts"] = s.parts;
            d["rows"] = s.rows;
            d["max_parts"] = s.max_parts;
            d["rebuilds"] = s.rebuilds;
            d["shared_parts"] = s.shared_parts;
            d["shared_cache_bytes"] = s.shared_cache_bytes;
            d["build_ms"] = s.build_ms;
            d["compute_ms"] = s.compute_ms;
            return d;
        })
        .def("set_batch_gather", &Model::set_batch_gather, py::arg("min_parts"), py::arg("wait_ms"))
        .def_property_readonly("info", &model_info)
        .def_property_readonly("defaults", [](const Model & m) { return defaults_dict(m.defaults()); })
        .def("tokenize", &Model::tokenize, py::arg("text"), py::arg("parse_special") = true,
             py::call_guard<py::gil_scoped_release>())
        .def("detokenize", [](const Model & m, const std::vector<int32_t> & ids, bool skip_special) {
            return utf8(m.detokenize(ids, skip_special));
        }, py::arg("ids"), py::arg("skip_special") = false)
        .def("token_bytes", [](const Model & m, int32_t id) { return py::bytes(m.tokenizer().token_bytes(id)); })
        .def("find_token", [](const Model & m, const std::string & s) { return m.tokenizer().find_token(s); })
        .def_property_readonly("end_of_turn_ids", &Model::end_of_turn_ids)
        .def_property_readonly("chat_template", [](const Model & m) { return m.info().chat_template; })
        .def_property_readonly("chat_family", [](const Model & m) { return m.chat_template().family(); });

    bind_session(mod);
    bind_hift(mod);
    bind_cvoc(mod);
    bind_speech(mod);
    bind_duplex(mod);
    bind_duplex_window(mod);
}
