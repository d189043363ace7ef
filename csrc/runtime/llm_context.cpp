#include "llm_context.h"

#include "core/log.h"

#include "ggml-backend.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace minicpm {

namespace {

// Attended cells are rounded up to this (masked): fewer distinct graph shapes.
constexpr int64_t kKvPad = 256;
// Forwards of at most this many tokens keep their graphs (up to kCachedGraphs shapes) besides the
// main graph: a duplex unit cycles through three such shapes, a text turn through one.
constexpr int64_t kCachedGraphTokens = 16;
constexpr size_t  kCachedGraphs = 3;

ggml_type pick_kv_type(const SessionParams & p, const LlmModel & m) {
    if (p.kv_type == "auto") return m.all_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    if (p.kv_type == "f16") return GGML_TYPE_F16;
    if (p.kv_type == "f32") return GGML_TYPE_F32;
    fail(ErrorKind::InvalidArgument, "kv_type must be 'auto', 'f16' or 'f32', got '" + p.kv_type + "'");
}

bool pick_flash(const SessionParams & p, ggml_type kv_type) {
    bool flash;
    if (p.flash_attn == "auto") flash = kv_type == GGML_TYPE_F16;
    else if (p.flash_attn == "on") flash = true;
    else if (p.flash_attn == "off") flash = false;
    else fail(ErrorKind::InvalidArgument, "flash_attn must be 'auto', 'on' or 'off', got '" + p.flash_attn + "'");
    if (flash && kv_type != GGML_TYPE_F16) fail(ErrorKind::InvalidArgument, "flash_attn needs kv_type f16");
    return flash;
}

const SessionParams & checked(const SessionParams & p) {
    if (p.n_ctx <= 0) fail(ErrorKind::InvalidArgument, "n_ctx must be > 0, got " + std::to_string(p.n_ctx));
    if (p.n_batch <= 0) fail(ErrorKind::InvalidArgument, "n_batch must be > 0, got " + std::to_string(p.n_batch));
    return p;
}

std::string out_of_range(int32_t t, int64_t n_vocab) {
    return "token id " + std::to_string(t) + " out of range [0, " + std::to_string(n_vocab) + ")";
}

} // namespace

PendingRun flatten_segments(const std::vector<PromptSegment> & segs, const LlmHparams & hp) {
    PendingRun run;
    for (const auto & seg : segs) {
        if (!seg.media) {
            for (int32_t t : seg.tokens) {
                if (t < 0 || t >= hp.n_vocab) fail(ErrorKind::InvalidArgument, out_of_range(t, hp.n_vocab));
            }
            run.tokens.insert(run.tokens.end(), seg.tokens.begin(), seg.tokens.end());
            run.tags.insert(run.tags.end(), seg.tokens.size(), 0);
            run.refs.resize(run.tokens.size());
            continue;
        }
        const ImageChunk & c = *seg.media;
        if (c.n_embd != hp.n_embd || c.embeddings.size() != c.embed_pos.size() * (size_t) hp.n_embd) {
            fail(ErrorKind::InvalidArgument, "media embeddings of width " + std::to_string(c.n_embd) +
                                                 " do not match the LLM width " + std::to_string(hp.n_embd));
        }
        for (int32_t t : c.tokens) {
            if (t < 0 || t >= hp.n_vocab) fail(ErrorKind::InvalidArgument, out_of_range(t, hp.n_vocab));
        }
        const size_t base = run.tokens.size();
        run.tokens.insert(run.tokens.end(), c.tokens.begin(), c.tokens.end());
        run.tags.insert(run.tags.end(), c.tokens.size(), 0);
        run.refs.resize(run.tokens.size());
        for (size_t j = 0; j < c.embed_pos.size(); ++j) {
            const int32_t p = c.embed_pos[j];
            if (p < 0 || (size_t) p >= c.tokens.size()) fail(ErrorKind::InvalidArgument, "media embedding position out of range");
            // A non-zero tag per row, from the content hash, so that context reuse compares images too.
            run.tags[base + (size_t) p] = (c.hash ^ (0x9e3779b97f4a7c15ull * (j + 1))) | 1ull;
            run.refs[base + (size_t) p] = {seg.media, (int32_t) j};
        }
    }
    return run;
}

