// Python bindings for the vision component: a test/debug handle on the vision tower and
// resampler of one GGUF file (ours or a llama.cpp mmproj). Conversion and validation only.
#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "core/weights.h"
#include "minicpm/minicpm.h"
#include "models/vision.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace minicpm;

namespace {

class PyVisionModel {
public:
    PyVisionModel(const std::string & path, const std::string & device, int n_threads, std::optional<bool> fuse_qkv,
                  std::optional<bool> pad_heads, const std::string & flash_attn, std::optional<bool> fold_norms) {
        file_ = std::make_unique<GgufFile>(path);
        if (!kVisionComponent.present(*file_)) {
            throw Error(ErrorKind::Format, path + " has no MiniCPM-V vision encoder");
        }
        ModelParams params;
        params.device = device;
        params.n_threads = n_threads;
        params.fuse_qkv = fuse_qkv;
        params.vision_pad_heads = pad_heads;
        params.vision_fold_norms = fold_norms;
        params.vision_flash_attn = flash_attn;
        devices_  = std::make_unique<Devices>(device, n_threads);
        auto c    = kVisionComponent.load(ComponentLoad{*file_, *devices_, params});
        model_.reset(static_cast<VisionModel *>(c.release()));
        hp_       = model_->hp;
        backends_ = std::make_unique<ComputeBackends>(*devices_, n_threads);
        encoder_  = std::make_unique<VisionEncoder>(*model_, *backends_);
    }

    py::dict hparams() const {
        const VisionHparams & h = encoder_->hparams();
        py::dict d;
        d["n_embd"] = h.n_embd;
        d["n_layer"] = h.n_layer;
        d["n_head"] = h.n_head;
        d["n_ff"] = h.n_ff;
        d["patch_size"] = h.patch_size;
        d["image_size"] = h.image_size;
        d["n_pos"] = h.n_pos;
        d["pos_side"] = h.pos_side;
        d["eps"] = h.eps;
        d["mean"] = std::vector<float>(h.mean, h.mean + 3);
        d["std"] = std::vector<float>(h.std, h.std + 3);
        d["n_query"] = h.n_query;
        d["rs_dim"] = h.rs_dim;
        d["rs_heads"] = h.rs_heads;
        d["rs_eps"] = h.rs_eps;
        d["max_slice_nums"] = h.max_slice_nums;
        d["use_image_id"] = h.use_image_id;
        d["minicpmv_version"] = h.minicpmv_version;
        d["ffn_swapped"] = h.ffn_swapped;
        d["device"] = backends_->main_name();
        d["flash"] = model_->mode.flash;
        d["pad_heads"] = model_->mode.fa_pad;
        d["norms_folded"] = model_->w.layers.front().ln1_w == nullptr;
        d["head_stored"] = model_->w.head_stored > 0 ? model_->w.head_stored : h.n_embd / h.n_head;
        return d;
    }

    py::array_t<float> encode_vit(const py::handle & pixels) {
        ImageSlice s = to_slice(pixels, "pixels");
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = encoder_->encode_vit(s);
        }
        const int64_t P = hp_.patch_size;
        return to_array(out, {(py::ssize_t) ((s.width / P) * (s.height / P)), (py::ssize_t) hp_.n_embd});
    }

    py::array_t<float> encode(const py::sequence & slices) {
        if (py::isinstance<py::str>(slices) || py::isinstance<py::array>(slices)) {
            throw Error(ErrorKind::InvalidArgument, "encode takes a list of [3, h, w] float32 arrays");
        }
        std::vector<ImageSlice> owned;
        owned.reserve((size_t) py::len(slices));
        for (size_t i = 0; i < (size_t) py::len(slices); ++i) {
            owned.push_back(to_slice(slices[i], "slices[" + std::to_string(i) + "]"));
        }
        std::vector<const ImageSlice *> ptrs;
        for (const auto & s : owned) ptrs.push_back(&s);
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = encoder_->encode(ptrs);
        }
        return to_array(out, {(py::ssize_t) owned.size(), (py::ssize_t) hp_.n_query, (py::ssize_t) hp_.rs_dim});
    }

