// Weights computed at load from the file's (WeightStore::derived): several matrices stored back
// to back, a LayerNorm's affine folded into the product after it, attention heads padded with
// zero rows or columns to a size with fast kernels.
#pragma once

#include "core/weights.h"

#include <cstdint>
#include <vector>

namespace minicpm {

bool is_float_type(ggml_type t);

// n F32 values stored as `type` (F32 / F16 / BF16) at dst.
void store_as(ggml_type type, const float * src, int64_t n, uint8_t * dst);

// Matrices `mats` (each [n_in, rows_k] in ggml order, F32/F16/BF16, read from the file) whose
// rows are stored back to back. With a LayerNorm (g, b) before the product, input column j is
// scaled by g[j] and the bias becomes bias + W b: LN(x) W^T + c = norm(x) (W diag(g))^T + (W b + c).
// Heads: with head > 0 and head_to > head, every run of `head` output rows is followed by
// head_to - head zero rows (bias zero there too); with in_head > 0, every run of in_head input
// columns is followed by in_head_to - in_head zero columns (the matrix then takes padded heads).
struct FoldSpec {
    std::vector<ggml_tensor *> mats;
    std::vector<ggml_tensor *> biases;   // one per matrix; nullptr = zeros
    ggml_tensor *              g = nullptr, * b = nullptr;   // the LayerNorm before the product
    int64_t                    head = 0, head_to = 0;
    int64_t                    in_head = 0, in_head_to = 0;

    int64_t out_rows(const ggml_tensor * m) const;   // rows of one matrix after padding
    int64_t in_cols() const;                         // input width after padding
    int64_t total_rows() const;
};

// dst: ggml_row_size(type, in_cols()) * total_rows() bytes.
void fill_folded_matrix(const WeightStore & s, const FoldSpec & f, ggml_type type, uint8_t * dst);
// dst: total_rows() floats.
void fill_folded_bias(const WeightStore & s, const FoldSpec & f, uint8_t * dst);

} // namespace minicpm
