// AVX2 kernels: packed W8A8 GEMM and per-token quantization for x86-64 CPUs
// without AVX-512 VNNI.
//
// Compiled with -mavx2 (CMakeLists.txt, this file only) and called only after
// dispatch.cpp has seen AVX2 at run time. Everything but the entry points has
// internal linkage and no standard-library template is used, so no AVX2 code
// can leak into a function the linker shares with baseline code (hence
// __builtin_fabsf rather than the inline std::fabs).
//
// Products. Without VNNI the cheapest exact int8 dot product is vpmaddubsw
// (unsigned x signed bytes, adjacent pairs summed to int16) then vpmaddwd by
// ones (pairs of int16 to int32). Its int16 pair sums saturate unless both
// products stay small: with |w| (0..128) as the unsigned operand and the
// activation given w's sign (vpsignb) as the signed one, a pair is at most
// 2 * 128 * 127 = 32512 < 32767, so the sum is exact, as long as no
// activation is -128 (negated, it would wrap). Activations quantized by this
// library's dynamic path never are (symmetric, +-127); static scales can
// clamp to -128. So each panel of rows is checked once when staged: a panel
// holding a -128 takes the widening path instead, int8 -> int16 and
// vpmaddwd (int16 x int16 -> int32, 2 * 128 * 128 at most, never
// saturates), half as many products an instruction. Both are exact; which
// one runs changes only the time. (The +128 trick of the VNNI kernels
// saturates here: 255 * 127 + 255 * 127 > 32767, as ONNX Runtime's u8 x s8
// kernels do on these CPUs.)
//
// Measured on a 2-vCPU Zen 3 (no VNNI), 1 thread (2026-12-07): register-only
// loops, vpmaddwd + vpaddd 26-30 GMAC/s, vpsignb + vpmaddubsw + vpmaddwd +
// vpaddd 54-57; this kernel (benchmarks/cpu/avx2_int8_paths.py), signed
// path 48-50 GMAC/s at M >= 16 and 19-28 at M = 1 (K, N 768-3072), the
// widening path 1.5-1.8x slower.
//
// The activations of a chunk of rows are staged once as int8 panels of four
// rows (stage_row_panels): for each group of 4 k, the rows' four bytes side
// by side, so a tile broadcasts each row's group with one load from one
// pointer. The signed tile is 4 rows x a whole block: 8 accumulators, the
// block's two weight vectors and their magnitudes, ones, one broadcast.
// The widening tile is 4 rows x half a block (8 channels): 8 accumulators,
// the half's two widened weight vectors and the broadcasts; the two halves
// of a block run one after the other over the same panel (the block's
// weights stay in L1) and meet in the epilogue. Measured on a Sapphire
// Rapids core, 1 thread, M >= 16 (2026-12-06), widening tiles: 2 rows x a
// whole block 37-41 GMAC/s, 4 rows x half a block 57-72, six rows 48-51 and
// five 49-57 (GCC spills accumulators past 16 ymm registers).
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

// A chunk's activations as panels of kTileRows rows (stage_row_panels), zero past k.
void stage_s8_panels(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t groups, int8_t* staged) {
    stage_row_panels<kTileRows>(a, lda, k, rows, groups, int8_t{0}, [](int8_t v) { return v; }, staged);
}

// A row's four staged activations of one group in every 32-bit lane: [a0 a1 a2 a3] x 8.
inline __m256i broadcast_group(const int8_t* a) {
    int32_t bytes;
    std::memcpy(&bytes, a, 4);  // a fixed size: one load, not a call
    return _mm256_set1_epi32(bytes);
}

// The same four activations widened to int16, in every 64-bit lane: [a0 a1 a2 a3] x 4.
inline __m256i broadcast_group_s16(const int8_t* a) {
    int32_t bytes;
    std::memcpy(&bytes, a, 4);
    return _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(bytes)));
}

inline __m256i load_half(const int8_t* cell, int half) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 32 * half));
}

