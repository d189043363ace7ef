// Per-layer key/value cache of one session, with cells separate from positions.
//
// Layout per layer: K and V as [head_dim * n_head_kv, n_cells] (ggml order), tensors kept alive
// by the session's LLM runner (GraphRunner state). Each cell records the position of the token
// it holds (-1: free). A token attends every used cell whose position is not after its own, so
// any cell can hold any position: a range of tokens can be removed (their cells freed) and the
// others keep their positions, as windowed caches need.
#pragma once

#include "models/llm.h"

#include "ggml.h"

#include <cstdint>
#include <vector>

namespace minicpm {

class GraphRunner;

struct KvCache : KvTensors {
    int64_t                    n_cells = 0;
    std::vector<int32_t>       cell_pos;      // position held by each cell, -1 when free
    int64_t                    n_used = 0;
    int64_t                    first_free = 0;   // no free cell below this one (a search hint)

    // Declares the cache tensors in `runner` (call runner.allocate_state() afterwards).
    void init(const LlmHparams & hp, int64_t n_cells, ggml_type type, GraphRunner & runner);
    // Over tensors that live elsewhere (a range of the shared batch cache, runtime/kv_pool.h).
    void init(const KvTensors & tensors, int64_t n_cells);

    // The n lowest free cells, marked as holding `positions`. Throws Error(ContextFull) when
    // fewer than n cells are free.
    std::vector<int64_t> assign(const std::vector<int32_t> & positions);
    void                 release(int64_t cell);
    void                 clear();
    int64_t              n_free() const { return n_cells - n_used; }
    // One past the highest used cell (the cells a graph must attend).
    int64_t              extent() const;

    // Additive attention mask [n_kv, n] (row per token): 0 where cell j is used and holds a
    // position <= positions[i], -inf elsewhere.
    void build_mask(const std::vector<int32_t> & positions, int64_t n_kv, std::vector<float> & out) const;
    // The same as IEEE half floats (0x0000 / 0xFC00), for an F16 mask tensor.
    void build_mask_f16(const std::vector<int32_t> & positions, int64_t n_kv, std::vector<uint16_t> & out) const;
};

} // namespace minicpm
