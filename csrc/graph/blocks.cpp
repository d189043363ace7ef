#include "blocks.h"

#include "core/cpu_ops.h"

namespace minicpm::graph {

ggml_tensor * mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b) {
    if (cpu_ops::Scope::active() && cpu_ops::eligible(a, b)) return cpu_ops::mul_mat(ctx, a, b);
    return ggml_mul_mat(ctx, a, b);
}

ggml_tensor * mish(ggml_context * ctx, ggml_tensor * x) {
    if (cpu_ops::Scope::active() && cpu_ops::unary_eligible(x)) return cpu_ops::unary(ctx, x, cpu_ops::Unary::Mish);
    return ggml_mul(ctx, x, ggml_tanh(ctx, ggml_softplus(ctx, x)));
}

ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps) {
    ggml_tensor * cur = ggml_rms_norm(ctx, x, eps);
    return w ? ggml_mul(ctx, cur, w) : cur;
}

ggml_tensor * linear(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b) {
    if (b && cpu_ops::Scope::active() && cpu_ops::eligible(w, x) && cpu_ops::bias_eligible(w, b)) {
        return cpu_ops::mul_mat(ctx, w, x, b);   // the bias added in the product's store
    }
    ggml_tensor * cur = mul_mat(ctx, w, x);
    return b ? ggml_add(ctx, cur, b) : cur;
}

ggml_tensor * linear_strided(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b) {
    if (cpu_ops::Scope::active() && cpu_ops::eligible(w, x)) return linear(ctx, x, w, b);
    ggml_tensor * rows = ggml_reshape_2d(ctx, ggml_cont(ctx, x), x->ne[0], x->ne[1] * x->ne[2] * x->ne[3]);
    return ggml_reshape_4d(ctx, linear(ctx, rows, w, b), w->ne[1], x->ne[1], x->ne[2], x->ne[3]);
}

ggml_tensor * swiglu_mlp(ggml_context * ctx, ggml_tensor * x, ggml_tensor * gate, ggml_tensor * up, ggml_tensor * down) {
    ggml_tensor * g = mul_mat(ctx, gate, x);
    ggml_tensor * u = mul_mat(ctx, up, x);
    ggml_tensor * h = ggml_swiglu_split(ctx, g, u);   // silu(g) * u
    return mul_mat(ctx, down, h);
}

ggml_tensor * attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                        float scale, bool flash) {
    const int64_t head_dim = q->ne[0];
    const int64_t n_head   = q->ne[1];
    const int64_t n_tokens = q->ne[2];
    q = ggml_permute(ctx, q, 0, 2, 1, 3);   // [head_dim, n_tokens, n_head]
    if (flash) {
        ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
        set_prec_f32(out);
        // out: [head_dim, n_head, n_tokens]
        return ggml_reshape_2d(ctx, out, head_dim * n_head, n_tokens);
    }
    ggml_tensor * kq = mul_mat(ctx, k, q);   // [n_kv, n_tokens, n_head]
    set_prec_f32(kq);
    kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
    ggml_tensor * vt  = ggml_cont(ctx, ggml_transpose(ctx, v));   // [n_kv, head_dim, n_head_kv]
    ggml_tensor * kqv = mul_mat(ctx, vt, kq);                  // [head_dim, n_tokens, n_head]
    kqv = ggml_permute(ctx, kqv, 0, 2, 1, 3);                       // [head_dim, n_head, n_tokens]
    return ggml_cont_2d(ctx, kqv, head_dim * n_head, n_tokens);
}

ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps) {
    ggml_tensor * cur = ggml_norm(ctx, x, eps);
    if (w) cur = ggml_mul(ctx, cur, w);
    if (b) cur = ggml_add(ctx, cur, b);
    return cur;
}

ggml_tensor * gelu_tanh(ggml_context * ctx, ggml_tensor * x) {
    if (cpu_ops::Scope::active() && cpu_ops::unary_eligible(x)) return cpu_ops::unary(ctx, x, cpu_ops::Unary::GeluTanh);
    // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    const float k_beta  = 0.7978845608028654f;   // sqrt(2/pi)
    const float k_kappa = 0.044715f;
    ggml_tensor * x3    = ggml_mul(ctx, ggml_sqr(ctx, x), x);
    ggml_tensor * inner = ggml_add(ctx, x, ggml_scale(ctx, x3, k_kappa));
    ggml_tensor * t     = ggml_tanh(ctx, ggml_scale(ctx, inner, k_beta));
    return ggml_mul(ctx, x, ggml_scale_bias(ctx, t, 0.5f, 0.5f));
}

