// AVX-512 VNNI int4 x int8 GEMM (W4A8) over the W4_N16K8 layout
// (packed_formats.h), the arithmetic of edgevla_gemm_w4a8_f32_ref.
//
// The activations arrive quantized per group and rearranged
// (QuantizedW4A8Rows, cpu_kernels.h): each cell of 8 k is two 4-byte words,
// the even k then the odd k. A weight cell (one 64-byte register: 16
// channels' words, nibble i of word c the code of channel c at k = 8 t + i)
// then needs no shuffle: the low nibbles of a word's 4 bytes are its codes at
// k = 8 t + 0, 2, 4, 6 and the high nibbles those at 8 t + 1, 3, 5, 7.
// vpdpbusd multiplies unsigned by signed bytes (4 products summed into each
// int32), so the two's complement code c in -8..7 becomes the unsigned c + 8
// by flipping the nibble's top bit: one vpternlogd, (w & 0x0F) ^ 0x08, gives
// the even codes, and a second, (w & 0xF0) ^ 0x80, the odd ones times 16
// (no shift needed: their sums are shifted right by 4 once per group, exact
// as they are multiples of 16). The activation words are broadcast. Per group
// the excess 8 * sum(q) is subtracted (exact in int32), and the group's dot
// products are scaled and added in float32 in group order, op by op as the
// reference, so every tile shape, thread split and ISA gives the same bits.
//
// Per cell: one load and two vpternlogd, then two vpdpbusd per row, against
// 8 permutes, 8 shifts and 8 FMAs in the float-activation kernel
// (gemm_w4_avx512_vnni.cpp). A single row spreads the cells over four sets of
// accumulators: vpdpbusd has a latency of 5 cycles, and one chain per nibble
// half would wait on it. As there, the blocks are read one after the other,
// so at M = 1 the weights are one sequential stream; with this little work
// per byte the hardware prefetcher alone does not keep enough lines in
// flight, so the kernel prefetches ahead of itself (kernel_common.h:
// measured 1.6-1.9x the M = 1 speed with the weights outside L2, no change
// with them in cache).
//
// The activations' quantization (quantize_w4a8_avx512) is here too: each
// group with the operations of quantize_row_avx512, the codes rearranged and
// summed 16 at a time.
//
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt,
// this file only) and called only after dispatch.cpp has seen the CPU
// features at run time. Everything but the entry points has internal linkage.
#include "arch/x86_64/simd_avx512.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

#include <cfloat>
#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

// vpternlogd truth table of (a & b) ^ c.
constexpr int kAndXor = (0xF0 & 0xCC) ^ 0xAA;

// Four activation codes, repeated in every 32-bit lane.
inline __m512i broadcast_word(const int8_t* q) {
    int32_t word;
    std::memcpy(&word, q, 4);
    return _mm512_set1_epi32(word);
}

// Rows [row, row + MR) x one block of 16 channels.
template <int MR>
void tile(const GemmW4A8Args& args, int64_t row, int64_t block) {
    constexpr int kSets = MR == 1 ? 4 : 1;  // accumulator sets per row (cells go round them)
    const PackedW4View& w = args.w;
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F), low_top = _mm512_set1_epi8(0x08);
    const __m512i high_nibbles = _mm512_set1_epi8(static_cast<char>(0xF0));
    const __m512i high_top = _mm512_set1_epi8(static_cast<char>(0x80));
    const int64_t cells_per_group = w.group / kCellK;
    const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
    const float* scales = w.scales + block * w.k_groups * kBlockN;
    const int8_t* q[MR];
    for (int r = 0; r < MR; ++r) q[r] = args.a.q + (row + r) * args.a.ldq;

    __m512 acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t group = 0; group < w.k_groups; ++group) {
        // even: sum of (c + 8) q over the even k; odd: 16 times that over the odd k.
        __m512i even[MR][kSets], odd[MR][kSets];
        for (int r = 0; r < MR; ++r)
            for (int s = 0; s < kSets; ++s) even[r][s] = odd[r][s] = _mm512_setzero_si512();
        const auto step = [&](int64_t cell, int s) {  // cell `cell` into set s
            prefetch_w4a8_cell(codes + cell * kBlockN);
            const __m512i words = _mm512_loadu_si512(codes + cell * kBlockN);
            const __m512i low = _mm512_ternarylogic_epi32(words, low_nibbles, low_top, kAndXor);
            const __m512i high = _mm512_ternarylogic_epi32(words, high_nibbles, high_top, kAndXor);
            for (int r = 0; r < MR; ++r) {
                const int8_t* x = q[r] + cell * kCellK;
                even[r][s] = _mm512_dpbusd_epi32(even[r][s], low, broadcast_word(x));
                odd[r][s] = _mm512_dpbusd_epi32(odd[r][s], high, broadcast_word(x + 4));
            }
        };
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        int64_t cell = cell_begin;
        for (; cell + kSets <= cell_end; cell += kSets) {
            for (int s = 0; s < kSets; ++s) step(cell + s, s);
        }
        for (; cell < cell_end; ++cell) step(cell, 0);  // the last group's cells may not fill the sets

        prefetch_w4a8_scales(scales + group * kBlockN);
        const __m512 w_scale = _mm512_loadu_ps(scales + group * kBlockN);
        for (int r = 0; r < MR; ++r) {
            const int64_t g = (row + r) * args.a.ldg + group;
            __m512i even_sum = even[r][0], odd_sum = odd[r][0];
            for (int s = 1; s < kSets; ++s) {
                even_sum = _mm512_add_epi32(even_sum, even[r][s]);
                odd_sum = _mm512_add_epi32(odd_sum, odd[r][s]);
            }
            // The exact sum of c q: odd_sum / 16 exactly, less the 8 * sum(q) that c + 8 added.
            const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(even_sum, _mm512_srai_epi32(odd_sum, 4)),
                                                 _mm512_set1_epi32(8 * args.a.sum[g]));
            const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(args.a.scale[g]), w_scale);
            acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

