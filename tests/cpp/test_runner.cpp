// The graph runner (core/runner.h), its eval callback (core/debug.h), the KV cache's cell
// bookkeeping (runtime/kv_cache.h) and the shared batch cache's ranges (runtime/kv_pool.h),
// against values computed by hand.
#include "check.h"

#include "core/backend.h"
#include "core/debug.h"
#include "core/runner.h"
#include "runtime/kv_cache.h"
#include "runtime/kv_pool.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cmath>
#include <string>
#include <vector>

using minicpm::ErrorKind;
using minicpm::GraphRunner;

namespace {

const minicpm::ComputeBackends & backends() {
    static const minicpm::Devices devices("cpu", 1);
    static const minicpm::ComputeBackends b(devices, 1);
    return b;
}

// y = 2 * x + 1 over n floats, with the intermediate 2x named "twice".
struct Affine {
    ggml_tensor * x = nullptr;
    ggml_tensor * y = nullptr;
    int builds = 0;

    minicpm::GraphBuilder builder(int64_t n) {
        return [this, n](ggml_context * ctx, ggml_cgraph * gf) {
            ++builds;
            x = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n);
            ggml_set_input(x);
            ggml_tensor * t = ggml_scale(ctx, x, 2.0f);
            ggml_set_name(t, "twice");
            y = ggml_scale_bias(ctx, t, 1.0f, 1.0f);
            ggml_set_output(y);
            ggml_build_forward_expand(gf, y);
        };
    }
};

std::vector<float> run_affine(GraphRunner & r, Affine & a, const std::vector<float> & in) {
    const int64_t n = (int64_t) in.size();
    r.prepare({n}, a.builder(n));
    ggml_backend_tensor_set(a.x, in.data(), 0, in.size() * sizeof(float));
    r.compute();
    std::vector<float> out(in.size());
    ggml_backend_tensor_get(a.y, out.data(), 0, out.size() * sizeof(float));
    return out;
}

} // namespace

TEST(runner_rebuilds_only_when_the_key_changes) {
    GraphRunner r("test", backends(), 64);
    Affine a;
    r.reserve(a.builder(16));
    CHECK(r.compute_buffer_size() > 0);
    const int after_reserve = a.builds;
    for (int rep = 0; rep < 3; ++rep) {
        std::vector<float> in = {1.0f, -2.0f, 0.5f, (float) rep};
        std::vector<float> out = run_affine(r, a, in);
        for (size_t i = 0; i < in.size(); ++i) CHECK_NEAR(out[i], 2.0f * in[i] + 1.0f, 1e-6);
    }
    CHECK_EQ(a.builds, after_reserve + 1);   // one build for three computes of one shape
    std::vector<float> out = run_affine(r, a, {3.0f, 4.0f});
    CHECK_EQ(a.builds, after_reserve + 2);   // a new shape rebuilds
    CHECK_NEAR(out[1], 9.0f, 1e-6);
    r.invalidate();
    run_affine(r, a, {3.0f, 4.0f});
    CHECK_EQ(a.builds, after_reserve + 3);   // invalidate drops the kept graph
}

