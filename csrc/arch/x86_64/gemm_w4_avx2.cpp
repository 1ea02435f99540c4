// AVX2 int4 weight-only GEMM over the W4_N16K8 layout (packed_formats.h), for
// x86-64 CPUs without AVX-512: nibble i of 8 channels' words is moved to the
// top of each 32-bit lane and shifted back arithmetically (sign extension of
// the 4-bit two's complement code), converted to float, and multiplied by the
// broadcast activation; per group the plain dot product is scaled once.
// No FMA: the AVX2 table needs nothing but AVX2.
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry point has
// internal linkage.
#include "arch/x86_64/simd_avx2.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

// Code i (0..7) of each of 8 words, as float.
inline __m256 code_values(__m256i words, int i) {
    const __m128i up = _mm_cvtsi32_si128(28 - 4 * i);
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_sll_epi32(words, up), 28));
}

template <int MR>
void tile(const GemmW4F32Args& args, int64_t row, int64_t block) {
    const PackedW4View& w = args.w;
    const int64_t cells_per_group = w.group / kCellK;
    const int64_t full_cells = w.k / kCellK;
    const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
    const float* scales = w.scales + block * w.k_groups * kBlockN;
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();

    for (int64_t group = 0; group < w.k_groups; ++group) {
        __m256 partial[MR][2];
        for (int r = 0; r < MR; ++r) partial[r][0] = partial[r][1] = _mm256_setzero_ps();
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        for (int64_t cell = cell_begin; cell < cell_end; ++cell) {
            float tail[MR][kCellK];
            const float* xs[MR];
            for (int r = 0; r < MR; ++r) {
                const float* x = args.x + (row + r) * args.ldx;
                if (cell < full_cells) {
                    xs[r] = x + cell * kCellK;
                } else {
                    copy_window(x, w.k, cell * kCellK, kCellK, tail[r]);
                    xs[r] = tail[r];
                }
            }
            for (int half = 0; half < 2; ++half) {
                const __m256i words =
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + cell * kBlockN + 8 * half));
                for (int i = 0; i < kCellK; ++i) {
                    const __m256 weights = code_values(words, i);
                    for (int r = 0; r < MR; ++r) {
                        partial[r][half] =
                            _mm256_add_ps(partial[r][half], _mm256_mul_ps(weights, _mm256_set1_ps(xs[r][i])));
                    }
                }
            }
        }
        for (int half = 0; half < 2; ++half) {
            const __m256 scale = _mm256_loadu_ps(scales + group * kBlockN + 8 * half);
            for (int r = 0; r < MR; ++r) acc[r][half] = _mm256_add_ps(acc[r][half], _mm256_mul_ps(partial[r][half], scale));
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_f32_epilogue(args.epilogue, col0, cols, acc[r][0], acc[r][1], args.c + (row + r) * args.ldc);
    }
}

}  // namespace

void gemm_w4_f32_avx2(const GemmW4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                      int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) tile<2>(args, row, block);
        if (row < row_end) tile<1>(args, row, block);
    }
}

}  // namespace edgevla
