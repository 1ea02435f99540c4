// The GEMM epilogues on the GPU: the functors the kernels call per output
// value, over the one copy of the float arithmetic in csrc/epilogue_math.h
// (its functions are __host__ __device__ under nvcc). The CUDA sources are
// compiled with --fmad=false (CMakeLists.txt), so nvcc fuses exactly what the
// header writes as fmaf, as the host compilers do under -ffp-contract=off: a
// CUDA kernel's float output is bit-identical to the CPU reference
// (tests/test_cuda_kernels.py checks it exactly on a GPU;
// tests/test_cuda_host.py checks the PTX's fma count without one).
#pragma once

#include "epilogue_math.h"

namespace edgevla::cuda {

// The W8A8 dequantization epilogue of gemm_s8s8.h for one value.
struct EpilogueS8 {
    const float* w_scale;  // [N]
    const float* a_scale;  // [1] or [M]
    int a_scale_per_token;
    const float* bias;     // [N] or nullptr
    int activation;

    __device__ __forceinline__ float operator()(int64_t row, int64_t col, int32_t acc) const {
        float v = edgevla_dequant_s8_f32(acc, a_scale[a_scale_per_token ? row : 0], w_scale[col]);
        if (bias != nullptr) v = v + bias[col];
        return edgevla_activate_f32(static_cast<edgevla_activation>(activation), v);
    }
};

// The float-activation epilogue (cpu_kernels.h epilogue_f32): bias, activation.
struct EpilogueF32 {
    const float* bias;  // [N] or nullptr
    int activation;

    __device__ __forceinline__ float operator()(int64_t col, float acc) const {
        float v = acc;
        if (bias != nullptr) v = v + bias[col];
        return edgevla_activate_f32(static_cast<edgevla_activation>(activation), v);
    }
};

}  // namespace edgevla::cuda
