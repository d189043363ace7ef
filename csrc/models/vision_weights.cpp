// MiniCPM-V vision: what the file holds (hyperparameters, weight declarations) and the
// host-side inputs computed from it (NaViT position ids, the resampler's 2D sin-cos table).
// Mirrors modeling_navit_siglip.py and resampler.py; see tests/ref_minicpmv_vision.py. The graph
// and its runtime are in vision.cpp.
#include "vision.h"

#include "core/fold.h"

#include "core/error.h"
#include "core/log.h"
#include "model/names.h"

#include "gguf.h"

#include "graph/blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace minicpm {

namespace {

int64_t need_positive(const GgufFile & f, KeyName k) {
    const std::string key = key_name(k);
    uint32_t v = f.get_u32(key);
    if (v == 0) fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + " must be > 0");
    return v;
}

const TensorInfo & need_tensor(const GgufFile & f, TensorName t) {
    const TensorInfo * info = f.find_tensor(tensor_name(t));
    if (!info) fail(ErrorKind::Format, "tensor " + tensor_name(t) + " not found in " + f.path());
    return *info;
}

// A float array of exactly `n` values (f32 or f64 elements), e.g. clip.vision.image_mean.
bool read_f32_array(const GgufFile & f, KeyName k, float * out, size_t n) {
    const std::string key = key_name(k);
    const int64_t id = gguf_find_key(f.ctx(), key.c_str());
    if (id < 0) return false;
    if (gguf_get_kv_type(f.ctx(), id) != GGUF_TYPE_ARRAY) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + " must be an array of " + std::to_string(n) +
                                    " floats");
    }
    const gguf_type et = gguf_get_arr_type(f.ctx(), id);
    const size_t    cnt = gguf_get_arr_n(f.ctx(), id);
    if ((et != GGUF_TYPE_FLOAT32 && et != GGUF_TYPE_FLOAT64) || cnt != n) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": expected " + std::to_string(n) +
                                    " floats, got " + std::to_string(cnt) + " elements of type " +
                                    gguf_type_name(et));
    }
    const void * data = gguf_get_arr_data(f.ctx(), id);
    for (size_t i = 0; i < n; ++i) {
        out[i] = et == GGUF_TYPE_FLOAT32 ? ((const float *) data)[i] : (float) ((const double *) data)[i];
    }
    return true;
}

// Round trips through memory, so that no compiler fuses a multiply and an add into an FMA
// (the reference rounds the product and the sum separately).
double keep(double x) {
    volatile double v = x;
    return v;
}
float to_f32(double x) {
    volatile float v = (float) keep(x);
    return v;
}

// torch.arange(start, end, step) with a float32 result on the CPU, bit for bit: the size is
// ceil((end - start) / step) in double; elements are computed in double (acc type) and
// rounded, except that the vectorised kernel (Vectorized<float>::arange, 8 lanes, used for
// whole pairs of vectors) rounds each vector's base element to float first and adds k * step
// to that rounded base. The NaViT bucket ids depend on these last-bit details wherever k/n
// lands on a multiple of 1/70 (n = 5, 7, 10, 14, 35, ...).
std::vector<float> torch_arange_f32(double start, double end, double step) {
    const int64_t size = (int64_t) std::ceil((end - start) / step);
    std::vector<float> out((size_t) std::max<int64_t>(size, 0));
    const int64_t lanes = 8;
    const int64_t n_vec = size / (2 * lanes) * (2 * lanes);
    for (int64_t i = 0; i < size; ++i) {
        if (i < n_vec) {
            const int64_t i0 = i - i % lanes;
            const double  base = (double) to_f32(start + keep(step * (double) i0));
            out[(size_t) i] = to_f32(base + keep(step * (double) (i - i0)));
        } else {
            out[(size_t) i] = to_f32(start + keep(step * (double) i));
        }
    }
    return out;
}

// The reference resamples every slice's patch grid onto the side x side position table:
// bucket = number of boundaries <= fractional coordinate (torch.bucketize, right=True).
std::vector<int32_t> navit_buckets(int64_t n, int64_t side) {
    const std::vector<float> bounds = torch_arange_f32(1.0 / (double) side, 1.0, 1.0 / (double) side);
    // 1 / nb_patches with nb_patches an integer tensor: a float32 division.
    const float step = 1.0f / (float) n;
    const std::vector<float> coords = torch_arange_f32(0.0, 1.0 - 1e-6, (double) step);
    if ((int64_t) coords.size() != n) {
        fail(ErrorKind::Unsupported, "slice of " + std::to_string(n) + " patches per side is too large for the position "
                                     "bucketing of the reference");
    }
    std::vector<int32_t> out((size_t) n);
    for (int64_t i = 0; i < n; ++i) {
        out[(size_t) i] = (int32_t) (std::upper_bound(bounds.begin(), bounds.end(), coords[(size_t) i]) - bounds.begin());
    }
    return out;
}

} // namespace

