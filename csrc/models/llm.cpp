#include "llm.h"
#include "models/tts.h"

#include "minicpm/minicpm.h"

#include "core/error.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <cmath>

namespace minicpm {

namespace {

int64_t need_positive(const GgufFile & f, const std::string & key) {
    uint32_t v = f.get_u32(key);
    if (v == 0) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + " must be > 0");
    }
    return v;
}

} // namespace

LlmHparams LlmHparams::from_gguf(const GgufFile & f) {
    LlmHparams hp;
    hp.arch = f.get_str(key_name(KeyName::GENERAL_ARCHITECTURE));
    if (hp.arch != "qwen3" && hp.arch != "qwen2") {
        fail(ErrorKind::Unsupported, "unsupported architecture '" + hp.arch + "' in " + f.path() +
                                         " (supported: qwen3, qwen2)");
    }
    auto key = [&](KeyName k) { return key_name(k, hp.arch); };
    // Sane maxima for the sizes (checked before ggml sees them; the tensors' shapes are checked
    // against these values at declare time). The largest supported models use n_embd 4096,
    // 36 layers, 32 heads of 128, n_ff 12288 and a 40960 context.
    constexpr int64_t kMaxEmbd = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxHeadDim = 1024;
    constexpr int64_t kMaxFf = 1 << 20, kMaxCtx = 1 << 24;
    hp.n_embd    = need_positive(f, key(KeyName::LLM_EMBEDDING_LENGTH));
    check_int_range(f, key(KeyName::LLM_EMBEDDING_LENGTH), hp.n_embd, 1, kMaxEmbd);
    hp.n_layer   = need_positive(f, key(KeyName::LLM_BLOCK_COUNT));
    // Bounded by the tensors present: a huge count would size the weight context (ggml_init
    // asserts when that allocation fails) before any tensor is looked up.
    check_layer_count(f, key(KeyName::LLM_BLOCK_COUNT), hp.n_layer, kMaxLayers,
                      tensor_name(TensorName::LLM_ATTN_NORM, (int) std::min<int64_t>(hp.n_layer, kMaxLayers) - 1));
    hp.n_head    = need_positive(f, key(KeyName::LLM_HEAD_COUNT));
    check_int_range(f, key(KeyName::LLM_HEAD_COUNT), hp.n_head, 1, kMaxHeads);
    hp.n_head_kv = f.has_key(key(KeyName::LLM_HEAD_COUNT_KV)) ? need_positive(f, key(KeyName::LLM_HEAD_COUNT_KV))
                                                              : hp.n_head;
    check_int_range(f, key(KeyName::LLM_HEAD_COUNT_KV), hp.n_head_kv, 1, hp.n_head);
    hp.n_ff      = need_positive(f, key(KeyName::LLM_FEED_FORWARD_LENGTH));
    check_int_range(f, key(KeyName::LLM_FEED_FORWARD_LENGTH), hp.n_ff, 1, kMaxFf);
    hp.n_ctx_train = f.opt_u32(key(KeyName::LLM_CONTEXT_LENGTH)).value_or(0);
    check_int_range(f, key(KeyName::LLM_CONTEXT_LENGTH), hp.n_ctx_train, 0, kMaxCtx);   // 0: unknown
    hp.rms_eps   = f.get_f32(key(KeyName::LLM_RMS_EPS));
    hp.rope_base = f.opt_f32(key(KeyName::LLM_ROPE_FREQ_BASE)).value_or(10000.0f);
    // Float hyperparameters: finite and in a range where the graph gives numbers (an epsilon of
    // inf or a base of 1e-45 load fine and give NaN or constant logits). Real files: eps 1e-6 or
    // 1e-5, base 1e4 to 1e6.
    check_float_range(f, key(KeyName::LLM_RMS_EPS), hp.rms_eps, 0.0f, 0.1f, /*lo_open =*/true);   // (0, 0.1]
    check_float_range(f, key(KeyName::LLM_ROPE_FREQ_BASE), hp.rope_base, 1.0f, 1e9f);             // [1, 1e9]
    if (hp.n_embd % hp.n_head != 0 && !f.has_key(key(KeyName::LLM_KEY_LENGTH))) {
        fail(ErrorKind::Format, "cannot derive head_dim in " + f.path() + ": embedding_length " +
                                    std::to_string(hp.n_embd) + " is not a multiple of head_count " +
                                    std::to_string(hp.n_head) + " and " + key(KeyName::LLM_KEY_LENGTH) + " is missing");
    }
    hp.head_dim = f.has_key(key(KeyName::LLM_KEY_LENGTH)) ? need_positive(f, key(KeyName::LLM_KEY_LENGTH))
                                                          : hp.n_embd / hp.n_head;
    check_int_range(f, key(KeyName::LLM_KEY_LENGTH), hp.head_dim, 1, kMaxHeadDim);
    if (auto vl = f.opt_u32(key(KeyName::LLM_VALUE_LENGTH)); vl && *vl != hp.head_dim) {
        fail(ErrorKind::Unsupported, "value_length " + std::to_string(*vl) + " differs from key_length " +
                                         std::to_string(hp.head_dim) + " in " + f.path());
    }
    if (hp.n_head % hp.n_head_kv != 0) {
        fail(ErrorKind::Format, "head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " +
                                    std::to_string(hp.n_head_kv) + " in " + f.path());
    }
    if (hp.head_dim % 2 != 0) {
        fail(ErrorKind::Format, "head dimension " + std::to_string(hp.head_dim) + " must be even for RoPE in " +
                                    f.path());
    }
    // Qwen2/Qwen3 rotate the whole head; a file asking for partial rotary (or more dimensions
    // than a head has) describes another network, and ignoring the key would give wrong logits.
    if (auto rd = f.opt_u32(key(KeyName::LLM_ROPE_DIMENSION_COUNT)); rd && *rd != hp.head_dim) {
        fail(ErrorKind::Unsupported, key(KeyName::LLM_ROPE_DIMENSION_COUNT) + " = " + std::to_string(*rd) +
                                         " in " + f.path() + ": only full rotary embeddings (the head dimension, " +
                                         std::to_string(hp.head_dim) + ") are supported");
    }
    hp.qk_norm  = hp.arch == "qwen3";
    hp.qkv_bias = hp.arch == "qwen2";

    const TensorInfo * emb = f.find_tensor(tensor_name(TensorName::LLM_TOKEN_EMBD));
    if (!emb) {
        fail(ErrorKind::Format, "tensor " + tensor_name(TensorName::LLM_TOKEN_EMBD) + " not found in " + f.path());
    }
    hp.n_vocab = emb->ne[1];
    // Token ids are int32; the table's rows are its vocabulary.
    if (emb->ne[0] != hp.n_embd || hp.n_vocab <= 0 || hp.n_vocab > INT32_MAX || emb->n_dims != 2) {
        fail(ErrorKind::Format, "tensor " + emb->name + ": expected shape [" + std::to_string(hp.n_embd) +
                                    ", n_vocab], got " + shape_str(emb->ne, emb->n_dims) + " in " + f.path());
    }
    return hp;
}

