#include "llm_batch.h"

#include "llm_context.h"

#include "core/error.h"
#include "core/log.h"

#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <type_traits>

namespace minicpm {

LlmBatcher::LlmBatcher(const LlmModel & model, const Devices & devices, int n_threads, int64_t pool_cells)
    : m_(model), devices_(devices), pool_cells_(pool_cells), backends_(devices, n_threads),
      runner_("llm-batch", backends_, llm_batch_graph_max_nodes(model.hp, kMaxParts)) {
    // Duplex units alternate between a prefill and decode steps: several shapes stay built (with
    // a shared cache, one per bucket of rows and requests that the mix of sessions reaches).
    runner_.set_graph_cache(pool_cells > 0 ? 12 : 4);
}

std::unique_ptr<KvPool::Lease> LlmBatcher::lease_cache(int64_t n, ggml_type type) {
    if (pool_cells_ <= 0) return nullptr;
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (!pool_) pool_ = std::make_unique<KvPool>(m_.hp, devices_, pool_cells_, type);
    auto lease = pool_->acquire(n, type);
    if (!lease) {
        MINICPM_LOG_WARN("the shared batch cache (%lld cells) has no room for %lld more%s: this session keeps a cache of its own",
                         (long long) pool_cells_, (long long) n, type != pool_->type() ? " of this kv type" : "");
    }
    return lease;
}

size_t LlmBatcher::shared_cache_bytes() const {
    std::lock_guard<std::mutex> lk(pool_mu_);
    return pool_ ? pool_->bytes() : 0;
}

void LlmBatcher::set_gather(int min_parts, double wait_ms) {
    if (min_parts < 1 || min_parts > kMaxParts) {
        fail(ErrorKind::InvalidArgument, "batch gather: min_parts must be in [1, " + std::to_string(kMaxParts) + "], got " +
                                             std::to_string(min_parts));
    }
    if (!(wait_ms >= 0.0 && wait_ms <= 10000.0)) {
        fail(ErrorKind::InvalidArgument, "batch gather: wait_ms must be in [0, 10000], got " + std::to_string(wait_ms));
    }
    std::lock_guard<std::mutex> lk(mu_);
    min_parts_ = min_parts;
    wait_ms_ = wait_ms;
}

LlmBatchStats LlmBatcher::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
}

void LlmBatcher::eval(LlmBatchPart & part) {
    if (part.n <= 0 || part.n > kMaxRows) fail(ErrorKind::Internal, "batched evaluation of " + std::to_string(part.n) + " rows");
    Request req;
    req.part = &part;
    std::unique_lock<std::mutex> lk(mu_);
    queue_.push_back(&req);
    cv_.notify_all();   // a gathering leader counts the queue
    while (!req.done) {
        if (running_) {
            cv_.wait(lk);
            continue;
        }
        // Lead: the batch is what is queued now (after the gather wait, if any).
        running_ = true;
        if (min_parts_ > 1 && wait_ms_ > 0.0) {
            cv_.wait_for(lk, std::chrono::duration<double, std::milli>(wait_ms_),
                         [&] { return queue_.size() >= (size_t) min_parts_; });
        }
        std::vector<Request *> batch;
        int64_t rows = 0;
        const bool flash = queue_.front()->part->flash_attn;
        for (auto it = queue_.begin(); it != queue_.end() && batch.size() < (size_t) kMaxParts;) {
            LlmBatchPart & p = *(*it)->part;
            const bool same_ctx = std::any_of(batch.begin(), batch.end(), [&](Request * r) { return r->part->ctx == p.ctx; });
            if (p.flash_attn != flash || rows + p.n > kMaxRows || same_ctx) {
                ++it;
                continue;
            }
            rows += p.n;
            batch.push_back(*it);
            it = queue_.erase(it);
        }
        lk.unlock();
        std::exception_ptr err;
        bool rebuilt = false;
        double build_ms = 0.0, compute_ms = 0.0;
        int64_t shared = 0;
        try {
            run(batch, rebuilt, build_ms, compute_ms, shared);
        } catch (...) {
            err = std::current_exception();
        }
        lk.lock();
        stats_.rebuilds += rebuilt ? 1 : 0;
        stats_.shared_parts += shared;
        stats_.build_ms += build_ms;
        stats_.compute_ms += compute_ms;
        for (Request * r : batch) {
            r->done = true;
            r->error = err;
        }
        stats_.batches += 1;
        stats_.parts += (int64_t) batch.size();
        stats_.rows += rows;
        stats_.max_parts = std::max<int64_t>(stats_.max_parts, (int64_t) batch.size());
        running_ = false;
        cv_.notify_all();
    }
    if (req.error) std::rethrow_exception(req.error);
}

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
} // namespace

