// SigLIP NaViT vision tower and 2D resampler of MiniCPM-V / MiniCPM-o: the graph and its runtime
// (hyperparameters, weights and position inputs are in vision_weights.cpp).
// Mirrors modeling_navit_siglip.py (SiglipVisionEmbeddings, SiglipEncoderLayer, post_layernorm)
// and Resampler.forward of modeling_minicpmo.py / resampler.py; see tests/ref_minicpmv_vision.py.
#include "vision.h"

#include "core/error.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/parallel.h"
#include "graph/blocks.h"
#include "model/names.h"
#include "preprocess/tokenizer.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <utility>

namespace minicpm {

// ---------------------------------------------------------------------------------------------

namespace {

// Attention-score memory allowed for one batched ViT graph ([n, n, n_head] f32 per slice),
// when attention runs without flash attention.
constexpr size_t kBatchScoreBytes = 256u << 20;
// Patches per graph with flash attention (activations only grow linearly: 10 full 448 slices,
// the pieces of a 1344x1344 image, take 10240).
constexpr int64_t kBatchPatches = 16384;
// Slice sizes (groups of equal-size slices) evaluated in one graph.
constexpr size_t kMaxGroups = 4;

struct GroupSpec {
    int64_t pw = 0, ph = 0, n_seq = 0;
    // 3D resampler: frames per temporal group (n_seq / pack groups, each one cross-attention over
    // all patches of its frames, keys + temporal vectors); 0 = the 2D path, one per slice.
    int64_t pack = 0;
    bool operator==(const GroupSpec & o) const {
        return pw == o.pw && ph == o.ph && n_seq == o.n_seq && pack == o.pack;
    }
};

struct GroupIO {
    ggml_tensor * pixels = nullptr;   // F32 [w, h, 3, n_seq]
    ggml_tensor * pos_ids = nullptr;  // I32 [n_patches]: rows of the NaViT position table
    ggml_tensor * rs_pos = nullptr;   // F32 [rs_dim, n_patches]: 2D sin-cos of the patch grid
    ggml_tensor * rs_time = nullptr;  // F32 [rs_dim, 1, n_seq]: temporal vector of each frame (pack > 0)
    ggml_tensor * out = nullptr;      // F32 [n_embd, n_patches, n_seq] or [rs_dim, n_query, n_seq]
};

// Upper bound on the nodes of one group's graph.
int64_t nodes_per_group(const VisionHparams & hp) { return hp.n_layer * 48 + 256; }

// n_seq slices of pw x ph patches each: ViT, then (with_resampler) the resampler. Appended to gf.
GroupIO build_group(ggml_context * ctx, ggml_cgraph * gf, const VisionHparams & hp, const VisionWeights & w,
                    const VisionMode & mode, const GroupSpec & g, bool with_resampler) {
    using namespace graph;
    GroupIO in;
    const int64_t P = hp.patch_size, E = hp.n_embd, pw = g.pw, ph = g.ph, n_seq = g.n_seq, n = pw * ph;

    in.pixels = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, pw * P, ph * P, 3, n_seq);
    ggml_set_name(in.pixels, "inp_pixels");
    ggml_set_input(in.pixels);
    in.pos_ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    ggml_set_name(in.pos_ids, "inp_pos_ids");
    ggml_set_input(in.pos_ids);

