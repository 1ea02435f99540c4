// The codes of one W4_N16K8 word (8 two's-complement nibbles, nibble j =
// k 8 c + j) as float16 pairs, shared by both int4 kernels.
//
// One word in 9 instructions for 8 codes, no shifts per code: lop3
// computes b ? (a ^ c) : c bitwise (truth table 0x6A) on a = word (or word >>
// 8), b = the nibble mask, c = the float16 exponent of 1024 plus the nibbles'
// sign bit. That places (nibble ^ 8) = q + 8 in the mantissa of 1024 (for
// mask 0x000F000F: value 1024 + q + 8, less 1032 gives q) or 16 times it
// (mask 0x00F000F0: value 1024 + 16 (q + 8), times 1/16 less 72 gives q), all
// exact in float16.
#pragma once

#include "cuda/ptx_mma.cuh"

#include <cuda_fp16.h>
#include <cstdint>

namespace edgevla::cuda {

constexpr int kW4DecodeLut = 0x6A;                  // b ? (a ^ c) : c
constexpr uint32_t kW4MaskLow = 0x000F000Fu;        // nibbles j, j + 4 at bits 0..3, 16..19
constexpr uint32_t kW4MaskHigh = 0x00F000F0u;       // ... at bits 4..7, 20..23
constexpr uint32_t kW4MagicLow = 0x64086408u;       // 1024 in float16, | the nibbles' bit 3 (flipped)
constexpr uint32_t kW4MagicHigh = 0x64806480u;      // 1024 in float16, | the nibbles' bit 3 (flipped)
constexpr float kW4BiasLow = 1032.0f;               // 1024 + 8
constexpr float kW4ScaleHigh = 0.0625f;             // 1 / 16
constexpr float kW4BiasHigh = -72.0f;               // -(1024 / 16 + 8)

__device__ __forceinline__ uint32_t half2_bits(__half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_half2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }

// The word's codes as four half2 pairs: p[j] = (q_j, q_{j+4}).
__device__ __forceinline__ void decode_w4_pairs(uint32_t word, uint32_t (&p)[4]) {
    const __half2 bias_low = __float2half2_rn(kW4BiasLow);
    const __half2 scale_high = __float2half2_rn(kW4ScaleHigh), bias_high = __float2half2_rn(kW4BiasHigh);
    const uint32_t shifted = word >> 8;
    p[0] = half2_bits(__hsub2(bits_half2(ptx::lop3<kW4DecodeLut>(word, kW4MaskLow, kW4MagicLow)), bias_low));
    p[1] = half2_bits(__hfma2(bits_half2(ptx::lop3<kW4DecodeLut>(word, kW4MaskHigh, kW4MagicHigh)), scale_high,
                              bias_high));
    p[2] = half2_bits(__hsub2(bits_half2(ptx::lop3<kW4DecodeLut>(shifted, kW4MaskLow, kW4MagicLow)), bias_low));
    p[3] = half2_bits(__hfma2(bits_half2(ptx::lop3<kW4DecodeLut>(shifted, kW4MaskHigh, kW4MagicHigh)), scale_high,
                              bias_high));
}

}  // namespace edgevla::cuda