LlmWeights LlmWeights::declare(WeightStore & s, const LlmHparams & hp) {
    LlmWeights w;
    const int64_t E = hp.n_embd, Q = hp.n_embd_q(), KV = hp.n_embd_kv(), F = hp.n_ff, V = hp.n_vocab;
    // Token rows are gathered with get_rows; keeping them in host memory saves device memory.
    // On a GPU the embedding table lives there too: get_rows on the device keeps the whole
    // graph in one split (no CPU step, no host round trip per token). Image rows are read from
    // the mapped file (WeightStore::mapped_data), never from device memory.
    w.tok_embd    = s.require(tensor_name(TensorName::LLM_TOKEN_EMBD), {E, V}, Placement::Main);
    w.output_norm = s.require(tensor_name(TensorName::LLM_OUTPUT_NORM), {E});
    w.output      = s.optional(tensor_name(TensorName::LLM_OUTPUT), {E, V}, Placement::Matrix);
    if (!w.output) {
        // Tied embeddings: the output projection reuses token_embd (as llama.cpp does).
        w.output = w.tok_embd;
    }
    for (int il = 0; il < hp.n_layer; ++il) {
        LlmLayer l;
        auto T = [&](TensorName t) { return tensor_name(t, il); };
        l.attn_norm = s.require(T(TensorName::LLM_ATTN_NORM), {E});
        l.wq        = s.require(T(TensorName::LLM_ATTN_Q), {E, Q}, Placement::Matrix);
        l.wk        = s.require(T(TensorName::LLM_ATTN_K), {E, KV}, Placement::Matrix);
        l.wv        = s.require(T(TensorName::LLM_ATTN_V), {E, KV}, Placement::Matrix);
        l.wo        = s.require(T(TensorName::LLM_ATTN_OUT), {Q, E}, Placement::Matrix);
        if (hp.qkv_bias) {
            l.bq = s.require(T(TensorName::LLM_ATTN_Q_BIAS), {Q});
            l.bk = s.require(T(TensorName::LLM_ATTN_K_BIAS), {KV});
            l.bv = s.require(T(TensorName::LLM_ATTN_V_BIAS), {KV});
        }
        if (hp.qk_norm) {
            l.q_norm = s.require(T(TensorName::LLM_ATTN_Q_NORM), {hp.head_dim});
            l.k_norm = s.require(T(TensorName::LLM_ATTN_K_NORM), {hp.head_dim});
        }
        l.ffn_norm = s.require(T(TensorName::LLM_FFN_NORM), {E});
        l.ffn_gate = s.require(T(TensorName::LLM_FFN_GATE), {E, F}, Placement::Matrix);
        l.ffn_up   = s.require(T(TensorName::LLM_FFN_UP), {E, F}, Placement::Matrix);
        l.ffn_down = s.require(T(TensorName::LLM_FFN_DOWN), {F, E}, Placement::Matrix);
        w.layers.push_back(l);
    }
    return w;
}

