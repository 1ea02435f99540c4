#include "group_norm_f32.h"

#include <cmath>
#include <vector>

namespace edgevla {
namespace {

template <GroupNormActivation kActivation>
inline float activate(float v) {
    if constexpr (kActivation == GroupNormActivation::relu) return v > 0.0f ? v : 0.0f;
    if constexpr (kActivation == GroupNormActivation::mish) {
        // v tanh(log(1 + e^v)) = v n / (n + 2) with n = e^v (e^v + 2): one exp, not exp, log1p and tanh.
        // Past v = 20, n / (n + 2) is 1 in float32 (and n would overflow from v = 44).
        if (v > 20.0f) return v;
        const float e = std::exp(v);
        const float n = e * (e + 2.0f);
        return v * (n / (n + 2.0f));
    }
    return v;
}

// y = act((x - mean) * factor + shift) for one sample, the activation a template argument so that
// the loops carry no switch.
template <GroupNormActivation kActivation>
void normalize(const GroupNormF32Args& a, const float* x, const float* mean, const float* factor, float* y) {
    if (a.channels_last) {
        for (int64_t p = 0; p < a.positions; ++p) {
            const float* in = x + p * a.channels;
            float* out = y + p * a.channels;
            for (int64_t c = 0; c < a.channels; ++c) {
                out[c] = activate<kActivation>((in[c] - mean[c]) * factor[c] + a.shift[c]);
            }
        }
    } else {
        for (int64_t c = 0; c < a.channels; ++c) {
            const float* in = x + c * a.positions;
            float* out = y + c * a.positions;
            for (int64_t p = 0; p < a.positions; ++p) {
                out[p] = activate<kActivation>((in[p] - mean[c]) * factor[c] + a.shift[c]);
            }
        }
    }
}

// Per-channel sums of f(x) over the positions of one sample, in double.
template <typename F>
void channel_sums(const GroupNormF32Args& a, const float* x, F f, std::vector<double>& sums) {
    sums.assign(static_cast<size_t>(a.channels), 0.0);
    if (a.channels_last) {
        for (int64_t p = 0; p < a.positions; ++p) {
            const float* row = x + p * a.channels;
            for (int64_t c = 0; c < a.channels; ++c) sums[c] += f(row[c], c);
        }
    } else {
        for (int64_t c = 0; c < a.channels; ++c) {
            const float* plane = x + c * a.positions;
            double sum = 0.0;
            for (int64_t p = 0; p < a.positions; ++p) sum += f(plane[p], c);
            sums[c] = sum;
        }
    }
}

}  // namespace

void group_norm_f32(const GroupNormF32Args& a) {
    const int64_t per_group = a.channels / a.groups;
    const double count = static_cast<double>(a.positions * per_group);
    std::vector<double> sums;
    std::vector<float> mean(static_cast<size_t>(a.channels)), factor(static_cast<size_t>(a.channels));
    for (int64_t n = 0; n < a.batch; ++n) {
        const float* x = a.x + n * a.channels * a.positions;
        float* y = a.y + n * a.channels * a.positions;
        channel_sums(a, x, [](float v, int64_t) { return static_cast<double>(v); }, sums);
        for (int64_t g = 0; g < a.groups; ++g) {
            double total = 0.0;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) mean[c] = static_cast<float>(total / count);
        }
        channel_sums(a, x, [&](float v, int64_t c) {
            const double d = static_cast<double>(v - mean[c]);
            return d * d;
        }, sums);
        for (int64_t g = 0; g < a.groups; ++g) {
            double total = 0.0;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
            const double inv = 1.0 / std::sqrt(total / count + static_cast<double>(a.epsilon));
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
                factor[c] = static_cast<float>(inv * static_cast<double>(a.scale[c]));
            }
        }
        using Act = GroupNormActivation;
        switch (a.activation) {
            case Act::none: normalize<Act::none>(a, x, mean.data(), factor.data(), y); break;
            case Act::relu: normalize<Act::relu>(a, x, mean.data(), factor.data(), y); break;
            case Act::mish: normalize<Act::mish>(a, x, mean.data(), factor.data(), y); break;
        }
    }
}

}  // namespace edgevla
