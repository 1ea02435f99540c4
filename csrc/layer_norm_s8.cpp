// The scalar references of layer_norm_s8.h, and the dispatch of the fast
// kernels (layer_norm_s8_rows.h, compiled per ISA under arch/).
#include "layer_norm_s8.h"

#include "dispatch.h"
#include "epilogue_math.h"

#include <cfloat>
#include <cmath>

namespace edgevla {
namespace {

constexpr int64_t kLanes = 16;
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
constexpr float kInt8Min = -128.0f, kInt8Max = 127.0f;

float fold_lanes(float s[kLanes]) {
    for (int64_t width = kLanes / 2; width >= 1; width /= 2) {
        for (int64_t j = 0; j < width; ++j) s[j] = s[j] + s[j + width];
    }
    return s[0];
}

int8_t quantize_code(float y, float scale) {
    float v = y / scale;
    v = edgevla_min_f32(edgevla_max_f32(v, kInt8Min), kInt8Max);
    v = (v + kRoundMagic) - kRoundMagic;
    return static_cast<int8_t>(static_cast<int32_t>(v));
}

// The statistics of one row, one element at a time (the mean is 0 for RMSNorm); false when they are not finite.
bool ref_row_stats(const float* x, int64_t k, float epsilon, bool rms, float* mean_out, float* inv_out) {
    float mean = 0.0f;
    if (!rms) {
        float s[kLanes] = {};
        for (int64_t i = 0; i < k; ++i) s[i % kLanes] = s[i % kLanes] + x[i];
        mean = fold_lanes(s) / static_cast<float>(k);
    }
    float t[kLanes] = {};
    for (int64_t i = 0; i < k; ++i) {
        const float d = x[i] - mean;
        t[i % kLanes] = t[i % kLanes] + d * d;
    }
    const float var = fold_lanes(t) / static_cast<float>(k);
    if (!(var <= FLT_MAX) || !(std::fabs(mean) <= FLT_MAX)) return false;
    *mean_out = mean;
    *inv_out = 1.0f / std::sqrt(var + epsilon);
    return true;
}

// ((x - mean) * inv) * gamma[i] (+ beta[i]).
template <typename Args>
float ref_normalized(float x, float mean, float inv, const Args& args, int64_t i) {
    float y = (x - mean) * inv;
    y = y * args.gamma[i];
    if (args.beta != nullptr) y = y + args.beta[i];
    return y;
}

}  // namespace

int64_t layer_norm_s8(const LayerNormS8Args& args) { return active_isa().layer_norm_s8(args); }

int64_t layer_norm_f32(const LayerNormF32Args& args) { return active_isa().layer_norm_f32(args); }

void quantize_s8(const QuantizeS8Args& args) { active_isa().quantize_s8(args); }

int64_t layer_norm_s8_ref(const LayerNormS8Args& args) {
    for (int64_t row = 0; row < args.m; ++row) {
        const float* x = args.x + row * args.ldx;
        float mean, inv;
        if (!ref_row_stats(x, args.k, args.epsilon, args.rms, &mean, &inv)) return row;
        int8_t* q = args.q + row * args.ldq;
        for (int64_t i = 0; i < args.k; ++i) q[i] = quantize_code(ref_normalized(x[i], mean, inv, args, i), args.scale);
    }
    return -1;
}

int64_t layer_norm_f32_ref(const LayerNormF32Args& args) {
    for (int64_t row = 0; row < args.m; ++row) {
        const float* x = args.x + row * args.ldx;
        float mean, inv;
        if (!ref_row_stats(x, args.k, args.epsilon, args.rms, &mean, &inv)) return row;
        float* y = args.y + row * args.ldy;
        for (int64_t i = 0; i < args.k; ++i) y[i] = ref_normalized(x[i], mean, inv, args, i);
    }
    return -1;
}

void quantize_s8_ref(const QuantizeS8Args& args) {
    for (int64_t row = 0; row < args.m; ++row) {
        for (int64_t i = 0; i < args.k; ++i) {
            args.q[row * args.ldq + i] = quantize_code(args.x[row * args.ldx + i], args.scale);
        }
    }
}

}  // namespace edgevla