void LlmWeights::fuse_qkv(WeightStore & store, bool on_cpu_too) {
    for (size_t il = 0; il < layers.size(); ++il) {
        LlmLayer & l = layers[il];
        // K-quant mixes often give V more bits than Q and K: then fuse Q and K only.
        l.wqkv = store.fuse_rows({l.wq, l.wk, l.wv}, "blk." + std::to_string(il) + ".attn_qkv.fused", on_cpu_too);
        if (!l.wqkv) l.wqkv = store.fuse_rows({l.wq, l.wk}, "blk." + std::to_string(il) + ".attn_qk.fused", on_cpu_too);
    }
}

size_t LlmModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked(); }
size_t LlmModel::repacked_bytes() const { return store->bytes_repacked(); }

namespace {

bool llm_present(const GgufFile & f) {
    const auto arch = f.opt_str(key_name(KeyName::GENERAL_ARCHITECTURE));
    // (llama.cpp-omni's TTS file is a llama GGUF too: the tts component reads it)
    return arch && *arch != "clip" && f.find_tensor(tensor_name(TensorName::LLM_TOKEN_EMBD)) != nullptr &&
           !is_omni_tts_file(f);
}

std::unique_ptr<Component> llm_load(const ComponentLoad & in) {
    const GgufFile & f = in.file;
    auto m = std::make_unique<LlmModel>();
    m->hp = LlmHparams::from_gguf(f);   // validates before any memory is touched
    m->store = std::make_unique<WeightStore>(f, in.devices, (size_t) (m->hp.n_layer * 20 + 8));
    m->w = LlmWeights::declare(*m->store, m->hp);
    m->store->set_cpu_repack(in.params.cpu_repack);
    const bool fuse = in.params.fuse_qkv.value_or(true);
    if (fuse) m->w.fuse_qkv(*m->store, in.params.fuse_qkv.value_or(false));
    m->store->load();
    m->all_f32 = true;
    for (const auto & t : f.tensors()) {
        if (t.n_dims >= 2 && t.type != GGML_TYPE_F32) m->all_f32 = false;
    }
    m->tok_embd_host = m->store->mapped_data(m->w.tok_embd);
    return m;
}

// Names an intermediate as llama.cpp's cb() does: "name-il", or "name" outside the layers.
void cb(ggml_tensor * t, const char * name, int64_t il = -1) {
    if (il >= 0) ggml_format_name(t, "%s-%d", name, (int) il);
    else ggml_set_name(t, name);
}

// The decoder's RoPE (NEOX layout, no scaling): transformers' Qwen2/Qwen3 rotary embedding.
ggml_tensor * rope(ggml_context * ctx, ggml_tensor * x, ggml_tensor * pos, const LlmHparams & hp, bool inplace) {
    auto f = inplace ? ggml_rope_ext_inplace : ggml_rope_ext;
    return f(ctx, x, pos, nullptr, (int) hp.head_dim, GGML_ROPE_TYPE_NEOX, (int) hp.n_ctx_train, hp.rope_base, 1.0f,
             0.0f, 1.0f, 0.0f, 0.0f);
}

} // namespace

