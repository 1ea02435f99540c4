// AVX2 2:4 sparse GEMMs over the 2TO4_*_N16K16 layout (packed_formats.h), for
// x86-64 CPUs without AVX-512.
//
// int8: the vpshufb indices come from the metadata exactly as in the AVX-512
// kernel (t = meta | meta << 14, see packed_formats.h), 8 channels per
// register, each 32-bit lane one channel's four picked activations. Rows
// without a -128 activation multiply them as the dense AVX2 kernel does
// (gemm_avx2.cpp): |value| by the activation given the value's sign,
// vpmaddubsw then vpmaddwd by ones, exact (a pair is at most 2 * 128 * 127)
// and one channel's sum a lane. A pair of rows holding a -128 widens the
// picked activations and the values to int16 and multiplies them by
// vpmaddwd, which cannot saturate, giving two partial sums per channel that
// are added once at the end: half the products an instruction.
//
// float32: value j of 8 channels meets its activation through a gather from
// the k-block's 16 activations (positions are 2-bit fields plus a group
// offset: always inside the 16).
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry points has
// internal linkage.
#include "arch/x86_64/simd_avx2.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;
constexpr uint64_t kCellBytesS8 = 8 * kBlockN + 2 * kBlockN;
constexpr uint64_t kCellBytesF32 = 8 * kBlockN * 4 + 2 * kBlockN;

// The metadata of channels 8 h .. 8 h + 7, one per 32-bit lane.
inline __m256i metadata(const uint8_t* meta, int half) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + 16 * half)));
}

// acc_low (channels 0-3) and acc_high (4-7) += the int16 products of the
// picked activations and the values of 8 channels, in pairs.
inline void multiply_add(__m256i picked, __m256i values, __m256i& acc_low, __m256i& acc_high) {
    const __m256i p_low = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(picked));
    const __m256i p_high = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(picked, 1));
    const __m256i v_low = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(values));
    const __m256i v_high = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(values, 1));
    acc_low = _mm256_add_epi32(acc_low, _mm256_madd_epi16(p_low, v_low));
    acc_high = _mm256_add_epi32(acc_high, _mm256_madd_epi16(p_high, v_high));
}

// Walks rows [row, row + MR) x one block: for every k-block, each half of the
// block (8 channels) and each row, add(r, half, picked_a, values_a, picked_b,
// values_b) with the row's picked activations lined up with the values, four
// a 32-bit lane (one channel's).
template <int MR, typename Add>
void for_picked_s8(const Gemm2to4S8Args& args, int64_t row, int64_t block, Add add) {
    const Packed2to4View& w = args.w;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytesS8;
    const __m256i two_bits = _mm256_set1_epi32(0x03030303);
    const __m256i offsets_a = _mm256_set1_epi32(0x08000800);
    const __m256i offsets_b = _mm256_set1_epi32(0x0C040C04);
    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += kCellBytesS8) {
        __m256i x[MR];
        for (int r = 0; r < MR; ++r) {
            int8_t window[kBlockK];
            copy_window(args.a + (row + r) * args.lda, w.k, kb * kBlockK, kBlockK, window);
            x[r] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(window)));
        }
        for (int half = 0; half < 2; ++half) {
            const __m256i meta = metadata(cell + 8 * kBlockN, half);
            const __m256i t = _mm256_or_si256(meta, _mm256_slli_epi32(meta, 14));
            const __m256i index_a = _mm256_or_si256(_mm256_and_si256(t, two_bits), offsets_a);
            const __m256i index_b = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(t, 4), two_bits), offsets_b);
            const __m256i values_a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 32 * half));
            const __m256i values_b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 64 + 32 * half));
            for (int r = 0; r < MR; ++r) {
                add(r, half, _mm256_shuffle_epi8(x[r], index_a), values_a, _mm256_shuffle_epi8(x[r], index_b),
                    values_b);
            }
        }
    }
}

