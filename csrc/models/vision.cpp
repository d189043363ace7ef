// SigLIP NaViT vision tower and 2D resampler of MiniCPM-V / MiniCPM-o: the graph and its runtime
// (hyperparameters, weights and position inputs are in vision_weights.cpp).
// Mirrors modeling_navit_siglip.py (SiglipVisionEmbeddings, SiglipEncoderLayer, post_layernorm)
// and Resampler.forward of modeling_minicpmo.py / resampler.py; see tests/ref_minicpmv_vision.py.
#include "vision.h"

#include "core/error.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
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

// How the graph computes. exact: every ViT matrix is F32, and the graph keeps f32 arithmetic
// throughout (parity with the float32 reference); otherwise the weights are already rounded
// (F16, BF16, quantized) and the graph uses the fast kernels of the same precision class.
struct VisionMode {
    bool      exact = true;
    bool      flash = false;                 // ggml_flash_attn_ext in the ViT and the resampler
    ggml_type kv_type = GGML_TYPE_F32;       // K/V type of flash attention
    bool      fa_pad = false;                // pad head sizes without a fast kernel (GPUs)
    bool      pad_strided = false;           // the backend's ggml_pad takes strided views
    // The head size flash attention runs at: the next one with fast GPU kernels when padding.
    int64_t fa_pad_to(int64_t d) const {
        if (!fa_pad) return 0;
        for (int64_t s : {64, 80, 96, 112, 128, 256}) {
            if (d == s) return 0;
            if (d < s) return s;
        }
        return 0;
    }
    bool      fast_gelu = false;             // ggml_gelu (an f16 table on the CPU) instead of f32 ops
};

struct GroupSpec {
    int64_t pw = 0, ph = 0, n_seq = 0;
    bool operator==(const GroupSpec & o) const { return pw == o.pw && ph == o.ph && n_seq == o.n_seq; }
};

struct GroupIO {
    ggml_tensor * pixels = nullptr;   // F32 [w, h, 3, n_seq]
    ggml_tensor * pos_ids = nullptr;  // I32 [n_patches]: rows of the NaViT position table
    ggml_tensor * rs_pos = nullptr;   // F32 [rs_dim, n_patches]: 2D sin-cos of the patch grid
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
    ggml_tensor * x = ggml_mul_mat(ctx, kernel, cols);                                     // [E, n*n_seq], row-major patches
    x = ggml_reshape_3d(ctx, x, E, n, n_seq);
    x = ggml_add(ctx, x, w.patch_b);
    x = ggml_add(ctx, x, ggml_get_rows(ctx, w.pos, in.pos_ids));                           // [E, n, n_seq]

    auto attend = [&](ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, float scale) {
        return mode.flash ? attention_batched_flash(ctx, q, k, v, scale, mode.kv_type, mode.fa_pad_to(q->ne[0]),
                                                    mode.pad_strided)
                          : attention_batched(ctx, q, k, v, scale);
    };

    const int64_t hd = E / hp.n_head;
    const float   scale = 1.0f / std::sqrt((float) hd);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const VisionLayer & L = w.layers[(size_t) il];
        ggml_tensor * cur = layer_norm(ctx, x, L.ln1_w, L.ln1_b, hp.eps);
        ggml_tensor * q, * k, * v;
        if (L.qkv_w) {
            // one product: [3E, n, n_seq], then [hd, n_head, n, n_seq] views of its rows
            ggml_tensor * qkv = ggml_add(ctx, ggml_mul_mat(ctx, L.qkv_w, cur), ggml_reshape_1d(ctx, L.qkv_b, 3 * E));
            const size_t  es  = ggml_element_size(qkv);
            q = ggml_view_4d(ctx, qkv, hd, hp.n_head, n, n_seq, hd * es, qkv->nb[1], qkv->nb[2], 0);
            k = ggml_view_4d(ctx, qkv, hd, hp.n_head, n, n_seq, hd * es, qkv->nb[1], qkv->nb[2], E * es);
            v = ggml_view_4d(ctx, qkv, hd, hp.n_head, n, n_seq, hd * es, qkv->nb[1], qkv->nb[2], 2 * E * es);
        } else {
            q = ggml_reshape_4d(ctx, linear(ctx, cur, L.q_w, L.q_b), hd, hp.n_head, n, n_seq);
            k = ggml_reshape_4d(ctx, linear(ctx, cur, L.k_w, L.k_b), hd, hp.n_head, n, n_seq);
            v = ggml_reshape_4d(ctx, linear(ctx, cur, L.v_w, L.v_b), hd, hp.n_head, n, n_seq);
        }
        cur = attend(q, k, v, scale);                                                      // [E, n, n_seq]
        x = ggml_add(ctx, x, linear(ctx, cur, L.o_w, L.o_b));

