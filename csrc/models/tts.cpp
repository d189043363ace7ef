// MiniCPM-o 4.5 TTS talker: hyperparameters, weights, graphs, sampling and the per-session state.
// Mirrors MiniCPMTTS (modeling_minicpmo.py: __init__, generate, gen_logits,
// CustomRepetitionPenaltyLogitsProcessorRepeat), the condition of _generate_speech_non_streaming /
// streaming_generate, and TTSStreamingGenerator.generate_with_buffer (utils.py).
#include "tts.h"

#include "core/error.h"
#include "core/log.h"
#include "core/runner.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

namespace minicpm {

namespace {

std::string key(KeyName k) { return key_name(k); }

int64_t need_u32(const GgufFile & f, KeyName k, int64_t lo, int64_t hi) {
    const int64_t v = f.get_u32(key(k));
    check_int_range(f, key(k), v, lo, hi);
    return v;
}

bool tts_present(const GgufFile & f) {
    return f.opt_bool(key(KeyName::MINICPM_TTS_HAS_TTS)).value_or(false) ||
           f.find_tensor(tensor_name(TensorName::TTS_HEAD_CODE)) != nullptr || is_omni_tts_file(f);
}

// ---- llama.cpp-omni's files (tools/omni/convert: convert_hf_to_gguf.py on surgery.py's tts/ dir,
// convert_projector.py): a llama GGUF whose Q/K rows are permuted for llama.cpp's RoPE, the extra
// tensors under their checkpoint names (head_code.0 folded and stored transposed), and the
// projector in a file of its own.
constexpr const char * kOmniArch = "llama";
constexpr const char * kOmniProjectorArch = "projector";

std::string omni_tensor(TensorName t, int il) {
    const std::string blk = "blk." + std::to_string(il) + ".";
    switch (t) {
        case TensorName::TTS_EMB_TEXT: return "emb_text.weight";
        case TensorName::TTS_EMB_CODE: return "emb_code.0.weight";
        case TensorName::TTS_HEAD_CODE: return "head_code.0.weight";
        case TensorName::TTS_PROJ_1: return "linear1.weight";
        case TensorName::TTS_PROJ_1_BIAS: return "linear1.bias";
        case TensorName::TTS_PROJ_2: return "linear2.weight";
        case TensorName::TTS_PROJ_2_BIAS: return "linear2.bias";
        case TensorName::TTS_OUTPUT_NORM: return "output_norm.weight";
        case TensorName::TTS_ATTN_NORM: return blk + "attn_norm.weight";
        case TensorName::TTS_ATTN_Q: return blk + "attn_q.weight";
        case TensorName::TTS_ATTN_K: return blk + "attn_k.weight";
        case TensorName::TTS_ATTN_V: return blk + "attn_v.weight";
        case TensorName::TTS_ATTN_OUT: return blk + "attn_output.weight";
        case TensorName::TTS_FFN_NORM: return blk + "ffn_norm.weight";
        case TensorName::TTS_FFN_GATE: return blk + "ffn_gate.weight";
        case TensorName::TTS_FFN_UP: return blk + "ffn_up.weight";
        case TensorName::TTS_FFN_DOWN: return blk + "ffn_down.weight";
        default: break;
    }
    fail(ErrorKind::Internal, "tts: no llama.cpp-omni name for tensor " + tensor_name(t, il));
}

size_t max_nodes(const TtsHparams & hp) { return (size_t) (hp.n_layer * 40 + 64); }

// Micro-batch of one graph (a chunk's prefill, a teacher-forced run in pieces).
constexpr int64_t kUbatch = 512;

} // namespace

bool is_omni_tts_file(const GgufFile & f) {
    return f.opt_str(key_name(KeyName::GENERAL_ARCHITECTURE)).value_or("") == kOmniArch &&
           f.find_tensor("head_code.0.weight") && f.find_tensor("emb_code.0.weight");
}

bool is_omni_projector_file(const GgufFile & f) {
    return f.opt_str(key_name(KeyName::GENERAL_ARCHITECTURE)).value_or("") == kOmniProjectorArch &&
           f.find_tensor("linear1.weight");
}

TtsHparams TtsHparams::from_omni(const GgufFile & f, const GgufFile & pf) {
    if (!is_omni_tts_file(f)) {
        fail(ErrorKind::Format, f.path() + " is not llama.cpp-omni's TTS file (architecture llama with emb_code.0.weight "
                                           "and head_code.0.weight)");
    }
    if (!is_omni_projector_file(pf)) {
        fail(ErrorKind::Format, pf.path() + " is not llama.cpp-omni's projector file (architecture projector with "
                                            "linear1.weight)");
    }
    TtsHparams hp;
    hp.omni_layout = true;
    auto k = [](KeyName id) { return key_name(id, kOmniArch); };
    constexpr int64_t kMaxEmbd = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxCtx = 1 << 20;
    auto u32 = [&](KeyName id, int64_t lo, int64_t hi) {
        const int64_t v = f.get_u32(k(id));
        check_int_range(f, k(id), v, lo, hi);
        return v;
    };
    hp.n_embd = u32(KeyName::LLM_EMBEDDING_LENGTH, 1, kMaxEmbd);
    hp.n_ff = u32(KeyName::LLM_FEED_FORWARD_LENGTH, 1, 4 * kMaxEmbd);
    hp.n_head = u32(KeyName::LLM_HEAD_COUNT, 1, kMaxHeads);
    hp.n_head_kv = f.has_key(k(KeyName::LLM_HEAD_COUNT_KV)) ? u32(KeyName::LLM_HEAD_COUNT_KV, 1, hp.n_head) : hp.n_head;
    hp.n_layer = f.get_u32(k(KeyName::LLM_BLOCK_COUNT));
    check_layer_count(f, k(KeyName::LLM_BLOCK_COUNT), hp.n_layer, kMaxLayers,
                      omni_tensor(TensorName::TTS_ATTN_NORM, (int) std::min<int64_t>(hp.n_layer, kMaxLayers) - 1));
    if (hp.n_layer < 1) fail(ErrorKind::Format, k(KeyName::LLM_BLOCK_COUNT) + " in " + f.path() + " must be > 0");
    hp.n_ctx = f.has_key(k(KeyName::LLM_CONTEXT_LENGTH)) ? u32(KeyName::LLM_CONTEXT_LENGTH, 16, kMaxCtx) : 4096;
    hp.eps = f.opt_f32(k(KeyName::LLM_RMS_EPS)).value_or(1e-6f);
    check_float_range(f, k(KeyName::LLM_RMS_EPS), hp.eps, 0.0f, 0.1f, /*lo_open =*/true);
    hp.rope_base = f.opt_f32(k(KeyName::LLM_ROPE_FREQ_BASE)).value_or(10000.0f);
    check_float_range(f, k(KeyName::LLM_ROPE_FREQ_BASE), hp.rope_base, 1.0f, 1e9f);
    if (hp.n_embd % hp.n_head || (hp.n_embd / hp.n_head) % 2 || hp.n_head % hp.n_head_kv) {
        fail(ErrorKind::Format, f.path() + ": TTS width " + std::to_string(hp.n_embd) + " over " +
                                    std::to_string(hp.n_head) + " heads / " + std::to_string(hp.n_head_kv) +
                                    " KV heads does not give even heads");
    }
    hp.head_dim = hp.n_embd / hp.n_head;
    auto rows = [&](const GgufFile & file, const char * name, int64_t width) {
        const TensorInfo * t = file.find_tensor(name);
        if (!t || t->n_dims != 2 || t->ne[0] != width || t->ne[1] < 2 || t->ne[1] > (1 << 24)) {
            fail(ErrorKind::Format, std::string("tensor ") + name + " in " + file.path() + ": expected [" +
                                        std::to_string(width) + ", rows]" + (t ? ", got " + shape_str(t->ne, t->n_dims) : ""));
        }
        return t->ne[1];
    };
    hp.n_text = rows(f, "emb_text.weight", hp.n_embd);
    hp.n_audio = rows(f, "emb_code.0.weight", hp.n_embd);
    const TensorInfo * l1 = pf.find_tensor("linear1.weight");
    if (l1->n_dims != 2 || l1->ne[1] != hp.n_embd || l1->ne[0] < 1 || l1->ne[0] > kMaxEmbd) {
        fail(ErrorKind::Format, "tensor linear1.weight in " + pf.path() + ": expected [llm_dim, " +
                                    std::to_string(hp.n_embd) + "], got " + shape_str(l1->ne, l1->n_dims));
    }
    hp.llm_dim = l1->ne[0];
    // Not in the files: llama.cpp-omni's runtime constants (omni.cpp: audio_bos_token_id 151687,
    // text_eos_token_id 151692, the projection always L2-normalised, the whole turn's cache kept).
    hp.audio_bos = 151687;
    hp.text_eos = 151692;
    if (hp.audio_bos >= hp.n_text || hp.text_eos >= hp.n_text) {
        fail(ErrorKind::Format, f.path() + ": emb_text has " + std::to_string(hp.n_text) +
                                    " rows, fewer than llama.cpp-omni's audio BOS / text EOS ids need");
    }
    hp.normalize_hidden = true;
    hp.attention = TtsAttention::Full;
    hp.attention_name = "full_attention";
    return hp;
}

TtsHparams TtsHparams::from_gguf(const GgufFile & f) {
    TtsHparams hp;
    if (!f.has_key(key(KeyName::MINICPM_TTS_EMBEDDING_LENGTH))) {
        fail(ErrorKind::Format, f.path() + " has TTS tensors but no " + key(KeyName::MINICPM_TTS_EMBEDDING_LENGTH) +
                                    " metadata (convert it again with minicpm-convert)");
    }
    // Sane maxima, checked before ggml sees them (the release: 768 wide, 20 layers of 12 heads,
    // FFN 3072, 4096 positions, 152064 text rows, 6562 codes, LLM 4096).
    constexpr int64_t kMaxEmbd = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxCtx = 1 << 20, kMaxRows = 1 << 24;
    hp.n_embd = need_u32(f, KeyName::MINICPM_TTS_EMBEDDING_LENGTH, 1, kMaxEmbd);
    hp.n_ff = need_u32(f, KeyName::MINICPM_TTS_FEED_FORWARD_LENGTH, 1, 4 * kMaxEmbd);
    hp.n_head = need_u32(f, KeyName::MINICPM_TTS_HEAD_COUNT, 1, kMaxHeads);
    hp.n_head_kv = need_u32(f, KeyName::MINICPM_TTS_HEAD_COUNT_KV, 1, hp.n_head);
    hp.n_layer = f.get_u32(key(KeyName::MINICPM_TTS_BLOCK_COUNT));
    check_layer_count(f, key(KeyName::MINICPM_TTS_BLOCK_COUNT), hp.n_layer, kMaxLayers,
                      tensor_name(TensorName::TTS_ATTN_NORM, (int) std::min<int64_t>(hp.n_layer, kMaxLayers) - 1));
    if (hp.n_layer < 1) fail(ErrorKind::Format, key(KeyName::MINICPM_TTS_BLOCK_COUNT) + " in " + f.path() + " must be > 0");
    hp.n_ctx = need_u32(f, KeyName::MINICPM_TTS_CONTEXT_LENGTH, 16, kMaxCtx);
    hp.llm_dim = need_u32(f, KeyName::MINICPM_TTS_LLM_DIM, 1, kMaxEmbd);
    hp.n_text = need_u32(f, KeyName::MINICPM_TTS_NUM_TEXT_TOKENS, 1, kMaxRows);
    hp.n_audio = need_u32(f, KeyName::MINICPM_TTS_NUM_AUDIO_TOKENS, 2, kMaxRows);
    hp.audio_bos = (int32_t) need_u32(f, KeyName::MINICPM_TTS_AUDIO_BOS_ID, 0, hp.n_text - 1);
    hp.text_eos = (int32_t) need_u32(f, KeyName::MINICPM_TTS_TEXT_EOS_ID, 0, hp.n_text - 1);
    hp.eps = f.opt_f32(key(KeyName::MINICPM_TTS_RMS_EPS)).value_or(1e-6f);
    check_float_range(f, key(KeyName::MINICPM_TTS_RMS_EPS), hp.eps, 0.0f, 0.1f, /*lo_open =*/true);
    hp.rope_base = f.opt_f32(key(KeyName::MINICPM_TTS_ROPE_FREQ_BASE)).value_or(10000.0f);
    check_float_range(f, key(KeyName::MINICPM_TTS_ROPE_FREQ_BASE), hp.rope_base, 1.0f, 1e9f);
    hp.normalize_hidden = f.opt_bool(key(KeyName::MINICPM_TTS_NORMALIZE_HIDDEN)).value_or(false);
    hp.interleaved = f.opt_bool(key(KeyName::MINICPM_TTS_INTERLEAVED)).value_or(false);
    if (hp.n_embd % hp.n_head) {
        fail(ErrorKind::Format, f.path() + ": TTS width " + std::to_string(hp.n_embd) + " is not divisible by " +
                                    std::to_string(hp.n_head) + " heads");
    }
    hp.head_dim = hp.n_embd / hp.n_head;
    if (hp.head_dim % 2 || hp.n_head % hp.n_head_kv) {
        fail(ErrorKind::Format, f.path() + ": TTS heads: " + std::to_string(hp.n_head) + " of " +
                                    std::to_string(hp.head_dim) + " (must be even) over " + std::to_string(hp.n_head_kv) +
                                    " KV heads (must divide the head count)");
    }
    // MiniCPMTTSConfig's default is sliding_recompute; the converter always writes the key.
    hp.attention_name = f.opt_str(key(KeyName::MINICPM_TTS_ATTENTION_TYPE)).value_or("sliding_recompute");
    if (hp.attention_name == "full_attention") hp.attention = TtsAttention::Full;
    else if (hp.attention_name == "sliding_window") hp.attention = TtsAttention::SlidingWindow;
    else if (hp.attention_name == "sliding_recompute") hp.attention = TtsAttention::SlidingRecompute;
    else if (hp.attention_name == "reindex") hp.attention = TtsAttention::Reindex;
    else {
        fail(ErrorKind::Format, key(KeyName::MINICPM_TTS_ATTENTION_TYPE) + " in " + f.path() + " is '" +
                                    hp.attention_name + "' (expected full_attention, sliding_window, sliding_recompute "
                                    "or reindex)");
    }
    hp.sliding_window = f.opt_u32(key(KeyName::MINICPM_TTS_SLIDING_WINDOW)).value_or(300);
    check_int_range(f, key(KeyName::MINICPM_TTS_SLIDING_WINDOW), hp.sliding_window, 1, kMaxCtx);
    if (auto ct = f.opt_str(key(KeyName::MINICPM_TTS_CONDITION_TYPE)); ct && *ct != "hidden_text_merge") {
        MINICPM_LOG_WARN("tts: condition_type '%s' in %s: the o4.5 speech paths implement hidden_text_merge only, used here",
                         ct->c_str(), f.path().c_str());
    }
    TtsSampling & s = hp.sampling;
    s.temperature = f.opt_f32(key(KeyName::MINICPM_TTS_TEMP)).value_or(s.temperature);
    check_float_range(f, key(KeyName::MINICPM_TTS_TEMP), s.temperature, 0.0f, 100.0f, /*lo_open =*/true);
    s.top_p = f.opt_f32(key(KeyName::MINICPM_TTS_TOP_P)).value_or(s.top_p);
    check_float_range(f, key(KeyName::MINICPM_TTS_TOP_P), s.top_p, 0.0f, 1.0f);
    s.top_k = (int32_t) f.opt_u32(key(KeyName::MINICPM_TTS_TOP_K)).value_or((uint32_t) s.top_k);
    check_int_range(f, key(KeyName::MINICPM_TTS_TOP_K), s.top_k, 0, kMaxRows);
    s.repetition_penalty = f.opt_f32(key(KeyName::MINICPM_TTS_PENALTY_REPEAT)).value_or(s.repetition_penalty);
    check_float_range(f, key(KeyName::MINICPM_TTS_PENALTY_REPEAT), s.repetition_penalty, 0.0f, 100.0f, /*lo_open =*/true);
    s.penalty_window = (int32_t) f.opt_u32(key(KeyName::MINICPM_TTS_PENALTY_WINDOW)).value_or(16);
    check_int_range(f, key(KeyName::MINICPM_TTS_PENALTY_WINDOW), s.penalty_window, 0, kMaxCtx);
    return hp;
}

TtsWeights TtsWeights::declare(WeightStore & s, const TtsHparams & hp, WeightStore * proj) {
    const int64_t E = hp.n_embd, KV = hp.n_embd_kv(), F = hp.n_ff;
    const bool    omni = hp.omni_layout;
    auto T = [omni](TensorName t, int il = -1) { return omni ? omni_tensor(t, il) : tensor_name(t, il); };
    WeightStore & ps = proj ? *proj : s;
    TtsWeights w;
    // Text rows are gathered (get_rows) on the compute device; code rows are read once into host
    // memory (TtsModel::code_rows), the head is a product's matrix.
    w.emb_text = s.require(T(TensorName::TTS_EMB_TEXT), {E, hp.n_text}, Placement::Main, TensorRole::Weight);
    w.emb_code = s.require(T(TensorName::TTS_EMB_CODE), {E, hp.n_audio}, Placement::Host, TensorRole::Vector);
    if (omni) {
        // stored transposed ([n_audio, E] in ggml order): the product's matrix is made at load
        ggml_tensor * t = s.require(T(TensorName::TTS_HEAD_CODE), {hp.n_audio, E}, Placement::Host, TensorRole::Vector);
        w.head = s.derived("tts.code_head.transposed", GGML_TYPE_F32, {E, hp.n_audio}, [&s, t, E, n = hp.n_audio](uint8_t * d) {
            const std::vector<float> src = s.read_f32(t);   // [E][n_audio] row-major
            float * out = (float *) d;                       // [n_audio][E]
            for (int64_t r = 0; r < E; ++r) {
                for (int64_t c = 0; c < n; ++c) out[c * E + r] = src[(size_t) (r * n + c)];
            }
        });
        s.drop(t);
    } else {
        w.head = s.require(T(TensorName::TTS_HEAD_CODE), {E, hp.n_audio}, Placement::Matrix);
    }
    w.proj1_w = ps.require(T(TensorName::TTS_PROJ_1), {hp.llm_dim, E}, Placement::Matrix);
    w.proj1_b = ps.require(T(TensorName::TTS_PROJ_1_BIAS), {E});
    w.proj2_w = ps.require(T(TensorName::TTS_PROJ_2), {E, E}, Placement::Matrix);
    w.proj2_b = ps.require(T(TensorName::TTS_PROJ_2_BIAS), {E});
    w.output_norm = s.require(T(TensorName::TTS_OUTPUT_NORM), {E});
    for (int il = 0; il < (int) hp.n_layer; ++il) {
        TtsLayer L;
        L.attn_norm = s.require(T(TensorName::TTS_ATTN_NORM, il), {E});
        L.wq = s.require(T(TensorName::TTS_ATTN_Q, il), {E, E}, Placement::Matrix);
        L.wk = s.require(T(TensorName::TTS_ATTN_K, il), {E, KV}, Placement::Matrix);
        L.wv = s.require(T(TensorName::TTS_ATTN_V, il), {E, KV}, Placement::Matrix);
        L.wo = s.require(T(TensorName::TTS_ATTN_OUT, il), {E, E}, Placement::Matrix);
        L.ffn_norm = s.require(T(TensorName::TTS_FFN_NORM, il), {E});
        L.ffn_gate = s.require(T(TensorName::TTS_FFN_GATE, il), {E, F}, Placement::Matrix);
        L.ffn_up = s.require(T(TensorName::TTS_FFN_UP, il), {E, F}, Placement::Matrix);
        L.ffn_down = s.require(T(TensorName::TTS_FFN_DOWN, il), {F, E}, Placement::Matrix);
        w.layers.push_back(L);
    }
    return w;
}

size_t TtsModel::weight_bytes() const {
    size_t n = store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked();
    if (proj_store) n += proj_store->bytes_on_main() + proj_store->bytes_on_host();
    return n;
}

namespace {

void log_loaded(const TtsModel & m) {
    MINICPM_LOG_INFO("tts: Llama talker %lld layers x %lld (%lld heads, %lld KV), %lld codes, attention %s, %s weights%s",
                     (long long) m.hp.n_layer, (long long) m.hp.n_embd, (long long) m.hp.n_head,
                     (long long) m.hp.n_head_kv, (long long) m.hp.n_audio, m.hp.attention_name.c_str(),
                     m.exact ? "f32" : "reduced-precision", m.hp.omni_layout ? " (llama.cpp-omni files)" : "");
}

std::unique_ptr<Component> tts_load(const ComponentLoad & in) {
    if (is_omni_tts_file(in.file)) {
        // llama.cpp-omni's tts/<name>-tts-F16.gguf among a model's files: its projector file
        // from the same folder, owned by the component.
        auto proj = std::make_unique<GgufFile>(find_omni_projector(in.file.path()));
        auto om = load_tts_omni(in.file, *proj, in.devices, in.params);
        om->omni_projector = std::move(proj);
        return om;
    }
    auto m = std::make_unique<TtsModel>();
    m->hp = TtsHparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m->hp.n_layer * 10 + 16));
    m->w = TtsWeights::declare(*m->store, m->hp);
    m->store->set_cpu_repack(in.params.cpu_repack);
    m->store->load();
    m->exact = m->w.layers.front().wq->type == GGML_TYPE_F32 && m->w.head->type == GGML_TYPE_F32 &&
               m->w.emb_text->type == GGML_TYPE_F32;
    m->code_rows = m->store->read_f32(m->w.emb_code);
    log_loaded(*m);
    return m;
}