LlmContext::LlmContext(const LlmModel & model, const ComputeBackends & backends, const SessionParams & params,
                       LlmBatcher * batcher)
    : m_(model), params_(checked(params)), runner_("llm", backends, llm_graph_max_nodes(model.hp)),
      observer_("llm", params.debug), batcher_(batcher) {
    static std::atomic<uint64_t> next_uid{1};
    uid_ = next_uid.fetch_add(1);
    if (m_.hp.n_ctx_train > 0 && params_.n_ctx > m_.hp.n_ctx_train) {
        MINICPM_LOG_WARN("n_ctx %d exceeds the model's training context %lld", params_.n_ctx, (long long) m_.hp.n_ctx_train);
    }
    const ggml_type kv_type = pick_kv_type(params_, m_);
    flash_attn_ = pick_flash(params_, kv_type);
    params_.n_batch = std::min(params_.n_batch, params_.n_ctx);
    if (batcher_) lease_ = batcher_->lease_cache(params_.n_ctx, kv_type);
    if (lease_) kv_.init(lease_->tensors(), params_.n_ctx);
    else kv_.init(m_.hp, params_.n_ctx, kv_type, runner_);
    try {
        runner_.allocate_state();
    } catch (const Error & e) {
        fail(ErrorKind::Backend, std::string(e.what()) + "; try a smaller n_ctx");
    }
    // Reserve once with the worst case: a full micro-batch attending the whole context.
    LlmGraphParams gp;
    gp.n_tokens = params_.n_batch;
    gp.n_kv = params_.n_ctx;
    gp.flash_attn = flash_attn_;
    runner_.reserve([&](ggml_context * ctx, ggml_cgraph * gf) {
        LlmGraphInputs in;
        build_llm_graph(ctx, gf, m_, kv_, gp, in);
    }, "try a smaller n_ctx or n_batch");
    // Small forwards (decode steps, a duplex unit, its terminators) keep graphs of their own.
    runner_.set_graph_cache(kCachedGraphs);
    observer_.attach(runner_);
    logits_.resize((size_t) m_.hp.n_vocab);
}

void LlmContext::check_fits(size_t extra, const char * what) const {
    if (size() + extra > (size_t) kv_.n_cells) {
        fail(ErrorKind::ContextFull, std::string(what) + " of " + std::to_string(extra) + " tokens does not fit: " +
                                         std::to_string(size()) + " already in a context of " +
                                         std::to_string(kv_.n_cells) + " (raise n_ctx or reset the session)");
    }
}

void LlmContext::append(PendingRun && run, size_t from) {
    int32_t next = pos_.empty() ? 0 : pos_.back() + 1;
    for (size_t i = from; i < run.tokens.size(); ++i) {
        tokens_.push_back(run.tokens[i]);
        tags_.push_back(run.tags[i]);
        pos_.push_back(next++);
        cells_.push_back(-1);
        refs_.push_back(std::move(run.refs[i]));
        hidden_rows_.emplace_back();
        logit_rows_.emplace_back();
    }
}

void LlmContext::append_token(int32_t token) {
    PendingRun run;
    run.tokens = {token};
    run.tags = {0};
    run.refs.resize(1);
    append(std::move(run));
}

void LlmContext::erase_entries(size_t first, size_t last) {
    for (size_t i = first; i < last; ++i) {
        if (cells_[i] >= 0) kv_.release(cells_[i]);
    }
    auto cut = [&](auto & v) { v.erase(v.begin() + (std::ptrdiff_t) first, v.begin() + (std::ptrdiff_t) last); };
    cut(tokens_);
    cut(tags_);
    cut(pos_);
    cut(cells_);
    cut(refs_);
    cut(hidden_rows_);
    cut(logit_rows_);
    const size_t evaluated_removed = first < n_eval_ ? std::min(last, n_eval_) - first : 0;
    n_eval_ -= evaluated_removed;
}

void LlmContext::truncate(size_t n) {
    if (n >= size()) return;
    erase_entries(n, size());
    logits_valid_ = false;
}

void LlmContext::remove(size_t first, size_t last) {
    if (first > last || last > size()) {
        fail(ErrorKind::InvalidArgument, "remove range [" + std::to_string(first) + ", " + std::to_string(last) +
                                             ") is outside the context of " + std::to_string(size()) + " entries");
    }
    if (first == last) return;
    // The logits stay those of the last evaluated entry unless it is removed.
    const bool last_removed = n_eval_ > 0 && last >= n_eval_ && first < n_eval_;
    erase_entries(first, last);
    if (last_removed) logits_valid_ = false;
}

