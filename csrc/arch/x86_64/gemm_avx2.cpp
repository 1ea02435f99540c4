// AVX2 kernels: packed W8A8 GEMM and per-token quantization for x86-64 CPUs
// without AVX-512 VNNI.
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry points has
// internal linkage and no standard-library template is used, so no AVX2 code
// can leak into a function the linker shares with baseline code (hence
// __builtin_fabsf rather than the inline std::fabs).
//
// The int8 products are widened to int16 and summed in pairs by vpmaddwd
// (int16 x int16 -> int32), which cannot saturate: a pair is at most
// 2 * 128 * 128. (vpmaddubsw would save the widening but saturates at int16,
// e.g. for 255 * 127 + 255 * 127 with the +128 trick, or for -128 * -128
// pairs with the sign trick.) Each accumulator holds two partial sums for
// each of four channels, added once at the end of K.
//
// The activations of a chunk of rows are widened once, as panels of up to
// four rows (stage_s16_panels): for each group of 4 k, the rows' four int16
// side by side, so a tile broadcasts each row's group with one load from one
// pointer. A tile is 4 rows x half a block (8 channels): 8 accumulators, the
// half's two widened weight vectors and the broadcasts, and each widening
// serves four rows. The two halves of a block run one after the other over
// the same panel (the block's weights stay in L1) and meet in the epilogue.
// Measured on a Sapphire Rapids core, 1 thread, M >= 16 (2026-12-06): the
// old tile (2 rows x a whole block, each row's group widened beside every
// vpmaddwd) 37-41 GMAC/s; this one 57-72. Six rows (12 accumulators) ran at
// 48-51 and five at 49-57: GCC spills accumulators once the products'
// temporaries no longer fit in the 16 ymm registers.
#include "cpu_kernels.h"
#include "kernel_common.h"
#include "arch/x86_64/simd_avx2.h"
#include "epilogue_math.h"

#include <immintrin.h>

#include <cfloat>
#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;

constexpr int kTileRows = 4;  // rows of a tile and of a staged panel

// A chunk's activations as panels of kTileRows rows (stage_row_panels),
// widened to int16, zero past k.
void stage_s16_panels(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t groups, int16_t* staged) {
    stage_row_panels<kTileRows>(a, lda, k, rows, groups, int16_t{0}, [](int8_t v) { return int16_t{v}; }, staged);
}

// A row's four staged activations of one group in every 64-bit lane: [a0 a1 a2 a3] x 4.
inline __m256i broadcast_group(const int16_t* a) {
    int64_t values;
    std::memcpy(&values, a, 8);  // a fixed size: one load, not a call
    return _mm256_set1_epi64x(values);
}

// Four channels of a cell (16 bytes: four k each), widened to int16.
inline __m256i widen_channels(const int8_t* bytes) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
}

// The exact sums of rows [0, MR) of `panel` x channels 8 half .. 8 half + 7
// of block `block`, into sums[r][8 half .. 8 half + 7].
template <int MR>
void half_block_sums(const PackedS8View& w, int64_t block, int half, const int16_t* panel, int32_t (*sums)[16]) {
    const int8_t* cell = w.weights + block * w.k_groups * kCellBytes + 32 * half;
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t group = 0; group < w.k_groups; ++group, cell += kCellBytes, panel += MR * 4) {
        const __m256i first = widen_channels(cell), second = widen_channels(cell + 16);
        for (int r = 0; r < MR; ++r) {
            const __m256i a16 = broadcast_group(panel + r * 4);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(first, a16));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(second, a16));
        }
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[r] + 8 * half), finish_pairs(acc[r][0], acc[r][1]));
    }
}

// Rows [row, row + MR) x one block of 16 channels, from the rows' panel.
template <int MR>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block, const int16_t* panel) {
    alignas(32) int32_t sums[MR][16];
    half_block_sums<MR>(args.w, block, 0, panel, sums);
    half_block_sums<MR>(args.w, block, 1, panel, sums);
    const int64_t col0 = block * kBlockN, cols = block_columns(args.w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols,
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[r])),
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[r] + 8)),
                            args.c + (row + r) * args.ldc);
    }
}

