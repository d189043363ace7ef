#include "generator.h"

#include "runtime/sampler.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace minicpm {

namespace {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

} // namespace

void Generator::begin(const GenerationParams & params, const SamplerConfig & sampler, int max_tokens,
                      const Tokenizer & tok) {
    validate_sampling(sampler);
    for (const auto & st : params.stop) {
        if (st.empty()) fail(ErrorKind::InvalidArgument, "stop strings must not be empty");
    }
    if (params.answer_penalty_chunk < 0) {
        fail(ErrorKind::InvalidArgument, "answer_penalty_chunk must be >= 0, got " + std::to_string(params.answer_penalty_chunk));
    }
    for (int32_t id : params.suppress_tokens) {
        if (id < 0 || id >= tok.n_tokens()) {
            fail(ErrorKind::InvalidArgument, "suppressed token id " + std::to_string(id) + " is outside the vocabulary");
        }
    }
    params_ = params;
    sampler_ = sampler;
    max_tokens_ = max_tokens;
    active_ = true;
    done_ = false;
    n_generated_ = 0;
    held_.clear();
    decoder_ = std::make_unique<StreamDecoder>(tok, params.skip_special);
}

// Held text except a tail that could still become a stop string.
std::string Generator::take_safe_text(bool final) {
    size_t keep = 0;
    if (!final) {
        for (const auto & s : params_.stop) {
            for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
                if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
                    keep = len;
                    break;
                }
            }
        }
    }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return out;
}

GenerationStep Generator::finish(GenerationStep step, StopReason r) {
    held_ += decoder_->flush();
    step.text += take_safe_text(true);
    step.done = true;
    step.reason = r;
    done_ = true;
    return step;
}

GenerationStep Generator::next(LlmContext & ctx, const Model & model, std::mt19937_64 & rng, double & eval_ms,
                               double & sample_ms) {
    GenerationStep step;
    if (!active_) fail(ErrorKind::InvalidArgument, "call begin_generation() before next()");
    if (done_) {
        step.done = true;
        return step;
    }
    if (max_tokens_ >= 0 && n_generated_ >= max_tokens_) return finish(step, StopReason::MaxTokens);
    if (ctx.size() >= (size_t) ctx.n_ctx()) return finish(step, StopReason::ContextFull);

    const double t0 = now_ms();
    ctx.eval_pending();
    const double t1 = now_ms();
    eval_ms = t1 - t0;
    if (!ctx.logits_valid()) fail(ErrorKind::InvalidArgument, "no logits to sample from: the context is empty");
    const float * logits = ctx.logits().data();
    if (!params_.suppress_tokens.empty()) {
        masked_.assign(ctx.logits().begin(), ctx.logits().end());
        for (int32_t t : params_.suppress_tokens) {
            if ((size_t) t < masked_.size()) masked_[(size_t) t] = -std::numeric_limits<float>::infinity();
        }
        logits = masked_.data();
    }
    int32_t id;
    if (params_.answer_penalty_chunk > 0) {
        // chunk_generate's history: all_input_ids[-window:] (the answer before this chunk) plus
        // the tokens drawn so far in the chunk.
        const size_t c = (size_t) params_.answer_penalty_chunk, i = (size_t) n_generated_;
        const size_t chunk_start = i <= c ? 0 : c + 1 + ((i - c - 1) / c) * c;
        const size_t w = sampler_.repeat_last_n < 0 ? chunk_start : std::min(chunk_start, (size_t) sampler_.repeat_last_n);
        const auto & toks = ctx.tokens();
        const size_t answer0 = toks.size() - i;
        history_.assign(toks.begin() + (ptrdiff_t) (answer0 + chunk_start - w), toks.end());
        SamplerConfig cfg = sampler_;
        cfg.repeat_last_n = -1;
        id = sample_token(logits, (int64_t) ctx.logits().size(), cfg, history_, rng);
    } else {
        id = sample_token(logits, (int64_t) ctx.logits().size(), sampler_, ctx.tokens(), rng);
    }
    sample_ms = now_ms() - t1;
    step.token = id;
    ctx.append_token(id);   // pending: evaluated on the next step or the next prefill
    n_generated_++;

    if (params_.stop_at_end_of_turn && model.is_end_of_turn(id)) return finish(step, StopReason::EndOfTurn);
    for (int32_t st : params_.stop_tokens) {
        if (id == st) return finish(step, StopReason::EndOfTurn);
    }

    held_ += decoder_->push(id);
    for (const auto & st : params_.stop) {
        const size_t pos = held_.find(st);
        if (pos != std::string::npos) {
            held_.resize(pos);
            step.text = held_;
            held_.clear();
            decoder_->reset();
            step.done = true;
            step.reason = StopReason::StopString;
            done_ = true;
            return step;
        }
    }
    step.text = take_safe_text(false);
    if (max_tokens_ >= 0 && n_generated_ >= max_tokens_) return finish(step, StopReason::MaxTokens);
    if (ctx.size() >= (size_t) ctx.n_ctx()) return finish(step, StopReason::ContextFull);
    return step;
}

} // namespace minicpm