        cur = layer_norm(ctx, x, L.ln2_w, L.ln2_b, hp.eps);
        cur = linear(ctx, cur, L.fc1_w, L.fc1_b);
        cur = mode.fast_gelu ? ggml_gelu(ctx, cur) : gelu_tanh(ctx, cur);
        x = ggml_add(ctx, x, linear(ctx, cur, L.fc2_w, L.fc2_b));
    }
    x = layer_norm(ctx, x, w.post_ln_w, w.post_ln_b, hp.eps);                              // [E, n, n_seq]

    if (with_resampler) {
        const int64_t D = hp.rs_dim, Q = hp.n_query, rhd = D / hp.rs_heads;
        in.rs_pos = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, D, n);
        ggml_set_name(in.rs_pos, "inp_rs_pos");
        ggml_set_input(in.rs_pos);

        ggml_tensor * kv = w.kv_w ? ggml_mul_mat(ctx, w.kv_w, x) : x;
        kv = layer_norm(ctx, kv, w.ln_kv_w, w.ln_kv_b, hp.rs_eps);                       // [D, n, n_seq]
        ggml_tensor * q = layer_norm(ctx, w.query, w.ln_q_w, w.ln_q_b, hp.rs_eps);         // [D, Q], shared
        // Positions go into the keys only (MultiheadAttention(q, kv + pos, kv)).
        ggml_tensor * kq = linear(ctx, q, w.q_w, w.q_b);
        ggml_tensor * kk = linear(ctx, ggml_add(ctx, kv, in.rs_pos), w.k_w, w.k_b);
        ggml_tensor * kvv = linear(ctx, kv, w.v_w, w.v_b);
        kq  = ggml_reshape_4d(ctx, kq, rhd, hp.rs_heads, Q, 1);
        kk  = ggml_reshape_4d(ctx, kk, rhd, hp.rs_heads, n, n_seq);
        kvv = ggml_reshape_4d(ctx, kvv, rhd, hp.rs_heads, n, n_seq);
        ggml_tensor * cur = attend(kq, kk, kvv, 1.0f / std::sqrt((float) rhd));            // [D, Q, n_seq]
        cur = linear(ctx, cur, w.o_w, w.o_b);
        cur = layer_norm(ctx, cur, w.ln_post_w, w.ln_post_b, hp.rs_eps);
        x = ggml_mul_mat(ctx, w.proj, cur);                                                // x @ proj: [D, Q, n_seq]
    }
    in.out = x;
    ggml_set_name(in.out, with_resampler ? "vision_embd" : "vit_features");
    ggml_set_output(in.out);
    ggml_build_forward_expand(gf, in.out);
    return in;
}

// Per-op timing (MINICPM_VISION_PROFILE=1): the scheduler stops after every node, so the time
// between two callbacks is that node's compute time (plus a small per-node dispatch cost).
struct OpProfile {
    using clock = std::chrono::steady_clock;
    clock::time_point last;
    std::map<std::string, std::pair<double, int>> by_op;   // ms, count
    double total_ms = 0;

