// Token2Wav flow matching: the DiT estimator graph (DiT.forward / forward_chunk on the
// classifier-free-guidance batch, with solve_euler's guidance and Euler step).
// stepaudio2/cosyvoice2/flow/decoder_dit.py, flow_matching.py.
#include "models/flow_graph.h"

#include "graph/blocks.h"

#include <cmath>
#include <functional>

namespace minicpm::flow_graph {

namespace {

// The adaLN modulations of every block (and the final layer) at every solver step of a graph:
// they depend on the step's time only, so each is one product over all steps ahead of the
// estimator passes. raw [n * D, steps] = adaLN(SiLU(c)), p1 = raw + 1 (the scales' 1 + scale).
struct StepMods {
    ggml_tensor * raw = nullptr, * p1 = nullptr;
    int64_t       D = 0;
    // Chunk c of step i: the raw values, or 1 + them.
    ggml_tensor * get(ggml_context * ctx, int i, int c, bool plus1) const {
        ggml_tensor * v = plus1 ? p1 : raw;
        return ggml_view_1d(ctx, v, D, (size_t) i * v->nb[1] + (size_t) c * D * ggml_element_size(v));
    }
};

struct Conditioning {
    std::vector<StepMods> blocks;
    StepMods              final;
};

// TimestepEmbedder (Linear -> SiLU -> Linear) on the sinusoids t_freq [t_freq, steps], SiLU once
// for every adaLN, then each block's adaLN product.
Conditioning conditioning(ggml_context * ctx, const FlowModel & m, ggml_tensor * t_freq) {
    using namespace graph;
    const FlowWeights & w = m.w;
    ggml_tensor * c = linear(ctx, ggml_silu(ctx, linear(ctx, t_freq, w.t1_w, w.t1_b)), w.t2_w, w.t2_b);
    ggml_set_name(c, "flow_dit_t");
    ggml_tensor * c_act = ggml_silu(ctx, c);
    auto mods = [&](ggml_tensor * wt, ggml_tensor * b) {
        StepMods s;
        s.raw = linear(ctx, c_act, wt, b);
        s.p1 = ggml_scale_bias(ctx, s.raw, 1.0f, 1.0f);
        s.D = m.hp.dit_embd;
        return s;
    };
    Conditioning out;
    for (const FlowDitBlock & B : w.dit) out.blocks.push_back(mods(B.adaln_w, B.adaln_b));
    out.final = mods(w.final_adaln_w, w.final_adaln_b);
    return out;
}

// modulate(x) = x * (1 + scale) + shift, chunks (shift, scale) of step i.
ggml_tensor * modulate(ggml_context * ctx, ggml_tensor * x, const StepMods & md, int i, int c_shift) {
    return ggml_add(ctx, ggml_mul(ctx, x, md.get(ctx, i, c_shift + 1, true)), md.get(ctx, i, c_shift, false));
}

// [hd * H, L, B] (any strides) seen as [hd, H, L, B].
ggml_tensor * heads(ggml_context * ctx, ggml_tensor * t, int64_t hd, int64_t H) {
    return ggml_view_4d(ctx, t, hd, H, t->ne[1], t->ne[2], t->nb[0] * hd, t->nb[1], t->nb[2], 0);
}

// Rows [off, off + hd * H) of each frame of t [W, N * B] as [hd, H, N, B].
ggml_tensor * head_rows(ggml_context * ctx, ggml_tensor * t, int64_t off, int64_t hd, int64_t H, int64_t N, int64_t B) {
    return ggml_view_4d(ctx, t, hd, H, N, B, t->nb[0] * hd, t->nb[1], t->nb[1] * N, (size_t) off * t->nb[0]);
}

// CausalConv1d over h [D, N, B]: the cached frames (zeros when none) before it. The window
// matrix is a view whose rows (k frames back to back, the kernel's [in, k] order) overlap by
// k - 1 frames, read in place by the CPU kernel, else made contiguous in one copy. With a
// cache, *cache_out views the last k - 1 input frames (handed on).
ggml_tensor * causal_conv(ggml_context * ctx, ggml_tensor * h, ggml_tensor * kernel, ggml_tensor * bias,
                          ggml_tensor * cache, ggml_tensor ** cache_out) {
    const int64_t cin = kernel->ne[0], k = kernel->ne[1], cout = kernel->ne[2];
    ggml_tensor * in = cache ? ggml_concat(ctx, cache, h, 1) : pad_time(ctx, h, (int) k - 1, 0);
    if (cache_out) {
        *cache_out = ggml_view_3d(ctx, in, in->ne[0], k - 1, in->ne[2], in->nb[1], in->nb[2],
                                  (size_t) (in->ne[1] - (k - 1)) * in->nb[1]);
    }
    const int64_t t_out = in->ne[1] - k + 1, nb = in->ne[2];
    // ggml_view_3d checks a view's extent as if it were contiguous, which these overlapping
    // rows are not: the view is made with rows of one frame, then widened to k frames (its real
    // extent, ggml_nbytes, is exactly `in`'s).
    ggml_tensor * win = ggml_view_3d(ctx, in, cin, t_out, nb, in->nb[1], in->nb[2], 0);
    win->ne[0] = cin * k;
    return graph::linear_strided(ctx, win, ggml_reshape_2d(ctx, kernel, cin * k, cout), bias);   // [cout, t_out, nb]
}

// DiTBlock.forward (forward_chunk with a cache) on x [D, N * nb] (the CFG batch's frames, batch
// after batch) at solver step i of the modulations md.
ggml_tensor * dit_block(ggml_context * ctx, const FlowModel & m, const FlowDitBlock & B, ggml_tensor * x, int64_t N,
                        const StepMods & md, int i, int il, DitCache * cache = nullptr) {
    using namespace graph;
    const FlowHparams & hp = m.hp;
    const int64_t D = hp.dit_embd, H = hp.dit_head, hd = hp.dit_head_dim, inner = H * hd, nb = x->ne[1] / N;
    // chunk order: shift/scale/gate of attention, MLP, conv
    ggml_tensor * h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), md, i, 0);
    ggml_tensor * q, * kk, * v;
    if (B.qkv_w) {
        ggml_tensor * qkv = linear(ctx, h, B.qkv_w, B.qkv_b);   // [3 inner, N nb]
        v = head_rows(ctx, qkv, 2 * inner, hd, H, N, nb);
        if (B.qk_norm_w) {   // both LayerNorms at once, over the 2H heads of Q|K
            ggml_tensor * qk = layer_norm(ctx, head_rows(ctx, qkv, 0, hd, 2 * H, N, nb), B.qk_norm_w, B.qk_norm_b, hp.qk_eps);
            q = ggml_view_4d(ctx, qk, hd, H, N, nb, qk->nb[1], qk->nb[2], qk->nb[3], 0);
            kk = ggml_view_4d(ctx, qk, hd, H, N, nb, qk->nb[1], qk->nb[2], qk->nb[3], (size_t) H * qk->nb[1]);
        } else {
            q = layer_norm(ctx, head_rows(ctx, qkv, 0, hd, H, N, nb), B.q_norm_w, B.q_norm_b, hp.qk_eps);
            kk = layer_norm(ctx, head_rows(ctx, qkv, inner, hd, H, N, nb), B.k_norm_w, B.k_norm_b, hp.qk_eps);
        }
    } else {
        q = ggml_reshape_4d(ctx, linear(ctx, h, B.q_w, B.q_b), hd, H, N, nb);
        kk = ggml_reshape_4d(ctx, linear(ctx, h, B.k_w, B.k_b), hd, H, N, nb);
        v = ggml_reshape_4d(ctx, linear(ctx, h, B.v_w, B.v_b), hd, H, N, nb);
        q = layer_norm(ctx, q, B.q_norm_w, B.q_norm_b, hp.qk_eps);
        kk = layer_norm(ctx, kk, B.k_norm_w, B.k_norm_b, hp.qk_eps);
    }
    if (cache) {
        if (cache->kc) {   // new frames first, then the cache (Attention.forward_chunk)
            kk = ggml_concat(ctx, kk, heads(ctx, cache->kc, hd, H), 2);
            v = ggml_concat(ctx, v, heads(ctx, cache->vc, hd, H), 2);
        }
        cache->k = kk;
        cache->v = v;
    }
    const float scale = 1.0f / std::sqrt((float) hd);
    ggml_tensor * a = m.lean && m.flash_kv != GGML_TYPE_COUNT
                          ? attention_batched_flash(ctx, q, kk, v, scale, m.flash_kv == GGML_TYPE_F32 ? v->type : m.flash_kv)
                          : attention_batched(ctx, q, kk, v, scale);   // [H hd, N, nb]
    a = linear(ctx, ggml_reshape_2d(ctx, a, inner, N * nb), B.o_w, B.o_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, a, md.get(ctx, i, 2, false)));
    ggml_format_name(x, "flow_dit_attn_out-%d", il);
    // CausalConvBlock: causal conv -> LayerNorm -> Mish -> causal conv
    h = ggml_reshape_3d(ctx, modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), md, i, 6), D, N, nb);
    h = causal_conv(ctx, h, B.conv1_w, B.conv1_b, cache ? cache->c1 : nullptr, cache ? &cache->c1_out : nullptr);
    h = layer_norm(ctx, h, B.conv_norm_w, B.conv_norm_b, hp.conv_eps);
    h = mish(ctx, h);
    h = causal_conv(ctx, h, B.conv2_w, B.conv2_b, cache ? cache->c2 : nullptr, cache ? &cache->c2_out : nullptr);
    x = ggml_add(ctx, x, ggml_mul(ctx, ggml_reshape_2d(ctx, h, D, N * nb), md.get(ctx, i, 8, false)));
    // MLP: fc1 -> GELU(tanh) -> fc2 (ggml's GELU is the same tanh form; the CPU's keeps a
    // float16 table, so the CPU graph spells it out)
    h = modulate(ctx, ggml_norm(ctx, x, hp.dit_eps), md, i, 3);
    h = linear(ctx, h, B.up_w, B.up_b);
    h = linear(ctx, m.gelu_op ? ggml_gelu(ctx, h) : gelu_tanh(ctx, h), B.down_w, B.down_b);
    x = ggml_add(ctx, x, ggml_mul(ctx, h, md.get(ctx, i, 5, false)));
    ggml_format_name(x, "flow_dit_l_out-%d", il);
    return x;
}