    // Patch embedding = Conv2d(kernel = stride = P): im2col in f32 (ggml_conv_2d would take the
    // kernel's type, f16 in most files, for the pixels), then one matmul.
    ggml_tensor * cols = ggml_im2col(ctx, w.patch_w, in.pixels, (int) P, (int) P, 0, 0, 1, 1, true, GGML_TYPE_F32);
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], n * n_seq);                            // [3*P*P, n*n_seq]
    ggml_tensor * kernel = ggml_reshape_2d(ctx, w.patch_w, P * P * 3, E);                  // [3*P*P, E]
    ggml_tensor * x = graph::mul_mat(ctx, kernel, cols);                                     // [E, n*n_seq], row-major patches
    x = ggml_reshape_3d(ctx, x, E, n, n_seq);
    x = ggml_add(ctx, x, w.patch_b);
    x = ggml_add(ctx, x, ggml_get_rows(ctx, w.pos, in.pos_ids));                           // [E, n, n_seq]

    auto attend = [&](ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale) {
        return mode.flash ? attention_batched_flash(ctx, q, k, v, scale, mode.kv_type, mode.fa_pad_to(q->ne[0]),
                                                    mode.pad_strided)
                          : attention_batched(ctx, q, k, v, scale);
    };

    const int64_t hd = E / hp.n_head;
    // Heads as stored in the Q|K|V rows: padded at load (VisionWeights::fold) or the model's own.
    const int64_t hs = w.head_stored > 0 ? w.head_stored : hd, H = hp.n_head;
    const float   scale = 1.0f / std::sqrt((float) hd);
    // A LayerNorm whose affine was folded into the next product normalises only.
    auto norm = [&](ggml_tensor * t, ggml_tensor * g, ggml_tensor * b) {
        return g ? layer_norm(ctx, t, g, b, hp.eps) : ggml_norm(ctx, t, hp.eps);
    };
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const VisionLayer & L = w.layers[(size_t) il];
        ggml_tensor * cur = norm(x, L.ln1_w, L.ln1_b);
        ggml_tensor * q, * k, * v;
        if (L.qkv_w) {
            // one product: [3 H hs, n, n_seq], then [hs, H, n, n_seq] views of its rows
            ggml_tensor * qkv = ggml_add(ctx, graph::mul_mat(ctx, L.qkv_w, cur), ggml_reshape_1d(ctx, L.qkv_b, 3 * H * hs));
            const size_t  es  = ggml_element_size(qkv);
            q = ggml_view_4d(ctx, qkv, hs, H, n, n_seq, hs * es, qkv->nb[1], qkv->nb[2], 0);
            // K/V of another type for flash attention: one contiguous conversion of the product
            // (cheaper than converting the two strided views)
            ggml_tensor * kv = qkv;
            if (hs != hd && mode.flash && mode.kv_type != qkv->type) kv = ggml_cast(ctx, qkv, mode.kv_type);
            const size_t kes = ggml_element_size(kv);
            k = ggml_view_4d(ctx, kv, hs, H, n, n_seq, hs * kes, kv->nb[1], kv->nb[2], H * hs * kes);
            v = ggml_view_4d(ctx, kv, hs, H, n, n_seq, hs * kes, kv->nb[1], kv->nb[2], 2 * H * hs * kes);
        } else {
            q = ggml_reshape_4d(ctx, linear(ctx, cur, L.q_w, L.q_b), hd, H, n, n_seq);
            k = ggml_reshape_4d(ctx, linear(ctx, cur, L.k_w, L.k_b), hd, H, n, n_seq);
            v = ggml_reshape_4d(ctx, linear(ctx, cur, L.v_w, L.v_b), hd, H, n, n_seq);
        }
        cur = attend(q, k, v, scale);                                                      // [H hs, n, n_seq]
        cur = linear(ctx, cur, L.o_w, L.o_b);
        ggml_format_name(cur, "vit_attn_out-%d", (int) il);
        x = ggml_add(ctx, x, cur);

        cur = norm(x, L.ln2_w, L.ln2_b);
        cur = linear(ctx, cur, L.fc1_w, L.fc1_b);
        cur = mode.fast_gelu ? ggml_gelu(ctx, cur) : gelu_tanh(ctx, cur);
        cur = linear(ctx, cur, L.fc2_w, L.fc2_b);
        ggml_format_name(cur, "vit_ffn_out-%d", (int) il);
        x = ggml_add(ctx, x, cur);
        ggml_format_name(x, "vit_l_out-%d", (int) il);
    }
    x = layer_norm(ctx, x, w.post_ln_w, w.post_ln_b, hp.eps);                              // [E, n, n_seq]

    if (with_resampler) {
        const int64_t D = hp.rs_dim, Q = hp.n_query, rhd = D / hp.rs_heads;
        in.rs_pos = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, D, n);
        ggml_set_name(in.rs_pos, "inp_rs_pos");
        ggml_set_input(in.rs_pos);

        ggml_tensor * kv = w.kv_w ? graph::mul_mat(ctx, w.kv_w, x) : x;
        kv = layer_norm(ctx, kv, w.ln_kv_w, w.ln_kv_b, hp.rs_eps);                       // [D, n, n_seq]
        ggml_set_name(kv, "rs_kv");
        ggml_tensor * q = layer_norm(ctx, w.query, w.ln_q_w, w.ln_q_b, hp.rs_eps);         // [D, Q], shared
        // Positions go into the keys only (MultiheadAttention(q, kv + pos, kv)); the 3D path
        // adds each frame's temporal vector after the 2D one (k = x + pos_2d; k += temporal).
        ggml_tensor * k_in = ggml_add(ctx, kv, in.rs_pos);
        int64_t n_kv = n, n_att = n_seq;
        if (g.pack > 0) {
            in.rs_time = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, 1, n_seq);
            ggml_set_name(in.rs_time, "inp_rs_time");
            ggml_set_input(in.rs_time);
            k_in = ggml_add(ctx, k_in, in.rs_time);
            // frames of a group are consecutive: their keys/values concatenated frame by frame
            n_kv = n * g.pack;
            n_att = n_seq / g.pack;
        }
        ggml_tensor * kq = linear(ctx, q, w.q_w, w.q_b);
        ggml_tensor * kk = linear(ctx, k_in, w.k_w, w.k_b);
        ggml_tensor * kvv = linear(ctx, kv, w.v_w, w.v_b);
        kq  = ggml_reshape_4d(ctx, kq, rhd, hp.rs_heads, Q, 1);
        kk  = ggml_reshape_4d(ctx, kk, rhd, hp.rs_heads, n_kv, n_att);
        kvv = ggml_reshape_4d(ctx, kvv, rhd, hp.rs_heads, n_kv, n_att);
        ggml_tensor * cur = attend(kq, kk, kvv, 1.0f / std::sqrt((float) rhd));            // [D, Q, n_seq]
        cur = linear(ctx, cur, w.o_w, w.o_b);
        cur = layer_norm(ctx, cur, w.ln_post_w, w.ln_post_b, hp.rs_eps);
        x = graph::mul_mat(ctx, w.proj, cur);                                                // x @ proj: [D, Q, n_seq]
    }
    in.out = x;
    ggml_set_name(in.out, with_resampler ? "vision_embd" : "vit_features");
    ggml_set_output(in.out);
    ggml_build_forward_expand(gf, in.out);
    return in;
}

} // namespace

