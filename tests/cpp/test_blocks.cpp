// graph::rms_norm, layer_norm, linear, swiglu_mlp and gelu_tanh on the CPU backend against
// naive references (plain loops in double over the same float inputs). Sizes are small and
// odd so that no SIMD-friendly size hides a tail bug. Tensors are in ggml order: x [n, rows]
// has rows of n contiguous values.
#include "check.h"
#include "graph_harness.h"

#include "core/cpu_ops.h"
#include "core/exp.h"
#include "graph/blocks.h"
#include "runtime/duplex_sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

using namespace test_graph;
namespace graph = minicpm::graph;

namespace {

// x [n, rows] -> y [n, rows], y = (x / sqrt(mean(x^2) + eps)) * w (w may be empty).
std::vector<double> ref_rms_norm(const std::vector<float> & x, int64_t n, const std::vector<float> & w, float eps) {
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / n; ++r) {
        const float * row = &x[r * n];
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += (double) row[i] * row[i];
        const double inv = 1.0 / std::sqrt(ss / n + eps);
        for (int64_t i = 0; i < n; ++i) y[r * n + i] = row[i] * inv * (w.empty() ? 1.0 : w[i]);
    }
    return y;
}

// y = (x - mean) / sqrt(var + eps) * w + b per row, biased variance as torch.nn.LayerNorm.
std::vector<double> ref_layer_norm(const std::vector<float> & x, int64_t n, const std::vector<float> & w,
                                   const std::vector<float> & b, float eps) {
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / n; ++r) {
        const float * row = &x[r * n];
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; ++i) mean += row[i];
        mean /= n;
        for (int64_t i = 0; i < n; ++i) var += (row[i] - mean) * (row[i] - mean);
        const double inv = 1.0 / std::sqrt(var / n + eps);
        for (int64_t i = 0; i < n; ++i) {
            y[r * n + i] = (row[i] - mean) * inv * (w.empty() ? 1.0 : w[i]) + (b.empty() ? 0.0 : b[i]);
        }
    }
    return y;
}

// x [n_in, rows], W [n_in, n_out] (row o holds the n_in weights of output o), b [n_out].
std::vector<double> ref_linear(const std::vector<double> & x, int64_t n_in, const std::vector<float> & w, int64_t n_out,
                               const std::vector<float> & b) {
    const size_t rows = x.size() / n_in;
    std::vector<double> y(rows * n_out);
    for (size_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < n_out; ++o) {
            double acc = b.empty() ? 0.0 : b[o];
            for (int64_t i = 0; i < n_in; ++i) acc += (double) w[o * n_in + i] * x[r * n_in + i];
            y[r * n_out + o] = acc;
        }
    }
    return y;
}

std::vector<double> to_double(const std::vector<float> & v) { return std::vector<double>(v.begin(), v.end()); }

double ref_gelu_tanh(double x) {
    const double pi = 3.14159265358979323846;
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

// Tolerances of the f32 paths: ggml reduces a row in f32 (SIMD partial sums), so a sum of n
// terms of size ~1 is off by up to ~n * 2^-24 relative; with n <= 20 that is < 2e-6, and the
// normalised values are O(1). 1e-5 absolute leaves a margin for the rsqrt and the products.
constexpr double kF32Abs = 1e-5;

} // namespace

