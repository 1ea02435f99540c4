// The int8 GEMM on Blackwell's fifth-generation tensor cores (tcgen05.mma,
// accumulators in tensor memory), through CUTLASS 3's Sm100 collectives: TMA
// loads, 128 x 128 x 128 tiles on one SM, stream-K. Built for sm_110a (Jetson
// Thor) and sm_100a (B200) when those are among EDGEVLA_CUDA_ARCHS and CMake
// finds the CUTLASS headers; tcgen05 exists on no other GPU, and the mma.sync
// kernels (gemm_s8s8_kernels.cuh) still run on these.
//
// int32 out, or float32 out through the W8A8 epilogue visitor of
// cutlass_gemm_s8s8.cuh (the CPU reference's bits by construction).
//
// Written and compiled without a Blackwell GPU: nothing here has run yet.
#pragma once

#include "cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

namespace edgevla::cuda {

bool gemm_s8s8_sm100_compiled();

// Throws std::invalid_argument on a GPU this build has no tcgen05 kernel for
// or operands against TMA's rules (as gemm_s8s8_sm90.h), and
// std::runtime_error for a CUTLASS or CUDA failure.
void gemm_s8s8_sm100(const GemmS8S8Args& args, cudaStream_t stream);

}  // namespace edgevla::cuda
