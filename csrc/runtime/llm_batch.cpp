#include "llm_batch.h"

#include "llm_context.h"

#include "core/error.h"

#include "ggml-backend.h"

#include <algorithm>
#include <chrono>

namespace minicpm {

LlmBatcher::LlmBatcher(const LlmModel & model, const Devices & devices, int n_threads)
    : m_(model), backends_(devices, n_threads), runner_("llm-batch", backends_, llm_batch_graph_max_nodes(model.hp, kMaxParts)) {
    // Duplex units alternate between a prefill and decode steps: several shapes stay built.
    runner_.set_graph_cache(4);
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
        try {
            run(batch, rebuilt, build_ms, compute_ms);
        } catch (...) {
            err = std::current_exception();
        }
        lk.lock();
        stats_.rebuilds += rebuilt ? 1 : 0;
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

void LlmBatcher::run(const std::vector<Request *> & batch, bool & rebuilt, double & build_ms, double & compute_ms) {
    // In a fixed order (by context), so that the same sessions with the same shapes reuse the
    // allocated graph.
    std::vector<LlmBatchPart *> parts;
    for (Request * r : batch) parts.push_back(r->part);
    std::sort(parts.begin(), parts.end(), [](const LlmBatchPart * a, const LlmBatchPart * b) { return a->ctx->uid() < b->ctx->uid(); });
    const bool flash = parts.front()->flash_attn;
    bool hidden = false;
    for (const LlmBatchPart * p : parts) hidden = hidden || p->hidden;

    std::vector<LlmBatchSeq> seqs;
    GraphKey key{flash, hidden};
    for (const LlmBatchPart * p : parts) {
        seqs.push_back(LlmBatchSeq{&p->ctx->kv_tensors(), p->n, p->n_kv});
        key.push_back((int64_t) p->ctx->uid());
        key.push_back(p->n);
        key.push_back(p->n_kv);
    }
    try {
        auto t0 = std::chrono::steady_clock::now();
        int64_t rows = 0;
        for (const LlmBatchPart * p : parts) rows += p->n;
        rebuilt = slot_in_.prepare(runner_, key, [&](ggml_context * ctx, ggml_cgraph * gf) {
            build_llm_batch_graph(ctx, gf, m_, seqs, flash, hidden, in_);
        }, rows <= kCachedGraphRows, in_);
        build_ms = ms_since(t0);
        t0 = std::chrono::steady_clock::now();
        const int64_t E = m_.hp.n_embd;
        std::vector<float> embd;
        std::vector<int32_t> pos, last;
        int64_t row = 0;
        for (size_t i = 0; i < parts.size(); ++i) {
            const LlmBatchPart & p = *parts[i];
            embd.insert(embd.end(), p.embd.begin(), p.embd.end());
            pos.insert(pos.end(), p.pos.begin(), p.pos.end());
            row += p.n;
            last.push_back((int32_t) (row - 1));
            ggml_backend_tensor_set(in_.kv_idx[i], p.cells.data(), 0, p.cells.size() * sizeof(int64_t));
            if (in_.kq_mask[i]->type == GGML_TYPE_F16) {
                std::vector<ggml_fp16_t> m16(p.mask.size());
                ggml_fp32_to_fp16_row(p.mask.data(), m16.data(), (int64_t) p.mask.size());
                ggml_backend_tensor_set(in_.kq_mask[i], m16.data(), 0, m16.size() * sizeof(ggml_fp16_t));
            } else {
                ggml_backend_tensor_set(in_.kq_mask[i], p.mask.data(), 0, p.mask.size() * sizeof(float));
            }
        }
        ggml_backend_tensor_set(in_.embd, embd.data(), 0, embd.size() * sizeof(float));
        ggml_backend_tensor_set(in_.pos, pos.data(), 0, pos.size() * sizeof(int32_t));
        ggml_backend_tensor_set(in_.last, last.data(), 0, last.size() * sizeof(int32_t));
        runner_.compute();

        const size_t V = (size_t) m_.hp.n_vocab;
        std::vector<float> logits(V * parts.size());
        ggml_backend_tensor_get(in_.logits, logits.data(), 0, logits.size() * sizeof(float));
        std::vector<float> h;
        if (hidden) {
            h.resize((size_t) (E * row));
            ggml_backend_tensor_get(in_.hidden, h.data(), 0, h.size() * sizeof(float));
        }
        compute_ms = ms_since(t0);
        int64_t r0 = 0;
        for (size_t i = 0; i < parts.size(); ++i) {
            LlmBatchPart & p = *parts[i];
            p.ctx->commit_part(p, logits.data() + i * V, hidden ? h.data() + (size_t) (r0 * E) : nullptr);
            r0 += p.n;
        }
    } catch (...) {
        for (LlmBatchPart * p : parts) p->ctx->abort_part(*p);
        throw;
    }
}

} // namespace minicpm
