// Token2Wav flow matching: hyperparameters, weights, the encoder and estimator graphs, the solver.
// Mirrors CausalMaskedDiffWithXvec.inference (stepaudio2/cosyvoice2/flow/flow.py) and what it
// calls; see tests/test_t2w_flow.py for the stage-by-stage parity against those classes.
#include "flow.h"

#include "core/error.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace minicpm {

namespace {

int64_t need_u32(const GgufFile & f, KeyName k, int64_t lo, int64_t hi) {
    const std::string key = key_name(k);
    const int64_t v = f.get_u32(key);
    check_int_range(f, key, v, lo, hi);
    return v;
}

float need_f32(const GgufFile & f, KeyName k, float lo, float hi, bool lo_open = false) {
    const std::string key = key_name(k);
    const float v = f.get_f32(key);
    check_float_range(f, key, v, lo, hi, lo_open);
    return v;
}

bool flow_present(const GgufFile & f) {
    return f.find_tensor(tensor_name(TensorName::FLOW_DIT_IN_PROJ)) != nullptr ||
           f.opt_u32(key_name(KeyName::T2W_FLOW_DIT_DEPTH)).has_value();
}

std::string name(TensorName t, int il = -1) { return tensor_name(t, il); }

constexpr float kPi = 3.14159265358979323846f;   // torch.pi as float32

// Upper bounds on the nodes of one graph.
size_t enc_nodes(const FlowHparams & hp) { return (size_t) ((hp.n_blocks + hp.n_up_blocks) * 48 + 128); }
size_t dit_nodes(const FlowHparams & hp) { return (size_t) (hp.dit_depth * 96 + 128); }

} // namespace

FlowHparams FlowHparams::from_gguf(const GgufFile & f) {
    constexpr int64_t kMaxWidth = 1 << 14, kMaxLayers = 256, kMaxHeads = 256;
    FlowHparams hp;
    hp.n_vocab = need_u32(f, KeyName::T2W_FLOW_VOCAB_SIZE, 1, 1 << 24);
    hp.n_in = need_u32(f, KeyName::T2W_FLOW_INPUT_SIZE, 1, kMaxWidth);
    hp.n_mel = need_u32(f, KeyName::T2W_FLOW_OUTPUT_SIZE, 1, 1024);
    hp.n_spk = need_u32(f, KeyName::T2W_FLOW_SPK_EMBED_DIM, 1, 4096);
    hp.spk_eps = need_f32(f, KeyName::T2W_FLOW_SPK_NORM_EPS, 0.0f, 0.1f, true);
    hp.n_embd = need_u32(f, KeyName::T2W_FLOW_ENC_WIDTH, 1, kMaxWidth);
    hp.n_head = need_u32(f, KeyName::T2W_FLOW_ENC_HEADS, 1, kMaxHeads);
    hp.n_ff = need_u32(f, KeyName::T2W_FLOW_ENC_FF, 1, 8 * kMaxWidth);
    hp.n_blocks = need_u32(f, KeyName::T2W_FLOW_ENC_BLOCKS, 1, kMaxLayers);
    hp.n_up_blocks = need_u32(f, KeyName::T2W_FLOW_ENC_UP_BLOCKS, 1, kMaxLayers);
    hp.lookahead = need_u32(f, KeyName::T2W_FLOW_ENC_LOOKAHEAD, 1, 64);
    hp.up_stride = need_u32(f, KeyName::T2W_FLOW_ENC_UP_STRIDE, 1, 16);
    const float up_scale = need_f32(f, KeyName::T2W_FLOW_ENC_UP_SCALE, 1.0f, 16.0f);
    hp.key_bias = f.get_bool(key_name(KeyName::T2W_FLOW_ENC_KEY_BIAS));
    hp.embed_eps = need_f32(f, KeyName::T2W_FLOW_ENC_EMBED_EPS, 0.0f, 0.1f, true);
    hp.layer_eps = need_f32(f, KeyName::T2W_FLOW_ENC_LAYER_EPS, 0.0f, 0.1f, true);
    hp.out_eps = need_f32(f, KeyName::T2W_FLOW_ENC_OUT_EPS, 0.0f, 0.1f, true);
    hp.pos_base = need_f32(f, KeyName::T2W_FLOW_ENC_POS_BASE, 1.0f, 1e9f);
    hp.lrelu_slope = need_f32(f, KeyName::T2W_FLOW_ENC_LRELU_SLOPE, 0.0f, 1.0f);
    hp.dit_in = need_u32(f, KeyName::T2W_FLOW_DIT_IN, 1, 4096);
    hp.dit_out = need_u32(f, KeyName::T2W_FLOW_DIT_OUT, 1, 1024);
    hp.dit_embd = need_u32(f, KeyName::T2W_FLOW_DIT_WIDTH, 1, kMaxWidth);
    hp.dit_depth = need_u32(f, KeyName::T2W_FLOW_DIT_DEPTH, 1, kMaxLayers);
    hp.dit_head = need_u32(f, KeyName::T2W_FLOW_DIT_HEADS, 1, kMaxHeads);
    hp.dit_head_dim = need_u32(f, KeyName::T2W_FLOW_DIT_HEAD_DIM, 1, 1024);
    hp.dit_ff = need_u32(f, KeyName::T2W_FLOW_DIT_FF, 1, 8 * kMaxWidth);
    hp.conv_kernel = need_u32(f, KeyName::T2W_FLOW_DIT_CONV_KERNEL, 1, 64);
    hp.dit_eps = need_f32(f, KeyName::T2W_FLOW_DIT_NORM_EPS, 0.0f, 0.1f, true);
    hp.qk_eps = need_f32(f, KeyName::T2W_FLOW_DIT_QK_NORM_EPS, 0.0f, 0.1f, true);
    hp.conv_eps = need_f32(f, KeyName::T2W_FLOW_DIT_CONV_NORM_EPS, 0.0f, 0.1f, true);
    hp.t_freq = need_u32(f, KeyName::T2W_FLOW_DIT_T_FREQ_DIM, 2, 1 << 14);
    hp.t_scale = need_f32(f, KeyName::T2W_FLOW_DIT_T_SCALE, 0.0f, 1e6f, true);
    hp.t_max_period = need_f32(f, KeyName::T2W_FLOW_DIT_T_MAX_PERIOD, 1.0f, 1e9f);
    hp.cfg_rate = need_f32(f, KeyName::T2W_FLOW_CFG_RATE, 0.0f, 100.0f, true);
    hp.temperature = need_f32(f, KeyName::T2W_FLOW_TEMPERATURE, 0.0f, 100.0f);
    hp.n_timesteps = need_u32(f, KeyName::T2W_FLOW_N_TIMESTEPS, 1, 1000);
    hp.max_frames = need_u32(f, KeyName::T2W_FLOW_MAX_FRAMES, 1, 1 << 20);
    hp.stream_history = need_u32(f, KeyName::T2W_FLOW_STREAM_HISTORY, 1, 1 << 16);
    check_layer_count(f, key_name(KeyName::T2W_FLOW_ENC_BLOCKS), hp.n_blocks + hp.n_up_blocks, 2 * kMaxLayers,
                      name(TensorName::FLOW_ENC_ATTN_NORM, (int) (hp.n_blocks + hp.n_up_blocks - 1)));
    check_layer_count(f, key_name(KeyName::T2W_FLOW_DIT_DEPTH), hp.dit_depth, kMaxLayers,
                      name(TensorName::FLOW_DIT_ADALN, (int) hp.dit_depth - 1));
    auto bad = [&](const std::string & what) { fail(ErrorKind::Format, f.path() + ": token2wav flow: " + what); };
    if (hp.n_embd % hp.n_head) bad("encoder width not divisible by its heads");
    if (hp.n_in != hp.n_embd) bad("input_size differs from the encoder width (up_embed needs them equal)");
    if (up_scale != (float) hp.up_stride) bad("up_scale_factor differs from up_stride (nearest x stride only)");
    if (hp.dit_in != 4 * hp.n_mel || hp.dit_out != hp.n_mel) bad("estimator channels are not x | mu | spk | cond");
    if (hp.t_freq % 2) bad("odd time-embedding width");
    if (hp.stream_history % hp.up_stride) bad("history_frames is not a multiple of up_stride");
    return hp;
}

