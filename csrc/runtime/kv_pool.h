// One key/value buffer shared by the batching sessions of a model (ModelParams::batch_cache_cells),
// as llama.cpp's unified cache: each session owns a contiguous range of its cells, and its own
// KvTensors are tensors placed inside the shared ones (per layer [n_embd_kv, n_ctx] at its range's
// first cell), so that everything a session does on its own (prefill, K-shift, windows) is
// unchanged. The batcher then evaluates the small parts of many sessions as ONE sequence over the
// shared tensors, each row masked to its own session's cells: that graph depends on its row
// count and the buffer's used extent only, not on which sessions it carries, so it is kept and
// replayed (CUDA graphs included) whatever sessions wait. See ARCHITECTURE.md.
//
// Cell 0 is a scratch cell (padding rows of the batch graph). The buffer is zero-filled once: masked cells of other sessions are read (and multiplied by a
// zero weight), so they must hold finite values.
#pragma once

#include "core/backend.h"
#include "models/llm.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace minicpm {

class KvPool {
public:
    // Never leased: the batcher's padding rows write and attend it.
    static constexpr int64_t kScratchCell = 0;
    static constexpr int64_t kMaxCells = int64_t(1) << 30;

    // n_cells in all (every layer's K and V), of `type`, in the compute device's buffer.
    KvPool(const LlmHparams & hp, const Devices & devices, int64_t n_cells, ggml_type type);
    ~KvPool();
    KvPool(const KvPool &) = delete;
    KvPool & operator=(const KvPool &) = delete;

    // A session's range: its KvTensors live inside the pool's; released when destroyed.
    class Lease {
    public:
        ~Lease();
        Lease(const Lease &) = delete;
        Lease & operator=(const Lease &) = delete;
        int64_t           base() const { return base_; }
        int64_t           n_cells() const { return n_; }
        const KvTensors & tensors() const { return kv_; }
        KvPool &          pool() const { return *pool_; }

    private:
        friend class KvPool;
        Lease() = default;
        KvPool *       pool_ = nullptr;
        int64_t        base_ = 0, n_ = 0;
        ggml_context * ctx_ = nullptr;
        KvTensors      kv_;
    };

    // The lowest free range of n cells of `type`, or null when the pool has none (or holds
    // another type): the caller then keeps a cache of its own.
    std::unique_ptr<Lease> acquire(int64_t n, ggml_type type);

    const KvTensors & tensors() const { return kv_; }
    int64_t           n_cells() const { return n_cells_; }
    ggml_type         type() const { return kv_.type; }
    // One past the last cell of the highest range leased now (0 when none).
    int64_t           end() const;
    size_t            bytes() const;

private:
    void release(int64_t base);

    const LlmHparams &      hp_;
    int64_t                 n_cells_ = 0;
    ggml_context *          ctx_ = nullptr;
    ggml_backend_buffer_t   buf_ = nullptr;
    KvTensors               kv_;
    mutable std::mutex      mu_;
    std::map<int64_t, int64_t> ranges_;   // base -> n cells, leased
};

} // namespace minicpm
