// Weight-only int4 GEMV / small-M GEMM on the packed W4_N16K8 buffer of the
// CPU kernels (packed_formats.h), read as is: codes uint32 [NB][KC][16] (one
// word = 8 k of one channel), scales float32 [NB][KG][16].
//
// A block of 8 warps owns one block of 16 channels and up to kRows rows of X;
// the warps split the block's cells of 8 k. A lane reads one 16-byte piece
// per step: 4 channels of one cell, so a warp streams 512 contiguous bytes
// (8 cells x 16 channels) per step. Codes become floats without int-to-float
// conversions: float16 pairs by cuda/w4_decode.cuh, widened to float32.
// Accumulation is in float32: per cell sum_i q_i x_i, then times
// the group's scale, then across cells, lanes (shuffles) and warps (shared
// memory), so results differ from the CPU kernels only by summation order.
#pragma once

#include "cuda/epilogue_cuda.cuh"
#include "cuda/ptx_mma.cuh"
#include "cuda/w4_decode.cuh"

#include <cuda_fp16.h>
#include <cstdint>

namespace edgevla::cuda {

constexpr int kW4Warps = 8;
constexpr int kW4Batch = 4;

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

// x[k0 .. k0 + 8) as floats, zero past K.
template <typename T>
__device__ __forceinline__ void load_x8(const T* __restrict__ row, int64_t k0, int64_t k, bool vector, float (&x)[8]) {
    if (vector && k0 + 8 <= k) {
        if constexpr (sizeof(T) == 4) {
            const float4 lo = __ldg(reinterpret_cast<const float4*>(row + k0));
            const float4 hi = __ldg(reinterpret_cast<const float4*>(row + k0 + 4));
            x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
        } else {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + k0));
            const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 f = __half22float2(h[i]);
                x[2 * i] = f.x, x[2 * i + 1] = f.y;
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = k0 + i < k ? to_f32(row[k0 + i]) : 0.0f;
}

// The 8 codes of one word as floats: q[j] = code j (bits 4 j .. 4 j + 3).
__device__ __forceinline__ void decode_w4x8(uint32_t word, float (&q)[8]) {
    uint32_t pairs[4];
    decode_w4_pairs(word, pairs);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(bits_half2(pairs[j]));
        q[j] = f.x;      // nibble j (low half)
        q[j + 4] = f.y;  // nibble j + 4 (high half)
    }
}

// The end of a block that owns 16 channels and kRows rows: lane l holds, in
// acc[r][c], a partial sum of channel 4 (l % 4) + c for row r; lanes with the
// same l % 4 are added by shuffles, the warps through shared memory, and the
// block writes its kRows x 16 outputs through the epilogue.
template <int kWarps, int kRows>
__device__ __forceinline__ void reduce_w4_block(float (&acc)[kRows][4], float (&partial)[kWarps][kRows][16],
                                                int64_t row0, int64_t col0, int64_t m, int64_t n,
                                                const EpilogueF32& epilogue, float* __restrict__ y, int64_t ldy) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, quad = lane % 4;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            float v = acc[r][c];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            if (lane < 4) partial[warp][r][4 * quad + c] = v;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kRows * 16; e += kWarps * 32) {
        const int r = e / 16, c = e % 16;
        const int64_t row = row0 + r, col = col0 + c;
        if (row >= m || col >= n) continue;
        float sum = 0.0f;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) sum += partial[v][r][c];
        y[row * ldy + col] = epilogue(col, sum);
    }
}

template <typename T, int kRows>
__global__ void __launch_bounds__(kW4Warps * 32)
    gemm_w4_kernel(int64_t m, int64_t n, int64_t k, int group_shift, const T* __restrict__ x, int64_t ldx, bool x_vector,
                   const uint32_t* __restrict__ codes, const float* __restrict__ scales, EpilogueF32 epilogue,
                   float* __restrict__ y, int64_t ldy) {
    __shared__ float partial[kW4Warps][kRows][16];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int quad = lane % 4;  // channels 4 quad .. 4 quad + 3 of the block
    const int64_t block = blockIdx.x;
    const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows;
    const int64_t k_cells = (k + 7) / 8, k_groups = ((k - 1) >> group_shift) + 1;
    const uint32_t* block_codes = codes + block * k_cells * 16;
    const float* block_scales = scales + block * k_groups * 16;

    float acc[kRows][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;

    // Software pipeline: the next batch of kW4Batch cells per lane is loaded
    // before the current one is decoded, so loads stay in flight during the
    // arithmetic (a warp keeps up to 2 kW4Batch x 512 bytes in the air).
    constexpr int kStride = kW4Warps * 8;
    const int64_t first = static_cast<int64_t>(warp) * 8 + lane / 4;
    uint4 words[kW4Batch], scale_bits[kW4Batch];
    auto load_batch = [&](int64_t base, uint4 (&w)[kW4Batch], uint4 (&sc)[kW4Batch]) {
#pragma unroll
        for (int u = 0; u < kW4Batch; ++u) {
            const int64_t cell = base + u * kStride;
            const bool in_k = cell < k_cells;  // past K: words and scale read as 0 (and so does x)
            w[u] = ptx::ldg_stream_v4(block_codes + cell * 16 + 4 * quad, in_k);
            sc[u] = ptx::ldg_v4(block_scales + ((cell * 8) >> group_shift) * 16 + 4 * quad, in_k);
        }
    };
    load_batch(first, words, scale_bits);
    for (int64_t base = first; base < k_cells; base += kW4Batch * kStride) {
        uint4 next_words[kW4Batch], next_scales[kW4Batch];
        load_batch(base + kW4Batch * kStride, next_words, next_scales);
#pragma unroll
        for (int u = 0; u < kW4Batch; ++u) {
            const int64_t cell = base + u * kStride;
            const float scale[4] = {__uint_as_float(scale_bits[u].x), __uint_as_float(scale_bits[u].y),
                                    __uint_as_float(scale_bits[u].z), __uint_as_float(scale_bits[u].w)};
            const uint32_t word[4] = {words[u].x, words[u].y, words[u].z, words[u].w};
            // Decode each channel's 8 codes once, then use them for every row.
            float q[4][8];
#pragma unroll
            for (int c = 0; c < 4; ++c) decode_w4x8(word[c], q[c]);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                if (row0 + r >= m) break;
                float xs[8];
                load_x8<T>(x + (row0 + r) * ldx, cell * 8, k, x_vector, xs);
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    float sum = 0.0f;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        sum = __fmaf_rn(q[c][j], xs[j], sum);
                        sum = __fmaf_rn(q[c][j + 4], xs[j + 4], sum);
                    }
                    acc[r][c] = __fmaf_rn(scale[c], sum, acc[r][c]);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kW4Batch; ++u) {
            words[u] = next_words[u];
            scale_bits[u] = next_scales[u];
        }
    }

    reduce_w4_block<kW4Warps, kRows>(acc, partial, row0, block * 16, m, n, epilogue, y, ldy);
}

}  // namespace edgevla::cuda