struct VisionEncoder::Impl {
    const VisionModel &  m;
    const VisionHparams & hp;
    const VisionWeights & w;
    const VisionMode &    mode;
    GraphRunner           runner;
    EvalObserver          observer;

    // The kept graph's groups and their inputs (valid while the runner keeps that graph).
    std::vector<GroupIO>  graph_io;

    // Host-side inputs by patch grid (pw, ph): they depend on the grid only.
    std::map<std::pair<int64_t, int64_t>, std::vector<int32_t>> pos_ids_cache;
    std::map<std::pair<int64_t, int64_t>, std::vector<float>>   rs_pos_cache;

    Impl(const VisionModel & model, const ComputeBackends & backends, const DebugOptions & debug)
        : m(model), hp(model.hp), w(model.w), mode(model.mode),
          runner("vision", backends, (size_t) (nodes_per_group(model.hp) * (int64_t) kMaxGroups)),
          observer("vision", debug) {
        // Reserve for the largest batch of full square slices an image gives (overview + slices);
        // a larger slice (extreme aspect ratios can exceed side^2 patches after rounding) grows
        // the buffers at its first allocation.
        const int64_t side = std::max<int64_t>(1, hp.image_size / hp.patch_size);
        const int64_t n_seq = std::min<int64_t>(max_batch(side * side), hp.max_slice_nums + 1);
        runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_group(ctx, gf, hp, w, mode, {side, side, n_seq}, true); });
        observer.attach(runner);
    }

    // Slices of one size evaluated per graph.
    int64_t max_batch(int64_t n_patches) const {
        if (mode.flash) return std::max<int64_t>(1, kBatchPatches / std::max<int64_t>(n_patches, 1));
        const size_t per = (size_t) hp.n_head * (size_t) n_patches * (size_t) n_patches * sizeof(float);
        return std::max<int64_t>(1, (int64_t) (kBatchScoreBytes / std::max<size_t>(per, 1)));
    }

    const std::vector<int32_t> & pos_ids(int64_t pw, int64_t ph) {
        auto it = pos_ids_cache.find({pw, ph});
        if (it == pos_ids_cache.end()) {
            if (pos_ids_cache.size() > 64) pos_ids_cache.clear();
            it = pos_ids_cache.emplace(std::make_pair(pw, ph), navit_position_ids(ph, pw, hp.pos_side)).first;
        }
        return it->second;
    }
    const std::vector<float> & rs_pos(int64_t pw, int64_t ph) {
        auto it = rs_pos_cache.find({pw, ph});
        if (it == rs_pos_cache.end()) {
            if (rs_pos_cache.size() > 8) rs_pos_cache.clear();   // rs_dim * patches floats each
            it = rs_pos_cache.emplace(std::make_pair(pw, ph), resampler_pos_embed(hp.rs_dim, ph, pw)).first;
        }
        return it->second;
    }

    // Runs groups of equal-size slices in one graph: slices[g] holds group g's n_seq slices.
    // Returns each group's output, [n_seq][rows][width].
    // times (3D resampler): per group of slices, one temporal vector [rs_dim] per slice, and
    // packs[gi] the frames per temporal group; empty = the 2D path.
    std::vector<std::vector<float>> run(const std::vector<std::vector<const ImageSlice *>> & slices,
                                        bool with_resampler, const std::vector<std::vector<float>> * times = nullptr,
                                        const std::vector<int64_t> * packs = nullptr) {
        const int64_t P = hp.patch_size;
        std::vector<GroupSpec> groups;
        GraphKey key = {with_resampler ? 1 : 0};
        for (size_t gi = 0; gi < slices.size(); ++gi) {
            const auto & g = slices[gi];
            groups.push_back({g[0]->width / P, g[0]->height / P, (int64_t) g.size(), packs ? (*packs)[gi] : 0});
            key.insert(key.end(), {groups.back().pw, groups.back().ph, groups.back().n_seq, groups.back().pack});
        }
        runner.prepare(key, [&](ggml_context * ctx, ggml_cgraph * gf) {
            graph_io.clear();
            for (const auto & g : groups) graph_io.push_back(build_group(ctx, gf, hp, w, mode, g, with_resampler));
        });
        for (size_t gi = 0; gi < groups.size(); ++gi) {
            const GroupSpec & g = groups[gi];
            const GroupIO &   io = graph_io[gi];
            const size_t slice_bytes = slices[gi][0]->pixels.size() * sizeof(float);
            for (int64_t s = 0; s < g.n_seq; ++s) {
                ggml_backend_tensor_set(io.pixels, slices[gi][(size_t) s]->pixels.data(), (size_t) s * slice_bytes,
                                        slice_bytes);
            }
            const std::vector<int32_t> & ids = pos_ids(g.pw, g.ph);
            ggml_backend_tensor_set(io.pos_ids, ids.data(), 0, ids.size() * sizeof(int32_t));
            if (with_resampler) {
                const std::vector<float> & pos = rs_pos(g.pw, g.ph);
                ggml_backend_tensor_set(io.rs_pos, pos.data(), 0, pos.size() * sizeof(float));
                if (io.rs_time) {
                    const std::vector<float> & t = (*times)[gi];
                    ggml_backend_tensor_set(io.rs_time, t.data(), 0, t.size() * sizeof(float));
                }
            }
        }
        runner.compute();
        observer.finish();
        std::vector<std::vector<float>> out(groups.size());
        for (size_t gi = 0; gi < groups.size(); ++gi) {
            out[gi].resize((size_t) ggml_nelements(graph_io[gi].out));
            ggml_backend_tensor_get(graph_io[gi].out, out[gi].data(), 0, out[gi].size() * sizeof(float));
        }
        return out;
    }

    void check_slice(const ImageSlice & s, size_t index) const {
        const int64_t P = hp.patch_size;
        const std::string what = "image slice " + std::to_string(index);
        if (s.width <= 0 || s.height <= 0 || s.width % P != 0 || s.height % P != 0) {
            fail(ErrorKind::InvalidArgument, what + ": size " + std::to_string(s.width) + "x" + std::to_string(s.height) +
                                                 " must be positive multiples of the patch size " + std::to_string(P));
        }
        if (s.pixels.size() != (size_t) 3 * (size_t) s.width * (size_t) s.height) {
            fail(ErrorKind::InvalidArgument, what + ": expected 3*" + std::to_string(s.height) + "*" +
                                                 std::to_string(s.width) + " floats, got " + std::to_string(s.pixels.size()));
        }
    }
};