// Names an intermediate as llama.cpp's cb() does: "tts_name-il".
void cb(ggml_tensor * t, const char * name, int il = -1) {
    if (il >= 0) ggml_format_name(t, "tts_%s-%d", name, il);
    else ggml_format_name(t, "tts_%s", name);
}

} // namespace

const ComponentType kTtsComponent = {"tts", &tts_present, &tts_load};

std::string find_omni_projector(const std::string & tts_path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path dir = fs::path(tts_path).parent_path();
    std::vector<std::string> found;
    for (fs::directory_iterator it(dir.empty() ? fs::path(".") : dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.find("projector") == std::string::npos || it->path().extension() != ".gguf") continue;
        std::error_code ec2;
        if (!fs::is_regular_file(it->path(), ec2)) continue;
        found.push_back(it->path().string());
    }
    std::sort(found.begin(), found.end());
    for (const auto & p : found) {
        try {
            if (is_omni_projector_file(GgufFile(p))) return p;
        } catch (const Error &) {
        }
    }
    fail(ErrorKind::File, tts_path + " is llama.cpp-omni's TTS file; its projector (" +
                              "<name>-projector-F16.gguf, general.architecture projector) was not found in " +
                              (dir.empty() ? std::string(".") : dir.string()));
}

std::unique_ptr<TtsModel> load_tts_omni(const GgufFile & tts, const GgufFile & projector, const Devices & devices,
                                        const ModelParams & params) {
    auto m = std::make_unique<TtsModel>();
    m->hp = TtsHparams::from_omni(tts, projector);
    m->store = std::make_unique<WeightStore>(tts, devices, (size_t) (m->hp.n_layer * 10 + 16));
    m->proj_store = std::make_unique<WeightStore>(projector, devices, 8);
    m->w = TtsWeights::declare(*m->store, m->hp, m->proj_store.get());
    m->store->set_cpu_repack(params.cpu_repack);
    m->store->load();
    m->proj_store->load();
    m->exact = m->w.layers.front().wq->type == GGML_TYPE_F32 && m->w.emb_text->type == GGML_TYPE_F32;
    m->code_rows = m->store->read_f32(m->w.emb_code);
    log_loaded(*m);
    return m;
}

