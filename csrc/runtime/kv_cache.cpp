#include "kv_cache.h"

#include "core/error.h"
#include "core/runner.h"
#include "models/llm.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

namespace {

// Each cell's position for the mask: free cells and those past the cache get a position no
// token has, so the one comparison `key <= query` decides every entry (a loop compilers vectorise).
std::vector<int32_t> mask_keys(const std::vector<int32_t> & cell_pos, int64_t n_cells, int64_t n_kv) {
    std::vector<int32_t> keys((size_t) n_kv, std::numeric_limits<int32_t>::max());
    for (int64_t j = 0; j < std::min(n_kv, n_cells); ++j) {
        const int32_t p = cell_pos[(size_t) j];
        if (p >= 0) keys[(size_t) j] = p;
    }
    return keys;
}

template <typename T>
void fill_mask(const std::vector<int32_t> & keys, const std::vector<int32_t> & positions, T zero, T neg_inf, T * out) {
    const size_t n_kv = keys.size();
    const int32_t * k = keys.data();
    for (size_t i = 0; i < positions.size(); ++i) {
        T * row = out + i * n_kv;
        const int32_t q = positions[i];
        for (size_t j = 0; j < n_kv; ++j) row[j] = k[j] <= q ? zero : neg_inf;
    }
}

} // namespace

void KvCache::build_mask(const std::vector<int32_t> & positions, int64_t n_kv, std::vector<float> & out) const {
    out.resize((size_t) (n_kv * (int64_t) positions.size()));
    fill_mask<float>(mask_keys(cell_pos, n_cells, n_kv), positions, 0.0f, -INFINITY, out.data());
}

void KvCache::build_mask_f16(const std::vector<int32_t> & positions, int64_t n_kv, std::vector<uint16_t> & out) const {
    out.resize((size_t) (n_kv * (int64_t) positions.size()));
    // IEEE half: +0 is 0x0000, -inf is 0xFC00
    fill_mask<uint16_t>(mask_keys(cell_pos, n_cells, n_kv), positions, 0x0000, 0xFC00, out.data());
}

} // namespace minicpm
