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
//
// The register tile is 8 rows x 2 blocks (16 accumulators): per group of 4 k,
// 2 weight loads, 8 activation broadcasts and 16 vpdpbusd. The activations
// are staged once per chunk of rows, + 128 (a XOR 0x80) and zero-padded to
// whole groups, in a per-thread buffer (stage_u8_rows, thread_scratch): the
// broadcasts are then plain loads, where an xor per broadcast took an ALU slot
// beside every two vpdpbusd (and a partial last group needs no special case). Measured on a
// Zen 4 core: a vpdpbusd loop with the xor runs at 90 % of the one without.
// Larger tiles (10 x 2, 6 x 4, 8 x 3) ran slower on the Xeon this was first
// tuned on (their row pointers spill).
#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "kernel_common.h"

#include "arch/x86_64/simd_avx512.h"

#include <cfloat>
#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;
// The register tile: kTileRows x kTileBlocks accumulators.
constexpr int kTileRows = 8;
constexpr int kTileBlocks = 2;

// The four staged activations at `a` in every 32-bit lane.
inline __m512i broadcast_group(const uint8_t* a) {
    int32_t bytes;
    std::memcpy(&bytes, a, 4);  // a fixed size: one load, not a call
    return _mm512_set1_epi32(bytes);
}

// Rows [row, row + MR) x blocks [block, block + NB): MR * NB zmm accumulators.
// Per group of 4 k: NB weight loads, MR broadcasts, MR * NB vpdpbusd.
// `staged` is row `row`'s staged activations, `ld` bytes a row.
template <int MR, int NB>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block, const uint8_t* staged, int64_t ld) {
    const PackedS8View& w = args.w;
    const int8_t* cells[NB];
    for (int j = 0; j < NB; ++j) cells[j] = w.weights + (block + j) * w.k_groups * kCellBytes;
    const uint8_t* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = staged + r * ld;

    __m512i acc[MR][NB];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();

    for (int64_t group = 0; group < w.k_groups; ++group) {
        __m512i weights[NB];
        for (int j = 0; j < NB; ++j) weights[j] = _mm512_loadu_si512(cells[j] + group * kCellBytes);
        for (int r = 0; r < MR; ++r) {
            const __m512i a_u8 = broadcast_group(a[r] + group * 4);
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
            v = activate(epilogue.activation, v);
            if (epilogue.residual) {
                const float* residual = epilogue.residual + (row + r) * epilogue.ld_residual + col0;
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, residual));
            }
            _mm512_mask_storeu_ps(args.c + (row + r) * args.ldc + col0, mask, v);
        }
    }
}

// 1 to 3 rows x one block: what is left of M after the 8- and 4-row tiles,
// and all of a GEMV. One block at a time keeps the weights one sequential
// stream (the blocks lie one after the other), which the hardware prefetcher
// follows; two blocks at once, two streams, measured much slower at M = 1
// with the weights in DRAM. Four accumulators per row, over alternate groups,
// keep vpdpbusd's latency hidden; integer sums do not depend on the order.
template <int MR>
void thin_tile(const GemmPackedArgs& args, int64_t row, int64_t block, const uint8_t* staged, int64_t ld) {
    constexpr int kChains = 4;
    const PackedS8View& w = args.w;
    const int8_t* cells = w.weights + block * w.k_groups * kCellBytes;
    const uint8_t* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = staged + r * ld;
    __m512i acc[MR][kChains];
    for (int r = 0; r < MR; ++r)
        for (int h = 0; h < kChains; ++h) acc[r][h] = _mm512_setzero_si512();

    int64_t group = 0;
    for (; group + kChains <= w.k_groups; group += kChains) {
        prefetch_stream(cells + group * kCellBytes, kChains * kCellBytes);  // see kernel_common.h
        for (int h = 0; h < kChains; ++h) {
            const __m512i weights = _mm512_loadu_si512(cells + (group + h) * kCellBytes);
            for (int r = 0; r < MR; ++r) {
                acc[r][h] = _mm512_dpbusd_epi32(acc[r][h], broadcast_group(a[r] + (group + h) * 4), weights);
            }
        }
    }
    for (; group < w.k_groups; ++group) {  // the last groups
        const __m512i weights = _mm512_loadu_si512(cells + group * kCellBytes);
        for (int r = 0; r < MR; ++r) {
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], broadcast_group(a[r] + group * 4), weights);
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    const __m512i compensation = _mm512_loadu_si512(w.compensation + col0);
    for (int r = 0; r < MR; ++r) {
        const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc[r][0], acc[r][1]), _mm512_add_epi32(acc[r][2], acc[r][3]));
        store_s8_epilogue(args.epilogue, row + r, col0, cols, _mm512_sub_epi32(sum, compensation),
                          args.c + (row + r) * args.ldc);
    }
}