std::vector<int32_t> navit_position_ids(int64_t ph, int64_t pw, int64_t side) {
    if (ph <= 0 || pw <= 0 || side <= 0) {
        fail(ErrorKind::InvalidArgument, "navit_position_ids: grid and side must be > 0");
    }
    const std::vector<int32_t> rows = navit_buckets(ph, side);
    const std::vector<int32_t> cols = navit_buckets(pw, side);
    std::vector<int32_t> ids((size_t) (ph * pw));
    for (int64_t r = 0; r < ph; ++r) {
        for (int64_t c = 0; c < pw; ++c) ids[(size_t) (r * pw + c)] = rows[(size_t) r] * (int32_t) side + cols[(size_t) c];
    }
    return ids;
}

// get_2d_sincos_pos_embed cut to a ph x pw grid: for patch (r, c) the first half encodes the
// column c, the second half the row r; each half is sin of the dim/4 frequencies then cos.
// float32 throughout, as the reference's numpy code.
std::vector<float> resampler_pos_embed(int64_t dim, int64_t ph, int64_t pw) {
    if (dim <= 0 || dim % 4 != 0 || ph <= 0 || pw <= 0) {
        fail(ErrorKind::InvalidArgument, "resampler_pos_embed: dim must be a positive multiple of 4 and the grid > 0");
    }
    const int64_t quarter = dim / 4;
    std::vector<float> omega((size_t) quarter);
    for (int64_t i = 0; i < quarter; ++i) {
        const float e = (float) i / (float) quarter;   // arange(D/4) / (D/4), float32
        omega[(size_t) i] = 1.0f / std::pow(10000.0f, e);
    }
    std::vector<float> out((size_t) (ph * pw * dim));
    for (int64_t r = 0; r < ph; ++r) {
        for (int64_t c = 0; c < pw; ++c) {
            float * row = out.data() + (size_t) ((r * pw + c) * dim);
            for (int64_t i = 0; i < quarter; ++i) {
                const float ac = (float) c * omega[(size_t) i];
                const float ar = (float) r * omega[(size_t) i];
                row[i]               = std::sin(ac);
                row[quarter + i]     = std::cos(ac);
                row[2 * quarter + i] = std::sin(ar);
                row[3 * quarter + i] = std::cos(ar);
            }
        }
    }
    return out;
}

// get_1d_sincos_pos_embed_from_temporal_size at one position, float32 as the reference's numpy:
// omega = 1 / 10000^(arange(D/2) / (D/2)), out = t * omega, [sin(out), cos(out)].
std::vector<float> resampler_temporal_embed(int64_t dim, int64_t t) {
    if (dim <= 0 || dim % 2 != 0) fail(ErrorKind::InvalidArgument, "resampler_temporal_embed: dim must be even and > 0");
    if (t < -1 || t >= kMaxTemporalId) {
        fail(ErrorKind::InvalidArgument, "temporal id " + std::to_string(t) + " out of range [-1, " +
                                             std::to_string(kMaxTemporalId) + ")");
    }
    std::vector<float> out((size_t) dim, 0.0f);
    if (t < 0) return out;
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < half; ++i) {
        const float e = (float) i / (float) half;
        const float omega = 1.0f / std::pow(10000.0f, e);
        const float a = (float) t * omega;
        out[(size_t) i] = std::sin(a);
        out[(size_t) (half + i)] = std::cos(a);
    }
    return out;
}

