// The GEMM epilogue on the GPU: the operation sequence of csrc/epilogue_math.h
// and gemm_s8s8.h, constant for constant and operation for operation, with
// the explicitly rounded intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn) so that
// nvcc cannot contract a * b + c into an fma, and __fmaf_rn exactly where the
// reference uses fmaf (the polynomials' Horner steps). A CUDA kernel's float output is
// therefore bit-identical to the CPU reference (tests/test_cuda_gemm.py checks
// it exactly).
//
// epilogue_math.h's functions are plain `static inline` C, not callable from
// device code; marking them __host__ __device__ there would let this file go
// (noted in benchmarks/cuda/h200-2026-12-04.md).
#pragma once

#include "epilogue_math.h"

namespace edgevla::cuda {

__device__ __forceinline__ float max_f32(float a, float b) { return a > b ? a : b; }
__device__ __forceinline__ float min_f32(float a, float b) { return a < b ? a : b; }

__device__ __forceinline__ float tanh_f32(float x) {
    x = min_f32(max_f32(x, -EDGEVLA_TANH_CLAMP), EDGEVLA_TANH_CLAMP);
    const float x2 = __fmul_rn(x, x);
    float p = __fmaf_rn(x2, EDGEVLA_TANH_A13, EDGEVLA_TANH_A11);
    p = __fmaf_rn(x2, p, EDGEVLA_TANH_A9);
    p = __fmaf_rn(x2, p, EDGEVLA_TANH_A7);
    p = __fmaf_rn(x2, p, EDGEVLA_TANH_A5);
    p = __fmaf_rn(x2, p, EDGEVLA_TANH_A3);
    p = __fmaf_rn(x2, p, EDGEVLA_TANH_A1);
    p = __fmul_rn(x, p);
    float q = __fmaf_rn(x2, EDGEVLA_TANH_B6, EDGEVLA_TANH_B4);
    q = __fmaf_rn(x2, q, EDGEVLA_TANH_B2);
    q = __fmaf_rn(x2, q, EDGEVLA_TANH_B0);
    const float r = __fdiv_rn(p, q);
    return x >= EDGEVLA_TANH_CLAMP ? 1.0f : (x <= -EDGEVLA_TANH_CLAMP ? -1.0f : r);
}

__device__ __forceinline__ float gelu_tanh_f32(float x) {
    const float cube = __fmul_rn(__fmul_rn(x, x), x);
    const float inner =
        __fmul_rn(EDGEVLA_GELU_SQRT_2_OVER_PI, __fadd_rn(x, __fmul_rn(EDGEVLA_GELU_CUBIC, cube)));
    const float t = tanh_f32(inner);
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, t));
}

__device__ __forceinline__ float activate_f32(int activation, float v) {
    switch (activation) {
        case EDGEVLA_ACTIVATION_RELU: return max_f32(v, 0.0f);
        case EDGEVLA_ACTIVATION_GELU_TANH: return gelu_tanh_f32(v);
        default: return v;
    }
}

// The W8A8 dequantization epilogue of gemm_s8s8.h for one value.
struct EpilogueS8 {
    const float* w_scale;  // [N]
    const float* a_scale;  // [1] or [M]
    int a_scale_per_token;
    const float* bias;     // [N] or nullptr
    int activation;

    __device__ __forceinline__ float operator()(int64_t row, int64_t col, int32_t acc) const {
        const float a = a_scale[a_scale_per_token ? row : 0];
        float v = __fmul_rn(static_cast<float>(acc), __fmul_rn(a, w_scale[col]));
        if (bias != nullptr) v = __fadd_rn(v, bias[col]);
        return activate_f32(activation, v);
    }
};

// The float-activation epilogue (cpu_kernels.h epilogue_f32): bias, activation.
struct EpilogueF32 {
    const float* bias;  // [N] or nullptr
    int activation;

    __device__ __forceinline__ float operator()(int64_t col, float acc) const {
        float v = acc;
        if (bias != nullptr) v = __fadd_rn(v, bias[col]);
        return activate_f32(activation, v);
    }
};

}  // namespace edgevla::cuda
