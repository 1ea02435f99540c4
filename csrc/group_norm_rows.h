// The channels-last inner loops of the float32 GroupNorm (group_norm_f32.h),
// written once and compiled per ISA (arch/*/group_norm_*.cpp) so that each
// kernel table has a copy vectorized over the channels: every lane is one
// channel's accumulator or value, so vectorizing reorders nothing, and every
// copy gives the same doubles and floats (-ffp-contract=off, no fast-math).
#pragma once

#include <cstdint>

namespace edgevla {
namespace {

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

// y[r][j] = (x[r][j] - mean[j]) * factor[j] + shift[j], then max(., 0) when relu (v > 0 ? v : 0).
inline void group_norm_apply_rows(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                                  const float* factor, const float* shift, bool relu) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* in = x + r * c;  // may be y itself (in place): each element is read before it is written
        float* out = y + r * c;
        if (relu) {
            for (int64_t j = 0; j < c; ++j) {
                const float v = (in[j] - mean[j]) * factor[j] + shift[j];
                out[j] = v > 0.0f ? v : 0.0f;
            }
        } else {
            for (int64_t j = 0; j < c; ++j) out[j] = (in[j] - mean[j]) * factor[j] + shift[j];
        }
    }
}

}  // namespace
}  // namespace edgevla