// One group of `length` (1..128) values quantized with the operations of
// quantize_row_avx512 (so the codes and the scale of
// edgevla_quantize_row_ref), 16 at a time: the codes are rearranged (even k,
// then odd k, per cell of 8) by one vpshufb and summed by vpsadbw on their
// values + 128 before they are stored, ceil(length / 8) cells of them.
bool quantize_group(int64_t length, const float* x, int8_t* q, float* scale, int32_t* sum) {
    const __m512 float_max = _mm512_set1_ps(FLT_MAX);
    __m512 amax16 = _mm512_setzero_ps();
    __mmask16 not_finite = 0;
    for (int64_t i = 0; i < length; i += 16) {
        const __m512 magnitude = _mm512_abs_ps(_mm512_maskz_loadu_ps(first_lanes(length - i), x + i));
        not_finite |= _mm512_cmp_ps_mask(magnitude, float_max, _CMP_NLE_UQ);
        amax16 = _mm512_max_ps(magnitude, amax16);
    }
    if (not_finite) return false;
    const float amax = _mm512_reduce_max_ps(amax16);
    const float inv = amax >= EDGEVLA_QUANT_MIN_AMAX ? EDGEVLA_QUANT_QMAX / amax : 0.0f;
    const __m512 inv16 = _mm512_set1_ps(inv);
    const __m512 low = _mm512_set1_ps(-EDGEVLA_QUANT_QMAX), high = _mm512_set1_ps(EDGEVLA_QUANT_QMAX);
    const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    const __m128i bias = _mm_set1_epi8(static_cast<char>(0x80));
    __m128i biased_sum = _mm_setzero_si128();
    int64_t lanes = 0;
    for (int64_t i = 0; i < length; i += 16, lanes += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(first_lanes(length - i), x + i), inv16),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        const __m128i codes = _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(v));  // zero past length
        biased_sum = _mm_add_epi64(biased_sum, _mm_sad_epu8(_mm_xor_si128(codes, bias), _mm_setzero_si128()));
        const __m128i arranged = _mm_shuffle_epi8(codes, order);
        if (length - i > kCellK) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), arranged);
        } else {
            _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), arranged);
        }
    }
    *sum = static_cast<int32_t>(_mm_cvtsi128_si64(biased_sum) + _mm_extract_epi64(biased_sum, 1) - 128 * lanes);
    *scale = amax / EDGEVLA_QUANT_QMAX;
    return true;
}

// Four rows share the unpacked codes of one block; a single row reads one
// block at a time too (one sequential weight stream, see above).
void rows(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block) {
    int64_t row = row_begin;
    for (; row + 4 <= row_end; row += 4) tile<4>(args, row, block);
    for (; row < row_end; ++row) tile<1>(args, row, block);
}

}  // namespace

void gemm_w4a8_f32_avx512_vnni(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                               int64_t block_end) {
    for_row_chunks(row_begin, row_end, args.w.k, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t block = block_begin; block < block_end; ++block) rows(args, chunk_begin, chunk_end, block);
    });
}

void quantize_w4a8_avx512(const QuantizeW4A8Args& args) { quantize_w4a8_rows(args, quantize_group); }

}  // namespace edgevla
