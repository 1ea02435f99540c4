// AVX2 unstructured sparse GEMMs over the SPARSE_*_N16W32 layout
// (packed_formats.h), for x86-64 CPUs without AVX-512: a slice of 16 output
// channels is two registers of accumulators, and each slot's activations are
// gathered from the slot's 32-wide window of the row (the row itself, or a
// zero-padded copy of its last window), positions masked to 0..31. int8
// activations are widened once per window to 32-bit words holding the int16
// value in the low half, so vpmaddwd with the sign-extended values is an exact
// int32 product.
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry points has
// internal linkage.
#include "arch/x86_64/simd_avx2.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr uint64_t kSlotBytesF32 = kSparseSlice * 5;
constexpr uint64_t kSlotBytesS8 = kSparseSlice * 2;

inline __m256i positions(const uint8_t* slot, int half) {
    const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(slot + 8 * half)));
    return _mm256_and_si256(wide, _mm256_set1_epi32(kSparseWindow - 1));
}

template <int MR>
void tile_f32(const GemmSparseF32Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesF32;
    uint64_t left = range.end - range.begin;
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    float tail[MR][kSparseWindow];
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        const int64_t k0 = window * kSparseWindow;
        const float* base[MR];
        for (int r = 0; r < MR; ++r) {
            const float* x = args.x + (row + r) * args.ldx;
            if (k0 + kSparseWindow <= w.k) {
                base[r] = x + k0;
            } else {
                copy_window(x, w.k, k0, kSparseWindow, tail[r]);
                base[r] = tail[r];
            }
        }
        for (uint64_t t = 0; t < count; ++t, slot += kSlotBytesF32) {
            const float* values = reinterpret_cast<const float*>(slot + kSparseSlice);
            for (int half = 0; half < 2; ++half) {
                const __m256i position = positions(slot, half);
                const __m256 value = _mm256_loadu_ps(values + 8 * half);
                for (int r = 0; r < MR; ++r) {
                    const __m256 x = _mm256_i32gather_ps(base[r], position, 4);
                    acc[r][half] = _mm256_add_ps(acc[r][half], _mm256_mul_ps(value, x));
                }
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) {
        store16_f32_epilogue(args.epilogue, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

// A window of int8 activations as 32-bit words (int16 value, zero high half).
inline void widen_window(const int8_t* row, int64_t k, int64_t k0, int32_t* words) {
    int8_t bytes[kSparseWindow];
    copy_window(row, k, k0, kSparseWindow, bytes);
    for (int i = 0; i < kSparseWindow; i += 16) {
        const __m256i int16s = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + i)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + i),
                            _mm256_cvtepu16_epi32(_mm256_castsi256_si128(int16s)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + i + 8),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(int16s, 1)));
    }
}

template <int MR>
void tile_s8(const GemmSparseS8Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesS8;
    uint64_t left = range.end - range.begin;
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    int32_t words[MR][kSparseWindow];
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        for (int r = 0; r < MR; ++r) widen_window(args.a + (row + r) * args.lda, w.k, window * kSparseWindow, words[r]);
        for (uint64_t t = 0; t < count; ++t, slot += kSlotBytesS8) {
            for (int half = 0; half < 2; ++half) {
                const __m256i position = positions(slot, half);
                const __m256i value = _mm256_cvtepi8_epi32(
                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(slot + kSparseSlice + 8 * half)));
                for (int r = 0; r < MR; ++r) {
                    const __m256i x = _mm256_i32gather_epi32(words[r], position, 4);
                    acc[r][half] = _mm256_add_epi32(acc[r][half], _mm256_madd_epi16(x, value));
                }
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

template <typename Args, void (*Tile2)(const Args&, int64_t, int64_t), void (*Tile1)(const Args&, int64_t, int64_t)>
void run_tiles(const Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin, int64_t block_end) {
    for (int64_t slice = block_begin; slice < block_end; ++slice) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) Tile2(args, row, slice);
        if (row < row_end) Tile1(args, row, slice);
    }
}

}  // namespace

void gemm_sparse_f32_avx2(const GemmSparseF32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                          int64_t block_end) {
    run_tiles<GemmSparseF32Args, tile_f32<2>, tile_f32<1>>(args, row_begin, row_end, block_begin, block_end);
}

void gemm_sparse_s8_avx2(const GemmSparseS8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                         int64_t block_end) {
    run_tiles<GemmSparseS8Args, tile_s8<2>, tile_s8<1>>(args, row_begin, row_end, block_begin, block_end);
}

}  // namespace edgevla