// ---- sampling -----------------------------------------------------------------------------------

uint64_t TtsRng::next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double TtsRng::uniform() { return (double) (next() >> 11) * (1.0 / 9007199254740992.0); }

std::vector<float> tts_probs(const float * logits, int64_t n, const std::vector<int32_t> & history, const TtsSampling & s,
                             bool bos_step, int32_t eos, bool mask_eos) {
    if (n <= 0) fail(ErrorKind::InvalidArgument, "tts: no logits to sample from");
    if (!(s.temperature > 0.0f) || !std::isfinite(s.temperature)) {
        fail(ErrorKind::InvalidArgument, "tts: temperature must be a positive number");
    }
    if (!(s.repetition_penalty > 0.0f) || !std::isfinite(s.repetition_penalty)) {
        fail(ErrorKind::InvalidArgument, "tts: repetition_penalty must be a positive number");
    }
    if (!(s.top_p >= 0.0f && s.top_p <= 1.0f)) fail(ErrorKind::InvalidArgument, "tts: top_p must be in [0, 1]");
    if (s.top_k < 0 || s.penalty_window < 0 || s.min_tokens_to_keep < 1) {
        fail(ErrorKind::InvalidArgument, "tts: top_k and penalty_window must be >= 0, min_tokens_to_keep >= 1");
    }
    const float ninf = -std::numeric_limits<float>::infinity();
    std::vector<float> x(logits, logits + n);
    for (float & v : x) v /= s.temperature;   // logits /= temperature (f32)
    if (!bos_step) {
        // CustomRepetitionPenaltyLogitsProcessorRepeat: counts over the last window tokens.
        if (s.repetition_penalty != 1.0f && s.penalty_window > 0 && !history.empty()) {
            std::vector<int32_t> count((size_t) n, 0);
            const size_t from = history.size() > (size_t) s.penalty_window ? history.size() - (size_t) s.penalty_window : 0;
            for (size_t i = from; i < history.size(); ++i) {
                const int32_t t = history[i];
                if (t < 0 || t >= n) fail(ErrorKind::InvalidArgument, "tts: history token " + std::to_string(t) + " out of range");
                ++count[(size_t) t];
            }
            for (int64_t i = 0; i < n; ++i) {
                if (!count[(size_t) i]) continue;
                const float alpha = std::pow(s.repetition_penalty, (float) count[(size_t) i]);
                x[(size_t) i] = x[(size_t) i] < 0 ? x[(size_t) i] * alpha : x[(size_t) i] / alpha;
            }
        }
        const int64_t keep = std::min<int64_t>(s.min_tokens_to_keep, n);
        // TopPLogitsWarper: ascending sort, remove the tokens whose cumulative probability is
        // <= 1 - top_p, the top `keep` always kept.
        if (s.top_p < 1.0f) {
            std::vector<int64_t> idx((size_t) n);
            std::iota(idx.begin(), idx.end(), 0);
            std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return x[(size_t) a] < x[(size_t) b]; });
            double mx = -std::numeric_limits<double>::infinity();
            for (float v : x) mx = std::max(mx, (double) v);
            std::vector<double> e((size_t) n);
            double sum = 0.0;
            for (int64_t r = 0; r < n; ++r) sum += (e[(size_t) r] = std::exp((double) x[(size_t) idx[(size_t) r]] - mx));
            double cum = 0.0;
            const double limit = 1.0 - (double) s.top_p;
            std::vector<int64_t> removed;
            for (int64_t r = 0; r < n - keep; ++r) {
                cum += e[(size_t) r] / sum;
                if (cum <= limit) removed.push_back(idx[(size_t) r]);
            }
            for (int64_t i : removed) x[(size_t) i] = ninf;
        }
        // TopKLogitsWarper: remove the logits below the k-th largest (k >= keep).
        if (s.top_k > 0) {
            const int64_t k = std::min<int64_t>(std::max<int64_t>(s.top_k, keep), n);
            std::vector<float> sorted = x;
            std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
            const float kth = sorted[(size_t) (k - 1)];
            for (float & v : x) {
                if (v < kth) v = ninf;
            }
        }
    }
    if (mask_eos && eos >= 0 && eos < n) x[(size_t) eos] = ninf;
    double mx = -std::numeric_limits<double>::infinity();
    for (float v : x) mx = std::max(mx, (double) v);
    if (!std::isfinite(mx)) fail(ErrorKind::InvalidArgument, "tts: every candidate is masked (or the logits are not finite)");
    std::vector<double> e((size_t) n);
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += (e[(size_t) i] = std::exp((double) x[(size_t) i] - mx));
    std::vector<float> p((size_t) n);
    for (int64_t i = 0; i < n; ++i) p[(size_t) i] = (float) (e[(size_t) i] / sum);
    return p;
}

