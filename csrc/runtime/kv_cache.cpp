#include "kv_cache.h"

#include "core/error.h"
#include "core/runner.h"
#include "models/llm.h"

#include <algorithm>
#include <cmath>

namespace minicpm {

void KvCache::init(const LlmHparams & hp, int64_t n_cells_, ggml_type type_, GraphRunner & runner) {
    type = type_;
    n_cells = n_cells_;
    k.clear();
    v.clear();
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        k.push_back(runner.add_state("cache_k_l" + std::to_string(il), type, {hp.n_embd_kv(), n_cells}));
        v.push_back(runner.add_state("cache_v_l" + std::to_string(il), type, {hp.n_embd_kv(), n_cells}));
    }
    cell_pos.assign((size_t) n_cells, -1);
    n_used = 0;
    first_free = 0;
}

void KvCache::init(const KvTensors & tensors, int64_t n_cells_) {
    type = tensors.type;
    k = tensors.k;
    v = tensors.v;
    n_cells = n_cells_;
    cell_pos.assign((size_t) n_cells, -1);
    n_used = 0;
    first_free = 0;
}

std::vector<int64_t> KvCache::assign(const std::vector<int32_t> & positions) {
    if ((int64_t) positions.size() > n_free()) {
        fail(ErrorKind::ContextFull, std::to_string(positions.size()) + " tokens do not fit: " + std::to_string(n_free()) +
                                         " of " + std::to_string(n_cells) + " cache cells are free");
    }
    std::vector<int64_t> cells;
    cells.reserve(positions.size());
    // Decode appends one token per step: start at the hint instead of cell 0.
    for (int64_t c = first_free; c < n_cells && cells.size() < positions.size(); ++c) {
        if (cell_pos[(size_t) c] < 0) {
            cell_pos[(size_t) c] = positions[cells.size()];
            cells.push_back(c);
        }
    }
    n_used += (int64_t) cells.size();
    if (!cells.empty()) first_free = cells.back() + 1;
    return cells;
}

void KvCache::release(int64_t cell) {
    if (cell < 0 || cell >= n_cells || cell_pos[(size_t) cell] < 0) return;
    cell_pos[(size_t) cell] = -1;
    --n_used;
    first_free = std::min(first_free, cell);
}

void KvCache::clear() {
    cell_pos.assign((size_t) n_cells, -1);
    n_used = 0;
    first_free = 0;
}

int64_t KvCache::extent() const {
    for (int64_t c = n_cells; c-- > 0;) {
        if (cell_pos[(size_t) c] >= 0) return c + 1;
    }
    return 0;
}

void KvCache::build_mask(const std::vector<int32_t> & positions, int64_t n_kv, std::vector<float> & out) const {
    out.resize((size_t) (n_kv * (int64_t) positions.size()));
    for (size_t i = 0; i < positions.size(); ++i) {
        float * row = out.data() + i * (size_t) n_kv;
        for (int64_t j = 0; j < n_kv; ++j) {
            const int32_t p = j < n_cells ? cell_pos[(size_t) j] : -1;
            row[j] = (p >= 0 && p <= positions[i]) ? 0.0f : -INFINITY;
        }
    }
}

} // namespace minicpm
