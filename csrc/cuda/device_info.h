// The CUDA devices this process can use, as the CUDA runtime reports them.
//
// Plain C++ (no CUDA types), so the bindings compile without the toolkit. Two
// implementations, CMake picks one: device_info.cu (CUDA runtime, linked
// statically so the module loads where no driver is installed) and
// device_info_without_cuda.cpp (builds without CUDA: there is no device).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edgevla::cuda {

struct DeviceInfo {
    int index = 0;                    // the CUDA device ordinal
    std::string name;                 // e.g. "Orin", "NVIDIA H100 80GB HBM3"
    int compute_capability_major = 0; // 8 for sm_87
    int compute_capability_minor = 0; // 7 for sm_87
    uint64_t total_memory_bytes = 0;
    int multiprocessor_count = 0;
};

// Empty when there is no device or no (new enough) driver. Any other CUDA
// failure throws std::runtime_error naming the CUDA error: a broken driver
// should be seen, not mistaken for a CPU-only machine.
std::vector<DeviceInfo> list_devices();

}  // namespace edgevla::cuda
