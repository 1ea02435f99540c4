// AVX2 kernels: packed W8A8 GEMM and per-token quantization for x86-64 CPUs
// without AVX-512 VNNI.
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry points has
// internal linkage and no standard-library template is used, so no AVX2 code
// can leak into a function the linker shares with baseline code (hence
// __builtin_fabsf rather than the inline std::fabs).
//
// The int8 products are widened to int16 and summed in pairs by vpmaddwd
// (int16 x int16 -> int32), which cannot saturate: a pair is at most
// 2 * 128 * 128. (vpmaddubsw would be faster but saturates at int16, e.g. for
// 255 * 127 + 255 * 127 with the +128 trick, or for -128 * -128 pairs with
// the sign trick.) Each accumulator holds two partial sums per channel, which
// are added once at the end of K.
#include "cpu_kernels.h"
#include "kernel_common.h"
#include "arch/x86_64/simd_avx2.h"
#include "epilogue_math.h"

#include <immintrin.h>

#include <cfloat>
#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;

// Four activations of one group, sign-extended to int16 and repeated four
// times: [a0 a1 a2 a3] x 4. A partial last group is zero-filled.
inline __m256i load_group_s16(const int8_t* a, int64_t k, int64_t group) {
    int32_t bytes = 0;
    const int64_t first = group * 4;
    if (first + 4 <= k) {
        std::memcpy(&bytes, a + first, 4);  // a fixed size: one load, not a call
    } else {
        std::memcpy(&bytes, a + first, static_cast<size_t>(k - first));
    }
    return _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(bytes)));
}

// Rows [row, row + MR) x one block of 16 channels.
template <int MR>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block) {
    const PackedS8View& w = args.w;
    const int8_t* cells = w.weights + block * w.k_groups * kCellBytes;
    __m256i acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_si256();

    for (int64_t group = 0; group < w.k_groups; ++group) {
        const int8_t* cell = cells + group * kCellBytes;
        __m256i weights[4];  // channels 4i .. 4i + 3, four k each, as int16
        for (int i = 0; i < 4; ++i) {
            weights[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cell + 16 * i)));
        }
        for (int r = 0; r < MR; ++r) {
            const __m256i a16 = load_group_s16(args.a + (row + r) * args.lda, w.k, group);
            for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(weights[i], a16));
        }
    }

    const edgevla_gemm_epilogue_f32& epilogue = args.epilogue;
    const bool per_token = epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN;
    const int64_t col0 = block * kBlockN;
    const int64_t cols = w.n - col0 < kBlockN ? w.n - col0 : kBlockN;
    float bias[kBlockN] = {};
    if (epilogue.bias) std::memcpy(bias, epilogue.bias + col0, static_cast<size_t>(cols) * sizeof(float));
    for (int r = 0; r < MR; ++r) {
        const __m256 a_scale = _mm256_set1_ps(epilogue.a_scale[per_token ? row + r : 0]);
        float values[kBlockN];
        for (int half = 0; half < 2; ++half) {
            const __m256i sums = finish_pairs(acc[r][2 * half], acc[r][2 * half + 1]);
            const __m256 scale = _mm256_mul_ps(a_scale, _mm256_loadu_ps(w.w_scale + col0 + 8 * half));
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), scale);
            if (epilogue.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * half));
            _mm256_storeu_ps(values + 8 * half, activate(epilogue.activation, v));
        }
        add_residual_s8(epilogue, row + r, col0, cols, values);
        std::memcpy(args.c + (row + r) * args.ldc + col0, values, static_cast<size_t>(cols) * sizeof(float));
    }
}

}  // namespace

void gemm_packed_s8_f32_avx2(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                             int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) tile<2>(args, row, block);
        if (row < row_end) tile<1>(args, row, block);
    }
}

bool quantize_row_avx2(int64_t k, const float* x, int8_t* q, float* scale) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 float_max = _mm256_set1_ps(FLT_MAX);
    __m256 amax8 = _mm256_setzero_ps();
    __m256 not_finite = _mm256_setzero_ps();
    const int64_t vector_end = k - k % 8;
    for (int64_t i = 0; i < vector_end; i += 8) {
        const __m256 magnitude = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
        not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps(magnitude, float_max, _CMP_NLE_UQ));
        amax8 = _mm256_max_ps(magnitude, amax8);
    }
    if (_mm256_movemask_ps(not_finite)) return false;
    __m128 amax4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    amax4 = _mm_max_ps(amax4, _mm_movehl_ps(amax4, amax4));
    amax4 = _mm_max_ss(amax4, _mm_shuffle_ps(amax4, amax4, 1));
    float amax = _mm_cvtss_f32(amax4);
    for (int64_t i = vector_end; i < k; ++i) {
        const float magnitude = __builtin_fabsf(x[i]);
        if (!(magnitude <= FLT_MAX)) return false;
        amax = edgevla_max_f32(magnitude, amax);
    }
    const float inv = amax >= EDGEVLA_QUANT_MIN_AMAX ? EDGEVLA_QUANT_QMAX / amax : 0.0f;
    const __m256 inv8 = _mm256_set1_ps(inv);
    const __m256 low = _mm256_set1_ps(-EDGEVLA_QUANT_QMAX), high = _mm256_set1_ps(EDGEVLA_QUANT_QMAX);
    for (int64_t i = 0; i < vector_end; i += 8) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv8),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(v, low), high);
        const __m256i ints = _mm256_cvttps_epi32(v);
        const __m128i int16s = _mm_packs_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(int16s, int16s));
    }
    for (int64_t i = vector_end; i < k; ++i) {
        const float v = __builtin_nearbyintf(x[i] * inv);
        q[i] = static_cast<int8_t>(edgevla_min_f32(edgevla_max_f32(v, -EDGEVLA_QUANT_QMAX), EDGEVLA_QUANT_QMAX));
    }
    *scale = amax / EDGEVLA_QUANT_QMAX;
    return true;
}

}  // namespace edgevla
