// LayerNorm fused with static int8 quantization: what a W8A8 graph spells
// LayerNormalization -> QuantizeLinear(per-tensor scale, zero point 0), in one
// pass over the rows, with no float32 LayerNorm output written to memory; and
// that quantization alone (QuantizeLinear of any float32 rows).
//
// For each row x[0..K) (epsilon, gamma[K], beta[K] or none, scale > 0):
//   sum(v)  = 16 float partial sums, lane j adding v[i] for i = j mod 16 in
//             ascending i, then folded s[j] += s[j + w] for w = 8, 4, 2, 1
//   mean    = sum(x) / K
//   d[i]    = x[i] - mean
//   var     = sum(d * d) / K
//   inv     = 1 / sqrt(var + epsilon)
//   y[i]    = (d[i] * inv) * gamma[i] (+ beta[i])
//   q[i]    = clamp(round_half_even(y[i] / scale), -128, 127)
// RMSNorm (rms = true) is the same with mean = 0: no first pass, d[i] = x[i],
// var = sum(x * x) / K (the mean square), y[i] = (x[i] * inv) * gamma[i].
// every operation in float32, in exactly this order (no fused multiply-add:
// the library is compiled with -ffp-contract=off), so the fast kernel and the
// scalar reference give identical codes; the tests compare them exactly.
// round_half_even is the default rounding mode's (x + 1.5 * 2^23) - 1.5 * 2^23
// on the clamped value. A NaN y (NaN in gamma or beta) quantizes to -128.
//
// The quantization alone (quantize_s8) is the last line on x itself:
//   q[i]    = clamp(round_half_even(x[i] / scale), -128, 127)
//
// The LayerNorm kernels return -1, or the first row whose statistics are not finite (a NaN or
// an infinity in the row, or a sum that overflows); that row's codes and the
// later rows' are then unwritten. Arguments are trusted (the bindings validate).
#pragma once

#include <cstdint>

namespace edgevla {

struct LayerNormS8Args {
    int64_t m = 0, k = 0;
    const float* x = nullptr;  // (m, k), row stride ldx
    int64_t ldx = 0;
    const float* gamma = nullptr;  // [k]
    const float* beta = nullptr;   // [k] or nullptr
    float epsilon = 1e-5f;
    bool rms = false;  // RMSNorm: no mean subtracted
    float scale = 1.0f;  // the QuantizeLinear's per-tensor scale, > 0
    int8_t* q = nullptr;  // (m, k), row stride ldq
    int64_t ldq = 0;
};

struct QuantizeS8Args {
    int64_t m = 0, k = 0;
    const float* x = nullptr;  // (m, k), row stride ldx
    int64_t ldx = 0;
    float scale = 1.0f;  // > 0
    int8_t* q = nullptr;  // (m, k), row stride ldq
    int64_t ldq = 0;
};

// LayerNorm alone, float32 out (a LayerNormalization whose output is read as
// floats): y[i] as above, written to y, with the same statistics.
struct LayerNormF32Args {
    int64_t m = 0, k = 0;
    const float* x = nullptr;  // (m, k), row stride ldx
    int64_t ldx = 0;
    const float* gamma = nullptr;  // [k]
    const float* beta = nullptr;   // [k] or nullptr
    float epsilon = 1e-5f;
    bool rms = false;  // RMSNorm: no mean subtracted
    float* y = nullptr;  // (m, k), row stride ldy
    int64_t ldy = 0;
};

// The fast kernels, on the active ISA (dispatch.h): the same arithmetic laid
// out in 16-wide blocks (layer_norm_s8_rows.h) that the compiler vectorizes
// for each ISA's flags.
int64_t layer_norm_s8(const LayerNormS8Args& args);
void quantize_s8(const QuantizeS8Args& args);
int64_t layer_norm_f32(const LayerNormF32Args& args);

// The scalar references: one element at a time, as the comment above reads.
int64_t layer_norm_s8_ref(const LayerNormS8Args& args);
void quantize_s8_ref(const QuantizeS8Args& args);
int64_t layer_norm_f32_ref(const LayerNormF32Args& args);

}  // namespace edgevla
