// The 256-bit int4 x int8 (W4A8) GEMM over the W4_N16K8 layout
// (packed_formats.h), the arithmetic of edgevla_gemm_w4a8_f32_ref, for the
// AVX2 table (gemm_w4a8_avx2.cpp) and the AVX-VNNI one (gemm_avx_vnni.cpp),
// which differ only in how a cell's products reach the int32 sums: the `Dot`
// policy, dot = Dot::add(dot, even, x_even, odd, x_odd), unsigned codes times
// signed activations, 8 products per channel.
//
// A cell's words (8 channels per register) hold the codes of the even k in
// their low nibbles and of the odd k in their high nibbles, and the quantized
// activations come as one 4-byte word per half cell (QuantizedW4A8Rows).
// Flipping bit 3 of every nibble turns a code c in -8..7 into c + 8 in
// 0..15; masking gives the even and odd codes as unsigned bytes. Per group
// the excess 8 * sum(q) is subtracted and the exact dot products are scaled
// and added in float32, op by op as the reference. The kernel prefetches the
// weight stream ahead of itself (kernel_common.h): 2-3x its M = 1 speed with
// the weights outside the caches, measured on an AVX-512 machine forced to
// the AVX2 path.
//
// Anonymous namespace, like simd_avx2.h: include only from files compiled
// with -mavx2 (and -mavxvnni for a Dot that uses it).
#pragma once

#include "arch/x86_64/simd_avx2.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

#include <cstring>

namespace edgevla {
namespace {

// Four activation codes, repeated in every 32-bit lane.
inline __m256i broadcast_w4a8_word(const int8_t* q) {
    int32_t word;
    std::memcpy(&word, q, 4);
    return _mm256_set1_epi32(word);
}

// Rows [row, row + MR) x one block of 16 channels (two halves of 8).
template <typename Dot, int MR>
void w4a8_tile(const GemmW4A8Args& args, int64_t row, int64_t block) {
    const PackedW4View& w = args.w;
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F), bit3 = _mm256_set1_epi8(static_cast<char>(0x88));
    const int64_t cells_per_group = w.group / EDGEVLA_PACKED_W4_CELL_K;
    const uint32_t* codes = w.codes + block * w.k_cells * EDGEVLA_PACKED_W4_BLOCK_N;
    const float* scales = w.scales + block * w.k_groups * EDGEVLA_PACKED_W4_BLOCK_N;
    const int8_t* q[MR];
    for (int r = 0; r < MR; ++r) q[r] = args.a.q + (row + r) * args.a.ldq;

    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t group = 0; group < w.k_groups; ++group) {
        __m256i dot[MR][2];
        for (int r = 0; r < MR; ++r) dot[r][0] = dot[r][1] = _mm256_setzero_si256();
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        for (int64_t cell = cell_begin; cell < cell_end; ++cell) {
            const uint32_t* words_at = codes + cell * EDGEVLA_PACKED_W4_BLOCK_N;
            prefetch_w4a8_cell(words_at);
            __m256i x_even[MR], x_odd[MR];
            for (int r = 0; r < MR; ++r) {
                x_even[r] = broadcast_w4a8_word(q[r] + cell * EDGEVLA_PACKED_W4_CELL_K);
                x_odd[r] = broadcast_w4a8_word(q[r] + cell * EDGEVLA_PACKED_W4_CELL_K + 4);
            }
            for (int half = 0; half < 2; ++half) {
                const __m256i words = _mm256_xor_si256(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words_at + 8 * half)), bit3);
                const __m256i even = _mm256_and_si256(words, low_nibbles);
                const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(words, 4), low_nibbles);
                for (int r = 0; r < MR; ++r) dot[r][half] = Dot::add(dot[r][half], even, x_even[r], odd, x_odd[r]);
            }
        }
        prefetch_w4a8_scales(scales + group * EDGEVLA_PACKED_W4_BLOCK_N);
        for (int r = 0; r < MR; ++r) {
            const int64_t g = (row + r) * args.a.ldg + group;
            const __m256i excess = _mm256_set1_epi32(8 * args.a.sum[g]);  // the codes' + 8
            const __m256 x_scale = _mm256_set1_ps(args.a.scale[g]);
            for (int half = 0; half < 2; ++half) {
                const __m256 scale =
                    _mm256_mul_ps(x_scale, _mm256_loadu_ps(scales + group * EDGEVLA_PACKED_W4_BLOCK_N + 8 * half));
                const __m256 value = _mm256_cvtepi32_ps(_mm256_sub_epi32(dot[r][half], excess));
                acc[r][half] = _mm256_add_ps(acc[r][half], _mm256_mul_ps(value, scale));
            }
        }
    }
    const int64_t col0 = block * EDGEVLA_PACKED_W4_BLOCK_N, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_f32_epilogue(args.epilogue, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

// Rows [row_begin, row_end) x blocks [block_begin, block_end): two rows share
// each block's unpacked codes; chunks of rows stay in L2 over the blocks.
template <typename Dot>
void w4a8_rows(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
               int64_t block_end) {
    for_row_chunks(row_begin, row_end, args.w.k, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t block = block_begin; block < block_end; ++block) {
            int64_t row = chunk_begin;
            for (; row + 2 <= chunk_end; row += 2) w4a8_tile<Dot, 2>(args, row, block);
            if (row < chunk_end) w4a8_tile<Dot, 1>(args, row, block);
        }
    });
}

}  // namespace
}  // namespace edgevla
