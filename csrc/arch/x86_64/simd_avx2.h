// AVX2 pieces shared by the kernels compiled with -mavx2
// (arch/x86_64/*_avx2.cpp): the epilogue's tanh, GELUs and ReLU on 8 floats,
// op by op as epilogue_math.h specifies them (bit-identical to the scalar
// versions; their FMAs are the fmaf of the scalar code).
//
// Anonymous namespace: every file that includes this gets a private copy, so
// no AVX2 instruction can reach a function the linker shares with baseline
// code. Include only from files compiled with -mavx2.
#pragma once

#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "kernel_common.h"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace edgevla {
namespace {

inline __m256 tanh_ps(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-EDGEVLA_TANH_CLAMP)), _mm256_set1_ps(EDGEVLA_TANH_CLAMP));
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(EDGEVLA_TANH_A13), _mm256_set1_ps(EDGEVLA_TANH_A11));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(EDGEVLA_TANH_A9));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(EDGEVLA_TANH_A7));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(EDGEVLA_TANH_A5));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(EDGEVLA_TANH_A3));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(EDGEVLA_TANH_A1));
    p = _mm256_mul_ps(x, p);
    __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(EDGEVLA_TANH_B6), _mm256_set1_ps(EDGEVLA_TANH_B4));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(EDGEVLA_TANH_B2));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(EDGEVLA_TANH_B0));
    const __m256 r = _mm256_div_ps(p, q);
    const __m256 hi = _mm256_blendv_ps(r, _mm256_set1_ps(-1.0f),
                                       _mm256_cmp_ps(x, _mm256_set1_ps(-EDGEVLA_TANH_CLAMP), _CMP_LE_OQ));
    return _mm256_blendv_ps(hi, _mm256_set1_ps(1.0f), _mm256_cmp_ps(x, _mm256_set1_ps(EDGEVLA_TANH_CLAMP), _CMP_GE_OQ));
}

// GELU, erf form, op by op as edgevla_gelu_erf_f32.
inline __m256 gelu_erf_ps(__m256 x) {
    const __m256 u = _mm256_min_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(EDGEVLA_GELU_ERF_U_MAX));
    __m256 s =
        _mm256_fmadd_ps(u, _mm256_set1_ps(EDGEVLA_GELU_ERF_S6), _mm256_set1_ps(EDGEVLA_GELU_ERF_S5));
    s = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EDGEVLA_GELU_ERF_S4));
    s = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EDGEVLA_GELU_ERF_S3));
    s = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EDGEVLA_GELU_ERF_S2));
    s = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EDGEVLA_GELU_ERF_S1));
    s = _mm256_fmadd_ps(u, s, _mm256_set1_ps(EDGEVLA_GELU_ERF_S0));
    const __m256 t = tanh_ps(_mm256_mul_ps(x, s));
    return _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), t, _mm256_set1_ps(0.5f)));
}

inline __m256 activate(edgevla_activation activation, __m256 v) {
    switch (activation) {
        case EDGEVLA_ACTIVATION_NONE: return v;
        case EDGEVLA_ACTIVATION_RELU: return _mm256_max_ps(v, _mm256_setzero_ps());
        case EDGEVLA_ACTIVATION_GELU_TANH: {
            const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
            const __m256 inner = _mm256_mul_ps(
                _mm256_set1_ps(EDGEVLA_GELU_SQRT_2_OVER_PI),
                _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(EDGEVLA_GELU_CUBIC), cube)));
            const __m256 t = tanh_ps(inner);
            return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), t));
        }
        case EDGEVLA_ACTIVATION_GELU_ERF: return gelu_erf_ps(v);
    }
    return v;
}

// The first `count` (< 16) of 16 floats at p, zero-filled to 16 in `copy`.
inline const float* copy_first(const float* p, int64_t count, float* copy) {
    std::memset(copy, 0, 16 * sizeof(float));
    std::memcpy(copy, p, static_cast<size_t>(count) * sizeof(float));
    return copy;
}

