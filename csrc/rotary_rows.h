// The rows of rotary_f32.h, written once and compiled per kernel table
// (arch/*/encoder_rows_*.cpp) and for the baseline reference (rotary_f32.cpp).
#pragma once

#include "rotary_f32.h"

#include <cstdint>

namespace edgevla {
namespace {

inline void rotary_f32_rows(const RotaryF32Args& args, int64_t first, int64_t last) {
    const int64_t h = args.d / 2;
    for (int64_t r = first; r < last; ++r) {
        const int64_t t = r % args.p;
        const float* __restrict x = args.x + r * args.ld_x;
        const float* __restrict c = args.cos + t * args.ld_cos;
        const float* __restrict s = args.sin + t * args.ld_sin;
        float* __restrict out = args.out + r * args.ld_out;
        for (int64_t j = 0; j < h; ++j) out[j] = x[j] * c[j] - x[j + h] * s[j];
        for (int64_t j = h; j < 2 * h; ++j) out[j] = x[j] * c[j] + x[j - h] * s[j];
    }
}

}  // namespace
}  // namespace edgevla
