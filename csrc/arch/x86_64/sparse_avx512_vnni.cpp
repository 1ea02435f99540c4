// AVX-512 unstructured sparse GEMMs over the SPARSE_*_N16W32 layout
// (packed_formats.h): a slice of 16 output channels is one register of
// accumulators, and a window of 32 activations of a row is held in registers
// (two of float32, one of int16), so each slot's 16 activations are picked by
// one permute instead of a gather. vpermt2ps and vpermw use only the low 5
// bits of a position, so no stored position can reach outside the window.
//
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt,
// this file only) and called only after dispatch.cpp has seen the CPU
// features at run time. Everything but the entry points has internal linkage.
#include "arch/x86_64/simd_avx512.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr uint64_t kSlotBytesF32 = kSparseSlice * 5;  // 16 positions + 16 float32
constexpr uint64_t kSlotBytesS8 = kSparseSlice * 2;   // 16 positions + 16 int8

// Rows [row, row + MR) x one slice, float32.
template <int MR>
void tile_f32(const GemmSparseF32Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesF32;
    uint64_t left = range.end - range.begin;

    __m512 acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        const int64_t k0 = window * kSparseWindow;
        const int64_t length = window_length(w.k, k0, kSparseWindow);
        const __mmask16 low_mask = first_lanes(length), high_mask = first_lanes(length - 16);
        __m512 low[MR], high[MR];  // x[k0 .. k0 + 16), x[k0 + 16 .. k0 + 32), zero past K
        for (int r = 0; r < MR; ++r) {
            const float* x = args.x + (row + r) * args.ldx + k0;
            low[r] = _mm512_maskz_loadu_ps(low_mask, x);
            high[r] = _mm512_maskz_loadu_ps(high_mask, x + 16);
        }
        if (MR < 4) prefetch_stream(slot, count * kSlotBytesF32);  // a GEMV: see kernel_common.h
        for (uint64_t t = 0; t < count; ++t, slot += kSlotBytesF32) {
            const __m512i position = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(slot)));
            const __m512 value = _mm512_loadu_ps(reinterpret_cast<const float*>(slot + kSparseSlice));
            for (int r = 0; r < MR; ++r) {
                acc[r] = _mm512_fmadd_ps(value, _mm512_permutex2var_ps(low[r], position, high[r]), acc[r]);
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) store_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

// Rows [row, row + MR) x one slice, int8: the window as 32 int16, each slot's
// activations picked by vpermw into the low half of every 32-bit lane (the
// high half zeroed), times the sign-extended values with vpdpwssd: exact.
template <int MR>
void tile_s8(const GemmSparseS8Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesS8;
    uint64_t left = range.end - range.begin;
    constexpr __mmask32 kLowHalves = 0x55555555u;

    __m512i acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_si512();
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        const int64_t k0 = window * kSparseWindow;
        const __mmask32 mask = first_bytes32(window_length(w.k, k0, kSparseWindow));
        __m512i x16[MR];
        for (int r = 0; r < MR; ++r) {
            x16[r] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, args.a + (row + r) * args.lda + k0));
        }
        if (MR < 4) prefetch_stream(slot, count * kSlotBytesS8);  // a GEMV: see kernel_common.h
        for (uint64_t t = 0; t < count; ++t, slot += kSlotBytesS8) {
            const __m512i position = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(slot)));
            const __m512i value =
                _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(slot + kSparseSlice)));
            for (int r = 0; r < MR; ++r) {
                const __m512i picked = _mm512_maskz_permutexvar_epi16(kLowHalves, position, x16[r]);
                acc[r] = _mm512_dpwssd_epi32(acc[r], picked, value);
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) {
        store_s8_epilogue(args.epilogue, row + r, col0, cols, acc[r], args.c + (row + r) * args.ldc);
    }
}

template <typename Args, void (*Tile4)(const Args&, int64_t, int64_t), void (*Tile1)(const Args&, int64_t, int64_t)>
void run_tiles(const Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin, int64_t block_end,
               int64_t element_bytes) {
    for_row_chunks(row_begin, row_end, args.w.k, element_bytes, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t slice = block_begin; slice < block_end; ++slice) {
            int64_t row = chunk_begin;
            for (; row + 4 <= chunk_end; row += 4) Tile4(args, row, slice);
            for (; row < chunk_end; ++row) Tile1(args, row, slice);
        }
    });
}

}  // namespace

void gemm_sparse_f32_avx512_vnni(const GemmSparseF32Args& args, int64_t row_begin, int64_t row_end,
                                 int64_t block_begin, int64_t block_end) {
    run_tiles<GemmSparseF32Args, tile_f32<4>, tile_f32<1>>(args, row_begin, row_end, block_begin, block_end, 4);
}

void gemm_sparse_s8_avx512_vnni(const GemmSparseS8Args& args, int64_t row_begin, int64_t row_end,
                                int64_t block_begin, int64_t block_end) {
    run_tiles<GemmSparseS8Args, tile_s8<4>, tile_s8<1>>(args, row_begin, row_end, block_begin, block_end, 1);
}

}  // namespace edgevla