TEST(runner_graph_cache_keeps_alternating_shapes) {
    GraphRunner r("cache", backends(), 64);
    Affine a;
    r.reserve(a.builder(16));
    r.set_graph_cache(2);
    CHECK_EQ(r.n_slots(), (size_t) 3);
    // Each kept graph's input/output tensors, by slot (what LlmContext does with its inputs).
    std::vector<Affine> io(r.n_slots());
    auto run = [&](int64_t n, bool cacheable, float v) {
        Affine b;
        if (r.prepare({n}, b.builder(n), cacheable)) io[r.slot()] = b;
        a.builds += b.builds;
        std::vector<float> in((size_t) n, v), out((size_t) n);
        ggml_backend_tensor_set(io[r.slot()].x, in.data(), 0, in.size() * sizeof(float));
        r.compute();
        ggml_backend_tensor_get(io[r.slot()].y, out.data(), 0, out.size() * sizeof(float));
        for (float o : out) CHECK_NEAR(o, 2.0f * v + 1.0f, 1e-6);
        return r.slot();
    };
    const int b0 = a.builds;
    // Two small shapes alternating and a big one in the main graph: three builds, then none.
    for (int rep = 0; rep < 4; ++rep) {
        CHECK(run(1, true, (float) rep) >= 1);
        CHECK(run(2, true, (float) -rep) >= 1);
        CHECK_EQ(run(16, false, 0.5f), (size_t) 0);
    }
    CHECK_EQ(a.builds, b0 + 3);
    // A third small shape replaces the least recently used one (n = 1), which then rebuilds.
    run(3, true, 1.0f);
    run(2, true, 1.0f);
    CHECK_EQ(a.builds, b0 + 4);
    run(1, true, 1.0f);
    CHECK_EQ(a.builds, b0 + 5);
    CHECK(r.compute_buffer_size() > 0);
    // A non-cacheable prepare of a cached key does not take the cached graph.
    run(2, false, 4.0f);
    CHECK_EQ(a.builds, b0 + 6);
    // invalidate drops them all.
    r.invalidate();
    run(1, true, 1.0f);
    CHECK_EQ(a.builds, b0 + 7);
    // A builder that throws leaves no graph current.
    CHECK_THROWS_KIND(r.prepare({9}, [](ggml_context *, ggml_cgraph *) {
        throw minicpm::Error(ErrorKind::InvalidArgument, "bad input");
    }, true), ErrorKind::InvalidArgument);
    CHECK(r.graph() == nullptr);
    // Without a cache, cacheable graphs go to the main one.
    r.set_graph_cache(0);
    CHECK_EQ(r.n_slots(), (size_t) 1);
    CHECK_EQ(run(1, true, 2.0f), (size_t) 0);
}

TEST(runner_state_tensors_survive_computes_and_rebuilds) {
    GraphRunner r("state", backends(), 64);
    ggml_tensor * acc = r.add_state("acc", GGML_TYPE_F32, {4});
    CHECK(r.state("acc") == acc);
    CHECK(r.state("nothing") == nullptr);
    r.allocate_state();
    CHECK(r.state_bytes() >= 4 * sizeof(float));
    CHECK_THROWS_KIND_MSG(r.add_state("late", GGML_TYPE_F32, {4}), ErrorKind::Internal, "after allocation");
    ggml_tensor * x = nullptr;
    // acc += x, written back into the state tensor; the key selects one of two equal graphs.
    auto build = [&](ggml_context * ctx, ggml_cgraph * gf) {
        x = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4);
        ggml_set_input(x);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_add(ctx, acc, x), acc));
    };
    const std::vector<float> step = {1.0f, 2.0f, -3.0f, 0.25f};
    for (int k = 0; k < 5; ++k) {
        r.prepare({k % 2}, build);   // alternating keys: rebuilt every time
        ggml_backend_tensor_set(x, step.data(), 0, sizeof(float) * 4);
        r.compute();
    }
    std::vector<float> got(4);
    ggml_backend_tensor_get(acc, got.data(), 0, sizeof(float) * 4);
    for (int i = 0; i < 4; ++i) CHECK_NEAR(got[i], 5.0f * step[i], 1e-6);
    r.clear_state();
    ggml_backend_tensor_get(acc, got.data(), 0, sizeof(float) * 4);
    for (int i = 0; i < 4; ++i) CHECK_EQ(got[i], 0.0f);
}

