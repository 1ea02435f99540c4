// Rotary position embeddings (RoPE) over float32 rows, as Llama-style trunks
// rotate q and k: out = x * cos + rotate_half(x) * sin with rotate_half(x) =
// concat(-x[h:], x[:h]), h = D / 2, which the exporter writes as seven nodes.
//
// For every row r < m (cos and sin row p = r mod P: the tables cover the
// trailing (tokens, D) axes and repeat over batch and heads) and j < D:
//   j <  h: out[j] = x[j] * cos[p][j] - x[j + h] * sin[p][j]
//   j >= h: out[j] = x[j] * cos[p][j] + x[j - h] * sin[p][j]
// two products and one sum in float32, no contraction (-ffp-contract=off):
// exactly the graph's floats (its a + (-b) s is a - b s), on every ISA's copy
// (rotary_rows.h) and the baseline reference. Arguments are trusted (the
// bindings validate); out overlaps no input.
#pragma once

#include <cstdint>

namespace edgevla {

struct RotaryF32Args {
    int64_t m = 0, d = 0, p = 0;  // rows of x and out, their width (even), rows of cos and sin (P divides m)
    const float* x = nullptr;
    int64_t ld_x = 0;
    const float* cos = nullptr;
    int64_t ld_cos = 0;
    const float* sin = nullptr;
    int64_t ld_sin = 0;
    float* out = nullptr;
    int64_t ld_out = 0;
};

// Rows [first, last), on one kernel table.
using RotaryF32Kernel = void (*)(const RotaryF32Args& args, int64_t first, int64_t last);

// All rows on the active ISA, split over the thread pool when large.
void rotary_f32(const RotaryF32Args& args);
// The same loops compiled for the baseline CPU, one thread: identical floats.
void rotary_f32_ref(const RotaryF32Args& args);

}  // namespace edgevla
