// The LLM state of one session: the context (one entry per token or embedding row, with its
// position and cache cell), the KV cache, the decoder's graph runner, and what the last
// evaluation produced (logits, captured hidden states).
//
// Entries are appended as pending and evaluated in micro-batches by eval_pending(); an entry
// carries a token id, a tag (0 for text; a content hash for embedding rows, so that prefix
// reuse compares images too) and, while pending, a reference to its embedding row.
#pragma once

#include "minicpm/minicpm.h"

#include "core/debug.h"
#include "core/runner.h"
#include "models/llm.h"
#include "runtime/kv_cache.h"
#include "runtime/kv_pool.h"
#include "runtime/llm_batch.h"

#include <memory>
#include <vector>

namespace minicpm {

// Where a pending position's embedding comes from (an image chunk row), if not from token_embd.
struct EmbRef {
    std::shared_ptr<const ImageChunk> chunk;
    int32_t                           row = -1;
};

// Positions to append: parallel arrays (flatten_segments fills them).
struct PendingRun {
    std::vector<int32_t>  tokens;
    std::vector<uint64_t> tags;
    std::vector<EmbRef>   refs;
};

// Flattens prompt segments into per-position tokens, tags and embedding references, checking
// token ids and image chunk sizes against the model.
PendingRun flatten_segments(const std::vector<PromptSegment> & segs, const LlmHparams & hp);

class LlmContext {
public:
    // With a batcher, micro-batches are evaluated through it (cross-session batching) and the
    // cache takes a range of the batcher's shared cache when it has one with room.
    LlmContext(const LlmModel & model, const ComputeBackends & backends, const SessionParams & params,
               LlmBatcher * batcher = nullptr);

    size_t size() const { return tokens_.size(); }        // entries (evaluated and pending)
    size_t n_eval() const { return n_eval_; }             // entries [0, n_eval) are in the cache
    int    n_ctx() const { return (int) kv_.n_cells; }
    const std::vector<int32_t> &  tokens() const { return tokens_; }
    const std::vector<uint64_t> & tags() const { return tags_; }
    const std::vector<int32_t> &  positions() const { return pos_; }

    // Throws Error(ContextFull) when `extra` more entries do not fit.
    void check_fits(size_t extra, const char * what) const;
    // Appends entries as pending, at positions following the last entry's.
    void append(PendingRun && run, size_t from = 0);
    void append_token(int32_t token);
    // Drops entries [n, size()) (their cells are freed).
    void truncate(size_t n);
    // Drops entries [first, last); the others keep their positions.
    void remove(size_t first, size_t last);
    // Replaces entries [first, last) with text `tokens`, every entry being evaluated (no pending
    // ones). The new tokens take the positions after entry first - 1 and are evaluated now,
    // attending the entries before them only; the entries after the range are not evaluated
    // again: their positions move to follow the new tokens (contiguously) and their cached keys
    // are re-rotated by the change, as the MiniCPM-o duplex window's realign_rotary_suffix does.
    // With no tokens this is a removal that closes the gap. Returns the tokens evaluated.
    size_t replace(size_t first, size_t last, const std::vector<int32_t> & tokens);
    void clear() { truncate(0); }

    // Evaluates every pending entry; returns how many were evaluated. On failure the pending
    // entries of the failed micro-batch and after stay pending (nothing half-written counts).
    size_t eval_pending();

    bool                       logits_valid() const { return logits_valid_; }
    const std::vector<float> & logits() const { return logits_; }   // of the last evaluated entry

    void set_capture(bool hidden, bool logits) { capture_hidden_ = hidden; capture_logits_ = logits; }
    bool capture_hidden() const { return capture_hidden_; }
    bool capture_logits() const { return capture_logits_; }
    // Rows of captured outputs of entries [first, first + n), row-major.
    std::vector<float> captured_hidden(size_t first, size_t n) const;
    std::vector<float> captured_logits(size_t first, size_t n) const;

    const LlmModel & model() const { return m_; }

    // Cross-session batching: with a batcher, micro-batches are evaluated through it (together
    // with other sessions' waiting ones) unless every position's logits are captured.
    LlmBatcher * batcher() const { return batcher_; }
    // The batcher's side: prepares entries [first, first + n) (checks, inputs, cells assigned),
    // commits its results (the last row's logits, the rows' hidden states when captured), or
    // gives the cells back when the batch failed.
    void begin_part(size_t first, int64_t n, LlmBatchPart & part);
    void commit_part(const LlmBatchPart & part, const float * logits, const float * hidden);
    void abort_part(const LlmBatchPart & part);
    const KvTensors & kv_tensors() const { return kv_; }
    // Unique for the process's lifetime (never reused, unlike an address): batch graphs are
    // keyed by it, so that a new context never meets a graph built over a freed one's cache.
    uint64_t uid() const { return uid_; }

private:
    void eval_batch(size_t first, int64_t n_tokens);
    bool check_entries(size_t first, int64_t n) const;
    int64_t attended_cells() const;
    void fill_embeddings(size_t first, int64_t n, std::vector<float> & out) const;
    void erase_entries(size_t first, size_t last);
    void insert_entries(size_t at, const std::vector<int32_t> & tokens, int32_t first_pos);
    // Rotates the cached keys of `cells` by `deltas` positions (RoPE composes: R(p + d) = R(d) R(p)).
    void shift_keys(const std::vector<int64_t> & cells, const std::vector<int32_t> & deltas);

    const LlmModel &      m_;
    SessionParams         params_;
    bool                  flash_attn_ = false;
    GraphRunner           runner_;
    EvalObserver          observer_;
    KvCache               kv_;
    LlmGraphInputs        in_;        // the current graph's
    GraphSlots<LlmGraphInputs> slot_in_;   // each kept graph's
    ggml_tensor *         shift_in_ = nullptr;   // I32 position deltas of the K-shift graph
    LlmBatcher *          batcher_ = nullptr;
    std::unique_ptr<KvPool::Lease> lease_;   // its range of the shared batch cache, if it has one
    uint64_t              uid_ = 0;

    std::vector<int32_t>  tokens_;
    std::vector<uint64_t> tags_;
    std::vector<int32_t>  pos_;
    std::vector<int64_t>  cells_;   // -1 while pending
    std::vector<EmbRef>   refs_;
    size_t                n_eval_ = 0;

    std::vector<float>    logits_;
    bool                  logits_valid_ = false;
    bool                  capture_hidden_ = false, capture_logits_ = false;
    std::vector<std::vector<float>> hidden_rows_, logit_rows_;   // per entry; empty when not captured
};

} // namespace minicpm