void LlmContext::insert_entries(size_t at, const std::vector<int32_t> & tokens, int32_t first_pos) {
    const auto k = (std::ptrdiff_t) tokens.size();
    const auto w = (std::ptrdiff_t) at;
    tokens_.insert(tokens_.begin() + w, tokens.begin(), tokens.end());
    tags_.insert(tags_.begin() + w, (size_t) k, 0);
    std::vector<int32_t> pos((size_t) k);
    for (std::ptrdiff_t j = 0; j < k; ++j) pos[(size_t) j] = first_pos + (int32_t) j;
    pos_.insert(pos_.begin() + w, pos.begin(), pos.end());
    cells_.insert(cells_.begin() + w, (size_t) k, -1);
    refs_.insert(refs_.begin() + w, (size_t) k, EmbRef{});
    hidden_rows_.insert(hidden_rows_.begin() + w, (size_t) k, std::vector<float>{});
    logit_rows_.insert(logit_rows_.begin() + w, (size_t) k, std::vector<float>{});
}

void LlmContext::shift_keys(const std::vector<int64_t> & cells, const std::vector<int32_t> & deltas) {
    if (cells.empty()) return;
    const auto [lo, hi] = std::minmax_element(cells.begin(), cells.end());
    const int64_t c0 = *lo, n = *hi - *lo + 1;
    std::vector<int32_t> shift((size_t) n, 0);
    for (size_t i = 0; i < cells.size(); ++i) shift[(size_t) (cells[i] - c0)] = deltas[i];
    // A graph of its own (key tagged -1, never an LLM forward key); the next forward rebuilds.
    runner_.prepare({-1, c0, n}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        shift_in_ = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
        ggml_set_name(shift_in_, "k_shift_pos");
        ggml_set_input(shift_in_);
        build_llm_kshift_graph(ctx, gf, m_, kv_, c0, n, shift_in_);
    });
    ggml_backend_tensor_set(shift_in_, shift.data(), 0, shift.size() * sizeof(int32_t));
    runner_.compute();
    observer_.finish();
}

size_t LlmContext::replace(size_t first, size_t last, const std::vector<int32_t> & tokens) {
    if (first > last || last > size()) {
        fail(ErrorKind::InvalidArgument, "replace range [" + std::to_string(first) + ", " + std::to_string(last) +
                                             ") is outside the context of " + std::to_string(size()) + " entries");
    }
    if (n_eval_ != size()) fail(ErrorKind::Internal, "replace() with pending entries");
    for (int32_t t : tokens) {
        if (t < 0 || t >= m_.hp.n_vocab) fail(ErrorKind::InvalidArgument, out_of_range(t, m_.hp.n_vocab));
    }
    if (size() - (last - first) + tokens.size() > (size_t) kv_.n_cells) {
        fail(ErrorKind::ContextFull, "replacing " + std::to_string(last - first) + " entries with " +
                                         std::to_string(tokens.size()) + " tokens does not fit a context of " +
                                         std::to_string(kv_.n_cells));
    }
    const bool tail_was_last = last == size();
    erase_entries(first, last);
    const int32_t base = first > 0 ? pos_[first - 1] + 1 : 0;
    const size_t  k = tokens.size();

    // The entries after the range follow the new tokens: base + k, base + k + 1, ...
    std::vector<int64_t> cells;
    std::vector<int32_t> deltas;
    for (size_t i = first; i < size(); ++i) {
        const int32_t want = base + (int32_t) (k + (i - first));
        if (want == pos_[i]) continue;
        cells.push_back(cells_[i]);
        deltas.push_back(want - pos_[i]);
    }
    shift_keys(cells, deltas);
    for (size_t i = first; i < size(); ++i) {
        const int32_t want = base + (int32_t) (k + (i - first));
        pos_[i] = want;
        kv_.cell_pos[(size_t) cells_[i]] = want;
    }
    if (k == 0) {
        if (tail_was_last) logits_valid_ = false;
        return 0;
    }

    // The new tokens, evaluated in place: their positions are below the moved entries', so the
    // mask keeps them from attending those.
    insert_entries(first, tokens, base);
    size_t done = 0;
    try {
        while (done < k) {
            const int64_t n = std::min<int64_t>(params_.n_batch, (int64_t) (k - done));
            eval_batch(first + done, n);
            done += (size_t) n;
        }
    } catch (...) {
        for (size_t i = first; i < first + k; ++i) {
            if (cells_[i] >= 0) kv_.release(cells_[i]);
        }
        auto cut = [&](auto & v) { v.erase(v.begin() + (std::ptrdiff_t) first, v.begin() + (std::ptrdiff_t) (first + k)); };
        cut(tokens_);
        cut(tags_);
        cut(pos_);
        cut(cells_);
        cut(refs_);
        cut(hidden_rows_);
        cut(logit_rows_);
        logits_valid_ = false;
        throw;
    }
    n_eval_ = size();
    // The logits are those of the last new token: the last entry's only when nothing follows.
    logits_valid_ = first + k == size();
    return k;
}

