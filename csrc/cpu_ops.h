// The packed GEMMs and per-token quantization as callers use them: the
// active ISA's kernel (dispatch.h), split over the global thread pool
// (thread_pool.h). Arguments are trusted (the bindings validate them).
#pragma once

#include "cpu_kernels.h"

#include <cstdint>

namespace edgevla {

// C = epilogue(A * W^T) for a validated packed W.
void gemm_packed_s8_f32(const GemmPackedArgs& args);
void gemm_sparse_f32(const GemmSparseF32Args& args);
void gemm_sparse_s8(const GemmSparseS8Args& args);
void gemm_2to4_f32(const Gemm2to4F32Args& args);
void gemm_2to4_s8(const Gemm2to4S8Args& args);
void gemm_w4_f32(const GemmW4F32Args& args);

// Quantizes every row of x float32 (m, k) into q int8 (m, k) and scale[m].
// Returns -1, or the index of the first row holding a NaN or an infinity
// (q and scale are then partly written).
int64_t quantize_per_token(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, int64_t ldq, float* scale);

}  // namespace edgevla