FlowWeights FlowWeights::declare(WeightStore & s, const FlowHparams & hp) {
    using T = TensorName;
    const int64_t E = hp.n_embd, M = hp.n_mel, D = hp.dit_embd, dk = E / hp.n_head;
    const int64_t inner = hp.dit_head * hp.dit_head_dim, K = hp.conv_kernel;
    const auto W = Placement::Matrix;
    const auto V = TensorRole::Vector;
    // conv kernels [in, kernel, out] in ggml order (see names.def)
    auto conv = [&](T t, int64_t k, int64_t in, int64_t out, int il = -1) {
        return s.require(name(t, il), {in, k, out}, Placement::Main, V);
    };
    FlowWeights w;
    w.tok_embd = s.require(name(T::FLOW_TOKEN_EMBD), {hp.n_in, hp.n_vocab}, Placement::Main, TensorRole::Weight);
    w.spk_w = s.require(name(T::FLOW_SPK_PROJ), {hp.n_spk, M}, W);
    w.spk_b = s.require(name(T::FLOW_SPK_PROJ_BIAS), {M});
    w.proj_w = s.require(name(T::FLOW_ENC_PROJ), {E, M}, W);
    w.proj_b = s.require(name(T::FLOW_ENC_PROJ_BIAS), {M});
    w.embd_w = s.require(name(T::FLOW_ENC_EMBD), {hp.n_in, E}, W);
    w.embd_b = s.require(name(T::FLOW_ENC_EMBD_BIAS), {E});
    w.embd_norm_w = s.require(name(T::FLOW_ENC_EMBD_NORM), {E});
    w.embd_norm_b = s.require(name(T::FLOW_ENC_EMBD_NORM_BIAS), {E});
    w.la1_w = conv(T::FLOW_ENC_LA_CONV1, hp.lookahead + 1, E, E);
    w.la1_b = s.require(name(T::FLOW_ENC_LA_CONV1_BIAS), {E});
    w.la2_w = conv(T::FLOW_ENC_LA_CONV2, 3, E, E);
    w.la2_b = s.require(name(T::FLOW_ENC_LA_CONV2_BIAS), {E});
    for (int il = 0; il < (int) (hp.n_blocks + hp.n_up_blocks); ++il) {
        FlowEncLayer L;
        L.attn_norm_w = s.require(name(T::FLOW_ENC_ATTN_NORM, il), {E});
        L.attn_norm_b = s.require(name(T::FLOW_ENC_ATTN_NORM_BIAS, il), {E});
        L.q_w = s.require(name(T::FLOW_ENC_ATTN_Q, il), {E, E}, W);
        L.q_b = s.require(name(T::FLOW_ENC_ATTN_Q_BIAS, il), {E});
        L.k_w = s.require(name(T::FLOW_ENC_ATTN_K, il), {E, E}, W);
        L.k_b = hp.key_bias ? s.require(name(T::FLOW_ENC_ATTN_K_BIAS, il), {E}) : nullptr;
        L.v_w = s.require(name(T::FLOW_ENC_ATTN_V, il), {E, E}, W);
        L.v_b = s.require(name(T::FLOW_ENC_ATTN_V_BIAS, il), {E});
        L.o_w = s.require(name(T::FLOW_ENC_ATTN_OUT, il), {E, E}, W);
        L.o_b = s.require(name(T::FLOW_ENC_ATTN_OUT_BIAS, il), {E});
        L.pos_w = s.require(name(T::FLOW_ENC_ATTN_POS, il), {E, E}, W);
        L.pos_u = s.require(name(T::FLOW_ENC_POS_BIAS_U, il), {dk, hp.n_head}, Placement::Main, V);
        L.pos_v = s.require(name(T::FLOW_ENC_POS_BIAS_V, il), {dk, hp.n_head}, Placement::Main, V);
        L.ffn_norm_w = s.require(name(T::FLOW_ENC_FFN_NORM, il), {E});
        L.ffn_norm_b = s.require(name(T::FLOW_ENC_FFN_NORM_BIAS, il), {E});
        L.up_w = s.require(name(T::FLOW_ENC_FFN_UP, il), {E, hp.n_ff}, W);
        L.up_b = s.require(name(T::FLOW_ENC_FFN_UP_BIAS, il), {hp.n_ff});
        L.down_w = s.require(name(T::FLOW_ENC_FFN_DOWN, il), {hp.n_ff, E}, W);
        L.down_b = s.require(name(T::FLOW_ENC_FFN_DOWN_BIAS, il), {E});
        w.enc.push_back(L);
    }
    w.up_conv_w = conv(T::FLOW_ENC_UP_CONV, 2 * hp.up_stride + 1, E, E);
    w.up_conv_b = s.require(name(T::FLOW_ENC_UP_CONV_BIAS), {E});
    w.up_embd_w = s.require(name(T::FLOW_ENC_UP_EMBD), {hp.n_in, E}, W);
    w.up_embd_b = s.require(name(T::FLOW_ENC_UP_EMBD_BIAS), {E});
    w.up_embd_norm_w = s.require(name(T::FLOW_ENC_UP_EMBD_NORM), {E});
    w.up_embd_norm_b = s.require(name(T::FLOW_ENC_UP_EMBD_NORM_BIAS), {E});
    w.out_norm_w = s.require(name(T::FLOW_ENC_OUT_NORM), {E});
    w.out_norm_b = s.require(name(T::FLOW_ENC_OUT_NORM_BIAS), {E});
    w.t1_w = s.require(name(T::FLOW_DIT_T_EMBD_1), {hp.t_freq, D}, W);
    w.t1_b = s.require(name(T::FLOW_DIT_T_EMBD_1_BIAS), {D});
    w.t2_w = s.require(name(T::FLOW_DIT_T_EMBD_2), {D, D}, W);
    w.t2_b = s.require(name(T::FLOW_DIT_T_EMBD_2_BIAS), {D});
    w.in_proj_w = s.require(name(T::FLOW_DIT_IN_PROJ), {hp.dit_in, D}, W);
    w.in_proj_b = s.require(name(T::FLOW_DIT_IN_PROJ_BIAS), {D});
    for (int il = 0; il < (int) hp.dit_depth; ++il) {
        FlowDitBlock B;
        B.adaln_w = s.require(name(T::FLOW_DIT_ADALN, il), {D, 9 * D}, W);
        B.adaln_b = s.require(name(T::FLOW_DIT_ADALN_BIAS, il), {9 * D});
        B.q_w = s.require(name(T::FLOW_DIT_ATTN_Q, il), {D, inner}, W);
        B.q_b = s.require(name(T::FLOW_DIT_ATTN_Q_BIAS, il), {inner});
        B.k_w = s.require(name(T::FLOW_DIT_ATTN_K, il), {D, inner}, W);
        B.k_b = s.require(name(T::FLOW_DIT_ATTN_K_BIAS, il), {inner});
        B.v_w = s.require(name(T::FLOW_DIT_ATTN_V, il), {D, inner}, W);
        B.v_b = s.require(name(T::FLOW_DIT_ATTN_V_BIAS, il), {inner});
        B.q_norm_w = s.require(name(T::FLOW_DIT_ATTN_Q_NORM, il), {hp.dit_head_dim});
        B.q_norm_b = s.require(name(T::FLOW_DIT_ATTN_Q_NORM_BIAS, il), {hp.dit_head_dim});
        B.k_norm_w = s.require(name(T::FLOW_DIT_ATTN_K_NORM, il), {hp.dit_head_dim});
        B.k_norm_b = s.require(name(T::FLOW_DIT_ATTN_K_NORM_BIAS, il), {hp.dit_head_dim});
        B.o_w = s.require(name(T::FLOW_DIT_ATTN_OUT, il), {inner, D}, W);
        B.o_b = s.require(name(T::FLOW_DIT_ATTN_OUT_BIAS, il), {D});
        B.conv1_w = conv(T::FLOW_DIT_CONV1, K, D, D, il);
        B.conv1_b = s.require(name(T::FLOW_DIT_CONV1_BIAS, il), {D});
        B.conv_norm_w = s.require(name(T::FLOW_DIT_CONV_NORM, il), {D});
        B.conv_norm_b = s.require(name(T::FLOW_DIT_CONV_NORM_BIAS, il), {D});
        B.conv2_w = conv(T::FLOW_DIT_CONV2, K, D, D, il);
        B.conv2_b = s.require(name(T::FLOW_DIT_CONV2_BIAS, il), {D});
        B.up_w = s.require(name(T::FLOW_DIT_FFN_UP, il), {D, hp.dit_ff}, W);
        B.up_b = s.require(name(T::FLOW_DIT_FFN_UP_BIAS, il), {hp.dit_ff});
        B.down_w = s.require(name(T::FLOW_DIT_FFN_DOWN, il), {hp.dit_ff, D}, W);
        B.down_b = s.require(name(T::FLOW_DIT_FFN_DOWN_BIAS, il), {D});
        w.dit.push_back(B);
    }
    w.final_adaln_w = s.require(name(T::FLOW_DIT_FINAL_ADALN), {D, 2 * D}, W);
    w.final_adaln_b = s.require(name(T::FLOW_DIT_FINAL_ADALN_BIAS), {2 * D});
    w.final_w = s.require(name(T::FLOW_DIT_FINAL_PROJ), {D, hp.dit_out}, W);
    w.final_b = s.require(name(T::FLOW_DIT_FINAL_PROJ_BIAS), {hp.dit_out});
    return w;
}

