#include "weights.h"

#include "error.h"
#include "log.h"

#include <cstring>

namespace minicpm {

WeightStore::WeightStore(const GgufFile & file, const Backends & backends, size_t max_tensors)
    : file_(file), backends_(backends) {
    ggml_init_params params = {ggml_tensor_overhead() * (max_tensors + 8), nullptr, /*no_alloc =*/true};
    ctx_main_ = ggml_init(params);
    ctx_host_ = ggml_init(params);
    if (!ctx_main_ || !ctx_host_) {
        fail(ErrorKind::Internal, "ggml_init failed for the weight context");
    }
}

WeightStore::~WeightStore() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    if (ctx_main_) ggml_free(ctx_main_);
    if (ctx_host_) ggml_free(ctx_host_);
}

ggml_tensor * WeightStore::optional(const std::string & name, std::vector<int64_t> shape, Placement p) {
    const TensorInfo * info = file_.find_tensor(name);
    if (!info) {
        return nullptr;
    }
    int64_t want[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size() && i < GGML_MAX_DIMS; ++i) want[i] = shape[i];
    bool ok = true;
    for (int d = 0; d < GGML_MAX_DIMS; ++d) ok = ok && want[d] == info->ne[d];
    if (!ok) {
        fail(ErrorKind::Format, "tensor " + name + ": expected shape " + shape_str(want, (int) shape.size()) +
                                    ", got " + shape_str(info->ne, info->n_dims) + " in " + file_.path());
    }
    if (info->type == GGML_TYPE_COUNT || ggml_type_size(info->type) == 0) {
        fail(ErrorKind::Unsupported, "tensor " + name + " has an unsupported type in " + file_.path());
    }
    ggml_context * ctx = (p == Placement::Host || backends_.main_is_cpu()) ? ctx_host_ : ctx_main_;
    ggml_tensor * t = ggml_new_tensor(ctx, info->type, GGML_MAX_DIMS, info->ne);
    ggml_set_name(t, name.c_str());
    entries_.push_back({t, info, (ctx == ctx_host_) ? Placement::Host : Placement::Main});
    return t;
}

ggml_tensor * WeightStore::require(const std::string & name, std::vector<int64_t> shape, Placement p) {
    ggml_tensor * t = optional(name, shape, p);
    if (!t) {
        fail(ErrorKind::Format, "tensor " + name + " not found in " + file_.path());
    }
    return t;
}

void WeightStore::load() {
    const uint8_t * base = file_.mapping().data();
    // Host tensors: use the mapped file in place.
    bool have_host = false;
    for (auto & e : entries_) have_host = have_host || e.placement == Placement::Host;
    if (have_host) {
        ggml_backend_dev_t cpu_dev = ggml_backend_get_device(backends_.cpu());
        ggml_backend_buffer_t buf  = ggml_backend_dev_buffer_from_host_ptr(
            cpu_dev, (void *) base, file_.mapping().size(), file_.mapping().size());
        if (!buf) {
            // Fallback: copy into an ordinary CPU buffer.
            buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_host_, ggml_backend_cpu_buffer_type());
            if (!buf) fail(ErrorKind::Backend, "cannot allocate host memory for the weights");
            for (auto & e : entries_) {
                if (e.placement != Placement::Host) continue;
                ggml_backend_tensor_set(e.tensor, base + e.info->offset, 0, e.info->nbytes);
                bytes_host_ += e.info->nbytes;
            }
        } else {
            for (auto & e : entries_) {
                if (e.placement != Placement::Host) continue;
                if (ggml_backend_tensor_alloc(buf, e.tensor, (void *) (base + e.info->offset)) != GGML_STATUS_SUCCESS) {
                    fail(ErrorKind::Backend, "cannot place tensor " + e.info->name + " in host memory");
                }
                bytes_host_ += e.info->nbytes;
            }
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers_.push_back(buf);
    }
    bool have_main = false;
    for (auto & e : entries_) have_main = have_main || e.placement == Placement::Main;
    if (have_main) {
        ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(backends_.main());
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_main_, buft);
        if (!buf) {
            fail(ErrorKind::Backend, "cannot allocate " + backends_.main_name() + " memory for the weights of " +
                                         file_.path());
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers_.push_back(buf);
        for (auto & e : entries_) {
            if (e.placement != Placement::Main) continue;
            ggml_backend_tensor_set(e.tensor, base + e.info->offset, 0, e.info->nbytes);
            bytes_main_ += e.info->nbytes;
        }
    }
}

} // namespace minicpm
