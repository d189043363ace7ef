// StreamDecoder.decode (utils.py) and top_k_top_p_filtering, see duplex_sampling.h.
#include "runtime/duplex_sampling.h"

#include "core/error.h"
#include "core/exp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace minicpm {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int32_t argmax(const std::vector<float> & x) {
    return (int32_t) (std::max_element(x.begin(), x.end()) - x.begin());
}

// softmax (0 for -inf; float32 exponentials, as the reference's F.softmax) and a multinomial
// draw: tts_draw over the unnormalised probabilities and their double sum.
// The largest value, over eight independent lanes (max is exact in any order; a NaN is
// skipped as std::max(m, v) skips it when m is not NaN).
float max_value(const std::vector<float> & x) {
    float m[8];
    for (float & v : m) v = -std::numeric_limits<float>::infinity();
    size_t i = 0;
    for (; i + 8 <= x.size(); i += 8) {
        for (size_t k = 0; k < 8; ++k) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    }
    for (; i < x.size(); ++i) m[0] = x[i] > m[0] ? x[i] : m[0];
    float mx = m[0];
    for (size_t k = 1; k < 8; ++k) mx = std::max(mx, m[k]);
    return mx;
}

int32_t draw(const std::vector<float> & x, TtsRng & rng) {
    const float mx = max_value(x);
    if (!std::isfinite(mx)) fail(ErrorKind::InvalidArgument, "duplex: every token is masked (or the logits are not finite)");
    std::vector<float> p(x.size());
    exp_shifted(x.data(), p.data(), x.size(), mx);
    double s[4] = {0.0, 0.0, 0.0, 0.0};   // four running sums: no chain of dependent additions
    size_t i = 0;
    for (; i + 4 <= p.size(); i += 4) {
        for (size_t k = 0; k < 4; ++k) s[k] += p[i + k];
    }
    for (; i < p.size(); ++i) s[0] += p[i];
    return tts_draw(p, (s[0] + s[1]) + (s[2] + s[3]), rng);
}

// Whether any of the 16 values at p is > thr (or >= thr when `or_equal`): four at a time where
// the compiler has vector extensions.
inline bool any_of16(const float * p, float thr, bool or_equal) {
#if defined(__GNUC__) || defined(__clang__)
    typedef float   v4f __attribute__((vector_size(16)));
    typedef int32_t v4i __attribute__((vector_size(16)));
    v4f a[4];
    std::memcpy(a, p, sizeof a);
    const v4f t = {thr, thr, thr, thr};
    v4i m = or_equal ? ((a[0] >= t) | (a[1] >= t)) | ((a[2] >= t) | (a[3] >= t))
                     : ((a[0] > t) | (a[1] > t)) | ((a[2] > t) | (a[3] > t));
    return (m[0] | m[1] | m[2] | m[3]) != 0;
#else
    for (int j = 0; j < 16; ++j) {
        if (or_equal ? p[j] >= thr : p[j] > thr) return true;
    }
    return false;
#endif
}

// The k-th largest value of x (k <= x.size()), as nth_element with greater<> gives it, in one
// pass keeping the k largest seen in a min-heap.
float kth_largest(const std::vector<float> & x, int64_t k) {
    std::vector<float> heap(x.begin(), x.begin() + k);
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    size_t i = (size_t) k;
    for (; i + 16 <= x.size(); i += 16) {   // most blocks hold nothing above the heap's least
        if (!any_of16(x.data() + i, heap.front(), false)) continue;
        for (size_t j = i; j < i + 16; ++j) {
            if (x[j] > heap.front()) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
                heap.back() = x[j];
                std::push_heap(heap.begin(), heap.end(), std::greater<float>());
            }
        }
    }
    for (; i < x.size(); ++i) {
        if (x[i] > heap.front()) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
            heap.back() = x[i];
            std::push_heap(heap.begin(), heap.end(), std::greater<float>());
        }
    }
    return heap.front();
}