size_t FlowModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked(); }

namespace {

std::unique_ptr<Component> flow_load(const ComponentLoad & in) {
    auto m = std::make_unique<FlowModel>();
    m->hp = FlowHparams::from_gguf(in.file);
    const size_t n_tensors = (size_t) ((m->hp.n_blocks + m->hp.n_up_blocks) * 20 + m->hp.dit_depth * 26 + 48);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, n_tensors);
    m->w = FlowWeights::declare(*m->store, m->hp);
    m->store->load();
    MINICPM_LOG_INFO("token2wav flow: encoder %lld+%lld layers x %lld, DiT %lld blocks x %lld, %lld steps, cfg %.2f",
                     (long long) m->hp.n_blocks, (long long) m->hp.n_up_blocks, (long long) m->hp.n_embd,
                     (long long) m->hp.dit_depth, (long long) m->hp.dit_embd, (long long) m->hp.n_timesteps,
                     m->hp.cfg_rate);
    return m;
}

// ---- graph pieces ---------------------------------------------------------------------------

// Conv1d (stride 1, no padding) over x [C_in, T_in, B]: the product of the kernel [C_in * k,
// C_out] with the k shifted windows of x stacked along channels. Returns [C_out, T_in - k + 1, B].
ggml_tensor * conv1d(ggml_context * ctx, ggml_tensor * x, ggml_tensor * kernel, ggml_tensor * bias) {
    const int64_t cin = kernel->ne[0], k = kernel->ne[1], cout = kernel->ne[2];
    const int64_t t_out = x->ne[1] - k + 1;
    ggml_tensor * cols = nullptr;
    for (int64_t j = 0; j < k; ++j) {
        ggml_tensor * win = ggml_view_3d(ctx, x, cin, t_out, x->ne[2], x->nb[1], x->nb[2], (size_t) j * x->nb[1]);
        cols = cols ? ggml_concat(ctx, cols, win, 0) : ggml_cont(ctx, win);
    }
    ggml_tensor * y = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, kernel, cin * k, cout), cols);
    return ggml_add(ctx, y, bias);
}

// Zero frames before (`left`) and after (`right`) x [C, T, B].
ggml_tensor * pad_time(ggml_context * ctx, ggml_tensor * x, int left, int right) {
    return ggml_pad_ext(ctx, x, 0, 0, left, right, 0, 0, 0, 0);
}

// The c-th of n equal parts of a modulation vector [n * D].
ggml_tensor * chunk(ggml_context * ctx, ggml_tensor * v, int64_t D, int c) {
    return ggml_view_1d(ctx, v, D, (size_t) c * D * ggml_element_size(v));
}

// modulate(x) = x * (1 + scale) + shift
ggml_tensor * modulate(ggml_context * ctx, ggml_tensor * x, ggml_tensor * shift, ggml_tensor * scale) {
    return ggml_add(ctx, ggml_mul(ctx, x, ggml_scale_bias(ctx, scale, 1.0f, 1.0f)), shift);
}

// Keys and values before and after a layer: kc / vc the cached ones (null: none), k / v the
// cache plus this call's frames (what the layer hands on).
struct LayerCache {
    ggml_tensor * kc = nullptr, * vc = nullptr;
    ggml_tensor * k = nullptr, * v = nullptr;
};

// RelPositionMultiHeadedAttention.forward (no mask) on x [E, T] after the cached keys and values
// (cache [E, Lc] first, then this call's T frames: Lk = Lc + T), with the relative position
// table pos [E, 2 Lk - 1] (position Lk - 1 first): Transformer-XL scores (q + u) k^T +
// rel_shift((q + v) p^T), scaled by 1/sqrt(d_k).
ggml_tensor * rel_attention(ggml_context * ctx, const FlowHparams & hp, const FlowEncLayer & L, ggml_tensor * x,
                            ggml_tensor * pos, LayerCache * cache) {
    using graph::linear;
    const int64_t E = hp.n_embd, H = hp.n_head, dk = E / H, T = x->ne[1];
    ggml_tensor * k2 = linear(ctx, x, L.k_w, L.k_b);                               // [E, T]
    ggml_tensor * v2 = linear(ctx, x, L.v_w, L.v_b);
    if (cache && cache->kc) {
        k2 = ggml_concat(ctx, cache->kc, k2, 1);
        v2 = ggml_concat(ctx, cache->vc, v2, 1);
    }
    if (cache) {
        cache->k = k2;
        cache->v = v2;
    }
    const int64_t Lk = k2->ne[1];
    ggml_tensor * q = ggml_reshape_3d(ctx, linear(ctx, x, L.q_w, L.q_b), dk, H, T);
    ggml_tensor * k = ggml_reshape_3d(ctx, k2, dk, H, Lk);
    ggml_tensor * v = ggml_reshape_3d(ctx, v2, dk, H, Lk);
    ggml_tensor * p = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.pos_w, pos), dk, H, 2 * Lk - 1);
    ggml_tensor * qu = ggml_permute(ctx, ggml_add(ctx, q, L.pos_u), 0, 2, 1, 3);   // [dk, T, H]
    ggml_tensor * qv = ggml_permute(ctx, ggml_add(ctx, q, L.pos_v), 0, 2, 1, 3);
    ggml_tensor * ac = ggml_mul_mat(ctx, ggml_permute(ctx, k, 0, 2, 1, 3), qu);     // [Lk, T, H]
    ggml_tensor * bd = ggml_mul_mat(ctx, ggml_permute(ctx, p, 0, 2, 1, 3), qv);     // [2Lk-1, T, H]
    graph::set_prec_f32(ac);
    graph::set_prec_f32(bd);
    // rel_shift: score (j, i) takes bd (T - 1 - i + j, i), the relative position (Lc + i) - j.
    const size_t es = ggml_element_size(bd);
    ggml_tensor * shifted = ggml_view_3d(ctx, bd, Lk, T, H, (size_t) (2 * Lk - 2) * es, bd->nb[2], (size_t) (T - 1) * es);
    ggml_tensor * scores = ggml_add(ctx, ac, ggml_cont(ctx, shifted));
    scores = ggml_soft_max_ext(ctx, scores, nullptr, 1.0f / std::sqrt((float) dk), 0.0f);
    ggml_tensor * vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));          // [Lk, dk, H]
    ggml_tensor * o = ggml_mul_mat(ctx, vt, scores);                               // [dk, T, H]
    o = ggml_cont_2d(ctx, ggml_permute(ctx, o, 0, 2, 1, 3), E, T);
    return linear(ctx, o, L.o_w, L.o_b);
}

// ConformerEncoderLayer (pre-LN, no macaron FFN, no conv module).
ggml_tensor * conformer_layer(ggml_context * ctx, const FlowHparams & hp, const FlowEncLayer & L, ggml_tensor * x,
                              ggml_tensor * pos, LayerCache * cache = nullptr) {
    using namespace graph;
    ggml_tensor * h = layer_norm(ctx, x, L.attn_norm_w, L.attn_norm_b, hp.layer_eps);
    x = ggml_add(ctx, x, rel_attention(ctx, hp, L, h, pos, cache));
    h = layer_norm(ctx, x, L.ffn_norm_w, L.ffn_norm_b, hp.layer_eps);
    h = linear(ctx, ggml_silu(ctx, linear(ctx, h, L.up_w, L.up_b)), L.down_w, L.down_b);
    return ggml_add(ctx, x, h);
}

// LinearNoSubsampling + EspnetRelPositionalEncoding: Linear -> LayerNorm -> x sqrt(E).
ggml_tensor * embed(ggml_context * ctx, const FlowHparams & hp, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b,
                    ggml_tensor * nw, ggml_tensor * nb) {
    x = graph::layer_norm(ctx, graph::linear(ctx, x, w, b), nw, nb, hp.embed_eps);
    return ggml_scale(ctx, x, std::sqrt((float) hp.n_embd));
}