VisionEncoder::VisionEncoder(const VisionModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

VisionEncoder::~VisionEncoder() = default;

const VisionHparams & VisionEncoder::hparams() const { return impl_->hp; }

// One tiny graph (a single-patch slice) through every layer: maps the weights in (page faults of
// the mapped file on the CPU), starts the backends' kernels, so that the first image does not
// pay for them.
void VisionEncoder::warm_up() {
    const int64_t P = impl_->hp.patch_size;
    ImageSlice s;
    s.width = (int) P;
    s.height = (int) P;
    s.pixels.assign((size_t) (3 * P * P), 0.0f);
    impl_->run({{&s}}, true);
    impl_->runner.invalidate();
}

std::vector<float> VisionEncoder::encode_vit(const ImageSlice & slice) {
    impl_->check_slice(slice, 0);
    return std::move(impl_->run({{&slice}}, false)[0]);
}

std::vector<float> VisionEncoder::encode(const std::vector<const ImageSlice *> & slices) {
    for (size_t i = 0; i < slices.size(); ++i) {
        if (!slices[i]) fail(ErrorKind::InvalidArgument, "image slice " + std::to_string(i) + " is null");
        impl_->check_slice(*slices[i], i);
    }
    const VisionHparams & hp_ = impl_->hp;
    const size_t row = (size_t) (hp_.n_query * hp_.rs_dim);
    std::vector<float> out(slices.size() * row);
    // Slices of one size share a batch (same patch grid, same positions); batches of several
    // sizes share a graph, so that an image (overview + slices) is one graph evaluation.
    std::map<std::pair<int, int>, std::vector<size_t>> by_size;
    for (size_t i = 0; i < slices.size(); ++i) by_size[{slices[i]->width, slices[i]->height}].push_back(i);
    std::vector<std::vector<size_t>> batches;
    for (const auto & [size, idx] : by_size) {
        const int64_t n = (int64_t) (size.first / hp_.patch_size) * (size.second / hp_.patch_size);
        const size_t  batch = (size_t) impl_->max_batch(n);
        for (size_t b0 = 0; b0 < idx.size(); b0 += batch) {
            batches.emplace_back(idx.begin() + (std::ptrdiff_t) b0, idx.begin() + (std::ptrdiff_t) std::min(idx.size(), b0 + batch));
        }
    }
    // Graphs of up to kMaxGroups batches, within the patch budget of one batch when possible.
    size_t b = 0;
    while (b < batches.size()) {
        std::vector<std::vector<const ImageSlice *>> part;
        std::vector<size_t> first_of;
        int64_t patches = 0;
        while (b < batches.size() && part.size() < kMaxGroups) {
            const ImageSlice & s0 = *slices[batches[b][0]];
            const int64_t p = (int64_t) batches[b].size() * (s0.width / hp_.patch_size) * (s0.height / hp_.patch_size);
            if (!part.empty() && (!impl_->mode.flash || patches + p > kBatchPatches)) break;
            std::vector<const ImageSlice *> g;
            for (size_t i : batches[b]) g.push_back(slices[i]);
            part.push_back(std::move(g));
            first_of.push_back(b);
            patches += p;
            ++b;
        }
        const std::vector<std::vector<float>> res = impl_->run(part, true);
        for (size_t gi = 0; gi < part.size(); ++gi) {
            const std::vector<size_t> & idx = batches[first_of[gi]];
            for (size_t j = 0; j < idx.size(); ++j) {
                std::memcpy(out.data() + idx[j] * row, res[gi].data() + j * row, row * sizeof(float));
            }
        }
    }
    return out;
}

std::vector<float> VisionEncoder::encode_temporal(const std::vector<const ImageSlice *> & frames,
                                                  const std::vector<std::vector<int>> & groups) {
    const VisionHparams & hp_ = impl_->hp;
    if (!hp_.temporal) {
        fail(ErrorKind::Unsupported, "this model's resampler has no temporal embedding (minicpm.resampler.kind is not "
                                     "'3d'): temporal ids need MiniCPM-V 4.5");
    }
    size_t total = 0;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
        const size_t k = groups[gi].size();
        if (k == 0 || k > (size_t) kMaxVideoPacking) {
            fail(ErrorKind::InvalidArgument, "temporal group " + std::to_string(gi) + " has " + std::to_string(k) +
                                                 " frames; a group packs 1 to " + std::to_string(kMaxVideoPacking));
        }
        for (int t : groups[gi]) {
            if (t < -1 || (int64_t) t >= kMaxTemporalId) {
                fail(ErrorKind::InvalidArgument, "temporal id " + std::to_string(t) + " in group " + std::to_string(gi) +
                                                     " out of range [-1, " + std::to_string(kMaxTemporalId) + ")");
            }
        }
        total += k;
    }
    if (total != frames.size()) {
        fail(ErrorKind::InvalidArgument, "temporal ids name " + std::to_string(total) + " frames but " +
                                             std::to_string(frames.size()) + " were given");
    }
    for (size_t i = 0; i < frames.size(); ++i) {
        if (!frames[i]) fail(ErrorKind::InvalidArgument, "frame " + std::to_string(i) + " is null");
        impl_->check_slice(*frames[i], i);
    }
    const int64_t P = hp_.patch_size;
    const size_t  row = (size_t) (hp_.n_query * hp_.rs_dim);
    std::vector<float> out(groups.size() * row);
    std::map<int, std::vector<float>> time_cache;
    auto time_of = [&](int t) -> const std::vector<float> & {
        auto it = time_cache.find(t);
        if (it == time_cache.end()) it = time_cache.emplace(t, resampler_temporal_embed(hp_.rs_dim, t)).first;
        return it->second;
    };
    // Batches: runs of consecutive groups with one frame size and one packing.
    struct Batch {
        size_t g0 = 0, n_groups = 0, f0 = 0;
        int64_t pack = 0, patches = 0;
    };
    std::vector<Batch> batches;
    size_t f = 0;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
        const ImageSlice & a = *frames[f];
        for (size_t j = 1; j < groups[gi].size(); ++j) {
            const ImageSlice & b = *frames[f + j];
            if (b.width != a.width || b.height != a.height) {
                fail(ErrorKind::InvalidArgument, "temporal group " + std::to_string(gi) + ": its frames must have one size (" +
                                                     std::to_string(a.width) + "x" + std::to_string(a.height) + " and " +
                                                     std::to_string(b.width) + "x" + std::to_string(b.height) + ")");
            }
        }
        const int64_t pack = (int64_t) groups[gi].size();
        const int64_t n = (a.width / P) * (a.height / P);
        const size_t  per = (size_t) std::max<int64_t>(1, impl_->max_batch(n) / pack);
        Batch * last = batches.empty() ? nullptr : &batches.back();
        const ImageSlice * lf = last ? frames[last->f0] : nullptr;
        if (last && last->pack == pack && lf->width == a.width && lf->height == a.height && last->n_groups < per) {
            last->n_groups += 1;
            last->patches += pack * n;
        } else {
            batches.push_back({gi, 1, f, pack, pack * n});
        }
        f += groups[gi].size();
    }
    size_t b = 0;
    while (b < batches.size()) {
        std::vector<std::vector<const ImageSlice *>> part;
        std::vector<std::vector<float>> times;
        std::vector<int64_t> packs;
        std::vector<size_t> first_of;
        int64_t patches = 0;
        while (b < batches.size() && part.size() < kMaxGroups) {
            const Batch & bt = batches[b];
            if (!part.empty() && (!impl_->mode.flash || patches + bt.patches > kBatchPatches)) break;
            const size_t nf = (size_t) bt.pack * bt.n_groups;
            std::vector<const ImageSlice *> sl(frames.begin() + (std::ptrdiff_t) bt.f0,
                                               frames.begin() + (std::ptrdiff_t) (bt.f0 + nf));
            std::vector<float> tv;
            tv.reserve(nf * (size_t) hp_.rs_dim);
            for (size_t gi = bt.g0; gi < bt.g0 + bt.n_groups; ++gi) {
                for (int t : groups[gi]) {
                    const std::vector<float> & v = time_of(t);
                    tv.insert(tv.end(), v.begin(), v.end());
                }
            }
            part.push_back(std::move(sl));
            times.push_back(std::move(tv));
            packs.push_back(bt.pack);
            first_of.push_back(b);
            patches += bt.patches;
            ++b;
        }
        const std::vector<std::vector<float>> res = impl_->run(part, true, &times, &packs);
        for (size_t pi = 0; pi < part.size(); ++pi) {
            const Batch & bt = batches[first_of[pi]];
            std::memcpy(out.data() + bt.g0 * row, res[pi].data(), bt.n_groups * row * sizeof(float));
        }
    }
    return out;
}

