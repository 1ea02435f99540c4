// A gated MLP's product, out = act(gate) * value, in one pass over float32 rows:
// what a Llama-style SwiGLU (silu(gate) * up), a GEGLU (gelu(a) * b) or a
// fused gate-up layer's two halves compute between their linear layers, and,
// with no value, the activation alone (nn.SiLU between two Linears). The
// exporter writes SiLU as Sigmoid and two Muls; run by NumPy that is four
// passes over the values and three temporaries per MLP.
//
// For every row r < m and column j < n:
//   a = gate[r * ld_gate + j]
//   silu:      e = exp(min(max(-a, -40), 80)) (the polynomial exp of
//              group_norm_rows.h); y = a / (1 + e); y = a * 0 below a = -80
//              (|silu| < 2e-33 there; -inf gives NaN, as a * sigmoid(a) does)
//   gelu_tanh: y = edgevla_gelu_tanh_f32(a)   (epilogue_math.h)
//   gelu_erf:  y = edgevla_gelu_erf_f32(a)
//   out[r * ld_out + j] = y * value[r * ld_value + j]   (y alone without a value)
// in float32 with no contraction (-ffp-contract=off; the GELUs' fmaf are
// explicit), so every ISA's copy (gated_rows.h, compiled per kernel table)
// and the baseline reference give identical floats. Within 2e-7 of
// a * sigmoid(a) relative to max(1, |a|). Arguments are trusted (the bindings
// validate); out overlaps neither input.
#pragma once

#include <cstdint>

namespace edgevla {

enum class GatedActivation { silu, gelu_tanh, gelu_erf };

struct GatedF32Args {
    int64_t m = 0, n = 0;
    const float* gate = nullptr;  // (m, n), row stride ld_gate
    int64_t ld_gate = 0;
    const float* value = nullptr;  // (m, n), row stride ld_value; or nullptr: the activation alone
    int64_t ld_value = 0;
    float* out = nullptr;  // (m, n), row stride ld_out
    int64_t ld_out = 0;
    GatedActivation activation = GatedActivation::silu;
};

// Rows [first, last), on one kernel table.
using GatedF32Kernel = void (*)(const GatedF32Args& args, int64_t first, int64_t last);

// All rows on the active ISA, split over the thread pool when large.
void gated_f32(const GatedF32Args& args);
// The same loops compiled for the baseline CPU, one thread: identical floats.
void gated_f32_ref(const GatedF32Args& args);

}  // namespace edgevla
