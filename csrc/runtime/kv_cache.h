// Per-layer key/value cache, allocated once per session on the main device.
// Layout per layer: K and V as [head_dim * n_head_kv, n_ctx] (ggml order); cell i holds position i.
#pragma once

#include "core/backend.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <vector>

namespace minicpm {

struct LlmHparams;

struct KvCache {
    ggml_type                  type = GGML_TYPE_F16;
    int64_t                    n_ctx = 0;
    std::vector<ggml_tensor *> k, v;
    ggml_context *             ctx = nullptr;
    ggml_backend_buffer_t      buffer = nullptr;

    KvCache() = default;
    KvCache(const KvCache &) = delete;
    KvCache & operator=(const KvCache &) = delete;
    ~KvCache();

    void   init(const LlmHparams & hp, int64_t n_ctx, ggml_type type, const Backends & backends);
    size_t bytes() const;
};

} // namespace minicpm
