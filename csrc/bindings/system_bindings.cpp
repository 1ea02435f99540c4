// Python bindings that describe the machine and the build: CPU features, CUDA
// devices, build flags. Dispatch, logs and bug reports read these.
#include "bindings/module_parts.h"
#include <pybind11/stl.h>
#include "build_info.h"
#include "cpu_features.h"
#include "cpu_topology.h"
#include "cuda/device_info.h"

#include <algorithm>
#include <string>
#include <vector>

namespace edgevla::bindings {
namespace py = pybind11;
namespace {

py::dict cpu_features_dict() {
    const CpuFeatures& features = cpu_features();
    py::dict result;
    for (const CpuFeatureField& field : kCpuFeatureFields) result[field.name] = features.*field.member;
    return result;
}

// "a;b" -> ["a", "b"]; "" -> [].
py::list split_list(const std::string& text) {
    py::list items;
    size_t start = 0;
    while (start < text.size()) {
        const size_t end = std::min(text.find(';', start), text.size());
        if (end > start) items.append(text.substr(start, end - start));
        start = end + 1;
    }
    return items;
}

py::object text_or_none(const char* text) {
    return *text ? py::object(py::str(text)) : py::object(py::none());
}

py::dict build_info_dict() {
    const BuildInfo& info = build_info();
    py::dict result;
    result["version"] = info.version;
    result["build_type"] = info.build_type;
    result["system_processor"] = info.system_processor;
    result["compiler"] = info.cxx_compiler;
    result["cxx_flags"] = info.cxx_flags;
    result["sanitizers"] = split_list(info.sanitizers);
    result["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) +
                         "." + std::to_string(PYBIND11_VERSION_PATCH);
    result["cuda"] = info.cuda;
    result["cuda_compiler"] = text_or_none(info.cuda_compiler);
    result["cuda_flags"] = text_or_none(info.cuda_flags);
    result["cuda_archs"] = split_list(info.cuda_archs);
    result["cuda_runtime"] = text_or_none(info.cuda_runtime);
    return result;
}

py::list cuda_devices_list() {
    std::vector<cuda::DeviceInfo> devices;
    {
        // The first CUDA call loads and initialises the driver (can take a second).
        py::gil_scoped_release no_gil;
        devices = cuda::list_devices();
    }
    py::list result;
    for (const cuda::DeviceInfo& device : devices) {
        py::dict entry;
        entry["index"] = device.index;
        entry["name"] = device.name;
        entry["compute_capability"] =
            py::make_tuple(device.compute_capability_major, device.compute_capability_minor);
        entry["total_memory_bytes"] = device.total_memory_bytes;
        entry["multiprocessor_count"] = device.multiprocessor_count;
        result.append(std::move(entry));
    }
    return result;
}

}  // namespace

void register_system(py::module_& m) {
    m.def("cpu_arch", &cpu_arch, "The CPU architecture this module was built for: 'x86_64' or 'aarch64'.");
    m.def("cpu_features", &cpu_features_dict,
          "{feature: usable} for the CPU features kernels dispatch on, by their /proc/cpuinfo names.");
    m.def("build_info", &build_info_dict, "How this module was built: compiler, flags, CUDA and its archs.");
    m.def("allowed_cpus", &allowed_cpus, "The CPUs this process may run on (its affinity), ascending.");
    m.def(
        "count_compute_cores",
        [](const std::vector<int>& cpus, const std::string& sysfs) {
            if (std::any_of(cpus.begin(), cpus.end(), [](int cpu) { return cpu < 0; })) {
                throw py::value_error("CPU numbers are >= 0");
            }
            std::vector<int> sorted = cpus;
            std::sort(sorted.begin(), sorted.end());
            sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
            return count_compute_cores(sorted, sysfs);
        },
        py::arg("cpus"), py::arg("sysfs") = "/sys",
        "The physical cores among `cpus` per the sysfs tree at `sysfs`: SMT siblings once, only the performance "
        "cores of a hybrid part when any is among them (csrc/cpu_topology.h).");
    m.def("default_num_threads", &default_threads,
          "The kernels' default thread count: one per physical core this process may run on, performance cores "
          "only on a hybrid part.");
    m.def("cuda_devices", &cuda_devices_list,
          "The CUDA devices visible to this process; [] without a GPU, a driver, or CUDA compiled in.");
}

}  // namespace edgevla::bindings