TEST(runner_errors) {
    GraphRunner r("errors", backends(), 16);
    CHECK_THROWS_KIND_MSG(r.compute(), ErrorKind::Internal, "without a prepared graph");
    CHECK_THROWS_KIND(r.add_state("bad", GGML_TYPE_F32, {}), ErrorKind::Internal);
    r.add_state("a", GGML_TYPE_F32, {2});
    CHECK_THROWS_KIND_MSG(r.add_state("a", GGML_TYPE_F32, {2}), ErrorKind::Internal, "twice");
    // A builder that throws leaves no half-built graph behind.
    CHECK_THROWS_KIND(r.prepare({1}, [](ggml_context *, ggml_cgraph *) {
        throw minicpm::Error(ErrorKind::InvalidArgument, "bad input");
    }), ErrorKind::InvalidArgument);
    CHECK(r.graph() == nullptr);
}

TEST(eval_callback_hands_over_named_intermediates) {
    std::vector<minicpm::TensorDump> seen;
    minicpm::DebugOptions opts;
    opts.on_tensor = [&](const minicpm::TensorDump & d) { seen.push_back(d); };
    opts.tensor_filter = "twice";
    minicpm::EvalObserver obs("test", opts);
    GraphRunner r("test", backends(), 64);
    obs.attach(r);
    Affine a;
    std::vector<float> out = run_affine(r, a, {1.0f, 2.0f, 3.0f});
    obs.finish();
    REQUIRE(seen.size() == 1);
    CHECK_EQ(seen[0].graph, std::string("test"));
    CHECK_EQ(seen[0].name, std::string("twice"));
    REQUIRE(seen[0].shape.size() == 1 && seen[0].shape[0] == 3);
    for (int i = 0; i < 3; ++i) CHECK_NEAR(seen[0].data[(size_t) i], 2.0f * (float) (i + 1), 1e-6);
    CHECK_NEAR(out[2], 7.0f, 1e-6);   // the graph's result is unchanged by observing it
    // No match: nothing reported, and an inactive observer installs nothing.
    minicpm::DebugOptions none;
    CHECK(!minicpm::EvalObserver("x", none).active());
}

TEST(tensor_to_floats_reads_views_through_strides) {
    GraphRunner r("views", backends(), 64);
    ggml_tensor * src = nullptr, * view = nullptr;
    r.prepare({0}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        src = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3, 2);   // rows [0 1 2], [3 4 5]
        ggml_set_input(src);
        ggml_tensor * t = ggml_transpose(ctx, src);           // [2, 3], not contiguous
        view = t;
        ggml_set_output(t);
        ggml_build_forward_expand(gf, ggml_cont(ctx, t));
    });
    const float v[6] = {0, 1, 2, 3, 4, 5};
    ggml_backend_tensor_set(src, v, 0, sizeof(v));
    r.compute();
    const std::vector<float> got = minicpm::tensor_to_floats(view);
    const std::vector<float> want = {0, 3, 1, 4, 2, 5};
    CHECK(got == want);
}