VisionHparams VisionHparams::from_gguf(const GgufFile & f) {
    VisionHparams hp;
    const std::string & path = f.path();
    if (auto has = f.opt_bool(key_name(KeyName::CLIP_HAS_VISION)); has && !*has) {
        fail(ErrorKind::Unsupported, "file " + path + " has no vision encoder (" + key_name(KeyName::CLIP_HAS_VISION) +
                                         " is false)");
    }
    if (auto pt = f.opt_str(key_name(KeyName::CLIP_PROJECTOR_TYPE)); pt && *pt != "resampler") {
        fail(ErrorKind::Unsupported, "projector type '" + *pt + "' in " + path + " is not supported (expected 'resampler')");
    }
    if (auto kind = f.opt_str(key_name(KeyName::MINICPM_RS_KIND)); kind && *kind != "2d" && *kind != "3d") {
        fail(ErrorKind::Unsupported, "resampler kind '" + *kind + "' in " + path + " is not supported (2d, 3d)");
    } else {
        hp.temporal = kind && *kind == "3d";
    }

    // Sane maxima, checked before ggml sees the values (SigLIP-400M: 1152 wide, 27 layers of
    // 16 heads, n_ff 4304, patch 14, slices of 448 over a 70 x 70 position table, 64 queries).
    constexpr int64_t kMaxEmbd = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxFf = 1 << 20;
    constexpr int64_t kMaxPatch = 1024, kMaxImageSize = 4096, kMaxQuery = 4096, kMaxSliceNums = 1024;
    auto range = [&](KeyName k, int64_t v, int64_t lo, int64_t hi) { check_int_range(f, key_name(k), v, lo, hi); };
    hp.n_embd     = need_positive(f, KeyName::CLIP_V_EMBEDDING_LENGTH);
    range(KeyName::CLIP_V_EMBEDDING_LENGTH, hp.n_embd, 1, kMaxEmbd);
    hp.n_layer    = need_positive(f, KeyName::CLIP_V_BLOCK_COUNT);
    // Bounded by the tensors present, before the weight context is sized from it.
    check_layer_count(f, key_name(KeyName::CLIP_V_BLOCK_COUNT), hp.n_layer, kMaxLayers,
                      tensor_name(TensorName::V_LN1, (int) std::min<int64_t>(hp.n_layer, kMaxLayers) - 1));
    hp.n_head     = need_positive(f, KeyName::CLIP_V_HEAD_COUNT);
    range(KeyName::CLIP_V_HEAD_COUNT, hp.n_head, 1, kMaxHeads);
    hp.n_ff       = need_positive(f, KeyName::CLIP_V_FEED_FORWARD_LENGTH);
    range(KeyName::CLIP_V_FEED_FORWARD_LENGTH, hp.n_ff, 1, kMaxFf);
    hp.patch_size = need_positive(f, KeyName::CLIP_V_PATCH_SIZE);
    range(KeyName::CLIP_V_PATCH_SIZE, hp.patch_size, 1, kMaxPatch);
    if (hp.n_embd % hp.n_head != 0) {
        fail(ErrorKind::Format, "vision embedding_length " + std::to_string(hp.n_embd) + " is not a multiple of head_count " +
                                    std::to_string(hp.n_head) + " in " + path);
    }
    // Slice side: our key when present, else clip.vision.image_size (448 in mmproj files).
    const KeyName size_key = f.has_key(key_name(KeyName::MINICPM_V_SCALE_RESOLUTION)) ? KeyName::MINICPM_V_SCALE_RESOLUTION
                                                                                      : KeyName::CLIP_V_IMAGE_SIZE;
    hp.image_size = need_positive(f, size_key);
    // The slice side sizes the reserved graphs (side^2 patches per slice, quadratic attention):
    // in [patch_size, 4096], and no more patches per side than the position table has buckets
    // (checked below, once the table is read). 10000 on a tiny image took minutes and ~5 GB.
    if (hp.image_size < hp.patch_size || hp.image_size > kMaxImageSize) {
        fail(ErrorKind::Format, "metadata key " + key_name(size_key) + " in " + path + ": slice size " +
                                    std::to_string(hp.image_size) + " out of range [patch size " +
                                    std::to_string(hp.patch_size) + ", " + std::to_string(kMaxImageSize) + "]");
    }
    hp.eps = f.opt_f32(key_name(KeyName::CLIP_V_LN_EPS)).value_or(1e-6f);
    check_float_range(f, key_name(KeyName::CLIP_V_LN_EPS), hp.eps, 0.0f, 0.1f, /*lo_open =*/true);   // (0, 0.1]
    read_f32_array(f, KeyName::CLIP_V_IMAGE_MEAN, hp.mean, 3);
    read_f32_array(f, KeyName::CLIP_V_IMAGE_STD, hp.std, 3);
    // Pixels are (x - mean) / std with x in [0, 1]: mean in [-1e3, 1e3], std in [1e-3, 1e3]
    // (1e-45 or 1e30 give inf or constant inputs). Real files: 0.5 / 0.5.
    for (int c = 0; c < 3; ++c) {
        check_float_range(f, key_name(KeyName::CLIP_V_IMAGE_MEAN) + "[" + std::to_string(c) + "]", hp.mean[c], -1e3f, 1e3f);
        check_float_range(f, key_name(KeyName::CLIP_V_IMAGE_STD) + "[" + std::to_string(c) + "]", hp.std[c], 1e-3f, 1e3f);
    }

    // The position table fixes the bucket grid: n_pos rows = side^2.
    const TensorInfo & pos = need_tensor(f, TensorName::V_POS_EMBD);
    hp.n_pos = pos.ne[1];
    hp.pos_side = (int64_t) std::llround(std::sqrt((double) hp.n_pos));
    if (pos.ne[0] != hp.n_embd || hp.n_pos <= 0 || hp.pos_side * hp.pos_side != hp.n_pos || pos.n_dims != 2) {
        fail(ErrorKind::Format, "tensor " + pos.name + ": expected [" + std::to_string(hp.n_embd) +
                                    ", side^2] (a square position grid), got " + shape_str(pos.ne, pos.n_dims) + " in " +
                                    path);
    }
    // A default slice has at most as many patches per side as the table has buckets (the
    // reference's 448 / 14 = 32 against 70).
    if (hp.image_size / hp.patch_size > hp.pos_side) {
        fail(ErrorKind::Format, "metadata key " + key_name(size_key) + " in " + path + ": slice size " +
                                    std::to_string(hp.image_size) + " gives " + std::to_string(hp.image_size / hp.patch_size) +
                                    " patches per side, more than the " + std::to_string(hp.pos_side) + " of " + pos.name);
    }

    // Resampler: the width comes from proj (as clip.cpp), the query count from the query tensor.
    const TensorInfo & proj = need_tensor(f, TensorName::RS_PROJ);
    hp.rs_dim = proj.ne[0];
    if (hp.rs_dim <= 0 || proj.ne[1] != hp.rs_dim || proj.n_dims != 2) {
        fail(ErrorKind::Format, "tensor " + proj.name + ": expected a square matrix, got " +
                                    shape_str(proj.ne, proj.n_dims) + " in " + path);
    }
    if (hp.rs_dim % 4 != 0) {
        fail(ErrorKind::Format, "resampler width " + std::to_string(hp.rs_dim) +
                                    " must be a multiple of 4 (2D sin-cos position table) in " + path);
    }
    const TensorInfo & query = need_tensor(f, TensorName::RS_QUERY);
    hp.n_query = query.ne[1];
    if (query.ne[0] != hp.rs_dim || hp.n_query <= 0 || hp.n_query > kMaxQuery || query.n_dims != 2) {
        fail(ErrorKind::Format, "tensor " + query.name + ": expected [" + std::to_string(hp.rs_dim) +
                                    ", n_query], got " + shape_str(query.ne, query.n_dims) + " in " + path);
    }
    const int64_t version = f.opt_u32(key_name(KeyName::CLIP_MINICPMV_VERSION)).value_or(0);
    range(KeyName::CLIP_MINICPMV_VERSION, version, 0, 1 << 20);   // 2 .. 6, 100045
    hp.minicpmv_version = (int) version;
    // llama.cpp's mmproj files have no resampler kind; their MiniCPM-V 4.5 (clip.minicpmv_version
    // 6) resampler is the 3D one (same weights, temporal sin-cos computed at run time).
    constexpr int64_t kLlamaCppMinicpmV45 = 6;
    if (!f.has_key(key_name(KeyName::MINICPM_RS_KIND))) hp.temporal = version == kLlamaCppMinicpmV45;
    // clip.minicpmv_query_num is absent from older mmproj files (clip.cpp then assumes 64 for
    // versions 3, 4, 5, 6, 100045); the query tensor is authoritative, the key must agree.
    if (auto qn = f.opt_u32(key_name(KeyName::CLIP_MINICPMV_QUERY_NUM)); qn && *qn != 0 && *qn != hp.n_query) {
        fail(ErrorKind::Format, key_name(KeyName::CLIP_MINICPMV_QUERY_NUM) + " = " + std::to_string(*qn) + " but " +
                                    query.name + " has " + std::to_string(hp.n_query) + " queries in " + path);
    }
    if (f.has_key(key_name(KeyName::MINICPM_RS_HEAD_COUNT))) {
        hp.rs_heads = need_positive(f, KeyName::MINICPM_RS_HEAD_COUNT);
    } else {
        // Every official init_resampler uses embed_dim // 128 heads.
        hp.rs_heads = hp.rs_dim / 128;
        if (hp.rs_heads == 0) {
            fail(ErrorKind::Format, "resampler width " + std::to_string(hp.rs_dim) + " < 128 and " +
                                        key_name(KeyName::MINICPM_RS_HEAD_COUNT) + " is missing in " + path);
        }
    }
    if (hp.rs_dim % hp.rs_heads != 0) {
        fail(ErrorKind::Format, "resampler width " + std::to_string(hp.rs_dim) + " is not a multiple of " +
                                    std::to_string(hp.rs_heads) + " heads in " + path);
    }
    hp.rs_eps = f.opt_f32(key_name(KeyName::MINICPM_RS_LN_EPS)).value_or(1e-6f);
    check_float_range(f, key_name(KeyName::MINICPM_RS_LN_EPS), hp.rs_eps, 0.0f, 0.1f, /*lo_open =*/true);   // (0, 0.1]

    // [1, 1024], as the slicer's own check (the reference's default is 9).
    const int64_t max_slices = f.opt_u32(key_name(KeyName::MINICPM_V_MAX_SLICE_NUMS)).value_or(9);
    range(KeyName::MINICPM_V_MAX_SLICE_NUMS, max_slices, 1, kMaxSliceNums);
    hp.max_slice_nums = (int) max_slices;
    hp.use_image_id = f.opt_bool(key_name(KeyName::MINICPM_V_USE_IMAGE_ID)).value_or(true);

    // Legacy mmproj files store fc1 as ffn_down and fc2 as ffn_up (clip.cpp swaps them at load
    // when ffn_down.ne[0] == n_embd); our converter writes ffn_up = fc1. Decided by shape.
    if (const TensorInfo * down = f.find_tensor(tensor_name(TensorName::V_FFN_DOWN, 0))) {
        hp.ffn_swapped = hp.n_ff != hp.n_embd && down->ne[0] == hp.n_embd && down->ne[1] == hp.n_ff;
    }
    return hp;
}