int32_t tts_draw(const std::vector<float> & probs, TtsRng & rng) {
    double sum = 0.0;
    for (float v : probs) sum += v;
    return tts_draw(probs, sum, rng);
}

int32_t tts_draw(const std::vector<float> & probs, double sum, TtsRng & rng) {
    if (!(sum > 0.0)) fail(ErrorKind::InvalidArgument, "tts: the probabilities sum to zero");
    const double target = rng.uniform() * sum;
    double acc = 0.0;
    int32_t last = -1;
    for (size_t i = 0; i < probs.size(); ++i) {
        if (probs[i] <= 0.0f) continue;
        acc += probs[i];
        last = (int32_t) i;
        if (acc > target) return last;
    }
    return last;   // rounding: the last candidate
}

// ---- runtime ------------------------------------------------------------------------------------

struct TtsContext::Impl {
    const TtsModel &     m;
    const TtsHparams &   hp;
    int64_t              n_ctx;
    GraphRunner          runner;        // the decoder (holds the K/V cache)
    GraphRunner          cond_runner;   // condition: text rows + projection
    EvalObserver         observer, cond_observer;
    ggml_type            cache_type;
    // cache cells in evaluation order: cell i holds the i-th entry since clear()
    int64_t              n_cells = 0;
    int64_t              visible_from = 0;   // sliding_window: older cells dropped by the reference

