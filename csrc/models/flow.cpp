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

// RelPositionMultiHeadedAttention.forward (no mask, no cache) on x [E, T] with the relative
// position table pos [E, 2T - 1] (position T - 1 first): Transformer-XL scores
// (q + u) k^T + rel_shift((q + v) p^T), scaled by 1/sqrt(d_k).
ggml_tensor * rel_attention(ggml_context * ctx, const FlowHparams & hp, const FlowEncLayer & L, ggml_tensor * x,
                            ggml_tensor * pos) {
    using graph::linear;
    const int64_t E = hp.n_embd, H = hp.n_head, dk = E / H, T = x->ne[1];
    ggml_tensor * q = ggml_reshape_3d(ctx, linear(ctx, x, L.q_w, L.q_b), dk, H, T);
    ggml_tensor * k = ggml_reshape_3d(ctx, linear(ctx, x, L.k_w, L.k_b), dk, H, T);
    ggml_tensor * v = ggml_reshape_3d(ctx, linear(ctx, x, L.v_w, L.v_b), dk, H, T);
    ggml_tensor * p = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.pos_w, pos), dk, H, 2 * T - 1);
    ggml_tensor * qu = ggml_permute(ctx, ggml_add(ctx, q, L.pos_u), 0, 2, 1, 3);   // [dk, T, H]
    ggml_tensor * qv = ggml_permute(ctx, ggml_add(ctx, q, L.pos_v), 0, 2, 1, 3);
    ggml_tensor * ac = ggml_mul_mat(ctx, ggml_permute(ctx, k, 0, 2, 1, 3), qu);     // [T_k, T_q, H]
    ggml_tensor * bd = ggml_mul_mat(ctx, ggml_permute(ctx, p, 0, 2, 1, 3), qv);     // [2T-1, T_q, H]
    graph::set_prec_f32(ac);
    graph::set_prec_f32(bd);
    // rel_shift: score (j, i) takes bd (T - 1 - i + j, i), the relative position i - j.
    const size_t es = ggml_element_size(bd);
    ggml_tensor * shifted = ggml_view_3d(ctx, bd, T, T, H, (size_t) (2 * T - 2) * es, bd->nb[2], (size_t) (T - 1) * es);
    ggml_tensor * scores = ggml_add(ctx, ac, ggml_cont(ctx, shifted));
    scores = ggml_soft_max_ext(ctx, scores, nullptr, 1.0f / std::sqrt((float) dk), 0.0f);
    ggml_tensor * vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));          // [T_k, dk, H]
    ggml_tensor * o = ggml_mul_mat(ctx, vt, scores);                               // [dk, T_q, H]
    o = ggml_cont_2d(ctx, ggml_permute(ctx, o, 0, 2, 1, 3), E, T);
    return linear(ctx, o, L.o_w, L.o_b);
}

// ConformerEncoderLayer (pre-LN, no macaron FFN, no conv module).
ggml_tensor * conformer_layer(ggml_context * ctx, const FlowHparams & hp, const FlowEncLayer & L, ggml_tensor * x,
                              ggml_tensor * pos) {
    using namespace graph;
    ggml_tensor * h = layer_norm(ctx, x, L.attn_norm_w, L.attn_norm_b, hp.layer_eps);
    x = ggml_add(ctx, x, rel_attention(ctx, hp, L, h, pos));
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

    // speaker: F.normalize (x / max(|x|, eps)) -> spk_embed_affine_layer
    ggml_tensor * norm = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum(ctx, ggml_sqr(ctx, io.spk))), hp.spk_eps, INFINITY);
    io.spk_out = linear(ctx, ggml_div(ctx, io.spk, norm), w.spk_w, w.spk_b);
    ggml_set_name(io.spk_out, "flow_spk");
    ggml_set_output(io.spk_out);
    ggml_build_forward_expand(gf, io.spk_out);

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

struct DitIO {
    ggml_tensor * x = nullptr;      // [dit_in, N, 2] the estimator input (x | mu | spk | cond, and x | 0)
    ggml_tensor * t_freq = nullptr; // [t_freq]
    ggml_tensor * dt = nullptr;     // [1]
    ggml_tensor * v = nullptr;      // [n_mel, N, 2] estimator output
    ggml_tensor * x_next = nullptr; // [n_mel, N] Euler step with guidance
};

