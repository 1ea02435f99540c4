// The packed W8A8 GEMM and per-token quantization as callers use them: the
// active ISA's kernel (dispatch.h), split over the global thread pool
// (thread_pool.h). Arguments are trusted (the bindings validate them).
#pragma once

#include "cpu_kernels.h"

#include <cstdint>

namespace edgevla {

// C = epilogue(A * W^T) for a validated packed W.
void gemm_packed_s8_f32(const GemmPackedArgs& args);

// Quantizes every row of x float32 (m, k) into q int8 (m, k) and scale[m].
// Returns -1, or the index of the first row holding a NaN or an infinity
// (q and scale are then partly written).
int64_t quantize_per_token(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, int64_t ldq, float* scale);

}  // namespace edgevla
