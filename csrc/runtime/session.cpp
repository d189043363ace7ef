#include "model_impl.h"

#include "core/log.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

namespace minicpm {

namespace {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

constexpr int64_t KV_PAD = 256;   // attended cells are rounded up to this (masked): fewer distinct graph shapes

} // namespace

struct Session::Impl {
    std::shared_ptr<Model> model;
    Model::Impl &          m;
    SessionParams          params;
    KvCache                kv;
    bool                   flash_attn = false;
    ggml_backend_sched_t   sched = nullptr;
    std::vector<uint8_t>   meta;        // graph metadata arena
    int                    max_nodes = 0;
    ggml_context *         graph_ctx = nullptr;   // the last built graph, kept for reuse
    ggml_cgraph *          graph = nullptr;
    LlmGraphInputs         gin;
    LlmGraphParams         last_gp;

    // The context, one entry per position: evaluated [0, n_eval), then pending.
    std::vector<int32_t> tokens;
    std::vector<uint64_t> tags;         // 0 for a token; else identifies the embedding row (image)
    struct EmbRef {
        std::shared_ptr<const ImageChunk> chunk;
        int32_t                           row = -1;
    };
    std::vector<EmbRef>  refs;          // embedding rows of pending image positions
    size_t               n_eval = 0;    // tokens[0, n_eval) are in the KV cache
    std::vector<float>   logits;
    bool                 logits_valid = false;
    const void *         tok_embd_host = nullptr;   // token_embd rows in the mapped file (image prompts)
    std::mt19937_64      rng;
    Timings              timings;

    // generation state
    bool             gen_active = false;
    bool             gen_done = false;
    GenerationParams gen;
    int              n_generated = 0;
    std::unique_ptr<StreamDecoder> decoder;
    std::string      held;              // text not yet returned (may be the start of a stop string)

    Impl(std::shared_ptr<Model> mdl, const SessionParams & p) : model(std::move(mdl)), m(model->impl()), params(p) {}
    ~Impl() {
        drop_graph();
        if (sched) ggml_backend_sched_free(sched);
    }

    void init() {
        if (params.n_ctx <= 0) fail(ErrorKind::InvalidArgument, "n_ctx must be > 0, got " + std::to_string(params.n_ctx));
        if (params.n_batch <= 0) fail(ErrorKind::InvalidArgument, "n_batch must be > 0, got " + std::to_string(params.n_batch));
        if (m.hp.n_ctx_train > 0 && params.n_ctx > m.hp.n_ctx_train) {
            MINICPM_LOG_WARN("n_ctx %d exceeds the model's training context %lld", params.n_ctx, (long long) m.hp.n_ctx_train);
        }
        ggml_type kv_type;
        if (params.kv_type == "auto") kv_type = m.all_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
        else if (params.kv_type == "f16") kv_type = GGML_TYPE_F16;
        else if (params.kv_type == "f32") kv_type = GGML_TYPE_F32;
        else fail(ErrorKind::InvalidArgument, "kv_type must be 'auto', 'f16' or 'f32', got '" + params.kv_type + "'");
        if (params.flash_attn == "auto") flash_attn = kv_type == GGML_TYPE_F16;
        else if (params.flash_attn == "on") flash_attn = true;
        else if (params.flash_attn == "off") flash_attn = false;
        else fail(ErrorKind::InvalidArgument, "flash_attn must be 'auto', 'on' or 'off', got '" + params.flash_attn + "'");
        if (flash_attn && kv_type != GGML_TYPE_F16) {
            fail(ErrorKind::InvalidArgument, "flash_attn needs kv_type f16");
        }

        kv.init(m.hp, params.n_ctx, kv_type, *m.backends);
        tok_embd_host = m.store->mapped_data(m.weights.tok_embd);
        params.n_batch = std::min(params.n_batch, params.n_ctx);

        max_nodes = (int) std::max<int64_t>(2048, m.hp.n_layer * 48 + 64);
        meta.resize(ggml_tensor_overhead() * (size_t) max_nodes + ggml_graph_overhead_custom((size_t) max_nodes, false));

        auto backends = m.backends->all();
        sched = ggml_backend_sched_new(backends.data(), nullptr, (int) backends.size(), (size_t) max_nodes, false, true);
        if (!sched) fail(ErrorKind::Backend, "cannot create the graph scheduler");
        // Reserve compute memory once with the worst case: a full batch attending the whole context.
        {
            LlmGraphInputs in;
            ggml_context * ctx = new_graph_ctx();
            LlmGraphParams gp;
            gp.n_tokens = params.n_batch;
            gp.n_past = 0;
            gp.n_kv = params.n_ctx;
            gp.flash_attn = flash_attn;
            ggml_cgraph * gf = build_llm_graph(ctx, m.hp, m.weights, kv, gp, in, max_nodes);
            bool ok = ggml_backend_sched_reserve(sched, gf);
            ggml_free(ctx);
            if (!ok) fail(ErrorKind::Backend, "cannot allocate compute buffers on " + m.backends->main_name() +
                                                  "; try a smaller n_ctx or n_batch");
        }
        if (params.seed) rng.seed(*params.seed);
        else rng.seed(std::random_device{}());
        logits.resize((size_t) m.hp.n_vocab);
    }

