// Token2Wav flow matching: the encoder graphs (UpsampleConformerEncoderV2.forward /
// forward_chunk with the ESPnet relative-position attention, encoder_proj, the speaker
// projection). stepaudio2/cosyvoice2/transformer/*.py, flow/flow.py.
#include "models/flow_graph.h"

#include "graph/blocks.h"

#include <cmath>
#include <string>

namespace minicpm::flow_graph {

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
    ggml_tensor * y = graph::mul_mat(ctx, ggml_reshape_2d(ctx, kernel, cin * k, cout), cols);
    return ggml_add(ctx, y, bias);
}

// Zero frames before (`left`) and after (`right`) x [C, T, B].
ggml_tensor * pad_time(ggml_context * ctx, ggml_tensor * x, int left, int right) {
    return ggml_pad_ext(ctx, x, 0, 0, left, right, 0, 0, 0, 0);
}

namespace {

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
    ggml_tensor * p = ggml_reshape_3d(ctx, graph::mul_mat(ctx, L.pos_w, pos), dk, H, 2 * Lk - 1);
    ggml_tensor * qu = ggml_permute(ctx, ggml_add(ctx, q, L.pos_u), 0, 2, 1, 3);   // [dk, T, H]
    ggml_tensor * qv = ggml_permute(ctx, ggml_add(ctx, q, L.pos_v), 0, 2, 1, 3);
    ggml_tensor * ac = graph::mul_mat(ctx, ggml_permute(ctx, k, 0, 2, 1, 3), qu);     // [Lk, T, H]
    ggml_tensor * bd = graph::mul_mat(ctx, ggml_permute(ctx, p, 0, 2, 1, 3), qv);     // [2Lk-1, T, H]
    graph::set_prec_f32(ac);
    graph::set_prec_f32(bd);
    // rel_shift: score (j, i) takes bd (T - 1 - i + j, i), the relative position (Lc + i) - j.
    const size_t es = ggml_element_size(bd);
    ggml_tensor * shifted = ggml_view_3d(ctx, bd, Lk, T, H, (size_t) (2 * Lk - 2) * es, bd->nb[2], (size_t) (T - 1) * es);
    ggml_tensor * scores = ggml_add(ctx, ac, ggml_cont(ctx, shifted));
    scores = ggml_soft_max_ext(ctx, scores, nullptr, 1.0f / std::sqrt((float) dk), 0.0f);
    ggml_tensor * vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));          // [Lk, dk, H]
    ggml_tensor * o = graph::mul_mat(ctx, vt, scores);                               // [dk, T, H]
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

} // namespace

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

namespace {

// F.normalize (x / max(|x|, eps)) -> spk_embed_affine_layer, as an output of the graph.
ggml_tensor * speaker(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, ggml_tensor * spk) {
    ggml_tensor * norm = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum(ctx, ggml_sqr(ctx, spk))), m.hp.spk_eps, INFINITY);
    ggml_tensor * out = graph::linear(ctx, ggml_div(ctx, spk, norm), m.w.spk_w, m.w.spk_b);
    ggml_set_name(out, "flow_spk");
    ggml_set_output(out);
    ggml_build_forward_expand(gf, out);
    return out;
}

} // namespace

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

} // namespace minicpm::flow_graph