std::vector<uint64_t> video_frame_hashes(const VideoFrames & video) {
    std::vector<uint64_t> out(video.frames.size());
    parallel_for(out.size(), media_threads(), [&](size_t i) {
        const RgbImage & im = *video.frames[i];
        const int size[2] = {im.width, im.height};
        out[i] = content_hash(size, sizeof(size), content_hash(im.pixels.data(), im.pixels.size()));
    });
    return out;
}

std::vector<std::shared_ptr<const ImageChunk>> encode_video_chunks(VisionEncoder & enc, const Tokenizer & tok,
                                                                   const VideoFrames & video, int64_t max_patches,
                                                                   const std::vector<uint64_t> * frame_hashes) {
    const VisionHparams & hp = enc.hparams();
    if (video.temporal_ids.empty()) {
        fail(ErrorKind::InvalidArgument, "encode_video_chunks: the video has no temporal ids");
    }
    if (!hp.temporal) {
        fail(ErrorKind::Unsupported, "this model's resampler has no temporal embedding (minicpm.resampler.kind is not "
                                     "'3d'): temporal ids need MiniCPM-V 4.5; pass the frames without temporal_ids");
    }
    check_video_frames(video);
    std::vector<uint64_t> own_hashes;
    if (!frame_hashes) {
        own_hashes = video_frame_hashes(video);
        frame_hashes = &own_hashes;
    } else if (frame_hashes->size() != video.frames.size()) {
        fail(ErrorKind::InvalidArgument, "encode_video_chunks: " + std::to_string(frame_hashes->size()) +
                                             " frame hashes for " + std::to_string(video.frames.size()) + " frames");
    }
    SliceConfig cfg = hp.slice_config();
    cfg.max_slice_nums = 1;   // the reference recipe: max_slice_nums=1 for video
    cfg.max_patches = max_patches;

    // Windows of whole groups, up to kWindowFrames frames each (bounded memory for long videos:
    // two windows of preprocessed frames at a time); a window's groups go through the encoder
    // together (batched by size and packing).
    constexpr size_t kWindowFrames = 64;
    struct Window {
        size_t g0 = 0, g1 = 0, f0 = 0, nf = 0;
        std::vector<ImageSlice> pre;
    };
    std::vector<Window> windows;
    for (size_t g = 0, f = 0; g < video.temporal_ids.size();) {
        Window w;
        w.g0 = g;
        w.f0 = f;
        while (g < video.temporal_ids.size() && (w.nf == 0 || w.nf + video.temporal_ids[g].size() <= kWindowFrames)) {
            w.nf += video.temporal_ids[g++].size();
        }
        w.g1 = g;
        f += w.nf;
        windows.push_back(std::move(w));
    }
    auto prepare = [&](Window & w) {
        w.pre.resize(w.nf);
        parallel_for(w.nf, media_threads(), [&](size_t i) {
            const RgbImage & im = *video.frames[w.f0 + i];
            w.pre[i] = std::move(preprocess_image(im.pixels.data(), im.width, im.height, cfg).overview);
        });
    };

    std::vector<std::shared_ptr<const ImageChunk>> chunks;
    const size_t row = (size_t) (hp.n_query * hp.rs_dim);
    std::future<void> next;   // the next window's preprocessing (waited for before windows goes)
    prepare(windows[0]);
    for (size_t k = 0; k < windows.size(); ++k) {
        Window & w = windows[k];
        if (k + 1 < windows.size()) next = std::async(std::launch::async, prepare, std::ref(windows[k + 1]));
        std::vector<const ImageSlice *> ptrs(w.nf);
        for (size_t i = 0; i < w.nf; ++i) ptrs[i] = &w.pre[i];
        const std::vector<std::vector<int>> wg(video.temporal_ids.begin() + (std::ptrdiff_t) w.g0,
                                               video.temporal_ids.begin() + (std::ptrdiff_t) w.g1);
        const std::vector<float> emb = enc.encode_temporal(ptrs, wg);
        size_t ff = w.f0;
        for (size_t gi = 0; gi < wg.size(); ++gi) {
            auto chunk = std::make_shared<ImageChunk>();
            chunk->tokens = image_placeholder_tokens(tok, SliceGrid{}, (int) hp.n_query, std::nullopt, &chunk->embed_pos);
            chunk->embeddings.assign(emb.begin() + (std::ptrdiff_t) (gi * row), emb.begin() + (std::ptrdiff_t) ((gi + 1) * row));
            chunk->n_embd = hp.rs_dim;
            chunk->n_slices = 1;
            uint64_t h = content_hash("video", 5);
            for (size_t j = 0; j < wg[gi].size(); ++j) {
                const uint64_t meta[2] = {(uint64_t) (int64_t) wg[gi][j], (*frame_hashes)[ff + j]};
                h = content_hash(meta, sizeof(meta), h);
            }
            chunk->hash = h;
            chunks.push_back(std::move(chunk));
            ff += wg[gi].size();
        }
        std::vector<ImageSlice>().swap(w.pre);
        if (next.valid()) next.get();
    }
    return chunks;
}

