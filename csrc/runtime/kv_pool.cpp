#include "kv_pool.h"

#include "core/error.h"

#include <string>

namespace minicpm {

namespace {
ggml_context * tensor_context(size_t n_tensors) {
    ggml_init_params ip{};
    ip.mem_size = ggml_tensor_overhead() * n_tensors + 1024;
    ip.no_alloc = true;
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) fail(ErrorKind::Internal, "cannot create a tensor context");
    return ctx;
}
} // namespace

KvPool::KvPool(const LlmHparams & hp, const Devices & devices, int64_t n_cells, ggml_type type)
    : hp_(hp), n_cells_(n_cells + 1) {   // + the scratch cell
    if (n_cells <= 0 || n_cells > kMaxCells) {
        fail(ErrorKind::InvalidArgument, "batch_cache_cells must be in [1, " + std::to_string(kMaxCells) + "], got " +
                                             std::to_string(n_cells));
    }
    kv_.type = type;
    ctx_ = tensor_context((size_t) (2 * hp.n_layer));
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        ggml_tensor * k = ggml_new_tensor_2d(ctx_, type, hp.n_embd_kv(), n_cells_);
        ggml_tensor * v = ggml_new_tensor_2d(ctx_, type, hp.n_embd_kv(), n_cells_);
        ggml_format_name(k, "pool_k_l%d", (int) il);
        ggml_format_name(v, "pool_v_l%d", (int) il);
        kv_.k.push_back(k);
        kv_.v.push_back(v);
    }
    buf_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, devices.main_buffer_type());
    if (!buf_) {
        const size_t bytes = 2 * (size_t) hp.n_layer * ggml_row_size(type, hp.n_embd_kv()) * (size_t) n_cells_;
        ggml_free(ctx_);
        fail(ErrorKind::Backend, "cannot allocate the " + std::to_string(bytes >> 20) + " MiB shared batch cache (" +
                                     std::to_string(n_cells) + " cells) on " + devices.main_name() +
                                     "; try a smaller batch_cache_cells");
    }
    ggml_backend_buffer_set_usage(buf_, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    ggml_backend_buffer_clear(buf_, 0);
}

KvPool::~KvPool() {
    if (buf_) ggml_backend_buffer_free(buf_);
    if (ctx_) ggml_free(ctx_);
}

size_t KvPool::bytes() const { return buf_ ? ggml_backend_buffer_get_size(buf_) : 0; }

int64_t KvPool::end() const {
    std::lock_guard<std::mutex> lk(mu_);
    return ranges_.empty() ? 0 : ranges_.rbegin()->first + ranges_.rbegin()->second;
}

std::unique_ptr<KvPool::Lease> KvPool::acquire(int64_t n, ggml_type type) {
    if (n <= 0 || type != kv_.type) return nullptr;
    int64_t base = -1;
    {
        std::lock_guard<std::mutex> lk(mu_);
        int64_t next = kScratchCell + 1;   // first fit between the leased ranges
        for (const auto & r : ranges_) {
            if (r.first - next >= n) break;
            next = r.first + r.second;
        }
        if (n_cells_ - next < n) return nullptr;
        base = next;
        ranges_[base] = n;
    }
    std::unique_ptr<Lease> l(new Lease());
    l->pool_ = this;
    l->base_ = base;
    l->n_ = n;
    try {
        l->ctx_ = tensor_context((size_t) (2 * hp_.n_layer));
        l->kv_.type = type;
        const size_t row = ggml_row_size(type, hp_.n_embd_kv());
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            for (int kv = 0; kv < 2; ++kv) {
                ggml_tensor * whole = kv == 0 ? kv_.k[(size_t) il] : kv_.v[(size_t) il];
                ggml_tensor * t = ggml_new_tensor_2d(l->ctx_, type, hp_.n_embd_kv(), n);
                ggml_format_name(t, "cache_%s_l%d", kv == 0 ? "k" : "v", (int) il);
                const ggml_status st = ggml_backend_tensor_alloc(buf_, t, (char *) whole->data + (size_t) base * row);
                if (st != GGML_STATUS_SUCCESS) fail(ErrorKind::Backend, "cannot place a session's cache in the shared batch cache");
                (kv == 0 ? l->kv_.k : l->kv_.v).push_back(t);
            }
        }
    } catch (...) {
        if (l->ctx_) ggml_free(l->ctx_);
        l->ctx_ = nullptr;
        l->pool_ = nullptr;
        release(base);
        throw;
    }
    return l;
}

void KvPool::release(int64_t base) {
    std::lock_guard<std::mutex> lk(mu_);
    ranges_.erase(base);
}

KvPool::Lease::~Lease() {
    if (ctx_) ggml_free(ctx_);
    if (pool_) pool_->release(base_);
}

} // namespace minicpm