    struct IO {
        ggml_tensor * embd = nullptr, * pos = nullptr, * kv_idx = nullptr, * mask = nullptr, * logits = nullptr;
    } io;                       // the current graph's
    GraphSlots<IO> slot_io;     // each kept graph's
    struct CondIO {
        ggml_tensor * tokens = nullptr, * hidden = nullptr, * out = nullptr;
    } cio;
    GraphSlots<CondIO> cond_slots;

    // streamed turn
    std::vector<int32_t> turn_tokens;          // all_generated_tokens
    int64_t              text_start_pos = 0;
    int64_t              chunk_idx = -1;
    std::vector<float>   prev_condition;       // sliding_recompute: the previous chunk's condition
    std::vector<int32_t> prev_codes;           // and its codes
    // reindex: condition length + codes of the first and the last chunk (_chunk_info[0], [-1])
    int64_t              first_chunk_len = -1, last_chunk_len = -1;
    std::unique_ptr<GraphRunner> reindex_runner;
    ggml_tensor *                reindex_pos = nullptr;

    Impl(const TtsModel & model, const ComputeBackends & b, int64_t ctx, const DebugOptions & d)
        : m(model), hp(model.hp), n_ctx(ctx > 0 ? ctx : model.hp.n_ctx), runner("tts", b, max_nodes(model.hp)),
          cond_runner("tts-cond", b, 64), observer("tts", d), cond_observer("tts-cond", d),
          cache_type(model.exact ? GGML_TYPE_F32 : GGML_TYPE_F16) {
        if (n_ctx < 16 || n_ctx > (1 << 20)) fail(ErrorKind::InvalidArgument, "tts: n_ctx must be in [16, 1048576]");
        for (int il = 0; il < (int) hp.n_layer; ++il) {
            runner.add_state("tts_k-" + std::to_string(il), cache_type, {hp.n_embd_kv(), n_ctx});
            runner.add_state("tts_v-" + std::to_string(il), cache_type, {hp.n_embd_kv(), n_ctx});
        }
        runner.allocate_state();
        const int64_t ub = std::min(kUbatch, n_ctx);
        runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, ub, n_ctx, true); },
                       "tts compute buffers");
        cond_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_cond(ctx, gf, kUbatch, true); },
                            "tts condition compute buffers");
        // The condition prefill and the one-code steps alternate every chunk: each keeps its graph
        // (a third for a prefill of another length); the condition's two forms (with and without
        // LLM hidden states) alternate the same way.
        runner.set_graph_cache(3);
        cond_runner.set_graph_cache(2);
        observer.attach(runner);
        cond_observer.attach(cond_runner);
        MINICPM_LOG_INFO("tts: K/V cache %lld cells, %.1f MiB", (long long) n_ctx, runner.state_bytes() / 1048576.0);
    }

    // Decoder over n input embeddings written to cache cells kv_idx; attention over cells [0, n_kv).
    void build(ggml_context * ctx, ggml_cgraph * gf, int64_t n, int64_t n_kv, bool all) {
        using namespace graph;
        io = IO{};
        io.embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_embd, n);
        ggml_set_name(io.embd, "tts_inp_embd");
        ggml_set_input(io.embd);
        io.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
        ggml_set_name(io.pos, "tts_inp_pos");
        ggml_set_input(io.pos);
        io.kv_idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n);
        ggml_set_name(io.kv_idx, "tts_kv_idx");
        ggml_set_input(io.kv_idx);
        io.mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_kv, n);
        ggml_set_name(io.mask, "tts_kq_mask");
        ggml_set_input(io.mask);
        const int64_t hd = hp.head_dim, KV = hp.n_embd_kv();
        const size_t  kv_row = ggml_row_size(cache_type, KV);
        const float   scale = 1.0f / std::sqrt((float) hd);
        ggml_tensor * x = io.embd;
        for (int il = 0; il < (int) hp.n_layer; ++il) {
            const TtsLayer & L = m.w.layers[(size_t) il];
            ggml_tensor * cur = rms_norm(ctx, x, L.attn_norm, hp.eps);
            cb(cur, "attn_norm", il);
            ggml_tensor * q = ggml_reshape_3d(ctx, linear(ctx, cur, L.wq), hd, hp.n_head, n);
            ggml_tensor * k = ggml_reshape_3d(ctx, linear(ctx, cur, L.wk), hd, hp.n_head_kv, n);
            ggml_tensor * v = linear(ctx, cur, L.wv);
            // HF Llama's rotate_half RoPE on unpermuted weights: NEOX order; llama.cpp-omni's
            // rows are permuted for llama.cpp's adjacent-pair RoPE (the same result)
            const int rope = hp.omni_layout ? 0 : GGML_ROPE_TYPE_NEOX;
            q = ggml_rope_ext(ctx, q, io.pos, nullptr, (int) hd, rope, (int) hp.n_ctx, hp.rope_base, 1.0f,
                              0.0f, 1.0f, 0.0f, 0.0f);
            k = ggml_rope_ext(ctx, k, io.pos, nullptr, (int) hd, rope, (int) hp.n_ctx, hp.rope_base, 1.0f,
                              0.0f, 1.0f, 0.0f, 0.0f);
            ggml_tensor * k_all = ggml_set_rows(ctx, runner.state("tts_k-" + std::to_string(il)),
                                                ggml_reshape_2d(ctx, k, KV, n), io.kv_idx);
            ggml_tensor * v_all = ggml_set_rows(ctx, runner.state("tts_v-" + std::to_string(il)), v, io.kv_idx);
            ggml_tensor * kc = ggml_view_3d(ctx, k_all, hd, n_kv, hp.n_head_kv, kv_row, ggml_row_size(cache_type, hd), 0);
            ggml_tensor * vc = ggml_view_3d(ctx, v_all, hd, n_kv, hp.n_head_kv, kv_row, ggml_row_size(cache_type, hd), 0);
            cur = attention(ctx, q, kc, vc, io.mask, scale, false);
            cur = linear(ctx, cur, L.wo);
            cb(cur, "attn_out", il);
            x = ggml_add(ctx, x, cur);
            cur = rms_norm(ctx, x, L.ffn_norm, hp.eps);
            cur = swiglu_mlp(ctx, cur, L.ffn_gate, L.ffn_up, L.ffn_down);
            cb(cur, "ffn_out", il);
            x = ggml_add(ctx, x, cur);
            cb(x, "l_out", il);
        }
        if (!all && n > 1) x = ggml_view_2d(ctx, x, hp.n_embd, 1, x->nb[1], (size_t) (n - 1) * x->nb[1]);
        x = rms_norm(ctx, x, m.w.output_norm, hp.eps);
        cb(x, "result_norm");
        io.logits = graph::mul_mat(ctx, m.w.head, x);   // [n_audio, n or 1]
        cb(io.logits, "logits");
        ggml_set_output(io.logits);
        ggml_build_forward_expand(gf, io.logits);
    }

    // emb_text[tokens] (+ n(projector_semantic(hidden))): [E, n].
    void build_cond(ggml_context * ctx, ggml_cgraph * gf, int64_t n, bool with_hidden) {
        using namespace graph;
        cio = CondIO{};
        cio.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
        ggml_set_name(cio.tokens, "tts_inp_tokens");
        ggml_set_input(cio.tokens);
        ggml_tensor * x = ggml_get_rows(ctx, m.w.emb_text, cio.tokens);
        cb(x, "text_rows");
        if (with_hidden) {
            cio.hidden = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.llm_dim, n);
            ggml_set_name(cio.hidden, "tts_inp_hidden");
            ggml_set_input(cio.hidden);
            ggml_tensor * h = ggml_relu(ctx, linear(ctx, cio.hidden, m.w.proj1_w, m.w.proj1_b));
            h = linear(ctx, h, m.w.proj2_w, m.w.proj2_b);
            // F.normalize(p=2, dim=-1): v / max(|v|, 1e-12)
            if (hp.normalize_hidden) h = ggml_l2_norm(ctx, h, 1e-12f);
            cb(h, "projected");
            x = ggml_add(ctx, x, h);
        }
        cb(x, "condition");
        cio.out = x;
        ggml_set_output(x);
        ggml_build_forward_expand(gf, x);
    }

    // sliding: the streaming form under sliding_window (the offline paths keep the whole cache).
    std::vector<float> eval(const float * embd, int64_t n, const int32_t * pos, bool all, bool sliding = false) {
        if (n <= 0) fail(ErrorKind::InvalidArgument, "tts: nothing to evaluate");
        if (n_cells + n > n_ctx) {
            fail(ErrorKind::ContextFull, "tts: " + std::to_string(n_cells + n) + " entries exceed the talker's cache of " +
                                             std::to_string(n_ctx) + " (a longer turn needs a larger n_ctx)");
        }
        const int64_t V = hp.n_audio;
        std::vector<float> out;
        out.reserve((size_t) ((all ? n : 1) * V));
        for (int64_t b0 = 0; b0 < n; b0 += kUbatch) {
            const int64_t nb = std::min(kUbatch, n - b0);
            const bool    last = b0 + nb == n;
            const bool    want_all = all;
            const int64_t start = n_cells;
            // Attention spans cells [0, n_kv) in steps of 256 (a turn's steps keep one graph;
            // the masked cells add nothing).
            const int64_t n_kv = std::min<int64_t>(n_ctx, (start + nb + 255) / 256 * 256);
            slot_io.prepare(runner, {nb, n_kv, want_all}, [&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, nb, n_kv, want_all); },
                            nb <= 32, io);
            ggml_backend_tensor_set(io.embd, embd + b0 * hp.n_embd, 0, (size_t) (nb * hp.n_embd) * sizeof(float));
            ggml_backend_tensor_set(io.pos, pos + b0, 0, (size_t) nb * sizeof(int32_t));
            std::vector<int64_t> cells((size_t) nb);
            std::iota(cells.begin(), cells.end(), start);
            ggml_backend_tensor_set(io.kv_idx, cells.data(), 0, cells.size() * sizeof(int64_t));
            // A query sees the cache entries the reference keeps (all, or the last sliding_window
            // of them before this forward) and this batch causally.
            const bool    window = sliding && hp.attention == TtsAttention::SlidingWindow;
            const int64_t lo = window ? std::max<int64_t>({0, visible_from, start - hp.sliding_window}) : 0;
            const float ninf = -std::numeric_limits<float>::infinity();
            std::vector<float> mask((size_t) (n_kv * nb), ninf);
            for (int64_t i = 0; i < nb; ++i) {
                float * row = mask.data() + i * n_kv;
                for (int64_t j = lo; j <= start + i; ++j) row[j] = 0.0f;
            }
            ggml_backend_tensor_set(io.mask, mask.data(), 0, mask.size() * sizeof(float));
            runner.compute();
            observer.finish();
            n_cells = start + nb;
            if (window) visible_from = std::max(visible_from, n_cells - hp.sliding_window);
            if (want_all) {
                const size_t k = (size_t) (nb * V);
                out.resize(out.size() + k);
                ggml_backend_tensor_get(io.logits, out.data() + out.size() - k, 0, k * sizeof(float));
            } else if (last) {
                out.resize((size_t) V);
                ggml_backend_tensor_get(io.logits, out.data(), 0, (size_t) V * sizeof(float));
            }
        }
        return out;
    }

    void clear() {
        n_cells = 0;
        visible_from = 0;
    }

    // TTSStreamingGenerator._reindex_kv_cache: keep the first chunk's cells (the attention sink)
    // and the last chunk's, moved right after the sink; the moved keys turned by RoPE through
    // arange(last) + (sink - original start), as the reference computes the angles.
    void reindex() {
        if (chunk_idx < 2) return;   // _chunk_info holds fewer than two chunks
        const int64_t sink = first_chunk_len, last = last_chunk_len, cur = n_cells;
        if (cur <= sink + last) return;
        const int64_t orig = cur - last, hd = hp.head_dim, KV = hp.n_embd_kv();
        if (!reindex_runner) {
            reindex_runner = std::make_unique<GraphRunner>("tts-reindex", runner.backends(), (size_t) hp.n_layer * 16 + 16);
        }
        reindex_runner->prepare({sink, last, cur}, [&](ggml_context * ctx, ggml_cgraph * gf) {
            ggml_tensor * pos = reindex_pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, last);
            ggml_set_name(pos, "tts_reindex_pos");
            ggml_set_input(pos);
            const int rope = hp.omni_layout ? 0 : GGML_ROPE_TYPE_NEOX;
            for (int il = 0; il < (int) hp.n_layer; ++il) {
                ggml_tensor * kc = runner.state("tts_k-" + std::to_string(il));
                ggml_tensor * vc = runner.state("tts_v-" + std::to_string(il));
                const size_t row = kc->nb[1];
                ggml_tensor * k_last = ggml_cont(ctx, ggml_view_2d(ctx, kc, KV, last, row, (size_t) orig * row));
                k_last = ggml_cast(ctx, k_last, GGML_TYPE_F32);
                ggml_tensor * k_rot = ggml_rope_ext(ctx, ggml_reshape_3d(ctx, k_last, hd, hp.n_head_kv, last), pos, nullptr,
                                                    (int) hd, rope, (int) hp.n_ctx, hp.rope_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
                ggml_tensor * k_dst = ggml_view_2d(ctx, kc, KV, last, row, (size_t) sink * row);
                ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_reshape_2d(ctx, k_rot, KV, last), k_dst));
                const size_t vrow = vc->nb[1];
                ggml_tensor * v_last = ggml_cont(ctx, ggml_view_2d(ctx, vc, KV, last, vrow, (size_t) orig * vrow));
                ggml_tensor * v_dst = ggml_view_2d(ctx, vc, KV, last, vrow, (size_t) sink * vrow);
                ggml_build_forward_expand(gf, ggml_cpy(ctx, v_last, v_dst));
            }
        });
        std::vector<int32_t> angles((size_t) last);
        for (int64_t j = 0; j < last; ++j) angles[(size_t) j] = (int32_t) (j + sink - orig);
        ggml_backend_tensor_set(reindex_pos, angles.data(), 0, angles.size() * sizeof(int32_t));
        reindex_runner->compute();
        n_cells = sink + last;
        text_start_pos = sink + last;
    }

    std::vector<float> condition(const int32_t * tokens, const float * hidden, int64_t n) {
        if (n <= 0 || !tokens) fail(ErrorKind::InvalidArgument, "tts: condition of no tokens");
        for (int64_t i = 0; i < n; ++i) {
            if (tokens[i] < 0 || tokens[i] >= hp.n_text) {
                fail(ErrorKind::InvalidArgument, "tts: token " + std::to_string(tokens[i]) + " is outside emb_text's " +
                                                     std::to_string(hp.n_text) + " rows");
            }
        }
        std::vector<float> out((size_t) (n * hp.n_embd));
        for (int64_t b0 = 0; b0 < n; b0 += kUbatch) {
            const int64_t nb = std::min(kUbatch, n - b0);
            const bool    wh = hidden != nullptr;
            cond_slots.prepare(cond_runner, {nb, wh}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_cond(ctx, gf, nb, wh); },
                               nb <= 32, cio);
            ggml_backend_tensor_set(cio.tokens, tokens + b0, 0, (size_t) nb * sizeof(int32_t));
            if (wh) ggml_backend_tensor_set(cio.hidden, hidden + b0 * hp.llm_dim, 0, (size_t) (nb * hp.llm_dim) * sizeof(float));
            cond_runner.compute();
            cond_observer.finish();
            ggml_backend_tensor_get(cio.out, out.data() + b0 * hp.n_embd, 0, (size_t) (nb * hp.n_embd) * sizeof(float));
        }
        return out;
    }

    std::vector<float> code_rows(const int32_t * codes, int64_t n) const {
        std::vector<float> out((size_t) (n * hp.n_embd));
        for (int64_t i = 0; i < n; ++i) {
            if (codes[i] < 0 || codes[i] >= hp.n_audio) {
                fail(ErrorKind::InvalidArgument, "tts: audio token " + std::to_string(codes[i]) + " is outside [0, " +
                                                     std::to_string(hp.n_audio) + ")");
            }
            std::memcpy(out.data() + i * hp.n_embd, m.code_rows.data() + (size_t) codes[i] * (size_t) hp.n_embd,
                        (size_t) hp.n_embd * sizeof(float));
        }
        return out;
    }

    // [rows] + emb_text[id] appended.
    void append_text_row(std::vector<float> & rows, int32_t id) {
        const std::vector<float> r = condition(&id, nullptr, 1);
        rows.insert(rows.end(), r.begin(), r.end());
    }

    void check_condition(const float * c, int64_t n) const {
        if (!c || n < 0) fail(ErrorKind::InvalidArgument, "tts: no condition");
        for (int64_t i = 0; i < n * hp.n_embd; ++i) {
            if (!std::isfinite(c[i])) fail(ErrorKind::InvalidArgument, "tts: the condition holds a non-finite value");
        }
    }
};

