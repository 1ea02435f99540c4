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

}  // namespace

int64_t layer_norm_s8(const LayerNormS8Args& args) { return active_isa().layer_norm_s8(args); }

void quantize_s8(const QuantizeS8Args& args) { active_isa().quantize_s8(args); }

int64_t layer_norm_s8_ref(const LayerNormS8Args& args) {
    const int64_t k = args.k;
    for (int64_t row = 0; row < args.m; ++row) {
        const float* x = args.x + row * args.ldx;
        float s[kLanes] = {};
        for (int64_t i = 0; i < k; ++i) s[i % kLanes] = s[i % kLanes] + x[i];
        const float mean = fold_lanes(s) / static_cast<float>(k);
        float t[kLanes] = {};
        for (int64_t i = 0; i < k; ++i) {
            const float d = x[i] - mean;
            t[i % kLanes] = t[i % kLanes] + d * d;
        }
        const float var = fold_lanes(t) / static_cast<float>(k);
        if (!(var <= FLT_MAX) || !(std::fabs(mean) <= FLT_MAX)) return row;
        const float inv = 1.0f / std::sqrt(var + args.epsilon);
        int8_t* q = args.q + row * args.ldq;
        for (int64_t i = 0; i < k; ++i) {
            float y = (x[i] - mean) * inv;
            y = y * args.gamma[i];
            if (args.beta != nullptr) y = y + args.beta[i];
            q[i] = quantize_code(y, args.scale);
        }
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
