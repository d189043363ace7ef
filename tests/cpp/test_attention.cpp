// graph::attention (the decoder's: grouped KV heads, a KV-cache style mask, flash and soft_max
// paths) and graph::attention_batched / attention_batched_flash (the vision encoder's: several
// unmasked sequences, a shared query set, head padding, strided views of a fused QKV product)
// on the CPU backend, against a naive softmax attention in double.
#include "check.h"
#include "graph_harness.h"

#include "graph/blocks.h"

#include <cmath>

using namespace test_graph;
namespace graph = minicpm::graph;

namespace {

// A logical 4-d array in ggml order: at(i0, i1, i2, i3) = v[((i3 * n2 + i2) * n1 + i1) * n0 + i0].
struct Array4 {
    int64_t            n0 = 1, n1 = 1, n2 = 1, n3 = 1;
    std::vector<float> v;
    float at(int64_t i0, int64_t i1, int64_t i2, int64_t i3 = 0) const { return v[((i3 * n2 + i2) * n1 + i1) * n0 + i0]; }
};

Array4 random_array(Random & rng, int64_t n0, int64_t n1, int64_t n2, int64_t n3 = 1) {
    return {n0, n1, n2, n3, rng.vec((size_t) (n0 * n1 * n2 * n3))};
}

// softmax_j(scale * dot(q, k_j) + mask_j) weighted sum of v_j, for one query row.
// score(j) and value(j, d) read the keys and values of the head that q attends with.
template <typename Score, typename Value>
void ref_attend_row(int64_t n_kv, int64_t head_dim, Score score, Value value, double * out) {
    std::vector<double> p((size_t) n_kv);
    double max_s = -INFINITY;
    for (int64_t j = 0; j < n_kv; ++j) {
        p[j] = score(j);
        max_s = std::max(max_s, p[j]);
    }
    double sum = 0;
    for (double & x : p) {
        x = std::exp(x - max_s);   // exp(-inf) = 0 for masked cells
        sum += x;
    }
    for (int64_t d = 0; d < head_dim; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < n_kv; ++j) acc += p[j] * value(j, d);
        out[d] = acc / sum;
    }
}

// ---------------------------------------------------------------------------------------------
// attention: q [head_dim, n_head, n_tokens], k/v [head_dim, n_kv, n_head_kv], mask [n_kv, n_tokens]

struct DecoderCase {
    int64_t head_dim = 8, n_head = 4, n_head_kv = 2, n_kv = 7, n_tokens = 3;
    Array4  q, k, v;        // q [hd, n_head, n_tokens], k/v [hd, n_kv, n_head_kv]
    std::vector<float> mask;   // [n_kv, n_tokens]
};

// The last n_tokens of n_kv cache cells are the new tokens; each sees the cells up to itself.
DecoderCase decoder_case(uint64_t seed) {
    DecoderCase c;
    Random rng(seed);
    c.q = random_array(rng, c.head_dim, c.n_head, c.n_tokens);
    c.k = random_array(rng, c.head_dim, c.n_kv, c.n_head_kv);
    c.v = random_array(rng, c.head_dim, c.n_kv, c.n_head_kv);
    for (int64_t t = 0; t < c.n_tokens; ++t) {
        const int64_t pos = c.n_kv - c.n_tokens + t;
        for (int64_t j = 0; j < c.n_kv; ++j) c.mask.push_back(j <= pos ? 0.0f : -INFINITY);
    }
    return c;
}

// returns [head_dim * n_head, n_tokens]; query head h uses KV head h / (n_head / n_head_kv)
std::vector<double> ref_attention(const DecoderCase & c, float scale) {
    std::vector<double> out((size_t) (c.head_dim * c.n_head * c.n_tokens));
    const int64_t group = c.n_head / c.n_head_kv;
    for (int64_t t = 0; t < c.n_tokens; ++t) {
        for (int64_t h = 0; h < c.n_head; ++h) {
            const int64_t hk = h / group;
            auto score = [&](int64_t j) {
                double s = 0;
                for (int64_t d = 0; d < c.head_dim; ++d) s += (double) c.q.at(d, h, t) * c.k.at(d, j, hk);
                return scale * s + c.mask[t * c.n_kv + j];
            };
            auto value = [&](int64_t j, int64_t d) { return (double) c.v.at(d, j, hk); };
            ref_attend_row(c.n_kv, c.head_dim, score, value, &out[(t * c.n_head + h) * c.head_dim]);
        }
    }
    return out;
}

