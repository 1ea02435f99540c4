/* The int8 x int8 GEMM contract that every kernel of edgevla implements: the
 * scalar reference (gemm_ref.h), later SIMD kernels and CUDA kernels. Plain C
 * so that C++, CUDA and a future C ABI can all include it.
 *
 * Layout (the nn.Linear convention, so weights need no transpose):
 *   A  int8  (M, K) row-major activations, row stride lda >= K elements
 *   W  int8  (N, K) row-major weights,     row stride ldw >= K elements
 *   C        (M, N) row-major output,      row stride ldc >= N elements
 *   acc[m][n] = sum_k A[m][k] * W[n][k], accumulated in int32.
 *
 * Callers validate; kernels do not. Every kernel assumes M, N, K >= 0,
 * K <= EDGEVLA_GEMM_S8S8_MAX_K, the strides above, naturally aligned int32 and
 * float pointers, and that C overlaps none of the inputs. Pointers of empty
 * operands may be anything (they are not read).
 */
#ifndef EDGEVLA_GEMM_S8S8_H
#define EDGEVLA_GEMM_S8S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The largest K for which no int8 inputs can overflow the int32 accumulator:
 * the largest product is (-128) * (-128) = 16384, and 131071 * 16384 =
 * 2147467264 <= INT32_MAX < 131072 * 16384. Kernels may therefore accumulate
 * in int32 with no overflow check, and a wrapping (VNNI) or saturating
 * accumulator gives the same answer as exact arithmetic. */
#define EDGEVLA_GEMM_S8S8_MAX_K 131071

/* How the activation scale is indexed. */
typedef enum edgevla_act_scale_mode {
    EDGEVLA_ACT_SCALE_PER_TENSOR = 0, /* a_scale[0] for every row */
    EDGEVLA_ACT_SCALE_PER_TOKEN = 1   /* a_scale[m] for row m (dynamic per-token quantization) */
} edgevla_act_scale_mode;

/* The activation applied last in the epilogue. */
typedef enum edgevla_activation {
    EDGEVLA_ACTIVATION_NONE = 0,
    EDGEVLA_ACTIVATION_RELU = 1,
    EDGEVLA_ACTIVATION_GELU_TANH = 2, /* GELU, tanh form (PyTorch approximate="tanh") */
    EDGEVLA_ACTIVATION_GELU_ERF = 3   /* GELU, exact erf form (ONNX Gelu, PyTorch's default); CPU
                                         kernels only: the CUDA bindings reject it */
} edgevla_activation;

/* Dequantization epilogue of the float output, evaluated in float32 in
 * exactly this order (no fused multiply-add: kernels are compiled with
 * -ffp-contract=off), so that every kernel gives bit-identical floats:
 *   v = (float)acc[m][n] * (a_scale[m or 0] * w_scale[n])
 *   v = v + bias[n]                          (skipped when bias is NULL)
 *   v = activation(v)                        (epilogue_math.h spells out
 *                                             ReLU and GELU op by op)
 *   v = v + residual[m][n]                   (skipped when residual is NULL:
 *                                             a transformer's skip connection)
 * The residual is read before C is written; it must not overlap C. CPU
 * kernels only (the CUDA launchers take no residual). */
typedef struct edgevla_gemm_epilogue_f32 {
    const float* w_scale;               /* [N] per output channel */
    const float* a_scale;               /* [1] or [M], see a_scale_mode */
    edgevla_act_scale_mode a_scale_mode;
    const float* bias;                  /* [N] or NULL */
    edgevla_activation activation;
    const float* residual;              /* (M, N) at row stride ld_residual, or NULL */
    int64_t ld_residual;
} edgevla_gemm_epilogue_f32;

/* C = A * W^T, int32 out. */
typedef void (*edgevla_gemm_s8s8_s32_fn)(int64_t m, int64_t n, int64_t k,
                                          const int8_t* a, int64_t lda,
                                          const int8_t* w, int64_t ldw,
                                          int32_t* c, int64_t ldc);

/* C = dequantize(A * W^T), float32 out. */
typedef void (*edgevla_gemm_s8s8_f32_fn)(int64_t m, int64_t n, int64_t k,
                                          const int8_t* a, int64_t lda,
                                          const int8_t* w, int64_t ldw,
                                          const edgevla_gemm_epilogue_f32* epilogue,
                                          float* c, int64_t ldc);

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLA_GEMM_S8S8_H */