void check_video_frames(const VideoFrames & video) {
    if (video.frames.empty()) fail(ErrorKind::InvalidArgument, "video has no frames");
    for (size_t i = 0; i < video.frames.size(); ++i) {
        const RgbImage * im = video.frames[i].get();
        if (!im) fail(ErrorKind::InvalidArgument, "video frame " + std::to_string(i) + " is null");
        if (im->width <= 0 || im->height <= 0 || im->pixels.size() != (size_t) im->width * (size_t) im->height * 3) {
            fail(ErrorKind::InvalidArgument, "video frame " + std::to_string(i) + " of " + std::to_string(im->width) + "x" +
                                                 std::to_string(im->height) + " has " + std::to_string(im->pixels.size()) +
                                                 " bytes, expected width * height * 3 > 0");
        }
    }
    if (video.temporal_ids.empty()) {
        if (video.max_slice_nums < 1) {
            fail(ErrorKind::InvalidArgument, "video max_slice_nums must be >= 1, got " + std::to_string(video.max_slice_nums));
        }
        return;
    }
    if (video.max_slice_nums != 1) {
        fail(ErrorKind::InvalidArgument, "video frames with temporal ids are not sliced (the reference recipe's "
                                         "max_slice_nums=1); max_slice_nums " + std::to_string(video.max_slice_nums) +
                                         " applies to frames without temporal ids only");
    }
    size_t total = 0;
    for (size_t gi = 0; gi < video.temporal_ids.size(); ++gi) {
        const size_t k = video.temporal_ids[gi].size();
        if (k == 0 || k > (size_t) kMaxVideoPacking) {
            fail(ErrorKind::InvalidArgument, "temporal_ids group " + std::to_string(gi) + " has " + std::to_string(k) +
                                                 " frames; a group packs 1 to " + std::to_string(kMaxVideoPacking) + " frames");
        }
        for (int t : video.temporal_ids[gi]) {
            if (t < -1 || (int64_t) t >= kMaxTemporalId) {
                fail(ErrorKind::InvalidArgument, "temporal id " + std::to_string(t) + " in group " + std::to_string(gi) +
                                                     " out of range [-1, " + std::to_string(kMaxTemporalId) + ")");
            }
        }
        total += k;
    }
    if (total != video.frames.size()) {
        fail(ErrorKind::InvalidArgument, "temporal_ids give " + std::to_string(total) + " ids for " +
                                             std::to_string(video.frames.size()) + " frames (one id per frame)");
    }
}