// K or V as the cache holds them: rows of head_dim * n_head_kv values, one row per cell,
// viewed as [head_dim, n_kv, n_head_kv] (the strided view the decoder graph passes).
ggml_tensor * cache_view(CpuGraph & g, ggml_type type, const Array4 & a) {
    const int64_t hd = a.n0, n_kv = a.n1, n_head_kv = a.n2;
    std::vector<float> rows((size_t) (hd * n_head_kv * n_kv));
    for (int64_t j = 0; j < n_kv; ++j)
        for (int64_t h = 0; h < n_head_kv; ++h)
            for (int64_t d = 0; d < hd; ++d) rows[(j * n_head_kv + h) * hd + d] = a.at(d, j, h);
    ggml_tensor * t = g.input(type, {hd * n_head_kv, n_kv}, rows);
    return ggml_view_3d(g.ctx(), t, hd, n_kv, n_head_kv, t->nb[1], ggml_row_size(type, hd), 0);
}

std::vector<float> run_attention(const DecoderCase & c, ggml_type kv_type, ggml_type mask_type, bool flash, float scale) {
    CpuGraph g;
    ggml_tensor * q    = g.input(GGML_TYPE_F32, {c.head_dim, c.n_head, c.n_tokens}, c.q.v);
    ggml_tensor * k    = cache_view(g, kv_type, c.k);
    ggml_tensor * v    = cache_view(g, kv_type, c.v);
    ggml_tensor * mask = g.input(mask_type, {c.n_kv, c.n_tokens}, c.mask);
    return g.compute(graph::attention(g.ctx(), q, k, v, mask, scale, flash));
}

// ---------------------------------------------------------------------------------------------
// attention_batched: q [hd, n_head, n_q, n_seq or 1], k/v [hd, n_head, n_kv, n_seq]

struct BatchedCase {
    int64_t head_dim = 12, n_head = 3, n_q = 5, n_kv = 7, n_seq = 3;
    Array4  q, k, v;
};

BatchedCase batched_case(uint64_t seed, int64_t n_q, int64_t n_kv, int64_t n_seq_q) {
    BatchedCase c;
    c.n_q = n_q;
    c.n_kv = n_kv;
    Random rng(seed);
    c.q = random_array(rng, c.head_dim, c.n_head, c.n_q, n_seq_q);
    c.k = random_array(rng, c.head_dim, c.n_head, c.n_kv, c.n_seq);
    c.v = random_array(rng, c.head_dim, c.n_head, c.n_kv, c.n_seq);
    return c;
}

// returns [head_dim * n_head, n_q, n_seq]
std::vector<double> ref_batched(const BatchedCase & c, float scale) {
    std::vector<double> out((size_t) (c.head_dim * c.n_head * c.n_q * c.n_seq));
    for (int64_t s = 0; s < c.n_seq; ++s) {
        const int64_t sq = c.q.n3 == 1 ? 0 : s;   // a shared query set
        for (int64_t i = 0; i < c.n_q; ++i) {
            for (int64_t h = 0; h < c.n_head; ++h) {
                auto score = [&](int64_t j) {
                    double acc = 0;
                    for (int64_t d = 0; d < c.head_dim; ++d) acc += (double) c.q.at(d, h, i, sq) * c.k.at(d, h, j, s);
                    return scale * acc;
                };
                auto value = [&](int64_t j, int64_t d) { return (double) c.v.at(d, h, j, s); };
                ref_attend_row(c.n_kv, c.head_dim, score, value, &out[((s * c.n_q + i) * c.n_head + h) * c.head_dim]);
            }
        }
    }
    return out;
}

enum class Layout { Contiguous, FusedQkv };

struct BatchedInputs {
    ggml_tensor * q, * k, * v;
};