const ComponentType kLlmComponent = {"llm", &llm_present, &llm_load};

size_t llm_graph_max_nodes(const LlmHparams & hp) { return (size_t) std::max<int64_t>(2048, hp.n_layer * 48 + 64); }

namespace {

// A sequence's share of the layer stack: its rows [row0, row0 + n_tokens) of the batch, its
// cache and the inputs that place and mask its keys.
struct SeqRows {
    const KvTensors * kv;
    int64_t           row0, n_tokens, n_kv;
    ggml_tensor *     kv_idx, * kq_mask;
};

// The decoder layers over x [n_embd, n_rows] at positions pos; returns the last layer's output
// (before the final norm). With one sequence the whole batch is its rows (no views).
ggml_tensor * decoder_layers(ggml_context * ctx, const LlmModel & m, ggml_tensor * x, ggml_tensor * pos,
                             const std::vector<SeqRows> & seqs, bool flash_attn) {
    using namespace graph;
    const LlmHparams & hp = m.hp;
    const LlmWeights & w = m.w;
    const int64_t n_rows = x->ne[1];
    const int64_t head_dim = hp.head_dim;
    const float kq_scale = 1.0f / std::sqrt((float) head_dim);
    const bool one = seqs.size() == 1;

    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const LlmLayer & L = w.layers[il];
        ggml_tensor * resid = x;
        ggml_tensor * cur = rms_norm(ctx, x, L.attn_norm, hp.rms_eps);
        cb(cur, "attn_norm", il);

        ggml_tensor * q, * k, * v;
        if (L.wqkv) {
            // One product for Q, K (and V): [n_q + n_kv (+ n_kv), n_rows]; Q and K are views of
            // their rows as [head_dim, heads, n_rows] (made contiguous by the bias add if any).
            ggml_tensor * qkv = graph::mul_mat(ctx, L.wqkv, cur);
            const size_t  es  = ggml_element_size(qkv);
            auto part = [&](int64_t heads, int64_t first_row, ggml_tensor * bias) {
                ggml_tensor * t = ggml_view_3d(ctx, qkv, head_dim, heads, n_rows, head_dim * es, qkv->nb[1], first_row * es);
                return bias ? ggml_add(ctx, t, ggml_reshape_2d(ctx, bias, head_dim, heads)) : t;
            };
            q = part(hp.n_head, 0, L.bq);
            k = part(hp.n_head_kv, hp.n_embd_q(), L.bk);
            if (L.wqkv->ne[1] == hp.n_embd_q() + 2 * hp.n_embd_kv()) {
                // V goes into the cache as rows [n_embd_kv, n_rows]
                v = ggml_view_2d(ctx, qkv, hp.n_embd_kv(), n_rows, qkv->nb[1], (hp.n_embd_q() + hp.n_embd_kv()) * es);
                if (L.bv) v = ggml_add(ctx, v, L.bv);
            } else {
                v = linear(ctx, cur, L.wv, L.bv);
            }
        } else {
            q = ggml_reshape_3d(ctx, linear(ctx, cur, L.wq, L.bq), head_dim, hp.n_head, n_rows);
            k = ggml_reshape_3d(ctx, linear(ctx, cur, L.wk, L.bk), head_dim, hp.n_head_kv, n_rows);
            v = linear(ctx, cur, L.wv, L.bv);
        }
        if (hp.qk_norm) {
            q = rms_norm(ctx, q, L.q_norm, hp.rms_eps);
            k = rms_norm(ctx, k, L.k_norm, hp.rms_eps);
        }
        q = rope(ctx, q, pos, hp, false);
        k = rope(ctx, k, pos, hp, false);
        ggml_tensor * k_rows = ggml_reshape_2d(ctx, k, hp.n_embd_kv(), n_rows);

        ggml_tensor * attn = nullptr;
        for (const SeqRows & s : seqs) {
            const KvTensors & kv = *s.kv;
            const size_t kv_row = ggml_row_size(kv.type, hp.n_embd_kv());
            ggml_tensor * ks = one ? k_rows : ggml_view_2d(ctx, k_rows, k_rows->ne[0], s.n_tokens, k_rows->nb[1], s.row0 * k_rows->nb[1]);
            ggml_tensor * vs = one ? v : ggml_view_2d(ctx, v, v->ne[0], s.n_tokens, v->nb[1], s.row0 * v->nb[1]);
            ggml_tensor * qs = one ? q : ggml_view_3d(ctx, q, head_dim, hp.n_head, s.n_tokens, q->nb[1], q->nb[2], s.row0 * q->nb[2]);
            // Write the rows' keys/values into the cache cells listed in kv_idx. Rows are
            // scattered by an input tensor rather than copied into a view at an offset, so the
            // graph is the same at every decode step, and cells need not follow positions.
            ggml_tensor * k_all = ggml_set_rows(ctx, kv.k[(size_t) il], ks, s.kv_idx);
            ggml_tensor * v_all = ggml_set_rows(ctx, kv.v[(size_t) il], vs, s.kv_idx);
            // Attend over cells [0, n_kv): [head_dim, n_kv, n_head_kv] views of the updated cache.
            ggml_tensor * kc = ggml_view_3d(ctx, k_all, head_dim, s.n_kv, hp.n_head_kv, kv_row,
                                            ggml_row_size(kv.type, head_dim), 0);
            ggml_tensor * vc = ggml_view_3d(ctx, v_all, head_dim, s.n_kv, hp.n_head_kv, kv_row,
                                            ggml_row_size(kv.type, head_dim), 0);
            ggml_tensor * out = attention(ctx, qs, kc, vc, s.kq_mask, kq_scale, flash_attn);
            attn = attn ? ggml_concat(ctx, attn, out, 1) : out;   // [n_q, rows so far]
        }
        cur = linear(ctx, attn, L.wo);
        cb(cur, "attn_out", il);
        x = ggml_add(ctx, cur, resid);

        resid = x;
        cur = rms_norm(ctx, x, L.ffn_norm, hp.rms_eps);
        cb(cur, "ffn_norm", il);
        cur = swiglu_mlp(ctx, cur, L.ffn_gate, L.ffn_up, L.ffn_down);
        cb(cur, "ffn_out", il);
        x = ggml_add(ctx, cur, resid);
        cb(x, "l_out", il);
    }
    return x;
}

