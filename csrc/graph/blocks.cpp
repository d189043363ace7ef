#include "blocks.h"

namespace minicpm::graph {

ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps) {
    ggml_tensor * cur = ggml_rms_norm(ctx, x, eps);
    return w ? ggml_mul(ctx, cur, w) : cur;
}

ggml_tensor * linear(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b) {
    ggml_tensor * cur = ggml_mul_mat(ctx, w, x);
    return b ? ggml_add(ctx, cur, b) : cur;
}

ggml_tensor * swiglu_mlp(ggml_context * ctx, ggml_tensor * x, ggml_tensor * gate, ggml_tensor * up, ggml_tensor * down) {
    ggml_tensor * g = ggml_mul_mat(ctx, gate, x);
    ggml_tensor * u = ggml_mul_mat(ctx, up, x);
    ggml_tensor * h = ggml_swiglu_split(ctx, g, u);   // silu(g) * u
    return ggml_mul_mat(ctx, down, h);
}

ggml_tensor * attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                        float scale, bool flash) {
    const int64_t head_dim = q->ne[0];
    const int64_t n_head   = q->ne[1];
    const int64_t n_tokens = q->ne[2];
    q = ggml_permute(ctx, q, 0, 2, 1, 3);   // [head_dim, n_tokens, n_head]
    if (flash) {
        ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
        // out: [head_dim, n_head, n_tokens]
        return ggml_reshape_2d(ctx, out, head_dim * n_head, n_tokens);
    }
    ggml_tensor * kq = ggml_mul_mat(ctx, k, q);   // [n_kv, n_tokens, n_head]
    ggml_mul_mat_set_prec(kq, GGML_PREC_F32);
    kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
    ggml_tensor * vt  = ggml_cont(ctx, ggml_transpose(ctx, v));   // [n_kv, head_dim, n_head_kv]
    ggml_tensor * kqv = ggml_mul_mat(ctx, vt, kq);                  // [head_dim, n_tokens, n_head]
    kqv = ggml_permute(ctx, kqv, 0, 2, 1, 3);                       // [head_dim, n_head, n_tokens]
    return ggml_cont_2d(ctx, kqv, head_dim * n_head, n_tokens);
}

} // namespace minicpm::graph
