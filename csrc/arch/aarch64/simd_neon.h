// NEON pieces shared by the aarch64 kernels (arch/aarch64/*_neon_dot.cpp,
// compiled with -march=armv8.2-a+dotprod): the epilogue's tanh, GELUs and ReLU
// on 4 floats, op by op as epilogue_math.h specifies them.
//
// NEON's FMAX returns NaN where x86 MAXPS returns its second operand, so
// max/min are compare + select here, matching epilogue_math.h bit for bit.
//
// Anonymous namespace: every file that includes this gets a private copy, so
// no dot-product instruction can reach a baseline function.
#pragma once

#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "kernel_common.h"

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace edgevla {
namespace {

inline float32x4_t max_ps(float32x4_t a, float32x4_t b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
inline float32x4_t min_ps(float32x4_t a, float32x4_t b) { return vbslq_f32(vcltq_f32(a, b), a, b); }

inline float32x4_t tanh_ps(float32x4_t x) {
    x = min_ps(max_ps(x, vdupq_n_f32(-EDGEVLA_TANH_CLAMP)), vdupq_n_f32(EDGEVLA_TANH_CLAMP));
    const float32x4_t x2 = vmulq_f32(x, x);
    float32x4_t p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A11), x2, vdupq_n_f32(EDGEVLA_TANH_A13));
    p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A9), x2, p);
    p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A7), x2, p);
    p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A5), x2, p);
    p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A3), x2, p);
    p = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_A1), x2, p);
    p = vmulq_f32(x, p);
    float32x4_t q = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_B4), x2, vdupq_n_f32(EDGEVLA_TANH_B6));
    q = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_B2), x2, q);
    q = vfmaq_f32(vdupq_n_f32(EDGEVLA_TANH_B0), x2, q);
    const float32x4_t r = vdivq_f32(p, q);
    const float32x4_t hi = vbslq_f32(vcleq_f32(x, vdupq_n_f32(-EDGEVLA_TANH_CLAMP)), vdupq_n_f32(-1.0f), r);
    return vbslq_f32(vcgeq_f32(x, vdupq_n_f32(EDGEVLA_TANH_CLAMP)), vdupq_n_f32(1.0f), hi);
}

// GELU, erf form, op by op as edgevla_gelu_erf_f32.
inline float32x4_t gelu_erf_ps(float32x4_t x) {
    const float32x4_t u = min_ps(vmulq_f32(x, x), vdupq_n_f32(EDGEVLA_GELU_ERF_U_MAX));
    float32x4_t s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S5), u, vdupq_n_f32(EDGEVLA_GELU_ERF_S6));
    s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S4), u, s);
    s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S3), u, s);
    s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S2), u, s);
    s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S1), u, s);
    s = vfmaq_f32(vdupq_n_f32(EDGEVLA_GELU_ERF_S0), u, s);
    const float32x4_t t = tanh_ps(vmulq_f32(x, s));
    return vmulq_f32(x, vfmaq_f32(vdupq_n_f32(0.5f), vdupq_n_f32(0.5f), t));
}

inline float32x4_t activate(edgevla_activation activation, float32x4_t v) {
    switch (activation) {
        case EDGEVLA_ACTIVATION_NONE: return v;
        case EDGEVLA_ACTIVATION_RELU: return max_ps(v, vdupq_n_f32(0.0f));
        case EDGEVLA_ACTIVATION_GELU_TANH: {
            const float32x4_t cube = vmulq_f32(vmulq_f32(v, v), v);
            const float32x4_t inner = vmulq_f32(vdupq_n_f32(EDGEVLA_GELU_SQRT_2_OVER_PI),
                                                vaddq_f32(v, vmulq_f32(vdupq_n_f32(EDGEVLA_GELU_CUBIC), cube)));
            const float32x4_t t = tanh_ps(inner);
            return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), v), vaddq_f32(vdupq_n_f32(1.0f), t));
        }
        case EDGEVLA_ACTIVATION_GELU_ERF: return gelu_erf_ps(v);
    }
    return v;
}

// The float epilogue of cpu_kernels.h on 16 accumulators (4 x 4 channels)
// of block `col0`: act(acc + bias), stored to the first `cols` lanes of c.
inline void store16_f32_epilogue(const EpilogueF32& epilogue, int64_t col0, int64_t cols, const float32x4_t acc[4],
                                 float* c) {
    float bias[16] = {};
    if (epilogue.bias != nullptr) std::memcpy(bias, epilogue.bias + col0, static_cast<size_t>(cols) * sizeof(float));
    float values[16];
    for (int i = 0; i < 4; ++i) {
        float32x4_t v = acc[i];
        if (epilogue.bias != nullptr) v = vaddq_f32(v, vld1q_f32(bias + 4 * i));
        vst1q_f32(values + 4 * i, activate(epilogue.activation, v));
    }
    std::memcpy(c + col0, values, static_cast<size_t>(cols) * sizeof(float));
}

// The W8A8 epilogue of gemm_s8s8.h on 16 exact accumulators of row `row`,
// block `col0` (w_scale has 16 valid values from col0), op by op as the
// reference, stored to the first `cols` lanes of c.
inline void store16_s8_epilogue(const edgevla_gemm_epilogue_f32& epilogue, int64_t row, int64_t col0, int64_t cols,
                                const int32x4_t acc[4], float* c) {
    float bias[16] = {};
    if (epilogue.bias != nullptr) std::memcpy(bias, epilogue.bias + col0, static_cast<size_t>(cols) * sizeof(float));
    const float32x4_t a_scale =
        vdupq_n_f32(epilogue.a_scale[epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN ? row : 0]);
    float values[16];
    for (int i = 0; i < 4; ++i) {
        const float32x4_t scale = vmulq_f32(a_scale, vld1q_f32(epilogue.w_scale + col0 + 4 * i));
        float32x4_t v = vmulq_f32(vcvtq_f32_s32(acc[i]), scale);
        if (epilogue.bias != nullptr) v = vaddq_f32(v, vld1q_f32(bias + 4 * i));
        vst1q_f32(values + 4 * i, activate(epilogue.activation, v));
    }
    add_residual_s8(epilogue, row, col0, cols, values);
    std::memcpy(c + col0, values, static_cast<size_t>(cols) * sizeof(float));
}

}  // namespace
}  // namespace edgevla