SliceConfig VisionHparams::slice_config() const {
    SliceConfig c;
    c.scale_resolution = (int) image_size;
    c.patch_size = (int) patch_size;
    c.max_slice_nums = max_slice_nums;
    for (int i = 0; i < 3; ++i) {
        c.mean[i] = mean[i];
        c.std[i] = std[i];
    }
    return c;
}

void VisionWeights::fuse_qkv(WeightStore & store, bool on_cpu_too) {
    for (size_t il = 0; il < layers.size(); ++il) {
        VisionLayer & l = layers[il];
        const std::string p = "v.blk." + std::to_string(il);
        l.qkv_w = store.fuse_rows({l.q_w, l.k_w, l.v_w}, p + ".attn_qkv.fused", on_cpu_too);
        l.qkv_b = l.qkv_w ? store.fuse_rows({l.q_b, l.k_b, l.v_b}, p + ".attn_qkv_b.fused", on_cpu_too) : nullptr;
        if (!l.qkv_b) l.qkv_w = nullptr;   // (the parts stay usable either way)
    }
}

bool VisionWeights::fold(WeightStore & store, const VisionHparams & hp, bool fold_norms, int64_t head_to) {
    const int64_t D = hp.n_embd / hp.n_head;
    if (head_to <= D) head_to = 0;
    if (!fold_norms && head_to == 0) return false;
    const ggml_type t = layers.front().q_w->type;
    if (!is_float_type(t)) return false;
    for (const VisionLayer & L : layers) {
        for (const ggml_tensor * m : {L.q_w, L.k_w, L.v_w, L.o_w, L.fc1_w}) {
            if (m->type != t) return false;
        }
        for (const ggml_tensor * v : {L.ln1_w, L.ln1_b, L.ln2_w, L.ln2_b, L.q_b, L.k_b, L.v_b, L.fc1_b}) {
            if (!is_float_type(v->type)) return false;
        }
    }
    for (size_t il = 0; il < layers.size(); ++il) {
        VisionLayer & L = layers[il];
        const std::string p = "v.blk." + std::to_string(il);
        FoldSpec qkv{{L.q_w, L.k_w, L.v_w}, {L.q_b, L.k_b, L.v_b}, fold_norms ? L.ln1_w : nullptr,
                     fold_norms ? L.ln1_b : nullptr, head_to > 0 ? D : 0, head_to, 0, 0};
        // shapes from the spec, so they agree with what the fills write
        L.qkv_w = store.derived(p + ".attn_qkv.folded", t, {qkv.in_cols(), qkv.total_rows()},
                                [&store, qkv, t](uint8_t * d) { fill_folded_matrix(store, qkv, t, d); });
        L.qkv_b = store.derived(p + ".attn_qkv_b.folded", GGML_TYPE_F32, {qkv.total_rows()},
                                [&store, qkv](uint8_t * d) { fill_folded_bias(store, qkv, d); });
        for (ggml_tensor * m : {L.q_w, L.k_w, L.v_w}) store.drop(m);
        L.q_w = L.k_w = L.v_w = nullptr;
        if (head_to > 0) {
            FoldSpec o{{L.o_w}, {nullptr}, nullptr, nullptr, 0, 0, D, head_to};
            ggml_tensor * ow = store.derived(p + ".attn_out.padded", t, {o.in_cols(), o.total_rows()},
                                             [&store, o, t](uint8_t * d) { fill_folded_matrix(store, o, t, d); });
            store.drop(L.o_w);
            L.o_w = ow;
        }
        if (fold_norms) {
            FoldSpec fc1{{L.fc1_w}, {L.fc1_b}, L.ln2_w, L.ln2_b, 0, 0, 0, 0};
            ggml_tensor * up = store.derived(p + ".ffn_up.folded", t, {fc1.in_cols(), fc1.total_rows()},
                                             [&store, fc1, t](uint8_t * d) { fill_folded_matrix(store, fc1, t, d); });
            ggml_tensor * up_b = store.derived(p + ".ffn_up_b.folded", GGML_TYPE_F32, {fc1.total_rows()},
                                               [&store, fc1](uint8_t * d) { fill_folded_bias(store, fc1, d); });
            store.drop(L.fc1_w);
            L.fc1_w = up;
            L.fc1_b = up_b;
            L.ln1_w = L.ln1_b = L.ln2_w = L.ln2_b = nullptr;
        }
    }
    head_stored = head_to;
    return true;
}

