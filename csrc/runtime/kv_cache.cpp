#include "kv_cache.h"

#include "core/error.h"
#include "models/llm.h"

namespace minicpm {

KvCache::~KvCache() {
    if (buffer) ggml_backend_buffer_free(buffer);
    if (ctx) ggml_free(ctx);
}

void KvCache::init(const LlmHparams & hp, int64_t n_ctx_, ggml_type type_, const Backends & backends) {
    type  = type_;
    n_ctx = n_ctx_;
    ggml_init_params params = {ggml_tensor_overhead() * (size_t) (2 * hp.n_layer + 4), nullptr, true};
    ctx = ggml_init(params);
    if (!ctx) fail(ErrorKind::Internal, "ggml_init failed for the KV cache");
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        ggml_tensor * kt = ggml_new_tensor_2d(ctx, type, hp.n_embd_kv(), n_ctx);
        ggml_tensor * vt = ggml_new_tensor_2d(ctx, type, hp.n_embd_kv(), n_ctx);
        ggml_format_name(kt, "cache_k_l%d", (int) il);
        ggml_format_name(vt, "cache_v_l%d", (int) il);
        k.push_back(kt);
        v.push_back(vt);
    }
    buffer = ggml_backend_alloc_ctx_tensors_from_buft(ctx, ggml_backend_get_default_buffer_type(backends.main()));
    if (!buffer) {
        fail(ErrorKind::Backend, "cannot allocate the KV cache (" + std::to_string(n_ctx) + " tokens) on " +
                                     backends.main_name() + "; try a smaller n_ctx");
    }
    ggml_backend_buffer_set_usage(buffer, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    ggml_backend_buffer_clear(buffer, 0);
}

size_t KvCache::bytes() const { return buffer ? ggml_backend_buffer_get_size(buffer) : 0; }

} // namespace minicpm
