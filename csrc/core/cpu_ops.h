// CPU kernels for what ggml's CPU backend does slowly in these models, as custom ops:
//
// * An F32 matrix product, for the products ggml runs as one dot product per output (its F32
//   and F16 paths without llamafile): the Token2Wav flow estimator, the audio and vision
//   encoders, any F32/F16 weight on the CPU. Register tiles of 4 rows of x by 3 rows of w (12
//   accumulators of 8 partial sums, AVX2 + FMA) over blocks of rows of x and of w that stay in
//   L2 together, no packing; F16 weights are widened to F32 as they are loaded, so the activations are never
//   rounded to F16 (ggml's F16 product rounds them): the F32 product of the stored weights.
//   Every output is the same sequence of operations whatever the number of rows, the thread
//   split or the tile it falls in (8 partial sums over k = l mod 8 in k order, then one fixed
//   reduction): a row's result does not depend on the rows computed with it, so a prompt gives
//   the same values evaluated at once or in pieces, one session the same as a batch of them.
// * Vectorised GELU (tanh form) and Mish (ggml's CPU tanh and softplus call libm per
//   element; its GELU reads an F16 table).
//
// Graphs get them through graph::mul_mat, graph::tanh, graph::gelu_tanh and graph::mish
// (graph/blocks.h) while a Scope is active; the graph runner opens one around every build on a
// CPU-only backend set. x86-64 with AVX2, FMA and F16C only (checked at run time); elsewhere,
// and with MINICPM_CPU_OPS=0 in the environment, ggml's ops.
#pragma once

#include "ggml.h"

#include <cstddef>
#include <cstdint>

namespace minicpm::cpu_ops {

// True where the kernels run on this CPU (AVX2 + FMA + F16C) and MINICPM_CPU_OPS is not 0.
bool available();

// y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]) for m < M, n < N: w has N rows of K values
// (F32 or F16), x M rows of K floats, y M rows of N floats; row strides in bytes (x's rows may
// overlap: a convolution's windows read in place). Thread ith of nth computes its share (the
// calls of all nth threads together cover y once). The bias is added to the finished sum, one
// rounding, as a separate ggml_add would. Precondition: available(), w_type F32 or F16.
void compute(const void * w, ggml_type w_type, size_t w_row_bytes, const float * x, size_t x_row_bytes, float * y,
             size_t y_row_bytes, int64_t M, int64_t N, int64_t K, int ith, int nth, const float * bias = nullptr);

// Whether ggml_mul_mat(ctx, a, b) can run through the kernel: a F32 or F16 with contiguous
// rows, in host memory (a weight in a plain CPU buffer, or a graph intermediate such as the
// keys of an attention); b F32 with contiguous rows; a's planes broadcast over b's as in ggml
// (any strides).
bool eligible(const ggml_tensor * a, const ggml_tensor * b);

// Whether `bias` can be added inside the product with weight `a`: F32, contiguous, [a->ne[1]].
bool bias_eligible(const ggml_tensor * a, const ggml_tensor * bias);

// The product as a custom op (same shape and semantics as ggml_mul_mat(ctx, a, b), then
// ggml_add of the bias when given); requires eligible(a, b) and bias_eligible(a, bias).
ggml_tensor * mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * bias = nullptr);

// Element-wise functions through one vectorised exp (~1 ulp): GELU with the tanh approximation
// as torch's gelu(approximate="tanh"), written x / (1 + e^(-2u)) (no cancellation in 1 + tanh
// for large negative x), and Mish x tanh(softplus(x)) = x n / (n + 2), n = e^x (e^x + 2).
enum class Unary { GeluTanh, Mish };

// Whether unary() takes `a`: F32, contiguous.
bool unary_eligible(const ggml_tensor * a);

// op(a) as a custom op of a's shape; requires unary_eligible(a).
ggml_tensor * unary(ggml_context * ctx, ggml_tensor * a, Unary op);

// While one is alive on this thread, graph::mul_mat and the element-wise helpers use the
// kernels for eligible operands when `on` and available(); its end restores the previous setting.
class Scope {
public:
    explicit Scope(bool on);
    ~Scope();
    Scope(const Scope &) = delete;
    Scope & operator=(const Scope &) = delete;
    static bool active();
private:
    bool prev_;
};

} // namespace minicpm::cpu_ops