// The softmax exponentials (core/exp.h) against the C library's expf: within 1 ulp over a sweep
// of the floats in [-87.3, 0] (every 61st), the vector and the scalar path equal, and the edges.
TEST(softmax_exponentials_match_expf) {
    std::vector<float> x;
    const float end = -87.3f;
    uint32_t last;
    std::memcpy(&last, &end, 4);
    for (uint32_t b = 0x80000000u; b <= last; b += 61) {   // negative floats: -0 down to -87.3
        float v;
        std::memcpy(&v, &b, 4);
        x.push_back(v);
    }
    std::vector<float> y(x.size());
    minicpm::exp_shifted(x.data(), y.data(), x.size(), 0.0f);
    int64_t worst = 0, equal = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const float want = std::exp(x[i]);
        int32_t a, b;
        std::memcpy(&a, &y[i], 4);
        std::memcpy(&b, &want, 4);
        worst = std::max<int64_t>(worst, std::abs((int64_t) a - b));
        equal += a == b;
        CHECK_EQ(y[i], minicpm::exp_nonpositive(x[i]));   // the vector path = the scalar one
    }
    CHECK(x.size() > 10000000);
    CHECK(worst <= 1);
    CHECK(equal > (int64_t) (0.98 * (double) x.size()));
    // shifted by the maximum, odd lengths (the scalar tail), -inf, underflow, NaN
    const float ninf = -std::numeric_limits<float>::infinity();
    std::vector<float> e = {3.0f, ninf, 2.0f, -200.0f, 3.0f - 87.33f, 3.0f - 87.34f, 1.0f};
    std::vector<float> o(e.size());
    minicpm::exp_shifted(e.data(), o.data(), e.size(), 3.0f);
    CHECK_EQ(o[0], 1.0f);
    CHECK_EQ(o[1], 0.0f);
    CHECK_NEAR(o[2], std::exp(-1.0f), 1e-7);
    CHECK_EQ(o[3], 0.0f);
    CHECK(o[4] > 0.0f);
    CHECK_EQ(o[5], 0.0f);
    CHECK_NEAR(o[6], std::exp(-2.0f), 1e-7);
    CHECK(std::isnan(minicpm::exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
    std::vector<float> nan4(4, std::numeric_limits<float>::quiet_NaN()), out4(4);
    minicpm::exp_shifted(nan4.data(), out4.data(), 4, 0.0f);
    CHECK(std::isnan(out4[0]) && std::isnan(out4[3]));
}

TEST(rms_norm_with_and_without_weight) {
    const int64_t n = 13, rows = 5;
    const float eps = 1e-6f;
    Random rng(1);
    const auto x = rng.vec(n * rows, -2.0f, 2.0f), w = rng.vec(n, 0.5f, 1.5f);
    {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, rows}, x);
        ggml_tensor * tw = g.input(GGML_TYPE_F32, {n}, w);
        CHECK_CLOSE("rms_norm with weight", g.compute(graph::rms_norm(g.ctx(), tx, tw, eps)), ref_rms_norm(x, n, w, eps),
                    kF32Abs, 0.0);
    }
    {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, rows}, x);
        CHECK_CLOSE("rms_norm", g.compute(graph::rms_norm(g.ctx(), tx, nullptr, eps)), ref_rms_norm(x, n, {}, eps),
                    kF32Abs, 0.0);
    }
}

TEST(rms_norm_eps_matters) {
    // A row of tiny values: the result depends on eps, so an eps dropped or misplaced shows.
    const int64_t n = 7;
    const float eps = 1e-4f;
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = 1e-3f * (float) (i - 3);
    CpuGraph g;
    ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, 1}, x);
    CHECK_CLOSE("rms_norm tiny row", g.compute(graph::rms_norm(g.ctx(), tx, nullptr, eps)), ref_rms_norm(x, n, {}, eps),
                kF32Abs, 0.0);
}

TEST(layer_norm_weight_bias_none) {
    const int64_t n = 11, rows = 4;
    const float eps = 1e-5f;
    Random rng(2);
    // An offset of 3 so that a missing mean subtraction shows.
    const auto x = rng.vec(n * rows, 2.0f, 4.0f), w = rng.vec(n, 0.5f, 1.5f), b = rng.vec(n);
    struct Case {
        const char * name;
        bool         with_w, with_b;
    };
    for (const Case c : {Case{"layer_norm w+b", true, true}, Case{"layer_norm w", true, false},
                         Case{"layer_norm b", false, true}, Case{"layer_norm", false, false}}) {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, rows}, x);
        ggml_tensor * tw = c.with_w ? g.input(GGML_TYPE_F32, {n}, w) : nullptr;
        ggml_tensor * tb = c.with_b ? g.input(GGML_TYPE_F32, {n}, b) : nullptr;
        const auto want = ref_layer_norm(x, n, c.with_w ? w : std::vector<float>(), c.with_b ? b : std::vector<float>(), eps);
        CHECK_CLOSE(c.name, g.compute(graph::layer_norm(g.ctx(), tx, tw, tb, eps)), want, kF32Abs, 0.0);
    }
}