std::shared_ptr<const ImageChunk> encode_image_chunk(VisionEncoder & enc, const Tokenizer & tok, const uint8_t * rgb,
                                                     int width, int height, const ImageOptions & opts,
                                                     int64_t max_patches) {
    const VisionHparams & hp = enc.hparams();
    if (!rgb || width <= 0 || height <= 0) {
        fail(ErrorKind::InvalidArgument, "image must have a positive width and height, got " + std::to_string(width) +
                                             "x" + std::to_string(height));
    }
    if (opts.max_slice_nums < 0) {
        fail(ErrorKind::InvalidArgument, "max_slice_nums must be >= 1 (0 = model default), got " +
                                             std::to_string(opts.max_slice_nums));
    }
    if (opts.image_id < 0) fail(ErrorKind::InvalidArgument, "image_id must be >= 0");
    SliceConfig cfg = hp.slice_config();
    if (opts.max_slice_nums > 0) cfg.max_slice_nums = opts.max_slice_nums;
    cfg.max_patches = max_patches;
    PreprocessedImage pre = preprocess_image(rgb, width, height, cfg);

    std::vector<const ImageSlice *> pieces = {&pre.overview};
    for (const auto & sl : pre.slices) pieces.push_back(&sl);

    auto chunk = std::make_shared<ImageChunk>();
    const bool use_id = opts.use_image_id.value_or(hp.use_image_id);
    chunk->tokens = image_placeholder_tokens(tok, pre.grid, (int) hp.n_query,
                                             use_id ? std::optional<int>(opts.image_id) : std::nullopt, &chunk->embed_pos);
    if (chunk->embed_pos.size() != pieces.size() * (size_t) hp.n_query) {
        fail(ErrorKind::Internal, "image placeholder has " + std::to_string(chunk->embed_pos.size()) +
                                      " embedding positions, expected " + std::to_string(pieces.size() * (size_t) hp.n_query));
    }
    chunk->embeddings = enc.encode(pieces);
    chunk->n_embd   = hp.rs_dim;
    chunk->cols     = pre.grid.cols;
    chunk->rows     = pre.grid.rows;
    chunk->n_slices = (int) pieces.size();
    const uint64_t h = content_hash(rgb, (size_t) width * (size_t) height * 3);
    const int meta[5] = {width, height, cfg.max_slice_nums, use_id ? 1 : 0, opts.image_id};
    chunk->hash = content_hash(meta, sizeof(meta), h);
    return chunk;
}

} // namespace minicpm