private:
    // A C-contiguous float32 [3, h, w] array with h, w positive multiples of the patch size.
    ImageSlice to_slice(const py::handle & obj, const std::string & what) const {
        if (!py::isinstance<py::array>(obj)) {
            throw Error(ErrorKind::InvalidArgument, what + " must be a numpy array, got " +
                                                        std::string(Py_TYPE(obj.ptr())->tp_name));
        }
        py::array arr = py::reinterpret_borrow<py::array>(obj);
        if (!arr.dtype().is(py::dtype::of<float>())) {
            throw Error(ErrorKind::InvalidArgument, what + " must be float32, got " + std::string(py::str(arr.dtype())));
        }
        const int64_t P = hp_.patch_size;
        if (arr.ndim() != 3 || arr.shape(0) != 3) {
            std::string shape = "(";
            for (py::ssize_t i = 0; i < arr.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(arr.shape(i));
            throw Error(ErrorKind::InvalidArgument, what + " must have shape [3, h, w], got " + shape + ")");
        }
        const int64_t h = arr.shape(1), w = arr.shape(2);
        if (h <= 0 || w <= 0 || h % P != 0 || w % P != 0) {
            throw Error(ErrorKind::InvalidArgument, what + ": h and w must be positive multiples of the patch size " +
                                                        std::to_string(P) + ", got h=" + std::to_string(h) +
                                                        ", w=" + std::to_string(w));
        }
        auto c = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
        if (!c) throw py::error_already_set();
        ImageSlice s;
        s.width = (int) w;
        s.height = (int) h;
        s.pixels.resize((size_t) (3 * h * w));
        std::memcpy(s.pixels.data(), c.data(), s.pixels.size() * sizeof(float));
        return s;
    }

    static py::array_t<float> to_array(const std::vector<float> & v, std::vector<py::ssize_t> shape) {
        py::array_t<float> out(shape);
        if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
        return out;
    }

    // Declaration order is destruction order reversed: the encoder goes before the weights and
    // backends it uses.
    std::unique_ptr<GgufFile>        file_;
    std::unique_ptr<Devices>         devices_;
    std::unique_ptr<VisionModel>     model_;
    VisionHparams                    hp_;
    std::unique_ptr<ComputeBackends> backends_;
    std::unique_ptr<VisionEncoder>   encoder_;
};

py::array_t<float> to_array_2d(const std::vector<float> & v, int64_t rows, int64_t cols) {
    py::array_t<float> out({(py::ssize_t) rows, (py::ssize_t) cols});
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
    return out;
}

} // namespace

void bind_vision(py::module_ & mod) {
    py::class_<PyVisionModel>(mod, "VisionModel",
                              "Vision tower + resampler of one GGUF file, for tests and debugging.")
        .def(py::init<const std::string &, const std::string &, int, std::optional<bool>, std::optional<bool>,
                      const std::string &, std::optional<bool>>(),
             py::arg("path"), py::arg("device") = "cpu", py::arg("n_threads") = 0, py::arg("fuse_qkv") = py::none(),
             py::arg("pad_heads") = py::none(), py::arg("flash_attn") = "auto", py::arg("fold_norms") = py::none())
        .def_property_readonly("hparams", &PyVisionModel::hparams)
        .def("encode_vit", &PyVisionModel::encode_vit, py::arg("pixels"),
             "[3, h, w] float32 normalised pixels -> [n_patches, n_embd] post-LayerNorm ViT features")
        .def("encode", &PyVisionModel::encode, py::arg("slices"),
             "list of [3, h, w] float32 slices -> [n_slices, n_query, rs_dim] embeddings");

    mod.def(
        "vision_position_ids",
        [](int64_t ph, int64_t pw, int64_t side) {
            std::vector<int32_t> ids = navit_position_ids(ph, pw, side);
            py::array_t<int32_t> out((py::ssize_t) ids.size());
            if (!ids.empty()) std::memcpy(out.mutable_data(), ids.data(), ids.size() * sizeof(int32_t));
            return out;
        },
        py::arg("ph"), py::arg("pw"), py::arg("side") = 70,
        "NaViT position-table rows of a ph x pw patch grid (row-major), as the reference buckets them");
    mod.def(
        "vision_resampler_pos_embed",
        [](int64_t dim, int64_t ph, int64_t pw) {
            std::vector<float> pos = resampler_pos_embed(dim, ph, pw);
            return to_array_2d(pos, ph * pw, dim);
        },
        py::arg("dim"), py::arg("ph"), py::arg("pw"),
        "the resampler's 2D sin-cos key positions, [ph * pw, dim]");
}