// Rows [row_begin, row_end) (a multiple of 4) x blocks [block, block + NB),
// in tiles of kTileRows rows, then one of 4; `staged` is row row_begin's.
template <int NB>
void rows_of_tiles(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end, int64_t block,
                   const uint8_t* staged, int64_t ld) {
    int64_t row = row_begin;
    for (; row + kTileRows <= row_end; row += kTileRows, staged += kTileRows * ld) {
        tile<kTileRows, NB>(args, row, block, staged, ld);
    }
    if (row < row_end) tile<4, NB>(args, row, block, staged, ld);
}

}  // namespace

void gemm_packed_s8_f32_avx512_vnni(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                    int64_t block_begin, int64_t block_end) {
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t ld = args.w.k_groups * 4;
    for_row_chunks(row_begin, row_end, ld, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        uint8_t* staged = thread_scratch(static_cast<size_t>((chunk_end - chunk_begin) * ld));
        stage_u8_rows(args.a + chunk_begin * args.lda, args.lda, args.w.k, chunk_end - chunk_begin, ld, staged);
        const int64_t tiled_end = chunk_begin + (chunk_end - chunk_begin) / 4 * 4;
        if (tiled_end > chunk_begin) {
            int64_t block = block_begin;
            for (; block + kTileBlocks <= block_end; block += kTileBlocks) {
                rows_of_tiles<kTileBlocks>(args, chunk_begin, tiled_end, block, staged, ld);
            }
            if (block < block_end) rows_of_tiles<1>(args, chunk_begin, tiled_end, block, staged, ld);
        }
        const uint8_t* thin = staged + (tiled_end - chunk_begin) * ld;
        for (int64_t block = block_begin; block < block_end; ++block) {
            switch (chunk_end - tiled_end) {
                case 3: thin_tile<3>(args, tiled_end, block, thin, ld); break;
                case 2: thin_tile<2>(args, tiled_end, block, thin, ld); break;
                case 1: thin_tile<1>(args, tiled_end, block, thin, ld); break;
                default: break;
            }
        }
    });
}

int64_t int8_peak_loop_avx512_vnni(int64_t iterations) {
    constexpr int kChains = kInt8PeakMacsPerIteration / 64;  // 16 zmm accumulators: 4-5 cycles of latency covered
    __m512i a = _mm512_set1_epi32(0x04030201);                  // unsigned 1, 2, 3, 4
    __m512i b = _mm512_set1_epi32(static_cast<int32_t>(0xFF02FE01u));  // signed 1, -2, 2, -1
    // Opaque to the compiler, so it cannot fold the products out of the loop.
    __asm__("" : "+v"(a), "+v"(b));
    __m512i acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_setzero_si512();
    for (int64_t i = 0; i < iterations; ++i) {
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    }
    int64_t sum = 0;
    for (int c = 0; c < kChains; ++c) {
        alignas(64) int32_t lanes[16];
        _mm512_store_si512(lanes, acc[c]);
        for (int lane = 0; lane < 16; ++lane) sum += lanes[lane];
    }
    return sum;
}

double f32_peak_loop_avx512(int64_t iterations) {
    constexpr int kChains = kF32PeakFmasPerIteration / 16;  // 16 zmm accumulators cover the FMA latency
    __m512 one = _mm512_set1_ps(1.0f);
    __asm__("" : "+v"(one));  // opaque: the compiler cannot fold the FMAs out of the loop
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < iterations; ++i) {
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], one, one);
    }
    double sum = 0.0;
    for (int c = 0; c < kChains; ++c) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, acc[c]);
        for (int lane = 0; lane < 16; ++lane) sum += lanes[lane];
    }
    return sum;
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