VisionWeights VisionWeights::declare(WeightStore & s, const VisionHparams & hp) {
    VisionWeights w;
    const int64_t E = hp.n_embd, F = hp.n_ff, P = hp.patch_size, D = hp.rs_dim;
    // The convolution kernel, the position table and the queries are read as floats.
    w.patch_w = s.require(tensor_name(TensorName::V_PATCH_EMBD), {P, P, 3, E}, Placement::Main, TensorRole::Vector);
    w.patch_b = s.require(tensor_name(TensorName::V_PATCH_EMBD_BIAS), {E});
    w.pos     = s.require(tensor_name(TensorName::V_POS_EMBD), {E, hp.n_pos}, Placement::Main, TensorRole::Vector);

    const bool swapped = hp.ffn_swapped;
    const TensorName up_name = swapped ? TensorName::V_FFN_DOWN : TensorName::V_FFN_UP;
    const TensorName up_bias = swapped ? TensorName::V_FFN_DOWN_BIAS : TensorName::V_FFN_UP_BIAS;
    const TensorName dn_name = swapped ? TensorName::V_FFN_UP : TensorName::V_FFN_DOWN;
    const TensorName dn_bias = swapped ? TensorName::V_FFN_UP_BIAS : TensorName::V_FFN_DOWN_BIAS;

    for (int il = 0; il < hp.n_layer; ++il) {
        auto T = [&](TensorName t) { return tensor_name(t, il); };
        VisionLayer l;
        l.ln1_w = s.require(T(TensorName::V_LN1), {E});
        l.ln1_b = s.require(T(TensorName::V_LN1_BIAS), {E});
        l.ln2_w = s.require(T(TensorName::V_LN2), {E});
        l.ln2_b = s.require(T(TensorName::V_LN2_BIAS), {E});
        l.q_w   = s.require(T(TensorName::V_ATTN_Q), {E, E});
        l.q_b   = s.require(T(TensorName::V_ATTN_Q_BIAS), {E});
        l.k_w   = s.require(T(TensorName::V_ATTN_K), {E, E});
        l.k_b   = s.require(T(TensorName::V_ATTN_K_BIAS), {E});
        l.v_w   = s.require(T(TensorName::V_ATTN_V), {E, E});
        l.v_b   = s.require(T(TensorName::V_ATTN_V_BIAS), {E});
        l.o_w   = s.require(T(TensorName::V_ATTN_OUT), {E, E});
        l.o_b   = s.require(T(TensorName::V_ATTN_OUT_BIAS), {E});
        l.fc1_w = s.require(T(up_name), {E, F});
        l.fc1_b = s.require(T(up_bias), {F});
        l.fc2_w = s.require(T(dn_name), {F, E});
        l.fc2_b = s.require(T(dn_bias), {E});
        w.layers.push_back(l);
    }
    w.post_ln_w = s.require(tensor_name(TensorName::V_POST_LN), {E});
    w.post_ln_b = s.require(tensor_name(TensorName::V_POST_LN_BIAS), {E});

    w.query = s.require(tensor_name(TensorName::RS_QUERY), {D, hp.n_query}, Placement::Main, TensorRole::Vector);
    // kv_proj is nn.Identity in the reference when the vision width equals the resampler width.
    w.kv_w = E == D ? s.optional(tensor_name(TensorName::RS_KV), {E, D}) : s.require(tensor_name(TensorName::RS_KV), {E, D});
    w.q_w  = s.require(tensor_name(TensorName::RS_ATTN_Q), {D, D});
    w.q_b  = s.require(tensor_name(TensorName::RS_ATTN_Q_BIAS), {D});
    w.k_w  = s.require(tensor_name(TensorName::RS_ATTN_K), {D, D});
    w.k_b  = s.require(tensor_name(TensorName::RS_ATTN_K_BIAS), {D});
    w.v_w  = s.require(tensor_name(TensorName::RS_ATTN_V), {D, D});
    w.v_b  = s.require(tensor_name(TensorName::RS_ATTN_V_BIAS), {D});
    w.o_w  = s.require(tensor_name(TensorName::RS_ATTN_OUT), {D, D});
    w.o_b  = s.require(tensor_name(TensorName::RS_ATTN_OUT_BIAS), {D});
    w.ln_q_w    = s.require(tensor_name(TensorName::RS_LN_Q), {D});
    w.ln_q_b    = s.require(tensor_name(TensorName::RS_LN_Q_BIAS), {D});
    w.ln_kv_w   = s.require(tensor_name(TensorName::RS_LN_KV), {D});
    w.ln_kv_b   = s.require(tensor_name(TensorName::RS_LN_KV_BIAS), {D});
    w.ln_post_w = s.require(tensor_name(TensorName::RS_LN_POST), {D});
    w.ln_post_b = s.require(tensor_name(TensorName::RS_LN_POST_BIAS), {D});
    w.proj      = s.require(tensor_name(TensorName::RS_PROJ), {D, D});
    return w;
}

