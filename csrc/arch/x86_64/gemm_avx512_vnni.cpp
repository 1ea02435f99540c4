// AVX-512 VNNI kernels: packed W8A8 GEMM on vpdpbusd, per-token quantization.
//
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt,
// this file only) and called only after dispatch.cpp has seen the CPU features
// at run time. Everything but the two entry points has internal linkage and no
// standard-library template is used, so no AVX-512 code can leak into a
// function the linker shares with baseline code.
//
// vpdpbusd multiplies unsigned by signed bytes: the kernel feeds a + 128
// (a XOR 0x80) and subtracts the packed compensation 128 * rowsum(W)
// (packed_formats.h). Accumulation wraps in int32, and the wrap cancels.
#include "cpu_kernels.h"
#include "epilogue_math.h"

// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself and
// warns about it wherever an intrinsic using it is inlined (GCC bug 105593,
// fixed in GCC 13); the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cfloat>
#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;

// Four activations of group `group` as one int32, shifted to unsigned; a
// partial last group is zero-filled (its weights are zero too) and never read
// past the row.
inline int32_t load_group_u8(const int8_t* a, int64_t k, int64_t group) {
    uint32_t bytes = 0;
    const int64_t first = group * 4;
    std::memcpy(&bytes, a + first, static_cast<size_t>(k - first < 4 ? k - first : 4));
    return static_cast<int32_t>(bytes ^ 0x80808080u);
}

inline __m512 tanh_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-EDGEVLA_TANH_CLAMP)), _mm512_set1_ps(EDGEVLA_TANH_CLAMP));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_add_ps(_mm512_mul_ps(x2, _mm512_set1_ps(EDGEVLA_TANH_A13)), _mm512_set1_ps(EDGEVLA_TANH_A11));
    p = _mm512_add_ps(_mm512_mul_ps(x2, p), _mm512_set1_ps(EDGEVLA_TANH_A9));
    p = _mm512_add_ps(_mm512_mul_ps(x2, p), _mm512_set1_ps(EDGEVLA_TANH_A7));
    p = _mm512_add_ps(_mm512_mul_ps(x2, p), _mm512_set1_ps(EDGEVLA_TANH_A5));
    p = _mm512_add_ps(_mm512_mul_ps(x2, p), _mm512_set1_ps(EDGEVLA_TANH_A3));
    p = _mm512_add_ps(_mm512_mul_ps(x2, p), _mm512_set1_ps(EDGEVLA_TANH_A1));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_add_ps(_mm512_mul_ps(x2, _mm512_set1_ps(EDGEVLA_TANH_B6)), _mm512_set1_ps(EDGEVLA_TANH_B4));
    q = _mm512_add_ps(_mm512_mul_ps(x2, q), _mm512_set1_ps(EDGEVLA_TANH_B2));
    q = _mm512_add_ps(_mm512_mul_ps(x2, q), _mm512_set1_ps(EDGEVLA_TANH_B0));
    return _mm512_div_ps(p, q);
}

inline __m512 activate(edgevla_activation activation, __m512 v) {
    switch (activation) {
        case EDGEVLA_ACTIVATION_NONE: return v;
        case EDGEVLA_ACTIVATION_RELU: return _mm512_max_ps(v, _mm512_setzero_ps());
        case EDGEVLA_ACTIVATION_GELU_TANH: {
            const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
            const __m512 inner = _mm512_mul_ps(
                _mm512_set1_ps(EDGEVLA_GELU_SQRT_2_OVER_PI),
                _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(EDGEVLA_GELU_CUBIC), cube)));
            const __m512 t = tanh_ps(inner);
            return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
        }
    }
    return v;
}