// The ESPnet relative-position table for T frames: [E, 2T - 1], row m for position T - 1 - m,
// (sin, cos) pairs of position * exp(-2i ln(base) / E), in float32 as the reference computes it.
std::vector<float> rel_pos_table(const FlowHparams & hp, int64_t T) {
    const int64_t E = hp.n_embd;
    std::vector<float> div((size_t) (E / 2 + E % 2));
    const float step = (float) (-(std::log((double) hp.pos_base) / (double) E));
    for (size_t i = 0; i < div.size(); ++i) div[i] = std::exp((float) (2 * i) * step);
    std::vector<float> out((size_t) (E * (2 * T - 1)));
    for (int64_t m = 0; m < 2 * T - 1; ++m) {
        const float p = (float) (T - 1 - m);
        float * row = out.data() + m * E;
        for (int64_t c = 0; c < E; ++c) {
            const float a = p * div[(size_t) (c / 2)];
            row[c] = (c % 2 == 0) ? std::sin(a) : std::cos(a);
        }
    }
    return out;
}

// F.normalize (x / max(|x|, eps)) -> spk_embed_affine_layer, as an output of the graph.
ggml_tensor * speaker(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, ggml_tensor * spk) {
    ggml_tensor * norm = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum(ctx, ggml_sqr(ctx, spk))), m.hp.spk_eps, INFINITY);
    ggml_tensor * out = graph::linear(ctx, ggml_div(ctx, spk, norm), m.w.spk_w, m.w.spk_b);
    ggml_set_name(out, "flow_spk");
    ggml_set_output(out);
    ggml_build_forward_expand(gf, out);
    return out;
}

struct EncIO {
    ggml_tensor * tokens = nullptr, * pos1 = nullptr, * pos2 = nullptr, * spk = nullptr;
    ggml_tensor * mu = nullptr, * spk_out = nullptr;
};

// UpsampleConformerEncoderV2.forward + encoder_proj on n tokens (and the speaker projection).
void build_encoder(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, EncIO & io, int64_t n) {
    using namespace graph;
    const FlowHparams & hp = m.hp;
    const FlowWeights & w = m.w;
    const int64_t E = hp.n_embd, s = hp.up_stride;
    io = EncIO{};
    io.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    ggml_set_name(io.tokens, "inp_tokens");
    ggml_set_input(io.tokens);
    io.pos1 = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, E, 2 * n - 1);
    ggml_set_name(io.pos1, "inp_pos");
    ggml_set_input(io.pos1);
    io.pos2 = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, E, 2 * s * n - 1);
    ggml_set_name(io.pos2, "inp_pos_up");
    ggml_set_input(io.pos2);
    io.spk = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, hp.n_spk);
    ggml_set_name(io.spk, "inp_spk");
    ggml_set_input(io.spk);

    io.spk_out = speaker(ctx, gf, m, io.spk);

    ggml_tensor * x = ggml_get_rows(ctx, w.tok_embd, io.tokens);                   // [n_in, n]
    x = embed(ctx, hp, x, w.embd_w, w.embd_b, w.embd_norm_w, w.embd_norm_b);
    ggml_set_name(x, "flow_enc_embed");
    // PreLookaheadLayer.forward: conv1 over [x, look-ahead zeros] -> leaky ReLU -> conv2 with
    // 2 causal frames -> residual.
    ggml_tensor * h = conv1d(ctx, pad_time(ctx, x, 0, (int) hp.lookahead), w.la1_w, w.la1_b);
    h = ggml_leaky_relu(ctx, h, hp.lrelu_slope, false);
    h = conv1d(ctx, pad_time(ctx, h, 2, 0), w.la2_w, w.la2_b);
    x = ggml_add(ctx, x, h);
    ggml_set_name(x, "flow_enc_lookahead");
    for (int il = 0; il < (int) hp.n_blocks; ++il) {
        x = conformer_layer(ctx, hp, w.enc[(size_t) il], x, io.pos1);
        ggml_format_name(x, "flow_enc_l_out-%d", il);
    }
    // Upsample1D: nearest x stride, stride * 2 zero frames before, Conv1d(k = 2 * stride + 1).
    x = ggml_reshape_3d(ctx, x, E, 1, n);
    x = ggml_repeat_4d(ctx, x, E, s, n, 1);
    x = ggml_reshape_2d(ctx, x, E, s * n);
    x = conv1d(ctx, pad_time(ctx, x, (int) (2 * s), 0), w.up_conv_w, w.up_conv_b);
    ggml_set_name(x, "flow_enc_up");
    x = embed(ctx, hp, x, w.up_embd_w, w.up_embd_b, w.up_embd_norm_w, w.up_embd_norm_b);
    for (int il = (int) hp.n_blocks; il < (int) (hp.n_blocks + hp.n_up_blocks); ++il) {
        x = conformer_layer(ctx, hp, w.enc[(size_t) il], x, io.pos2);
        ggml_format_name(x, "flow_enc_l_out-%d", il);
    }
    x = layer_norm(ctx, x, w.out_norm_w, w.out_norm_b, hp.out_eps);
    ggml_set_name(x, "flow_enc_out");
    io.mu = linear(ctx, x, w.proj_w, w.proj_b);                                    // [n_mel, s n]
    ggml_set_name(io.mu, "flow_mu");
    ggml_set_output(io.mu);
    ggml_build_forward_expand(gf, io.mu);
}

// The streaming state of one DiT block (DiTBlock.forward_chunk): inputs kc / vc
// [inner, Lc, 2] (keys and values of earlier frames, in the reference's order: newest chunk
// first), c1 / c2 [D, k - 1, 2] (the last input frames of the two causal convolutions); outputs
// k / v [inner, N + Lc, 2] and c1_out / c2_out.
struct DitCache {
    ggml_tensor * kc = nullptr, * vc = nullptr, * c1 = nullptr, * c2 = nullptr;
    ggml_tensor * k = nullptr, * v = nullptr, * c1_out = nullptr, * c2_out = nullptr;
};

// UpsampleConformerEncoderV2.forward_chunk + encoder_proj: n_in tokens (with the look-ahead
// ones unless `last`) after `past` cached token frames. Caches: the last 2 frames after the
// look-ahead conv1, the last 2 * stride upsampled frames, and every layer's keys and values
// (token layers: past frames; mel layers: stride * past), cache first.
struct EncChunkIO {
    ggml_tensor * tokens = nullptr, * pos1 = nullptr, * pos2 = nullptr, * spk = nullptr;
    ggml_tensor * cnn1 = nullptr, * cnn2 = nullptr;          // inputs (null when past == 0)
    std::vector<LayerCache> layers;
    ggml_tensor * cnn1_out = nullptr, * cnn2_out = nullptr, * mu = nullptr, * spk_out = nullptr;
};