int64_t VisionMode::fa_pad_to(int64_t d) const {
    if (!fa_pad) return 0;
    for (int64_t s : {64, 80, 96, 112, 128, 256}) {
        if (d == s) return 0;
        if (d < s) return s;
    }
    return 0;
}

size_t VisionModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked(); }

namespace {

// Decides how the graph computes on this device: probes the two attention shapes (ViT
// self-attention, resampler cross-attention), strided padding and GELU with supports_op.
VisionMode choose_mode(const VisionHparams & hp, const VisionWeights & w, const Devices & devices,
                       const ModelParams & params) {
    VisionMode mode;
    const VisionLayer & L0 = w.layers.front();
    mode.exact = L0.q_w->type == GGML_TYPE_F32 && L0.fc1_w->type == GGML_TYPE_F32 && L0.fc2_w->type == GGML_TYPE_F32;
    // f32 arithmetic for f32 weights; F16 K/V for flash attention otherwise.
    mode.kv_type = mode.exact ? GGML_TYPE_F32 : GGML_TYPE_F16;
    // CPU kernels take any head size; GPU ones are fast only at a few.
    mode.fa_pad = params.vision_pad_heads.value_or(!devices.main_is_cpu());

    std::vector<uint8_t> buf(48 * ggml_tensor_overhead());
    ggml_init_params ip = {buf.size(), buf.data(), true};
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) fail(ErrorKind::Internal, "ggml_init failed for the vision probes");
    auto fa_ok = [&](int64_t d, int64_t heads, int64_t nq, int64_t nkv) {
        if (mode.fa_pad_to(d) > 0) d = mode.fa_pad_to(d);
        ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, d, nq, heads, 2);
        ggml_tensor * k = ggml_new_tensor_4d(ctx, mode.kv_type, d, nkv, heads, 2);
        ggml_tensor * v = ggml_new_tensor_4d(ctx, mode.kv_type, d, nkv, heads, 2);
        ggml_tensor * o = ggml_flash_attn_ext(ctx, q, k, v, nullptr, 1.0f, 0.0f, 0.0f);
        graph::set_prec_f32(o);
        return devices.supports_op(o);
    };
    const int64_t side = std::max<int64_t>(1, hp.image_size / hp.patch_size);
    const bool flash_ok = fa_ok(hp.n_embd / hp.n_head, hp.n_head, side * side, side * side) &&
                          fa_ok(hp.rs_dim / hp.rs_heads, hp.rs_heads, hp.n_query, side * side);
    if (mode.fa_pad) {
        // a [d, heads, n] view with a row stride of 3 * heads * d, as the fused Q|K|V gives
        ggml_tensor * t  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3 * hp.n_embd, 4);
        ggml_tensor * vw = ggml_view_3d(ctx, t, hp.n_embd / hp.n_head, hp.n_head, 4,
                                        ggml_row_size(t->type, hp.n_embd / hp.n_head), t->nb[1], 0);
        mode.pad_strided = devices.supports_op(ggml_pad(ctx, vw, 8, 0, 0, 0));
    }
    ggml_tensor * gx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_ff, 4);
    const bool gelu_ok = devices.supports_op(ggml_gelu(ctx, gx));
    ggml_free(ctx);

    const std::string & fa = params.vision_flash_attn;
    if (fa == "auto") {
        mode.flash = flash_ok;
    } else if (fa == "on") {
        if (!flash_ok) {
            fail(ErrorKind::Unsupported, "vision_flash_attn 'on': " + devices.main_name() +
                                             " has no flash attention kernel for these head sizes");
        }
        mode.flash = true;
    } else if (fa == "off") {
        mode.flash = false;
    } else {
        fail(ErrorKind::InvalidArgument, "vision_flash_attn must be 'auto', 'on' or 'off', got '" + fa + "'");
    }
    // The CPU's ggml_gelu rounds through an f16 table: only where the weights are not F32.
    // Other backends compute it in f32.
    mode.fast_gelu = gelu_ok && (!mode.exact || !devices.main_is_cpu());
    MINICPM_LOG_INFO("vision: %s weights, flash attention %s (K/V %s%s), GELU %s", mode.exact ? "f32" : "reduced-precision",
                     mode.flash ? "on" : "off", ggml_type_name(mode.kv_type), mode.fa_pad ? ", head size padded" : "",
                     mode.fast_gelu ? "ggml_gelu" : "f32 ops");
    return mode;
}