void set_prec_f32(ggml_tensor * t) {
    // ggml >= 0.25 deprecates the per-op setters in favour of ggml_prec_set_acc, which older
    // versions lack; the old names still work in both.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    if (t->op == GGML_OP_FLASH_ATTN_EXT) ggml_flash_attn_ext_set_prec(t, GGML_PREC_F32);
    else if (t->op == GGML_OP_MUL_MAT) ggml_mul_mat_set_prec(t, GGML_PREC_F32);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}

ggml_tensor * attention_batched_flash(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale,
                                      ggml_type kv_type, int64_t pad_head_to, bool pad_strided) {
    const int64_t head_dim = q->ne[0];
    const int64_t n_head   = q->ne[1];
    const int64_t n_q      = q->ne[2];
    const int64_t n_seq    = k->ne[3];
    if (pad_head_to > head_dim) {
        // [pad_head_to, n_head, n, n_seq], zeros after column head_dim; K/V converted while
        // still contiguous (a plain conversion instead of a strided copy after the permute).
        const int p = (int) (pad_head_to - head_dim);
        auto pad = [&](ggml_tensor * t) {
            return ggml_pad(ctx, pad_strided || ggml_is_contiguous(t) ? t : ggml_cont(ctx, t), p, 0, 0, 0);
        };
        q = pad(q);
        k = pad(k);
        v = pad(v);
        if (kv_type != k->type) {
            k = ggml_cast(ctx, k, kv_type);
            v = ggml_cast(ctx, v, kv_type);
        }
        q = ggml_permute(ctx, q, 0, 2, 1, 3);
        if (q->ne[3] != n_seq) q = ggml_repeat_4d(ctx, q, pad_head_to, n_q, n_head, n_seq);
        k = ggml_permute(ctx, k, 0, 2, 1, 3);
        v = ggml_permute(ctx, v, 0, 2, 1, 3);
        ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, nullptr, scale, 0.0f, 0.0f);
        set_prec_f32(out);
        // out: [pad_head_to, n_head, n_q, n_seq]; keep the first head_dim columns of each head
        out = ggml_view_4d(ctx, out, head_dim, n_head, n_q, n_seq, out->nb[1], out->nb[2], out->nb[3], 0);
        return ggml_reshape_3d(ctx, ggml_cont(ctx, out), head_dim * n_head, n_q, n_seq);
    }
    q = ggml_permute(ctx, q, 0, 2, 1, 3);   // [head_dim, n_q, n_head, n_seq or 1]
    if (q->ne[3] != n_seq) q = ggml_repeat_4d(ctx, q, head_dim, n_q, n_head, n_seq);
    k = ggml_permute(ctx, k, 0, 2, 1, 3);   // [head_dim, n_kv, n_head, n_seq]
    v = ggml_permute(ctx, v, 0, 2, 1, 3);
    if (kv_type != k->type) {
        k = ggml_cast(ctx, k, kv_type);
        v = ggml_cast(ctx, v, kv_type);
    }
    ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, nullptr, scale, 0.0f, 0.0f);
    set_prec_f32(out);
    // out: [head_dim, n_head, n_q, n_seq], already the row layout of the projection's input
    return ggml_reshape_3d(ctx, out, head_dim * n_head, n_q, n_seq);
}

ggml_tensor * attention_batched(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale) {
    const int64_t head_dim = q->ne[0];
    const int64_t n_head   = q->ne[1];
    const int64_t n_q      = q->ne[2];
    const int64_t n_seq    = k->ne[3];
    q = ggml_permute(ctx, q, 0, 2, 1, 3);   // [head_dim, n_q, n_head, n_seq or 1]
    if (q->ne[3] != n_seq) {
        // mul_mat broadcasts its first operand only, so a shared query set is repeated.
        q = ggml_repeat_4d(ctx, q, head_dim, n_q, n_head, n_seq);
    }
    k = ggml_permute(ctx, k, 0, 2, 1, 3);   // [head_dim, n_kv, n_head, n_seq]
    ggml_tensor * kq = mul_mat(ctx, k, q);   // [n_kv, n_q, n_head, n_seq]
    set_prec_f32(kq);
    kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
    ggml_tensor * vt  = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));   // [n_kv, head_dim, n_head, n_seq]
    ggml_tensor * kqv = mul_mat(ctx, vt, kq);                        // [head_dim, n_q, n_head, n_seq]
    kqv = ggml_permute(ctx, kqv, 0, 2, 1, 3);                             // [head_dim, n_head, n_q, n_seq]
    return ggml_cont_3d(ctx, kqv, head_dim * n_head, n_q, n_seq);
}

} // namespace minicpm::graph