    void drop_graph() {
        if (graph_ctx) ggml_free(graph_ctx);
        graph_ctx = nullptr;
        graph = nullptr;
    }

    ggml_context * new_graph_ctx() {
        ggml_init_params ip = {meta.size(), meta.data(), true};
        return ggml_init(ip);
    }

    // Evaluates tokens[n_eval, end) in micro-batches; the logits of the last one are kept.
    void eval_pending() {
        if (n_eval >= tokens.size()) return;
        const double t0 = now_ms();
        const size_t n_start = n_eval;
        while (n_eval < tokens.size()) {
            const int64_t n_tokens = std::min<int64_t>(params.n_batch, (int64_t) (tokens.size() - n_eval));
            eval_batch((size_t) n_eval, n_tokens);
            for (size_t i = n_eval; i < n_eval + (size_t) n_tokens; ++i) refs[i].chunk.reset();   // rows are in the KV cache now
            n_eval += (size_t) n_tokens;
        }
        const double dt = now_ms() - t0;
        const size_t n = n_eval - n_start;
        if (n == 1 && gen_active) {
            timings.decode_ms += dt;
            timings.n_decode += 1;
        } else {
            timings.prefill_ms += dt;
            timings.n_prefill += (int64_t) n;
        }
    }

    // Embedding rows [n_embd, n] for positions [first, first + n): image rows from their chunk,
    // token rows gathered from token_embd (kept in host memory) and converted to F32.
    void fill_embeddings(size_t first, int64_t n, std::vector<float> & out) const {
        const int64_t E = m.hp.n_embd;
        out.resize((size_t) (E * n));
        const ggml_tensor * te = m.weights.tok_embd;
        const auto * traits = ggml_get_type_traits(te->type);
        for (int64_t i = 0; i < n; ++i) {
            float * dst = out.data() + i * E;
            const EmbRef & r = refs[first + (size_t) i];
            if (r.chunk) {
                std::memcpy(dst, r.chunk->embeddings.data() + (size_t) r.row * E, (size_t) E * sizeof(float));
                continue;
            }
            const char * row = (const char *) tok_embd_host + (size_t) tokens[first + (size_t) i] * te->nb[1];
            if (te->type == GGML_TYPE_F32) {
                std::memcpy(dst, row, (size_t) E * sizeof(float));
            } else {
                traits->to_float(row, dst, E);
            }
        }
    }

