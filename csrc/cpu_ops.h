// The packed GEMMs and per-token quantization as callers use them: the
// active ISA's kernel (dispatch.h), split over the global thread pool
// (thread_pool.h). Arguments are trusted (the bindings validate them).
#pragma once

#include "cpu_kernels.h"
#include "windows.h"

#include <cstdint>

namespace edgevla {

// Each thread of a GEMM gets at least this many multiply-adds (2^17, about
// 0.6 us on one AVX-512 VNNI core), so a GEMM smaller than twice this runs on
// the calling thread. With the pool's polling hand-off (thread_pool.h, ~1 us)
// a split over 2 threads measured 1.2-1.4x at 262K-1.2M multiply-adds
// ((8, 384, 384), (1, 384, 1024), (2, 256, 512)), 1.6-2.0x from 4M, and
// 0.94-1.04x at 33K-131K (2-vCPU Zen 4 build machine, int8, 2026-12-05).
// Settable (>= 1): tests set 1 to split the smallest shapes.
constexpr int64_t kDefaultMinMacsPerThread = int64_t{1} << 17;
void set_min_macs_per_thread(int64_t macs);
int64_t min_macs_per_thread();

// How many threads a GEMM of `macs` multiply-adds over `units` tiles gets
// from a pool of `threads`: at most one per tile and per thread, each with at
// least min_macs_per_thread() of the work (1 at least).
int gemm_part_count(int64_t macs, int64_t units, int threads);

// What the threading layer does to the float output of an int8 GEMM after
// the kernel's epilogue, tile by tile while the tile is still in cache: the
// graph's ops that follow the layer, with no pass of their own over memory.
//   C[m][n]     = max(C[m][n], 0)                  when relu (edgevla_relu_f32:
//                                                  a ReLU after the residual,
//                                                  a ResNet block's end)
//   codes[m][n] = clamp(round_half_even(C[m][n] / scale), -128, 127)
//                                                  when codes (quantize_s8 on
//                                                  the final C: a following
//                                                  static QuantizeLinear)
// Bit-identical to running those two afterwards on the whole output. codes is
// (M, N) at row stride ldq and overlaps nothing else; scale > 0.
struct GemmOutputStage {
    bool relu = false;
    int8_t* codes = nullptr;
    int64_t ldq = 0;
    float scale = 1.0f;

    bool active() const { return relu || codes != nullptr; }
};

// The left operand of an int8 GEMM as a convolution's input windows
// (windows.h): row r of A is window r of the int8 channels-last x. Each
// thread gathers the rows it multiplies, kStageRows at a time, into a buffer
// of its own just before its kernel reads them, so the im2col matrix is never
// written whole, the gather runs on every thread, and no thread reads rows
// another one wrote. args.a and args.lda are then ignored. The same results
// as gather_windows into rows, then the GEMM on them.
struct WindowSource {
    WindowGeometry geometry;  // channels = K / prod(kernel); batch x prod(out) = M
    const int8_t* x = nullptr;
};

// C = epilogue(A * W^T) for a validated packed W (then `stage`, for the int8
// GEMMs; A from `windows` where given).
void gemm_packed_s8_f32(const GemmPackedArgs& args, const GemmOutputStage& stage = {},
                        const WindowSource* windows = nullptr);
void gemm_sparse_f32(const GemmSparseF32Args& args);
void gemm_sparse_s8(const GemmSparseS8Args& args, const GemmOutputStage& stage = {},
                    const WindowSource* windows = nullptr);
void gemm_2to4_f32(const Gemm2to4F32Args& args);
void gemm_2to4_s8(const Gemm2to4S8Args& args, const GemmOutputStage& stage = {},
                  const WindowSource* windows = nullptr);
void gemm_w4_f32(const GemmW4F32Args& args);

// The same product with the activations quantized to int8 per weight group
// (W4A8, bit-identical to edgevla_gemm_w4a8_f32_ref): the active ISA's
// quantize_w4a8 quantizes rows of x into a buffer of the calling thread
// (grown once, then reused: no allocation per call after the first; at most
// about 1 MiB of codes at a time), then its W4A8 kernel runs on them, split
// over the threads like gemm_w4_f32.
void gemm_w4a8_f32(const GemmW4F32Args& args);

// Quantizes every row of x float32 (m, k) into q int8 (m, k) and scale[m].
// Returns -1, or the index of the first row holding a NaN or an infinity
// (q and scale are then partly written).
int64_t quantize_per_token(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, int64_t ldq, float* scale);

}  // namespace edgevla
