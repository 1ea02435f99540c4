// The channels-last inner loops of the float32 GroupNorm (group_norm_f32.h),
// written once and compiled per ISA (arch/*/group_norm_*.cpp) so that each
// kernel table has a copy vectorized over the channels: every lane is one
// channel's accumulator or value, so vectorizing reorders nothing, and every
// copy gives the same doubles and floats (-ffp-contract=off, no fast-math).
#pragma once

#include "group_norm_f32.h"

#include <cstdint>
#include <cstring>

namespace edgevla {
namespace {

// Mish, v tanh(log(1 + e^v)) = v n / (n + 2) with n = e^v (e^v + 2): one exp, not exp, log1p and tanh.
// e^v here is Cephes' expf (2^k e^r, r = v - k ln 2 in two parts, a degree-7 polynomial for e^r) written
// with +, *, a float-to-int truncation and the exponent bits only, so that every ISA's copy vectorizes it
// (std::exp kept Mish scalar: 3.6 of a (16, 64) GroupNorm's 5.8 us) and all compute the same floats. v is
// held in [-40, 20] for the exp: past 20, n / (n + 2) is 1 in float32 and Mish is v; below -40 Mish is
// v 0 (its magnitude is under 2e-16 there; -inf gives NaN, as v tanh(softplus(v)) does), and no step
// (e^v e^v >= 1.8e-35) leaves the normal range, where subnormals would slow the x86 copies tenfold. NaN
// stays NaN.
inline float group_norm_mish(float v) {
    float t = v < 20.0f ? v : 20.0f;
    t = t > -40.0f ? t : -40.0f;
    // k = floor(t log2(e) + 0.5): truncating a positive sum floors it (t log2(e) + 0.5 > -58).
    const int32_t k = static_cast<int32_t>(t * 1.44269504088896341f + 128.5f) - 128;
    const float kf = static_cast<float>(k);
    const float r = (t - kf * 0.693359375f) - kf * -2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
    float p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = (p * (r * r) + r) + 1.0f;
    const int32_t bits = (k + 127) << 23;  // 2^k, k in [-58, 29]
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    const float e = er * two_k;
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