namespace {

constexpr int64_t kSharedKvPad = 256;

// Writes the F32 mask rows `src` ([n_src, n]) into rows [r0, r0 + n) of dst ([n_dst, *]) at
// column `col`; the rest of those rows stays as filled (-inf).
template <typename T>
void place_mask(const std::vector<float> & src, int64_t n_src, int64_t n, T * dst, int64_t n_dst, int64_t r0, int64_t col) {
    for (int64_t i = 0; i < n; ++i) {
        T * row = dst + (size_t) ((r0 + i) * n_dst + col);
        const float * s = src.data() + (size_t) (i * n_src);
        const int64_t n_copy = std::min(n_src, n_dst - col);
        if constexpr (std::is_same_v<T, float>) std::copy(s, s + n_copy, row);
        else ggml_fp32_to_fp16_row(s, row, n_copy);
    }
}

// The mask of a sequence: one part's own (shared = false), or the shared sequence's rows of
// every part at its range, then n_pad padding rows that attend the scratch cell only.
template <typename T>
void set_mask(ggml_tensor * t, const std::vector<const LlmBatchPart *> & parts, bool shared) {
    const int64_t n_kv = t->ne[0], n_rows = t->ne[1];
    std::vector<T> m((size_t) (n_kv * n_rows));
    if (!shared) {
        place_mask(parts.front()->mask, parts.front()->n_kv, n_rows, m.data(), n_kv, 0, 0);
    } else {
        const T neg = std::is_same_v<T, float> ? (T) -INFINITY : (T) ggml_fp32_to_fp16(-INFINITY);
        const T zero = std::is_same_v<T, float> ? (T) 0.0f : (T) ggml_fp32_to_fp16(0.0f);
        std::fill(m.begin(), m.end(), neg);
        int64_t r0 = 0;
        for (const LlmBatchPart * p : parts) {
            place_mask(p->mask, p->n_kv, p->n, m.data(), n_kv, r0, p->pool_base);
            r0 += p->n;
        }
        for (; r0 < n_rows; ++r0) m[(size_t) (r0 * n_kv + KvPool::kScratchCell)] = zero;
    }
    ggml_backend_tensor_set(t, m.data(), 0, m.size() * sizeof(T));
}

// Row counts of the shared sequence and request counts of a graph, rounded up, so that a few
// shapes cover every mix of sessions: 1, 2, 4, ..., 32, then multiples of 32.
int64_t bucket(int64_t n) {
    if (n > 32) return (n + 31) / 32 * 32;
    int64_t b = 1;
    while (b < n) b *= 2;
    return b;
}

} // namespace