TtsContext::TtsContext(const TtsModel & model, const ComputeBackends & backends, int64_t n_ctx, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, n_ctx, debug)) {}

TtsContext::~TtsContext() = default;

const TtsHparams & TtsContext::hparams() const { return impl_->hp; }
int64_t            TtsContext::n_ctx() const { return impl_->n_ctx; }

std::vector<float> TtsContext::condition(const int32_t * tokens, const float * hidden, int64_t n) {
    if (hidden) {
        for (int64_t i = 0; i < n * impl_->hp.llm_dim; ++i) {
            if (!std::isfinite(hidden[i])) fail(ErrorKind::InvalidArgument, "tts: the hidden states hold a non-finite value");
        }
    }
    return impl_->condition(tokens, hidden, n);
}

std::vector<float> TtsContext::code_embeddings(const int32_t * codes, int64_t n) const { return impl_->code_rows(codes, n); }

std::vector<float> TtsContext::eval(const float * embd, int64_t n, const int32_t * pos, bool all) {
    impl_->check_condition(embd, n);
    return impl_->eval(embd, n, pos, all);
}

void    TtsContext::clear() { impl_->clear(); }
int64_t TtsContext::n_cached() const { return impl_->n_cells; }

std::vector<float> TtsContext::logits(const float * embd, int64_t n, const int32_t * audio_tokens, int64_t m) {
    Impl & s = *impl_;
    if (n < 0 || m < 0 || n + m <= 0) fail(ErrorKind::InvalidArgument, "tts: empty sequence");
    s.check_condition(embd, n);
    std::vector<float> seq(embd, embd + n * s.hp.n_embd);
    if (m > 0) {
        const std::vector<float> codes = s.code_rows(audio_tokens, m);
        seq.insert(seq.end(), codes.begin(), codes.end());
    }
    std::vector<int32_t> pos((size_t) (n + m));
    std::iota(pos.begin(), pos.end(), 0);
    s.clear();
    return s.eval(seq.data(), n + m, pos.data(), true);
}

