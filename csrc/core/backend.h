// Device selection through ggml's backend registry (never #ifdef GGML_USE_*).
//
// Two levels, as whisper.cpp's context / state split: `Devices` is what a model is loaded for
// (the compute device and the CPU, their buffer types, what they can run); it holds no backend
// instance and is shared read-only by every session of the model. `ComputeBackends` are the
// backend instances one session computes with (a CPU backend owns its thread pool and work
// buffer, a GPU backend its stream): each session has its own, so sessions on one model never
// share compute state.
#pragma once

#include "ggml-backend.h"

#include <string>
#include <vector>

namespace minicpm {

struct DeviceInfo {
    std::string name;         // registry name: "CPU", "CUDA0", "Metal", ...
    std::string description;
    std::string type;         // "cpu" | "gpu" | "igpu" | "accel"
    size_t      memory_free  = 0;
    size_t      memory_total = 0;
};

// Every device the registry knows, in registry order.
std::vector<DeviceInfo> list_devices();

int default_n_threads();
// At most 4 x the hardware threads (more only oversubscribes; 10^5 threads would hang the first
// graph); n_threads outside [0, max_n_threads()] raise InvalidArgument.
int  max_n_threads();
void check_n_threads(int n_threads);

class Devices {
public:
    // device: "auto" (first GPU, else integrated GPU, else CPU), "cpu", "gpu", "cuda", "metal",
    // "vulkan", or a registry name such as "CUDA1". Throws Error(InvalidArgument) naming the
    // available devices when nothing matches. n_threads <= 0: all physical cores (heuristic);
    // sessions use it unless they ask for another count.
    Devices(const std::string & device, int n_threads);

    ggml_backend_dev_t main() const { return main_; }
    ggml_backend_dev_t cpu() const { return cpu_; }
    bool               main_is_cpu() const { return main_ == cpu_; }
    const std::string & main_name() const { return main_name_; }
    int                n_threads() const { return n_threads_; }
    // Buffer type for weights and caches on the compute device.
    ggml_backend_buffer_type_t main_buffer_type() const;
    // Whether the compute device runs `op` (for choosing a graph's kernels at load).
    bool supports_op(const ggml_tensor * op) const;
    // The CPU backend's extra buffer types (repacked weight layouts), in its order of preference.
    std::vector<ggml_backend_buffer_type_t> cpu_extra_buffer_types() const;

private:
    ggml_backend_dev_t main_ = nullptr;
    ggml_backend_dev_t cpu_  = nullptr;
    std::string        main_name_;
    int                n_threads_ = 1;
};

// The backend instances of one session: `main` computes (the GPU when one was chosen), `cpu`
// takes what the main device cannot run. all() lists main first, for a scheduler.
class ComputeBackends {
public:
    ComputeBackends(const Devices & devices, int n_threads);
    ~ComputeBackends();
    ComputeBackends(const ComputeBackends &) = delete;
    ComputeBackends & operator=(const ComputeBackends &) = delete;

    ggml_backend_t              main() const { return main_; }
    ggml_backend_t              cpu() const { return cpu_; }
    bool                        main_is_cpu() const { return main_ == cpu_; }
    std::vector<ggml_backend_t> all() const;
    const std::string &         main_name() const { return main_name_; }
    int                         n_threads() const { return n_threads_; }
    void                        set_n_threads(int n_threads);

private:
    ggml_backend_t main_ = nullptr;
    ggml_backend_t cpu_  = nullptr;
    std::string    main_name_;
    int            n_threads_ = 1;
};

} // namespace minicpm
