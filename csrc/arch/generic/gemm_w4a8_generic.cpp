// Portable int4 x int8 GEMM (W4A8) over the W4_N16K8 layout: plain C++, the
// scalar twin of the SIMD kernels. The activations arrive quantized per
// group (QuantizedW4A8Rows, cpu_kernels.h): per group and channel the int32
// dot product of the signed 4-bit codes with the int8 codes is exact, then
// scaled and added in float32 in group order, op by op as
// edgevla_gemm_w4a8_f32_ref. Compiled for every target, with baseline flags
// only.
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

}  // namespace

void gemm_w4a8_f32_generic(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                           int64_t block_end) {
    const PackedW4View& w = args.w;
    const int64_t cells_per_group = w.group / kCellK;
    for (int64_t block = block_begin; block < block_end; ++block) {
        const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
        const float* scales = w.scales + block * w.k_groups * kBlockN;
        for (int64_t row = row_begin; row < row_end; ++row) {
            const int8_t* q = args.a.q + row * args.a.ldq;
            float acc[kBlockN] = {};
            for (int64_t group = 0; group < w.k_groups; ++group) {
                int32_t dot[kBlockN] = {};
                const int64_t cell_end = (group + 1) * cells_per_group < w.k_cells ? (group + 1) * cells_per_group
                                                                                     : w.k_cells;
                for (int64_t cell = group * cells_per_group; cell < cell_end; ++cell) {
                    // q[8 cell + 2 j] sits at byte j of the cell, q[8 cell + 2 j + 1] at byte 4 + j.
                    const int8_t* x = q + cell * kCellK;
                    for (int64_t lane = 0; lane < kBlockN; ++lane) {
                        const uint32_t word = codes[cell * kBlockN + lane];
                        for (int j = 0; j < 4; ++j) {
                            dot[lane] += w4_code(word, 2 * j) * x[j] + w4_code(word, 2 * j + 1) * x[4 + j];
                        }
                    }
                }
                const float x_scale = args.a.scale[row * args.a.ldg + group];
                for (int64_t lane = 0; lane < kBlockN; ++lane) {
                    acc[lane] = acc[lane] + static_cast<float>(dot[lane]) * (x_scale * scales[group * kBlockN + lane]);
                }
            }
            const int64_t cols = block_columns(w.n, block);
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = block * kBlockN + lane;
                args.c[row * args.ldc + col] = epilogue_f32(args.epilogue, col, acc[lane]);
            }
        }
    }
}

// The activations: each group through this ISA's per-token quantization, then rearranged.
void quantize_w4a8_generic(const QuantizeW4A8Args& args) {
    quantize_w4a8_rows(args, [](int64_t length, const float* x, int8_t* q, float* scale, int32_t* sum) {
        return quantize_w4a8_group_by_row(quantize_row_generic, length, x, q, scale, sum);
    });
}

}  // namespace edgevla
