/* The float arithmetic of the GEMM epilogue and of per-token quantization,
 * written once as scalar C, operation by operation. Every SIMD kernel mirrors
 * these sequences with the same operations in the same order, and the kernels
 * are compiled with -ffp-contract=off, so a SIMD kernel and the scalar
 * reference produce bit-identical floats: the tests compare them exactly.
 * The polynomials (Horner steps) are written with fmaf, one rounding per
 * step; every SIMD kernel uses its fused multiply-add there (VFMADD, FMLA),
 * which rounds the same way, and nowhere else: half the operations of
 * separate multiply and add, so the GELU epilogues cost about half as much.
 *
 * Everything here is `static inline`, so each translation unit (including
 * those compiled with -mavx512f or +dotprod) has its own private copy and the
 * linker can never hand an AVX-512 instance to the baseline code.
 *
 * Plain C, and every function is also a CUDA device function
 * (EDGEVLA_HOST_DEVICE): the CUDA kernels' epilogues call these same
 * sequences, compiled with --fmad=false so that nvcc, like the host compilers
 * under -ffp-contract=off, contracts nothing but the explicit fmaf calls
 * (fma.rn.f32); float `/` is IEEE division there by default (div.rn.f32).
 * tests/test_cuda_host.py reads the PTX to hold nvcc to that. */
#ifndef EDGEVLA_EPILOGUE_MATH_H
#define EDGEVLA_EPILOGUE_MATH_H

#include "gemm_s8s8.h" /* edgevla_activation */

#include <math.h> /* fmaf */

#ifdef __CUDACC__
#define EDGEVLA_HOST_DEVICE __host__ __device__
#else
#define EDGEVLA_HOST_DEVICE
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* max/min with the x86 MAXPS/MINPS semantics: the second operand is returned
 * when the comparison is false, including for NaN and for -0 vs +0. NEON's
 * FMAX differs on NaN, so the NEON kernels use compare + select instead. */
static inline EDGEVLA_HOST_DEVICE float edgevla_max_f32(float a, float b) { return a > b ? a : b; }
static inline EDGEVLA_HOST_DEVICE float edgevla_min_f32(float a, float b) { return a < b ? a : b; }

/* tanh as a rational function x * P(x^2) / Q(x^2) on (-c, c), the
 * approximation of Eigen's generic_fast_tanh_float, and exactly +-1 from +-c
 * on (tanh(c) is within 3e-7 of 1; with fused Horner steps P/Q alone ends 2
 * ulp short of 1 at c): within a few ulp of tanh, built from +, *, /, fma and
 * selects only, so every ISA can evaluate it identically. */
#define EDGEVLA_TANH_CLAMP 7.90531110763549805f
#define EDGEVLA_TANH_A1 4.89352455891786e-03f
#define EDGEVLA_TANH_A3 6.37261928875436e-04f
#define EDGEVLA_TANH_A5 1.48572235717979e-05f
#define EDGEVLA_TANH_A7 5.12229709037114e-08f
#define EDGEVLA_TANH_A9 -8.60467152213735e-11f
#define EDGEVLA_TANH_A11 2.00018790482477e-13f
#define EDGEVLA_TANH_A13 -2.76076847742355e-16f
#define EDGEVLA_TANH_B0 4.89352518554385e-03f
#define EDGEVLA_TANH_B2 2.26843463243900e-03f
#define EDGEVLA_TANH_B4 1.18534705686654e-04f
#define EDGEVLA_TANH_B6 1.19825839466702e-06f

static inline EDGEVLA_HOST_DEVICE float edgevla_tanh_f32(float x) {
    x = edgevla_min_f32(edgevla_max_f32(x, -EDGEVLA_TANH_CLAMP), EDGEVLA_TANH_CLAMP);
    const float x2 = x * x;
    float p = fmaf(x2, EDGEVLA_TANH_A13, EDGEVLA_TANH_A11);
    p = fmaf(x2, p, EDGEVLA_TANH_A9);
    p = fmaf(x2, p, EDGEVLA_TANH_A7);
    p = fmaf(x2, p, EDGEVLA_TANH_A5);
    p = fmaf(x2, p, EDGEVLA_TANH_A3);
    p = fmaf(x2, p, EDGEVLA_TANH_A1);
    p = x * p;
    float q = fmaf(x2, EDGEVLA_TANH_B6, EDGEVLA_TANH_B4);
    q = fmaf(x2, q, EDGEVLA_TANH_B2);
    q = fmaf(x2, q, EDGEVLA_TANH_B0);
    const float r = p / q;
    return x >= EDGEVLA_TANH_CLAMP ? 1.0f : (x <= -EDGEVLA_TANH_CLAMP ? -1.0f : r);
}

/* GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
#define EDGEVLA_GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define EDGEVLA_GELU_CUBIC 0.044715f

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_tanh_inner_f32(float x) {
    const float cube = (x * x) * x;
    return EDGEVLA_GELU_SQRT_2_OVER_PI * (x + EDGEVLA_GELU_CUBIC * cube);
}

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_tanh_outer_f32(float x, float t) { return (0.5f * x) * (1.0f + t); }

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_tanh_f32(float x) {
    return edgevla_gelu_tanh_outer_f32(x, edgevla_tanh_f32(edgevla_gelu_tanh_inner_f32(x)));
}

/* GELU, exact form x * Phi(x) = x * 0.5 * (1 + erf(x / sqrt 2)), evaluated as
 *   u = min(x * x, 36)
 *   h = x * s(u)                 s: degree-6 polynomial in u, Horner with fmaf, below
 *   t = tanh(h)                  edgevla_tanh_f32
 *   v = x * fmaf(0.5, t, 0.5)
 * because Phi(x) = (1 + tanh(a(x) / 2)) / 2 with a = logit(Phi), odd and
 * smooth: a(x) / 2 = x * s(x^2). s is the least-squares fit (weighted towards
 * minimax) on |x| <= 6 that edgevla/runtime/activations.py uses, halved;
 * beyond |x| = 6 tanh has reached +-1 in float32. Within 2.2e-7 of the exact
 * value relative to max(1, |x|) (tests/test_kernels_int8.py measures it
 * against math.erf). x * x overflowing to inf is held at 36; NaN stays NaN,
 * -inf gives NaN and +inf gives +inf, as x * Phi(x) does. */
#define EDGEVLA_GELU_ERF_U_MAX 36.0f
#define EDGEVLA_GELU_ERF_S0 0.7978853075818515f
#define EDGEVLA_GELU_ERF_S1 0.03633206480652851f
#define EDGEVLA_GELU_ERF_S2 -3.1741427596756356e-05f
#define EDGEVLA_GELU_ERF_S3 -5.560397099001033e-05f
#define EDGEVLA_GELU_ERF_S4 4.012604622895903e-06f
#define EDGEVLA_GELU_ERF_S5 -1.3573073726008966e-07f
#define EDGEVLA_GELU_ERF_S6 1.846670467594924e-09f

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_erf_inner_f32(float x) {
    const float u = edgevla_min_f32(x * x, EDGEVLA_GELU_ERF_U_MAX);
    float s = fmaf(u, EDGEVLA_GELU_ERF_S6, EDGEVLA_GELU_ERF_S5);
    s = fmaf(u, s, EDGEVLA_GELU_ERF_S4);
    s = fmaf(u, s, EDGEVLA_GELU_ERF_S3);
    s = fmaf(u, s, EDGEVLA_GELU_ERF_S2);
    s = fmaf(u, s, EDGEVLA_GELU_ERF_S1);
    s = fmaf(u, s, EDGEVLA_GELU_ERF_S0);
    return x * s;
}

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_erf_outer_f32(float x, float t) { return x * fmaf(0.5f, t, 0.5f); }

static inline EDGEVLA_HOST_DEVICE float edgevla_gelu_erf_f32(float x) {
    return edgevla_gelu_erf_outer_f32(x, edgevla_tanh_f32(edgevla_gelu_erf_inner_f32(x)));
}

static inline EDGEVLA_HOST_DEVICE float edgevla_relu_f32(float x) { return edgevla_max_f32(x, 0.0f); }

/* The epilogue's activation on one value: what every kernel's vector version
 * mirrors. Both GELU forms are tanh between an inner and an outer step, and
 * share one tanh here: the CUDA kernels unroll their epilogue over every
 * output a thread holds, and inlining two tanh (two IEEE divisions) a value
 * made nvcc spend ~5x as long on the GEMM launchers (cicc + ptxas 104 s -> 17 s
 * for gemm_s8s8_launch.cu at sm_87). */
static inline EDGEVLA_HOST_DEVICE float edgevla_activate_f32(edgevla_activation activation, float v) {
    if (activation == EDGEVLA_ACTIVATION_RELU) return edgevla_relu_f32(v);
    const int erf_form = activation == EDGEVLA_ACTIVATION_GELU_ERF;
    if (!erf_form && activation != EDGEVLA_ACTIVATION_GELU_TANH) return v; /* EDGEVLA_ACTIVATION_NONE */
    const float t = edgevla_tanh_f32(erf_form ? edgevla_gelu_erf_inner_f32(v) : edgevla_gelu_tanh_inner_f32(v));
    return erf_form ? edgevla_gelu_erf_outer_f32(v, t) : edgevla_gelu_tanh_outer_f32(v, t);
}

/* The W8A8 dequantization of one int32 accumulator (gemm_s8s8.h): the two
 * scales are multiplied first, then the converted accumulator by their
 * product. Bias, activation and residual follow in the caller. */
static inline EDGEVLA_HOST_DEVICE float edgevla_dequant_s8_f32(int32_t acc, float a_scale, float w_scale) {
    return (float)acc * (a_scale * w_scale);
}

/* The same after the conversion, for code that receives the accumulator
 * already converted to float with round-to-nearest, as the C cast above
 * does (CUTLASS's epilogue visitors convert their inputs first). */
static inline EDGEVLA_HOST_DEVICE float edgevla_dequant_converted_f32(float acc, float a_scale, float w_scale) {
    return acc * (a_scale * w_scale);
}

/* Dynamic symmetric per-token quantization of one row x[0..K):
 *   amax  = max |x[k]|                  (the row must be finite)
 *   scale = amax / 127
 *   inv   = amax >= EDGEVLA_QUANT_MIN_AMAX ? 127 / amax : 0
 *   q[k]  = clamp(round_half_even(x[k] * inv), -127, 127)
 * so x ~= q * scale. -128 is never produced (symmetric range). Rows whose
 * amax is below EDGEVLA_QUANT_MIN_AMAX (2^-100, including all-zero rows)
 * quantize to zeros, which keeps 127 / amax finite. */
#define EDGEVLA_QUANT_MIN_AMAX 7.8886090522101181e-31f /* 2^-100 */
#define EDGEVLA_QUANT_QMAX 127.0f

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLA_EPILOGUE_MATH_H */
