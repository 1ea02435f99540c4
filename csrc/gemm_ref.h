/* Scalar reference kernels of the int8 GEMM contract in gemm_s8s8.h.
 *
 * They are the ground truth every fast kernel (SIMD, CUDA) is tested against,
 * so they are written for obviousness, not speed: one dot product per output
 * element, in the order the contract states. */
#ifndef EDGEVLA_GEMM_REF_H
#define EDGEVLA_GEMM_REF_H

#include "gemm_s8s8.h"

#ifdef __cplusplus
extern "C" {
#endif

void edgevla_gemm_s8s8_s32_ref(int64_t m, int64_t n, int64_t k,
                               const int8_t* a, int64_t lda,
                               const int8_t* w, int64_t ldw,
                               int32_t* c, int64_t ldc);

void edgevla_gemm_s8s8_f32_ref(int64_t m, int64_t n, int64_t k,
                               const int8_t* a, int64_t lda,
                               const int8_t* w, int64_t ldw,
                               const edgevla_gemm_epilogue_f32* epilogue,
                               float* c, int64_t ldc);

/* Reference float32 GEMM with the epilogue of the float-activation kernels
 * (dense, unstructured sparse and 2:4 float32 weights, where zeros in W are
 * the sparsity):
 *   out[m][n] = act((float)(sum_k (double)x[m][k] * (double)w[n][k]) + bias[n])
 * The sum is taken in double, so it is the exact product rounded once; the
 * float32 kernels sum in float32 in their own order and are compared with it
 * within a tolerance (the tests state it). bias may be NULL. */
void edgevla_gemm_f32_ref(int64_t m, int64_t n, int64_t k,
                          const float* x, int64_t ldx,
                          const float* w, int64_t ldw,
                          const float* bias, edgevla_activation activation,
                          float* c, int64_t ldc);

/* Reference int4 weight-only GEMM on the codes of
 * edgevla.quant.primitives.pack_int4: q[n][k] is nibble k % 2 (low first) of
 * byte qdata[n * ldq + k / 2], a 4-bit two's complement code in [-8, 7] (zero
 * point 0), and w[n][k] = q[n][k] * scale[n * lds + k / group]:
 *   out[m][n] = act((float)(sum_k (double)w[n][k] * (double)x[m][k]) + bias[n]) */
void edgevla_gemm_w4_f32_ref(int64_t m, int64_t n, int64_t k, int64_t group,
                             const float* x, int64_t ldx,
                             const uint8_t* qdata, int64_t ldq,
                             const float* scale, int64_t lds,
                             const float* bias, edgevla_activation activation,
                             float* c, int64_t ldc);

/* Reference int4 x int8 GEMM (W4A8) on the same codes and scales as
 * edgevla_gemm_w4_f32_ref. Each row of x is quantized per weight group
 * (G = group; the last group holds K - G * (KG - 1) values when G does not
 * divide K): the group's values alone go through edgevla_quantize_row_ref,
 * giving int8 codes qx in [-127, 127] and xs[g] = amax / 127 (codes all zero
 * when amax < 2^-100, see epilogue_math.h). A group holding a NaN or an
 * infinity gets xs[g] = NaN and zero codes, so its row's outputs are NaN
 * before the activation. Then, per output,
 *   dot[g] = sum over k in group g of q[n][k] * qx[k]      exact, in int32
 *   acc    = 0.0f; for g = 0, 1, ..., KG - 1 in order:
 *            acc = acc + (float)dot[g] * (xs[g] * scale[n * lds + g])
 *   out[m][n] = act(acc + bias[n])
 * in float32, every operation rounded on its own (no fused multiply-add:
 * AVX2 has none), so every ISA's kernel can and does reproduce it bit for
 * bit. */
void edgevla_gemm_w4a8_f32_ref(int64_t m, int64_t n, int64_t k, int64_t group,
                               const float* x, int64_t ldx,
                               const uint8_t* qdata, int64_t ldq,
                               const float* scale, int64_t lds,
                               const float* bias, edgevla_activation activation,
                               float* c, int64_t ldc);

/* Dynamic symmetric per-token quantization of one row (contract in
 * epilogue_math.h): writes q[0..k) and *scale and returns 1, or returns 0
 * without writing anything when the row holds a NaN or an infinity. */
int edgevla_quantize_row_ref(int64_t k, const float* x, int8_t* q, float* scale);

/* Every row of x float32 (m, k) quantized into q int8 (m, k) and scale[m].
 * Returns -1, or the first row holding a NaN or an infinity (that row and
 * later ones are left unwritten). */
int64_t edgevla_quantize_per_token_ref(int64_t m, int64_t k, const float* x, int64_t ldx,
                                       int8_t* q, int64_t ldq, float* scale);

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLA_GEMM_REF_H */
