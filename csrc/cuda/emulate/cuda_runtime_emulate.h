// The CUDA runtime calls our launchers make (gemm_*_launch.cu), for running
// the launchers themselves under the CPU emulation (cuda_emulate.h): a device
// model (multiprocessor count, compute capability, resident warps an SM) that
// the attribute and occupancy queries answer from, and launch_kernel, which a
// test's copy of a launcher calls in place of each kernel<<<grid, block,
// shared, stream>>>(args...) (tests/test_cuda_emulated.py rewrites those).
// The runtime's C functions are defined in cuda_runtime_emulate.cpp.
#pragma once

#include "cuda/emulate/cuda_emulate.h"

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace edgevla::cuda::emulate {

struct DeviceModel {
    int device = 0;             // what cudaGetDevice says: each model its own (the launchers keep answers per device)
    int multiprocessors = 132;  // an H100 SXM / H200
    int cc_major = 9, cc_minor = 0;
    int warps_per_sm = 64;   // resident warps an SM holds
    int blocks_per_sm = 32;  // resident blocks an SM holds
};
DeviceModel& device_model();

// Dynamic shared memory: the driver defines edgevla::cuda::smem with this
// capacity; a launch asking for more fails.
constexpr size_t kDynamicSharedCapacity = 128 * 1024;

inline Index3 index3_of(dim3 d) { return {d.x, d.y, d.z}; }

// kernel<<<grid, block, shared, stream>>>(args...) as
// launch_kernel(kernel, grid, block, shared, stream)(args...).
template <typename Kernel>
auto launch_kernel(Kernel kernel, dim3 grid, dim3 block, size_t shared = 0, cudaStream_t = nullptr) {
    if (shared > kDynamicSharedCapacity) fail("a launch asks for more dynamic shared memory than the emulation has");
    return [=](auto&&... args) {
        launch(index3_of(grid), index3_of(block), [&] { kernel(args...); });
    };
}

}  // namespace edgevla::cuda::emulate

// cuda_runtime.h offers this overload to nvcc only.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attribute, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attribute, value);
}
