// The fast attention of attention_f32.h in portable C++ on GCC/Clang vector
// types: included by one file per kernel table (arch/*/attention_*.cpp), which
// defines EDGEVLA_ATTENTION_VECTOR_BYTES to its register width (64 AVX-512,
// 32 AVX2, 16 SSE2/NEON) and is compiled with its ISA's flags and
// -ffp-contract=fast, so each gets its own vectors and fused multiply-adds.
//
// Per (batch, head): K^T is copied once into scratch, its S columns padded to
// a whole number of vectors with zeros, so the scores of 4 queries at a time
// are vector accumulators kept in registers across D; softmax runs on each row
// (max and sum in vector lanes, exp by a polynomial on whole vectors); P @ V
// accumulates 4 vectors of output features at a time, again in registers, over
// the keys between the row's first and last probability that is not 0 (a
// causal or windowed mask's hidden keys add nothing: one thread, T = S = 64,
// 6 heads of 64, causal: 135 -> 116 us, medians of 4 alternated runs, unmasked
// level; the vector exp took a (128, 16) softmax from 6.4 to 4.6 us a call;
// Zen 4, 2026-12-07). Q and V are
// packed per head (V's rows padded with zeros to whole vectors: tiny-vla has
// D = 24), so the strided head views cannot thrash a few L1 sets.
#pragma once