// Contiguous tensors, or (n_q == n_kv, q not shared) [hd, n_head, n, n_seq] views of the rows of
// one [3 * hd * n_head, n, n_seq] tensor holding Q | K | V, as the ViT's fused product gives.
BatchedInputs batched_inputs(CpuGraph & g, const BatchedCase & c, Layout layout) {
    if (layout == Layout::Contiguous) {
        return {g.input(GGML_TYPE_F32, {c.head_dim, c.n_head, c.n_q, c.q.n3}, c.q.v),
                g.input(GGML_TYPE_F32, {c.head_dim, c.n_head, c.n_kv, c.n_seq}, c.k.v),
                g.input(GGML_TYPE_F32, {c.head_dim, c.n_head, c.n_kv, c.n_seq}, c.v.v)};
    }
    REQUIRE(c.n_q == c.n_kv && c.q.n3 == c.n_seq);
    const int64_t e = c.head_dim * c.n_head, n = c.n_kv;
    std::vector<float> qkv((size_t) (3 * e * n * c.n_seq));
    for (int64_t s = 0; s < c.n_seq; ++s)
        for (int64_t i = 0; i < n; ++i)
            for (int64_t x = 0; x < e; ++x) {
                float * row = &qkv[(s * n + i) * 3 * e];
                row[x] = c.q.v[(s * n + i) * e + x];
                row[e + x] = c.k.v[(s * n + i) * e + x];
                row[2 * e + x] = c.v.v[(s * n + i) * e + x];
            }
    ggml_tensor * t = g.input(GGML_TYPE_F32, {3 * e, n, c.n_seq}, qkv);
    const size_t es = ggml_element_size(t);
    auto view = [&](int64_t part) {
        return ggml_view_4d(g.ctx(), t, c.head_dim, c.n_head, n, c.n_seq, c.head_dim * es, t->nb[1], t->nb[2],
                            part * e * es);
    };
    return {view(0), view(1), view(2)};
}

struct FlashOptions {
    ggml_type kv_type     = GGML_TYPE_F32;
    int64_t   pad_head_to = 0;
    bool      pad_strided = false;
};

std::vector<float> run_batched(const BatchedCase & c, Layout layout, float scale, const FlashOptions * flash) {
    CpuGraph g;
    const BatchedInputs in = batched_inputs(g, c, layout);
    ggml_tensor * out = flash ? graph::attention_batched_flash(g.ctx(), in.q, in.k, in.v, scale, flash->kv_type,
                                                               flash->pad_head_to, flash->pad_strided)
                              : graph::attention_batched(g.ctx(), in.q, in.k, in.v, scale);
    return g.compute(out);
}

std::string batched_name(const char * what, Layout layout, int64_t n_seq_q, const FlashOptions * f) {
    std::string s = std::string(what) + (layout == Layout::FusedQkv ? ", fused QKV views" : ", contiguous") +
                    (n_seq_q == 1 ? ", shared q" : "");
    if (f) {
        s += f->kv_type == GGML_TYPE_F16 ? ", F16 K/V" : ", F32 K/V";
        if (f->pad_head_to) s += ", padded to " + std::to_string(f->pad_head_to) + (f->pad_strided ? " (strided)" : "");
    }
    return s;
}

// Tolerances.
// F32 everywhere (soft_max path, flash with F32 K/V): dot products of <= 12 terms and sums of
// <= 7 weights in f32, values of size <= 1: a few 1e-7; 1e-5 leaves a wide margin while any
// indexing or masking error moves outputs by ~0.1.
constexpr double kF32Abs = 1e-5;
// F16 K/V: K, V and (in the CPU kernel) Q are rounded to f16 (2^-11 relative), so scores are
// off by up to ~scale * head_dim * 2^-11 ~ 1.7e-3 and V is accumulated in f16 (another 2^-11
// per cell, n_kv cells): a few 1e-3 in the worst case on outputs of size <= 1.
constexpr double kF16Abs = 5e-3;

const FlashOptions kFlashVariants[] = {
    {GGML_TYPE_F32, 0, false},
    {GGML_TYPE_F16, 0, false},
    {GGML_TYPE_F32, 16, false},   // head_dim 12 padded to 16 (zero columns)
    {GGML_TYPE_F16, 16, false},
    {GGML_TYPE_F32, 16, true},
    {GGML_TYPE_F16, 16, true},
};

double tolerance(const FlashOptions & f) { return f.kv_type == GGML_TYPE_F16 ? kF16Abs : kF32Abs; }

} // namespace

