// Python bindings for the image component (csrc/preprocess/image.h).
//
// Exposed in minicpm_cpp._core (sizes are (width, height) and grids (cols, rows), as in the
// reference processor; a grid of (0, 0) means "not sliced"):
//
//   image_max_pixels                                   int, the largest accepted width*height
//   image_best_grid(width, height, max_slice_nums=9, scale_resolution=448, patch_size=14)
//       -> (cols, rows)                                reference get_sliced_grid
//   image_overview_size(width, height, max_slice_nums=9, scale_resolution=448, patch_size=14)
//       -> (w, h)                                      size of the overview (first) image
//   image_refine_size(width, height, max_slice_nums=9, scale_resolution=448, patch_size=14, grid=None)
//       -> (w, h) | None                               refine image size; None when not sliced;
//                                                      `grid` overrides the chosen grid
//   image_resize_bicubic(image, out_w, out_h, vertical_first=None) -> uint8 array [out_h, out_w, 3]
//       Pillow's Image.resize((out_w, out_h), BICUBIC); vertical_first forces the pass order
//   image_preprocess(image, max_slice_nums=9, scale_resolution=448, patch_size=14,
//                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
//       -> {"overview": float32 [3, h, w], "slices": [float32 [3, h, w], ...] (row-major),
//           "grid": (cols, rows)}
//   image_placeholder_text(cols, rows, n_query=64, image_id=None) -> str
//   image_placeholder_tokens(tokenizer, cols, rows, n_query=64, image_id=None) -> (ids, positions)
//       tokenizer: a minicpm_cpp.Tokenizer or _core.Tokenizer, or the path of a GGUF holding
//       one (loaded once per path and kept);
//       positions: indices in ids of the <unk> tokens that image embeddings replace
//
// `image` is a numpy uint8 array [height, width, 3] (RGB); a non-contiguous one is copied.
// The GIL is released while resizing, preprocessing and tokenizing.
#include "bind_common.h"

#include "minicpm/error.h"
#include "preprocess/image.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;
using namespace minicpm;
using minicpm_py::PyTokenizer;

namespace {

[[noreturn]] void invalid(const std::string & msg) {
    throw Error(ErrorKind::InvalidArgument, msg);
}

// A validated RGB8 image: the array is kept alive while `data` is used.
struct RgbInput {
    py::array_t<uint8_t, py::array::c_style> arr;
    const uint8_t *                          data   = nullptr;
    int                                      width  = 0;
    int                                      height = 0;
};

RgbInput as_rgb8(const py::handle & obj) {
    if (!py::isinstance<py::array>(obj)) {
        invalid(std::string("image must be a numpy uint8 array of shape (height, width, 3), got ") +
                Py_TYPE(obj.ptr())->tp_name);
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<uint8_t>())) {
        invalid("image must have dtype uint8, got " + py::str(a.dtype()).cast<std::string>());
    }
    if (a.ndim() != 3 || a.shape(2) != 3) {
        std::string shape = "(";
        for (py::ssize_t i = 0; i < a.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(a.shape(i));
        invalid("image must have shape (height, width, 3), got " + shape + ")");
    }
    const py::ssize_t h = a.shape(0), w = a.shape(1);
    if (w <= 0 || h <= 0) {
        invalid("image size " + std::to_string(w) + "x" + std::to_string(h) + ": width and height must be positive");
    }
    if (w > kMaxImagePixels || h > kMaxImagePixels || (int64_t) w * h > kMaxImagePixels) {
        invalid("image size " + std::to_string(w) + "x" + std::to_string(h) + " has more than " +
                std::to_string(kMaxImagePixels) + " pixels");
    }
    RgbInput in;
    in.arr    = py::array_t<uint8_t, py::array::c_style>::ensure(a);
    if (!in.arr) throw py::error_already_set();
    in.data   = in.arr.data();
    in.width  = (int) w;
    in.height = (int) h;
    return in;
}

// Moves a vector into a numpy array without copying its data.
template <class T>
py::array_t<T> to_array(std::vector<T> && v, std::vector<py::ssize_t> shape) {
    auto *      heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void * p) { delete static_cast<std::vector<T> *>(p); });
    return py::array_t<T>(std::move(shape), heap->data(), owner);
}