void build_encoder_chunk(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, EncChunkIO & io, int64_t n_in,
                         bool last, int64_t past) {
    using namespace graph;
    const FlowHparams & hp = m.hp;
    const FlowWeights & w = m.w;
    const int64_t E = hp.n_embd, s = hp.up_stride, la = hp.lookahead;
    const int64_t T1 = last ? n_in : n_in - la;                 // token frames out of the look-ahead layer
    const int64_t L1 = past + T1, L2 = s * L1;
    io = EncChunkIO{};
    auto input = [&](ggml_type type, int64_t ne0, int64_t ne1, const std::string & nm) {
        ggml_tensor * t = ne1 ? ggml_new_tensor_2d(ctx, type, ne0, ne1) : ggml_new_tensor_1d(ctx, type, ne0);
        ggml_set_name(t, nm.c_str());
        ggml_set_input(t);
        return t;
    };
    io.tokens = input(GGML_TYPE_I32, n_in, 0, "inp_tokens");
    io.pos1 = input(GGML_TYPE_F32, E, 2 * L1 - 1, "inp_pos");
    io.pos2 = input(GGML_TYPE_F32, E, 2 * L2 - 1, "inp_pos_up");
    io.spk = input(GGML_TYPE_F32, hp.n_spk, 0, "inp_spk");
    const int n_layers = (int) (hp.n_blocks + hp.n_up_blocks);
    io.layers.resize((size_t) n_layers);
    if (past > 0) {
        io.cnn1 = input(GGML_TYPE_F32, E, 2, "inp_cnn1");
        io.cnn2 = input(GGML_TYPE_F32, E, 2 * s, "inp_cnn2");
        for (int il = 0; il < n_layers; ++il) {
            const int64_t len = il < hp.n_blocks ? past : s * past;
            io.layers[(size_t) il].kc = input(GGML_TYPE_F32, E, len, "inp_k-" + std::to_string(il));
            io.layers[(size_t) il].vc = input(GGML_TYPE_F32, E, len, "inp_v-" + std::to_string(il));
        }
    }
    io.spk_out = speaker(ctx, gf, m, io.spk);
    auto out = [&](ggml_tensor * t) {
        ggml_set_output(t);
        ggml_build_forward_expand(gf, t);
        return t;
    };

    ggml_tensor * x = ggml_get_rows(ctx, w.tok_embd, io.tokens);
    x = embed(ctx, hp, x, w.embd_w, w.embd_b, w.embd_norm_w, w.embd_norm_b);      // [E, n_in]
    if (last) x = pad_time(ctx, x, 0, (int) la);
    // PreLookaheadLayer.forward_chunk: conv1 over the chunk (its last la frames are look-ahead),
    // leaky ReLU, the 2 cached frames before conv2, residual.
    ggml_tensor * h = ggml_leaky_relu(ctx, conv1d(ctx, x, w.la1_w, w.la1_b), hp.lrelu_slope, false);   // [E, T1]
    if (T1 >= 2) io.cnn1_out = out(ggml_cont(ctx, ggml_view_2d(ctx, h, E, 2, h->nb[1], (size_t) (T1 - 2) * h->nb[1])));
    h = io.cnn1 ? ggml_concat(ctx, io.cnn1, h, 1) : pad_time(ctx, h, 2, 0);
    h = conv1d(ctx, h, w.la2_w, w.la2_b);
    x = ggml_add(ctx, ggml_view_2d(ctx, x, E, T1, x->nb[1], 0), h);
    for (int il = 0; il < (int) hp.n_blocks; ++il) {
        LayerCache & c = io.layers[(size_t) il];
        x = conformer_layer(ctx, hp, w.enc[(size_t) il], x, io.pos1, &c);
        out(c.k);
        out(c.v);
    }
    // Upsample1D.forward_chunk: nearest x stride after the cached 2 * stride frames
    x = ggml_reshape_2d(ctx, ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, x, E, 1, T1), E, s, T1, 1), E, s * T1);
    x = io.cnn2 ? ggml_concat(ctx, io.cnn2, x, 1) : pad_time(ctx, x, (int) (2 * s), 0);
    io.cnn2_out = out(ggml_cont(ctx, ggml_view_2d(ctx, x, E, 2 * s, x->nb[1], (size_t) (x->ne[1] - 2 * s) * x->nb[1])));
    x = conv1d(ctx, x, w.up_conv_w, w.up_conv_b);
    x = embed(ctx, hp, x, w.up_embd_w, w.up_embd_b, w.up_embd_norm_w, w.up_embd_norm_b);
    for (int il = (int) hp.n_blocks; il < n_layers; ++il) {
        LayerCache & c = io.layers[(size_t) il];
        x = conformer_layer(ctx, hp, w.enc[(size_t) il], x, io.pos2, &c);
        out(c.k);
        out(c.v);
    }
    x = layer_norm(ctx, x, w.out_norm_w, w.out_norm_b, hp.out_eps);
    io.mu = out(linear(ctx, x, w.proj_w, w.proj_b));                               // [n_mel, s T1]
    ggml_set_name(io.mu, "flow_mu");
}

struct DitIO {
    ggml_tensor * x = nullptr;      // [dit_in, N, 2] the estimator input (x | mu | spk | cond, and x | 0)
    ggml_tensor * t_freq = nullptr; // [t_freq]
    ggml_tensor * dt = nullptr;     // [1]
    ggml_tensor * v = nullptr;      // [n_mel, N, 2] estimator output
    ggml_tensor * x_next = nullptr; // [n_mel, N] Euler step with guidance
    std::vector<DitCache> cache;    // streaming: one per block (empty offline)
};

// CausalConv1d over h [D, N, B]: the cached frames (zeros when none) before it; with a cache,
// its last k - 1 input frames are handed on.
ggml_tensor * causal_conv(ggml_context * ctx, ggml_tensor * h, ggml_tensor * kernel, ggml_tensor * bias,
                          ggml_tensor * cache, ggml_tensor ** cache_out) {
    const int k = (int) kernel->ne[1];
    ggml_tensor * in = cache ? ggml_concat(ctx, cache, h, 1) : pad_time(ctx, h, k - 1, 0);
    if (cache_out) {
        *cache_out = ggml_cont(ctx, ggml_view_3d(ctx, in, in->ne[0], k - 1, in->ne[2], in->nb[1], in->nb[2],
                                                 (size_t) (in->ne[1] - (k - 1)) * in->nb[1]));
    }
    return conv1d(ctx, in, kernel, bias);
}

// DiTBlock.forward (forward_chunk with a cache) with the time condition c [D] (shared by the batch).
ggml_tensor * dit_block(ggml_context * ctx, const FlowHparams & hp, const FlowDitBlock & B, ggml_tensor * x,
                        ggml_tensor * c_act, int il, DitCache * cache = nullptr) {
    using namespace graph;
    const int64_t D = hp.dit_embd, H = hp.dit_head, hd = hp.dit_head_dim, N = x->ne[1], nb = x->ne[2];
    ggml_tensor * mod = linear(ctx, c_act, B.adaln_w, B.adaln_b);                  // [9D]
    // chunk order: shift/scale/gate of attention, MLP, conv
    ggml_tensor * h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 0), chunk(ctx, mod, D, 1));
    ggml_tensor * q = ggml_reshape_4d(ctx, linear(ctx, h, B.q_w, B.q_b), hd, H, N, nb);
    ggml_tensor * kk = ggml_reshape_4d(ctx, linear(ctx, h, B.k_w, B.k_b), hd, H, N, nb);
    ggml_tensor * v = ggml_reshape_4d(ctx, linear(ctx, h, B.v_w, B.v_b), hd, H, N, nb);
    q = layer_norm(ctx, q, B.q_norm_w, B.q_norm_b, hp.qk_eps);
    kk = layer_norm(ctx, kk, B.k_norm_w, B.k_norm_b, hp.qk_eps);
    if (cache) {
        if (cache->kc) {   // new frames first, then the cache (Attention.forward_chunk)
            const int64_t Lc = cache->kc->ne[1];
            kk = ggml_concat(ctx, kk, ggml_reshape_4d(ctx, cache->kc, hd, H, Lc, nb), 2);
            v = ggml_concat(ctx, v, ggml_reshape_4d(ctx, cache->vc, hd, H, Lc, nb), 2);
        }
        cache->k = kk;
        cache->v = v;
    }
    ggml_tensor * a = attention_batched(ctx, q, kk, v, 1.0f / std::sqrt((float) hd));   // [H hd, N, nb]
    a = linear(ctx, a, B.o_w, B.o_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, a, chunk(ctx, mod, D, 2)));
    ggml_format_name(x, "flow_dit_attn_out-%d", il);
    // CausalConvBlock: causal conv -> LayerNorm -> Mish -> causal conv
    h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 6), chunk(ctx, mod, D, 7));
    h = causal_conv(ctx, h, B.conv1_w, B.conv1_b, cache ? cache->c1 : nullptr, cache ? &cache->c1_out : nullptr);
    h = layer_norm(ctx, h, B.conv_norm_w, B.conv_norm_b, hp.conv_eps);
    h = ggml_mul(ctx, h, ggml_tanh(ctx, ggml_softplus(ctx, h)));                   // Mish
    h = causal_conv(ctx, h, B.conv2_w, B.conv2_b, cache ? cache->c2 : nullptr, cache ? &cache->c2_out : nullptr);
    x = ggml_add(ctx, x, ggml_mul(ctx, h, chunk(ctx, mod, D, 8)));
    // MLP: fc1 -> GELU(tanh) -> fc2
    h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 3), chunk(ctx, mod, D, 4));
    h = linear(ctx, gelu_tanh(ctx, linear(ctx, h, B.up_w, B.up_b)), B.down_w, B.down_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, h, chunk(ctx, mod, D, 5)));
    ggml_format_name(x, "flow_dit_l_out-%d", il);
    return x;
}

