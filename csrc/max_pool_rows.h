// The float32 max pool over a convolution's windows (windows.h), output
// positions [begin, end) of a 3-d geometry (as_3d), written once and compiled
// per ISA (arch/*/max_pool_*.cpp) with -fno-trapping-math, so that each table
// has a copy vectorized over the channels (the output position's channels stay
// in L1 across the window's taps).
//
// Each output is the lowest value (-inf) folded with every tap inside x, in
// (k0, k1, k2) order, by larger(): the maximum, or NaN when either is NaN
// (numpy.maximum's rule), as a select so that it vectorizes. Every ISA's copy
// and the baseline one give identical results.
#pragma once

#include "windows.h"

#include <cstdint>
#include <limits>

namespace edgevla {
namespace {

inline float pool_larger(float m, float v) {
    const float plain = v > m ? v : m;
    return (v != v || m != m) ? v + m : plain;  // a sum with a NaN is NaN
}

// One output position: its channels set to -inf, then each tap inside x folded in.
inline void pool_position(const WindowGeometry& g, const float* image, int64_t o0, int64_t o1, int64_t o2,
                          float* __restrict out) {
    const int64_t c = g.channels;
    for (int64_t j = 0; j < c; ++j) out[j] = -std::numeric_limits<float>::infinity();
    for (int64_t k0 = 0; k0 < g.kernel[0]; ++k0) {
        const int64_t i0 = o0 * g.stride[0] + k0 * g.dilation[0] - g.pad_begin[0];
        if (i0 < 0 || i0 >= g.in[0]) continue;
        for (int64_t k1 = 0; k1 < g.kernel[1]; ++k1) {
            const int64_t i1 = o1 * g.stride[1] + k1 * g.dilation[1] - g.pad_begin[1];
            if (i1 < 0 || i1 >= g.in[1]) continue;
            for (int64_t k2 = 0; k2 < g.kernel[2]; ++k2) {
                const int64_t i2 = o2 * g.stride[2] + k2 * g.dilation[2] - g.pad_begin[2];
                if (i2 < 0 || i2 >= g.in[2]) continue;
                const float* __restrict v = image + ((i0 * g.in[1] + i1) * g.in[2] + i2) * c;
                for (int64_t j = 0; j < c; ++j) out[j] = pool_larger(out[j], v[j]);
            }
        }
    }
}

inline void max_pool_f32_rows(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end) {
    const int64_t c = g.channels, image_size = g.in[0] * g.in[1] * g.in[2] * c;
    OutputPosition at(g, begin);
    for (int64_t position = begin; position < end; ++position, at.next(g)) {
        pool_position(g, x + at.n * image_size, at.o0, at.o1, at.o2, y + position * c);
    }
}

}  // namespace
}  // namespace edgevla
