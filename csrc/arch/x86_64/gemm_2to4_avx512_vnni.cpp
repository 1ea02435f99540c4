// AVX-512 2:4 sparse GEMMs over the 2TO4_*_N16K16 layout (packed_formats.h).
//
// int8: a cell (16 channels x 16 k) holds two 64-byte value vectors and 16
// uint16 of metadata. Per channel, t = meta | meta << 14 gives in the low two
// bits of its four bytes the positions of the values of vector A (t) and B
// (t >> 4); or-ing in the group offsets makes them vpshufb indices into the
// 16 activations of the k-block, broadcast to every 128-bit lane from a copy
// staged once per chunk of rows (+ 128, unsigned, zero-padded to whole
// k-blocks: stage_u8_rows). vpdpbusd then multiplies the picked activations by
// the values, and the packed compensation (128 * rowsum) is subtracted at the
// end, exactly as in the dense VNNI kernel. Accumulation is exact.
//
// float32: value j's position ((meta >> 2 j) & 3) + 4 (j / 2) indexes the 16
// activations of the k-block with vpermps.
//
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt,
// this file only) and called only after dispatch.cpp has seen the CPU
// features at run time. Everything but the entry points has internal linkage.
#include "arch/x86_64/simd_avx512.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;
constexpr uint64_t kCellBytesS8 = 8 * kBlockN + 2 * kBlockN;
constexpr uint64_t kCellBytesF32 = 8 * kBlockN * 4 + 2 * kBlockN;

// (a & b) | c in one instruction.
inline __m512i and_or(__m512i a, __m512i b, __m512i c) { return _mm512_ternarylogic_epi32(a, b, c, 0xEA); }

// The 16 staged activations (+ 128, stage_u8_rows) of k-block kb of a row in
// every 128-bit lane: a broadcast straight from memory, a load with no
// shuffle-port uop (the shuffle port is what the vpshufb of every cell
// already saturates).
inline __m512i activations_u8(const uint8_t* row, int64_t kb) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + kb * kBlockK)));
}

// Rows [row, row + MR) x blocks [block, block + NB), int8.
// `staged` is row `row`'s staged activations, `ld` bytes a row.
template <int MR, int NB>
void tile_s8(const Gemm2to4S8Args& args, int64_t row, int64_t block, const uint8_t* staged, int64_t ld) {
    const Packed2to4View& w = args.w;
    const uint8_t* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = staged + r * ld;
    const uint8_t* cells[NB];
    for (int j = 0; j < NB; ++j) cells[j] = w.cells + static_cast<uint64_t>((block + j) * w.k_blocks) * kCellBytesS8;

    const __m512i two_bits = _mm512_set1_epi32(0x03030303);
    const __m512i offsets_a = _mm512_set1_epi32(0x08000800);  // groups 0, 2, 0, 2
    const __m512i offsets_b = _mm512_set1_epi32(0x0C040C04);  // groups 1, 3, 1, 3
    __m512i acc[MR][NB][2];  // vectors A and B accumulate apart: two chains of vpdpbusd, not one
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NB; ++j) acc[r][j][0] = acc[r][j][1] = _mm512_setzero_si512();

    for (int64_t kb = 0; kb < w.k_blocks; ++kb) {
        __m512i x[MR];
        for (int r = 0; r < MR; ++r) x[r] = activations_u8(a[r], kb);
        for (int j = 0; j < NB; ++j) {
            const uint8_t* cell = cells[j] + static_cast<uint64_t>(kb) * kCellBytesS8;
            if (MR < 4) prefetch_stream(cell, kCellBytesS8);  // a GEMV: see kernel_common.h
            const __m512i meta =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 8 * kBlockN)));
            const __m512i t = _mm512_or_si512(meta, _mm512_slli_epi32(meta, 14));
            const __m512i index_a = and_or(t, two_bits, offsets_a);
            const __m512i index_b = and_or(_mm512_srli_epi32(t, 4), two_bits, offsets_b);
            const __m512i values_a = _mm512_loadu_si512(cell);
            const __m512i values_b = _mm512_loadu_si512(cell + 4 * kBlockN);
            for (int r = 0; r < MR; ++r) {
                acc[r][j][0] = _mm512_dpbusd_epi32(acc[r][j][0], _mm512_shuffle_epi8(x[r], index_a), values_a);
                acc[r][j][1] = _mm512_dpbusd_epi32(acc[r][j][1], _mm512_shuffle_epi8(x[r], index_b), values_b);
            }
        }
    }
    for (int j = 0; j < NB; ++j) {
        const int64_t col0 = (block + j) * kBlockN, cols = block_columns(w.n, block + j);
        const __m512i compensation = _mm512_loadu_si512(w.compensation + col0);
        for (int r = 0; r < MR; ++r) {
            const __m512i sum = _mm512_add_epi32(acc[r][j][0], acc[r][j][1]);
            store_s8_epilogue(args.epilogue, row + r, col0, cols, _mm512_sub_epi32(sum, compensation),
                              args.c + (row + r) * args.ldc);
        }
    }
}