py::array_t<float> slice_array(ImageSlice && s) {
    return to_array(std::move(s.pixels), {3, s.height, s.width});
}

SliceConfig make_config(int max_slice_nums, int scale_resolution, int patch_size) {
    SliceConfig cfg;
    cfg.max_slice_nums   = max_slice_nums;
    cfg.scale_resolution = scale_resolution;
    cfg.patch_size       = patch_size;
    return cfg;
}

void set_channels(float (&dst)[3], const std::vector<float> & src, const char * name) {
    if (src.size() != 3) invalid(std::string(name) + " must have 3 values, got " + std::to_string(src.size()));
    for (int c = 0; c < 3; ++c) dst[c] = src[c];
}

// Tokenizers loaded by path for image_placeholder_tokens, kept for the process's life.
std::shared_ptr<PyTokenizer> tokenizer_for_path(const std::string & path) {
    static std::mutex                                           mu;
    static std::map<std::string, std::shared_ptr<PyTokenizer>> cache;
    std::lock_guard<std::mutex>                                 lock(mu);
    auto                                                        it = cache.find(path);
    if (it != cache.end()) return it->second;
    auto t = std::make_shared<PyTokenizer>(path);
    cache.emplace(path, t);
    return t;
}

SliceGrid make_grid(int cols, int rows) {
    if (cols < 0 || rows < 0 || (cols == 0) != (rows == 0)) {
        invalid("grid (" + std::to_string(cols) + ", " + std::to_string(rows) +
                ") must be two positive numbers, or (0, 0) for an unsliced image");
    }
    return SliceGrid{cols, rows};
}

} // namespace