// Rows [row, row + MR) x one block, no activation of these rows -128.
template <int MR>
void signed_tile_s8(const Gemm2to4S8Args& args, int64_t row, int64_t block) {
    __m256i acc[MR][2];  // [row][half of the block]: one channel's sum a lane
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for_picked_s8<MR>(args, row, block, [&](int r, int half, __m256i picked_a, __m256i values_a, __m256i picked_b,
                                            __m256i values_b) {
        const __m256i sum = add_signed_dot4(acc[r][half], _mm256_abs_epi8(values_a), values_a, picked_a);
        acc[r][half] = add_signed_dot4(sum, _mm256_abs_epi8(values_b), values_b, picked_b);
    });
    const int64_t col0 = block * kBlockN, cols = block_columns(args.w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

// Rows [row, row + MR) x one block by widening: any activation, -128 too.
template <int MR>
void widening_tile_s8(const Gemm2to4S8Args& args, int64_t row, int64_t block) {
    __m256i acc[MR][2][2];  // [row][half of the block][channels 0-3 / 4-7 of the half], pair sums
    for (int r = 0; r < MR; ++r)
        for (int h = 0; h < 2; ++h) acc[r][h][0] = acc[r][h][1] = _mm256_setzero_si256();
    for_picked_s8<MR>(args, row, block, [&](int r, int half, __m256i picked_a, __m256i values_a, __m256i picked_b,
                                            __m256i values_b) {
        multiply_add(picked_a, values_a, acc[r][half][0], acc[r][half][1]);
        multiply_add(picked_b, values_b, acc[r][half][0], acc[r][half][1]);
    });
    const int64_t col0 = block * kBlockN, cols = block_columns(args.w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, finish_pairs(acc[r][0][0], acc[r][0][1]),
                            finish_pairs(acc[r][1][0], acc[r][1][1]), args.c + (row + r) * args.ldc);
    }
}

template <int MR>
void tile_f32(const Gemm2to4F32Args& args, int64_t row, int64_t block) {
    const Packed2to4View& w = args.w;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytesF32;
    const __m256i two_bits = _mm256_set1_epi32(3);
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    float tail[MR][kBlockK];

    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += kCellBytesF32) {
        const int64_t k0 = kb * kBlockK;
        const float* base[MR];
        for (int r = 0; r < MR; ++r) {
            const float* x = args.x + (row + r) * args.ldx;
            if (k0 + kBlockK <= w.k) {
                base[r] = x + k0;
            } else {
                copy_window(x, w.k, k0, kBlockK, tail[r]);
                base[r] = tail[r];
            }
        }
        const float* values = reinterpret_cast<const float*>(cell);
        for (int half = 0; half < 2; ++half) {
            const __m256i meta = metadata(cell + 8 * kBlockN * 4, half);
            for (int v = 0; v < 8; ++v) {
                const __m256i index = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(meta, 2 * v), two_bits),
                                                      _mm256_set1_epi32(4 * (v / 2)));
                const __m256 value = _mm256_loadu_ps(values + v * kBlockN + 8 * half);
                for (int r = 0; r < MR; ++r) {
                    const __m256 x = _mm256_i32gather_ps(base[r], index, 4);
                    acc[r][half] = _mm256_add_ps(acc[r][half], _mm256_mul_ps(value, x));
                }
            }
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_f32_epilogue(args.epilogue, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

template <typename Args, void (*Tile2)(const Args&, int64_t, int64_t), void (*Tile1)(const Args&, int64_t, int64_t)>
void run_tiles(const Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) Tile2(args, row, block);
        if (row < row_end) Tile1(args, row, block);
    }
}

}  // namespace

void gemm_2to4_s8_avx2(const Gemm2to4S8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                       int64_t block_end) {
    if (row_begin >= row_end || block_begin >= block_end) return;
    // Per row, looked at once: does it hold a -128 (and so take the widening tile)?
    bool* holds_min = reinterpret_cast<bool*>(thread_scratch(static_cast<size_t>(row_end - row_begin)));
    for (int64_t row = row_begin; row < row_end; ++row) {
        holds_min[row - row_begin] =
            std::memchr(args.a + row * args.lda, 0x80, static_cast<size_t>(args.w.k)) != nullptr;
    }
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) {
            if (holds_min[row - row_begin] || holds_min[row + 1 - row_begin]) {
                widening_tile_s8<2>(args, row, block);
            } else {
                signed_tile_s8<2>(args, row, block);
            }
        }
        if (row < row_end) {
            if (holds_min[row - row_begin]) {
                widening_tile_s8<1>(args, row, block);
            } else {
                signed_tile_s8<1>(args, row, block);
            }
        }
    }
}

void gemm_2to4_f32_avx2(const Gemm2to4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                        int64_t block_end) {
    run_tiles<Gemm2to4F32Args, tile_f32<2>, tile_f32<1>>(args, row_begin, row_end, block_begin, block_end);
}

}  // namespace edgevla