// Rows [row, row + rows) x one block, rows <= kTileRows, from their panel.
void panel_rows(const GemmPackedArgs& args, int64_t rows, int64_t row, int64_t block, const int16_t* panel) {
    switch (rows) {
        case 4: tile<4>(args, row, block, panel); break;
        case 3: tile<3>(args, row, block, panel); break;
        case 2: tile<2>(args, row, block, panel); break;
        case 1: tile<1>(args, row, block, panel); break;
        default: break;
    }
}

}  // namespace

void gemm_packed_s8_f32_avx2(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                             int64_t block_begin, int64_t block_end) {
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t groups = args.w.k_groups, ld = groups * 4;  // int16 a staged row
    for_row_chunks(row_begin, row_end, ld, 2, [&](int64_t chunk_begin, int64_t chunk_end) {
        int16_t* staged = reinterpret_cast<int16_t*>(
            thread_scratch(static_cast<size_t>((chunk_end - chunk_begin) * ld) * sizeof(int16_t)));
        stage_s16_panels(args.a + chunk_begin * args.lda, args.lda, args.w.k, chunk_end - chunk_begin, groups, staged);
        for (int64_t block = block_begin; block < block_end; ++block) {
            for (int64_t row = chunk_begin; row < chunk_end; row += kTileRows) {
                const int64_t rows = chunk_end - row < kTileRows ? chunk_end - row : kTileRows;
                panel_rows(args, rows, row, block, staged + (row - chunk_begin) * ld);
            }
        }
    });
}

bool quantize_row_avx2(int64_t k, const float* x, int8_t* q, float* scale) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 float_max = _mm256_set1_ps(FLT_MAX);
    __m256 amax8 = _mm256_setzero_ps();
    __m256 not_finite = _mm256_setzero_ps();
    const int64_t vector_end = k - k % 8;
    for (int64_t i = 0; i < vector_end; i += 8) {
        const __m256 magnitude = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
        not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps(magnitude, float_max, _CMP_NLE_UQ));
        amax8 = _mm256_max_ps(magnitude, amax8);
    }
    if (_mm256_movemask_ps(not_finite)) return false;
    __m128 amax4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    amax4 = _mm_max_ps(amax4, _mm_movehl_ps(amax4, amax4));
    amax4 = _mm_max_ss(amax4, _mm_shuffle_ps(amax4, amax4, 1));
    float amax = _mm_cvtss_f32(amax4);
    for (int64_t i = vector_end; i < k; ++i) {
        const float magnitude = __builtin_fabsf(x[i]);
        if (!(magnitude <= FLT_MAX)) return false;
        amax = edgevla_max_f32(magnitude, amax);
    }
    const float inv = amax >= EDGEVLA_QUANT_MIN_AMAX ? EDGEVLA_QUANT_QMAX / amax : 0.0f;
    const __m256 inv8 = _mm256_set1_ps(inv);
    const __m256 low = _mm256_set1_ps(-EDGEVLA_QUANT_QMAX), high = _mm256_set1_ps(EDGEVLA_QUANT_QMAX);
    for (int64_t i = 0; i < vector_end; i += 8) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv8),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(v, low), high);
        const __m256i ints = _mm256_cvttps_epi32(v);
        const __m128i int16s = _mm_packs_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(int16s, int16s));
    }
    for (int64_t i = vector_end; i < k; ++i) {
        const float v = __builtin_nearbyintf(x[i] * inv);
        q[i] = static_cast<int8_t>(edgevla_min_f32(edgevla_max_f32(v, -EDGEVLA_QUANT_QMAX), EDGEVLA_QUANT_QMAX));
    }
    *scale = amax / EDGEVLA_QUANT_QMAX;
    return true;
}

}  // namespace edgevla
