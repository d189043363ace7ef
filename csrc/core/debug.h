// Debugging through the graph runner's eval callback: named intermediates handed to the caller
// (as llama.cpp's cb() names them: "attn_norm-3"), and a per-op time profile. Nothing here is
// switched by environment variables; the options come from the public API (DebugOptions).
#pragma once

#include "minicpm/minicpm.h"

#include "ggml.h"

#include <chrono>
#include <map>
#include <string>
#include <utility>

namespace minicpm {

class GraphRunner;

class EvalObserver {
public:
    // graph: the runner's name, reported with each tensor.
    EvalObserver(std::string graph, DebugOptions opts);
    // Installs the callback on `runner` when any option asks for it (else leaves it off, so
    // the scheduler runs whole splits as usual).
    void attach(GraphRunner & runner);
    // After a compute: logs the op profile (when profiling) and clears it.
    void finish();
    bool active() const { return (bool) opts_.on_tensor || opts_.profile_ops; }

private:
    static bool callback(ggml_tensor * t, bool ask, void * user);
    bool        wants(const ggml_tensor * t) const;
    void        dump(const ggml_tensor * t) const;

    using clock = std::chrono::steady_clock;
    std::string                                   graph_;
    DebugOptions                                  opts_;
    clock::time_point                             last_;
    bool                                          started_ = false;
    std::map<std::string, std::pair<double, int>> by_op_;   // ms, count
    double                                        total_ms_ = 0;
};

// The float values of a tensor of type F32, F16, BF16 or I32 (any layout, any backend), in
// ggml order; empty for other types.
std::vector<float> tensor_to_floats(const ggml_tensor * t);

} // namespace minicpm
