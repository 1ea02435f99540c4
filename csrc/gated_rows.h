// The rows of gated_f32.h, written once and compiled per kernel table
// (arch/*/encoder_rows_*.cpp) and for the baseline reference (gated_f32.cpp):
// one loop per activation, each a straight line the compiler vectorizes.
#pragma once

#include "epilogue_math.h"
#include "gated_f32.h"
#include "vector_expf.h"

#include <cstdint>

namespace edgevla {
namespace {

// a * sigmoid(a) = a / (1 + e^-a), e^-a held in [e^-40, e^80]: from a = 40 on, 1 + e^-a is 1 in float32 and
// silu is a; below a = -80 silu is under 2e-33 and is a * 0 (NaN for -inf, as a * sigmoid(a)); no step
// leaves the normal range. NaN stays NaN.
inline float gated_silu(float a) {
    float t = -a < 80.0f ? -a : 80.0f;
    t = t > -40.0f ? t : -40.0f;
    const float silu = a / (1.0f + vector_expf(t));
    return a < -80.0f ? a * 0.0f : silu;
}

template <GatedActivation A>
inline float gated_activate(float a) {
    if (A == GatedActivation::silu) return gated_silu(a);
    if (A == GatedActivation::gelu_tanh) return edgevla_gelu_tanh_f32(a);
    return edgevla_gelu_erf_f32(a);
}

template <GatedActivation A>
inline void gated_rows_of(const GatedF32Args& args, int64_t first, int64_t last) {
    const int64_t n = args.n;
    for (int64_t r = first; r < last; ++r) {
        const float* __restrict gate = args.gate + r * args.ld_gate;
        float* __restrict out = args.out + r * args.ld_out;
        if (args.value != nullptr) {
            const float* __restrict value = args.value + r * args.ld_value;
            for (int64_t j = 0; j < n; ++j) out[j] = gated_activate<A>(gate[j]) * value[j];
        } else {
            for (int64_t j = 0; j < n; ++j) out[j] = gated_activate<A>(gate[j]);
        }
    }
}

inline void gated_f32_rows(const GatedF32Args& args, int64_t first, int64_t last) {
    switch (args.activation) {
        case GatedActivation::silu: gated_rows_of<GatedActivation::silu>(args, first, last); break;
        case GatedActivation::gelu_tanh: gated_rows_of<GatedActivation::gelu_tanh>(args, first, last); break;
        case GatedActivation::gelu_erf: gated_rows_of<GatedActivation::gelu_erf>(args, first, last); break;
    }
}

}  // namespace
}  // namespace edgevla
