// What the CUTLASS 3 kernels' launchers share (sm_90a, sm_100a / sm_110a): the device check, the
// hardware info the persistent schedulers want, and one way to run a CUTLASS
// device operator (a GemmUniversalAdapter or a TransformUniversalAdapter)
// with one-line errors naming the kernel.
#pragma once

#include "cuda/launch_check.cuh"

#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace edgevla::cuda {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The compute capability (major * 10 + minor) of the current device.
inline int device_compute_capability() {
    int device = 0, major = 0, minor = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
    return 10 * major + minor;
}

// Architecture-specific ("a") cubins load on their own GPU only: sm_90a's
// wgmma on sm_90 alone, sm_100a / sm_110a's tcgen05 on sm_100 / sm_110 alone
// (Orin's sm_87 and Ada's sm_89 have neither). `built` lists the capabilities
// this build has the kernel for.
inline void check_device_is(const std::string& kernel, const std::string& variant, std::initializer_list<int> built) {
    const int cc = device_compute_capability();
    for (int b : built) {
        if (b == cc) return;
    }
    std::string names;
    for (int b : built) names += (names.empty() ? "sm_" : ", sm_") + std::to_string(b);
    throw std::invalid_argument(kernel + ": the " + variant + " variant runs on " + names +
                                " GPUs in this build, this one is sm_" + std::to_string(cc));
}

inline void check_device_is_sm90(const std::string& kernel) { check_device_is(kernel, "wgmma", {90}); }

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
