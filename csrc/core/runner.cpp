#include "runner.h"

#include "core/cpu_ops.h"
#include "core/error.h"
#include "core/log.h"

#include <algorithm>
#include <cstdlib>

namespace minicpm {

namespace {

constexpr size_t kMaxStateTensors = 1024;
constexpr size_t kMaxCacheSlots = 16;

} // namespace

GraphRunner::GraphRunner(std::string name, const ComputeBackends & backends, size_t max_nodes)
    : name_(std::move(name)), backends_(backends), max_nodes_(max_nodes) {
    slots_.resize(1);
    slots_[0].sched = new_sched();
    if (const char * env = std::getenv("MINICPM_GRAPH_CACHE")) {
        char * end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (end != env && v >= 0) cache_override_ = (int) std::min<long>(v, kMaxCacheSlots);
    }
}

GraphRunner::~GraphRunner() {
    for (Slot & s : slots_) free_slot(s);
    if (state_buf_) ggml_backend_buffer_free(state_buf_);
    if (state_ctx_) ggml_free(state_ctx_);
}

ggml_backend_sched_t GraphRunner::new_sched() const {
    std::vector<ggml_backend_t> list = backends_.all();
    ggml_backend_sched_t sched = ggml_backend_sched_new(list.data(), nullptr, (int) list.size(), max_nodes_, false, true);
    if (!sched) fail(ErrorKind::Backend, "cannot create the " + name_ + " graph scheduler");
    if (eval_cb_) ggml_backend_sched_set_eval_callback(sched, eval_cb_, eval_user_);
    return sched;
}

ggml_context * GraphRunner::new_graph_ctx(Slot & s) {
    if (s.meta.empty()) s.meta.resize(ggml_tensor_overhead() * max_nodes_ + ggml_graph_overhead_custom(max_nodes_, false));
    ggml_init_params ip = {s.meta.size(), s.meta.data(), /*no_alloc =*/true};
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) fail(ErrorKind::Internal, "ggml_init failed for the " + name_ + " graph");
    return ctx;
}

void GraphRunner::drop_graph(Slot & s) {
    if (s.ctx) ggml_free(s.ctx);
    s.ctx = nullptr;
    s.graph = nullptr;
    s.key.clear();
    if (s.sched) ggml_backend_sched_reset(s.sched);
}

void GraphRunner::free_slot(Slot & s) {
    drop_graph(s);
    if (s.sched) ggml_backend_sched_free(s.sched);
    s.sched = nullptr;
}

void GraphRunner::invalidate() {
    for (Slot & s : slots_) drop_graph(s);
    cur_ = 0;
}

void GraphRunner::set_graph_cache(size_t n) {
    if (cache_override_ >= 0) n = (size_t) cache_override_;
    n = std::min(n, kMaxCacheSlots);
    for (size_t i = n + 1; i < slots_.size(); ++i) free_slot(slots_[i]);
    slots_.resize(n + 1);
    cur_ = 0;
}

void GraphRunner::reserve(const GraphBuilder & build, const std::string & what_if_fails) {
    invalidate();
    Slot & s = slots_[0];
    ggml_context * ctx = new_graph_ctx(s);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, max_nodes_, false);
    bool ok = false;
    try {
        const cpu_ops::Scope gemm(backends_.main_is_cpu());   // graph::mul_mat on the CPU kernel
        build(ctx, gf);
        ok = ggml_backend_sched_reserve(s.sched, gf);
    } catch (...) {
        ggml_free(ctx);
        throw;
    }
    ggml_free(ctx);
    if (!ok) {
        fail(ErrorKind::Backend, "cannot allocate the " + name_ + " compute buffers on " + backends_.main_name() +
                                     (what_if_fails.empty() ? "" : "; " + what_if_fails));
    }
    for (ggml_backend_t b : backends_.all()) {
        const size_t sz = ggml_backend_sched_get_buffer_size(s.sched, b);
        if (sz > 0) {
            MINICPM_LOG_INFO("%s compute buffer on %s: %.1f MiB", name_.c_str(), ggml_backend_name(b),
                             (double) sz / (1024.0 * 1024.0));
        }
    }
}

bool GraphRunner::build_into(Slot & s, const GraphKey & key, const GraphBuilder & build) {
    drop_graph(s);
    if (!s.sched) s.sched = new_sched();
    s.ctx = new_graph_ctx(s);
    s.graph = ggml_new_graph_custom(s.ctx, max_nodes_, false);
    try {
        const cpu_ops::Scope gemm(backends_.main_is_cpu());   // graph::mul_mat on the CPU kernel
        build(s.ctx, s.graph);
    } catch (...) {
        drop_graph(s);
        throw;
    }
    if (!ggml_backend_sched_alloc_graph(s.sched, s.graph)) {
        drop_graph(s);
        return false;
    }
    s.key = key;
    if (log_level() >= LogLevel::Debug) {   // which shapes a loop rebuilds (MINICPM_LOG=debug)
        std::string k;
        for (int64_t v : key) k += (k.empty() ? "" : ",") + std::to_string(v);
        MINICPM_LOG_DEBUG("%s: graph [%s] built in slot %zu (%d nodes)", name_.c_str(), k.c_str(),
                          (size_t) (&s - slots_.data()), ggml_graph_n_nodes(s.graph));
    }
    return true;
}

