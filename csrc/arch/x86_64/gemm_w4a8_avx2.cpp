// AVX2 int4 x int8 GEMM (W4A8) over the W4_N16K8 layout (packed_formats.h),
// for x86-64 CPUs without AVX-512 VNNI: the arithmetic of
// edgevla_gemm_w4a8_f32_ref, bit for bit. The tile is gemm_w4a8_avx2_tile.h's;
// here a cell's products reach the int32 sums by vpmaddubsw (unsigned x signed
// bytes, adjacent pairs summed into int16), which cannot saturate on them: a
// pair is at most 2 * 15 * 127 = 3810 in magnitude, the even and odd pairs
// added 7620; then vpmaddwd by ones finishes each channel's 8 products in int32.
//
// Compiled with -mavx2 -mfma (CMakeLists.txt, this file only) and called only
// after dispatch.cpp has seen AVX2 at run time. Everything but the entry points
// has internal linkage.
#include "arch/x86_64/gemm_w4a8_avx2_tile.h"

namespace edgevla {
namespace {

struct MaddubsDot {
    static __m256i add(__m256i dot, __m256i even, __m256i x_even, __m256i odd, __m256i x_odd) {
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(even, x_even), _mm256_maddubs_epi16(odd, x_odd));
        return _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
};

}  // namespace

void gemm_w4a8_f32_avx2(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                        int64_t block_end) {
    w4a8_rows<MaddubsDot>(args, row_begin, row_end, block_begin, block_end);
}

// The activations: each group through this ISA's per-token quantization, then rearranged.
void quantize_w4a8_avx2(const QuantizeW4A8Args& args) {
    quantize_w4a8_rows(args, [](int64_t length, const float* x, int8_t* q, float* scale, int32_t* sum) {
        return quantize_w4a8_group_by_row(quantize_row_avx2, length, x, q, scale, sum);
    });
}

}  // namespace edgevla