// DiT.forward on the CFG batch, then solve_euler's guidance and Euler step.
// stream_len >= 0: streaming (DiT.forward_chunk) with stream_len cached frames per block.
void build_dit(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitIO & io, int64_t N,
               int64_t stream_len = -1) {
    using namespace graph;
    const FlowHparams & hp = m.hp;
    const FlowWeights & w = m.w;
    const int64_t M = hp.n_mel, D = hp.dit_embd;
    io = DitIO{};
    io.x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hp.dit_in, N, 2);
    ggml_set_name(io.x, "inp_dit_x");
    ggml_set_input(io.x);
    io.t_freq = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, hp.t_freq);
    ggml_set_name(io.t_freq, "inp_t_freq");
    ggml_set_input(io.t_freq);
    io.dt = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1);
    ggml_set_name(io.dt, "inp_dt");
    ggml_set_input(io.dt);

    // TimestepEmbedder: Linear -> SiLU -> Linear on the sinusoid; SiLU once for every adaLN.
    ggml_tensor * c = linear(ctx, ggml_silu(ctx, linear(ctx, io.t_freq, w.t1_w, w.t1_b)), w.t2_w, w.t2_b);
    ggml_set_name(c, "flow_dit_t");
    ggml_tensor * c_act = ggml_silu(ctx, c);
    ggml_tensor * x = linear(ctx, io.x, w.in_proj_w, w.in_proj_b);                 // [D, N, 2]
    if (stream_len >= 0) {
        const int64_t inner = hp.dit_head * hp.dit_head_dim, km1 = hp.conv_kernel - 1;
        io.cache.resize((size_t) hp.dit_depth);
        for (int il = 0; il < (int) hp.dit_depth; ++il) {
            DitCache & c = io.cache[(size_t) il];
            auto input = [&](const char * what, int64_t ne0, int64_t ne1) {
                ggml_tensor * t = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, ne0, ne1, 2);
                ggml_format_name(t, "inp_dit_%s-%d", what, il);
                ggml_set_input(t);
                return t;
            };
            if (stream_len > 0) {
                c.kc = input("k", inner, stream_len);
                c.vc = input("v", inner, stream_len);
                c.c1 = input("conv1", D, km1);
                c.c2 = input("conv2", D, km1);
            }
        }
    }
    for (int il = 0; il < (int) hp.dit_depth; ++il) {
        DitCache * c = io.cache.empty() ? nullptr : &io.cache[(size_t) il];
        x = dit_block(ctx, hp, w.dit[(size_t) il], x, c_act, il, c);
        if (c) {
            for (ggml_tensor * t : {c->k, c->v, c->c1_out, c->c2_out}) {
                ggml_set_output(t);
                ggml_build_forward_expand(gf, t);
            }
        }
    }
    ggml_tensor * mod = linear(ctx, c_act, w.final_adaln_w, w.final_adaln_b);      // [2D]: shift, scale
    x = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 0), chunk(ctx, mod, D, 1));
    io.v = linear(ctx, x, w.final_w, w.final_b);                                   // [M, N, 2]
    ggml_set_name(io.v, "flow_dit_out");
    ggml_set_output(io.v);
    ggml_build_forward_expand(gf, io.v);
    // dphi = (1 + r) v_cond - r v_uncond; x + dt * dphi
    ggml_tensor * vc = ggml_view_2d(ctx, io.v, M, N, io.v->nb[1], 0);
    ggml_tensor * vu = ggml_view_2d(ctx, io.v, M, N, io.v->nb[1], io.v->nb[2]);
    ggml_tensor * dphi = ggml_sub(ctx, ggml_scale(ctx, vc, 1.0f + hp.cfg_rate), ggml_scale(ctx, vu, hp.cfg_rate));
    ggml_tensor * x0 = ggml_view_2d(ctx, io.x, M, N, io.x->nb[1], 0);
    io.x_next = ggml_add(ctx, x0, ggml_mul(ctx, dphi, io.dt));
    ggml_set_name(io.x_next, "flow_x_next");
    ggml_set_output(io.x_next);
    ggml_build_forward_expand(gf, io.x_next);
}

// splitmix64, for the default noise table.
uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// t_span = 1 - cos(linspace(0, 1, n + 1) * pi / 2), float32 as torch.linspace computes it.
std::vector<float> time_span(int n_steps) {
    const int64_t n_pts = n_steps + 1;
    const float step = 1.0f / (float) n_steps;
    std::vector<float> span((size_t) n_pts);
    for (int64_t i = 0; i < n_pts; ++i) {
        const float lin = i < n_pts / 2 ? (float) i * step : 1.0f - (float) (n_pts - 1 - i) * step;
        span[(size_t) i] = 1.0f - std::cos(lin * 0.5f * kPi);
    }
    return span;
}

std::vector<float> noise_rows(int64_t M, int64_t first, int64_t n, uint64_t seed) {
    // Standard normal values (Box-Muller on two 53-bit uniforms) from a counter hash of (seed,
    // absolute frame, channel): the same frame always gets the same noise, whatever the chunking.
    std::vector<float> out((size_t) (n * M));
    for (int64_t f = 0; f < n; ++f) {
        for (int64_t c = 0; c < M; ++c) {
            const uint64_t key = mix64(seed ^ mix64((uint64_t) (first + f) * 0x100000001B3ull + (uint64_t) c));
            const double u1 = ((double) (mix64(key) >> 11) + 1.0) * 0x1.0p-53;   // (0, 1]
            const double u2 = (double) (mix64(key ^ 0x5851F42D4C957F2Dull) >> 11) * 0x1.0p-53;
            out[(size_t) (f * M + c)] = (float) (std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
        }
    }
    return out;
}

} // namespace

const ComponentType kFlowComponent = {"flow", &flow_present, &flow_load};

// ---- runtime ----------------------------------------------------------------------------------

struct FlowRunner::Impl {
    const FlowModel &   m;
    const FlowHparams & hp;
    GraphRunner         enc_runner;
    GraphRunner         dit_runner;
    EvalObserver        enc_observer;
    EvalObserver        dit_observer;
    EncIO               eio;
    DitIO               dio;
    // streaming (created at the first stream_start)
    std::unique_ptr<GraphRunner> senc_runner, sdit_runner;
    EncChunkIO          cio;
    DitIO               sdio;
    struct Stream {
        bool                 active = false;
        int                  n_steps = 0;
        int64_t              prompt_frames = 0;    // mel frames of the prompt
        int64_t              past = 0;             // token frames in the conformer caches
        std::vector<float>   cnn1, cnn2;           // [2][E], [2 stride][E]
        std::vector<std::vector<float>> enc_k, enc_v;   // per layer [len][E]
        int64_t              dit_len = 0;          // frames in each estimator cache
        std::vector<std::vector<float>> dit_k, dit_v, dit_c1, dit_c2;   // [step * depth + block]
        std::vector<float>   spk80, spk_in;       // projected / as given
        std::vector<float>   noise;                // injected table [frames][n_mel], or empty
        uint64_t             seed = 0;
    } st;

    Impl(const FlowModel & model, const ComputeBackends & b, const DebugOptions & d)
        : m(model), hp(model.hp), enc_runner("flow-encoder", b, enc_nodes(model.hp)),
          dit_runner("flow-dit", b, dit_nodes(model.hp)), enc_observer("flow-encoder", d), dit_observer("flow-dit", d) {
        // 10 s of speech (250 tokens, 500 mel frames); longer inputs grow the buffers.
        enc_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, m, eio, 250); },
                           "token2wav flow encoder compute buffers");
        dit_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, 500); },
                           "token2wav flow estimator compute buffers");
        enc_observer.attach(enc_runner);
        dit_observer.attach(dit_runner);
    }

    // The sinusoid of TimestepEmbedder.timestep_embedding(t * scale): [cos | sin], float32.
    std::vector<float> t_freq(float t) const {
        const int64_t half = hp.t_freq / 2;
        const float ts = t * hp.t_scale;
        const float a = (float) -std::log((double) hp.t_max_period);
        std::vector<float> out((size_t) hp.t_freq);
        for (int64_t i = 0; i < half; ++i) {
            const float f = std::exp((float) i * a / (float) half);
            const float arg = ts * f;
            out[(size_t) i] = std::cos(arg);
            out[(size_t) (half + i)] = std::sin(arg);
        }
        return out;
    }

    // The estimator input [2][N][dit_in]: x | mu | spk | cond, then x | 0 | 0 | 0.
    std::vector<float> dit_input(const std::vector<float> & x, const std::vector<float> & mu,
                                 const std::vector<float> & spk, const std::vector<float> & cond, int64_t N) const {
        const int64_t M = hp.n_mel, C = hp.dit_in;
        std::vector<float> in((size_t) (2 * N * C), 0.0f);
        for (int64_t t = 0; t < N; ++t) {
            float * r0 = in.data() + t * C;
            float * r1 = in.data() + (N + t) * C;
            std::memcpy(r0, x.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + M, mu.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + 2 * M, spk.data(), (size_t) M * sizeof(float));
            std::memcpy(r0 + 3 * M, cond.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r1, x.data() + t * M, (size_t) M * sizeof(float));
        }
        return in;
    }

    void run_dit(const std::vector<float> & in, int64_t N, float t, float dt) {
        dit_runner.prepare({N}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, N); });
        ggml_backend_tensor_set(dio.x, in.data(), 0, in.size() * sizeof(float));
        const std::vector<float> tf = t_freq(t);
        ggml_backend_tensor_set(dio.t_freq, tf.data(), 0, tf.size() * sizeof(float));
        ggml_backend_tensor_set(dio.dt, &dt, 0, sizeof(float));
        dit_runner.compute();
        dit_observer.finish();
    }

    std::vector<float> enc_chunk(const std::vector<int32_t> & tokens, bool last, const std::vector<float> & spk);
    std::vector<float> dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond);
    void               trim();

    void check_frames(const std::vector<float> & v, int64_t N, const char * what) const {
        if ((int64_t) v.size() != N * hp.n_mel) {
            fail(ErrorKind::InvalidArgument, std::string("token2wav flow: ") + what + " must hold " +
                                                 std::to_string(N) + " frames of " + std::to_string(hp.n_mel) +
                                                 " values, got " + std::to_string(v.size()) + " values");
        }
    }
};

