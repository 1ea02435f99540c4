// NEON int4 weight-only GEMM over the W4_N16K8 layout (packed_formats.h): per
// 4 channels, nibble i of each word is shifted to the top of its lane and
// back arithmetically (sign extension of the 4-bit two's complement code),
// converted to float and multiplied by the activation with fmla; per group
// the plain dot product is scaled once.
//
// Compiled with -march=armv8.2-a+dotprod (CMakeLists.txt, this file only) and
// called only after dispatch.cpp has seen asimddp at run time. Everything but
// the entry point has internal linkage.
#include "arch/aarch64/simd_neon.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

template <int MR>
void tile(const GemmW4F32Args& args, int64_t row, int64_t block) {
    const PackedW4View& w = args.w;
    const int64_t cells_per_group = w.group / kCellK;
    const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
    const float* scales = w.scales + block * w.k_groups * kBlockN;
    float32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_f32(0.0f);

    for (int64_t group = 0; group < w.k_groups; ++group) {
        float32x4_t partial[MR][4];
        for (int r = 0; r < MR; ++r)
            for (int q = 0; q < 4; ++q) partial[r][q] = vdupq_n_f32(0.0f);
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        for (int64_t cell = cell_begin; cell < cell_end; ++cell) {
            float x[MR][kCellK];
            for (int r = 0; r < MR; ++r) copy_window(args.x + (row + r) * args.ldx, w.k, cell * kCellK, kCellK, x[r]);
            for (int q = 0; q < 4; ++q) {
                const int32x4_t words = vreinterpretq_s32_u32(vld1q_u32(codes + cell * kBlockN + 4 * q));
                for (int i = 0; i < kCellK; ++i) {
                    const int32x4_t up = vshlq_s32(words, vdupq_n_s32(28 - 4 * i));
                    const float32x4_t weights = vcvtq_f32_s32(vshrq_n_s32(up, 28));
                    for (int r = 0; r < MR; ++r) partial[r][q] = vfmaq_n_f32(partial[r][q], weights, x[r][i]);
                }
            }
        }
        for (int q = 0; q < 4; ++q) {
            const float32x4_t scale = vld1q_f32(scales + group * kBlockN + 4 * q);
            for (int r = 0; r < MR; ++r) acc[r][q] = vfmaq_f32(acc[r][q], partial[r][q], scale);
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store16_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

}  // namespace

void gemm_w4_f32_neon_dot(const GemmW4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                          int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) tile<2>(args, row, block);
        if (row < row_end) tile<1>(args, row, block);
    }
}

}  // namespace edgevla