std::vector<int32_t> TtsContext::generate(const float * condition, int64_t n, const TtsGenerateParams & p, TtsRng & rng) {
    Impl & s = *impl_;
    if (p.max_new_tokens < 1 || p.min_new_tokens < 0) {
        fail(ErrorKind::InvalidArgument, "tts: max_new_tokens must be >= 1 and min_new_tokens >= 0");
    }
    s.check_condition(condition, n);
    std::vector<float> seq(condition, condition + n * s.hp.n_embd);
    s.append_text_row(seq, s.hp.text_eos);
    s.append_text_row(seq, s.hp.audio_bos);
    const int64_t L = n + 2;
    std::vector<int32_t> pos((size_t) L);
    std::iota(pos.begin(), pos.end(), 0);
    s.clear();
    std::vector<float>   logits = s.eval(seq.data(), L, pos.data(), false);
    std::vector<int32_t> out;
    for (int32_t t = 0; t < p.max_new_tokens; ++t) {
        const std::vector<float> probs = tts_probs(logits.data(), s.hp.n_audio, out, p.sampling, t == 0, s.hp.eos(),
                                                   t < p.min_new_tokens);
        const int32_t id = tts_draw(probs, rng);
        if (id == s.hp.eos() || t == p.max_new_tokens - 1) break;   // the reference returns new_tokens[0:t]
        out.push_back(id);
        const std::vector<float> e = s.code_rows(&id, 1);
        const int32_t            ps = (int32_t) (L + t);
        logits = s.eval(e.data(), 1, &ps, false);
    }
    return out;
}

