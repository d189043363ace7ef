// Runs small ggml graphs on the CPU backend for the graph-block tests: tensors are declared in
// a no_alloc context, the graph is allocated with ggml_gallocr, inputs are set from float
// vectors (converted to F16 where the tensor is F16), and the output is read back as floats.
// Also: deterministic random numbers and an element-wise comparison that reports the worst
// mismatches.
#pragma once

#include "check.h"

#include "core/backend.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace test_graph {

// splitmix64: the same numbers on every platform and standard library (std::uniform_real_
// distribution is not specified bit for bit).
class Random {
public:
    explicit Random(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [lo, hi).
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float) ((next() >> 40) * (1.0 / 16777216.0)); }
    std::vector<float> vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(n);
        for (float & x : v) x = uniform(lo, hi);
        return v;
    }

private:
    uint64_t state_;
};

inline float round_f16(float x) { return ggml_fp16_to_fp32(ggml_fp32_to_fp16(x)); }
inline std::vector<float> round_f16(std::vector<float> v) {
    for (float & x : v) x = round_f16(x);
    return v;
}

class CpuGraph {
public:
    CpuGraph() {
        ggml_init_params params = {/*mem_size =*/ggml_tensor_overhead() * 1024 + ggml_graph_overhead(),
                                   /*mem_buffer =*/nullptr, /*no_alloc =*/true};
        ctx_ = ggml_init(params);
        if (!ctx_) throw std::runtime_error("cannot create a ggml context");
        backend_ = cpu_backends().cpu();
    }
    ~CpuGraph() {
        if (galloc_) ggml_gallocr_free(galloc_);
        ggml_free(ctx_);
    }
    CpuGraph(const CpuGraph &) = delete;
    CpuGraph & operator=(const CpuGraph &) = delete;

    ggml_context * ctx() const { return ctx_; }

    // A graph input of shape ne (ggml order), set from `values` (one per element, in ggml order).
    ggml_tensor * input(ggml_type type, const std::vector<int64_t> & ne, std::vector<float> values) {
        ggml_tensor * t = ggml_new_tensor(ctx_, type, (int) ne.size(), ne.data());
        if ((size_t) ggml_nelements(t) != values.size()) throw std::runtime_error("input: wrong number of values");
        ggml_set_input(t);
        inputs_.push_back({t, std::move(values)});
        return t;
    }

    bool supports(const ggml_tensor * op) const { return ggml_backend_supports_op(backend_, op); }

    // Computes `out` and returns its elements (as F32, in ggml order). Once per CpuGraph.
    std::vector<float> compute(ggml_tensor * out) {
        if (out->type != GGML_TYPE_F32) out = ggml_cast(ctx_, out, GGML_TYPE_F32);   // a contiguous copy
        if (!ggml_is_contiguous(out)) out = ggml_cont(ctx_, out);
        ggml_set_output(out);
        ggml_cgraph * gf = ggml_new_graph(ctx_);
        ggml_build_forward_expand(gf, out);
        galloc_ = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_));
        REQUIRE(ggml_gallocr_alloc_graph(galloc_, gf));
        for (size_t i = 0; i < inputs_.size(); ++i) {
            // The allocator skips tensors the graph does not use: a block that ignores an
            // argument (a weight, a bias, the mask) fails here rather than in a ggml assert.
            if (!inputs_[i].t->buffer) {
                check::report(__FILE__, __LINE__, "input " + std::to_string(i) + " is not used by the graph");
                throw check::Abort{};
            }
            set(inputs_[i].t, inputs_[i].values);
        }
        REQUIRE(ggml_backend_graph_compute(backend_, gf) == GGML_STATUS_SUCCESS);
        std::vector<float> result((size_t) ggml_nelements(out));
        ggml_backend_tensor_get(out, result.data(), 0, ggml_nbytes(out));
        return result;
    }

private:
    // One CPU backend for all graphs, with the library's thread count (ggml's default of 4
    // threads spinning on a 2-core machine makes each tiny graph take ~0.1 s).
    static const minicpm::ComputeBackends & cpu_backends() {
        static const minicpm::Devices devices("cpu", 0);
        static const minicpm::ComputeBackends backends(devices, 0);
        return backends;
    }

    struct Input {
        ggml_tensor *      t;
        std::vector<float> values;
    };

    static void set(ggml_tensor * t, const std::vector<float> & values) {
        if (t->type == GGML_TYPE_F32) {
            ggml_backend_tensor_set(t, values.data(), 0, ggml_nbytes(t));
        } else if (t->type == GGML_TYPE_F16) {
            std::vector<ggml_fp16_t> h(values.size());
            ggml_fp32_to_fp16_row(values.data(), h.data(), (int64_t) values.size());
            ggml_backend_tensor_set(t, h.data(), 0, ggml_nbytes(t));
        } else {
            throw std::runtime_error("input: only F32 and F16 inputs");
        }
    }

    ggml_context *     ctx_     = nullptr;
    ggml_backend_t     backend_ = nullptr;
    ggml_gallocr_t     galloc_  = nullptr;
    std::vector<Input> inputs_;
};

// Every element within abs_tol + rel_tol * |want|; reports the count and the worst mismatch.
inline void check_close(const char * file, int line, const std::string & what, const std::vector<float> & got,
                        const std::vector<double> & want, double abs_tol, double rel_tol) {
    if (got.size() != want.size()) {
        check::report(file, line, what + ": " + std::to_string(got.size()) + " values, expected " +
                                      std::to_string(want.size()));
        return;
    }
    size_t n_bad = 0, worst = 0;
    double worst_excess = -INFINITY, max_err = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        double err = std::fabs((double) got[i] - want[i]);
        if (std::isnan(err)) err = INFINITY;   // NaN is a mismatch
        const double excess = err - (abs_tol + rel_tol * std::fabs(want[i]));
        max_err = std::max(max_err, err);
        if (excess > 0.0) ++n_bad;
        if (excess > worst_excess) worst_excess = excess, worst = i;
    }
    if (std::getenv("CHECK_VERBOSE")) std::printf("    %s: max abs error %.3g\n", what.c_str(), max_err);
    if (n_bad) {
        char buf[160];
        std::snprintf(buf, sizeof buf, ": %zu of %zu values off, worst at [%zu]: got %.9g, expected %.9g", n_bad,
                      got.size(), worst, (double) got[worst], want[worst]);
        check::report(file, line, what + buf);
    }
}

} // namespace test_graph

#define CHECK_CLOSE(what, got, want, abs_tol, rel_tol) \
    ::test_graph::check_close(__FILE__, __LINE__, what, got, want, abs_tol, rel_tol)
