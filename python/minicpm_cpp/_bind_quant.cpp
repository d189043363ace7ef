// Python bindings of ggml's own quantization kernels, for the quantization tool
// (minicpm_cpp.convert.quantize).
//
// Exposed in minicpm_cpp._core:
//
//   quant_types() -> list of ints               the ggml types quantize_rows accepts
//   quant_type_info(type) -> dict                name, block_size, type_size, quantized,
//                                                requires_imatrix (ggml_quantize_requires_imatrix)
//   quant_row_size(type, n_per_row) -> int       ggml_row_size: bytes of one row
//   quant_requires_imatrix(type) -> bool
//   quantize_rows(type, src, out=None) -> out    ggml_quantize_chunk over every row of `src`
//       src: float32 C-contiguous array [n_rows, n_per_row] (a 1-D array is one row);
//       out: optional writable uint8 C-contiguous buffer of exactly n_rows * row_size bytes
//       (any shape), else a new uint8 array [n_rows, row_size] is returned.
//
// `type` is a ggml_type value (gguf.GGMLQuantizationType numbers them the same way). The GIL
// is released while quantizing, so Python threads quantizing different row ranges of one
// tensor run in parallel. Types that need an importance matrix are refused.
#include "minicpm/error.h"

#include <ggml.h>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

[[noreturn]] void invalid(const std::string & msg) {
    throw Error(ErrorKind::InvalidArgument, msg);
}

// The types ggml_quantize_chunk implements (without an importance matrix, where allowed).
const std::vector<ggml_type> & supported_types() {
    static const std::vector<ggml_type> types = {
        GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K,
        GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL, GGML_TYPE_IQ4_XS,
    };
    return types;
}

ggml_type checked_type(int type) {
    if (type < 0 || type >= GGML_TYPE_COUNT) {
        invalid("unknown ggml type " + std::to_string(type));
    }
    const auto t = (ggml_type) type;
    if (ggml_quantize_requires_imatrix(t)) {
        invalid(std::string("type ") + ggml_type_name(t) + " needs an importance matrix, which is not supported");
    }
    for (ggml_type s : supported_types()) {
        if (s == t) return t;
    }
    const char * name = ggml_type_name(t);
    invalid(std::string("ggml type ") + (name ? name : std::to_string(type)) + " cannot be quantized to here");
}

int64_t checked_row(ggml_type t, int64_t n_per_row) {
    if (n_per_row <= 0) {
        invalid("row length must be positive, got " + std::to_string(n_per_row));
    }
    const int64_t blck = ggml_blck_size(t);
    if (n_per_row % blck != 0) {
        invalid("row length " + std::to_string(n_per_row) + " is not a multiple of the " + ggml_type_name(t) +
                " block size " + std::to_string(blck));
    }
    return n_per_row;
}

py::object quantize_rows(int type, const py::array & src, const py::object & out) {
    const ggml_type t = checked_type(type);
    if (!py::dtype::of<float>().is(src.dtype())) {
        invalid("quantize_rows: src must be a float32 array, got dtype " + std::string(py::str(src.dtype())));
    }
    if (src.ndim() != 1 && src.ndim() != 2) {
        invalid("quantize_rows: src must be 1-D (one row) or 2-D [n_rows, n_per_row], got " +
                std::to_string(src.ndim()) + " dimensions");
    }
    if (!(src.flags() & py::array::c_style)) {
        invalid("quantize_rows: src must be C-contiguous (use numpy.ascontiguousarray)");
    }
    const int64_t n_rows    = src.ndim() == 2 ? (int64_t) src.shape(0) : 1;
    const int64_t n_per_row = checked_row(t, (int64_t) src.shape(src.ndim() - 1));
    const size_t  row_size  = ggml_row_size(t, n_per_row);
    const size_t  total     = row_size * (size_t) n_rows;

    py::array dst;
    if (out.is_none()) {
        dst = py::array_t<uint8_t>({(py::ssize_t) n_rows, (py::ssize_t) row_size});
    } else {
        if (!py::isinstance<py::array>(out)) {
            invalid("quantize_rows: out must be a numpy uint8 array");
        }
        dst = out.cast<py::array>();
        if (!py::dtype::of<uint8_t>().is(dst.dtype())) {
            invalid("quantize_rows: out must be a uint8 array, got dtype " + std::string(py::str(dst.dtype())));
        }
        if (!(dst.flags() & py::array::c_style) || !dst.writeable()) {
            invalid("quantize_rows: out must be a writable C-contiguous array");
        }
        if ((size_t) dst.nbytes() != total) {
            invalid("quantize_rows: out has " + std::to_string(dst.nbytes()) + " bytes, expected " +
                    std::to_string(total) + " (" + std::to_string(n_rows) + " rows of " + std::to_string(row_size) + ")");
        }
    }
    if (n_rows == 0) {
        return std::move(dst);
    }
    const float * s = static_cast<const float *>(src.data());
    void *        d = dst.mutable_data();
    size_t        written = 0;
    {
        py::gil_scoped_release release;
        written = ggml_quantize_chunk(t, s, d, 0, n_rows, n_per_row, nullptr);
    }
    if (written != total) {
        throw Error(ErrorKind::Backend, "ggml_quantize_chunk wrote " + std::to_string(written) + " bytes, expected " +
                                            std::to_string(total));
    }
    return std::move(dst);
}

} // namespace

void bind_quant(py::module_ & mod) {
    mod.def("quant_types", [] {
        py::list out;
        for (ggml_type t : supported_types()) out.append((int) t);
        return out;
    }, "the ggml types quantize_rows can produce");
    mod.def(
        "quant_type_info",
        [](int type) {
            if (type < 0 || type >= GGML_TYPE_COUNT) invalid("unknown ggml type " + std::to_string(type));
            const auto t = (ggml_type) type;
            py::dict d;
            const char * name = ggml_type_name(t);
            d["name"] = name ? name : "";
            d["block_size"] = ggml_blck_size(t);
            d["type_size"] = ggml_type_size(t);
            d["quantized"] = ggml_is_quantized(t);
            d["requires_imatrix"] = ggml_quantize_requires_imatrix(t);
            return d;
        },
        py::arg("type"));
    mod.def(
        "quant_row_size",
        [](int type, int64_t n_per_row) {
            if (type < 0 || type >= GGML_TYPE_COUNT) invalid("unknown ggml type " + std::to_string(type));
            const auto t = (ggml_type) type;
            if (ggml_blck_size(t) <= 0) invalid(std::string("ggml type ") + ggml_type_name(t) + " has no block size");
            return (size_t) ggml_row_size(t, checked_row(t, n_per_row));
        },
        py::arg("type"), py::arg("n_per_row"), "ggml_row_size: bytes of one row of n_per_row elements");
    mod.def(
        "quant_requires_imatrix",
        [](int type) {
            if (type < 0 || type >= GGML_TYPE_COUNT) invalid("unknown ggml type " + std::to_string(type));
            return ggml_quantize_requires_imatrix((ggml_type) type);
        },
        py::arg("type"));
    mod.def("quantize_rows", &quantize_rows, py::arg("type"), py::arg("src"), py::arg("out") = py::none(),
            "ggml_quantize_chunk over every row of a float32 [n_rows, n_per_row] array (GIL released)");
}
