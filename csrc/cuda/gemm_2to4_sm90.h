// The 2:4 sparse int8 GEMM on Hopper's sparse warpgroup MMA (wgmma.sp),
// through CUTLASS 3: the weight is the sparse operand, kept in CUTLASS's own
// compressed layout (values and reordered metadata), which CUTLASS's
// compressor kernel makes on the GPU from the dense weight once. Built for
// sm_90a only, with the CUTLASS headers, beside gemm_s8s8_sm90.h; the
// mma.sp kernels (gemm_2to4_kernels.cuh, our fragment-order packing) run on
// every GPU. int32 out, or float32 through the W8A8 epilogue visitor of
// cutlass_gemm_s8s8.cuh with its broadcasts transposed (see below).
//
// The weight W (N, K) is CUTLASS's A (M = N output channels, row-major), the
// activations X (M_tokens, K) its B (column-major, K contiguous), and the
// output C (M_tokens, N) row-major is its D column-major: C^T = W . X^T.
#pragma once

#include "cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

namespace edgevla::cuda {

bool gemm_2to4_sm90_compiled();

// Bytes of the compressed values and of the metadata for an (n, k) weight
// (both padded to CUTLASS's alignments: k to 128, n to 64 for the metadata).
Sparse2to4WgmmaSizes sparse_2to4_s8_sm90_sizes(int64_t n, int64_t k);

// Runs CUTLASS's compressor on `stream`: w (n, k) int8 device memory with row
// stride ldw, every group of 4 k with at most 2 non-zeros (the caller checks:
// the compressor writes past its chunk otherwise). Throws
// std::invalid_argument on a non-sm_90 GPU or k not a multiple of 32.
void compress_2to4_s8_sm90(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int8_t* values, uint8_t* meta,
                           cudaStream_t stream);

// C = X . W^T with W from compress_2to4_s8_sm90: int32 (c_s32), or float32
// through the W8A8 epilogue (c_f32), as gemm_2to4_s8.
void gemm_2to4_s8_sm90(const Gemm2to4S8WgmmaArgs& args, cudaStream_t stream);

}  // namespace edgevla::cuda