// Rows [row, row + MR) x one block, float32.
template <int MR>
void tile_f32(const Gemm2to4F32Args& args, int64_t row, int64_t block) {
    const Packed2to4View& w = args.w;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytesF32;
    const __m512i two_bits = _mm512_set1_epi32(3);
    __m512 acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();

    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += kCellBytesF32) {
        const int64_t k0 = kb * kBlockK;
        const __mmask16 mask = first_lanes(window_length(w.k, k0, kBlockK));
        __m512 x[MR];
        for (int r = 0; r < MR; ++r) x[r] = _mm512_maskz_loadu_ps(mask, args.x + (row + r) * args.ldx + k0);
        const __m512i meta =
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 8 * kBlockN * 4)));
        const float* values = reinterpret_cast<const float*>(cell);
        for (int v = 0; v < 8; ++v) {
            const __m512i index = and_or(_mm512_srli_epi32(meta, 2 * v), two_bits, _mm512_set1_epi32(4 * (v / 2)));
            const __m512 value = _mm512_loadu_ps(values + v * kBlockN);
            for (int r = 0; r < MR; ++r) acc[r] = _mm512_fmadd_ps(value, _mm512_permutexvar_ps(index, x[r]), acc[r]);
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

}  // namespace

void gemm_2to4_s8_avx512_vnni(const Gemm2to4S8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                              int64_t block_end) {
    // Rows in fours share the metadata decoding of two blocks; the 1 to 3
    // rows left (all of a GEMV) take one block at a time, so the weights are
    // read as one sequential stream, which the hardware prefetcher follows
    // (two blocks at once measured much slower with the weights in DRAM).
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t ld = args.w.k_blocks * kBlockK;
    for_row_chunks(row_begin, row_end, ld, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        uint8_t* staged = thread_scratch(static_cast<size_t>((chunk_end - chunk_begin) * ld));
        stage_u8_rows(args.a + chunk_begin * args.lda, args.lda, args.w.k, chunk_end - chunk_begin, ld, staged);
        const int64_t tiled_end = chunk_begin + (chunk_end - chunk_begin) / 4 * 4;
        int64_t block = block_begin;
        for (; block + 2 <= block_end; block += 2) {
            for (int64_t row = chunk_begin; row < tiled_end; row += 4) {
                tile_s8<4, 2>(args, row, block, staged + (row - chunk_begin) * ld, ld);
            }
        }
        if (block < block_end) {
            for (int64_t row = chunk_begin; row < tiled_end; row += 4) {
                tile_s8<4, 1>(args, row, block, staged + (row - chunk_begin) * ld, ld);
            }
        }
        const uint8_t* thin = staged + (tiled_end - chunk_begin) * ld;
        for (block = block_begin; block < block_end; ++block) {
            switch (chunk_end - tiled_end) {
                case 3: tile_s8<3, 1>(args, tiled_end, block, thin, ld); break;
                case 2: tile_s8<2, 1>(args, tiled_end, block, thin, ld); break;
                case 1: tile_s8<1, 1>(args, tiled_end, block, thin, ld); break;
                default: break;
            }
        }
    });
}

void gemm_2to4_f32_avx512_vnni(const Gemm2to4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                               int64_t block_end) {
    for_row_chunks(row_begin, row_end, args.w.k, 4, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t block = block_begin; block < block_end; ++block) {
            int64_t row = chunk_begin;
            for (; row + 4 <= chunk_end; row += 4) tile_f32<4>(args, row, block);
            for (; row < chunk_end; ++row) tile_f32<1>(args, row, block);
        }
    });
}

}  // namespace edgevla