// Rows [row, row + MR) x one block from their panel, no activation -128.
// GEMVs (MR < kTileRows) read the weights once, as one stream (prefetched,
// see kernel_common.h).
template <int MR>
void signed_tile(const GemmPackedArgs& args, int64_t row, int64_t block, const int8_t* panel) {
    const PackedS8View& w = args.w;
    const int8_t* cell = w.weights + block * w.k_groups * kCellBytes;
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t group = 0; group < w.k_groups; ++group, cell += kCellBytes, panel += MR * 4) {
        if (MR < kTileRows) prefetch_stream(cell, kCellBytes);
        const __m256i low = load_half(cell, 0), high = load_half(cell, 1);
        const __m256i low_abs = _mm256_abs_epi8(low), high_abs = _mm256_abs_epi8(high);
        for (int r = 0; r < MR; ++r) {
            const __m256i a = broadcast_group(panel + r * 4);
            acc[r][0] = add_signed_dot4(acc[r][0], low_abs, low, a);
            acc[r][1] = add_signed_dot4(acc[r][1], high_abs, high, a);
        }
    }
    finish_s8_rows<MR>(args, row, block, acc, /*compensated=*/false);
}

// Four channels of a cell (16 bytes: four k each), widened to int16.
inline __m256i widen_channels(const int8_t* bytes) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
}

// The exact sums of rows [0, MR) of `panel` x channels 8 half .. 8 half + 7
// of block `block`, into sums[r][8 half .. 8 half + 7], by widening: any
// activation, -128 too. Each accumulator holds two partial sums for each of
// four channels, added once at the end of K.
template <int MR>
void half_block_sums(const PackedS8View& w, int64_t block, int half, const int8_t* panel, int32_t (*sums)[16]) {
    const int8_t* cell = w.weights + block * w.k_groups * kCellBytes + 32 * half;
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t group = 0; group < w.k_groups; ++group, cell += kCellBytes, panel += MR * 4) {
        const __m256i first = widen_channels(cell), second = widen_channels(cell + 16);
        for (int r = 0; r < MR; ++r) {
            const __m256i a16 = broadcast_group_s16(panel + r * 4);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(first, a16));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(second, a16));
        }
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[r] + 8 * half), finish_pairs(acc[r][0], acc[r][1]));
    }
}

// Rows [row, row + MR) x one block of 16 channels from their panel, by widening.
template <int MR>
void widening_tile(const GemmPackedArgs& args, int64_t row, int64_t block, const int8_t* panel) {
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

template <int MR>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block, const int8_t* panel, bool holds_min) {
    if (holds_min) {
        widening_tile<MR>(args, row, block, panel);
    } else {
        signed_tile<MR>(args, row, block, panel);
    }
}

// Rows [row, row + rows) x one block, rows <= kTileRows, from their panel.
void panel_rows(const GemmPackedArgs& args, int64_t rows, int64_t row, int64_t block, const int8_t* panel,
                bool holds_min) {
    switch (rows) {
        case 4: tile<4>(args, row, block, panel, holds_min); break;
        case 3: tile<3>(args, row, block, panel, holds_min); break;
        case 2: tile<2>(args, row, block, panel, holds_min); break;
        case 1: tile<1>(args, row, block, panel, holds_min); break;
        default: break;
    }
}

}  // namespace

void gemm_packed_s8_f32_avx2(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                             int64_t block_begin, int64_t block_end) {
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t groups = args.w.k_groups, ld = groups * 4;  // bytes of a staged row
    for_row_chunks(row_begin, row_end, ld, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        const int64_t rows = chunk_end - chunk_begin, panels = (rows + kTileRows - 1) / kTileRows;
        uint8_t* scratch = thread_scratch(static_cast<size_t>(rows * ld + panels));
        int8_t* staged = reinterpret_cast<int8_t*>(scratch);
        bool* holds_min = reinterpret_cast<bool*>(scratch + rows * ld);  // per panel: an activation is -128
        stage_s8_panels(args.a + chunk_begin * args.lda, args.lda, args.w.k, rows, groups, staged);
        for (int64_t p = 0; p < panels; ++p) {
            const int64_t count = rows - p * kTileRows < kTileRows ? rows - p * kTileRows : kTileRows;
            const void* found = std::memchr(staged + p * kTileRows * ld, 0x80, static_cast<size_t>(count * ld));
            holds_min[p] = found != nullptr;
        }
        for (int64_t block = block_begin; block < block_end; ++block) {
            for (int64_t p = 0; p < panels; ++p) {
                const int64_t row = chunk_begin + p * kTileRows;
                const int64_t tile_rows = chunk_end - row < kTileRows ? chunk_end - row : kTileRows;
                panel_rows(args, tile_rows, row, block, staged + p * kTileRows * ld, holds_min[p]);
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