TEST(attention_gqa_soft_max_path) {
    const DecoderCase c = decoder_case(11);
    const float scale = 1.0f / std::sqrt((float) c.head_dim);
    CHECK_CLOSE("attention soft_max, F32 K/V", run_attention(c, GGML_TYPE_F32, GGML_TYPE_F32, false, scale),
                ref_attention(c, scale), kF32Abs, 0.0);
    // The decoder's cache is F16: the soft_max path reads it through mul_mat (x rounded to f16).
    DecoderCase h = c;
    h.k.v = round_f16(h.k.v);
    h.v.v = round_f16(h.v.v);
    CHECK_CLOSE("attention soft_max, F16 K/V", run_attention(h, GGML_TYPE_F16, GGML_TYPE_F32, false, scale),
                ref_attention(h, scale), kF16Abs, 0.0);
}

TEST(attention_gqa_flash_path) {
    DecoderCase c = decoder_case(12);
    const float scale = 1.0f / std::sqrt((float) c.head_dim);
    c.k.v = round_f16(c.k.v);   // the reference sees the values the F16 cache holds
    c.v.v = round_f16(c.v.v);
    CHECK_CLOSE("attention flash, F16 K/V and mask", run_attention(c, GGML_TYPE_F16, GGML_TYPE_F16, true, scale),
                ref_attention(c, scale), kF16Abs, 0.0);
    // An all-F32 model keeps an F32 cache; the mask of the flash path is F16 either way (0 and
    // -inf are exact in f16), and the CPU kernel then works in f32.
    const DecoderCase f = decoder_case(14);
    CHECK_CLOSE("attention flash, F32 K/V", run_attention(f, GGML_TYPE_F32, GGML_TYPE_F16, true, scale),
                ref_attention(f, scale), kF32Abs, 0.0);
}

TEST(attention_mask_is_applied) {
    // The last cache cell, masked for all tokens but the last, gets values of 8: a masked
    // weight let through as small as 1e-3 would move an output by more than the tolerance.
    DecoderCase c = decoder_case(13);
    for (int64_t h = 0; h < c.n_head_kv; ++h)
        for (int64_t d = 0; d < c.head_dim; ++d) c.v.v[(h * c.n_kv + c.n_kv - 1) * c.head_dim + d] = 8.0f;
    const float scale = 1.0f / std::sqrt((float) c.head_dim);
    CHECK_CLOSE("masked soft_max", run_attention(c, GGML_TYPE_F32, GGML_TYPE_F32, false, scale), ref_attention(c, scale),
                kF32Abs, 0.0);
    c.k.v = round_f16(c.k.v);
    c.v.v = round_f16(c.v.v);
    // F16: as kF16Abs, plus 2^-11 relative for the value 8 accumulated in f16.
    CHECK_CLOSE("masked flash", run_attention(c, GGML_TYPE_F16, GGML_TYPE_F16, true, scale), ref_attention(c, scale),
                kF16Abs, 1e-3);
}

TEST(attention_batched_soft_max) {
    const float scale = 1.0f / std::sqrt(12.0f);
    for (int64_t n_seq_q : {3, 1}) {
        const BatchedCase c = batched_case(20 + n_seq_q, 5, 7, n_seq_q);
        CHECK_CLOSE(batched_name("attention_batched", Layout::Contiguous, n_seq_q, nullptr),
                    run_batched(c, Layout::Contiguous, scale, nullptr), ref_batched(c, scale), kF32Abs, 0.0);
    }
    const BatchedCase f = batched_case(25, 7, 7, 3);
    CHECK_CLOSE(batched_name("attention_batched", Layout::FusedQkv, 3, nullptr),
                run_batched(f, Layout::FusedQkv, scale, nullptr), ref_batched(f, scale), kF32Abs, 0.0);
}

TEST(attention_batched_flash_variants) {
    const float scale = 1.0f / std::sqrt(12.0f);
    for (const FlashOptions & opt : kFlashVariants) {
        for (int64_t n_seq_q : {3, 1}) {
            const BatchedCase c = batched_case(30 + n_seq_q, 5, 7, n_seq_q);
            CHECK_CLOSE(batched_name("attention_batched_flash", Layout::Contiguous, n_seq_q, &opt),
                        run_batched(c, Layout::Contiguous, scale, &opt), ref_batched(c, scale), tolerance(opt), 0.0);
        }
        const BatchedCase f = batched_case(35, 7, 7, 3);
        CHECK_CLOSE(batched_name("attention_batched_flash", Layout::FusedQkv, 3, &opt),
                    run_batched(f, Layout::FusedQkv, scale, &opt), ref_batched(f, scale), tolerance(opt), 0.0);
    }
}

CHECK_MAIN()
