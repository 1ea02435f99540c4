// CUDA device enumeration through the CUDA runtime API. cudart is linked
// statically; it loads the driver (libcuda.so) itself at the first call, so on
// a machine without a driver this reports "no device" instead of the module
// failing to import.
#include "cuda/device_info.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace edgevla::cuda {
namespace {

// cudaErrorInsufficientDriver is also what the runtime returns when no driver
// is installed at all.
bool means_no_usable_device(cudaError_t status) {
    return status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver;
}

[[noreturn]] void throw_cuda_error(const char* call, cudaError_t status) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(status) + " (" +
                             cudaGetErrorString(status) + ")");
}

}  // namespace

std::vector<DeviceInfo> list_devices() {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (means_no_usable_device(status)) return {};
    if (status != cudaSuccess) throw_cuda_error("cudaGetDeviceCount", status);

    std::vector<DeviceInfo> devices;
    devices.reserve(static_cast<size_t>(count));
    for (int index = 0; index < count; ++index) {
        cudaDeviceProp prop{};
        const cudaError_t prop_status = cudaGetDeviceProperties(&prop, index);
        if (prop_status != cudaSuccess) throw_cuda_error("cudaGetDeviceProperties", prop_status);
        DeviceInfo info;
        info.index = index;
        info.name = prop.name;
        info.compute_capability_major = prop.major;
        info.compute_capability_minor = prop.minor;
        info.total_memory_bytes = prop.totalGlobalMem;
        info.multiprocessor_count = prop.multiProcessorCount;
        devices.push_back(std::move(info));
    }
    return devices;
}

}  // namespace edgevla::cuda