bool vision_present(const GgufFile & f) {
    if (f.find_tensor(tensor_name(TensorName::V_PATCH_EMBD))) return true;
    return f.opt_bool(key_name(KeyName::CLIP_HAS_VISION)).value_or(false) &&
           f.opt_bool(key_name(KeyName::CLIP_HAS_MINICPMV_PROJ)).value_or(false);
}

std::unique_ptr<Component> vision_load(const ComponentLoad & in) {
    auto m = std::make_unique<VisionModel>();
    m->hp = VisionHparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m->hp.n_layer * 20 + 64));
    m->w = VisionWeights::declare(*m->store, m->hp);
    // The mode reads the declared types only; the layout below depends on it.
    m->mode = choose_mode(m->hp, m->w, in.devices, in.params);
    const bool fold_norms = in.params.vision_fold_norms.value_or(!in.devices.main_is_cpu());
    const int64_t head_to = m->mode.flash && fold_norms ? m->mode.fa_pad_to(m->hp.n_embd / m->hp.n_head) : 0;
    if (!m->w.fold(*m->store, m->hp, fold_norms, head_to) && in.params.fuse_qkv.value_or(true)) {
        m->w.fuse_qkv(*m->store, in.params.fuse_qkv.value_or(false));
    }
    if (!m->w.layers.front().ln1_w || m->w.head_stored > 0) {
        MINICPM_LOG_INFO("vision: LayerNorms %s, heads stored at %lld", m->w.layers.front().ln1_w ? "kept" : "folded",
                         (long long) (m->w.head_stored > 0 ? m->w.head_stored : m->hp.n_embd / m->hp.n_head));
    }
    m->store->load();
    return m;
}

} // namespace

const ComponentType kVisionComponent = {"vision", &vision_present, &vision_load};

} // namespace minicpm
