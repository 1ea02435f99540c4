// NEON unstructured sparse GEMMs over the SPARSE_*_N16W32 layout
// (packed_formats.h): a slice of 16 output channels is four registers of
// accumulators. int8: the 32 activations of a window sit in two registers and
// each slot's 16 are picked by one table lookup (tbl, positions masked to
// 0..31), then multiplied exactly with smull and widened into int32.
// float32: each lane's activation is loaded from the window (the row, or a
// zero-padded copy of its last window).
//
// Compiled with -march=armv8.2-a+dotprod (CMakeLists.txt, this file only) and
// called only after dispatch.cpp has seen asimddp at run time. Everything but
// the entry points has internal linkage.
#include "arch/aarch64/simd_neon.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr uint64_t kSlotBytesF32 = kSparseSlice * 5;
constexpr uint64_t kSlotBytesS8 = kSparseSlice * 2;

template <int MR>
void tile_f32(const GemmSparseF32Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesF32;
    uint64_t left = range.end - range.begin;
    float32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_f32(0.0f);
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
            for (int q = 0; q < 4; ++q) {
                const float32x4_t value = vld1q_f32(values + 4 * q);
                const uint8_t* position = slot + 4 * q;
                for (int r = 0; r < MR; ++r) {
                    const float picked[4] = {base[r][position[0] & 31], base[r][position[1] & 31],
                                             base[r][position[2] & 31], base[r][position[3] & 31]};
                    acc[r][q] = vfmaq_f32(acc[r][q], value, vld1q_f32(picked));
                }
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) store16_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

template <int MR>
void tile_s8(const GemmSparseS8Args& args, int64_t row, int64_t slice) {
    const PackedSparseView& w = args.w;
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * kSlotBytesS8;
    uint64_t left = range.end - range.begin;
    int32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_s32(0);
    const uint8x16_t window_mask = vdupq_n_u8(kSparseWindow - 1);
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        int8x16x2_t table[MR];
        for (int r = 0; r < MR; ++r) {
            int8_t bytes[kSparseWindow];
            copy_window(args.a + (row + r) * args.lda, w.k, window * kSparseWindow, kSparseWindow, bytes);
            table[r].val[0] = vld1q_s8(bytes);
            table[r].val[1] = vld1q_s8(bytes + 16);
        }
        for (uint64_t t = 0; t < count; ++t, slot += kSlotBytesS8) {
            const uint8x16_t position = vandq_u8(vld1q_u8(slot), window_mask);
            const int8x16_t value = vld1q_s8(reinterpret_cast<const int8_t*>(slot + kSparseSlice));
            for (int r = 0; r < MR; ++r) {
                const int8x16_t picked = vqtbl2q_s8(table[r], position);
                const int16x8_t low = vmull_s8(vget_low_s8(picked), vget_low_s8(value));
                const int16x8_t high = vmull_high_s8(picked, value);
                acc[r][0] = vaddw_s16(acc[r][0], vget_low_s16(low));
                acc[r][1] = vaddw_high_s16(acc[r][1], low);
                acc[r][2] = vaddw_s16(acc[r][2], vget_low_s16(high));
                acc[r][3] = vaddw_high_s16(acc[r][3], high);
            }
        }
    }
    const int64_t col0 = slice * kSparseSlice, cols = block_columns(w.n, slice);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, acc[r], args.c + (row + r) * args.ldc);
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

void gemm_sparse_f32_neon_dot(const GemmSparseF32Args& args, int64_t row_begin, int64_t row_end,
                              int64_t block_begin, int64_t block_end) {
    run_tiles<GemmSparseF32Args, tile_f32<2>, tile_f32<1>>(args, row_begin, row_end, block_begin, block_end);
}

void gemm_sparse_s8_neon_dot(const GemmSparseS8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                             int64_t block_end) {
    run_tiles<GemmSparseS8Args, tile_s8<2>, tile_s8<1>>(args, row_begin, row_end, block_begin, block_end);
}

}  // namespace edgevla