// ---- streaming (CausalMaskedDiffWithXvec.setup_cache / inference_chunk, Token2wav.stream) -------

namespace {

void set_input(ggml_tensor * t, const std::vector<float> & v) {
    if (t) ggml_backend_tensor_set(t, v.data(), 0, v.size() * sizeof(float));
}

std::vector<float> get_output(const ggml_tensor * t) {
    std::vector<float> v((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, v.data(), 0, v.size() * sizeof(float));
    return v;
}

// Frames [0, keep_head) and [len - keep_tail, len) of each of `batch` blocks of [len][width].
std::vector<float> keep_ends(const std::vector<float> & v, int64_t batch, int64_t len, int64_t width, int64_t head,
                             int64_t tail) {
    std::vector<float> out;
    out.reserve((size_t) (batch * (head + tail) * width));
    for (int64_t b = 0; b < batch; ++b) {
        const float * base = v.data() + b * len * width;
        out.insert(out.end(), base, base + head * width);
        out.insert(out.end(), base + (len - tail) * width, base + len * width);
    }
    return out;
}

} // namespace

std::vector<float> FlowRunner::Impl::enc_chunk(const std::vector<int32_t> & tokens, bool last,
                                               const std::vector<float> & spk) {
    const int64_t n_in = (int64_t) tokens.size(), past = st.past;
    const int64_t T1 = last ? n_in : n_in - hp.lookahead, L1 = past + T1;
    if (!senc_runner) senc_runner = std::make_unique<GraphRunner>("flow-encoder-stream", dit_runner.backends(), enc_nodes(hp) * 2);
    senc_runner->prepare({n_in, last ? 1 : 0, past}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        build_encoder_chunk(ctx, gf, m, cio, n_in, last, past);
    });
    ggml_backend_tensor_set(cio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    set_input(cio.pos1, rel_pos_table(hp, L1));
    set_input(cio.pos2, rel_pos_table(hp, hp.up_stride * L1));
    set_input(cio.spk, spk);
    if (past > 0) {
        set_input(cio.cnn1, st.cnn1);
        set_input(cio.cnn2, st.cnn2);
        for (size_t il = 0; il < cio.layers.size(); ++il) {
            set_input(cio.layers[il].kc, st.enc_k[il]);
            set_input(cio.layers[il].vc, st.enc_v[il]);
        }
    }
    senc_runner->compute();
    st.spk80 = get_output(cio.spk_out);
    if (cio.cnn1_out) st.cnn1 = get_output(cio.cnn1_out);
    st.cnn2 = get_output(cio.cnn2_out);
    st.enc_k.resize(cio.layers.size());
    st.enc_v.resize(cio.layers.size());
    for (size_t il = 0; il < cio.layers.size(); ++il) {
        st.enc_k[il] = get_output(cio.layers[il].k);
        st.enc_v[il] = get_output(cio.layers[il].v);
    }
    st.past = L1;
    return get_output(cio.mu);
}

std::vector<float> FlowRunner::Impl::dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond) {
    const int64_t M = hp.n_mel, N = (int64_t) (mu.size() / (size_t) M), Lc = st.dit_len, depth = hp.dit_depth;
    // CausalConditionalCFM.forward_chunk: noise from the frame offset = the cache length
    std::vector<float> z;
    if (!st.noise.empty()) {
        if ((int64_t) (st.noise.size() / (size_t) M) < Lc + N) {
            fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                                 std::to_string(st.noise.size() / (size_t) M) + " frames, this chunk needs " +
                                                 std::to_string(Lc + N));
        }
        z.assign(st.noise.begin() + Lc * M, st.noise.begin() + (Lc + N) * M);
    } else {
        z = noise_rows(M, Lc, N, st.seed);
    }
    if (!sdit_runner) sdit_runner = std::make_unique<GraphRunner>("flow-dit-stream", dit_runner.backends(), dit_nodes(hp) * 2);
    const int n_steps = st.n_steps;
    const std::vector<float> span = time_span(n_steps);
    std::vector<float> x(z.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = z[i] * hp.temperature;
    st.dit_k.resize((size_t) (n_steps * depth));
    st.dit_v.resize((size_t) (n_steps * depth));
    st.dit_c1.resize((size_t) (n_steps * depth));
    st.dit_c2.resize((size_t) (n_steps * depth));
    float t = span[0], dt = span[1] - span[0];
    for (int stp = 1; stp <= n_steps; ++stp) {
        sdit_runner->prepare({N, Lc}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, sdio, N, Lc); });
        const std::vector<float> in = dit_input(x, mu, st.spk80, cond, N);
        ggml_backend_tensor_set(sdio.x, in.data(), 0, in.size() * sizeof(float));
        const std::vector<float> tf = t_freq(t);
        ggml_backend_tensor_set(sdio.t_freq, tf.data(), 0, tf.size() * sizeof(float));
        ggml_backend_tensor_set(sdio.dt, &dt, 0, sizeof(float));
        const size_t base = (size_t) ((stp - 1) * depth);
        if (Lc > 0) {
            for (size_t b = 0; b < (size_t) depth; ++b) {
                set_input(sdio.cache[b].kc, st.dit_k[base + b]);
                set_input(sdio.cache[b].vc, st.dit_v[base + b]);
                set_input(sdio.cache[b].c1, st.dit_c1[base + b]);
                set_input(sdio.cache[b].c2, st.dit_c2[base + b]);
            }
        }
        sdit_runner->compute();
        ggml_backend_tensor_get(sdio.x_next, x.data(), 0, x.size() * sizeof(float));
        for (size_t b = 0; b < (size_t) depth; ++b) {
            st.dit_k[base + b] = get_output(sdio.cache[b].k);
            st.dit_v[base + b] = get_output(sdio.cache[b].v);
            st.dit_c1[base + b] = get_output(sdio.cache[b].c1_out);
            st.dit_c2[base + b] = get_output(sdio.cache[b].c2_out);
        }
        t = t + dt;
        if (stp < n_steps) dt = span[(size_t) stp + 1] - t;
    }
    st.dit_len = Lc + N;
    return x;
}

// Token2wav._trim_estimator_cache / _trim_conformer_cache: past prompt + history frames, keep
// the prompt's count of leading frames and the last `history` (the estimator's cache is in the
// reference's order, newest chunk first, and is cut the same way).
void FlowRunner::Impl::trim() {
    const int64_t P = st.prompt_frames, Hh = hp.stream_history;
    const int64_t inner = hp.dit_head * hp.dit_head_dim, E = hp.n_embd, s = hp.up_stride;
    if (st.dit_len > P + Hh) {
        for (auto * vs : {&st.dit_k, &st.dit_v}) {
            for (auto & v : *vs) v = keep_ends(v, 2, st.dit_len, inner, P, Hh);
        }
        st.dit_len = P + Hh;
    }
    if (s * st.past > P + Hh) {
        const int64_t head1 = P / s, tail1 = Hh / s;
        for (size_t il = 0; il < st.enc_k.size(); ++il) {
            const bool token_rate = (int64_t) il < hp.n_blocks;
            const int64_t len = token_rate ? st.past : s * st.past;
            const int64_t head = token_rate ? head1 : P, tail = token_rate ? tail1 : Hh;
            st.enc_k[il] = keep_ends(st.enc_k[il], 1, len, E, head, tail);
            st.enc_v[il] = keep_ends(st.enc_v[il], 1, len, E, head, tail);
        }
        st.past = head1 + tail1;
    }
}