size_t LlmContext::eval_pending() {
    const size_t start = n_eval_;
    while (n_eval_ < size()) {
        const int64_t n = std::min<int64_t>(params_.n_batch, (int64_t) (size() - n_eval_));
        eval_batch(n_eval_, n);
        for (size_t i = n_eval_; i < n_eval_ + (size_t) n; ++i) refs_[i].chunk.reset();   // rows are in the cache now
        n_eval_ += (size_t) n;
    }
    return n_eval_ - start;
}

// Embedding rows [n_embd, n] for entries [first, first + n): image rows from their chunk,
// token rows gathered from token_embd (kept in host memory) and converted to F32.
void LlmContext::fill_embeddings(size_t first, int64_t n, std::vector<float> & out) const {
    const int64_t E = m_.hp.n_embd;
    out.resize((size_t) (E * n));
    const ggml_tensor * te = m_.w.tok_embd;
    const auto * traits = ggml_get_type_traits(te->type);
    for (int64_t i = 0; i < n; ++i) {
        float * dst = out.data() + i * E;
        const EmbRef & r = refs_[first + (size_t) i];
        if (r.chunk) {
            std::memcpy(dst, r.chunk->embeddings.data() + (size_t) r.row * E, (size_t) E * sizeof(float));
            continue;
        }
        const char * row = (const char *) m_.tok_embd_host + (size_t) tokens_[first + (size_t) i] * te->nb[1];
        if (te->type == GGML_TYPE_F32) std::memcpy(dst, row, (size_t) E * sizeof(float));
        else traits->to_float(row, dst, E);
    }
}

// Throws for an entry of [first, first + n) whose token id is outside the vocabulary; returns
// whether any of them takes its row from an embedding chunk.
bool LlmContext::check_entries(size_t first, int64_t n) const {
    bool use_embd = false;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t t = tokens_[first + (size_t) i];
        if (t < 0 || t >= m_.hp.n_vocab) fail(ErrorKind::InvalidArgument, out_of_range(t, m_.hp.n_vocab));
        use_embd = use_embd || refs_[first + (size_t) i].chunk != nullptr;
    }
    return use_embd;
}

// The cells a graph attends: the used extent rounded up to kKvPad (fewer distinct shapes).
int64_t LlmContext::attended_cells() const {
    return std::min<int64_t>(kv_.n_cells, ((kv_.extent() + kKvPad - 1) / kKvPad) * kKvPad);
}

void LlmContext::begin_part(size_t first, int64_t n, LlmBatchPart & part) {
    check_entries(first, n);
    part = LlmBatchPart{};
    part.ctx = this;
    part.first = first;
    part.n = n;
    part.flash_attn = flash_attn_;
    part.hidden = capture_hidden_;
    part.pos.assign(pos_.begin() + (std::ptrdiff_t) first, pos_.begin() + (std::ptrdiff_t) first + n);
    fill_embeddings(first, n, part.embd);
    part.cells = kv_.assign(part.pos);
    part.n_kv = attended_cells();
    part.pool_base = lease_ ? lease_->base() : -1;
    kv_.build_mask(part.pos, part.n_kv, part.mask);
}

void LlmContext::commit_part(const LlmBatchPart & part, const float * logits, const float * hidden) {
    const size_t V = (size_t) m_.hp.n_vocab, E = (size_t) m_.hp.n_embd;
    std::copy(logits, logits + V, logits_.begin());
    if (part.hidden && hidden) {
        for (int64_t i = 0; i < part.n; ++i) {
            hidden_rows_[part.first + (size_t) i].assign(hidden + (size_t) i * E, hidden + (size_t) (i + 1) * E);
        }
    }
    for (int64_t i = 0; i < part.n; ++i) cells_[part.first + (size_t) i] = part.cells[(size_t) i];
    logits_valid_ = true;
}

void LlmContext::abort_part(const LlmBatchPart & part) {
    for (int64_t c : part.cells) kv_.release(c);
}

