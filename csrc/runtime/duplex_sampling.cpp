// StreamDecoder.decode (utils.py) and top_k_top_p_filtering, see duplex_sampling.h.
#include "runtime/duplex_sampling.h"

#include "core/error.h"
#include "core/exp.h"

#include <algorithm>
#include <cmath>
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
int32_t draw(const std::vector<float> & x, TtsRng & rng) {
    float mx = -std::numeric_limits<float>::infinity();
    for (float v : x) mx = std::max(mx, v);
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

// The k-th largest value of x (k <= x.size()), as nth_element with greater<> gives it, in one
// pass keeping the k largest seen in a min-heap.
float kth_largest(const std::vector<float> & x, int64_t k) {
    std::vector<float> heap(x.begin(), x.begin() + k);
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    for (size_t i = (size_t) k; i < x.size(); ++i) {
        if (x[i] > heap.front()) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
            heap.back() = x[i];
            std::push_heap(heap.begin(), heap.end(), std::greater<float>());
        }
    }
    return heap.front();
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
        if (s.top_k > 0) {
            const int64_t k = std::min<int64_t>(s.top_k, n);
            const float kth = kth_largest(x, k);
            for (float & v : x) {
                if (v < kth) v = kNegInf;
            }
        }
        if (s.top_p > 0.0f) {
            std::vector<int32_t> idx;
            for (int64_t i = 0; i < n; ++i) {
                if (x[(size_t) i] != kNegInf) idx.push_back((int32_t) i);
            }
            std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return x[(size_t) a] > x[(size_t) b]; });
            if (!idx.empty()) {
                const double mx = x[(size_t) idx[0]];
                double sum = 0.0;
                std::vector<double> e(idx.size());
                for (size_t r = 0; r < idx.size(); ++r) sum += (e[r] = std::exp((double) x[(size_t) idx[r]] - mx));
                // remove where the cumulative probability exceeds top_p, shifted right by one
                double cum = 0.0;
                bool prev_over = false;
                for (size_t r = 0; r < idx.size(); ++r) {
                    if (r > 0 && prev_over) x[(size_t) idx[r]] = kNegInf;
                    cum += e[r] / sum;
                    prev_over = cum > (double) s.top_p;
                }
            }
        }
        // The draw over the candidates left (top-k at most): the same sums and walk as a draw
        // over the whole vocabulary, whose other entries are exact zeros.
        std::vector<int32_t> cand;
        for (int64_t i = 0; i < n; ++i) {
            if (x[(size_t) i] != kNegInf) cand.push_back((int32_t) i);
        }
        std::vector<float> xc(cand.size());
        for (size_t r = 0; r < cand.size(); ++r) xc[r] = x[(size_t) cand[r]];
        next = cand[(size_t) draw(xc, rng)];
    }
    generated.push_back(next);
    return next;
}

} // namespace minicpm
