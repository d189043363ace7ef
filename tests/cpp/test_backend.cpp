// Device selection: the registry lists a CPU, "cpu"/"auto"/registry names pick a device, and
// a name that matches nothing is Error(InvalidArgument) naming every available device.
#include "check.h"

#include "core/backend.h"

#include <algorithm>
#include <cctype>

using minicpm::ComputeBackends;
using minicpm::Devices;
using minicpm::DeviceInfo;
using minicpm::ErrorKind;

namespace {

const DeviceInfo * find_cpu(const std::vector<DeviceInfo> & devices) {
    for (const auto & d : devices) {
        if (d.type == "cpu") return &d;
    }
    return nullptr;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char) std::tolower(c); });
    return s;
}

} // namespace

TEST(list_devices_has_a_cpu) {
    const auto devices = minicpm::list_devices();
    REQUIRE(!devices.empty());
    const DeviceInfo * cpu = find_cpu(devices);
    REQUIRE(cpu != nullptr);
    CHECK_EQ(cpu->name, std::string("CPU"));   // ggml's registry name of its CPU device
    for (const auto & d : devices) {
        CHECK(!d.name.empty());
        CHECK(d.type == "cpu" || d.type == "gpu" || d.type == "igpu" || d.type == "accel");
        CHECK(d.memory_free <= d.memory_total);
    }
}

TEST(cpu_by_family_and_registry_name) {
    for (const char * name : {"cpu", "CPU", "Cpu"}) {
        Devices d(name, 2);
        CHECK(d.main_is_cpu());
        CHECK_EQ(d.main_name(), std::string("CPU"));
        CHECK_EQ(d.n_threads(), 2);
        ComputeBackends b(d, 0);   // 0: the devices' thread count
        CHECK(b.main_is_cpu());
        CHECK_EQ(b.n_threads(), 2);
        REQUIRE(b.all().size() == 1);
        CHECK(b.all()[0] == b.cpu());
    }
}

TEST(auto_prefers_a_gpu) {
    // "auto" is the first GPU when there is one, else the CPU.
    const auto devices = minicpm::list_devices();
    std::string want = "CPU";
    for (const auto & d : devices) {
        if (d.type == "gpu") {
            want = d.name;
            break;
        }
    }
    Devices d("auto", 1);
    CHECK_EQ(d.main_name(), want);
    CHECK_EQ(d.main_is_cpu(), want == "CPU");
    CHECK(d.cpu() != nullptr);
    ComputeBackends b(d, 1);
    CHECK(b.cpu() != nullptr && b.main() != nullptr);
}

TEST(default_thread_count) {
    Devices d("cpu", 0);   // <= 0: a default from the core count
    CHECK(d.n_threads() >= 1);
    CHECK_EQ(d.n_threads(), minicpm::default_n_threads());
    ComputeBackends b(d, 0);
    CHECK_EQ(b.n_threads(), d.n_threads());
    b.set_n_threads(3);
    CHECK_EQ(b.n_threads(), 3);
    ComputeBackends other(d, 5);   // a session with its own count
    CHECK_EQ(other.n_threads(), 5);
    CHECK(other.cpu() != b.cpu());   // its own backend instance
}

TEST(unknown_device_lists_available_ones) {
    const auto devices = minicpm::list_devices();
    for (const char * name : {"no-such-device", "cuda7x", "CPU1x"}) {
        try {
            Devices b(name, 1);
            check::report(__FILE__, __LINE__, std::string("device '") + name + "' was accepted");
        } catch (const minicpm::Error & e) {
            CHECK(e.kind() == ErrorKind::InvalidArgument);
            const std::string msg = e.what();
            CHECK(msg.find(std::string("device '") + name + "' not found") != std::string::npos);
            for (const auto & d : devices) {
                if (msg.find(d.name + " (" + d.type + ")") == std::string::npos) {
                    check::report(__FILE__, __LINE__, "'" + msg + "' does not list " + d.name);
                }
            }
        }
    }
    CHECK_THROWS_KIND_MSG(Devices("definitely-not-a-backend", 1), ErrorKind::InvalidArgument, "available devices: ");
}

TEST(gpu_request_without_gpu) {
    // Asking for a GPU family on a machine without one is the same InvalidArgument error,
    // not a silent CPU fallback.
    const auto devices = minicpm::list_devices();
    const bool has_gpu = std::any_of(devices.begin(), devices.end(),
                                     [](const DeviceInfo & d) { return d.type == "gpu" || d.type == "igpu"; });
    if (has_gpu) return;
    CHECK_THROWS_KIND_MSG(Devices("gpu", 1), ErrorKind::InvalidArgument, "CPU (cpu)");
    bool has_cuda = false;
    for (const auto & d : devices) has_cuda |= lower(d.name).rfind("cuda", 0) == 0;
    if (!has_cuda) CHECK_THROWS_KIND_MSG(Devices("cuda", 1), ErrorKind::InvalidArgument, "not found");
}

CHECK_MAIN()
