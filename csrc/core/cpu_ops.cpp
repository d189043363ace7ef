#include "core/cpu_ops.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define MINICPM_CPU_OPS_X86 1
#include <immintrin.h>
#endif

namespace minicpm::cpu_ops {

namespace {

thread_local bool g_scope = false;

#if MINICPM_CPU_OPS_X86

constexpr int RM = 4;   // rows of x per register tile
constexpr int RN = 3;   // rows of w per register tile (12 accumulators, 3 + 1 operand registers)

// The lane sums of up to 4 vectors at once (absent ones zero), each in one fixed order whatever
// its companions: ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)).
__attribute__((target("avx2,fma"))) inline __m128 lane_sums(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// n < 8 floats from p, zeros after (copied: no read past the row, which sanitizers would flag
// in a masked vector load).
__attribute__((target("avx2,fma"))) inline __m256 load_part(const float * p, int n) {
    alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return _mm256_load_ps(t);
}

// Eight values of a row of w from k on (n of them when n < 8, zeros after).
template <bool F16>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load_w(const char * row, int64_t k, int n) {
    if constexpr (F16) {
        const uint16_t * h = (const uint16_t *) row + k;
        if (n == 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) h));
        alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < n; ++i) t[i] = h[i];
        return _mm256_cvtph_ps(_mm_load_si128((const __m128i *) t));
    } else {
        const float * f = (const float *) row + k;
        return n == 8 ? _mm256_loadu_ps(f) : load_part(f, n);
    }
}

// y[i][j] = sum_k x[i][k] w[j][k] for i < R, j < C: each output one vector of 8 partial sums
// (lane l holds the k = l mod 8 terms, in k order), then lane_sums. The same operations for an
// output whatever tile it is computed in.
template <int R, int C, bool F16>
__attribute__((target("avx2,fma,f16c"))) void tile(int64_t K, const char * x, size_t ldx, const char * w, size_t ldw,
                                                   float * y, int64_t ldy, const float * bias) {
    __m256 acc[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[C];
        for (int j = 0; j < C; ++j) wv[j] = load_w<F16>(w + j * ldw, k, 8);
        for (int i = 0; i < R; ++i) {
            const __m256 xv = _mm256_loadu_ps((const float *) (x + i * ldx) + k);
            for (int j = 0; j < C; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {   // the tail: zeros in the lanes past K add nothing
        const int n = (int) (K - k);
        __m256 wv[C];
        for (int j = 0; j < C; ++j) wv[j] = load_w<F16>(w + j * ldw, k, n);
        for (int i = 0; i < R; ++i) {
            const __m256 xv = load_part((const float *) (x + i * ldx) + k, n);
            for (int j = 0; j < C; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < R; ++i) {
        __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int j = 0; j < C; ++j) v[j] = acc[i][j];
        alignas(16) float s[4];
        _mm_store_ps(s, lane_sums(v[0], v[1], v[2], v[3]));
        if (bias) {
            for (int j = 0; j < C; ++j) y[i * ldy + j] = s[j] + bias[j];
        } else {
            for (int j = 0; j < C; ++j) y[i * ldy + j] = s[j];
        }
    }
}

using TileFn = void (*)(int64_t, const char *, size_t, const char *, size_t, float *, int64_t, const float *);

template <bool F16> TileFn tile_fn(int r, int c) {
    static constexpr TileFn t[RM][RN] = {
        {tile<1, 1, F16>, tile<1, 2, F16>, tile<1, 3, F16>},
        {tile<2, 1, F16>, tile<2, 2, F16>, tile<2, 3, F16>},
        {tile<3, 1, F16>, tile<3, 2, F16>, tile<3, 3, F16>},
        {tile<4, 1, F16>, tile<4, 2, F16>, tile<4, 3, F16>},
    };
    return t[r - 1][c - 1];
}

// Rows [m0, m1) of y, columns [n0, n1): blocks of rows of x (up to 320 KiB, split evenly) and,
// inside each, blocks of rows of w (128 KiB), both in L2 together; the rows of x pass over a
// block of w four at a time. A weight is read from memory once per block of x: once for the
// flow's and the encoders' streaming products (a model's matrices do not fit the caches).
void run(const char * w, bool f16, size_t ldw, const char * x, size_t ldx, float * y, int64_t ldy, const float * bias,
         int64_t K, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t row_bytes = std::max<int64_t>(1, K * (int64_t) sizeof(float));
    const int64_t nb = std::max<int64_t>(RN, (128 * 1024 / row_bytes) / RN * RN);
    const int64_t mb_max = std::max<int64_t>(RM, (320 * 1024 / row_bytes) / RM * RM);
    const int64_t n_mblocks = (m1 - m0 + mb_max - 1) / mb_max;
    const int64_t mb = ((m1 - m0 + n_mblocks - 1) / n_mblocks + RM - 1) / RM * RM;
    for (int64_t mc = m0; mc < m1; mc += mb) {
        const int64_t me = std::min(m1, mc + mb);
        for (int64_t nc = n0; nc < n1; nc += nb) {
            const int64_t ne = std::min(n1, nc + nb);
            for (int64_t m = mc; m < me; m += RM) {
                const int r = (int) std::min<int64_t>(RM, me - m);
                for (int64_t n = nc; n < ne; n += RN) {
                    const int c = (int) std::min<int64_t>(RN, ne - n);
                    const TileFn fn = f16 ? tile_fn<true>(r, c) : tile_fn<false>(r, c);
                    fn(K, x + (size_t) m * ldx, ldx, w + (size_t) n * ldw, ldw, y + m * ldy + n, ldy,
                       bias ? bias + n : nullptr);
                }
            }
        }
    }
}

// e^x for x in [-87, 88] (Cody-Waite reduction by ln 2, degree-7 Taylor polynomial on
// |r| <= ln2 / 2: ~1 ulp); below, 0.
__attribute__((target("avx2,fma"))) inline __m256 vexp(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) inline __m256 apply(Unary op, __m256 x) {
    switch (op) {
        case Unary::GeluTanh: {   // 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
            const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            const __m256 m2u = _mm256_mul_ps(_mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x),
                                             _mm256_set1_ps(-2.0f * 0.7978845608028654f));
            return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), vexp(m2u)));
        }
        case Unary::Mish: {   // x tanh(softplus(x)) = x n / (n + 2), n = e^x (e^x + 2)
            const __m256 e = vexp(_mm256_min_ps(x, _mm256_set1_ps(20.0f)));
            const __m256 n = _mm256_mul_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
            return _mm256_mul_ps(x, _mm256_div_ps(n, _mm256_add_ps(n, _mm256_set1_ps(2.0f))));
        }
    }
    return x;
}

