// Weight-only int4 GEMV / small-M GEMM for memory-bound batch-1 layers: the
// CUDA-core arithmetic of gemm_w4_kernels.cuh, with the work laid out so that
// the whole grid is resident at once and every warp keeps 2.5 KB of weights in
// flight.
//
// Why another layout: gemm_w4_kernel (8 warps, 126-168 registers a thread)
// fits 2 blocks on an SM, so a 4096 x 14336 layer's 896 blocks run in 3.4
// waves, and each block issues only two batches of loads per warp before its
// reduction: an H200 measured 1.5 TB/s, a third of its copy bandwidth. Here:
//   * the block's warp count (kWarps: 4, 8 or 16) is chosen at launch so the
//     whole grid fits the GPU in one wave (cuda/one_wave.cuh asks the CUDA
//     occupancy calculator), and __launch_bounds__ caps the registers so that
//     an SM holds 32 warps at M = 1 (the latency-hiding depth: 32 warps x
//     2.5 KB = 80 KB in flight per SM, twice what Little's law asks of
//     4.8 TB/s at ~1 us across 132 SMs);
//   * a unit is 4 cells = 32 k of the block's 16 channels: 256 bytes of codes,
//     one group's scales (every group size is a multiple of 32). Lane
//     (slot = l / 4, quad = l % 4) takes unit 8 (step kWarps + warp) + slot and
//     channels 4 quad .. 4 quad + 3: four 16-byte code loads (one per cell)
//     and one 16-byte scale load, issued together before any arithmetic;
//   * the scale multiplies once per unit (the sum of its 32 products), not
//     once per cell.
// Decoding (cuda/w4_decode.cuh), float32 FFMAs and the block reduction are
// those of gemm_w4_kernels.cuh, so results differ from the CPU reference only
// by summation order.
#pragma once

#include "cuda/gemm_w4_kernels.cuh"

#include <cuda_fp16.h>
#include <cstdint>

namespace edgevla::cuda {

constexpr int kW4StreamUnitCells = 4;   // 32 k: one group, or a part of one
constexpr int kW4StreamUnitsPerWarp = 8;  // units per warp step (lanes / 4 quads)

// Resident warps an SM should hold, by rows per block: 32 at M = 1 (64
// registers a thread); more rows need more accumulators and x registers.
constexpr int w4_stream_warps_per_sm(int rows) { return rows == 1 ? 32 : rows == 2 ? 24 : 16; }
constexpr int w4_stream_min_blocks(int rows, int warps) {
    return w4_stream_warps_per_sm(rows) / warps > 0 ? w4_stream_warps_per_sm(rows) / warps : 1;
}

template <typename T, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, w4_stream_min_blocks(kRows, kWarps))
    gemm_w4_stream_kernel(int64_t m, int64_t n, int64_t k, int group_shift, const T* __restrict__ x, int64_t ldx,
                          bool x_vector, const uint32_t* __restrict__ codes, const float* __restrict__ scales,
                          EpilogueF32 epilogue, float* __restrict__ y, int64_t ldy) {
    __shared__ float partial[kWarps][kRows][16];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int quad = lane % 4, slot = lane / 4;
    const int64_t block = blockIdx.x;
    const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows;
    const int64_t k_cells = (k + 7) / 8, k_groups = ((k - 1) >> group_shift) + 1;
    const int64_t units = (k_cells + kW4StreamUnitCells - 1) / kW4StreamUnitCells;
    const uint32_t* block_codes = codes + block * k_cells * 16 + 4 * quad;
    const float* block_scales = scales + block * k_groups * 16 + 4 * quad;

    float acc[kRows][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;

    constexpr int64_t kStep = static_cast<int64_t>(kWarps) * kW4StreamUnitsPerWarp;
    for (int64_t unit = static_cast<int64_t>(warp) * kW4StreamUnitsPerWarp + slot; unit < units; unit += kStep) {
        const int64_t cell0 = unit * kW4StreamUnitCells;
        // All five loads before any use. Cells past K read as 0 (and so does x);
        // the unit's first cell is inside K, so its group index is too.
        uint4 words[kW4StreamUnitCells];
#pragma unroll
        for (int u = 0; u < kW4StreamUnitCells; ++u) {
            words[u] = ptx::ldg_stream_v4(block_codes + (cell0 + u) * 16, cell0 + u < k_cells);
        }
        const uint4 scale_bits = ptx::ldg_v4(block_scales + ((unit * 32) >> group_shift) * 16, true);

        float dot[kRows][4];
#pragma unroll
        for (int r = 0; r < kRows; ++r) dot[r][0] = dot[r][1] = dot[r][2] = dot[r][3] = 0.0f;
#pragma unroll
        for (int u = 0; u < kW4StreamUnitCells; ++u) {
            const uint32_t word[4] = {words[u].x, words[u].y, words[u].z, words[u].w};
            float xs[kRows][8];
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                // A row past M reads the block's first row again: its sums are never written.
                const int64_t row = row0 + r < m ? row0 + r : row0;
                load_x8<T>(x + row * ldx, (cell0 + u) * 8, k, x_vector, xs[r]);
            }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float q[8];
                decode_w4x8(word[c], q);
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) dot[r][c] = __fmaf_rn(q[j], xs[r][j], dot[r][c]);
                }
            }
        }
        const float scale[4] = {__uint_as_float(scale_bits.x), __uint_as_float(scale_bits.y),
                                __uint_as_float(scale_bits.z), __uint_as_float(scale_bits.w)};
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[r][c] = __fmaf_rn(scale[c], dot[r][c], acc[r][c]);
        }
    }

    reduce_w4_block<kWarps, kRows>(acc, partial, row0, block * 16, m, n, epilogue, y, ldy);
}

}  // namespace edgevla::cuda
