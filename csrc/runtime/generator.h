// The generation loop of one session: sample, append as pending (evaluated at the next step, so
// a finished answer costs no extra forward pass), stream text through StreamDecoder, and stop at
// an end-of-turn token, a stop string, max_tokens or a full context.
#pragma once

#include "minicpm/minicpm.h"

#include "preprocess/tokenizer.h"
#include "runtime/llm_context.h"

#include <memory>
#include <random>
#include <string>

namespace minicpm {

class Generator {
public:
    // `sampler`: the resolved sampling values; `max_tokens` < 0: no limit.
    void begin(const GenerationParams & params, const SamplerConfig & sampler, int max_tokens, const Tokenizer & tok);
    void end() { active_ = false; }
    bool active() const { return active_; }

    // One step; `eval_ms` receives the time spent evaluating the pending token.
    GenerationStep next(LlmContext & ctx, const Model & model, std::mt19937_64 & rng, double & eval_ms, double & sample_ms);

private:
    std::string take_safe_text(bool final);
    GenerationStep finish(GenerationStep step, StopReason r);

    bool                           active_ = false;
    bool                           done_ = false;
    GenerationParams               params_;
    SamplerConfig                  sampler_;
    int                            max_tokens_ = -1;
    int                            n_generated_ = 0;
    std::unique_ptr<StreamDecoder> decoder_;
    std::string                    held_;   // text not yet returned (may be the start of a stop string)
    std::vector<float>             masked_; // the logits with suppress_tokens at -inf
    std::vector<int32_t>           history_; // the penalties' tokens (answer_penalty_chunk)
};

} // namespace minicpm
