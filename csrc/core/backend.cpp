#include "backend.h"

#include "error.h"
#include "log.h"

#include <algorithm>
#include <cctype>
#include <mutex>
#include <thread>

namespace minicpm {

namespace {

void ensure_backends_loaded() {
    static std::once_flag once;
    std::call_once(once, [] {
        install_ggml_logger();
        // With dynamically loadable backends this finds them; with a static registry it is a no-op.
        if (ggml_backend_dev_count() == 0) {
            ggml_backend_load_all();
        }
    });
}

const char * type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default: return "other";
    }
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char) std::tolower(c); });
    return s;
}

std::string device_names() {
    std::string out;
    for (const auto & d : list_devices()) {
        if (!out.empty()) out += ", ";
        out += d.name + " (" + d.type + ")";
    }
    return out.empty() ? "none" : out;
}

ggml_backend_dev_t pick_device(const std::string & want_raw) {
    const std::string want = lower(want_raw);
    const size_t n = ggml_backend_dev_count();
    auto first_of_type = [&](enum ggml_backend_dev_type t) -> ggml_backend_dev_t {
        for (size_t i = 0; i < n; ++i) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(d) == t) return d;
        }
        return nullptr;
    };
    if (want.empty() || want == "auto") {
        if (auto d = first_of_type(GGML_BACKEND_DEVICE_TYPE_GPU)) return d;
        if (auto d = first_of_type(GGML_BACKEND_DEVICE_TYPE_IGPU)) return d;
        return first_of_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    if (want == "cpu") {
        return first_of_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    if (want == "gpu") {
        if (auto d = first_of_type(GGML_BACKEND_DEVICE_TYPE_GPU)) return d;
        return first_of_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
    }
    // exact registry name ("CUDA0", "Metal")
    for (size_t i = 0; i < n; ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (lower(ggml_backend_dev_name(d)) == want) return d;
    }
    // family name ("cuda", "metal", "vulkan"): the first device of that backend
    for (size_t i = 0; i < n; ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(d);
        if (reg && lower(ggml_backend_reg_name(reg)) == want) return d;
        if (lower(ggml_backend_dev_name(d)).rfind(want, 0) == 0) return d;
    }
    return nullptr;
}

} // namespace

int default_n_threads() {
    unsigned hc = std::thread::hardware_concurrency();
    if (hc == 0) return 4;
    // Hyper-threads rarely help matrix-vector work; keep to a likely physical core count.
    return (int) std::max(1u, hc > 4 ? hc / 2 : hc);
}

int max_n_threads() {
    const unsigned hc = std::thread::hardware_concurrency();
    return 4 * (int) std::max(1u, hc == 0 ? 4u : hc);
}

void check_n_threads(int n_threads) {
    if (n_threads < 0) fail(ErrorKind::InvalidArgument, "n_threads must be >= 0 (0 = from the core count)");
    if (n_threads > max_n_threads()) {
        fail(ErrorKind::InvalidArgument, "n_threads " + std::to_string(n_threads) + " is more than " +
                                             std::to_string(max_n_threads()) + " (4 x the " +
                                             std::to_string(max_n_threads() / 4) + " cores of this machine)");
    }
}

std::vector<DeviceInfo> list_devices() {
    ensure_backends_loaded();
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        DeviceInfo info;
        info.name        = ggml_backend_dev_name(d);
        info.description = ggml_backend_dev_description(d);
        info.type        = type_name(ggml_backend_dev_type(d));
        ggml_backend_dev_memory(d, &info.memory_free, &info.memory_total);
        out.push_back(std::move(info));
    }
    return out;
}

Devices::Devices(const std::string & device, int n_threads) {
    check_n_threads(n_threads);
    ensure_backends_loaded();
    ggml_backend_dev_t dev = pick_device(device);
    if (!dev) {
        fail(ErrorKind::InvalidArgument, "device '" + device + "' not found; available devices: " + device_names() +
                                             " (this build of ggml may lack that backend)");
    }
    cpu_ = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu_) fail(ErrorKind::Backend, "ggml has no CPU backend registered");
    main_      = dev;
    main_name_ = ggml_backend_dev_name(dev);
    n_threads_ = n_threads > 0 ? n_threads : default_n_threads();
    MINICPM_LOG_INFO("using device %s (%s), %d CPU threads", main_name_.c_str(), ggml_backend_dev_description(dev),
                     n_threads_);
}

ggml_backend_buffer_type_t Devices::main_buffer_type() const { return ggml_backend_dev_buffer_type(main_); }

bool Devices::supports_op(const ggml_tensor * op) const { return ggml_backend_dev_supports_op(main_, op); }

std::vector<ggml_backend_buffer_type_t> Devices::cpu_extra_buffer_types() const {
    std::vector<ggml_backend_buffer_type_t> out;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu_);
    auto get_extra = reg ? (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
                               reg, "ggml_backend_dev_get_extra_bufts")
                         : nullptr;
    if (get_extra) {
        for (ggml_backend_buffer_type_t * p = get_extra(cpu_); p && *p; ++p) out.push_back(*p);
    }
    return out;
}

ComputeBackends::ComputeBackends(const Devices & devices, int n_threads) {
    check_n_threads(n_threads);
    cpu_ = ggml_backend_dev_init(devices.cpu(), nullptr);
    if (!cpu_) fail(ErrorKind::Backend, "failed to initialise the CPU backend");
    if (devices.main_is_cpu()) {
        main_ = cpu_;
    } else {
        main_ = ggml_backend_dev_init(devices.main(), nullptr);
        if (!main_) {
            ggml_backend_free(cpu_);
            cpu_ = nullptr;
            fail(ErrorKind::Backend, "failed to initialise device " + devices.main_name());
        }
    }
    main_name_ = devices.main_name();
    set_n_threads(n_threads > 0 ? n_threads : devices.n_threads());
}

ComputeBackends::~ComputeBackends() {
    if (main_ && main_ != cpu_) ggml_backend_free(main_);
    if (cpu_) ggml_backend_free(cpu_);
}

std::vector<ggml_backend_t> ComputeBackends::all() const {
    std::vector<ggml_backend_t> out;
    out.push_back(main_);
    if (main_ != cpu_) out.push_back(cpu_);
    return out;
}

void ComputeBackends::set_n_threads(int n_threads) {
    check_n_threads(n_threads);
    n_threads_ = n_threads > 0 ? n_threads : default_n_threads();
    for (ggml_backend_t b : all()) {
        ggml_backend_dev_t dev = ggml_backend_get_device(b);
        ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
        if (!reg) continue;
        auto fn = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
        if (fn) fn(b, n_threads_);
    }
}

} // namespace minicpm
