// Shared graph blocks. Shapes in ggml order (fastest dimension first).
#pragma once

#include "ggml.h"

namespace minicpm::graph {

// ggml_mul_mat(ctx, a, b), through the CPU kernel of core/cpu_ops.h where a cpu_ops::Scope is
// active (the graph runner's builds on a CPU-only backend set) and the operands are eligible.
ggml_tensor * mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b);

// Mish, x * tanh(softplus(x)); one vectorised CPU kernel in the same conditions.
ggml_tensor * mish(ggml_context * ctx, ggml_tensor * x);

// RMSNorm over ne0, times weight (when given).
ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps);

// x @ W^T + b, with W stored [in, out] (ggml order). b may be null. Under a cpu_ops::Scope the
// CPU kernel adds b in its store (the same values as the separate add).
ggml_tensor * linear(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b = nullptr);

// linear() on x whose rows may overlap or be strided (a convolution's windows as a view): the
// CPU kernel reads them in place, any other path gets a contiguous copy first. Result
// [out, x->ne[1], x->ne[2], x->ne[3]].
ggml_tensor * linear_strided(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b);

// down(silu(gate(x)) * up(x)): the SwiGLU MLP of Llama/Qwen.
ggml_tensor * swiglu_mlp(ggml_context * ctx, ggml_tensor * x, ggml_tensor * gate, ggml_tensor * up, ggml_tensor * down);

// Multi-head attention with grouped KV heads.
//   q: [head_dim, n_head, n_tokens]   k, v: [head_dim, n_kv, n_head_kv] (views into a cache)
//   mask: [n_kv, n_tokens] additive (0 / -inf), F16 when flash is true
// returns [head_dim * n_head, n_tokens]
ggml_tensor * attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                        float scale, bool flash);

// LayerNorm over ne0 with affine weight and bias (either may be null), as torch.nn.LayerNorm.
ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps);

// GELU, tanh approximation (torch gelu(approximate="tanh")), built from f32 elementwise ops:
// ggml_gelu on the CPU reads an f16 lookup table (relative error ~4e-3), too coarse for parity.
// One vectorised CPU kernel under a cpu_ops::Scope.
ggml_tensor * gelu_tanh(ggml_context * ctx, ggml_tensor * x);

// Unmasked multi-head attention over a batch of independent sequences.
//   q: [head_dim, n_head, n_q, n_seq]   k, v: [head_dim, n_head, n_kv, n_seq]
// q may have n_seq == 1 and is then shared by every sequence. Scores and softmax in f32.
// returns [head_dim * n_head, n_q, n_seq]
ggml_tensor * attention_batched(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale);

// The same through ggml_flash_attn_ext (no [n_kv, n_q] score matrix, no output copy). K and V
// are converted to kv_type (F16 for the fast kernels; F32 keeps full precision where the
// backend supports it); accumulation in f32. Same shapes and result layout as attention_batched.
// pad_head_to > head_dim: q, k and v get zero columns up to that head size first (the scores
// and the kept output columns are unchanged), for backends whose fast kernels exist only for
// some head sizes (CUDA: 64, 80, 96, 112, 128, 256; SigLIP's is 72).
// pad_strided: the backend pads strided (non-contiguous) q/k/v views directly (else they are
// made contiguous first).
ggml_tensor * attention_batched_flash(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale,
                                      ggml_type kv_type, int64_t pad_head_to = 0, bool pad_strided = false);

// Sets f32 precision on a mul_mat or flash_attn_ext node (one call for every ggml version);
// a product made by the CPU kernel (F32 already) is left as it is.
void set_prec_f32(ggml_tensor * t);

} // namespace minicpm::graph