void bind_image(py::module_ & mod) {
    mod.attr("image_max_pixels") = py::int_(kMaxImagePixels);

    mod.def("image_best_grid", [](int width, int height, int max_slice_nums, int scale_resolution, int patch_size) {
        const SliceGrid g = best_grid(width, height, make_config(max_slice_nums, scale_resolution, patch_size));
        return std::make_pair(g.cols, g.rows);
    }, py::arg("width"), py::arg("height"), py::arg("max_slice_nums") = 9, py::arg("scale_resolution") = 448,
       py::arg("patch_size") = 14, "Slicing grid (cols, rows) of the reference processor; (0, 0): not sliced.");

    mod.def("image_overview_size", [](int width, int height, int max_slice_nums, int scale_resolution, int patch_size) {
        int w = 0, h = 0;
        overview_size(width, height, make_config(max_slice_nums, scale_resolution, patch_size), &w, &h);
        return std::make_pair(w, h);
    }, py::arg("width"), py::arg("height"), py::arg("max_slice_nums") = 9, py::arg("scale_resolution") = 448,
       py::arg("patch_size") = 14, "Size (w, h) of the overview image.");

    mod.def("image_refine_size", [](int width, int height, int max_slice_nums, int scale_resolution, int patch_size,
                                    std::optional<std::pair<int, int>> grid) -> py::object {
        const SliceConfig cfg = make_config(max_slice_nums, scale_resolution, patch_size);
        const SliceGrid   g   = grid ? make_grid(grid->first, grid->second) : best_grid(width, height, cfg);
        if (!g.sliced()) return py::none();
        int w = 0, h = 0;
        refine_size(width, height, g, cfg, &w, &h);
        return py::make_tuple(w, h);
    }, py::arg("width"), py::arg("height"), py::arg("max_slice_nums") = 9, py::arg("scale_resolution") = 448,
       py::arg("patch_size") = 14, py::arg("grid") = py::none(),
       "Size (w, h) of the refine image cut into the slices, or None when the image is not sliced.");

    mod.def("image_resize_bicubic", [](const py::object & image, int out_w, int out_h,
                                       std::optional<bool> vertical_first) {
        RgbInput in = as_rgb8(image);
        std::vector<uint8_t> out;
        {
            py::gil_scoped_release nogil;
            out = vertical_first ? resize_bicubic_pillow_ordered(in.data, in.width, in.height, out_w, out_h,
                                                                 *vertical_first)
                                 : resize_bicubic_pillow(in.data, in.width, in.height, out_w, out_h);
        }
        return to_array(std::move(out), {out_h, out_w, 3});
    }, py::arg("image"), py::arg("out_w"), py::arg("out_h"), py::arg("vertical_first") = py::none(),
       "Pillow-exact Image.resize((out_w, out_h), BICUBIC) of an RGB8 array [h, w, 3].");

    mod.def("image_preprocess", [](const py::object & image, int max_slice_nums, int scale_resolution, int patch_size,
                                   const std::vector<float> & mean, const std::vector<float> & std) {
        SliceConfig cfg = make_config(max_slice_nums, scale_resolution, patch_size);
        set_channels(cfg.mean, mean, "mean");
        set_channels(cfg.std, std, "std");
        RgbInput          in = as_rgb8(image);
        PreprocessedImage res;
        {
            py::gil_scoped_release nogil;
            res = preprocess_image(in.data, in.width, in.height, cfg);
        }
        py::dict d;
        d["overview"] = slice_array(std::move(res.overview));
        py::list slices;
        for (auto & s : res.slices) slices.append(slice_array(std::move(s)));
        d["slices"] = slices;
        d["grid"]   = py::make_tuple(res.grid.cols, res.grid.rows);
        return d;
    }, py::arg("image"), py::arg("max_slice_nums") = 9, py::arg("scale_resolution") = 448, py::arg("patch_size") = 14,
       py::arg("mean") = std::vector<float>{0.5f, 0.5f, 0.5f}, py::arg("std") = std::vector<float>{0.5f, 0.5f, 0.5f},
       "Overview and slices of an RGB8 array [h, w, 3], normalised, planar float32 [3, h, w].");

    mod.def("image_placeholder_text", [](int cols, int rows, int n_query, std::optional<int> image_id) {
        return image_placeholder_text(make_grid(cols, rows), n_query, image_id);
    }, py::arg("cols"), py::arg("rows"), py::arg("n_query") = 64, py::arg("image_id") = py::none(),
       "The reference's placeholder text for one image.");

    mod.def("image_placeholder_tokens", [](const py::object & tokenizer, int cols, int rows, int n_query,
                                           std::optional<int> image_id) {
        std::shared_ptr<PyTokenizer> owned;
        const PyTokenizer *          t = nullptr;
        // minicpm_cpp.Tokenizer wraps a _core.Tokenizer in `_t`.
        py::object native = py::hasattr(tokenizer, "_t") ? tokenizer.attr("_t") : tokenizer;
        if (py::isinstance<PyTokenizer>(native)) {
            t = &native.cast<const PyTokenizer &>();
        } else if (py::isinstance<py::str>(tokenizer) || py::hasattr(tokenizer, "__fspath__")) {
            const std::string path = py::module_::import("os").attr("fspath")(tokenizer).cast<std::string>();
            owned = tokenizer_for_path(path);
            t     = owned.get();
        } else {
            invalid(std::string("tokenizer must be a minicpm_cpp Tokenizer or a GGUF path, got ") +
                    Py_TYPE(tokenizer.ptr())->tp_name);
        }
        const SliceGrid      grid = make_grid(cols, rows);
        std::vector<int32_t> positions;
        std::vector<int32_t> ids;
        {
            py::gil_scoped_release nogil;
            ids = image_placeholder_tokens(*t->tok, grid, n_query, image_id, &positions);
        }
        return std::make_pair(ids, positions);
    }, py::arg("tokenizer"), py::arg("cols"), py::arg("rows"), py::arg("n_query") = 64,
       py::arg("image_id") = py::none(),
       "Token ids of one image's placeholder and the positions of its image-embedding tokens.");
}