TEST(linear_with_and_without_bias) {
    const int64_t n_in = 11, n_out = 7, rows = 3;
    Random rng(3);
    const auto x = rng.vec(n_in * rows), w = rng.vec(n_in * n_out), b = rng.vec(n_out);
    for (bool with_b : {true, false}) {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n_in, rows}, x);
        ggml_tensor * tw = g.input(GGML_TYPE_F32, {n_in, n_out}, w);
        ggml_tensor * tb = with_b ? g.input(GGML_TYPE_F32, {n_out}, b) : nullptr;
        const auto want = ref_linear(to_double(x), n_in, w, n_out, with_b ? b : std::vector<float>());
        CHECK_CLOSE(with_b ? "linear + bias" : "linear", g.compute(graph::linear(g.ctx(), tx, tw, tb)), want, kF32Abs, 0.0);
    }
}

TEST(linear_f16_weight) {
    // F16 weights (as in the model files): the CPU kernel rounds x to f16 too, so each product
    // is off by up to 2^-11 relative; a sum of 11 terms |w x| <= 1 is within 11 * 2^-11 ~ 5e-3
    // in the worst case, ~1e-3 in practice. The reference uses the f16-rounded weights.
    const int64_t n_in = 11, n_out = 5, rows = 3;
    Random rng(4);
    const auto x = rng.vec(n_in * rows), w = round_f16(rng.vec(n_in * n_out));
    CpuGraph g;
    ggml_tensor * tx = g.input(GGML_TYPE_F32, {n_in, rows}, x);
    ggml_tensor * tw = g.input(GGML_TYPE_F16, {n_in, n_out}, w);
    CHECK_CLOSE("linear f16", g.compute(graph::linear(g.ctx(), tx, tw)), ref_linear(to_double(x), n_in, w, n_out, {}),
                5e-3, 0.0);
}

// The CPU product kernel (core/cpu_ops.h) on odd shapes (tails of the 4x3 tiles and of the 8
// lanes, K of 1, thread splits over rows of w and over rows of x, several blocks of rows of w and of x),
// F32 and F16 weights, against the double reference. Its F16 path widens the weights and keeps
// x in F32, so F16 weights are held to the F32 tolerance (ggml's F16 product, which rounds x,
// is ~1e-3 off here).
struct GemmCase {
    int64_t M, N, K;
};

std::vector<float> gemm_run(const std::vector<float> & x, const std::vector<float> & w, ggml_type wt, int64_t M,
                            int64_t N, int64_t K, int nth) {
    std::vector<ggml_fp16_t> h;
    const void * wp = w.data();
    size_t ldw = (size_t) K * sizeof(float);
    if (wt == GGML_TYPE_F16) {
        h.resize(w.size());
        ggml_fp32_to_fp16_row(w.data(), h.data(), (int64_t) w.size());
        wp = h.data();
        ldw = (size_t) K * sizeof(ggml_fp16_t);
    }
    std::vector<float> y((size_t) (M * N), std::numeric_limits<float>::quiet_NaN());
    for (int ith = 0; ith < nth; ++ith) {   // the threads' shares, one after the other
        minicpm::cpu_ops::compute(wp, wt, ldw, x.data(), (size_t) K * sizeof(float), y.data(),
                                   (size_t) N * sizeof(float), M, N, K, ith, nth);
    }
    return y;
}

TEST(cpu_gemm_matches_reference) {
    if (!minicpm::cpu_ops::available()) {
        std::printf("  (no AVX2/FMA/F16C here: the kernel is not used)\n");
        return;
    }
    const GemmCase cases[] = {{1, 1, 1}, {1, 7, 13}, {5, 11, 8}, {4, 3, 16}, {9, 50, 3}, {13, 40, 257},
                              {17, 29, 600}, {3, 100, 31}, {64, 13, 64}, {5, 130, 600}, {9, 70, 1100}, {150, 40, 700}};
    Random rng(21);
    for (const GemmCase & c : cases) {
        const auto x = rng.vec((size_t) (c.M * c.K));
        for (ggml_type wt : {GGML_TYPE_F32, GGML_TYPE_F16}) {
            const auto w = wt == GGML_TYPE_F16 ? round_f16(rng.vec((size_t) (c.N * c.K))) : rng.vec((size_t) (c.N * c.K));
            const auto want = ref_linear(to_double(x), c.K, w, c.N, {});
            for (int nth : {1, 2, 3}) {
                const std::string what = "gemm M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
                                         " K=" + std::to_string(c.K) + (wt == GGML_TYPE_F16 ? " f16" : " f32") +
                                         " threads=" + std::to_string(nth);
                CHECK_CLOSE(what, gemm_run(x, w, wt, c.M, c.N, c.K, nth), want, 2e-6 * std::sqrt((double) c.K), 0.0);
            }
        }
    }
}