void LlmBatcher::run(const std::vector<Request *> & batch, bool & rebuilt, double & build_ms, double & compute_ms,
                     int64_t & shared_parts) {
    // The parts of sessions in the shared cache that are small enough join one sequence over it
    // (first, by cell range); the others follow as sequences of their own, in a fixed order (by
    // context), so that the same sessions with the same shapes reuse the allocated graph.
    std::vector<LlmBatchPart *> parts;
    for (Request * r : batch) parts.push_back(r->part);
    const KvPool * pool = nullptr;
    {
        std::lock_guard<std::mutex> lk(pool_mu_);
        pool = pool_.get();
    }
    auto is_shared = [&](const LlmBatchPart * p) { return pool && p->pool_base >= 0 && p->n <= kSharedRows; };
    std::sort(parts.begin(), parts.end(), [&](const LlmBatchPart * a, const LlmBatchPart * b) {
        const bool sa = is_shared(a), sb = is_shared(b);
        if (sa != sb) return sa;
        return sa ? a->pool_base < b->pool_base : a->ctx->uid() < b->ctx->uid();
    });
    const bool flash = parts.front()->flash_attn;
    bool want_hidden = false;
    for (const LlmBatchPart * p : parts) want_hidden = want_hidden || p->hidden;

    // groups[i]: the parts of sequence i (the shared one first, if any).
    std::vector<std::vector<const LlmBatchPart *>> groups;
    // The shared sequence's attention spans every leased cell: its rows are capped (without
    // flash attention each row materialises a score row over all of them), the rest of the
    // parts attend their own ranges.
    const int64_t max_shared_rows = flash ? kSharedSeqRows : kSharedSeqRowsNoFlash;
    size_t n_shared = 0;
    for (int64_t r = 0; n_shared < parts.size() && is_shared(parts[n_shared]) && r + parts[n_shared]->n <= max_shared_rows;) {
        r += parts[n_shared]->n;
        ++n_shared;
    }
    // With a shared sequence the graph always has the hidden states (one shape whether or not
    // a request wants them) and its rows and outputs are padded to buckets: the padding rows
    // (zero embeddings at position 0) write and attend the pool's scratch cell only.
    const bool hidden = want_hidden || n_shared > 0;
    int64_t n_pad = 0;
    int64_t n_out = (int64_t) parts.size();
    std::vector<LlmBatchSeq> seqs;
    GraphKey key{flash, hidden, (int64_t) n_shared > 0};
    if (n_shared > 0) {
        groups.emplace_back(parts.begin(), parts.begin() + (std::ptrdiff_t) n_shared);
        int64_t rows = 0;
        for (const LlmBatchPart * p : groups.back()) rows += p->n;
        n_pad = bucket(rows) - rows;
        n_out = std::min<int64_t>(bucket(n_out), kMaxParts);
        // Every leased cell, rounded (the extent moves only when sessions come or go).
        const int64_t n_kv = std::min(pool->n_cells(), ((pool->end() + kSharedKvPad - 1) / kSharedKvPad) * kSharedKvPad);
        seqs.push_back(LlmBatchSeq{&pool->tensors(), rows + n_pad, n_kv});
        key.push_back(rows + n_pad);
        key.push_back(n_kv);
        key.push_back(n_out);
    }
    for (size_t i = n_shared; i < parts.size(); ++i) {
        const LlmBatchPart * p = parts[i];
        groups.push_back({p});
        seqs.push_back(LlmBatchSeq{&p->ctx->kv_tensors(), p->n, p->n_kv});
        key.push_back((int64_t) p->ctx->uid());
        key.push_back(p->n);
        key.push_back(p->n_kv);
    }
    try {
        auto t0 = std::chrono::steady_clock::now();
        int64_t rows = n_pad;
        for (const LlmBatchPart * p : parts) rows += p->n;
        rebuilt = slot_in_.prepare(runner_, key, [&](ggml_context * ctx, ggml_cgraph * gf) {
            build_llm_batch_graph(ctx, gf, m_, seqs, n_out, flash, hidden, in_);
        }, rows <= kCachedGraphRows, in_);
        build_ms = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        const int64_t E = m_.hp.n_embd;
        std::vector<float> embd;
        std::vector<int32_t> pos, last;
        std::vector<int64_t> row0;   // each part's first row
        int64_t row = 0;
        for (size_t i = 0; i < parts.size(); ++i) {
            const LlmBatchPart * p = parts[i];
            embd.insert(embd.end(), p->embd.begin(), p->embd.end());
            pos.insert(pos.end(), p->pos.begin(), p->pos.end());
            row0.push_back(row);
            row += p->n;
            last.push_back((int32_t) (row - 1));
            if (i + 1 == n_shared && n_pad > 0) {   // the shared sequence's padding rows
                embd.resize(embd.size() + (size_t) (n_pad * E), 0.0f);
                pos.resize(pos.size() + (size_t) n_pad, 0);
                row += n_pad;
            }
        }
        last.resize((size_t) n_out, 0);   // padded outputs: row 0's logits again, not read
        for (size_t g = 0; g < groups.size(); ++g) {
            const bool shared = g == 0 && n_shared > 0;
            std::vector<int64_t> cells;
            for (const LlmBatchPart * p : groups[g]) {
                for (int64_t c : p->cells) cells.push_back(shared ? p->pool_base + c : c);
            }
            if (shared) cells.resize(cells.size() + (size_t) n_pad, KvPool::kScratchCell);
            ggml_backend_tensor_set(in_.kv_idx[g], cells.data(), 0, cells.size() * sizeof(int64_t));
            if (in_.kq_mask[g]->type == GGML_TYPE_F16) set_mask<ggml_fp16_t>(in_.kq_mask[g], groups[g], shared);
            else set_mask<float>(in_.kq_mask[g], groups[g], shared);
        }
        ggml_backend_tensor_set(in_.embd, embd.data(), 0, embd.size() * sizeof(float));
        ggml_backend_tensor_set(in_.pos, pos.data(), 0, pos.size() * sizeof(int32_t));
        ggml_backend_tensor_set(in_.last, last.data(), 0, last.size() * sizeof(int32_t));
        runner_.compute();

        const size_t V = (size_t) m_.hp.n_vocab;
        std::vector<float> logits(V * parts.size());
        ggml_backend_tensor_get(in_.logits, logits.data(), 0, logits.size() * sizeof(float));
        std::vector<float> h;
        if (want_hidden) {
            h.resize((size_t) (E * row));
            ggml_backend_tensor_get(in_.hidden, h.data(), 0, h.size() * sizeof(float));
        }
        compute_ms = ms_since(t0);
        for (size_t i = 0; i < parts.size(); ++i) {
            LlmBatchPart & p = *parts[i];
            p.ctx->commit_part(p, logits.data() + i * V, want_hidden ? h.data() + (size_t) (row0[i] * E) : nullptr);
        }
        shared_parts = (int64_t) n_shared;
    } catch (...) {
        for (LlmBatchPart * p : parts) p->ctx->abort_part(*p);
        throw;
    }
}

} // namespace minicpm