__attribute__((target("avx2,fma"))) void unary_row(Unary op, const float * x, float * y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, apply(op, _mm256_loadu_ps(x + i)));
    if (i < n) {
        alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = i; j < n; ++j) t[j - i] = x[j];
        _mm256_store_ps(t, apply(op, _mm256_load_ps(t)));
        for (int64_t j = i; j < n; ++j) y[j] = t[j - i];
    }
}

bool cpu_has_kernel() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

#endif  // MINICPM_CPU_OPS_X86

// dst = ggml_mul_mat(src0, src1) for one thread of the CPU backend.
void mul_mat_op(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * a = dst->src[0], * b = dst->src[1];
    const float * bias = dst->src[2] ? (const float *) dst->src[2]->data : nullptr;
    const int64_t K = a->ne[0], N = a->ne[1], M = b->ne[1];
    const int64_t r2 = b->ne[2] / a->ne[2], r3 = b->ne[3] / a->ne[3];   // ggml's broadcast of a
    for (int64_t i3 = 0; i3 < b->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < b->ne[2]; ++i2) {
            const char * w = (const char *) a->data + (i2 / r2) * a->nb[2] + (i3 / r3) * a->nb[3];
            const float * x = (const float *) ((const char *) b->data + i2 * b->nb[2] + i3 * b->nb[3]);
            float * y = (float *) ((char *) dst->data + i2 * dst->nb[2] + i3 * dst->nb[3]);
            compute(w, a->type, a->nb[1], x, b->nb[1], y, dst->nb[1], M, N, K, ith, nth, bias);
        }
    }
}