ggml_tensor * kv_inputs(ggml_context * ctx, int64_t n_tokens, int64_t n_kv, bool flash_attn, ggml_tensor ** mask,
                        const std::string & suffix) {
    ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n_tokens);
    ggml_set_name(idx, ("kv_idx" + suffix).c_str());
    ggml_set_input(idx);
    *mask = ggml_new_tensor_2d(ctx, flash_attn ? GGML_TYPE_F16 : GGML_TYPE_F32, n_kv, n_tokens);
    ggml_set_name(*mask, ("kq_mask" + suffix).c_str());
    ggml_set_input(*mask);
    return idx;
}

} // namespace

void build_llm_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const KvTensors & kv,
                     const LlmGraphParams & p, LlmGraphInputs & in) {
    using namespace graph;
    const LlmHparams & hp = m.hp;
    const LlmWeights & w = m.w;
    in = LlmGraphInputs{};
    const int64_t n_tokens = p.n_tokens;

    ggml_tensor * x;
    if (p.use_embd) {
        in.embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_embd, n_tokens);
        ggml_set_name(in.embd, "inp_embd");
        ggml_set_input(in.embd);
        x = in.embd;
    } else {
        in.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
        ggml_set_name(in.tokens, "inp_tokens");
        ggml_set_input(in.tokens);
        x = ggml_get_rows(ctx, w.tok_embd, in.tokens);   // [n_embd, n_tokens]
    }
    in.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    ggml_set_name(in.pos, "inp_pos");
    ggml_set_input(in.pos);
    in.kv_idx = kv_inputs(ctx, n_tokens, p.n_kv, p.flash_attn, &in.kq_mask, "");

    x = decoder_layers(ctx, m, x, in.pos, {SeqRows{&kv, 0, n_tokens, p.n_kv, in.kv_idx, in.kq_mask}}, p.flash_attn);

    if (p.hidden) {
        // Every position's last-layer hidden state after the final norm (hidden_states[-1]).
        x = rms_norm(ctx, x, w.output_norm, hp.rms_eps);
        cb(x, "result_norm");
        in.hidden = x;
        ggml_set_output(in.hidden);
        if (!p.logits_all && n_tokens > 1) x = ggml_view_2d(ctx, x, hp.n_embd, 1, x->nb[1], (n_tokens - 1) * x->nb[1]);
    } else {
        if (!p.logits_all && n_tokens > 1) {
            x = ggml_view_1d(ctx, x, hp.n_embd, (n_tokens - 1) * x->nb[1]);   // last position only
        }
        x = rms_norm(ctx, x, w.output_norm, hp.rms_eps);
        cb(x, "result_norm");
    }
    in.logits = graph::mul_mat(ctx, w.output, x);
    cb(in.logits, "result_output");
    ggml_set_output(in.logits);
    ggml_build_forward_expand(gf, in.logits);
    if (in.hidden) ggml_build_forward_expand(gf, in.hidden);
}