void LlmContext::eval_batch(size_t first, int64_t n_tokens) {
    if (batcher_ && !capture_logits_ && n_tokens <= LlmBatcher::kMaxRows) {
        LlmBatchPart part;
        begin_part(first, n_tokens, part);
        batcher_->eval(part);   // commits, or gives the cells back and throws
        return;
    }
    const bool use_embd = check_entries(first, n_tokens);
    const std::vector<int32_t> pos(pos_.begin() + (std::ptrdiff_t) first, pos_.begin() + (std::ptrdiff_t) first + n_tokens);
    const std::vector<int64_t> cells = kv_.assign(pos);
    try {
        LlmGraphParams gp;
        gp.n_tokens = n_tokens;
        gp.n_kv = attended_cells();
        gp.flash_attn = flash_attn_;
        gp.use_embd = use_embd;
        gp.hidden = capture_hidden_;
        gp.logits_all = capture_logits_;
        // Steps of one shape (one token, same rounded n_kv) reuse the allocated graph; small
        // shapes that alternate (a duplex unit's prefill, decode and terminator) each keep theirs.
        slot_in_.prepare(runner_, gp.key(), [&](ggml_context * ctx, ggml_cgraph * gf) { build_llm_graph(ctx, gf, m_, kv_, gp, in_); },
                         n_tokens <= kCachedGraphTokens, in_);

        if (use_embd) {
            std::vector<float> embd;
            fill_embeddings(first, n_tokens, embd);
            ggml_backend_tensor_set(in_.embd, embd.data(), 0, embd.size() * sizeof(float));
        } else {
            ggml_backend_tensor_set(in_.tokens, tokens_.data() + first, 0, (size_t) n_tokens * sizeof(int32_t));
        }
        ggml_backend_tensor_set(in_.pos, pos.data(), 0, pos.size() * sizeof(int32_t));
        ggml_backend_tensor_set(in_.kv_idx, cells.data(), 0, cells.size() * sizeof(int64_t));
        if (in_.kq_mask->type == GGML_TYPE_F16) {
            std::vector<uint16_t> m16;
            kv_.build_mask_f16(pos, gp.n_kv, m16);
            ggml_backend_tensor_set(in_.kq_mask, m16.data(), 0, m16.size() * sizeof(uint16_t));
        } else {
            std::vector<float> mask;
            kv_.build_mask(pos, gp.n_kv, mask);
            ggml_backend_tensor_set(in_.kq_mask, mask.data(), 0, mask.size() * sizeof(float));
        }
        runner_.compute();
        observer_.finish();

        const size_t V = (size_t) m_.hp.n_vocab, E = (size_t) m_.hp.n_embd;
        if (gp.logits_all) {
            std::vector<float> all(V * (size_t) n_tokens);
            ggml_backend_tensor_get(in_.logits, all.data(), 0, all.size() * sizeof(float));
            for (int64_t i = 0; i < n_tokens; ++i) {
                logit_rows_[first + (size_t) i].assign(all.begin() + (std::ptrdiff_t) (i * V), all.begin() + (std::ptrdiff_t) ((i + 1) * V));
            }
            std::copy(all.end() - (std::ptrdiff_t) V, all.end(), logits_.begin());
        } else {
            ggml_backend_tensor_get(in_.logits, logits_.data(), 0, V * sizeof(float));
        }
        if (gp.hidden) {
            std::vector<float> h(E * (size_t) n_tokens);
            ggml_backend_tensor_get(in_.hidden, h.data(), 0, h.size() * sizeof(float));
            for (int64_t i = 0; i < n_tokens; ++i) {
                hidden_rows_[first + (size_t) i].assign(h.begin() + (std::ptrdiff_t) (i * E), h.begin() + (std::ptrdiff_t) ((i + 1) * E));
            }
        }
    } catch (...) {
        for (int64_t c : cells) kv_.release(c);
        throw;
    }
    for (int64_t i = 0; i < n_tokens; ++i) cells_[first + (size_t) i] = cells[(size_t) i];
    logits_valid_ = true;
}

std::vector<float> LlmContext::captured_hidden(size_t first, size_t n) const {
    if (first + n > size()) fail(ErrorKind::InvalidArgument, "hidden-state range is outside the context");
    std::vector<float> out;
    out.reserve(n * (size_t) m_.hp.n_embd);
    for (size_t i = first; i < first + n; ++i) {
        if (hidden_rows_[i].empty()) {
            fail(ErrorKind::InvalidArgument, "no hidden state for context position " + std::to_string(i) +
                                                 ": it was not evaluated with hidden-state capture on");
        }
        out.insert(out.end(), hidden_rows_[i].begin(), hidden_rows_[i].end());
    }
    return out;
}

std::vector<float> LlmContext::captured_logits(size_t first, size_t n) const {
    if (first + n > size()) fail(ErrorKind::InvalidArgument, "logit range is outside the context");
    std::vector<float> out;
    out.reserve(n * (size_t) m_.hp.n_vocab);
    for (size_t i = first; i < first + n; ++i) {
        if (logit_rows_[i].empty()) {
            fail(ErrorKind::InvalidArgument, "no logits for context position " + std::to_string(i) +
                                                 ": it was not evaluated with logit capture on");
        }
        out.insert(out.end(), logit_rows_[i].begin(), logit_rows_[i].end());
    }
    return out;
}

} // namespace minicpm