// dst = op(a) for one thread: a share of the rows.
void unary_op(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * user) {
#if MINICPM_CPU_OPS_X86
    const Unary   op   = (Unary) (intptr_t) user;
    const int64_t n    = a->ne[0];
    const int64_t rows = ggml_nrows(a);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    for (int64_t r = r0; r < r1; ++r) {
        unary_row(op, (const float *) ((const char *) a->data + r * a->nb[1]), (float *) ((char *) dst->data + r * dst->nb[1]), n);
    }
#else
    (void) dst; (void) a; (void) ith; (void) nth; (void) user;
#endif
}

}  // namespace

bool available() {
#if MINICPM_CPU_OPS_X86
    static const bool ok = [] {
        const char * env = std::getenv("MINICPM_CPU_OPS");
        if (env && std::strcmp(env, "0") == 0) return false;
        return cpu_has_kernel();
    }();
    return ok;
#else
    return false;
#endif
}

void compute(const void * w, ggml_type w_type, size_t w_row_bytes, const float * x, size_t x_row_bytes, float * y,
             size_t y_row_bytes, int64_t M, int64_t N, int64_t K, int ith, int nth, const float * bias) {
#if MINICPM_CPU_OPS_X86
    if (M <= 0 || N <= 0) return;
    // Threads take tiles of rows of w when there are enough of them, else blocks of rows of x.
    const int64_t nt = (N + RN - 1) / RN;
    int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
    if (nt >= 4 * (int64_t) nth || M < (int64_t) nth * RM) {
        n0 = std::min(N, nt * ith / nth * RN);
        n1 = std::min(N, nt * (ith + 1) / nth * RN);
    } else {
        const int64_t mt = (M + RM - 1) / RM;
        m0 = std::min(M, mt * ith / nth * RM);
        m1 = std::min(M, mt * (ith + 1) / nth * RM);
    }
    if (n0 >= n1 || m0 >= m1) return;
    run((const char *) w, w_type == GGML_TYPE_F16, w_row_bytes, (const char *) x, x_row_bytes, y,
        (int64_t) (y_row_bytes / sizeof(float)), bias, K, m0, m1, n0, n1);
#else
    (void) w; (void) w_type; (void) w_row_bytes; (void) x; (void) x_row_bytes; (void) y; (void) y_row_bytes;
    (void) M; (void) N; (void) K; (void) ith; (void) nth; (void) bias;
#endif
}

bool eligible(const ggml_tensor * a, const ggml_tensor * b) {
    if (!available()) return false;
    if (a->type != GGML_TYPE_F32 && a->type != GGML_TYPE_F16) return false;
    if (b->type != GGML_TYPE_F32) return false;
    if (b->ne[2] % a->ne[2] != 0 || b->ne[3] % a->ne[3] != 0) return false;
    if (a->nb[0] != ggml_type_size(a->type) || b->nb[0] != sizeof(float)) return false;
    if (a->ne[0] != b->ne[0]) return false;
    // Weights in a repacked or device buffer keep ggml's product; not-yet-allocated graph
    // intermediates live in the CPU compute buffer.
    const ggml_tensor * base = a->view_src ? a->view_src : a;
    if (base->buffer && !ggml_backend_buffer_is_host(base->buffer)) return false;
    return true;
}

bool bias_eligible(const ggml_tensor * a, const ggml_tensor * bias) {
    return bias->type == GGML_TYPE_F32 && ggml_is_contiguous(bias) && ggml_nelements(bias) == a->ne[1] &&
           bias->ne[0] == a->ne[1];
}

ggml_tensor * mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * bias) {
    ggml_tensor * args[3] = {a, b, bias};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, a->ne[1], b->ne[1], b->ne[2], b->ne[3], args, bias ? 3 : 2, mul_mat_op,
                          GGML_N_TASKS_MAX, nullptr);
}

bool unary_eligible(const ggml_tensor * a) {
    return available() && a->type == GGML_TYPE_F32 && ggml_is_contiguous(a);
}

ggml_tensor * unary(ggml_context * ctx, ggml_tensor * a, Unary op) {
    return ggml_map_custom1(ctx, a, unary_op, GGML_N_TASKS_MAX, (void *) (intptr_t) op);
}

Scope::Scope(bool on) : prev_(g_scope) { g_scope = on; }
Scope::~Scope() { g_scope = prev_; }
bool Scope::active() { return g_scope; }

}  // namespace minicpm::cpu_ops