TEST(kv_cache_cells_and_mask) {
    GraphRunner r("kv", backends(), 16);
    minicpm::LlmHparams hp;
    hp.n_layer = 2;
    hp.n_head_kv = 1;
    hp.head_dim = 4;
    minicpm::KvCache kv;
    kv.init(hp, 6, GGML_TYPE_F32, r);
    r.allocate_state();
    CHECK(kv.k.size() == 2 && kv.v.size() == 2);
    CHECK_EQ(kv.extent(), 0);
    std::vector<int64_t> c = kv.assign({0, 1, 2, 3});
    CHECK((c == std::vector<int64_t>{0, 1, 2, 3}));
    kv.release(1);
    kv.release(2);
    kv.release(2);   // twice: no effect
    CHECK_EQ(kv.n_free(), 4);
    c = kv.assign({10, 11, 12});            // the lowest free cells first
    CHECK((c == std::vector<int64_t>{1, 2, 4}));
    CHECK_EQ(kv.extent(), 5);
    CHECK_THROWS_KIND_MSG(kv.assign({20, 21}), ErrorKind::ContextFull, "do not fit");
    // Cells hold positions 0, 10, 11, 3, 12, free: a token at 11 sees 0, 10, 11, 3 (not 12).
    std::vector<float> mask;
    kv.build_mask({11, 2}, 6, mask);
    const float inf = INFINITY;
    const std::vector<float> want = {0, 0, 0, 0, -inf, -inf,     // position 11
                                     0, -inf, -inf, -inf, -inf, -inf};   // position 2: only cell 0
    CHECK(mask == want);
    // The F16 form: the same entries as IEEE half bits; columns past the cells (n_kv > n_cells,
    // the graph's rounding up) are masked too.
    std::vector<uint16_t> m16;
    kv.build_mask_f16({11, 2}, 6, m16);
    std::vector<uint16_t> want16(want.size());
    for (size_t i = 0; i < want.size(); ++i) want16[i] = ggml_fp32_to_fp16(want[i]);
    CHECK(m16 == want16);
    kv.build_mask_f16({100}, 8, m16);
    CHECK((m16 == std::vector<uint16_t>{0, 0, 0, 0, 0, 0xFC00, 0xFC00, 0xFC00}));
    kv.build_mask({100}, 8, mask);
    CHECK((mask == std::vector<float>{0, 0, 0, 0, 0, -inf, -inf, -inf}));
    // a query before every cell's position sees nothing
    kv.build_mask_f16({-1}, 3, m16);
    CHECK((m16 == std::vector<uint16_t>{0xFC00, 0xFC00, 0xFC00}));
    kv.clear();
    CHECK_EQ(kv.n_free(), 6);
    CHECK_EQ(kv.extent(), 0);
}

TEST(kv_pool_ranges_and_placement) {
    static const minicpm::Devices devices("cpu", 1);
    minicpm::LlmHparams hp;
    hp.n_layer = 2;
    hp.n_head_kv = 1;
    hp.head_dim = 4;
    CHECK_THROWS_KIND_MSG(minicpm::KvPool(hp, devices, 0, GGML_TYPE_F32), ErrorKind::InvalidArgument, "batch_cache_cells");
    minicpm::KvPool pool(hp, devices, 10, GGML_TYPE_F32);   // cells 1..10 leasable, 0 the scratch cell
    CHECK_EQ(pool.n_cells(), 11);
    CHECK_EQ(pool.end(), 0);
    CHECK(pool.acquire(4, GGML_TYPE_F16) == nullptr);       // another kv type
    auto a = pool.acquire(4, GGML_TYPE_F32);
    auto b = pool.acquire(4, GGML_TYPE_F32);
    CHECK(a && b);
    CHECK_EQ(a->base(), 1);
    CHECK_EQ(b->base(), 5);
    CHECK_EQ(pool.end(), 9);
    auto c = pool.acquire(2, GGML_TYPE_F32);
    CHECK(c && c->base() == 9);
    CHECK(pool.acquire(1, GGML_TYPE_F32) == nullptr);      // full
    // A lease's tensors are the pool's rows [base, base + n): a row written through one is in the other.
    const size_t row = 4 * sizeof(float);
    CHECK(b->tensors().k.size() == 2 && b->tensors().k[1]->ne[1] == 4);
    CHECK((char *) b->tensors().v[1]->data == (char *) pool.tensors().v[1]->data + 5 * row);
    const float v[4] = {1, 2, 3, 4};
    ggml_backend_tensor_set(b->tensors().k[0], v, 2 * row, row);
    float got[4] = {};
    ggml_backend_tensor_get(pool.tensors().k[0], got, 7 * row, row);
    CHECK(got[0] == 1 && got[3] == 4);
    float zero[4] = {9, 9, 9, 9};
    ggml_backend_tensor_get(pool.tensors().k[1], zero, 0, row);   // zero-filled at allocation
    CHECK(zero[0] == 0 && zero[3] == 0);
    a.reset();                                              // its range is free again: first fit
    auto d = pool.acquire(3, GGML_TYPE_F32);
    CHECK(d && d->base() == 1);
    c.reset();
    CHECK_EQ(pool.end(), 9);
    b.reset();
    CHECK_EQ(pool.end(), 4);
}

CHECK_MAIN()
