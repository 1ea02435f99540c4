// The channels-last inner loops of the float32 GroupNorm (group_norm_f32.h),
// written once and compiled per ISA (arch/*/group_norm_*.cpp) so that each
// kernel table has a copy vectorized over the channels: every lane is one
// channel's accumulator or value, so vectorizing reorders nothing, and every
// copy gives the same doubles and floats (-ffp-contract=off, no fast-math).
#pragma once

#include "group_norm_f32.h"
#include "vector_expf.h"

#include <cstdint>
#include <cstring>

namespace edgevla {
namespace {

// Mish, v tanh(log(1 + e^v)) = v n / (n + 2) with n = e^v (e^v + 2): one exp, not exp, log1p and tanh.
// e^v here is vector_expf (vector_expf.h), which every ISA's copy vectorizes (std::exp kept Mish scalar:
// 3.6 of a (16, 64) GroupNorm's 5.8 us) and all compute the same floats. v is
// held in [-40, 20] for the exp: past 20, n / (n + 2) is 1 in float32 and Mish is v; below -40 Mish is
// v 0 (its magnitude is under 2e-16 there; -inf gives NaN, as v tanh(softplus(v)) does), and no step
// (e^v e^v >= 1.8e-35) leaves the normal range, where subnormals would slow the x86 copies tenfold. NaN
// stays NaN.
inline float group_norm_mish(float v) {
    float t = v < 20.0f ? v : 20.0f;
    t = t > -40.0f ? t : -40.0f;
    const float e = vector_expf(t);
    const float n = e * (e + 2.0f);
    const float mish = v * (n / (n + 2.0f));
    return v > 20.0f ? v : (v < -40.0f ? v * 0.0f : mish);
}

// sums[j] = sum over rows r of x[r][j] (mean == nullptr), or of (x[r][j] - mean[j])^2 in double; rows in order.
inline void group_norm_sums_rows(const float* x, int64_t rows, int64_t c, const float* mean, double* sums) {
    for (int64_t j = 0; j < c; ++j) sums[j] = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
        const float* __restrict row = x + r * c;
        double* __restrict s = sums;
        if (mean != nullptr) {
            for (int64_t j = 0; j < c; ++j) {
                const double d = static_cast<double>(row[j] - mean[j]);
                s[j] += d * d;
            }
        } else {
            for (int64_t j = 0; j < c; ++j) s[j] += static_cast<double>(row[j]);
        }
    }
}

// y[r][j] = (x[r][j] - mean[j]) * factor[j] + shift[j], then the activation: ReLU (v > 0 ? v : 0), or Mish
// (group_norm_mish).
inline void group_norm_apply_rows(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                                  const float* factor, const float* shift, GroupNormActivation act) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* in = x + r * c;  // may be y itself (in place): each element is read before it is written
        float* out = y + r * c;
        if (act == GroupNormActivation::relu) {
            for (int64_t j = 0; j < c; ++j) {
                const float v = (in[j] - mean[j]) * factor[j] + shift[j];
                out[j] = v > 0.0f ? v : 0.0f;
            }
        } else if (act == GroupNormActivation::mish) {
            for (int64_t j = 0; j < c; ++j) out[j] = group_norm_mish((in[j] - mean[j]) * factor[j] + shift[j]);
        } else {
            for (int64_t j = 0; j < c; ++j) out[j] = (in[j] - mean[j]) * factor[j] + shift[j];
        }
    }
}

}  // namespace
}  // namespace edgevla