TEST(cpu_gemm_rows_do_not_depend_on_their_batch) {
    // A row's outputs are the same bits whether it is computed alone, among others, or by
    // another thread split: what makes a chunked prompt equal to a whole one.
    if (!minicpm::cpu_ops::available()) return;
    const int64_t M = 13, N = 37, K = 75;
    Random rng(22);
    const auto x = rng.vec((size_t) (M * K)), w = rng.vec((size_t) (N * K));
    const auto all = gemm_run(x, w, GGML_TYPE_F32, M, N, K, 1);
    CHECK(gemm_run(x, w, GGML_TYPE_F32, M, N, K, 3) == all);
    for (int64_t m = 0; m < M; ++m) {
        const std::vector<float> row(x.begin() + m * K, x.begin() + (m + 1) * K);
        const auto one = gemm_run(row, w, GGML_TYPE_F32, 1, N, K, 2);
        CHECK(std::equal(one.begin(), one.end(), all.begin() + m * N));
    }
}

TEST(cpu_gemm_through_graph_mul_mat) {
    // graph::mul_mat takes the kernel only inside a Scope, and only for eligible operands.
    const int64_t n_in = 19, n_out = 10, rows = 6;
    Random rng(23);
    const auto x = rng.vec(n_in * rows), w = round_f16(rng.vec(n_in * n_out));
    const auto want = ref_linear(to_double(x), n_in, w, n_out, {});
    for (bool scoped : {false, true}) {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n_in, rows}, x);
        ggml_tensor * tw = g.input(GGML_TYPE_F16, {n_in, n_out}, w);
        const minicpm::cpu_ops::Scope scope(scoped);
        ggml_tensor * y = graph::mul_mat(g.ctx(), tw, tx);
        const bool kernel = scoped && minicpm::cpu_ops::available();
        CHECK_EQ((int) y->op, (int) (kernel ? GGML_OP_CUSTOM : GGML_OP_MUL_MAT));
        CHECK_CLOSE(kernel ? "mul_mat f16 (kernel)" : "mul_mat f16 (ggml)", g.compute(y), want, kernel ? 2e-5 : 5e-3, 0.0);
        // a quantized weight keeps ggml's product
        ggml_tensor * q = ggml_new_tensor_2d(g.ctx(), GGML_TYPE_Q8_0, 32, 4);
        ggml_tensor * xq = ggml_new_tensor_2d(g.ctx(), GGML_TYPE_F32, 32, 3);
        CHECK_EQ((int) graph::mul_mat(g.ctx(), q, xq)->op, (int) GGML_OP_MUL_MAT);
    }
    CHECK(!minicpm::cpu_ops::Scope::active());
}

TEST(cpu_gemm_bias_and_overlapping_rows) {
    // graph::linear adds the bias inside the kernel; a convolution's windows are rows of x that
    // overlap (row m = frames m .. m + 2 of a [cin, T] signal: stride cin, length 3 cin).
    if (!minicpm::cpu_ops::available()) return;
    const int64_t cin = 5, T = 11, k = 3, cout = 7, rows = T - k + 1, K = cin * k;
    Random rng(25);
    const auto sig = rng.vec((size_t) (cin * T)), w = rng.vec((size_t) (K * cout)), b = rng.vec((size_t) cout);
    std::vector<float> cols;
    for (int64_t m = 0; m < rows; ++m) cols.insert(cols.end(), sig.begin() + m * cin, sig.begin() + m * cin + K);
    const auto want = ref_linear(to_double(cols), K, w, cout, b);
    std::vector<float> y((size_t) (rows * cout));
    for (int ith = 0; ith < 2; ++ith) {
        minicpm::cpu_ops::compute(w.data(), GGML_TYPE_F32, K * sizeof(float), sig.data(), cin * sizeof(float), y.data(),
                                  cout * sizeof(float), rows, cout, K, ith, 2, b.data());
    }
    CHECK_CLOSE("overlapping rows + bias", y, want, kF32Abs, 0.0);
    CpuGraph g;
    ggml_tensor * tx = g.input(GGML_TYPE_F32, {K, rows}, cols);
    ggml_tensor * tw = g.input(GGML_TYPE_F32, {K, cout}, w);
    ggml_tensor * tb = g.input(GGML_TYPE_F32, {cout}, b);
    const minicpm::cpu_ops::Scope scope(true);
    ggml_tensor * out = graph::linear(g.ctx(), tx, tw, tb);
    CHECK_EQ((int) out->op, (int) GGML_OP_CUSTOM);
    CHECK_CLOSE("linear + bias (kernel)", g.compute(out), want, kF32Abs, 0.0);
}

