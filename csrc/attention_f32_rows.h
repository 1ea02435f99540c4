// The fast attention of attention_f32.h in portable C++ on GCC/Clang vector
// types: included by one file per kernel table (arch/*/attention_*.cpp), which
// defines EDGEVLA_ATTENTION_VECTOR_BYTES to its register width (64 AVX-512,
// 32 AVX2, 16 SSE2/NEON) and is compiled with its ISA's flags and
// -ffp-contract=fast, so each gets its own vectors and fused multiply-adds.
//
// Per (batch, head): K^T is copied once into scratch, its S columns padded to
// a whole number of vectors with zeros, so the scores of 4 queries against 2
// vectors of keys at a time are 8 accumulators kept in registers across D;
// each row's exps follow (max and sum in vector lanes, exp by a polynomial on
// whole vectors), left unnormalized: P @ V multiplies each output by 1 / sum
// once. P @ V takes 4 query rows and up to 3 vectors of output features at a
// time (12 accumulators, each vector of V loaded once for the 4 rows), over
// the keys between the rows' first and last exp that is not 0 (a causal or
// windowed mask's hidden keys add nothing: one thread, T = S = 64, 6 heads of
// 64, causal: 135 -> 116 us, medians of 4 alternated runs, unmasked level; the
// vector exp took a (128, 16) softmax from 6.4 to 4.6 us a call; Zen 4,
// 2026-12-07). Before (one query's P @ V at a time, one accumulator per vector
// of features, a D = 24 head's 3 chains waiting on the FMA latency; scores 1 x
// 4 queries) the kernel lost to NumPy + OpenBLAS from 48 tokens on an AVX2
// Zen 3; after, 1 thread, it ran tiny-vla's heads (4 x 24) 2.0-2.4x faster at
// 48-256 tokens, small-vla's (6 x 64) 1.1-1.9x from 80 tokens and level below
// (benchmarks/cpu/attention-avx2-zen3-2026-12-07.md). Q and V are
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

// acc[r][n] = sum over t in [t0, t1) of x[r * ldx + t] * y[t * ldy + n lanes, one vector]: R x NV
// accumulators, y's NV vectors loaded once per t for the R rows of x. Both products' inner loop (Q K^T
// over D, P V over the keys). The pragmas keep acc in registers: without them GCC zeroed it on the stack
// with `rep stos` on every call.
template <int R, int NV>
inline void outer_products(const float* x, int64_t ldx, const float* y, int64_t ldy, int64_t t0, int64_t t1,
                           FloatVec (&acc)[R][NV]) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int n = 0; n < NV; ++n) acc[r][n] = FloatVec{};
    }
    for (int64_t t = t0; t < t1; ++t) {
        FloatVec yt[NV];
#pragma GCC unroll 4
        for (int n = 0; n < NV; ++n) yt[n] = load_vec(y + t * ldy + n * kAttentionLanes);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const float xr = x[r * ldx + t];
#pragma GCC unroll 4
            for (int n = 0; n < NV; ++n) acc[r][n] += xr * yt[n];
        }
    }
}

// Scaled scores of R consecutive queries (rows q, q + ldq, ...) against the NV vectors of K^T's
// columns from j0, written to out[r * s_pad + j]: R x NV accumulators, each a chain over D.
template <int R, int NV>
inline void scores_block(const AttentionF32Args& a, const float* q, int64_t ldq, const float* kt, int64_t s_pad,
                         int64_t j0, float* out) {
    FloatVec acc[R][NV];
    outer_products<R, NV>(q, ldq, kt + j0, s_pad, 0, a.d, acc);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < NV; ++c) {
            if (a.scale_mode == kAttentionMultiply) acc[r][c] *= a.scale;
            if (a.scale_mode == kAttentionDivide) acc[r][c] /= a.scale;
            store_vec(out + r * s_pad + j0 + c * kAttentionLanes, acc[r][c]);
        }
    }
}

// The scores of R consecutive queries against all S_pad columns: two vectors of keys at a time (2 R
// independent chains: one vector of 4 rows left the FMA units waiting on their latency), then one.
template <int R>
inline void scores_rows(const AttentionF32Args& a, const float* q, int64_t ldq, const float* kt, int64_t s_pad,
                        float* out) {
    int64_t j0 = 0;
    for (; j0 + 2 * kAttentionLanes <= s_pad; j0 += 2 * kAttentionLanes) {
        scores_block<R, 2>(a, q, ldq, kt, s_pad, j0, out);
    }
    if (j0 < s_pad) scores_block<R, 1>(a, q, ldq, kt, s_pad, j0, out);
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

// e[j] = exp(x[j] - max x) over k values (e may be x), exp by softmax_exp; returns their sum (max and
// sum in vector lanes). The softmax is e / sum.
inline float exp_row(const float* x, float* e, int64_t k) {
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
    FloatVec partial = {};
    for (int64_t j = 0; j < whole; j += kAttentionLanes) {
        const FloatVec ej = softmax_exp_vec(load_vec(x + j) - m);
        store_vec(e + j, ej);
        partial += ej;
    }
    float sum = lanes_sum(partial);
    for (int64_t j = whole; j < k; ++j) {
        e[j] = softmax_exp(x[j] - m);
        sum += e[j];
    }
    return sum;
}

// y = softmax(x) over k values (y may be x).
inline void softmax_row(const float* x, float* y, int64_t k) {
    const float inv = 1.0f / exp_row(x, y, k);
    const int64_t whole = k / kAttentionLanes * kAttentionLanes;
    for (int64_t j = 0; j < whole; j += kAttentionLanes) store_vec(y + j, load_vec(y + j) * inv);
    for (int64_t j = whole; j < k; ++j) y[j] *= inv;
}

// P @ V for R consecutive query rows (p + r * ldp) and the NV vectors of features from V's first column
// (v: S rows of ldv floats): out row r, features [0, d) = norm[r] * sum over keys j in [lo, hi) of
// p[r][j] v[j]. R x NV accumulators, each vector of V loaded once for the R rows: one row at a time, the
// loads of V outnumbered the multiply-adds. [lo, hi) is the rows' union; a row's keys outside its own
// range have probability 0 and add 0 x v.
template <int R, int NV>
inline void weighted_rows(const float* p, int64_t ldp, int64_t lo, int64_t hi, const float* v, int64_t ldv,
                          const float* norm, float* out, int64_t ldo, int64_t d) {
    FloatVec acc[R][NV];
    outer_products<R, NV>(p, ldp, v, ldv, lo, hi, acc);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int n = 0; n < NV; ++n) {
            store_first(out + r * ldo + n * kAttentionLanes, acc[r][n] * norm[r], d - n * kAttentionLanes);
        }
    }
}