// DiT.forward at solver step i on the CFG batch xin [dit_in, N, 2]: v [n_mel, N, 2]. caches: one
// per block (streaming), or null.
ggml_tensor * estimator(ggml_context * ctx, const FlowModel & m, const Conditioning & cond, int i, ggml_tensor * xin,
                        std::vector<DitCache> * caches, const std::function<void(int, DitCache &)> & after_block = {}) {
    using namespace graph;
    const FlowHparams & hp = m.hp;
    const FlowWeights & w = m.w;
    const int64_t N = xin->ne[1], nb = xin->ne[2];
    ggml_tensor * x = linear(ctx, ggml_reshape_2d(ctx, xin, xin->ne[0], N * nb), w.in_proj_w, w.in_proj_b);   // [D, N nb]
    for (int il = 0; il < (int) hp.dit_depth; ++il) {
        DitCache * cc = caches ? &(*caches)[(size_t) il] : nullptr;
        x = dit_block(ctx, m, w.dit[(size_t) il], x, N, cond.blocks[(size_t) il], i, il, cc);
        if (cc && after_block) after_block(il, *cc);
    }
    x = ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, hp.dit_eps), cond.final.get(ctx, i, 1, true)),
                 cond.final.get(ctx, i, 0, false));
    return ggml_reshape_3d(ctx, linear(ctx, x, w.final_w, w.final_b), hp.dit_out, N, nb);   // [M, N, 2]
}

