// The int8 GEMM on Hopper's warpgroup MMA (wgmma), through CUTLASS 3: TMA
// loads into swizzled shared memory, warp-specialized producer / consumer
// warpgroups, 128 x 128 x 128 tiles on clusters of 1 x 2. Built only for
// sm_90a (wgmma runs on no other architecture: not on Orin's sm_87, Ada's
// sm_89 or Thor's sm_110) and only when CMake finds the CUTLASS headers
// (EDGEVLA_CUTLASS_DIR, or the nvidia-cutlass wheel); the hand-written
// mma.sync kernels (gemm_s8s8_kernels.cuh) run everywhere.
//
// int32 out, or float32 out through the W8A8 epilogue as a CUTLASS epilogue
// visitor node over csrc/epilogue_math.h (bit-identical to the CPU reference
// by construction; tests/test_cuda_kernels.py checks it on an sm_90 GPU).
#pragma once

#include "cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

namespace edgevla::cuda {

// Whether this build has the kernel.
bool gemm_s8s8_sm90_compiled();

// Launches it for args (c_s32 or c_f32). Throws std::invalid_argument
// when the GPU is not sm_90 or the operands break TMA's rules (16-byte
// aligned bases and row strides, K and N multiples of 16 and 4), and
// std::runtime_error for a CUTLASS or CUDA failure.
void gemm_s8s8_sm90(const GemmS8S8Args& args, cudaStream_t stream);

}  // namespace edgevla::cuda