    void eval_batch(size_t first, int64_t n_tokens) {
        const int32_t * toks = tokens.data() + first;
        const int64_t n_past = (int64_t) first;
        bool use_embd = false;
        for (int64_t i = 0; i < n_tokens; ++i) {
            if (toks[i] < 0 || toks[i] >= m.hp.n_vocab) {
                fail(ErrorKind::InvalidArgument, "token id " + std::to_string(toks[i]) + " out of range [0, " +
                                                     std::to_string(m.hp.n_vocab) + ")");
            }
            use_embd = use_embd || refs[first + (size_t) i].chunk != nullptr;
        }
        LlmGraphParams gp;
        gp.n_tokens = n_tokens;
        gp.n_past = n_past;
        gp.n_kv = std::min<int64_t>(params.n_ctx, ((n_past + n_tokens + KV_PAD - 1) / KV_PAD) * KV_PAD);
        gp.flash_attn = flash_attn;
        gp.use_embd = use_embd;

        // Rebuild the graph only when its shape changes: consecutive decode steps (same batch size,
        // same rounded n_kv) reuse the allocated graph and only refresh the inputs.
        const bool same = graph && last_gp.n_tokens == gp.n_tokens && last_gp.n_kv == gp.n_kv &&
                          last_gp.flash_attn == gp.flash_attn && last_gp.use_embd == gp.use_embd &&
                          last_gp.all_logits == gp.all_logits;
        if (!same) {
            drop_graph();
            ggml_backend_sched_reset(sched);
            graph_ctx = new_graph_ctx();
            graph = build_llm_graph(graph_ctx, m.hp, m.weights, kv, gp, gin, max_nodes);
            if (!ggml_backend_sched_alloc_graph(sched, graph)) {
                drop_graph();
                fail(ErrorKind::Backend, "cannot allocate the compute graph");
            }
            last_gp = gp;
        }
        LlmGraphInputs & in = gin;
        if (use_embd) {
            std::vector<float> embd;
            fill_embeddings(first, n_tokens, embd);
            ggml_backend_tensor_set(in.embd, embd.data(), 0, embd.size() * sizeof(float));
        } else {
            ggml_backend_tensor_set(in.tokens, toks, 0, (size_t) n_tokens * sizeof(int32_t));
        }
        std::vector<int32_t> pos((size_t) n_tokens);
        for (int64_t i = 0; i < n_tokens; ++i) pos[(size_t) i] = (int32_t) (n_past + i);
        ggml_backend_tensor_set(in.pos, pos.data(), 0, pos.size() * sizeof(int32_t));
        std::vector<int64_t> cells((size_t) n_tokens);
        for (int64_t i = 0; i < n_tokens; ++i) cells[(size_t) i] = n_past + i;
        ggml_backend_tensor_set(in.kv_idx, cells.data(), 0, cells.size() * sizeof(int64_t));
        // Causal mask over cells [0, n_kv): cell j is visible to token i when j <= n_past + i.
        const int64_t n_kv = gp.n_kv;
        std::vector<float> mask((size_t) (n_kv * n_tokens));
        for (int64_t i = 0; i < n_tokens; ++i) {
            for (int64_t j = 0; j < n_kv; ++j) {
                mask[(size_t) (i * n_kv + j)] = j <= n_past + i ? 0.0f : -INFINITY;
            }
        }
        if (in.kq_mask->type == GGML_TYPE_F16) {
            std::vector<ggml_fp16_t> m16(mask.size());
            ggml_fp32_to_fp16_row(mask.data(), m16.data(), (int64_t) mask.size());
            ggml_backend_tensor_set(in.kq_mask, m16.data(), 0, m16.size() * sizeof(ggml_fp16_t));
        } else {
            ggml_backend_tensor_set(in.kq_mask, mask.data(), 0, mask.size() * sizeof(float));
        }
        ggml_status st = ggml_backend_sched_graph_compute(sched, graph);
        if (st != GGML_STATUS_SUCCESS) {
            drop_graph();
            fail(ErrorKind::Backend, "graph compute failed on " + m.backends->main_name());
        }
        ggml_backend_tensor_get(in.logits, logits.data(), 0, logits.size() * sizeof(float));
        logits_valid = true;
    }

    void flatten(const std::vector<PromptSegment> & segs, std::vector<int32_t> & toks, std::vector<uint64_t> & tg,
                 std::vector<EmbRef> & rf) const;

    void truncate(size_t n) {
        tokens.resize(std::min(n, tokens.size()));
        tags.resize(tokens.size());
        refs.resize(tokens.size());
        n_eval = std::min(n_eval, tokens.size());
        logits_valid = false;
    }

    // Appends positions (validated by flatten()) to the context as pending.
    void append(std::vector<int32_t> & toks, std::vector<uint64_t> & tg, std::vector<EmbRef> & rf, size_t from) {
        tokens.insert(tokens.end(), toks.begin() + (ptrdiff_t) from, toks.end());
        tags.insert(tags.end(), tg.begin() + (ptrdiff_t) from, tg.end());
        for (size_t i = from; i < rf.size(); ++i) refs.push_back(std::move(rf[i]));
    }

    void check_fits(size_t extra, const char * what) const {
        if (tokens.size() + extra > (size_t) params.n_ctx) {
            fail(ErrorKind::ContextFull, std::string(what) + " of " + std::to_string(extra) + " tokens does not fit: " +
                                             std::to_string(tokens.size()) + " already in a context of " +
                                             std::to_string(params.n_ctx) + " (raise n_ctx or reset the session)");
        }
    }