// The indices i of x with lo <= x[i] and x[i] != -inf, in order (blocks with none skipped).
std::vector<int32_t> at_least(const std::vector<float> & x, float lo) {
    std::vector<int32_t> out;
    size_t i = 0;
    for (; i + 16 <= x.size(); i += 16) {
        if (!any_of16(x.data() + i, lo, true)) continue;
        for (size_t j = i; j < i + 16; ++j) {
            if (x[j] >= lo && x[j] != kNegInf) out.push_back((int32_t) j);
        }
    }
    for (; i < x.size(); ++i) {
        if (x[i] >= lo && x[i] != kNegInf) out.push_back((int32_t) i);
    }
    return out;
}

} // namespace

int32_t duplex_decode(const std::vector<float> & in, const DuplexSampling & s, std::vector<int32_t> & generated, TtsRng & rng) {
    const int64_t n = (int64_t) in.size();
    if (n == 0) fail(ErrorKind::InvalidArgument, "duplex: no logits to sample from");
    const int32_t raw = s.greedy ? argmax(in) : draw(in, rng);
    if (raw == s.chunk_eos) return raw;

    std::vector<float> x = in;
    if (s.forbidden) {
        for (int32_t t : *s.forbidden) {
            if (t >= 0 && t < n) x[(size_t) t] = kNegInf;
        }
    }
    if (s.repetition_penalty != 1.0f && !generated.empty()) {
        const size_t from = generated.size() > (size_t) s.repetition_window ? generated.size() - (size_t) s.repetition_window : 0;
        std::unordered_set<int32_t> seen(generated.begin() + (std::ptrdiff_t) from, generated.end());
        for (int32_t t : seen) {
            if (t >= 0 && t < n) x[(size_t) t] /= s.repetition_penalty;   // > 1 divides, < 1 multiplies by 1/p: the same
        }
    }
    if (s.length_penalty != 1.0f && s.turn_eos >= 0 && s.turn_eos < n) {
        float & v = x[(size_t) s.turn_eos];
        v = v > 0 ? v / s.length_penalty : v * s.length_penalty;
    }
    int32_t next;
    if (s.greedy) {
        next = argmax(x);
    } else {
        for (float & v : x) v /= s.temperature;
        // The candidates top_k keeps (every value not below the k-th largest, -inf excluded), in
        // vocabulary order: the indices the reference's masked vocabulary leaves.
        const float lo = s.top_k > 0 ? kth_largest(x, std::min<int64_t>(s.top_k, n)) : kNegInf;
        std::vector<int32_t> cand = at_least(x, lo);
        std::vector<float> xc(cand.size());
        for (size_t r = 0; r < cand.size(); ++r) xc[r] = x[(size_t) cand[r]];
        if (s.top_p > 0.0f && !cand.empty()) {
            std::vector<size_t> idx(cand.size());   // positions in cand, by value, ties in vocabulary order
            std::iota(idx.begin(), idx.end(), size_t{0});
            std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return xc[a] > xc[b]; });
            const double mx = xc[idx[0]];
            double sum = 0.0;
            std::vector<double> e(idx.size());
            for (size_t r = 0; r < idx.size(); ++r) sum += (e[r] = std::exp((double) xc[idx[r]] - mx));
            // remove where the cumulative probability exceeds top_p, shifted right by one
            std::vector<char> drop(cand.size(), 0);
            double cum = 0.0;
            bool prev_over = false;
            for (size_t r = 0; r < idx.size(); ++r) {
                if (r > 0 && prev_over) drop[idx[r]] = 1;
                cum += e[r] / sum;
                prev_over = cum > (double) s.top_p;
            }
            size_t w = 0;
            for (size_t r = 0; r < cand.size(); ++r) {
                if (drop[r]) continue;
                cand[w] = cand[r];
                xc[w] = xc[r];
                ++w;
            }
            cand.resize(w);
            xc.resize(w);
        }
        // The draw over the candidates left (top-k at most): the same sums and walk as a draw
        // over the whole vocabulary, whose other entries are exact zeros.
        next = cand[(size_t) draw(xc, rng)];
    }
    generated.push_back(next);
    return next;
}

} // namespace minicpm
