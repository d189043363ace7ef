// Token sampling on host logits: penalties, temperature, top-k, top-p, min-p (the order of
// transformers' logits processors), then a draw from the seeded generator, or argmax.
#pragma once

#include "minicpm/minicpm.h"

#include <random>
#include <vector>

namespace minicpm {

// Throws Error(InvalidArgument) naming the bad parameter.
void validate_sampling(const SamplerConfig & p);

// history: tokens in the context, oldest first (penalties look at the last repeat_last_n).
int32_t sample_token(const float * logits, int64_t n_vocab, const SamplerConfig & p,
                     const std::vector<int32_t> & history, std::mt19937_64 & rng);

} // namespace minicpm