// acc + the four int8 products w . a of each 32-bit lane, exact for activations
// in [-127, 127]: vpmaddubsw of |w| (0..128, unsigned) and a given w's sign,
// whose pairs stay within 2 * 128 * 127 < 32767, then vpmaddwd by ones. A -128
// activation would wrap when negated (gemm_avx2.cpp). w_abs = |w|.
inline __m256i add_signed_dot4(__m256i acc, __m256i w_abs, __m256i w, __m256i a) {
    const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Pair partial sums of channels 0-3 and 4-7 -> the 8 channel sums in order.
inline __m256i finish_pairs(__m256i low4, __m256i high4) {
    // hadd works per 128-bit lane: [c0 c1 c4 c5 | c2 c3 c6 c7]; swap the middle quadwords.
    return _mm256_permute4x64_epi64(_mm256_hadd_epi32(low4, high4), 0xD8);
}

// The float epilogue of cpu_kernels.h on 16 accumulators (channels 0-7 in
// low, 8-15 in high) of block `col0`: act(acc + bias), stored to the first
// `cols` lanes of c.
inline void store16_f32_epilogue(const EpilogueF32& epilogue, int64_t col0, int64_t cols, __m256 low, __m256 high,
                                 float* c) {
    const bool whole = cols == 16;  // in place; a partial block through copies (see store16_s8_epilogue)
    const float* bias = epilogue.bias != nullptr ? epilogue.bias + col0 : nullptr;
    float bias_copy[16], values[16];
    if (!whole && bias != nullptr) bias = copy_first(bias, cols, bias_copy);
    float* out = whole ? c + col0 : values;
    const __m256 halves[2] = {low, high};
    for (int half = 0; half < 2; ++half) {
        __m256 v = halves[half];
        if (bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * half));
        _mm256_storeu_ps(out + 8 * half, activate(epilogue.activation, v));
    }
    if (!whole) std::memcpy(c + col0, values, static_cast<size_t>(cols) * sizeof(float));
}

// The W8A8 epilogue of gemm_s8s8.h on 16 exact accumulators of row `row`,
// block `col0` (w_scale has 16 valid values from col0), op by op as the
// reference, stored to the first `cols` lanes of c. A whole block reads bias
// and residual and writes c in place; a partial one goes through copies, so
// nothing past column N is read or written.
inline void store16_s8_epilogue(const edgevla_gemm_epilogue_f32& epilogue, int64_t row, int64_t col0, int64_t cols,
                                __m256i low, __m256i high, float* c) {
    const bool whole = cols == 16;
    const float* bias = epilogue.bias != nullptr ? epilogue.bias + col0 : nullptr;
    const float* residual = epilogue.residual != nullptr ? epilogue.residual + row * epilogue.ld_residual + col0
                                                         : nullptr;
    float bias_copy[16], residual_copy[16], values[16];
    if (!whole) {
        if (bias != nullptr) bias = copy_first(bias, cols, bias_copy);
        if (residual != nullptr) residual = copy_first(residual, cols, residual_copy);
    }
    float* out = whole ? c + col0 : values;
    const __m256 a_scale =
        _mm256_set1_ps(epilogue.a_scale[epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN ? row : 0]);
    const __m256i halves[2] = {low, high};
    for (int half = 0; half < 2; ++half) {
        const __m256 scale = _mm256_mul_ps(a_scale, _mm256_loadu_ps(epilogue.w_scale + col0 + 8 * half));
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(halves[half]), scale);
        if (bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * half));
        v = activate(epilogue.activation, v);
        if (residual != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(residual + 8 * half));
        _mm256_storeu_ps(out + 8 * half, v);
    }
    if (!whole) std::memcpy(c + col0, values, static_cast<size_t>(cols) * sizeof(float));
}

// The W8A8 epilogue of rows [row, row + MR) x one block of a packed int8
// GEMM (the dense or the 2:4 Args: w.n, w.compensation, epilogue, c, ldc)
// from their sums (acc[r][0]: channels 0-7, acc[r][1]: 8-15): with the
// packed compensation 128 * rowsum(W) still in where `compensated` (the
// +128 kernels), exact ones otherwise. The sums go through memory
// first: the epilogue needs most of the 16 ymm registers, and with the
// accumulators live into it GCC keeps a stack copy of each, stored on every
// trip through the k loop.
template <int MR, typename Args>
void finish_s8_rows(const Args& args, int64_t row, int64_t block, const __m256i (&acc)[MR][2],
                    bool compensated = true) {
    alignas(32) int32_t sums[MR][16];
    for (int r = 0; r < MR; ++r) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums[r]), acc[r][0]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums[r] + 8), acc[r][1]);
    }
    __asm__ volatile("" ::: "memory");  // the stores above stay stores: see the comment
    const int64_t col0 = block * 16, cols = block_columns(args.w.n, block);
    __m256i compensation_low = _mm256_setzero_si256(), compensation_high = _mm256_setzero_si256();
    if (compensated) {
        const int32_t* compensation = args.w.compensation + col0;
        compensation_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(compensation));
        compensation_high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(compensation + 8));
    }
    for (int r = 0; r < MR; ++r) {
        const __m256i low = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[r]));
        const __m256i high = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[r] + 8));
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, _mm256_sub_epi32(low, compensation_low),
                            _mm256_sub_epi32(high, compensation_high), args.c + (row + r) * args.ldc);
    }
}

}  // namespace
}  // namespace edgevla
