// NEON int4 x int8 GEMM (W4A8) over the W4_N16K8 layout (packed_formats.h):
// the arithmetic of edgevla_gemm_w4a8_f32_ref, bit for bit.
//
// Per 4 channels (one q register of 16 bytes = 4 words), the low nibble of
// every byte is sign-extended by shl #4 then sshr #4 and the high nibble by
// sshr #4 alone: the signed codes of the even k (8 t + 0, 2, 4, 6) and of the
// odd k (8 t + 1, 3, 5, 7), 4 per channel, which is what sdot (signed bytes,
// 4 products summed into each int32 lane) takes. The quantized activations
// come as 8 bytes per cell, even k then odd k (QuantizedW4A8Rows), so lane 0
// and lane 1 of one 64-bit load are the two broadcast operands. No offset,
// no correction: sdot is signed on both sides. Per group the exact dot
// products are scaled and added in float32 (separate multiply and add, no
// fmla), op by op as the reference.
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
void tile(const GemmW4A8Args& args, int64_t row, int64_t block) {
    const PackedW4View& w = args.w;
    const int64_t cells_per_group = w.group / kCellK;
    const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
    const float* scales = w.scales + block * w.k_groups * kBlockN;
    const int8_t* q[MR];
    for (int r = 0; r < MR; ++r) q[r] = args.a.q + (row + r) * args.a.ldq;
    float32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = vdupq_n_f32(0.0f);

    for (int64_t group = 0; group < w.k_groups; ++group) {
        int32x4_t dot[MR][4];
        for (int r = 0; r < MR; ++r)
            for (int c = 0; c < 4; ++c) dot[r][c] = vdupq_n_s32(0);
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        for (int64_t cell = cell_begin; cell < cell_end; ++cell) {
            int8x8_t x[MR];
            for (int r = 0; r < MR; ++r) x[r] = vld1_s8(q[r] + cell * kCellK);
            for (int c = 0; c < 4; ++c) {
                const int8x16_t bytes = vreinterpretq_s8_u32(vld1q_u32(codes + cell * kBlockN + 4 * c));
                const int8x16_t even = vshrq_n_s8(vshlq_n_s8(bytes, 4), 4);
                const int8x16_t odd = vshrq_n_s8(bytes, 4);
                for (int r = 0; r < MR; ++r) {
                    dot[r][c] = vdotq_lane_s32(dot[r][c], even, x[r], 0);
                    dot[r][c] = vdotq_lane_s32(dot[r][c], odd, x[r], 1);
                }
            }
        }
        for (int r = 0; r < MR; ++r) {
            const float x_scale = args.a.scale[(row + r) * args.a.ldg + group];
            for (int c = 0; c < 4; ++c) {
                const float32x4_t scale = vmulq_f32(vdupq_n_f32(x_scale), vld1q_f32(scales + group * kBlockN + 4 * c));
                acc[r][c] = vaddq_f32(acc[r][c], vmulq_f32(vcvtq_f32_s32(dot[r][c]), scale));
            }
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store16_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

}  // namespace

void gemm_w4a8_f32_neon_dot(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                            int64_t block_end) {
    for_row_chunks(row_begin, row_end, args.w.k, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t block = block_begin; block < block_end; ++block) {
            int64_t row = chunk_begin;
            for (; row + 2 <= chunk_end; row += 2) tile<2>(args, row, block);
            if (row < chunk_end) tile<1>(args, row, block);
        }
    });
}

}  // namespace edgevla
