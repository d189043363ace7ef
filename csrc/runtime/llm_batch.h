// Cross-session batching of LLM evaluations: sessions that join (SessionParams::batch) hand each
// micro-batch to the model's LlmBatcher instead of running it on their own; whatever several
// sessions have waiting at that moment runs as one graph (build_llm_batch_graph), so the weights
// are read once for all of them and each sequence attends its own cache.
//
// There is no thread of its own: the first caller that finds the batcher idle runs the batch
// (with every request queued by then) on its thread, the others wait for their results; a
// request that did not fit the batch runs in the next one, led by one of its waiters. The
// batch's inputs are checked and its cells assigned by each session on its own thread before it
// is queued, so a bad request fails alone; a failure of the batch itself fails every request in
// it and leaves their sessions as before the call.
#pragma once

#include "core/backend.h"
#include "core/runner.h"
#include "models/llm.h"
#include "runtime/kv_pool.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

namespace minicpm {

class LlmContext;

// One session's share of a batched evaluation: entries [first, first + n) of its context,
// with the host-side inputs ready (LlmContext::begin_part) and its results written back by
// LlmContext::commit_part.
struct LlmBatchPart {
    LlmContext *          ctx = nullptr;
    size_t                first = 0;
    int64_t               n = 0;
    int64_t               n_kv = 0;
    bool                  flash_attn = false;
    bool                  hidden = false;          // the rows' hidden states are wanted
    int64_t               pool_base = -1;          // first cell of its range of the shared cache, -1: its own
    std::vector<float>    embd;                    // [n_embd, n]
    std::vector<int32_t>  pos;
    std::vector<int64_t>  cells;
    std::vector<float>    mask;                    // [n_kv, n]
};

struct LlmBatchStats {
    int64_t batches = 0;       // graphs run
    int64_t parts = 0;         // session requests evaluated
    int64_t rows = 0;          // positions evaluated
    int64_t max_parts = 0;     // the most requests one graph carried
    int64_t rebuilds = 0;      // graphs built (a new set of sessions or shapes), the rest reused
    int64_t shared_parts = 0;  // requests evaluated as rows of the shared cache's one sequence
    double  build_ms = 0.0;    // building and allocating them
    double  compute_ms = 0.0;  // inputs, compute, outputs
};

class LlmBatcher {
public:
    // pool_cells > 0: a shared cache of that many cells (runtime/kv_pool.h), made at the first
    // lease_cache() call, for the kv type that call asks for.
    LlmBatcher(const LlmModel & model, const Devices & devices, int n_threads, int64_t pool_cells = 0);
    LlmBatcher(const LlmBatcher &) = delete;
    LlmBatcher & operator=(const LlmBatcher &) = delete;

    // Evaluates `part` together with whatever other requests are waiting; returns when its
    // results are committed to its context. Rethrows the batch's error, if any.
    void eval(LlmBatchPart & part);

    // Gathering: a leader waits up to `wait_ms` for at least `min_parts` requests before it runs
    // a batch (default 1 and 0: run at once with what is there). Larger batches for latency.
    void set_gather(int min_parts, double wait_ms);
    LlmBatchStats stats() const;

    // A range of n cells of the shared cache for a joining session, or null (no shared cache,
    // another kv type, or no room left: the session keeps a cache of its own).
    std::unique_ptr<KvPool::Lease> lease_cache(int64_t n, ggml_type type);
    // Bytes of the shared cache (0 before its first lease).
    size_t shared_cache_bytes() const;

    static constexpr int     kMaxParts = 32;    // requests per graph
    static constexpr int64_t kMaxRows  = 512;   // positions per graph
    static constexpr int64_t kCachedGraphRows = 256;   // graphs up to this size stay built (runner cache)
    // Parts of sessions in the shared cache with at most this many rows (decode steps, a duplex
    // unit) join its one sequence; longer ones attend their own range as sequences of their own
    // (the shared sequence attends every leased cell: cheap for a row, not for a long prefill).
    static constexpr int64_t kSharedRows = 32;
    // Rows of the shared sequence in one graph (with / without flash attention).
    static constexpr int64_t kSharedSeqRows = 256, kSharedSeqRowsNoFlash = 64;

private:
    struct Request {
        LlmBatchPart *     part = nullptr;
        bool               done = false;
        std::exception_ptr error;
    };
    void run(const std::vector<Request *> & batch, bool & rebuilt, double & build_ms, double & compute_ms,
             int64_t & shared_parts);

    const LlmModel &        m_;
    const Devices &         devices_;
    int64_t                 pool_cells_ = 0;
    mutable std::mutex      pool_mu_;
    std::unique_ptr<KvPool> pool_;
    ComputeBackends         backends_;
    GraphRunner             runner_;
    LlmBatchInputs          in_;        // the current graph's
    GraphSlots<LlmBatchInputs> slot_in_;   // each kept graph's

    mutable std::mutex      mu_;
    std::condition_variable cv_;
    std::deque<Request *>   queue_;
    bool                    running_ = false;
    int                     min_parts_ = 1;
    double                  wait_ms_ = 0.0;
    LlmBatchStats           stats_;
};

} // namespace minicpm
