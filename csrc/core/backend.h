// Device selection through ggml's backend registry (never #ifdef GGML_USE_*).
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

// The backends a model runs on: `main` computes (GPU when chosen), `cpu` always exists
// and takes what the main device cannot run. backends() lists main first, for the scheduler.
class Backends {
public:
    // device: "auto" (first GPU, else integrated GPU, else CPU), "cpu", "gpu", "cuda", "metal",
    // "vulkan", or a registry name such as "CUDA1". Throws Error(InvalidArgument) naming the
    // available devices when nothing matches. n_threads <= 0: all physical cores (heuristic).
    Backends(const std::string & device, int n_threads);
    ~Backends();
    Backends(const Backends &) = delete;
    Backends & operator=(const Backends &) = delete;

    ggml_backend_t             main() const { return main_; }
    ggml_backend_t             cpu() const { return cpu_; }
    ggml_backend_dev_t         main_device() const { return main_dev_; }
    bool                       main_is_cpu() const { return main_ == cpu_; }
    std::vector<ggml_backend_t> all() const;
    const std::string &        main_name() const { return main_name_; }
    int                        n_threads() const { return n_threads_; }
    void                       set_n_threads(int n_threads);

private:
    ggml_backend_t     main_ = nullptr;
    ggml_backend_t     cpu_  = nullptr;
    ggml_backend_dev_t main_dev_ = nullptr;
    std::string        main_name_;
    int                n_threads_ = 1;
};

int default_n_threads();

} // namespace minicpm
