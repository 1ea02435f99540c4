// Host-side checks around kernel launches: one-line errors naming the kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace edgevla::cuda {

[[noreturn]] inline void throw_cuda(const char* what, cudaError_t status) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                             ")");
}

inline void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw_cuda(what, status);
}

// EDGEVLA_CUDA_SYNC=1: synchronize after every launch so that a fault is
// reported by the kernel that caused it (debugging; costs the overlap).
inline bool sync_after_launch() {
    static const bool sync = [] {
        const char* value = std::getenv("EDGEVLA_CUDA_SYNC");
        return value != nullptr && value[0] != '\0' && value[0] != '0';
    }();
    return sync;
}

// After a launch: the launch's own error (bad configuration, no kernel image
// for this GPU), and with EDGEVLA_CUDA_SYNC the kernel's completion.
inline void check_launch(const char* kernel, cudaStream_t stream) {
    const cudaError_t launch = cudaGetLastError();
    if (launch != cudaSuccess) throw_cuda((std::string("launching ") + kernel).c_str(), launch);
    if (sync_after_launch()) check_cuda(cudaStreamSynchronize(stream), (std::string("running ") + kernel).c_str());
}

// A variant this build left out (CUTLASS kernels need their architecture
// among EDGEVLA_CUDA_ARCHS and CUTLASS's headers at build time).
[[noreturn]] inline void throw_variant_not_built(const std::string& kernel, const std::string& variant,
                                                 const std::string& archs) {
    throw std::invalid_argument(kernel + ": this build has no " + variant + " variant (it needs " + archs +
                                " among EDGEVLA_CUDA_ARCHS and the CUTLASS headers at build time: "
                                "EDGEVLA_CUTLASS_DIR or pip install nvidia-cutlass)");
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

inline int multiprocessor_count() {
    int device = 0, count = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return count;
}

}  // namespace edgevla::cuda
