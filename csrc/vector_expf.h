// exp(t) for t in [-88, 88] as Cephes' expf, 2^k e^r with r = t - k ln 2 in two
// parts and a degree-7 polynomial for e^r, written with +, *, a float-to-int
// truncation and the exponent bits only, so that the compiler vectorizes it
// for every ISA and every copy gives the same floats (std::exp stays scalar).
// The caller clamps t; below -88 2^k leaves the normal range.
#pragma once

#include <cstdint>
#include <cstring>

namespace edgevla {
namespace {

inline float vector_expf(float t) {
    // k = floor(t log2(e) + 0.5): truncating a positive sum floors it (t log2(e) + 128.5 > 0 for t > -89).
    const int32_t k = static_cast<int32_t>(t * 1.44269504088896341f + 128.5f) - 128;
    const float kf = static_cast<float>(k);
    const float r = (t - kf * 0.693359375f) - kf * -2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
    float p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = (p * (r * r) + r) + 1.0f;
    const int32_t bits = (k + 127) << 23;  // 2^k
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    return er * two_k;
}

}  // namespace
}  // namespace edgevla
