// aarch64 NEON dot-product kernel: packed W8A8 GEMM on sdot (vdotq_s32),
// which multiplies signed by signed bytes, so no compensation is needed.
//
// Compiled with -march=armv8.2-a+dotprod (CMakeLists.txt, this file only) and
// called only after dispatch.cpp has seen asimddp at run time. Everything but
// the entry point has internal linkage and no standard-library template is
// used, so no dot-product code can leak into baseline functions.
#include "cpu_kernels.h"
#include "kernel_common.h"
#include "arch/aarch64/simd_neon.h"
#include "epilogue_math.h"

#include <arm_neon.h>

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;

// Four activations of one group in every 32-bit lane; a partial last group is zero-filled.
inline int8x16_t load_group(const int8_t* a, int64_t k, int64_t group) {
    int32_t bytes = 0;
    const int64_t first = group * 4;
    if (first + 4 <= k) {
        std::memcpy(&bytes, a + first, 4);  // a fixed size: one load, not a call
    } else {
        std::memcpy(&bytes, a + first, static_cast<size_t>(k - first));
    }
    return vreinterpretq_s8_s32(vdupq_n_s32(bytes));
}

// Rows [row, row + MR) x one block of 16 channels: 4 * MR accumulators.
template <int MR>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block) {
    const PackedS8View& w = args.w;
    const int8_t* cells = w.weights + block * w.k_groups * kCellBytes;
    int32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int i = 0; i < 4; ++i) acc[r][i] = vdupq_n_s32(0);

    for (int64_t group = 0; group < w.k_groups; ++group) {
        const int8_t* cell = cells + group * kCellBytes;
        int8x16_t weights[4];  // channels 4i .. 4i + 3, four k each
        for (int i = 0; i < 4; ++i) weights[i] = vld1q_s8(cell + 16 * i);
        for (int r = 0; r < MR; ++r) {
            const int8x16_t a4 = load_group(args.a + (row + r) * args.lda, w.k, group);
            for (int i = 0; i < 4; ++i) acc[r][i] = vdotq_s32(acc[r][i], weights[i], a4);
        }
    }

    const edgevla_gemm_epilogue_f32& epilogue = args.epilogue;
    const bool per_token = epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN;
    const int64_t col0 = block * kBlockN;
    const int64_t cols = w.n - col0 < kBlockN ? w.n - col0 : kBlockN;
    float bias[kBlockN] = {};
    if (epilogue.bias) std::memcpy(bias, epilogue.bias + col0, static_cast<size_t>(cols) * sizeof(float));
    for (int r = 0; r < MR; ++r) {
        const float32x4_t a_scale = vdupq_n_f32(epilogue.a_scale[per_token ? row + r : 0]);
        float values[kBlockN];
        for (int i = 0; i < 4; ++i) {
            const float32x4_t scale = vmulq_f32(a_scale, vld1q_f32(w.w_scale + col0 + 4 * i));
            float32x4_t v = vmulq_f32(vcvtq_f32_s32(acc[r][i]), scale);
            if (epilogue.bias) v = vaddq_f32(v, vld1q_f32(bias + 4 * i));
            vst1q_f32(values + 4 * i, activate(epilogue.activation, v));
        }
        add_residual_s8(epilogue, row + r, col0, cols, values);
        std::memcpy(args.c + (row + r) * args.ldc + col0, values, static_cast<size_t>(cols) * sizeof(float));
    }
}

}  // namespace

void gemm_packed_s8_f32_neon_dot(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                 int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 4 <= row_end; row += 4) tile<4>(args, row, block);
        switch (row_end - row) {
            case 3: tile<3>(args, row, block); break;
            case 2: tile<2>(args, row, block); break;
            case 1: tile<1>(args, row, block); break;
            default: break;
        }
    }
}

}  // namespace edgevla