#include "attention_f32.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace edgevla {
namespace {

#ifndef EDGEVLA_ATTENTION_VECTOR_BYTES
#error "define EDGEVLA_ATTENTION_VECTOR_BYTES (the vector register width) before including attention_f32_rows.h"
#endif
constexpr int64_t kAttentionLanes = EDGEVLA_ATTENTION_VECTOR_BYTES / 4;

// exp(x) for the shifted scores x <= 0 of a softmax (any float in, NaN stays
// NaN): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, ln2 split in
// two parts (Cody and Waite), exp(r) by the degree-6 minimax polynomial of
// Cephes' expf, times 2^n built in the exponent bits. Below -87 the result is
// 0 (exp(-87) = 1.6e-38, against a softmax maximum of 1): never a subnormal,
// which x86 multiplies in a slow microcode assist (a causal mask's -inf keys
// made every P @ V product one: a (16, 16) attention of 8 heads took 16.9 us
// against 12.1 unmasked). Within 2 ulp of exp on [-87, 0].
// x = n ln2 + r: n (rounded to the nearest integer) and e^r, for x in [-87, 88] (NaN stays NaN), as a
// float or on every lane of a FloatVec: the arithmetic softmax_exp and softmax_exp_vec share.
template <typename F>
inline F exp_reduced(F x, F& n) {
    n = x * 1.44269504088896341f;
    n = (n + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
    F r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    F p = F{} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * (r * r) + r + 1.0f;
}

inline float softmax_exp(float x) {
    const bool negligible = x < -87.0f;  // false for NaN
    x = negligible ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n;
    const float p = exp_reduced(x, n);
    // 2^n: n in [-126, 127] here; a NaN n compares false and gives 2^-126 (p is NaN then).
    const float nc = n > -126.0f ? (n < 127.0f ? n : 127.0f) : -126.0f;
    const int32_t bits = (static_cast<int32_t>(nc) + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return negligible ? 0.0f : p * two_n;
}

// kAttentionLanes floats: one vector register of the ISA compiled for.
typedef float FloatVec __attribute__((vector_size(EDGEVLA_ATTENTION_VECTOR_BYTES)));
typedef int32_t IntVec __attribute__((vector_size(EDGEVLA_ATTENTION_VECTOR_BYTES)));

// softmax_exp on every lane, the same steps as vector operations (the compiler does not vectorize the
// scalar one: its bit tricks and branches kept a (16, 16) softmax of 8 heads at 2.6 ns a score).
inline FloatVec softmax_exp_vec(FloatVec x) {
    const FloatVec zero = {};
    const IntVec negligible = x < -87.0f;  // false for NaN
    x = negligible ? zero - 87.0f : x;
    x = x > 88.0f ? zero + 88.0f : x;
    FloatVec n;
    const FloatVec p = exp_reduced(x, n);
    const FloatVec nc = n > -126.0f ? (n < 127.0f ? n : zero + 127.0f) : zero - 126.0f;
    const IntVec bits = (__builtin_convertvector(nc, IntVec) + 127) << 23;
    FloatVec two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return negligible ? zero : p * two_n;
}

inline FloatVec load_vec(const float* p) {
    FloatVec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store_vec(float* p, FloatVec v) { std::memcpy(p, &v, sizeof v); }
// The first `count` lanes of v (all of them from kAttentionLanes on, none for count <= 0).
inline void store_first(float* p, FloatVec v, int64_t count) {
    if (count >= kAttentionLanes) {
        store_vec(p, v);
    } else if (count > 0) {
        std::memcpy(p, &v, static_cast<size_t>(count) * sizeof(float));
    }
}

// Scaled scores of R consecutive queries (rows q, q + token stride, ...) against
// all S_pad columns of K^T, written to out[r * s_pad + j].
template <int R>
inline void scores_rows(const AttentionF32Args& a, const float* q, int64_t ldq, const float* kt, int64_t s_pad,
                        float* out) {
    for (int64_t j0 = 0; j0 < s_pad; j0 += kAttentionLanes) {
        FloatVec acc[R] = {};
        for (int64_t dd = 0; dd < a.d; ++dd) {
            const FloatVec k = load_vec(kt + dd * s_pad + j0);
            for (int r = 0; r < R; ++r) acc[r] += q[r * ldq + dd] * k;
        }
        for (int r = 0; r < R; ++r) {
            if (a.scale_mode == kAttentionMultiply) acc[r] *= a.scale;
            if (a.scale_mode == kAttentionDivide) acc[r] /= a.scale;
            store_vec(out + r * s_pad + j0, acc[r]);
        }
    }
}

typedef float Float4 __attribute__((vector_size(16)));
typedef int32_t Int4 __attribute__((vector_size(16)));

inline Float4 load4(const float* p) {
    Float4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// kt[dd * s_pad + j] = k[j * ldk + dd] for j < s, zeros for s <= j < s_pad:
// 4 x 4 blocks through registers (two rounds of two-vector shuffles), then the edges one by one.
inline void transpose_keys(const float* k, int64_t ldk, int64_t s, int64_t d, float* kt, int64_t s_pad) {
    const int64_t s4 = s / 4 * 4, d4 = d / 4 * 4;
    for (int64_t j = 0; j < s4; j += 4) {
        const float* r = k + j * ldk;
        for (int64_t dd = 0; dd < d4; dd += 4) {
            const Float4 r0 = load4(r + dd), r1 = load4(r + ldk + dd);
            const Float4 r2 = load4(r + 2 * ldk + dd), r3 = load4(r + 3 * ldk + dd);
            const Float4 t0 = __builtin_shuffle(r0, r1, Int4{0, 4, 1, 5});  // r0[0] r1[0] r0[1] r1[1]
            const Float4 t1 = __builtin_shuffle(r2, r3, Int4{0, 4, 1, 5});
            const Float4 t2 = __builtin_shuffle(r0, r1, Int4{2, 6, 3, 7});
            const Float4 t3 = __builtin_shuffle(r2, r3, Int4{2, 6, 3, 7});
            const Float4 c0 = __builtin_shuffle(t0, t1, Int4{0, 1, 4, 5});
            const Float4 c1 = __builtin_shuffle(t0, t1, Int4{2, 3, 6, 7});
            const Float4 c2 = __builtin_shuffle(t2, t3, Int4{0, 1, 4, 5});
            const Float4 c3 = __builtin_shuffle(t2, t3, Int4{2, 3, 6, 7});
            std::memcpy(kt + dd * s_pad + j, &c0, sizeof c0);
            std::memcpy(kt + (dd + 1) * s_pad + j, &c1, sizeof c1);
            std::memcpy(kt + (dd + 2) * s_pad + j, &c2, sizeof c2);
            std::memcpy(kt + (dd + 3) * s_pad + j, &c3, sizeof c3);
        }
        for (int64_t dd = d4; dd < d; ++dd) {
            for (int64_t jj = j; jj < j + 4; ++jj) kt[dd * s_pad + jj] = k[jj * ldk + dd];
        }
    }
    for (int64_t dd = 0; dd < d; ++dd) {
        for (int64_t j = s4; j < s; ++j) kt[dd * s_pad + j] = k[j * ldk + dd];
        for (int64_t j = s; j < s_pad; ++j) kt[dd * s_pad + j] = 0.0f;
    }
}

// The maximum and the sum of a vector's lanes, folded in halves.
inline float lanes_max(FloatVec v) {
    float t[kAttentionLanes];
    std::memcpy(t, &v, sizeof t);
    for (int64_t w = kAttentionLanes / 2; w >= 1; w /= 2) {
        for (int64_t l = 0; l < w; ++l) t[l] = t[l + w] > t[l] ? t[l + w] : t[l];
    }
    return t[0];
}
inline float lanes_sum(FloatVec v) {
    float t[kAttentionLanes];
    std::memcpy(t, &v, sizeof t);
    for (int64_t w = kAttentionLanes / 2; w >= 1; w /= 2) {
        for (int64_t l = 0; l < w; ++l) t[l] += t[l + w];
    }
    return t[0];
}

// y = softmax(x) over k values (y may be x): max and sum in vector lanes, exp by softmax_exp.
inline void softmax_row(const float* x, float* y, int64_t k) {
    const int64_t whole = k / kAttentionLanes * kAttentionLanes;
    float m = x[0];
    if (whole > 0) {
        FloatVec lanes = load_vec(x);
        for (int64_t j = kAttentionLanes; j < whole; j += kAttentionLanes) {
            const FloatVec v = load_vec(x + j);
            lanes = v > lanes ? v : lanes;
        }
        const float lm = lanes_max(lanes);
        m = lm > m ? lm : m;
    }
    for (int64_t j = whole; j < k; ++j) m = x[j] > m ? x[j] : m;
    for (int64_t j = 0; j < whole; j += kAttentionLanes) store_vec(y + j, softmax_exp_vec(load_vec(x + j) - m));
    for (int64_t j = whole; j < k; ++j) y[j] = softmax_exp(x[j] - m);
    FloatVec partial = {};
    for (int64_t j = 0; j < whole; j += kAttentionLanes) partial += load_vec(y + j);
    float sum = lanes_sum(partial);
    for (int64_t j = whole; j < k; ++j) sum += y[j];
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < k; ++j) y[j] *= inv;
}

inline void softmax_f32_rows(const SoftmaxF32Args& a) {
    for (int64_t row = 0; row < a.m; ++row) softmax_row(a.x + row * a.ldx, a.y + row * a.ldy, a.k);
}

struct AttentionScratch {
    std::vector<float> kt;    // D x S_pad
    std::vector<float> row;   // T x S_pad: the scores, then the probabilities
    std::vector<float> vpad;   // S x D_pad: V, rows padded with zeros to whole vectors
    std::vector<float> qpack;  // T x D: Q
};

inline AttentionScratch& attention_scratch() {
    thread_local AttentionScratch scratch;  // grows to the largest shape seen, then stays
    return scratch;
}

inline void attention_f32_heads(const AttentionF32Args& a, int64_t first, int64_t last) {
    const int64_t s = a.s, d = a.d;
    const int64_t s_pad = (s + kAttentionLanes - 1) / kAttentionLanes * kAttentionLanes;
    AttentionScratch& scratch = attention_scratch();
    if (static_cast<int64_t>(scratch.kt.size()) < d * s_pad) scratch.kt.resize(d * s_pad);
    if (static_cast<int64_t>(scratch.row.size()) < a.t * s_pad) scratch.row.resize(a.t * s_pad);
    const int64_t d_pad = (d + kAttentionLanes - 1) / kAttentionLanes * kAttentionLanes;
    if (static_cast<int64_t>(scratch.vpad.size()) < s * d_pad) scratch.vpad.resize(s * d_pad);
    if (static_cast<int64_t>(scratch.qpack.size()) < a.t * d) scratch.qpack.resize(a.t * d);
    float* kt = scratch.kt.data();
    float* row = scratch.row.data();
    float* vpad = scratch.vpad.data();
    float* qpack = scratch.qpack.data();

    for (int64_t bh = first; bh < last; ++bh) {
        const int64_t b = bh / a.heads, h = bh % a.heads;
        const int64_t g = attention_kv_head(a, h);
        const float* qb = a.q + b * a.q_strides.batch + h * a.q_strides.head;
        const float* kb = a.k + b * a.k_strides.batch + g * a.k_strides.head;
        const float* vb = a.v + b * a.v_strides.batch + g * a.v_strides.head;
        float* ob = a.out + b * a.out_strides.batch + h * a.out_strides.head;
        const float* bias = a.bias == nullptr ? nullptr : a.bias + b * a.bias_strides.batch + h * a.bias_strides.head;

        transpose_keys(kb, a.k_strides.token, s, d, kt, s_pad);
        // Q and V of the head packed: the head views' rows lie a token stride apart (3 H D floats when
        // q, k and v come stacked), so a head's rows fall in a few L1 sets; packed, they do not. V's
        // rows are padded with zeros to whole vectors.
        for (int64_t i = 0; i < a.t; ++i) {
            std::memcpy(qpack + i * d, qb + i * a.q_strides.token, static_cast<size_t>(d) * sizeof(float));
        }
        for (int64_t j = 0; j < s; ++j) {
            std::memcpy(vpad + j * d_pad, vb + j * a.v_strides.token, static_cast<size_t>(d) * sizeof(float));
            std::memset(vpad + j * d_pad + d, 0, static_cast<size_t>(d_pad - d) * sizeof(float));
        }
        const float* vrows = vpad;
        const int64_t ldv = d_pad;

        // scores of 4 queries at a time (4 independent accumulator chains), then of the rest one by one
        int64_t i = 0;
        for (; i + 4 <= a.t; i += 4) scores_rows<4>(a, qpack + i * d, d, kt, s_pad, row + i * s_pad);
        for (; i < a.t; ++i) scores_rows<1>(a, qpack + i * d, d, kt, s_pad, row + i * s_pad);

        for (i = 0; i < a.t; ++i) {
            float* row_i = row + i * s_pad;
            if (bias != nullptr) {
                const float* bias_i = bias + i * a.bias_strides.token;
                for (int64_t j = 0; j < s; ++j) row_i[j] += bias_i[j];
            }
            softmax_row(row_i, row_i, s);  // over the S real keys
            // A NaN anywhere makes the sum, so every probability, NaN: row_i[0] tells.
            if (a.zero_nan_rows && row_i[0] != row_i[0]) std::fill(row_i, row_i + s, 0.0f);
            // Keys whose probability is exactly 0 add nothing to P @ V: the keys a mask hides (a causal row's
            // later ones: exp underflows to 0 below -87, and -inf or finfo.min is far below) are not summed.
            int64_t lo = 0, hi = s;
            while (hi > lo && row_i[hi - 1] == 0.0f) --hi;
            while (lo < hi && row_i[lo] == 0.0f) ++lo;
            // P @ V: 4 vectors of features at a time (4 chains), then one vector at a time
            float* oi = ob + i * a.out_strides.token;
            int64_t d0 = 0;
            for (; d0 + 4 * kAttentionLanes <= d_pad; d0 += 4 * kAttentionLanes) {
                FloatVec acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
                for (int64_t jj = lo; jj < hi; ++jj) {
                    const float p = row_i[jj];
                    const float* vr = vrows + jj * ldv + d0;
                    acc0 += p * load_vec(vr);
                    acc1 += p * load_vec(vr + kAttentionLanes);
                    acc2 += p * load_vec(vr + 2 * kAttentionLanes);
                    acc3 += p * load_vec(vr + 3 * kAttentionLanes);
                }
                store_first(oi + d0, acc0, d - d0);
                store_first(oi + d0 + kAttentionLanes, acc1, d - d0 - kAttentionLanes);
                store_first(oi + d0 + 2 * kAttentionLanes, acc2, d - d0 - 2 * kAttentionLanes);
                store_first(oi + d0 + 3 * kAttentionLanes, acc3, d - d0 - 3 * kAttentionLanes);
            }
            for (; d0 < d_pad; d0 += kAttentionLanes) {
                FloatVec acc = {};
                for (int64_t jj = lo; jj < hi; ++jj) acc += row_i[jj] * load_vec(vrows + jj * ldv + d0);
                store_first(oi + d0, acc, d - d0);
            }
        }
    }
}

}  // namespace
}  // namespace edgevla
