#include "runner.h"

#include "core/error.h"
#include "core/log.h"

namespace minicpm {

namespace {

constexpr size_t kMaxStateTensors = 1024;

} // namespace

GraphRunner::GraphRunner(std::string name, const ComputeBackends & backends, size_t max_nodes)
    : name_(std::move(name)), backends_(backends), max_nodes_(max_nodes) {
    meta_.resize(ggml_tensor_overhead() * max_nodes_ + ggml_graph_overhead_custom(max_nodes_, false));
    std::vector<ggml_backend_t> list = backends_.all();
    sched_ = ggml_backend_sched_new(list.data(), nullptr, (int) list.size(), max_nodes_, false, true);
    if (!sched_) fail(ErrorKind::Backend, "cannot create the " + name_ + " graph scheduler");
}

GraphRunner::~GraphRunner() {
    drop_graph();
    if (sched_) ggml_backend_sched_free(sched_);
    if (state_buf_) ggml_backend_buffer_free(state_buf_);
    if (state_ctx_) ggml_free(state_ctx_);
}

ggml_context * GraphRunner::new_graph_ctx() {
    ggml_init_params ip = {meta_.size(), meta_.data(), /*no_alloc =*/true};
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) fail(ErrorKind::Internal, "ggml_init failed for the " + name_ + " graph");
    return ctx;
}

void GraphRunner::drop_graph() {
    if (graph_ctx_) ggml_free(graph_ctx_);
    graph_ctx_ = nullptr;
    graph_ = nullptr;
    have_key_ = false;
}

void GraphRunner::invalidate() {
    drop_graph();
    ggml_backend_sched_reset(sched_);
}

void GraphRunner::reserve(const GraphBuilder & build, const std::string & what_if_fails) {
    invalidate();
    ggml_context * ctx = new_graph_ctx();
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, max_nodes_, false);
    bool ok = false;
    try {
        build(ctx, gf);
        ok = ggml_backend_sched_reserve(sched_, gf);
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
        const size_t sz = ggml_backend_sched_get_buffer_size(sched_, b);
        if (sz > 0) {
            MINICPM_LOG_INFO("%s compute buffer on %s: %.1f MiB", name_.c_str(), ggml_backend_name(b),
                             (double) sz / (1024.0 * 1024.0));
        }
    }
}

bool GraphRunner::prepare(const GraphKey & key, const GraphBuilder & build) {
    if (graph_ && have_key_ && key == key_) return false;
    invalidate();
    graph_ctx_ = new_graph_ctx();
    graph_ = ggml_new_graph_custom(graph_ctx_, max_nodes_, false);
    try {
        build(graph_ctx_, graph_);
    } catch (...) {
        invalidate();
        throw;
    }
    if (!ggml_backend_sched_alloc_graph(sched_, graph_)) {
        invalidate();
        fail(ErrorKind::Backend, "cannot allocate the " + name_ + " graph on " + backends_.main_name());
    }
    key_ = key;
    have_key_ = true;
    return true;
}

void GraphRunner::compute() {
    if (!graph_) fail(ErrorKind::Internal, name_ + ": compute() without a prepared graph");
    const ggml_status st = ggml_backend_sched_graph_compute(sched_, graph_);
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
    ggml_backend_sched_set_eval_callback(sched_, cb, user);
}

size_t GraphRunner::compute_buffer_size() const {
    size_t total = 0;
    for (ggml_backend_t b : backends_.all()) total += ggml_backend_sched_get_buffer_size(sched_, b);
    return total;
}

} // namespace minicpm