TEST(cpu_gemm_batched_and_strided_planes) {
    // Attention-shaped products: a [K, N, 2, 3] seen through a permuted view (rows contiguous,
    // planes strided), b [K, M, 4, 3] (a's planes broadcast twice over dimension 2), against
    // the double reference plane by plane, through a graph with and without the kernel.
    const int64_t K = 20, N = 9, M = 7, A2 = 2, B2 = 4, P3 = 3;
    Random rng(24);
    const auto av = rng.vec((size_t) (K * A2 * N * P3)), bv = rng.vec((size_t) (K * M * B2 * P3));
    // av is stored [K, A2, N, P3]; the product sees [K, N, A2, P3]
    std::vector<double> want((size_t) (N * M * B2 * P3));
    for (int64_t i3 = 0; i3 < P3; ++i3)
        for (int64_t i2 = 0; i2 < B2; ++i2)
            for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                    double acc = 0;
                    for (int64_t k = 0; k < K; ++k) {
                        const double a = av[(size_t) (((i3 * N + n) * A2 + i2 / (B2 / A2)) * K + k)];
                        acc += a * bv[(size_t) (((i3 * B2 + i2) * M + m) * K + k)];
                    }
                    want[(size_t) (((i3 * B2 + i2) * M + m) * N + n)] = acc;
                }
    for (bool scoped : {false, true}) {
        CpuGraph g;
        ggml_tensor * ta = g.input(GGML_TYPE_F32, {K, A2, N, P3}, av);
        ggml_tensor * tb = g.input(GGML_TYPE_F32, {K, M, B2, P3}, bv);
        const minicpm::cpu_ops::Scope scope(scoped);
        ggml_tensor * y = graph::mul_mat(g.ctx(), ggml_permute(g.ctx(), ta, 0, 2, 1, 3), tb);
        CHECK_EQ((int) y->op, (int) (scoped && minicpm::cpu_ops::available() ? GGML_OP_CUSTOM : GGML_OP_MUL_MAT));
        CHECK_CLOSE(scoped ? "batched (kernel)" : "batched (ggml)", g.compute(y), want, kF32Abs, 0.0);
    }
}

TEST(cpu_unary_kernels_match_libm) {
    // GELU (tanh form) and Mish of the CPU kernels over [-30, 30] (saturation, the exp
    // clamps, 0) and a row length that leaves a tail of 5, against double libm.
    if (!minicpm::cpu_ops::available()) return;
    std::vector<float> x;
    for (int i = 0; i <= 6000; ++i) x.push_back(-30.0f + 0.01f * (float) i);
    for (float v : {1e-8f, -1e-8f, 1e-30f, 0.0f, 87.5f, -87.5f, 100.0f, -100.0f}) x.push_back(v);
    while (x.size() % 13 != 0) x.push_back(0.25f);
    const int64_t n = 13, rows = (int64_t) x.size() / n;
    struct Case {
        const char *            name;
        minicpm::cpu_ops::Unary op;
        double (*ref)(double);
    };
    const Case cases[] = {
        {"gelu_tanh", minicpm::cpu_ops::Unary::GeluTanh,
         [](double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }},
        {"mish", minicpm::cpu_ops::Unary::Mish, [](double v) { return v * std::tanh(std::log1p(std::exp(v))); }},
    };
    for (const Case & c : cases) {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, rows}, x);
        std::vector<double> want(x.size());
        for (size_t i = 0; i < x.size(); ++i) want[i] = c.ref((double) x[i]);
        CHECK_CLOSE(c.name, g.compute(minicpm::cpu_ops::unary(g.ctx(), tx, c.op)), want, 4e-7, 1e-6);
    }
    // graph::mish and graph::gelu_tanh take the kernels inside a Scope only
    for (bool scoped : {false, true}) {
        CpuGraph g;
        ggml_tensor * tx = g.input(GGML_TYPE_F32, {n, rows}, x);
        const minicpm::cpu_ops::Scope scope(scoped);
        CHECK_EQ((int) graph::mish(g.ctx(), tx)->op, (int) (scoped ? GGML_OP_MAP_CUSTOM1 : GGML_OP_MUL));
        CHECK_EQ((int) graph::gelu_tanh(g.ctx(), tx)->op, (int) (scoped ? GGML_OP_MAP_CUSTOM1 : GGML_OP_MUL));
    }
}