bool GraphRunner::prepare(const GraphKey & key, const GraphBuilder & build, bool cacheable) {
    ++tick_;
    const size_t n = cacheable ? slots_.size() : 1;
    // A kept graph of this key (slot 0 holds any kind; the cache only cacheable ones).
    for (size_t i = 0; i < n; ++i) {
        if (slots_[i].graph && slots_[i].key == key) {
            cur_ = i;
            slots_[i].used = tick_;
            return false;
        }
    }
    if (n > 1) {
        // The free cache slot, else the least recently used one.
        size_t pick = 1;
        for (size_t i = 1; i < n; ++i) {
            if (!slots_[i].graph) { pick = i; break; }
            if (slots_[i].used < slots_[pick].used) pick = i;
        }
        Slot & s = slots_[pick];
        cur_ = pick;   // a builder that throws leaves this slot empty: graph() is null
        if (build_into(s, key, build)) {
            s.used = tick_;
            return true;
        }
        // No memory for one more compute buffer: give this one back and use the main graph.
        free_slot(s);
        MINICPM_LOG_WARN("%s: no memory for a cached graph; rebuilding in the main one", name_.c_str());
    }
    Slot & s = slots_[0];
    cur_ = 0;
    if (!build_into(s, key, build)) {
        fail(ErrorKind::Backend, "cannot allocate the " + name_ + " graph on " + backends_.main_name());
    }
    s.used = tick_;
    return true;
}

void GraphRunner::compute() {
    Slot & s = slots_[cur_];
    if (!s.graph) fail(ErrorKind::Internal, name_ + ": compute() without a prepared graph");
    const ggml_status st = ggml_backend_sched_graph_compute(s.sched, s.graph);
    if (st != GGML_STATUS_SUCCESS) {
        invalidate();
        fail(ErrorKind::Backend, name_ + " graph compute failed on " + backends_.main_name() + " (status " +
                                     std::to_string((int) st) + ")");
    }
}

ggml_tensor * GraphRunner::add_state(const std::string & name, ggml_type type, const std::vector<int64_t> & shape) {
    if (state_buf_) fail(ErrorKind::Internal, name_ + ": state tensor " + name + " declared after allocation");
    if (state_.count(name)) fail(ErrorKind::Internal, name_ + ": state tensor " + name + " declared twice");
    if (shape.empty() || shape.size() > GGML_MAX_DIMS) fail(ErrorKind::Internal, name_ + ": bad state tensor shape");
    if (!state_ctx_) {
        ggml_init_params ip = {ggml_tensor_overhead() * kMaxStateTensors, nullptr, /*no_alloc =*/true};
        state_ctx_ = ggml_init(ip);
        if (!state_ctx_) fail(ErrorKind::Internal, "ggml_init failed for the " + name_ + " state");
    }
    if (state_.size() >= kMaxStateTensors) fail(ErrorKind::Internal, name_ + ": too many state tensors");
    ggml_tensor * t = ggml_new_tensor(state_ctx_, type, (int) shape.size(), shape.data());
    ggml_set_name(t, name.c_str());
    state_[name] = t;
    return t;
}

void GraphRunner::allocate_state() {
    if (state_buf_ || !state_ctx_) return;
    state_buf_ = ggml_backend_alloc_ctx_tensors_from_buft(
        state_ctx_, ggml_backend_get_default_buffer_type(backends_.main()));
    if (!state_buf_) {
        size_t total = 0;
        for (const auto & kv : state_) total += ggml_nbytes(kv.second);
        fail(ErrorKind::Backend, "cannot allocate " + std::to_string(total >> 20) + " MiB of " + name_ + " state on " +
                                     backends_.main_name());
    }
    // Compute usage: the scheduler may then run ops on these tensors wherever they fit best.
    ggml_backend_buffer_set_usage(state_buf_, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    ggml_backend_buffer_clear(state_buf_, 0);
}

ggml_tensor * GraphRunner::state(const std::string & name) const {
    auto it = state_.find(name);
    return it == state_.end() ? nullptr : it->second;
}

size_t GraphRunner::state_bytes() const { return state_buf_ ? ggml_backend_buffer_get_size(state_buf_) : 0; }

void GraphRunner::clear_state() {
    if (state_buf_) ggml_backend_buffer_clear(state_buf_, 0);
}

void GraphRunner::set_eval_callback(ggml_backend_sched_eval_callback cb, void * user) {
    eval_cb_ = cb;
    eval_user_ = user;
    for (Slot & s : slots_) {
        if (s.sched) ggml_backend_sched_set_eval_callback(s.sched, cb, user);
    }
}

size_t GraphRunner::compute_buffer_size() const {
    size_t total = 0;
    for (const Slot & s : slots_) {
        if (!s.sched) continue;
        for (ggml_backend_t b : backends_.all()) total += ggml_backend_sched_get_buffer_size(s.sched, b);
    }
    return total;
}

} // namespace minicpm