// Rows [row, row + MR) x blocks [block, block + NB): MR * NB zmm accumulators.
template <int MR, int NB>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block) {
    const PackedS8View& w = args.w;
    const int64_t full_groups = w.k / 4;
    const int8_t* cells[NB];
    for (int j = 0; j < NB; ++j) cells[j] = w.weights + (block + j) * w.k_groups * kCellBytes;
    const int8_t* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = args.a + (row + r) * args.lda;

    __m512i acc[MR][NB];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();

    for (int64_t group = 0; group < w.k_groups; ++group) {
        __m512i weights[NB];
        for (int j = 0; j < NB; ++j) weights[j] = _mm512_loadu_si512(cells[j] + group * kCellBytes);
        for (int r = 0; r < MR; ++r) {
            int32_t a4;
            if (group < full_groups) {
                std::memcpy(&a4, a[r] + group * 4, 4);
                a4 ^= static_cast<int32_t>(0x80808080u);
            } else {
                a4 = load_group_u8(a[r], w.k, group);
            }
            const __m512i a_u8 = _mm512_set1_epi32(a4);
            for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], a_u8, weights[j]);
        }
    }

    const edgevla_gemm_epilogue_f32& epilogue = args.epilogue;
    const bool per_token = epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN;
    for (int j = 0; j < NB; ++j) {
        const int64_t col0 = (block + j) * kBlockN;
        const int64_t cols = w.n - col0 < kBlockN ? w.n - col0 : kBlockN;
        const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
        const __m512i compensation = _mm512_loadu_si512(w.compensation + col0);
        const __m512 w_scale = _mm512_loadu_ps(w.w_scale + col0);
        const __m512 bias = epilogue.bias ? _mm512_maskz_loadu_ps(mask, epilogue.bias + col0) : _mm512_setzero_ps();
        for (int r = 0; r < MR; ++r) {
            const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(epilogue.a_scale[per_token ? row + r : 0]), w_scale);
            const __m512i exact = _mm512_sub_epi32(acc[r][j], compensation);
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), scale);
            if (epilogue.bias) v = _mm512_add_ps(v, bias);
            _mm512_mask_storeu_ps(args.c + (row + r) * args.ldc + col0, mask, activate(epilogue.activation, v));
        }
    }
}

template <int NB>
void rows_of_tiles(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end, int64_t block) {
    int64_t row = row_begin;
    for (; row + 4 <= row_end; row += 4) tile<4, NB>(args, row, block);
    switch (row_end - row) {
        case 3: tile<3, NB>(args, row, block); break;
        case 2: tile<2, NB>(args, row, block); break;
        case 1: tile<1, NB>(args, row, block); break;
        default: break;
    }
}

}  // namespace

void gemm_packed_s8_f32_avx512_vnni(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                    int64_t block_begin, int64_t block_end) {
    int64_t block = block_begin;
    for (; block + 2 <= block_end; block += 2) rows_of_tiles<2>(args, row_begin, row_end, block);
    if (block < block_end) rows_of_tiles<1>(args, row_begin, row_end, block);
}

bool quantize_row_avx512(int64_t k, const float* x, int8_t* q, float* scale) {
    const __m512 float_max = _mm512_set1_ps(FLT_MAX);
    __m512 amax16 = _mm512_setzero_ps();
    __mmask16 not_finite = 0;
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (k - i)) - 1u);
        const __m512 magnitude = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, x + i));
        not_finite |= _mm512_cmp_ps_mask(magnitude, float_max, _CMP_NLE_UQ);
        amax16 = _mm512_max_ps(magnitude, amax16);
    }
    if (not_finite) return false;
    const float amax = _mm512_reduce_max_ps(amax16);
    const float inv = amax >= EDGEVLA_QUANT_MIN_AMAX ? EDGEVLA_QUANT_QMAX / amax : 0.0f;
    const __m512 inv16 = _mm512_set1_ps(inv);
    const __m512 low = _mm512_set1_ps(-EDGEVLA_QUANT_QMAX), high = _mm512_set1_ps(EDGEVLA_QUANT_QMAX);
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (k - i)) - 1u);
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), inv16),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        _mm512_mask_cvtsepi32_storeu_epi8(q + i, mask, _mm512_cvttps_epi32(v));
    }
    *scale = amax / EDGEVLA_QUANT_QMAX;
    return true;
}

}  // namespace edgevla