    static bool callback(ggml_tensor * t, bool ask, void * user) {
        auto * self = (OpProfile *) user;
        if (ask) return true;
        const auto now = clock::now();
        const double ms = std::chrono::duration<double, std::milli>(now - self->last).count();
        self->last = now;
        std::string key = ggml_op_desc(t);
        if (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_FLASH_ATTN_EXT || t->op == GGML_OP_CPY) {
            key += std::string(" ") + ggml_type_name(t->src[0]->type) + "/" +
                   ggml_type_name(t->src[1] ? t->src[1]->type : t->type) + " [" + std::to_string(t->ne[0]) + "," +
                   std::to_string(t->ne[1]) + "," + std::to_string(t->ne[2]) + "]";
        }
        auto & e = self->by_op[key];
        e.first += ms;
        e.second += 1;
        self->total_ms += ms;
        return true;
    }
    void start() { last = clock::now(); }
    void report(const char * what) {
        std::vector<std::pair<std::string, std::pair<double, int>>> v(by_op.begin(), by_op.end());
        std::sort(v.begin(), v.end(), [](const auto & a, const auto & b) { return a.second.first > b.second.first; });
        std::fprintf(stderr, "vision profile (%s): %.1f ms in nodes\n", what, total_ms);
        for (const auto & [k, e] : v) {
            if (e.first < 0.005 * total_ms) continue;
            std::fprintf(stderr, "  %9.1f ms %5.1f%% %5d x  %s\n", e.first, 100.0 * e.first / total_ms, e.second, k.c_str());
        }
        by_op.clear();
        total_ms = 0;
    }
};

} // namespace

struct VisionEncoder::Impl {
    const VisionHparams & hp;         // the encoder's own copy
    VisionWeights         w;          // tensor handles; the tensors belong to the model's store
    const Backends &      backends;
    VisionMode            mode;
    ggml_backend_sched_t  sched = nullptr;
    std::vector<uint8_t>  meta;
    int                   max_nodes = 0;
    std::unique_ptr<OpProfile> profile;

    // The last graph, kept allocated: an image of the same shape only refreshes the inputs.
    ggml_context *         graph_ctx = nullptr;
    ggml_cgraph *          graph = nullptr;
    std::vector<GroupSpec> graph_groups;
    bool                   graph_resampler = false;
    std::vector<GroupIO>   graph_io;

    // Host-side inputs by patch grid (pw, ph): they depend on the grid only.
    std::map<std::pair<int64_t, int64_t>, std::vector<int32_t>> pos_ids_cache;
    std::map<std::pair<int64_t, int64_t>, std::vector<float>>   rs_pos_cache;

    Impl(const VisionHparams & h, const VisionWeights & wt, const Backends & b) : hp(h), w(wt), backends(b) {}
    ~Impl() {
        drop_graph();
        if (sched) ggml_backend_sched_free(sched);
    }

    // One tiny graph (a single-patch slice) through every layer at load: maps the weights in
    // (page faults of the mapped file on the CPU), starts the backends' kernels and thread
    // pools, so that the first image does not pay for them.
    void warm_up() {
        const int64_t P = hp.patch_size;
        ImageSlice s;
        s.width = (int) P;
        s.height = (int) P;
        s.pixels.assign((size_t) (3 * P * P), 0.0f);
        run({{&s}}, true);
        drop_graph();
    }

    void drop_graph() {
        if (graph_ctx) ggml_free(graph_ctx);
        graph_ctx = nullptr;
        graph = nullptr;
        graph_groups.clear();
        graph_io.clear();
    }

    ggml_context * new_graph_ctx() {
        ggml_init_params ip = {meta.size(), meta.data(), true};
        ggml_context * ctx = ggml_init(ip);
        if (!ctx) fail(ErrorKind::Internal, "ggml_init failed for the vision graph");
        return ctx;
    }

    // Slices of one size evaluated per graph.
    int64_t max_batch(int64_t n_patches) const {
        if (mode.flash) return std::max<int64_t>(1, kBatchPatches / std::max<int64_t>(n_patches, 1));
        const size_t per = (size_t) hp.n_head * (size_t) n_patches * (size_t) n_patches * sizeof(float);
        return std::max<int64_t>(1, (int64_t) (kBatchScoreBytes / std::max<size_t>(per, 1)));
    }

    // Whether the main backend runs op natively (else the scheduler would bounce it to the CPU).
    bool main_supports(ggml_tensor * op) const {
        return ggml_backend_supports_op(backends.main(), op);
    }

