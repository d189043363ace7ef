#include "defaults.h"

#include "core/error.h"
#include "model/names.h"

#include <cmath>

namespace minicpm {

namespace {

// A signed integer value of any integer type (llama.cpp writes top_k and penalty_last_n as i32).
std::optional<int64_t> opt_int(const GgufFile & f, const std::string & key) {
    const int64_t id = gguf_find_key(f.ctx(), key.c_str());
    if (id < 0) return std::nullopt;
    switch (gguf_get_kv_type(f.ctx(), id)) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(f.ctx(), id);
        case GGUF_TYPE_INT8: return gguf_get_val_i8(f.ctx(), id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(f.ctx(), id);
        case GGUF_TYPE_INT16: return gguf_get_val_i16(f.ctx(), id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(f.ctx(), id);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(f.ctx(), id);
        case GGUF_TYPE_INT64: return gguf_get_val_i64(f.ctx(), id);
        case GGUF_TYPE_UINT64: {
            const uint64_t u = gguf_get_val_u64(f.ctx(), id);
            return u > (uint64_t) INT64_MAX ? INT64_MAX : (int64_t) u;
        }
        default: fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": expected an integer");
    }
}

[[noreturn]] void bad_value(const GgufFile & f, const std::string & key, const std::string & want, double got) {
    fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": expected " + want + ", got " +
                                std::to_string(got));
}

float read_float(const GgufFile & f, KeyName k, float fallback, float lo, float hi, bool lo_open, const char * want,
                 bool & found) {
    const std::string key = key_name(k);
    const auto v = f.opt_f32(key);
    if (!v) return fallback;
    if (!std::isfinite(*v) || *v > hi || (lo_open ? *v <= lo : *v < lo)) bad_value(f, key, want, *v);
    found = true;
    return *v;
}

int read_int(const GgufFile & f, KeyName k, int fallback, int64_t lo, int64_t hi, const char * want, bool & found) {
    const std::string key = key_name(k);
    const auto v = opt_int(f, key);
    if (!v) return fallback;
    if (*v < lo || *v > hi) bad_value(f, key, want, (double) *v);
    found = true;
    return (int) *v;
}

struct SamplingKeys {
    KeyName temp, top_k, top_p, min_p, penalty_repeat;
};

SamplerConfig read_sampling(const GgufFile & f, const SamplingKeys & k, const SamplerConfig & base, bool & found) {
    SamplerConfig c = base;
    c.temperature    = read_float(f, k.temp, c.temperature, 0.0f, 100.0f, false, "a temperature in [0, 100]", found);
    c.top_k          = read_int(f, k.top_k, c.top_k, 0, 1 << 30, "a top_k >= 0", found);
    c.top_p          = read_float(f, k.top_p, c.top_p, 0.0f, 1.0f, true, "a top_p in (0, 1]", found);
    c.min_p          = read_float(f, k.min_p, c.min_p, 0.0f, 1.0f, false, "a min_p in [0, 1]", found);
    c.repeat_penalty = read_float(f, k.penalty_repeat, c.repeat_penalty, 0.0f, 100.0f, true,
                                  "a repetition penalty in (0, 100]", found);
    return c;
}

} // namespace

GenerationDefaults fallback_generation_defaults() {
    GenerationDefaults d;
    d.sampling.temperature = 0.7f;
    d.sampling.top_p = 0.8f;
    d.sampling.top_k = 100;
    d.sampling.repeat_penalty = 1.05f;
    d.sampling_think = d.sampling;
    d.max_tokens = 2048;
    d.source = "library fallback (llama.cpp's MiniCPM-V values)";
    return d;
}

GenerationDefaults read_generation_defaults(const GgufFile & f) {
    GenerationDefaults d = fallback_generation_defaults();
    bool general = false, chat = false, think = false;
    d.sampling = read_sampling(f, {KeyName::GENERAL_SAMPLING_TEMP, KeyName::GENERAL_SAMPLING_TOP_K,
                                   KeyName::GENERAL_SAMPLING_TOP_P, KeyName::GENERAL_SAMPLING_MIN_P,
                                   KeyName::GENERAL_SAMPLING_PENALTY_REPEAT},
                               d.sampling, general);
    if (general) d.source = "general.sampling.* of the file";
    d.sampling.repeat_last_n = read_int(f, KeyName::GENERAL_SAMPLING_PENALTY_LAST_N, -1, -1, 1 << 30,
                                        "a penalty_last_n >= -1", general);
    d.sampling = read_sampling(f, {KeyName::MINICPM_CHAT_TEMP, KeyName::MINICPM_CHAT_TOP_K, KeyName::MINICPM_CHAT_TOP_P,
                                   KeyName::MINICPM_CHAT_MIN_P, KeyName::MINICPM_CHAT_PENALTY_REPEAT},
                               d.sampling, chat);
    d.sampling_think = read_sampling(f, {KeyName::MINICPM_CHAT_THINK_TEMP, KeyName::MINICPM_CHAT_THINK_TOP_K,
                                         KeyName::MINICPM_CHAT_THINK_TOP_P, KeyName::MINICPM_CHAT_THINK_MIN_P,
                                         KeyName::MINICPM_CHAT_THINK_PENALTY_REPEAT},
                                     d.sampling, think);
    d.enable_thinking = f.opt_bool(key_name(KeyName::MINICPM_CHAT_ENABLE_THINKING));
    d.max_tokens = read_int(f, KeyName::MINICPM_CHAT_MAX_NEW_TOKENS, d.max_tokens, 1, 1 << 24,
                            "a max_new_tokens in [1, 2^24]", chat);
    if (chat || think || d.enable_thinking) {
        d.source = f.opt_str(key_name(KeyName::MINICPM_CHAT_SOURCE)).value_or("minicpm.chat.* of the file");
    }
    return d;
}

} // namespace minicpm