// solve_euler's guidance and Euler step: x + dt * ((1 + r) v_cond - r v_uncond).
ggml_tensor * euler_step(ggml_context * ctx, const FlowHparams & hp, ggml_tensor * v, ggml_tensor * x,
                         ggml_tensor * dt) {
    const int64_t M = hp.n_mel, N = v->ne[1];
    ggml_tensor * vc = ggml_view_2d(ctx, v, M, N, v->nb[1], 0);
    ggml_tensor * vu = ggml_view_2d(ctx, v, M, N, v->nb[1], v->nb[2]);
    ggml_tensor * dphi = ggml_sub(ctx, ggml_scale(ctx, vc, 1.0f + hp.cfg_rate), ggml_scale(ctx, vu, hp.cfg_rate));
    return ggml_add(ctx, x, ggml_mul(ctx, dphi, dt));
}

ggml_tensor * contiguous(ggml_context * ctx, ggml_tensor * t) {
    return ggml_is_contiguous(t) ? t : ggml_cont(ctx, t);
}

// Frames [from, from + n) of src [W, L, 2] (any strides) copied to frames [to, to + n) of dst.
void copy_frames(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * src, int64_t from, ggml_tensor * dst, int64_t to,
                 int64_t n) {
    if (n <= 0) return;
    ggml_tensor * a = ggml_view_3d(ctx, src, src->ne[0], n, src->ne[2], src->nb[1], src->nb[2], (size_t) from * src->nb[1]);
    ggml_tensor * b = ggml_view_3d(ctx, dst, dst->ne[0], n, dst->ne[2], dst->nb[1], dst->nb[2], (size_t) to * dst->nb[1]);
    ggml_build_forward_expand(gf, ggml_cpy(ctx, a, b));
}

} // namespace