TEST(swiglu_mlp) {
    const int64_t n_embd = 10, n_ff = 14, rows = 3;
    Random rng(5);
    const auto x = rng.vec(n_embd * rows), gate = rng.vec(n_embd * n_ff), up = rng.vec(n_embd * n_ff),
               down = rng.vec(n_ff * n_embd);
    CpuGraph g;
    ggml_tensor * tx = g.input(GGML_TYPE_F32, {n_embd, rows}, x);
    ggml_tensor * tg = g.input(GGML_TYPE_F32, {n_embd, n_ff}, gate);
    ggml_tensor * tu = g.input(GGML_TYPE_F32, {n_embd, n_ff}, up);
    ggml_tensor * td = g.input(GGML_TYPE_F32, {n_ff, n_embd}, down);
    const auto gv = ref_linear(to_double(x), n_embd, gate, n_ff, {});
    const auto uv = ref_linear(to_double(x), n_embd, up, n_ff, {});
    std::vector<double> h(gv.size());
    for (size_t i = 0; i < h.size(); ++i) h[i] = gv[i] / (1.0 + std::exp(-gv[i])) * uv[i];   // silu(g) * u
    // Three f32 products of <= 14 terms and a silu: a few 1e-6 on values of size ~1.
    CHECK_CLOSE("swiglu_mlp", g.compute(graph::swiglu_mlp(g.ctx(), tx, tg, tu, td)), ref_linear(h, n_ff, down, n_embd, {}),
                kF32Abs, 0.0);
}

TEST(gelu_tanh_formula) {
    // A sweep over [-8, 8] plus the far tails. Tolerance: ~1e-6 relative, as an f32 evaluation
    // of the formula gets, plus 3e-7 * |x| absolute: for x << 0 the result is 0.5 x (1 + tanh),
    // where 1 + tanh ~ 0 cancels and tanh's own f32 rounding (~6e-8 near -1) is multiplied by
    // 0.5 |x|. ggml_gelu (an f16 table, ~3e-3 relative) fails this by more than 100x.
    std::vector<float> x;
    for (int i = -160; i <= 160; ++i) x.push_back(0.05f * (float) i + 0.013f);
    for (float t : {-30.0f, -12.0f, 12.0f, 30.0f, 0.0f, 1e-4f, -1e-4f}) x.push_back(t);
    CpuGraph g;
    ggml_tensor * tx = g.input(GGML_TYPE_F32, {(int64_t) x.size()}, x);
    const std::vector<float> got = g.compute(graph::gelu_tanh(g.ctx(), tx));
    REQUIRE(got.size() == x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double want = ref_gelu_tanh(x[i]);
        CHECK_NEAR_AT(got[i], want, 1e-6 * std::fabs(want) + 3e-7 * std::fabs(x[i]), "x = " + std::to_string(x[i]));
    }
}

// ---- duplex sampler: duplex_decode against the rules written out plainly (utils.py's
// StreamDecoder.decode and top_k_top_p_filtering: a copy, full-vocabulary masks, nth_element for
// the k-th value, a stable sort for top-p), on rows with many ties and masked entries.

namespace {

// softmax numerators and the draw as duplex_decode makes them (four running sums)
int32_t plain_draw(const std::vector<float> & x, minicpm::TtsRng & rng) {
    float mx = -std::numeric_limits<float>::infinity();
    for (float v : x) mx = std::max(mx, v);
    std::vector<float> p(x.size());
    minicpm::exp_shifted(x.data(), p.data(), x.size(), mx);
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= p.size(); i += 4) {
        for (size_t k = 0; k < 4; ++k) s[k] += p[i + k];
    }
    for (; i < p.size(); ++i) s[0] += p[i];
    return minicpm::tts_draw(p, (s[0] + s[1]) + (s[2] + s[3]), rng);
}