    std::string take_safe_text(bool final) {
        // Return held text except a tail that could still become a stop string.
        size_t keep = 0;
        if (!final) {
            for (const auto & s : gen.stop) {
                for (size_t len = std::min(s.size() - 1, held.size()); len > keep; --len) {
                    if (held.compare(held.size() - len, len, s, 0, len) == 0) {
                        keep = len;
                        break;
                    }
                }
            }
        }
        std::string out = held.substr(0, held.size() - keep);
        held.erase(0, held.size() - keep);
        return out;
    }
};

Session::Session(std::shared_ptr<Model> model, const SessionParams & params) {
    if (!model) fail(ErrorKind::InvalidArgument, "Session needs a loaded model");
    impl_ = std::make_unique<Impl>(std::move(model), params);
    impl_->init();
}

Session::~Session() = default;

// Flattens prompt segments into per-position tokens, tags and embedding references.
void Session::Impl::flatten(const std::vector<PromptSegment> & segs, std::vector<int32_t> & toks,
                            std::vector<uint64_t> & tg, std::vector<EmbRef> & rf) const {
    const int64_t n_embd = m.hp.n_embd, n_vocab = m.hp.n_vocab;
    for (const auto & seg : segs) {
        if (!seg.image) {
            for (int32_t t : seg.tokens) {
                if (t < 0 || t >= n_vocab) {
                    fail(ErrorKind::InvalidArgument, "token id " + std::to_string(t) + " out of range [0, " +
                                                         std::to_string(n_vocab) + ")");
                }
            }
            toks.insert(toks.end(), seg.tokens.begin(), seg.tokens.end());
            tg.insert(tg.end(), seg.tokens.size(), 0);
            rf.resize(toks.size());
            continue;
        }
        const ImageChunk & c = *seg.image;
        if (c.n_embd != n_embd || c.embeddings.size() != c.embed_pos.size() * (size_t) n_embd) {
            fail(ErrorKind::InvalidArgument, "image embeddings of width " + std::to_string(c.n_embd) +
                                                 " do not match the LLM width " + std::to_string(n_embd));
        }
        const size_t base = toks.size();
        toks.insert(toks.end(), c.tokens.begin(), c.tokens.end());
        tg.insert(tg.end(), c.tokens.size(), 0);
        rf.resize(toks.size());
        for (size_t j = 0; j < c.embed_pos.size(); ++j) {
            const int32_t p = c.embed_pos[j];
            if (p < 0 || (size_t) p >= c.tokens.size()) {
                fail(ErrorKind::InvalidArgument, "image embedding position out of range");
            }
            // A non-zero tag per row, from the content hash, so that context reuse compares images too.
            tg[base + (size_t) p] = (c.hash ^ (0x9e3779b97f4a7c15ull * (j + 1))) | 1ull;
            rf[base + (size_t) p] = {seg.image, (int32_t) j};
        }
    }
}

int Session::prefill(const std::vector<int32_t> & toks) {
    return prefill(std::vector<PromptSegment>{PromptSegment{toks, nullptr}});
}

int Session::prefill(const std::vector<PromptSegment> & segs) {
    auto & s = *impl_;
    std::vector<int32_t> toks;
    std::vector<uint64_t> tags;
    std::vector<Impl::EmbRef> refs;
    s.flatten(segs, toks, tags, refs);
    if (toks.empty()) return 0;
    s.check_fits(toks.size(), "prompt");
    s.gen_active = false;
    const size_t before = s.tokens.size();
    s.append(toks, tags, refs, 0);
    try {
        s.eval_pending();
    } catch (...) {
        s.truncate(before);   // leave the session as it was before the call
        throw;
    }
    return (int) toks.size();
}

int Session::sync(const std::vector<int32_t> & toks) {
    return sync(std::vector<PromptSegment>{PromptSegment{toks, nullptr}});
}

int Session::sync(const std::vector<PromptSegment> & segs) {
    auto & s = *impl_;
    std::vector<int32_t> toks;
    std::vector<uint64_t> tags;
    std::vector<Impl::EmbRef> refs;
    s.flatten(segs, toks, tags, refs);
    if (toks.size() > (size_t) s.params.n_ctx) {
        fail(ErrorKind::ContextFull, "prompt of " + std::to_string(toks.size()) + " tokens does not fit a context of " +
                                         std::to_string(s.params.n_ctx) + " (raise n_ctx)");
    }
    size_t common = 0;
    while (common < toks.size() && common < s.n_eval && s.tokens[common] == toks[common] &&
           s.tags[common] == tags[common]) {
        ++common;
    }
    // The last position must be evaluated again to get its logits.
    if (common == toks.size() && common > 0) --common;
    s.truncate(common);
    if (common == toks.size()) return 0;
    s.gen_active = false;
    s.append(toks, tags, refs, common);
    try {
        s.eval_pending();
    } catch (...) {
        s.truncate(common);
        throw;
    }
    return (int) (toks.size() - common);
}

const std::vector<float> & Session::logits() {
    auto & s = *impl_;
    if (s.tokens.empty()) fail(ErrorKind::InvalidArgument, "no logits: the context is empty (prefill a prompt first)");
    s.eval_pending();
    if (!s.logits_valid) fail(ErrorKind::InvalidArgument, "no logits available for the last position");
    return s.logits;
}

int32_t Session::sample(const SamplingParams & p) {
    validate_sampling(p);
    const auto & l = logits();
    const double t0 = now_ms();
    int32_t id = sample_token(l.data(), (int64_t) l.size(), p, impl_->tokens, impl_->rng);
    impl_->timings.sample_ms += now_ms() - t0;
    return id;
}

void Session::begin_generation(const GenerationParams & params) {
    auto & s = *impl_;
    validate_sampling(params.sampling);
    for (const auto & st : params.stop) {
        if (st.empty()) fail(ErrorKind::InvalidArgument, "stop strings must not be empty");
    }
    if (s.tokens.empty()) {
        fail(ErrorKind::InvalidArgument, "cannot generate on an empty context: prefill a prompt first");
    }
    s.gen = params;
    s.gen_active = true;
    s.gen_done = false;
    s.n_generated = 0;
    s.held.clear();
    s.decoder = std::make_unique<StreamDecoder>(*s.m.tokenizer, params.skip_special);
}

GenerationStep Session::next() {
    auto & s = *impl_;
    GenerationStep step;
    if (!s.gen_active) fail(ErrorKind::InvalidArgument, "call begin_generation() before next()");
    if (s.gen_done) {
        step.done = true;
        return step;
    }
    auto finish = [&](StopReason r) {
        s.held += s.decoder->flush();
        step.text += s.take_safe_text(true);
        step.done = true;
        step.reason = r;
        s.gen_done = true;
        return step;
    };
    if (s.gen.max_tokens >= 0 && s.n_generated >= s.gen.max_tokens) return finish(StopReason::MaxTokens);
    if (s.tokens.size() >= (size_t) s.params.n_ctx) return finish(StopReason::ContextFull);

    s.eval_pending();
    const double t0 = now_ms();
    int32_t id = sample_token(s.logits.data(), (int64_t) s.logits.size(), s.gen.sampling, s.tokens, s.rng);
    s.timings.sample_ms += now_ms() - t0;
    step.token = id;
    s.tokens.push_back(id);   // pending: evaluated on the next step or the next prefill
    s.tags.push_back(0);
    s.refs.emplace_back();
    s.n_generated++;

    if (s.gen.stop_at_end_of_turn && s.model->is_end_of_turn(id)) return finish(StopReason::EndOfTurn);

    s.held += s.decoder->push(id);
    for (const auto & st : s.gen.stop) {
        size_t pos = s.held.find(st);
        if (pos != std::string::npos) {
            s.held.resize(pos);
            step.text = s.held;
            s.held.clear();
            s.decoder->reset();
            step.done = true;
            step.reason = StopReason::StopString;
            s.gen_done = true;
            return step;
        }
    }
    step.text = s.take_safe_text(false);
    if (s.gen.max_tokens >= 0 && s.n_generated >= s.gen.max_tokens) {
        GenerationStep last = finish(StopReason::MaxTokens);
        return last;
    }
    if (s.tokens.size() >= (size_t) s.params.n_ctx) return finish(StopReason::ContextFull);
    return step;
}

void Session::reset() {
    auto & s = *impl_;
    s.truncate(0);
    s.gen_active = false;
}

int  Session::n_past() const { return (int) impl_->tokens.size(); }
int  Session::n_ctx() const { return impl_->params.n_ctx; }
const std::vector<int32_t> & Session::tokens() const { return impl_->tokens; }
const Timings & Session::timings() const { return impl_->timings; }
void Session::reset_timings() { impl_->timings = Timings{}; }
const std::shared_ptr<Model> & Session::model() const { return impl_->model; }

} // namespace minicpm
