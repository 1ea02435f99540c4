// Weight-only int4 GEMV / small-M GEMM on the float16 tensor cores
// (mma.sync m16n8k16, float32 accumulators), for float16 or float32 X, on the same
// packed W4_N16K8 buffer as gemm_w4_kernels.cuh: codes uint32 [NB][KC][16]
// (one word = 8 k of one channel, nibble j = k 8 c + j), scales float32
// [NB][KG][16].
//
// Why tensor cores for a memory-bound GEMV: the CUDA-core kernel spends ~8
// instructions per weight byte (decode to float, convert, FFMA) and sits near
// 1.5 TB/s on an H200, issue-bound before memory-bound. Here a weight is
// decoded to float16 and multiplied by the MMA: ~4.5 instructions per byte at
// M = 1, and M up to 8 costs the same MMAs (the batch rows are the MMA's 8
// columns), so small batches no longer multiply the arithmetic.
//
// Exactness: codes are integers in [-8, 7], exact in float16; X is float16;
// their products are exact in the float32 accumulators. float32 X is split
// (split_x_f32x8): per unit and batch row it is scaled by a power of two so
// that the largest |x| of the unit's 32 k lies in [1, 2), then written as
// hi + lo, two float16 values, which hold it to 2^-22 of that largest value
// (no float16 overflow or underflow whatever the magnitudes); each part gets
// its own MMAs (4 a unit, not 2) and the sum is scaled back exactly. Each unit of 32 k
// (one group of 32, or a quarter / eighth of a larger group) is summed by two
// MMAs and then scaled into the running float32 sum with one FFMA, so results
// differ from the CPU reference only by summation order (tensor-core
// accumulation included); the tests hold them to a relative error of 1e-5.
//
// The fragment mapping (lane = 4 g + t; ptx_mma.cuh has the m16n8k16 layout):
//   * A rows are channels: row g = channel 2 g, row g + 8 = channel 2 g + 1 of
//     the block, so a lane's two channels are adjacent words (one 8-byte load).
//   * A unit is 4 cells; lane t takes cell t. Its word w of 8 nibbles decodes
//     to four half2 pairs P_j = (q_j, q_{j+4}), j = 0..3. MMA step s (0, 1)
//     takes P_s as logical k (2t, 2t+1) and P_{s+2} as (2t+8, 2t+9). The dot
//     product does not care how k is ordered, so B takes X in the same order:
//     x[8 cell + s], x[8 cell + s + 4] and x[8 cell + s + 2], x[8 cell + s + 6]
//     (two byte permutes of a 16-byte load of the cell's 8 values).
//   * B columns are batch rows: column g = row 8 c + g of X in column tile c.
//
// Decoding: cuda/w4_decode.cuh.
#pragma once

#include "cuda/epilogue_cuda.cuh"
#include "cuda/gemm_w4_kernels.cuh"
#include "cuda/ptx_mma.cuh"
#include "cuda/w4_decode.cuh"

#include <cuda_fp16.h>
#include <cstdint>