void build_dit(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitIO & io, int64_t N, int64_t stream_len) {
    const FlowHparams & hp = m.hp;
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
    const Conditioning cond = conditioning(ctx, m, ggml_reshape_2d(ctx, io.t_freq, hp.t_freq, 1));
    io.v = estimator(ctx, m, cond, 0, io.x, io.cache.empty() ? nullptr : &io.cache, [&](int, DitCache & c) {
        c.k = contiguous(ctx, c.k);
        c.v = contiguous(ctx, c.v);
        c.c1_out = ggml_cont(ctx, c.c1_out);
        c.c2_out = ggml_cont(ctx, c.c2_out);
        for (ggml_tensor * t : {c.k, c.v, c.c1_out, c.c2_out}) {
            ggml_set_output(t);
            ggml_build_forward_expand(gf, t);
        }
    });
    ggml_set_name(io.v, "flow_dit_out");
    ggml_set_output(io.v);
    ggml_build_forward_expand(gf, io.v);
    io.x_next = euler_step(ctx, hp, io.v, ggml_view_2d(ctx, io.x, M, N, io.x->nb[1], 0), io.dt);
    ggml_set_name(io.x_next, "flow_x_next");
    ggml_set_output(io.x_next);
    ggml_build_forward_expand(gf, io.x_next);
}

void build_dit_solve(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitSolveIO & io, int64_t N,
                     int n_steps, const DitStreamPlan * plan) {
    const FlowHparams & hp = m.hp;
    const int64_t M = hp.n_mel, inner = hp.dit_head * hp.dit_head_dim, depth = hp.dit_depth;
    io = DitSolveIO{};
    auto input = [&](ggml_tensor * t, const char * name) {
        ggml_set_name(t, name);
        ggml_set_input(t);
        return t;
    };
    io.x0 = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, M, N), "inp_solve_x");
    io.rest = input(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hp.dit_in - M, N, 2), "inp_solve_cond");
    io.t_freq = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.t_freq, n_steps), "inp_solve_t_freq");
    io.dt = input(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_steps), "inp_solve_dt");
    struct State {
        ggml_tensor * k, * v, * c1, * c2;
    };
    auto slot = [&](int i, int64_t b) {
        const size_t j = (size_t) ((plan->first + i) * depth + b);
        auto view = [&](ggml_tensor * t) {
            return ggml_view_3d(ctx, t, t->ne[0], t->ne[1], t->ne[2], t->nb[1], t->nb[2], j * t->nb[3]);
        };
        return State{view(plan->k), view(plan->v), view(plan->c1), view(plan->c2)};
    };
    const Conditioning cond = conditioning(ctx, m, io.t_freq);
    ggml_tensor * x = io.x0;
    for (int i = 0; i < n_steps; ++i) {
        ggml_tensor * x3 = ggml_reshape_3d(ctx, x, M, N, 1);
        ggml_tensor * xin = ggml_concat(ctx, ggml_concat(ctx, x3, x3, 2), io.rest, 0);   // [dit_in, N, 2]
        ggml_tensor * dt = ggml_view_1d(ctx, io.dt, 1, (size_t) i * sizeof(float));
        std::vector<DitCache> caches;
        if (plan) {
            caches.resize((size_t) depth);
            for (int64_t b = 0; b < depth; ++b) {
                const State st = slot(i, b);
                DitCache & c = caches[(size_t) b];
                if (plan->Lc > 0) {
                    c.kc = ggml_view_3d(ctx, st.k, inner, plan->Lc, 2, st.k->nb[1], st.k->nb[2], 0);
                    c.vc = ggml_view_3d(ctx, st.v, inner, plan->Lc, 2, st.v->nb[1], st.v->nb[2], 0);
                    c.c1 = st.c1;
                    c.c2 = st.c2;
                }
            }
        }
        // After each block: its keys and values (new frames first, then the cached ones) back
        // into the state, cut to the first keep_head and the last keep_tail frames when longer
        // (Token2wav._trim_estimator_cache), and the convolutions' last input frames.
        auto write_back = [&](int b, DitCache & c) {
            const State st = slot(i, b);
            const int64_t len = plan->Lc + N, H = plan->keep_head, T = plan->keep_tail;
            for (int kv = 0; kv < 2; ++kv) {
                ggml_tensor * src = ggml_reshape_3d(ctx, contiguous(ctx, kv ? c.v : c.k), inner, len, 2);
                ggml_tensor * dst = kv ? st.v : st.k;
                if (len <= H + T) {
                    copy_frames(ctx, gf, src, 0, dst, 0, len);
                } else {
                    copy_frames(ctx, gf, src, 0, dst, 0, H);
                    copy_frames(ctx, gf, src, len - T, dst, H, T);
                }
            }
            ggml_build_forward_expand(gf, ggml_cpy(ctx, c.c1_out, st.c1));
            ggml_build_forward_expand(gf, ggml_cpy(ctx, c.c2_out, st.c2));
        };
        ggml_tensor * v = plan ? estimator(ctx, m, cond, i, xin, &caches, write_back) : estimator(ctx, m, cond, i, xin, nullptr);
        x = euler_step(ctx, hp, v, x, dt);
    }
    io.x = x;
    ggml_set_name(io.x, "flow_solve_x");
    ggml_set_output(io.x);
    ggml_build_forward_expand(gf, io.x);
}

} // namespace minicpm::flow_graph
