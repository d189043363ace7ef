#include "core/fold.h"

#include "core/error.h"

#include <cstring>
#include <string>

namespace minicpm {

bool is_float_type(ggml_type t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

void store_as(ggml_type type, const float * src, int64_t n, uint8_t * dst) {
    switch (type) {
        case GGML_TYPE_F32: std::memcpy(dst, src, (size_t) n * sizeof(float)); break;
        case GGML_TYPE_F16: ggml_fp32_to_fp16_row(src, (ggml_fp16_t *) dst, n); break;
        case GGML_TYPE_BF16: ggml_fp32_to_bf16_row(src, (ggml_bf16_t *) dst, n); break;
        default: fail(ErrorKind::Internal, "cannot store a folded matrix as " + std::string(ggml_type_name(type)));
    }
}

namespace {

bool pads_rows(const FoldSpec & f) { return f.head > 0 && f.head_to > f.head; }
bool pads_cols(const FoldSpec & f) { return f.in_head > 0 && f.in_head_to > f.in_head; }

// Padded row index of row r (the same when rows are not padded).
int64_t out_row(const FoldSpec & f, int64_t r) { return pads_rows(f) ? (r / f.head) * f.head_to + r % f.head : r; }

void check_spec(const FoldSpec & f) {
    if (f.mats.empty() || f.biases.size() != f.mats.size()) fail(ErrorKind::Internal, "FoldSpec: one bias slot per matrix");
    const int64_t n_in = f.mats.front()->ne[0];
    for (const ggml_tensor * m : f.mats) {
        if (m->ne[0] != n_in) fail(ErrorKind::Internal, "FoldSpec: matrices of different widths");
        if (pads_rows(f) && m->ne[1] % f.head != 0) fail(ErrorKind::Internal, "FoldSpec: rows are not whole heads");
    }
    if (pads_cols(f) && n_in % f.in_head != 0) fail(ErrorKind::Internal, "FoldSpec: input columns are not whole heads");
}

} // namespace

int64_t FoldSpec::out_rows(const ggml_tensor * m) const {
    return pads_rows(*this) ? m->ne[1] / head * head_to : m->ne[1];
}

int64_t FoldSpec::in_cols() const {
    const int64_t n_in = mats.front()->ne[0];
    return pads_cols(*this) ? n_in / in_head * in_head_to : n_in;
}

int64_t FoldSpec::total_rows() const {
    int64_t n = 0;
    for (const ggml_tensor * m : mats) n += out_rows(m);
    return n;
}

void fill_folded_matrix(const WeightStore & s, const FoldSpec & f, ggml_type type, uint8_t * dst) {
    check_spec(f);
    const std::vector<float> g = f.g ? s.read_f32(f.g) : std::vector<float>();
    const int64_t cols = f.in_cols();
    const size_t  row_bytes = ggml_row_size(type, cols);
    std::vector<float> out_row_buf((size_t) cols);
    size_t offs = 0;
    for (ggml_tensor * m : f.mats) {
        const std::vector<float> w = s.read_f32(m);
        const int64_t n_in = m->ne[0], rows = m->ne[1];
        for (int64_t r = 0; r < rows; ++r) {
            const float * row = w.data() + r * n_in;
            std::fill(out_row_buf.begin(), out_row_buf.end(), 0.0f);
            for (int64_t j = 0; j < n_in; ++j) {
                const int64_t jj = pads_cols(f) ? (j / f.in_head) * f.in_head_to + j % f.in_head : j;
                out_row_buf[(size_t) jj] = g.empty() ? row[j] : row[j] * g[(size_t) j];
            }
            store_as(type, out_row_buf.data(), cols, dst + offs + (size_t) out_row(f, r) * row_bytes);
        }
        offs += row_bytes * (size_t) f.out_rows(m);   // padding rows stay zero (dst comes zeroed)
    }
}

void fill_folded_bias(const WeightStore & s, const FoldSpec & f, uint8_t * dst) {
    check_spec(f);
    float * out = (float *) dst;
    const std::vector<float> b = f.b ? s.read_f32(f.b) : std::vector<float>();
    int64_t r0 = 0;
    for (size_t k = 0; k < f.mats.size(); ++k) {
        ggml_tensor * m = f.mats[k];
        const int64_t n_in = m->ne[0], rows = m->ne[1];
        const std::vector<float> c = f.biases[k] ? s.read_f32(f.biases[k]) : std::vector<float>();
        const std::vector<float> w = b.empty() ? std::vector<float>() : s.read_f32(m);
        for (int64_t r = 0; r < rows; ++r) {
            double acc = c.empty() ? 0.0 : (double) c[(size_t) r];
            if (!b.empty()) {
                const float * row = w.data() + r * n_in;
                for (int64_t j = 0; j < n_in; ++j) acc += (double) row[j] * b[(size_t) j];
            }
            out[r0 + out_row(f, r)] = (float) acc;
        }
        r0 += f.out_rows(m);
    }
}

} // namespace minicpm