size_t llm_batch_graph_max_nodes(const LlmHparams & hp, size_t n_seq) {
    return llm_graph_max_nodes(hp) + (size_t) hp.n_layer * 16 * n_seq + 4 * n_seq + 64;
}

void build_llm_batch_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const std::vector<LlmBatchSeq> & seqs,
                           int64_t n_out, bool flash_attn, bool hidden, LlmBatchInputs & in) {
    using namespace graph;
    const LlmHparams & hp = m.hp;
    in = LlmBatchInputs{};
    int64_t n_rows = 0;
    std::vector<SeqRows> rows;
    for (size_t i = 0; i < seqs.size(); ++i) {
        const LlmBatchSeq & s = seqs[i];
        ggml_tensor * mask = nullptr;
        ggml_tensor * idx = kv_inputs(ctx, s.n_tokens, s.n_kv, flash_attn, &mask, "-" + std::to_string(i));
        in.kv_idx.push_back(idx);
        in.kq_mask.push_back(mask);
        rows.push_back(SeqRows{s.kv, n_rows, s.n_tokens, s.n_kv, idx, mask});
        n_rows += s.n_tokens;
    }
    in.embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_embd, n_rows);
    ggml_set_name(in.embd, "inp_embd");
    ggml_set_input(in.embd);
    in.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_rows);
    ggml_set_name(in.pos, "inp_pos");
    ggml_set_input(in.pos);
    in.last = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_out);
    ggml_set_name(in.last, "inp_last_rows");
    ggml_set_input(in.last);

    ggml_tensor * x = decoder_layers(ctx, m, in.embd, in.pos, rows, flash_attn);
    if (hidden) {
        x = rms_norm(ctx, x, m.w.output_norm, hp.rms_eps);
        cb(x, "result_norm");
        in.hidden = x;
        ggml_set_output(in.hidden);
        x = ggml_get_rows(ctx, x, in.last);   // [n_embd, n_out]
    } else {
        x = ggml_get_rows(ctx, x, in.last);
        x = rms_norm(ctx, x, m.w.output_norm, hp.rms_eps);
        cb(x, "result_norm");
    }
    in.logits = graph::mul_mat(ctx, m.w.output, x);
    cb(in.logits, "result_output");
    ggml_set_output(in.logits);
    ggml_build_forward_expand(gf, in.logits);
    if (in.hidden) ggml_build_forward_expand(gf, in.hidden);
}

void build_llm_kshift_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const KvTensors & kv,
                            int64_t first_cell, int64_t n_cells, ggml_tensor * shift) {
    const LlmHparams & hp = m.hp;
    const size_t kv_row = ggml_row_size(kv.type, hp.n_embd_kv());
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        // [head_dim, n_head_kv, n_cells] view of the layer's keys
        ggml_tensor * k = ggml_view_3d(ctx, kv.k[(size_t) il], hp.head_dim, hp.n_head_kv, n_cells,
                                       ggml_row_size(kv.type, hp.head_dim), kv_row, (size_t) first_cell * kv_row);
        ggml_tensor * r = rope(ctx, k, shift, hp, true);
        cb(r, "k_shift", il);
        ggml_build_forward_expand(gf, r);
    }
}

} // namespace minicpm
