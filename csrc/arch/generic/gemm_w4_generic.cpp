// Portable int4 weight-only GEMM over the W4_N16K8 layout: plain C++, the
// scalar twin of the SIMD kernels. Compiled for every target, with baseline
// flags only.
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

}  // namespace

void gemm_w4_f32_generic(const GemmW4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                         int64_t block_end) {
    const PackedW4View& w = args.w;
    const int64_t cells_per_group = w.group / kCellK;
    for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t cols = block_columns(w.n, block);
        const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
        const float* scales = w.scales + block * w.k_groups * kBlockN;
        for (int64_t row = row_begin; row < row_end; ++row) {
            const float* x_row = args.x + row * args.ldx;
            float acc[kBlockN] = {};
            for (int64_t group = 0; group < w.k_groups; ++group) {
                // Per group: the plain dot product of the codes, then one scale.
                float partial[kBlockN] = {};
                const int64_t cell_end = (group + 1) * cells_per_group < w.k_cells ? (group + 1) * cells_per_group
                                                                                     : w.k_cells;
                for (int64_t cell = group * cells_per_group; cell < cell_end; ++cell) {
                    float x_window[kCellK];
                    copy_window(x_row, w.k, cell * kCellK, kCellK, x_window);
                    for (int64_t lane = 0; lane < kBlockN; ++lane) {
                        const uint32_t word = codes[cell * kBlockN + lane];
                        for (int64_t i = 0; i < kCellK; ++i) {
                            partial[lane] += static_cast<float>(w4_code(word, i)) * x_window[i];
                        }
                    }
                }
                for (int64_t lane = 0; lane < kBlockN; ++lane) {
                    acc[lane] += scales[group * kBlockN + lane] * partial[lane];
                }
            }
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = block * kBlockN + lane;
                args.c[row * args.ldc + col] = epilogue_f32(args.epilogue, col, acc[lane]);
            }
        }
    }
}

}  // namespace edgevla
