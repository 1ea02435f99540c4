// Portable packed W8A8 GEMM: plain C++ over the S8_N16K4 layout, for CPUs
// without a SIMD path and as the scalar twin of the SIMD kernels (it reads the
// packed buffer, the reference in gemm_ref.cpp reads the plain matrix).
// Compiled for every target, with baseline flags only.
#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "gemm_ref.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_S8_BLOCK_K;

}  // namespace

void gemm_packed_s8_f32_generic(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                int64_t block_begin, int64_t block_end) {
    const PackedS8View& w = args.w;
    const edgevla_gemm_epilogue_f32& epilogue = args.epilogue;
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int8_t* a = args.a + row * args.lda;
        for (int64_t block = block_begin; block < block_end; ++block) {
            int32_t acc[kBlockN] = {};
            const int8_t* cells = w.weights + block * w.k_groups * kBlockN * kBlockK;
            for (int64_t group = 0; group < w.k_groups; ++group) {
                const int8_t* cell = cells + group * kBlockN * kBlockK;
                for (int64_t i = 0; i < kBlockK && group * kBlockK + i < w.k; ++i) {
                    const int32_t a_value = a[group * kBlockK + i];
                    for (int64_t lane = 0; lane < kBlockN; ++lane) acc[lane] += a_value * cell[lane * kBlockK + i];
                }
            }
            const int64_t col0 = block * kBlockN;
            const int64_t cols = w.n - col0 < kBlockN ? w.n - col0 : kBlockN;
            for (int64_t lane = 0; lane < cols; ++lane) {
                const int64_t col = col0 + lane;
                args.c[row * args.ldc + col] = epilogue_s8(epilogue, row, col, acc[lane]);
            }
        }
    }
}

}  // namespace edgevla

namespace edgevla {

bool quantize_row_generic(int64_t k, const float* x, int8_t* q, float* scale) {
    return edgevla_quantize_row_ref(k, x, q, scale) != 0;
}

}  // namespace edgevla