FlowRunner::FlowRunner(const FlowModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

FlowRunner::~FlowRunner() = default;

const FlowHparams & FlowRunner::hparams() const { return impl_->hp; }

std::vector<float> FlowRunner::encode(const std::vector<int32_t> & tokens, const std::vector<float> & spk,
                                      std::vector<float> * spk_out) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t n = (int64_t) tokens.size();
    if (n == 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens");
    if (n * hp.up_stride > hp.max_frames) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: " + std::to_string(n) + " speech tokens give more than " +
                                             std::to_string(hp.max_frames) + " mel frames (the reference's limit)");
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) + " at " +
                                                 std::to_string(i) + " is out of range [0, " +
                                                 std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    std::vector<float> spk_in = spk;
    if (spk_in.empty()) spk_in.assign((size_t) hp.n_spk, 0.0f);
    if ((int64_t) spk_in.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) +
                                             " values, got " + std::to_string(spk_in.size()));
    }
    for (float v : spk_in) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector is not finite");
    }
    s.enc_runner.prepare({n}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, s.m, s.eio, n); });
    ggml_backend_tensor_set(s.eio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    const std::vector<float> p1 = rel_pos_table(hp, n), p2 = rel_pos_table(hp, hp.up_stride * n);
    ggml_backend_tensor_set(s.eio.pos1, p1.data(), 0, p1.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.pos2, p2.data(), 0, p2.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.spk, spk_in.data(), 0, spk_in.size() * sizeof(float));
    s.enc_runner.compute();
    s.enc_observer.finish();
    std::vector<float> mu((size_t) (hp.n_mel * hp.up_stride * n));
    ggml_backend_tensor_get(s.eio.mu, mu.data(), 0, mu.size() * sizeof(float));
    if (spk_out) {
        spk_out->resize((size_t) hp.n_mel);
        ggml_backend_tensor_get(s.eio.spk_out, spk_out->data(), 0, spk_out->size() * sizeof(float));
    }
    return mu;
}

std::vector<float> FlowRunner::dit(const std::vector<float> & x, const std::vector<float> & mu,
                                   const std::vector<float> & spk, const std::vector<float> & cond, float t) {
    Impl & s = *impl_;
    const int64_t N = (int64_t) (x.size() / (size_t) s.hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > s.hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(x, N, "x");
    s.check_frames(mu, N, "mu");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    if (!std::isfinite(t)) fail(ErrorKind::InvalidArgument, "token2wav flow: t is not finite");
    s.run_dit(s.dit_input(x, mu, spk, cond, N), N, t, 0.0f);
    std::vector<float> out((size_t) (2 * N * s.hp.n_mel));
    ggml_backend_tensor_get(s.dio.v, out.data(), 0, out.size() * sizeof(float));
    return out;
}

std::vector<float> FlowRunner::solve(const std::vector<float> & noise, const std::vector<float> & mu,
                                     const std::vector<float> & spk, const std::vector<float> & cond, int n_steps) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    const int64_t N = (int64_t) (mu.size() / (size_t) hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(mu, N, "mu");
    s.check_frames(noise, N, "noise");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    const std::vector<float> span = time_span(n_steps);
    std::vector<float> x(noise.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = noise[i] * hp.temperature;
    float t = span[0], dt = span[1] - span[0];
    for (int st = 1; st <= n_steps; ++st) {
        s.run_dit(s.dit_input(x, mu, spk, cond, N), N, t, dt);
        ggml_backend_tensor_get(s.dio.x_next, x.data(), 0, x.size() * sizeof(float));
        t = t + dt;
        if (st < n_steps) dt = span[(size_t) st + 1] - t;
    }
    return x;
}

void FlowRunner::stream_start(const FlowPrompt & prompt, int n_steps, const std::vector<float> * noise, uint64_t seed) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t M = hp.n_mel, la = hp.lookahead, Tp = (int64_t) prompt.tokens.size();
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (Tp < la) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt needs at least " + std::to_string(la) +
                                             " speech tokens (its first ones are the look-ahead of the prompt pass)");
    }
    if ((int64_t) prompt.mel.size() != hp.up_stride * Tp * M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt mel must have " +
                                             std::to_string(hp.up_stride * Tp) + " frames (" +
                                             std::to_string(hp.up_stride) + " per prompt token), got " +
                                             std::to_string(prompt.mel.size() / (size_t) M));
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    if (noise && (noise->empty() || noise->size() % (size_t) M)) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> tokens = prompt.tokens;
    tokens.insert(tokens.end(), prompt.tokens.begin(), prompt.tokens.begin() + la);
    for (int32_t t : tokens) {
        if (t < 0 || t >= hp.n_vocab) fail(ErrorKind::InvalidArgument, "token2wav flow: prompt speech token out of range");
    }
    std::vector<float> spk = prompt.spk;
    if ((int64_t) spk.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) + " values");
    }
    s.st = Impl::Stream{};
    s.st.n_steps = n_steps;
    s.st.seed = seed;
    if (noise) s.st.noise = *noise;
    s.st.prompt_frames = hp.up_stride * Tp;
    try {
        const std::vector<float> mu = s.enc_chunk(tokens, /*last=*/false, spk);
        s.dit_chunk(mu, prompt.mel);
    } catch (...) {
        s.st = Impl::Stream{};
        throw;
    }
    s.st.spk_in = spk;
    s.st.active = true;
}

std::vector<float> FlowRunner::stream_push(const std::vector<int32_t> & tokens, bool last) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (!s.st.active) fail(ErrorKind::InvalidArgument, "token2wav flow stream: call stream_start (set_prompt) first");
    const int64_t n = (int64_t) tokens.size();
    if (n == 0 && last) return {};
    if (!last && n < hp.lookahead + 2) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: a chunk that is not the last needs at least 2 new tokens "
                                         "plus " + std::to_string(hp.lookahead) + " look-ahead tokens, got " + std::to_string(n));
    }
    if (n > hp.max_frames / hp.up_stride) fail(ErrorKind::InvalidArgument, "token2wav flow stream: chunk too long");
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) +
                                                 " is out of range [0, " + std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    const int64_t N = hp.up_stride * (last ? n : n - hp.lookahead);
    if (!s.st.noise.empty() && (int64_t) (s.st.noise.size() / (size_t) hp.n_mel) < s.st.dit_len + N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                             std::to_string(s.st.noise.size() / (size_t) hp.n_mel) +
                                             " frames, this chunk needs " + std::to_string(s.st.dit_len + N));
    }
    const std::vector<float> mu = s.enc_chunk(tokens, last, s.st.spk_in);
    const std::vector<float> cond(mu.size(), 0.0f);
    std::vector<float> x = s.dit_chunk(mu, cond);
    s.trim();
    return x;
}

std::pair<int64_t, int64_t> FlowRunner::stream_frames() const {
    return impl_->st.active ? std::make_pair(impl_->st.past, impl_->st.dit_len) : std::make_pair<int64_t, int64_t>(0, 0);
}

std::vector<float> FlowRunner::default_noise(int64_t first, int64_t n, uint64_t seed) const {
    return noise_rows(impl_->hp.n_mel, first, n, seed);
}

std::vector<float> FlowRunner::flow_mel(const std::vector<int32_t> & tokens, const FlowPrompt & prompt, int n_steps,
                                        const std::vector<float> * noise, uint64_t seed) {
    const FlowHparams & hp = impl_->hp;
    const int64_t M = hp.n_mel;
    if (tokens.empty()) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens to synthesise");
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (prompt.mel.size() % (size_t) M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> all = prompt.tokens;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const int64_t N = hp.up_stride * (int64_t) all.size();
    const int64_t n_pm = (int64_t) (prompt.mel.size() / (size_t) M);
    if (n_pm > N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel has " + std::to_string(n_pm) +
                                             " frames, more than the " + std::to_string(N) + " of all tokens");
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    std::vector<float> spk80;
    const std::vector<float> mu = encode(all, prompt.spk, &spk80);
    std::vector<float> cond((size_t) (N * M), 0.0f);
    std::copy(prompt.mel.begin(), prompt.mel.end(), cond.begin());
    std::vector<float> z;
    if (noise) {
        if ((int64_t) noise->size() < N * M || noise->size() % (size_t) M) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: the noise must be [>= " + std::to_string(N) + "][" +
                                                 std::to_string(M) + "] (total frames), got " +
                                                 std::to_string(noise->size()) + " values");
        }
        z.assign(noise->begin(), noise->begin() + N * M);
    } else {
        z = default_noise(0, N, seed);
    }
    std::vector<float> x = solve(z, mu, spk80, cond, n_steps);
    return std::vector<float>(x.begin() + n_pm * M, x.end());
}

} // namespace minicpm
