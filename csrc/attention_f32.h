// Scaled dot-product attention in float32 over (B, T, H, D) head views: what
// the runtime's edgevla.Attention step computes (edgevla/runtime/attention.py),
// in one pass per (batch, head) with nothing but a small per-thread scratch.
//
// For every batch b, head h and query token i:
//   s[j]   = sum_d q[b, i, h, d] * k[b, j, g, d]          j in [0, S), g = h / (H / Hkv)
//   s[j]   = s[j] * scale   (scale_mode multiply)  or  s[j] / scale  (divide)
//   s[j]   = s[j] + bias[b, h, i, j]                     (with a bias: a mask, -inf where a key is hidden)
//   p[j]   = exp(s[j] - max_j s) / sum_j exp(s[j] - max_j s)
//   p[j]   = 0 for every j when p is NaN and zero_nan_rows (a query whose every key is hidden)
//   o[b, i, h, d] = sum_j p[j] * v[b, j, g, d]
//
// k and v may have fewer heads than q (grouped-query attention): Hkv divides
// H, and each run of H / Hkv query heads reads one key/value head.
//
// The reference (attention_f32_ref) sums in the order written, in float32,
// with std::exp. The fast kernels (attention_f32_rows.h, compiled per ISA)
// sum in vector lanes with fused multiply-adds and evaluate exp by a
// polynomial: a float tolerance, not bit identity (tests/test_kernels_attention.py
// states it). Every array is addressed by element strides (the last axis, d,
// contiguous), so the stacked q/k/v views of the runtime are read in place.
// Arguments are trusted (the bindings validate).
#pragma once

#include <cstdint>

namespace edgevla {

enum AttentionScaleMode : int { kAttentionNoScale = 0, kAttentionMultiply = 1, kAttentionDivide = 2 };

struct AttentionStrides {
    int64_t batch = 0, token = 0, head = 0;  // in elements; d is contiguous
};

// The bias's strides in elements over (B, H, T, S); S contiguous, 0 to broadcast an axis.
struct AttentionBiasStrides {
    int64_t batch = 0, head = 0, token = 0;
};

struct AttentionF32Args {
    int64_t batch = 0, t = 0, s = 0, heads = 0, d = 0;  // T queries, S keys
    const float* q = nullptr;  // (B, T, H, D)
    const float* k = nullptr;  // (B, S, H, D)
    const float* v = nullptr;  // (B, S, H, D)
    float* out = nullptr;      // (B, T, H, D)
    AttentionStrides q_strides, k_strides, v_strides, out_strides;
    int scale_mode = kAttentionNoScale;
    float scale = 1.0f;
    int64_t kv_heads = 0;         // heads of k and v; 0: as many as q
    const float* bias = nullptr;  // (B, H, T, S) added to the scaled scores, or none
    AttentionBiasStrides bias_strides;
    bool zero_nan_rows = false;
};

// The key/value head that query head h reads.
inline int64_t attention_kv_head(const AttentionF32Args& a, int64_t h) {
    return a.kv_heads > 0 ? h / (a.heads / a.kv_heads) : h;
}

// The softmax of the attention alone, over each row of x (M, K), K >= 1; y may
// be x. Same exp and lane sums as the attention kernel: a float tolerance.
struct SoftmaxF32Args {
    int64_t m = 0, k = 0;
    const float* x = nullptr;
    int64_t ldx = 0;
    float* y = nullptr;
    int64_t ldy = 0;
};
using SoftmaxF32Kernel = void (*)(const SoftmaxF32Args& args);
void softmax_f32(const SoftmaxF32Args& args);      // the active ISA's kernel
void softmax_f32_ref(const SoftmaxF32Args& args);  // std::exp, sums in order

// Heads [first, last) of the flattened (batch, head) index, on the active ISA.
using AttentionF32Kernel = void (*)(const AttentionF32Args& args, int64_t first, int64_t last);

// All heads, split over the thread pool.
void attention_f32(const AttentionF32Args& args);
// The scalar reference, one element at a time, single-threaded.
void attention_f32_ref(const AttentionF32Args& args);

}  // namespace edgevla