namespace edgevla::cuda {

constexpr int kW4MmaBatch = 4;  // units of 32 k per warp with loads in flight together

// Resident warps an SM should hold (the registers __launch_bounds__ allows),
// and the shared memory of the block's partial sums, by column tiles.
constexpr int w4_mma_warps_per_sm(int col_tiles) { return col_tiles <= 2 ? 32 : 16; }
constexpr int w4_mma_min_blocks(int col_tiles, int warps) {
    return w4_mma_warps_per_sm(col_tiles) / warps > 0 ? w4_mma_warps_per_sm(col_tiles) / warps : 1;
}

// x[k0 .. k0 + 8) of one float16 row as 16 bytes, zero past K or for a missing row.
__device__ __forceinline__ uint4 load_x_f16x8(const __half* __restrict__ row, int64_t k0, int64_t k, bool vector,
                                              bool row_ok) {
    if (!row_ok || k0 >= k) return make_uint4(0, 0, 0, 0);
    if (vector && k0 + 8 <= k) return __ldg(reinterpret_cast<const uint4*>(row + k0));
    uint16_t h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = k0 + i < k ? __half_as_ushort(row[k0 + i]) : 0;
    return make_uint4(h[0] | (uint32_t{h[1]} << 16), h[2] | (uint32_t{h[3]} << 16), h[4] | (uint32_t{h[5]} << 16),
                      h[6] | (uint32_t{h[7]} << 16));
}

// A lane's 8 float32 x of one batch row (the 4 lanes of a row hold the unit's
// 32 k) as float16 parts: x 2^(127 - e) = hi + lo, e the exponent of the
// unit's largest |x| in this row (clamped to [1, 253]: subnormal rows scale up
// by 2^126, rows past 2^127 land below 4), `inverse` = 2^(e - 127). hi is x
// rounded to float16; lo the rest (exact in float32), rounded to float16.
struct SplitX {
    uint4 hi, lo;  // halves in the order of load_x_f16x8's 16 bytes
    float inverse;
};

__device__ __forceinline__ SplitX split_x_f32x8(const float (&v)[8]) {
    float largest = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) largest = fmaxf(largest, fabsf(v[i]));
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, 1));
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, 2));
    const int e = min(max(static_cast<int>(__float_as_uint(largest) >> 23), 1), 253);
    const float scale = __uint_as_float(static_cast<uint32_t>(254 - e) << 23);
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float a = v[2 * i] * scale, b = v[2 * i + 1] * scale;
        const __half2 h = __floats2half2_rn(a, b);
        const float2 back = __half22float2(h);
        hi[i] = half2_bits(h);
        lo[i] = half2_bits(__floats2half2_rn(a - back.x, b - back.y));
    }
    return {make_uint4(hi[0], hi[1], hi[2], hi[3]), make_uint4(lo[0], lo[1], lo[2], lo[3]),
            __uint_as_float(static_cast<uint32_t>(e) << 23)};
}

// The unit's two MMAs on one cell's 8 float16 x (16 bytes, halves h0..h7 in
// xv.x = (h0, h1), xv.y = (h2, h3), xv.z = (h4, h5), xv.w = (h6, h7)). Step
// s takes (x_s, x_{s+4}) and (x_{s+2}, x_{s+6}), the order of the codes' pairs.
__device__ __forceinline__ void w4_unit_mma(float (&d)[4], const uint32_t (&row0)[4], const uint32_t (&row1)[4],
                                            const uint4& xv) {
    ptx::mma_f16_m16n8k16(d, row0[0], row1[0], row0[2], row1[2], __byte_perm(xv.x, xv.z, 0x5410),
                          __byte_perm(xv.y, xv.w, 0x5410));
    ptx::mma_f16_m16n8k16(d, row0[1], row1[1], row0[3], row1[3], __byte_perm(xv.x, xv.z, 0x7632),
                          __byte_perm(xv.y, xv.w, 0x7632));
}

// The x operand of one unit (32 k) for one column tile of 8 batch rows: a
// lane's 8 float16 x (float16 x), or their hi and lo float16 parts and the
// inverse scale of its batch row (float32 x). The accumulators need the
// inverses of the two batch rows they hold (lanes 8 t, 8 t + 4 have them):
// kShared, when the x serves several channel tiles, fetches them once at
// load; otherwise dot() fetches them after its MMAs, so that fewer registers
// are live across them (this kept M <= 16 at 28 bytes of spill, not 68).
// Every lane of the warp calls load() and dot() (float32 x: shuffles).
template <typename T, bool kShared>
struct UnitX {
    uint4 hi, lo;
    float inverse, inverse0, inverse1;

    __device__ __forceinline__ void load(const T* __restrict__ row, int64_t k0, int64_t k, bool x_vector, bool row_ok,
                                         int t) {
        if constexpr (sizeof(T) == 2) {
            hi = load_x_f16x8(row, k0, k, x_vector, row_ok);
        } else {
            float xs[8];
            load_x8<float>(row, k0, k, x_vector, xs);
#pragma unroll
            for (int i = 0; i < 8; ++i) xs[i] = row_ok ? xs[i] : 0.0f;
            const SplitX split = split_x_f32x8(xs);
            hi = split.hi, lo = split.lo, inverse = split.inverse;
            if constexpr (kShared) fetch_inverses(t);
        }
    }

