#include "sampler.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

namespace minicpm {

void validate_sampling(const SamplerConfig & p) {
    auto bad = [](const std::string & what) { fail(ErrorKind::InvalidArgument, what); };
    if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
        bad("temperature must be a finite number >= 0, got " + std::to_string(p.temperature));
    if (p.top_k < 0) bad("top_k must be >= 0 (0 disables it), got " + std::to_string(p.top_k));
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad("top_p must be in (0, 1], got " + std::to_string(p.top_p));
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) bad("min_p must be in [0, 1], got " + std::to_string(p.min_p));
    if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0.0f)
        bad("repeat_penalty must be > 0 (1 disables it), got " + std::to_string(p.repeat_penalty));
    if (!std::isfinite(p.presence_penalty))
        bad("presence_penalty must be finite, got " + std::to_string(p.presence_penalty));
    if (p.repeat_last_n < -1) bad("repeat_last_n must be >= -1, got " + std::to_string(p.repeat_last_n));
}

int32_t sample_token(const float * logits_in, int64_t n_vocab, const SamplerConfig & p,
                     const std::vector<int32_t> & history, std::mt19937_64 & rng) {
    std::vector<float> logits(logits_in, logits_in + n_vocab);

    // Penalties over the distinct tokens of the look-back window.
    if (p.repeat_penalty != 1.0f || p.presence_penalty != 0.0f) {
        size_t n = history.size();
        size_t first = (p.repeat_last_n < 0 || (size_t) p.repeat_last_n >= n) ? 0 : n - (size_t) p.repeat_last_n;
        std::unordered_set<int32_t> seen(history.begin() + (ptrdiff_t) first, history.end());
        for (int32_t id : seen) {
            if (id < 0 || id >= n_vocab) continue;
            float & l = logits[(size_t) id];
            if (p.repeat_penalty != 1.0f) l = l > 0.0f ? l / p.repeat_penalty : l * p.repeat_penalty;
            l -= p.presence_penalty;
        }
    }

    if (p.temperature <= 0.0f) {
        return (int32_t) (std::max_element(logits.begin(), logits.end()) - logits.begin());
    }

    // Candidates sorted by logit, descending. Top-k first keeps the sort short.
    std::vector<int32_t> idx((size_t) n_vocab);
    std::iota(idx.begin(), idx.end(), 0);
    size_t k = (p.top_k > 0 && p.top_k < n_vocab) ? (size_t) p.top_k : (size_t) n_vocab;
    auto by_logit = [&](int32_t a, int32_t b) { return logits[(size_t) a] > logits[(size_t) b]; };
    if (k < idx.size()) {
        std::partial_sort(idx.begin(), idx.begin() + (ptrdiff_t) k, idx.end(), by_logit);
        idx.resize(k);
    } else {
        std::sort(idx.begin(), idx.end(), by_logit);
    }

    // Softmax at temperature.
    std::vector<double> prob(idx.size());
    const double max_l = logits[(size_t) idx[0]] / p.temperature;
    double sum = 0.0;
    for (size_t i = 0; i < idx.size(); ++i) {
        prob[i] = std::exp(logits[(size_t) idx[i]] / p.temperature - max_l);
        sum += prob[i];
    }
    for (auto & q : prob) q /= sum;

    // Top-p: smallest prefix whose mass reaches top_p (at least one token).
    size_t keep = idx.size();
    if (p.top_p < 1.0f) {
        double cum = 0.0;
        for (size_t i = 0; i < idx.size(); ++i) {
            cum += prob[i];
            if (cum >= p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    // Min-p: drop tokens below min_p times the top probability.
    if (p.min_p > 0.0f) {
        const double thr = p.min_p * prob[0];
        size_t m = 1;
        while (m < keep && prob[m] >= thr) ++m;
        keep = m;
    }
    std::discrete_distribution<size_t> dist(prob.begin(), prob.begin() + (ptrdiff_t) keep);
    return idx[dist(rng)];
}

SamplerConfig SamplingParams::resolve(const SamplerConfig & d) const {
    SamplerConfig c = d;
    if (temperature) c.temperature = *temperature;
    if (top_k) c.top_k = *top_k;
    if (top_p) c.top_p = *top_p;
    if (min_p) c.min_p = *min_p;
    if (repeat_penalty) c.repeat_penalty = *repeat_penalty;
    if (presence_penalty) c.presence_penalty = *presence_penalty;
    if (repeat_last_n) c.repeat_last_n = *repeat_last_n;
    return c;
}

} // namespace minicpm