    void choose_mode() {
        const VisionLayer & L0 = w.layers.front();
        mode.exact = L0.q_w->type == GGML_TYPE_F32 && L0.fc1_w->type == GGML_TYPE_F32 && L0.fc2_w->type == GGML_TYPE_F32;
        // f32 arithmetic for f32 weights; F16 K/V for flash attention otherwise.
        mode.kv_type = mode.exact ? GGML_TYPE_F32 : GGML_TYPE_F16;

        // Probe the two attention shapes (ViT self-attention, resampler cross-attention) and GELU.
        const size_t probe_mem = 32 * ggml_tensor_overhead();
        std::vector<uint8_t> buf(probe_mem);
        ggml_init_params ip = {buf.size(), buf.data(), true};
        ggml_context * ctx = ggml_init(ip);
        // CPU kernels take any head size; GPU ones are fast only at a few (MINICPM_VISION_FA_PAD=0/1
        // overrides, e.g. to test the padded path on the CPU).
        mode.fa_pad = !backends.main_is_cpu();
        if (const char * env = std::getenv("MINICPM_VISION_FA_PAD")) mode.fa_pad = env[0] == '1';
        auto fa_ok = [&](int64_t d, int64_t heads, int64_t nq, int64_t nkv) {
            if (mode.fa_pad_to(d) > 0) d = mode.fa_pad_to(d);
            ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, d, nq, heads, 2);
            ggml_tensor * k = ggml_new_tensor_4d(ctx, mode.kv_type, d, nkv, heads, 2);
            ggml_tensor * v = ggml_new_tensor_4d(ctx, mode.kv_type, d, nkv, heads, 2);
            ggml_tensor * o = ggml_flash_attn_ext(ctx, q, k, v, nullptr, 1.0f, 0.0f, 0.0f);
            graph::set_prec_f32(o);
            return main_supports(o);
        };
        const int64_t side = std::max<int64_t>(1, hp.image_size / hp.patch_size);
        bool flash = fa_ok(hp.n_embd / hp.n_head, hp.n_head, side * side, side * side) &&
                     fa_ok(hp.rs_dim / hp.rs_heads, hp.rs_heads, hp.n_query, side * side);
        {
            // a [d, heads, n] view with a row stride of 3 * heads * d, as the fused Q|K|V gives
            ggml_tensor * t  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3 * hp.n_embd, 4);
            ggml_tensor * vw = ggml_view_3d(ctx, t, hp.n_embd / hp.n_head, hp.n_head, 4, ggml_row_size(t->type, hp.n_embd / hp.n_head),
                                            t->nb[1], 0);
            mode.pad_strided = main_supports(ggml_pad(ctx, vw, 8, 0, 0, 0));
        }
        ggml_tensor * gx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_ff, 4);
        const bool gelu_ok = main_supports(ggml_gelu(ctx, gx));
        ggml_free(ctx);

        // MINICPM_VISION_FLASH=0/1 overrides the choice (1 still needs backend support).
        if (const char * env = std::getenv("MINICPM_VISION_FLASH")) {
            if (env[0] == '0') flash = false;
        }
        mode.flash = flash;
        // The CPU's ggml_gelu rounds through an f16 table: only where the weights are not F32.
        // Other backends compute it in f32.
        mode.fast_gelu = gelu_ok && (!mode.exact || !backends.main_is_cpu());
        MINICPM_LOG_INFO("vision: %s weights, flash attention %s (K/V %s%s), GELU %s",
                         mode.exact ? "f32" : "reduced-precision", mode.flash ? "on" : "off",
                         ggml_type_name(mode.kv_type), mode.fa_pad ? ", head size padded" : "",
                         mode.fast_gelu ? "ggml_gelu" : "f32 ops");
    }

    void init() {
        choose_mode();
        max_nodes = (int) (nodes_per_group(hp) * (int64_t) kMaxGroups);
        meta.resize(ggml_tensor_overhead() * (size_t) max_nodes + ggml_graph_overhead_custom((size_t) max_nodes, false));
        auto list = backends.all();
        sched = ggml_backend_sched_new(list.data(), nullptr, (int) list.size(), (size_t) max_nodes, false, true);
        if (!sched) fail(ErrorKind::Backend, "cannot create the vision graph scheduler");
        if (const char * env = std::getenv("MINICPM_VISION_PROFILE"); env && env[0] && env[0] != '0') {
            profile = std::make_unique<OpProfile>();
            ggml_backend_sched_set_eval_callback(sched, &OpProfile::callback, profile.get());
        }
        // Reserve for the largest batch of full square slices an image gives (overview + slices);
        // a larger slice (extreme aspect ratios can exceed side^2 patches after rounding) grows
        // the buffers at its first allocation.
        const int64_t side = std::max<int64_t>(1, hp.image_size / hp.patch_size);
        const int64_t n_seq = std::min<int64_t>(max_batch(side * side), hp.max_slice_nums + 1);
        ggml_context * ctx = new_graph_ctx();
        ggml_cgraph * gf = ggml_new_graph_custom(ctx, max_nodes, false);
        build_group(ctx, gf, hp, w, mode, {side, side, n_seq}, true);
        const bool ok = ggml_backend_sched_reserve(sched, gf);
        ggml_free(ctx);
        if (!ok) fail(ErrorKind::Backend, "cannot allocate the vision compute buffers on " + backends.main_name());
        for (size_t i = 0; i < list.size(); ++i) {
            const size_t sz = ggml_backend_sched_get_buffer_size(sched, list[i]);
            if (sz > 0) {
                MINICPM_LOG_INFO("vision compute buffer on %s: %.1f MiB", ggml_backend_name(list[i]),
                                 (double) sz / (1024.0 * 1024.0));
            }
        }
        if (const char * env = std::getenv("MINICPM_VISION_WARMUP"); !env || env[0] != '0') warm_up();
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
    std::vector<std::vector<float>> run(const std::vector<std::vector<const ImageSlice *>> & slices,
                                        bool with_resampler) {
        const int64_t P = hp.patch_size;
        std::vector<GroupSpec> groups;
        for (const auto & g : slices) groups.push_back({g[0]->width / P, g[0]->height / P, (int64_t) g.size()});
        std::vector<std::vector<float>> out(groups.size());
        try {
            if (!(graph && graph_groups == groups && graph_resampler == with_resampler)) {
                drop_graph();
                ggml_backend_sched_reset(sched);
                graph_ctx = new_graph_ctx();
                graph = ggml_new_graph_custom(graph_ctx, max_nodes, false);
                for (const auto & g : groups) graph_io.push_back(build_group(graph_ctx, graph, hp, w, mode, g, with_resampler));
                if (!ggml_backend_sched_alloc_graph(sched, graph)) {
                    std::string what;
                    for (const auto & g : groups) {
                        what += (what.empty() ? "" : ", ") + std::to_string(g.n_seq) + " slice(s) of " +
                                std::to_string(g.pw * P) + "x" + std::to_string(g.ph * P);
                    }
                    fail(ErrorKind::Backend, "cannot allocate the vision graph for " + what + " on " + backends.main_name());
                }
                graph_groups = groups;
                graph_resampler = with_resampler;
            }
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
                }
            }
            if (profile) profile->start();
            if (ggml_backend_sched_graph_compute_async(sched, graph) != GGML_STATUS_SUCCESS) {
                fail(ErrorKind::Backend, "vision graph compute failed on " + backends.main_name());
            }
            ggml_backend_sched_synchronize(sched);
            if (profile) profile->report(backends.main_name().c_str());
            for (size_t gi = 0; gi < groups.size(); ++gi) {
                out[gi].resize((size_t) ggml_nelements(graph_io[gi].out));
                ggml_backend_tensor_get(graph_io[gi].out, out[gi].data(), 0, out[gi].size() * sizeof(float));
            }
        } catch (...) {
            drop_graph();
            ggml_backend_sched_reset(sched);
            throw;
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

VisionEncoder::VisionEncoder(const VisionHparams & hp, const VisionWeights & w, const Backends & backends)
    : hp_(hp) {
    // Impl keeps a reference to hp_ (owned here), the weights and the backends (owned by the model).
    impl_ = std::make_unique<Impl>(hp_, w, backends);
    impl_->init();
}

VisionEncoder::~VisionEncoder() = default;

std::vector<float> VisionEncoder::encode_vit(const ImageSlice & slice) {
    impl_->check_slice(slice, 0);
    return std::move(impl_->run({{&slice}}, false)[0]);
}

std::vector<float> VisionEncoder::encode(const std::vector<const ImageSlice *> & slices) {
    for (size_t i = 0; i < slices.size(); ++i) {
        if (!slices[i]) fail(ErrorKind::InvalidArgument, "image slice " + std::to_string(i) + " is null");
        impl_->check_slice(*slices[i], i);
    }
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

} // namespace minicpm