std::vector<int32_t> TtsContext::stream_push(const float * condition, int64_t n, bool last, const TtsSampling & smp,
                                             TtsRng & rng, int32_t max_new_tokens) {
    Impl & s = *impl_;
    if (max_new_tokens < 1) fail(ErrorKind::InvalidArgument, "tts: max_new_tokens must be >= 1");
    s.check_condition(condition, n);
    s.chunk_idx += 1;
    std::vector<float> cond(condition, condition + n * s.hp.n_embd);
    if (last) s.append_text_row(cond, s.hp.text_eos);
    s.append_text_row(cond, s.hp.audio_bos);
    const int64_t L = (int64_t) cond.size() / s.hp.n_embd;

    std::vector<float> input = cond;
    if (s.hp.attention == TtsAttention::SlidingRecompute && s.chunk_idx >= 1) {
        // Drop the cache; recompute [previous condition, its codes, this condition] from 0.
        input = s.prev_condition;
        if (!s.prev_codes.empty()) {
            const std::vector<float> codes = s.code_rows(s.prev_codes.data(), (int64_t) s.prev_codes.size());
            input.insert(input.end(), codes.begin(), codes.end());
        }
        input.insert(input.end(), cond.begin(), cond.end());
        s.text_start_pos = 0;
        s.clear();
    } else if (s.hp.attention == TtsAttention::Reindex && s.chunk_idx >= 1) {
        s.reindex();
    }
    const int64_t prefill = (int64_t) input.size() / s.hp.n_embd;
    std::vector<int32_t> pos((size_t) prefill);
    std::iota(pos.begin(), pos.end(), (int32_t) s.text_start_pos);
    std::vector<float>   logits = s.eval(input.data(), prefill, pos.data(), false, true);
    std::vector<int32_t> chunk;
    for (int32_t t = 0; t < max_new_tokens; ++t) {
        if (t > 0) {
            const int32_t            id = s.turn_tokens.back();
            const std::vector<float> e = s.code_rows(&id, 1);
            const int32_t            ps = (int32_t) (s.text_start_pos + prefill + t - 1);
            logits = s.eval(e.data(), 1, &ps, false, true);
        }
        const bool bos = s.turn_tokens.empty() && t == 0;
        const std::vector<float> probs = tts_probs(logits.data(), s.hp.n_audio, s.turn_tokens, smp, bos, s.hp.eos(), false);
        const int32_t id = tts_draw(probs, rng);
        if (id == s.hp.eos()) break;
        s.turn_tokens.push_back(id);
        chunk.push_back(id);
    }
    s.text_start_pos += (s.hp.attention == TtsAttention::SlidingRecompute ? prefill : L) + (int64_t) chunk.size();
    s.prev_condition = std::move(cond);
    s.prev_codes = chunk;
    s.last_chunk_len = L + (int64_t) chunk.size();
    if (s.first_chunk_len < 0) s.first_chunk_len = s.last_chunk_len;
    return chunk;
}

void TtsContext::stream_reset() {
    Impl & s = *impl_;
    s.clear();
    s.turn_tokens.clear();
    s.text_start_pos = 0;
    s.chunk_idx = -1;
    s.prev_condition.clear();
    s.prev_codes.clear();
    s.first_chunk_len = s.last_chunk_len = -1;
}

const std::vector<int32_t> & TtsContext::stream_tokens() const { return impl_->turn_tokens; }
int64_t                      TtsContext::stream_position() const { return impl_->text_start_pos; }

} // namespace minicpm
