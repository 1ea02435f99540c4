// AVX-512 pieces shared by the kernels compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni (arch/x86_64/*_avx512_vnni.cpp): the epilogue's
// tanh, GELUs and ReLU on 16 floats, op by op as epilogue_math.h specifies them
// (bit-identical to the scalar versions), and masks for partial vectors.
//
// Anonymous namespace: every file that includes this gets a private copy, so
// no AVX-512 instruction can reach a function the linker shares with
// baseline code. Include only from files compiled with the flags above.
#pragma once

// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself and
// warns about it wherever an intrinsic using it is inlined (GCC bug 105593,
// fixed in GCC 13); the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu_kernels.h"
#include "epilogue_math.h"

#include <immintrin.h>

#include <cstdint>

namespace edgevla {
namespace {

inline __m512 tanh_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-EDGEVLA_TANH_CLAMP)), _mm512_set1_ps(EDGEVLA_TANH_CLAMP));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(EDGEVLA_TANH_A13), _mm512_set1_ps(EDGEVLA_TANH_A11));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(EDGEVLA_TANH_A9));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(EDGEVLA_TANH_A7));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(EDGEVLA_TANH_A5));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(EDGEVLA_TANH_A3));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(EDGEVLA_TANH_A1));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(EDGEVLA_TANH_B6), _mm512_set1_ps(EDGEVLA_TANH_B4));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(EDGEVLA_TANH_B2));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(EDGEVLA_TANH_B0));
    const __m512 r = _mm512_div_ps(p, q);
    const __m512 hi = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-EDGEVLA_TANH_CLAMP), _CMP_LE_OQ), r,
                                           _mm512_set1_ps(-1.0f));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(EDGEVLA_TANH_CLAMP), _CMP_GE_OQ), hi,
                                _mm512_set1_ps(1.0f));
}

// GELU, erf form, op by op as edgevla_gelu_erf_f32.
inline __m512 gelu_erf_ps(__m512 x) {
    const __m512 u = _mm512_min_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(EDGEVLA_GELU_ERF_U_MAX));
    __m512 s =
        _mm512_fmadd_ps(u, _mm512_set1_ps(EDGEVLA_GELU_ERF_S6), _mm512_set1_ps(EDGEVLA_GELU_ERF_S5));
    s = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EDGEVLA_GELU_ERF_S4));
    s = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EDGEVLA_GELU_ERF_S3));
    s = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EDGEVLA_GELU_ERF_S2));
    s = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EDGEVLA_GELU_ERF_S1));
    s = _mm512_fmadd_ps(u, s, _mm512_set1_ps(EDGEVLA_GELU_ERF_S0));
    const __m512 t = tanh_ps(_mm512_mul_ps(x, s));
    return _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_set1_ps(0.5f), t, _mm512_set1_ps(0.5f)));
}

inline __m512 activate(edgevla_activation activation, __m512 v) {
    switch (activation) {
        case EDGEVLA_ACTIVATION_NONE: return v;
        case EDGEVLA_ACTIVATION_RELU: return _mm512_max_ps(v, _mm512_setzero_ps());
        case EDGEVLA_ACTIVATION_GELU_TANH: {
            const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
            const __m512 inner = _mm512_mul_ps(
                _mm512_set1_ps(EDGEVLA_GELU_SQRT_2_OVER_PI),
                _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(EDGEVLA_GELU_CUBIC), cube)));
            const __m512 t = tanh_ps(inner);
            return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
        }
        case EDGEVLA_ACTIVATION_GELU_ERF: return gelu_erf_ps(v);
    }
    return v;
}

// The first `count` lanes of 16 (none for count <= 0).
inline __mmask16 first_lanes(int64_t count) {
    if (count <= 0) return 0;
    return count >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}

// The first `count` bytes of 16 / 32.
inline __mmask16 first_bytes16(int64_t count) { return first_lanes(count); }
inline __mmask32 first_bytes32(int64_t count) {
    if (count <= 0) return 0;
    return count >= 32 ? __mmask32(0xFFFFFFFFu) : static_cast<__mmask32>((1u << count) - 1u);
}

// `rows` rows of int8 activations (k of them at a stride of lda), + 128 as
// unsigned bytes (vpdpbusd's unsigned operand) and padded with 0x80 (a zero
// activation) to `ld` >= k bytes a row, into `staged`: the VNNI kernels stage
// each chunk of rows once and then broadcast straight from the copy, with no
// xor beside every vpdpbusd and no partial last group or block to handle.
inline void stage_u8_rows(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t ld, uint8_t* staged) {
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int64_t r = 0; r < rows; ++r, a += lda, staged += ld) {
        for (int64_t i = 0; i < ld; i += 64) {
            const __mmask64 real = k - i >= 64 ? ~__mmask64(0) : k > i ? (__mmask64(1) << (k - i)) - 1 : 0;
            const __mmask64 store = ld - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (ld - i)) - 1;
            _mm512_mask_storeu_epi8(staged + i, store, _mm512_xor_si512(_mm512_maskz_loadu_epi8(real, a + i), bias));
        }
    }
}

// The float epilogue of cpu_kernels.h on 16 accumulators of block `col0`:
// act(acc + bias), stored to the first `cols` lanes of c.
inline void store_f32_epilogue(const EpilogueF32& epilogue, int64_t col0, int64_t cols, __m512 acc, float* c) {
    const __mmask16 mask = first_lanes(cols);
    if (epilogue.bias != nullptr) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, epilogue.bias + col0));
    _mm512_mask_storeu_ps(c + col0, mask, activate(epilogue.activation, acc));
}

// The W8A8 epilogue of gemm_s8s8.h on 16 exact accumulators of row `row`,
// block `col0` (w_scale has 16 valid values from col0, zero past N), stored
// to the first `cols` lanes of c. Op by op as the reference.
inline void store_s8_epilogue(const edgevla_gemm_epilogue_f32& epilogue, int64_t row, int64_t col0, int64_t cols,
                              __m512i acc, float* c) {
    const __mmask16 mask = first_lanes(cols);
    const float a_scale = epilogue.a_scale[epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN ? row : 0];
    const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(a_scale), _mm512_loadu_ps(epilogue.w_scale + col0));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
    if (epilogue.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, epilogue.bias + col0));
    v = activate(epilogue.activation, v);
    if (epilogue.residual != nullptr) {
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, epilogue.residual + row * epilogue.ld_residual + col0));
    }
    _mm512_mask_storeu_ps(c + col0, mask, v);
}

}  // namespace
}  // namespace edgevla