int32_t plain_decode(const std::vector<float> & in, const minicpm::DuplexSampling & s, std::vector<int32_t> & gen,
                     minicpm::TtsRng & rng) {
    const float ninf = -std::numeric_limits<float>::infinity();
    const int32_t raw = plain_draw(in, rng);
    if (raw == s.chunk_eos) return raw;
    std::vector<float> x = in;
    for (int32_t t : *s.forbidden) x[(size_t) t] = ninf;
    const size_t from = gen.size() > (size_t) s.repetition_window ? gen.size() - (size_t) s.repetition_window : 0;
    for (int32_t t : std::unordered_set<int32_t>(gen.begin() + (std::ptrdiff_t) from, gen.end())) x[(size_t) t] /= s.repetition_penalty;
    float & e = x[(size_t) s.turn_eos];
    e = e > 0 ? e / s.length_penalty : e * s.length_penalty;
    for (float & v : x) v /= s.temperature;
    if (s.top_k > 0) {
        std::vector<float> c = x;
        const size_t k = std::min<size_t>((size_t) s.top_k, c.size());
        std::nth_element(c.begin(), c.begin() + (std::ptrdiff_t) (k - 1), c.end(), std::greater<float>());
        const float kth = c[k - 1];
        for (float & v : x) if (v < kth) v = ninf;
    }
    if (s.top_p > 0.0f) {
        std::vector<int32_t> idx;
        for (size_t i = 0; i < x.size(); ++i) if (x[i] != ninf) idx.push_back((int32_t) i);
        std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return x[(size_t) a] > x[(size_t) b]; });
        std::vector<double> ex(idx.size());
        double sum = 0.0;
        for (size_t r = 0; r < idx.size(); ++r) sum += (ex[r] = std::exp((double) x[(size_t) idx[r]] - (double) x[(size_t) idx[0]]));
        double cum = 0.0;
        bool prev = false;
        for (size_t r = 0; r < idx.size(); ++r) {
            if (r > 0 && prev) x[(size_t) idx[r]] = ninf;
            cum += ex[r] / sum;
            prev = cum > (double) s.top_p;
        }
    }
    std::vector<int32_t> cand;
    std::vector<float>   xc;
    for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] != ninf) {
            cand.push_back((int32_t) i);
            xc.push_back(x[i]);
        }
    }
    const int32_t next = cand[(size_t) plain_draw(xc, rng)];
    gen.push_back(next);
    return next;
}

} // namespace

TEST(duplex_sampler_matches_the_plain_rules) {
    std::mt19937 g(11);
    const std::vector<int32_t> forbidden = {3, 17, 600};
    int compared = 0, differ = 0;
    for (int64_t V : {37, 1000, 5003}) {
        for (int top_k : {0, 1, 5, 20, 100000}) {
            for (float top_p : {0.0f, 0.5f, 0.8f, 1.0f}) {
                for (int trial = 0; trial < 6; ++trial) {
                    std::vector<float> x((size_t) V);
                    if (trial < 4) {
                        std::uniform_int_distribution<int> q(-12, 8);   // coarse values: many ties
                        for (float & v : x) v = 0.5f * (float) q(g);
                        x[(size_t) (V - 1)] = 4.0f;   // a tie at the top, in the tail block
                        x[(size_t) (V / 2)] = 4.0f;
                    } else {
                        // one token above the rest: top-p keeps it alone (0.5, 0.8), so a rule
                        // that never drops the second candidate draws the runner-up at times
                        std::normal_distribution<float> q(-4.0f, 1.0f);
                        for (float & v : x) v = q(g);
                        x[(size_t) (V / 2)] = 4.0f;
                        x[(size_t) (V - 1)] = 2.5f;
                    }
                    for (int64_t i = 0; i < V; i += 7) x[(size_t) i] = -std::numeric_limits<float>::infinity();
                    minicpm::DuplexSampling s;
                    s.top_k = top_k;
                    s.top_p = top_p;
                    s.chunk_eos = 5;
                    s.turn_eos = 6;
                    std::vector<int32_t> fb;
                    for (int32_t t : forbidden) if (t < V) fb.push_back(t);
                    s.forbidden = &fb;
                    std::vector<int32_t> ga = {1, 2, 2, 9}, gb = ga;
                    minicpm::TtsRng ra(1000 + trial), rb(1000 + trial);
                    for (int step = 0; step < 8; ++step) {
                        const int32_t a = minicpm::duplex_decode(x, s, ga, ra);
                        const int32_t b = plain_decode(x, s, gb, rb);
                        ++compared;
                        if (a != b || ra.state() != rb.state()) ++differ;
                    }
                    CHECK(ga == gb);
                }
            }
        }
    }
    CHECK(compared == 3 * 5 * 4 * 6 * 8);
    CHECK(differ == 0);
}

CHECK_MAIN()
