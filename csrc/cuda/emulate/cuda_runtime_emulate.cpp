// The CUDA runtime's C functions that the launchers call, answered from the
// emulation's device model (cuda_runtime_emulate.h). Occupancy is modelled by
// warps and blocks only: registers and shared memory are not known here.
#include "cuda/emulate/cuda_runtime_emulate.h"

#include <algorithm>

namespace edgevla::cuda::emulate {

DeviceModel& device_model() {
    static DeviceModel model;
    return model;
}

}  // namespace edgevla::cuda::emulate

using edgevla::cuda::emulate::device_model;

cudaError_t cudaGetDevice(int* device) {
    *device = device_model().device;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
    if (device != device_model().device) return cudaErrorInvalidDevice;
    switch (attribute) {
        case cudaDevAttrMultiProcessorCount: *value = device_model().multiprocessors; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMajor: *value = device_model().cc_major; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor: *value = device_model().cc_minor; return cudaSuccess;
        default: return cudaErrorInvalidValue;
    }
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int block_size, size_t) {
    const int warps = (block_size + 31) / 32;
    *blocks = std::min(device_model().warps_per_sm / warps, device_model().blocks_per_sm);
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
const char* cudaGetErrorName(cudaError_t error) { return error == cudaSuccess ? "cudaSuccess" : "cudaError"; }
const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "an emulated error"; }