// weighted_rows for R rows over all of V's d features, its vectors in groups of 3 or 2 (1 only where d
// fits one vector): at most 12 accumulators, 16 registers with V's 3 vectors and a broadcast (AVX2's).
template <int R>
inline void weighted_rows_all(const float* p, int64_t ldp, int64_t lo, int64_t hi, const float* v, int64_t ldv,
                              const float* norm, float* out, int64_t ldo, int64_t d) {
    int64_t vectors = (d + kAttentionLanes - 1) / kAttentionLanes, d0 = 0;
    while (vectors > 0) {
        // twos until the rest divides by three (8 = 2 + 3 + 3, 4 = 2 + 2)
        const int take = vectors == 1 ? 1 : (vectors % 3 == 0 ? 3 : 2);
        const float* vd = v + d0;
        float* od = out + d0;
        if (take == 3) {
            weighted_rows<R, 3>(p, ldp, lo, hi, vd, ldv, norm, od, ldo, d - d0);
        } else if (take == 2) {
            weighted_rows<R, 2>(p, ldp, lo, hi, vd, ldv, norm, od, ldo, d - d0);
        } else {
            weighted_rows<R, 1>(p, ldp, lo, hi, vd, ldv, norm, od, ldo, d - d0);
        }
        vectors -= take;
        d0 += take * kAttentionLanes;
    }
}

inline void softmax_f32_rows(const SoftmaxF32Args& a) {
    for (int64_t row = 0; row < a.m; ++row) softmax_row(a.x + row * a.ldx, a.y + row * a.ldy, a.k);
}

struct AttentionScratch {
    std::vector<float> kt;    // D x S_pad
    std::vector<float> row;   // T x S_pad: the scores, then their exps
    std::vector<float> vpad;   // S x D_pad: V, rows padded with zeros to whole vectors
    std::vector<float> qpack;  // T x D: Q
    std::vector<float> norm;   // T: 1 / the sum of each row's exps
    std::vector<int64_t> keys;  // 2 T: each row's first key with an exp that is not 0, and one past its last
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
    if (static_cast<int64_t>(scratch.norm.size()) < a.t) scratch.norm.resize(a.t);
    if (static_cast<int64_t>(scratch.keys.size()) < 2 * a.t) scratch.keys.resize(2 * a.t);
    float* kt = scratch.kt.data();
    float* row = scratch.row.data();
    float* vpad = scratch.vpad.data();
    float* qpack = scratch.qpack.data();
    float* norm = scratch.norm.data();
    int64_t* keys = scratch.keys.data();

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
            // exps over the S real keys; the softmax's division is the output's, once per feature
            norm[i] = 1.0f / exp_row(row_i, row_i, s);
            // A NaN anywhere makes the sum NaN, so every output of the row: zeros instead, if asked.
            if (a.zero_nan_rows && norm[i] != norm[i]) {
                std::fill(row_i, row_i + s, 0.0f);
                norm[i] = 0.0f;
            }
            // Keys whose exp is exactly 0 add nothing to P @ V: the keys a mask hides (a causal row's later
            // ones: exp underflows to 0 below -87, and -inf or finfo.min is far below) are not summed.
            int64_t lo = 0, hi = s;
            while (hi > lo && row_i[hi - 1] == 0.0f) --hi;
            while (lo < hi && row_i[lo] == 0.0f) ++lo;
            keys[2 * i] = lo;
            keys[2 * i + 1] = hi;
        }
        // P @ V, 4 rows at a time over the union of their keys, then the last 1 to 3 rows
        for (i = 0; i < a.t; i += 4) {
            const int64_t rows = std::min<int64_t>(4, a.t - i);
            int64_t lo = keys[2 * i], hi = keys[2 * i + 1];
            for (int64_t r = 1; r < rows; ++r) {
                lo = std::min(lo, keys[2 * (i + r)]);
                hi = std::max(hi, keys[2 * (i + r) + 1]);
            }
            const float* p = row + i * s_pad;
            float* oi = ob + i * a.out_strides.token;
            const int64_t ldo = a.out_strides.token;
            switch (rows) {
                case 4: weighted_rows_all<4>(p, s_pad, lo, hi, vrows, ldv, norm + i, oi, ldo, d); break;
                case 3: weighted_rows_all<3>(p, s_pad, lo, hi, vrows, ldv, norm + i, oi, ldo, d); break;
                case 2: weighted_rows_all<2>(p, s_pad, lo, hi, vrows, ldv, norm + i, oi, ldo, d); break;
                default: weighted_rows_all<1>(p, s_pad, lo, hi, vrows, ldv, norm + i, oi, ldo, d); break;
            }
        }
    }
}

}  // namespace
}  // namespace edgevla