    // d = the unit's dot products of one channel tile's decoded codes with this x.
    __device__ __forceinline__ void dot(float (&d)[4], const uint32_t (&row0)[4], const uint32_t (&row1)[4], int t) {
        d[0] = d[1] = d[2] = d[3] = 0.0f;
        w4_unit_mma(d, row0, row1, hi);
        if constexpr (sizeof(T) == 4) {
            w4_unit_mma(d, row0, row1, lo);
            if constexpr (!kShared) fetch_inverses(t);
            // Multiplying by a power of two is exact.
            d[0] *= inverse0, d[1] *= inverse1, d[2] *= inverse0, d[3] *= inverse1;
        }
    }

    // d[0], d[2] are batch row 2 t of the tile, d[1], d[3] row 2 t + 1.
    __device__ __forceinline__ void fetch_inverses(int t) {
        inverse0 = __shfl_sync(0xffffffffu, inverse, 8 * t);
        inverse1 = __shfl_sync(0xffffffffu, inverse, 8 * t + 4);
    }
};

// kColTiles column tiles of 8 batch rows each: M <= 8 kColTiles. A block owns
// kChanTiles channel tiles of 16 (blocks 16 kChanTiles channels wide), and its
// kWarps warps split the units (one_wave.cuh picks the warps so that the grid
// is resident in one wave, as for gemm_w4_stream_kernels.cuh). A warp loads
// and (float32 x) splits a unit's x once for all kChanTiles channel tiles:
// that work, ~45 instructions a unit and column tile, is what limits a batch-1
// GEMV on float32 x, not the weight stream. kW4MmaBatch / kChanTiles units
// are in flight a warp, so the registers for loads stay the same. T: __half or
// float.
template <typename T, int kColTiles, int kWarps, int kChanTiles = 1>
__global__ void __launch_bounds__(kWarps * 32, w4_mma_min_blocks(kColTiles * kChanTiles, kWarps))
    gemm_w4_mma_kernel(int64_t m, int64_t n, int64_t k, int group_shift, const T* __restrict__ x, int64_t ldx,
                       bool x_vector, const uint32_t* __restrict__ codes, const float* __restrict__ scales,
                       EpilogueF32 epilogue, float* __restrict__ y, int64_t ldy) {
    static_assert(kW4MmaBatch % kChanTiles == 0, "whole units in flight");
    constexpr int kBatch = kW4MmaBatch / kChanTiles;
    __shared__ float partial[kWarps][kChanTiles][kColTiles][4][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int64_t first_tile = static_cast<int64_t>(blockIdx.x) * kChanTiles;  // of 16 channels
    const int64_t n_tiles = (n + 15) / 16;
    const int64_t k_cells = (k + 7) / 8, k_groups = ((k - 1) >> group_shift) + 1;
    const int64_t units = (k_cells + 3) / 4;

    float total[kChanTiles][kColTiles][4];
#pragma unroll
    for (int j = 0; j < kChanTiles; ++j)
#pragma unroll
        for (int c = 0; c < kColTiles; ++c) total[j][c][0] = total[j][c][1] = total[j][c][2] = total[j][c][3] = 0.0f;

    // The unit loop: warp w takes units w, w + kWarps, ...; each batch issues its
    // weight and scale loads (kBatch units x kChanTiles tiles) before the first MMA.
    for (int64_t first = warp; first < units; first += kWarps * kBatch) {
        uint2 words[kBatch][kChanTiles], scale_bits[kBatch][kChanTiles];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int64_t unit = first + b * kWarps, cell = unit * 4 + t;
#pragma unroll
            for (int j = 0; j < kChanTiles; ++j) {
                // Codes past K (or past the last unit, or of a tile past N) read as 0. The scales are
                // those of the lane's two channels in the unit's group (a unit of 32 k lies in one group).
                const int64_t tile = first_tile + j;
                const bool tile_ok = tile < n_tiles;
                words[b][j] =
                    ptx::ldg_stream_v2(codes + (tile * k_cells + cell) * 16 + 2 * g, tile_ok && cell < k_cells);
                scale_bits[b][j] = ptx::ldg_stream_v2(
                    scales + (tile * k_groups + ((unit * 32) >> group_shift)) * 16 + 2 * g, tile_ok && unit < units);
            }
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int64_t unit = first + b * kWarps;
            if (unit >= units) break;
            const int64_t cell = unit * 4 + t;
            using X = UnitX<T, (kChanTiles > 1)>;
            auto load_x = [&](X& xc, int c) {
                const int64_t batch_row = 8 * c + g;
                const bool row_ok = batch_row < m;
                xc.load(x + (row_ok ? batch_row : 0) * ldx, cell * 8, k, x_vector, row_ok, t);
            };
            auto accumulate = [&](int j, int c, X& xc, const uint32_t (&row0)[4], const uint32_t (&row1)[4]) {
                float d[4];
                xc.dot(d, row0, row1, t);
                const float scale0 = __uint_as_float(scale_bits[b][j].x), scale1 = __uint_as_float(scale_bits[b][j].y);
                total[j][c][0] = __fmaf_rn(scale0, d[0], total[j][c][0]);
                total[j][c][1] = __fmaf_rn(scale0, d[1], total[j][c][1]);
                total[j][c][2] = __fmaf_rn(scale1, d[2], total[j][c][2]);
                total[j][c][3] = __fmaf_rn(scale1, d[3], total[j][c][3]);
            };
            uint32_t row0[4], row1[4];  // channel 2 g, channel 2 g + 1 of a channel tile
            if constexpr (kChanTiles == 1) {
                // One channel tile: decode once, then each column tile's x in turn (no x kept).
                decode_w4_pairs(words[b][0].x, row0);
                decode_w4_pairs(words[b][0].y, row1);
#pragma unroll
                for (int c = 0; c < kColTiles; ++c) {
                    X xc;
                    load_x(xc, c);
                    accumulate(0, c, xc, row0, row1);
                }
            } else {
                // The column tiles' x once, for every channel tile.
                X xs[kColTiles];
#pragma unroll
                for (int c = 0; c < kColTiles; ++c) load_x(xs[c], c);
#pragma unroll
                for (int j = 0; j < kChanTiles; ++j) {
                    decode_w4_pairs(words[b][j].x, row0);
                    decode_w4_pairs(words[b][j].y, row1);
#pragma unroll
                    for (int c = 0; c < kColTiles; ++c) accumulate(j, c, xs[c], row0, row1);
                }
            }
        }
    }

#pragma unroll
    for (int j = 0; j < kChanTiles; ++j)
#pragma unroll
        for (int c = 0; c < kColTiles; ++c)
#pragma unroll
            for (int r = 0; r < 4; ++r) partial[warp][j][c][r][lane] = total[j][c][r];
    __syncthreads();
    // Output (channel, batch row) of accumulator r of lane l in channel tile j, column tile c:
    // channel 16 (first_tile + j) + 2 (l / 4) + r / 2, batch row 8 c + 2 (l % 4) + r % 2.
    for (int e = threadIdx.x; e < kChanTiles * kColTiles * 128; e += kWarps * 32) {
        const int j = e / (kColTiles * 128), c = (e / 128) % kColTiles, r = (e / 32) % 4, l = e % 32;
        const int64_t col = (first_tile + j) * 16 + 2 * (l / 4) + r / 2;
        const int64_t row = 8 * c + 2 * (l % 4) + r % 2;
        if (row >= m || col >= n) continue;
        float sum = 0.0f;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) sum += partial[v][j][c][r][l];
        y[row * ldy + col] = epilogue(col, sum);
    }
}

}  // namespace edgevla::cuda
