// Portable unstructured sparse GEMMs over the SPARSE_*_N16W32 layout: plain
// C++, for CPUs without a SIMD path and as the scalar twin of the SIMD kernels
// (it reads the packed buffer; the references in gemm_ref.cpp read the dense
// matrix). Compiled for every target, with baseline flags only.
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

// acc[lane] += value[lane] * x[window + position[lane]] over the slots of
// one slice, for one row. Positions are masked to the window.
template <typename T, typename Acc>
void slice_row(const PackedSparseView& w, int64_t slice, const T* x_row, Acc acc[kSparseSlice]) {
    constexpr uint64_t slot_bytes = kSparseSlice * (1 + sizeof(T));
    const SlotRange range = slice_slot_range(w, slice);
    const uint8_t* slot = w.slot_data + range.begin * slot_bytes;
    uint64_t left = range.end - range.begin;
    for (int64_t window = 0; window < w.n_windows && left > 0; ++window) {
        const uint64_t count = window_slot_count(w, slice, window, left);
        left -= count;
        if (count == 0) continue;
        T x_window[kSparseWindow];
        copy_window(x_row, w.k, window * kSparseWindow, kSparseWindow, x_window);
        for (uint64_t t = 0; t < count; ++t, slot += slot_bytes) {
            for (int64_t lane = 0; lane < kSparseSlice; ++lane) {
                T value;
                std::memcpy(&value, slot + kSparseSlice + lane * sizeof(T), sizeof value);
                acc[lane] += static_cast<Acc>(value) * static_cast<Acc>(x_window[slot[lane] & (kSparseWindow - 1)]);
            }
        }
    }
}

}  // namespace

void gemm_sparse_f32_generic(const GemmSparseF32Args& args, int64_t row_begin, int64_t row_end,
                             int64_t block_begin, int64_t block_end) {
    for (int64_t slice = block_begin; slice < block_end; ++slice) {
        const int64_t cols = block_columns(args.w.n, slice);
        for (int64_t row = row_begin; row < row_end; ++row) {
            float acc[kSparseSlice] = {};
            slice_row(args.w, slice, args.x + row * args.ldx, acc);
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = slice * kSparseSlice + lane;
                args.c[row * args.ldc + col] = epilogue_f32(args.epilogue, col, acc[lane]);
            }
        }
    }
}

void gemm_sparse_s8_generic(const GemmSparseS8Args& args, int64_t row_begin, int64_t row_end,
                            int64_t block_begin, int64_t block_end) {
    for (int64_t slice = block_begin; slice < block_end; ++slice) {
        const int64_t cols = block_columns(args.w.n, slice);
        for (int64_t row = row_begin; row < row_end; ++row) {
            int32_t acc[kSparseSlice] = {};
            slice_row(args.w, slice, args.a + row * args.lda, acc);
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = slice * kSparseSlice + lane;
                args.c[row * args.ldc + col] = epilogue_s8(args.epilogue, row, col, acc[lane]);
            }
        }
    }
}

}  // namespace edgevla
