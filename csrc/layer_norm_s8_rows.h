// The fast LayerNorm + int8 quantization rows of layer_norm_s8.h, written
// once in plain C++ and compiled by each ISA's file (arch/*/layer_norm_s8_*.cpp)
// with its own flags: full 16-wide blocks with fixed-length inner loops, which
// the compiler turns into that ISA's vectors, then the tail. Those files are
// also compiled with -fno-trapping-math, so that the clamps become vector
// max/min; that flag changes no result, only what the compiler may assume
// about floating-point exceptions. The operations and their order are the
// reference's (layer_norm_s8.cpp), so the codes are identical.
//
// Anonymous namespace: every file that includes this gets a private copy, so
// the linker can never hand an AVX-512 instance to baseline code.
#pragma once

#include "layer_norm_s8.h"

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace edgevla {
namespace {

constexpr int64_t kNormLanes = 16;
constexpr float kNormRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds half to even
constexpr float kNormInt8Min = -128.0f, kNormInt8Max = 127.0f;

// s[0] after folding s[j] += s[j + w] for w = 8, 4, 2, 1.
inline float fold_norm_lanes(float s[kNormLanes]) {
    for (int64_t width = kNormLanes / 2; width >= 1; width /= 2) {
        for (int64_t j = 0; j < width; ++j) s[j] = s[j] + s[j + width];
    }
    return s[0];
}

// clamp(round_half_even(v / scale), -128, 127) as an int8, NaN -> -128.
inline int8_t static_code(float v, float scale) {
    v = v / scale;
    v = v > kNormInt8Min ? v : kNormInt8Min;
    v = v < kNormInt8Max ? v : kNormInt8Max;
    v = (v + kNormRoundMagic) - kNormRoundMagic;
    return static_cast<int8_t>(static_cast<int32_t>(v));
}

// mean (0 for RMSNorm) and 1 / sqrt(var + epsilon) of one row; false when they are not finite.
inline bool norm_row_stats(const float* __restrict x, int64_t k, float epsilon, bool rms, float* mean_out,
                           float* inv_out) {
    const int64_t full = k / kNormLanes * kNormLanes;
    float mean = 0.0f;
    if (!rms) {
        float s[kNormLanes] = {};
        for (int64_t i = 0; i < full; i += kNormLanes) {
            for (int64_t j = 0; j < kNormLanes; ++j) s[j] = s[j] + x[i + j];
        }
        for (int64_t i = full; i < k; ++i) s[i - full] = s[i - full] + x[i];
        mean = fold_norm_lanes(s) / static_cast<float>(k);
    }
    float t[kNormLanes] = {};
    for (int64_t i = 0; i < full; i += kNormLanes) {
        for (int64_t j = 0; j < kNormLanes; ++j) {
            const float d = x[i + j] - mean;
            t[j] = t[j] + d * d;
        }
    }
    for (int64_t i = full; i < k; ++i) {
        const float d = x[i] - mean;
        t[i - full] = t[i - full] + d * d;
    }
    const float var = fold_norm_lanes(t) / static_cast<float>(k);
    if (!(var <= FLT_MAX) || !(std::fabs(mean) <= FLT_MAX)) return false;
    *mean_out = mean;
    *inv_out = 1.0f / std::sqrt(var + epsilon);
    return true;
}

// Every field is copied into a local first: the int8 stores may alias
// anything (char aliasing), so the compiler would otherwise reload a.k after
// each store and could not vectorize.
inline int64_t layer_norm_s8_rows(const LayerNormS8Args& a) {
    const float* __restrict gamma = a.gamma;
    const float* __restrict beta = a.beta;
    const float scale = a.scale, epsilon = a.epsilon;
    const bool rms = a.rms;
    const int64_t m = a.m, k = a.k, ldx = a.ldx, ldq = a.ldq;
    for (int64_t row = 0; row < m; ++row) {
        const float* __restrict x = a.x + row * ldx;
        int8_t* __restrict q = a.q + row * ldq;
        float mean, inv;
        if (!norm_row_stats(x, k, epsilon, rms, &mean, &inv)) return row;
        if (beta != nullptr) {
            for (int64_t i = 0; i < k; ++i) q[i] = static_code(((x[i] - mean) * inv) * gamma[i] + beta[i], scale);
        } else {
            for (int64_t i = 0; i < k; ++i) q[i] = static_code(((x[i] - mean) * inv) * gamma[i], scale);
        }
    }
    return -1;
}

inline int64_t layer_norm_f32_rows(const LayerNormF32Args& a) {
    const float* __restrict gamma = a.gamma;
    const float* __restrict beta = a.beta;
    const float epsilon = a.epsilon;
    const bool rms = a.rms;
    const int64_t m = a.m, k = a.k, ldx = a.ldx, ldy = a.ldy;
    for (int64_t row = 0; row < m; ++row) {
        const float* __restrict x = a.x + row * ldx;
        float* __restrict y = a.y + row * ldy;
        float mean, inv;
        if (!norm_row_stats(x, k, epsilon, rms, &mean, &inv)) return row;
        if (beta != nullptr) {
            for (int64_t i = 0; i < k; ++i) y[i] = ((x[i] - mean) * inv) * gamma[i] + beta[i];
        } else {
            for (int64_t i = 0; i < k; ++i) y[i] = ((x[i] - mean) * inv) * gamma[i];
        }
    }
    return -1;
}

inline void quantize_s8_rows(const QuantizeS8Args& a) {
    const float scale = a.scale;
    const int64_t m = a.m, k = a.k, ldx = a.ldx, ldq = a.ldq;
    for (int64_t row = 0; row < m; ++row) {
        const float* __restrict x = a.x + row * ldx;
        int8_t* __restrict q = a.q + row * ldq;
        for (int64_t i = 0; i < k; ++i) q[i] = static_code(x[i], scale);
    }
}

}  // namespace
}  // namespace edgevla