// DiTBlock.forward with the time condition c [D] (shared by the batch).
ggml_tensor * dit_block(ggml_context * ctx, const FlowHparams & hp, const FlowDitBlock & B, ggml_tensor * x,
                        ggml_tensor * c_act, int il) {
    using namespace graph;
    const int64_t D = hp.dit_embd, H = hp.dit_head, hd = hp.dit_head_dim, N = x->ne[1], nb = x->ne[2];
    const int k = (int) hp.conv_kernel;
    ggml_tensor * mod = linear(ctx, c_act, B.adaln_w, B.adaln_b);                  // [9D]
    // chunk order: shift/scale/gate of attention, MLP, conv
    ggml_tensor * h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 0), chunk(ctx, mod, D, 1));
    ggml_tensor * q = ggml_reshape_4d(ctx, linear(ctx, h, B.q_w, B.q_b), hd, H, N, nb);
    ggml_tensor * kk = ggml_reshape_4d(ctx, linear(ctx, h, B.k_w, B.k_b), hd, H, N, nb);
    ggml_tensor * v = ggml_reshape_4d(ctx, linear(ctx, h, B.v_w, B.v_b), hd, H, N, nb);
    q = layer_norm(ctx, q, B.q_norm_w, B.q_norm_b, hp.qk_eps);
    kk = layer_norm(ctx, kk, B.k_norm_w, B.k_norm_b, hp.qk_eps);
    ggml_tensor * a = attention_batched(ctx, q, kk, v, 1.0f / std::sqrt((float) hd));   // [H hd, N, nb]
    a = linear(ctx, a, B.o_w, B.o_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, a, chunk(ctx, mod, D, 2)));
    ggml_format_name(x, "flow_dit_attn_out-%d", il);
    // CausalConvBlock: causal conv -> LayerNorm -> Mish -> causal conv
    h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 6), chunk(ctx, mod, D, 7));
    h = conv1d(ctx, pad_time(ctx, h, k - 1, 0), B.conv1_w, B.conv1_b);
    h = layer_norm(ctx, h, B.conv_norm_w, B.conv_norm_b, hp.conv_eps);
    h = ggml_mul(ctx, h, ggml_tanh(ctx, ggml_softplus(ctx, h)));                   // Mish
    h = conv1d(ctx, pad_time(ctx, h, k - 1, 0), B.conv2_w, B.conv2_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, h, chunk(ctx, mod, D, 8)));
    // MLP: fc1 -> GELU(tanh) -> fc2
    h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), chunk(ctx, mod, D, 3), chunk(ctx, mod, D, 4));
    h = linear(ctx, gelu_tanh(ctx, linear(ctx, h, B.up_w, B.up_b)), B.down_w, B.down_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, h, chunk(ctx, mod, D, 5)));
    ggml_format_name(x, "flow_dit_l_out-%d", il);
    return x;
}

// DiT.forward on the CFG batch, then solve_euler's guidance and Euler step.
void build_dit(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitIO & io, int64_t N) {
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
    for (int il = 0; il < (int) hp.dit_depth; ++il) x = dit_block(ctx, hp, w.dit[(size_t) il], x, c_act, il);
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

    void check_frames(const std::vector<float> & v, int64_t N, const char * what) const {
        if ((int64_t) v.size() != N * hp.n_mel) {
            fail(ErrorKind::InvalidArgument, std::string("token2wav flow: ") + what + " must hold " +
                                                 std::to_string(N) + " frames of " + std::to_string(hp.n_mel) +
                                                 " values, got " + std::to_string(v.size()) + " values");
        }
    }
};

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
    s.check_frames(mu, N, "mu");
    s.check_frames(noise, N, "noise");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    // t_span = 1 - cos(linspace(0, 1, n + 1) * pi / 2), float32 as torch.linspace computes it
    const int64_t n_pts = n_steps + 1;
    const float step = 1.0f / (float) n_steps;
    std::vector<float> span((size_t) n_pts);
    for (int64_t i = 0; i < n_pts; ++i) {
        const float lin = i < n_pts / 2 ? (float) i * step : 1.0f - (float) (n_pts - 1 - i) * step;
        span[(size_t) i] = 1.0f - std::cos(lin * 0.5f * kPi);
    }
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

std::vector<float> FlowRunner::default_noise(int64_t first, int64_t n, uint64_t seed) const {
    // Standard normal values (Box-Muller on two 53-bit uniforms) from a counter hash of (seed,
    // absolute frame, channel): the same frame always gets the same noise, whatever the chunking.
    const int64_t M = impl_->hp.n_mel;
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
