// What the CUTLASS 3 (sm_90a) kernels' launchers share: the device check, the
// hardware info the persistent schedulers want, and one way to run a CUTLASS
// device operator (a GemmUniversalAdapter or a TransformUniversalAdapter)
// with one-line errors naming the kernel.
#pragma once

#include "cuda/launch_check.cuh"

#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace edgevla::cuda {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// wgmma and TMA exist on sm_90 alone: not on Orin's sm_87, Ada's sm_89 or
// Thor's sm_110, and an sm_90a cubin loads on no other GPU.
inline void check_device_is_sm90(const std::string& kernel) {
    int device = 0, major = 0, minor = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
    if (major != 9 || minor != 0) {
        throw std::invalid_argument(kernel + ": the wgmma variant runs on sm_90 GPUs only, this one is sm_" +
                                    std::to_string(major) + std::to_string(minor));
    }
}

// The current device and its multiprocessor count, for CUTLASS's persistent
// tile schedulers (one attribute query, no synchronization).
inline cutlass::KernelHardwareInfo hardware_info() {
    cutlass::KernelHardwareInfo info;
    check_cuda(cudaGetDevice(&info.device_id), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, info.device_id),
               "cudaDeviceGetAttribute");
    return info;
}

// can_implement, then initialize and run on `stream`, then check_launch. A
// workspace (stream-K partial sums, the compressor's scratch) comes from the
// stream-ordered pool and goes back to it after the kernel, on the stream.
template <typename Operator>
void run_cutlass(const typename Operator::Arguments& args, const std::string& kernel, cudaStream_t stream) {
    Operator op;
    cutlass::Status status = op.can_implement(args);
    if (status != cutlass::Status::kSuccess) {
        throw std::invalid_argument(kernel + ": CUTLASS cannot take these operands: " +
                                    cutlass::cutlassGetStatusString(status));
    }
    struct Workspace {
        void* data = nullptr;
        cudaStream_t stream;
        ~Workspace() {
            if (data != nullptr) cudaFreeAsync(data, stream);
        }
    } workspace{nullptr, stream};
    if (const size_t bytes = Operator::get_workspace_size(args); bytes != 0) {
        check_cuda(cudaMallocAsync(&workspace.data, bytes, stream), (kernel + ": cudaMallocAsync").c_str());
    }
    status = op.initialize(args, workspace.data, stream);
    if (status != cutlass::Status::kSuccess) {
        throw std::runtime_error(kernel + ": initializing the CUTLASS kernel: " + cutlass::cutlassGetStatusString(status));
    }
    status = op.run(stream);
    if (status != cutlass::Status::kSuccess) {
        throw std::runtime_error(kernel + ": launching the CUTLASS kernel: " + cutlass::cutlassGetStatusString(status));
    }
    check_launch(kernel.c_str(), stream);
}

}  // namespace edgevla::cuda
