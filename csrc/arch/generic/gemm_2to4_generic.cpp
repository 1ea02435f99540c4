// Portable 2:4 sparse GEMMs over the 2TO4_*_N16K16 layout: plain C++, the
// scalar twin of the SIMD kernels. Compiled for every target, with baseline
// flags only.
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;

// Where value j of a channel sits in its k-block (packed_formats.h).
inline int value_position(uint16_t meta, int j) { return 4 * (j / 2) + ((meta >> (2 * j)) & 3); }

// Byte of value j within the 8 int8 values of a channel: vector j's index,
// then byte (v0 v4 v1 v5 | v2 v6 v3 v7).
constexpr int kS8Vector[8] = {0, 0, 1, 1, 0, 0, 1, 1};
constexpr int kS8Byte[8] = {0, 2, 0, 2, 1, 3, 1, 3};

template <typename T, typename Acc>
void block_row(const Packed2to4View& w, int64_t block, const T* x_row, Acc acc[kBlockN]) {
    constexpr uint64_t values_bytes = 8 * kBlockN * sizeof(T);
    constexpr uint64_t cell_bytes = values_bytes + 2 * kBlockN;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * cell_bytes;
    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += cell_bytes) {
        T x_window[kBlockK];
        copy_window(x_row, w.k, kb * kBlockK, kBlockK, x_window);
        for (int64_t lane = 0; lane < kBlockN; ++lane) {
            uint16_t meta;
            std::memcpy(&meta, cell + values_bytes + 2 * lane, 2);
            for (int j = 0; j < 8; ++j) {
                T value;
                const uint64_t at = sizeof(T) == 4 ? 4 * (j * kBlockN + lane)
                                                   : kS8Vector[j] * 4 * kBlockN + 4 * lane + kS8Byte[j];
                std::memcpy(&value, cell + at, sizeof value);
                acc[lane] += static_cast<Acc>(value) * static_cast<Acc>(x_window[value_position(meta, j)]);
            }
        }
    }
}

}  // namespace

void gemm_2to4_f32_generic(const Gemm2to4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                           int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t cols = block_columns(args.w.n, block);
        for (int64_t row = row_begin; row < row_end; ++row) {
            float acc[kBlockN] = {};
            block_row(args.w, block, args.x + row * args.ldx, acc);
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = block * kBlockN + lane;
                args.c[row * args.ldc + col] = epilogue_f32(args.epilogue, col, acc[lane]);
            }
        }
    }
}

void gemm_2to4_s8_generic(const Gemm2to4S8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                          int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t cols = block_columns(args.w.n, block);
        for (int64_t row = row_begin; row < row_end; ++row) {
            int32_t acc[kBlockN] = {};
            block_row(args.w, block, args.a + row * args.lda, acc);
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = block * kBlockN + lane;
                args.c[row * args.ldc + col] = epilogue_s8(args.epilogue, row, col, acc[lane]);
            }
        }
    }
}

}  // namespace edgevla
