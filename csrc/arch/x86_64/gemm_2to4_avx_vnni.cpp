// AVX-VNNI 2:4 sparse int8 GEMM over the 2TO4_S8_N16K16 layout
// (packed_formats.h): the AVX-512 VNNI kernel (gemm_2to4_avx512_vnni.cpp) at
// 256 bits, for the x86 robot PCs without AVX-512 (Alder Lake and later).
//
// A cell (16 channels x 16 k) is two halves of 8 channels, one ymm each: per
// channel, t = meta | meta << 14 gives in the low two bits of its four bytes
// the positions of the values of vector A (t) and B (t >> 4); or-ing in the
// group offsets makes them vpshufb indices into the 16 activations of the
// k-block, which a vbroadcasti128 puts in both 128-bit lanes straight from a
// copy staged once per chunk of rows (+ 128, unsigned, padded to whole
// k-blocks with 0x80). vpdpbusd multiplies the picked activations by the
// values; the packed compensation (128 * rowsum) comes off in the epilogue.
// Accumulation is exact; the epilogue is the AVX2 one, bit-identical to the
// reference.
//
// It replaces, in the avx_vnni table, the AVX2 2:4 kernel, which widens to
// int16 for vpmaddwd (vpmaddubsw could saturate).
//
// Compiled with -mavx2 -mfma -mavxvnni (CMakeLists.txt) and called only after
// dispatch.cpp has seen AVX2, FMA and AVX-VNNI at run time. Everything but the
// entry point has internal linkage (simd_avx2.h).
#include "arch/x86_64/simd_avx2.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

#include <immintrin.h>

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;
constexpr uint64_t kCellBytes = 8 * kBlockN + 2 * kBlockN;  // values A, values B, 16 uint16 of metadata
constexpr int kTileRows = 4;

// How far ahead a GEMV (1-3 rows) prefetches its weight stream
// (kernel_common.h). Each 256-bit cell takes about twice the instructions of
// the AVX-512 kernel's, so the 4 KiB that suffices there leaves this one
// short of memory-level parallelism: with the weights in DRAM (4096 x 4096,
// M = 1, 1 thread, 2026-12-06) 972-983 us at 4 KiB, 912-914 at 8, 839-861 at
// 16 (dense: 1138-1168 us).
constexpr uint64_t kGemvPrefetchBytes = 16384;

// `rows` rows of int8 activations (k of them at a stride of lda), + 128 as
// unsigned bytes and padded with 0x80 (a zero activation) to `ld` bytes a row.
void stage_rows(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t ld, uint8_t* staged) {
    for (int64_t r = 0; r < rows; ++r, a += lda, staged += ld) {
        for (int64_t i = 0; i < k; ++i) staged[i] = static_cast<uint8_t>(a[i] ^ 0x80);
        std::memset(staged + k, 0x80, static_cast<size_t>(ld - k));
    }
}

// The 16 staged activations of k-block kb of a row, in both 128-bit lanes.
inline __m256i activations_u8(const uint8_t* row, int64_t kb) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + kb * kBlockK)));
}

// The vpshufb indices of vectors A and B for the 8 channels of half `half` of a cell.
struct HalfIndices {
    __m256i a, b;
};
inline HalfIndices half_indices(const uint8_t* cell, int half) {
    const __m256i two_bits = _mm256_set1_epi32(0x03030303);
    const __m256i offsets_a = _mm256_set1_epi32(0x08000800);  // groups 0, 2, 0, 2
    const __m256i offsets_b = _mm256_set1_epi32(0x0C040C04);  // groups 1, 3, 1, 3
    const __m256i meta = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(cell + 8 * kBlockN + 16 * half)));
    const __m256i t = _mm256_or_si256(meta, _mm256_slli_epi32(meta, 14));
    return {_mm256_or_si256(_mm256_and_si256(t, two_bits), offsets_a),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(t, 4), two_bits), offsets_b)};
}

inline __m256i load_values(const uint8_t* cell, int vector, int half) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 4 * kBlockN * vector + 32 * half));
}

// A block's vpshufb indices, [k-block][half][A, B], decoded once for every
// 4-row tile of a chunk to read: with more than one tile the decoding, a
// third of a tile's vector work, is not repeated per tile.
constexpr int64_t kIndexBytesPerKBlock = 2 * 2 * 32;
void decode_indices(const uint8_t* cells, int64_t k_blocks, uint8_t* out) {
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
        const uint8_t* cell = cells + static_cast<uint64_t>(kb) * kCellBytes;
        for (int half = 0; half < 2; ++half) {
            const HalfIndices index = half_indices(cell, half);
            __m256i* at = reinterpret_cast<__m256i*>(out + kb * kIndexBytesPerKBlock + 64 * half);
            _mm256_storeu_si256(at, index.a);
            _mm256_storeu_si256(at + 1, index.b);
        }
    }
}

// Rows [row, row + MR) x one block. `staged` is row `row`'s staged
// activations, `ld` bytes a row; `decoded` the block's indices
// (decode_indices), or null to decode them here. Up to two rows, vectors A
// and B accumulate apart (two chains of vpdpbusd, not one, to hide its
// latency); four rows have eight chains without that, and no registers for it.
template <int MR>
void tile(const Gemm2to4S8Args& args, int64_t row, int64_t block, const uint8_t* staged, int64_t ld,
          const uint8_t* decoded) {
    constexpr int kChains = MR <= 2 ? 2 : 1;
    const Packed2to4View& w = args.w;
    const uint8_t* cells = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytes;
    __m256i acc[MR][2][kChains];
    for (int r = 0; r < MR; ++r)
        for (int h = 0; h < 2; ++h)
            for (int c = 0; c < kChains; ++c) acc[r][h][c] = _mm256_setzero_si256();

    for (int64_t kb = 0; kb < w.k_blocks; ++kb) {
        const uint8_t* cell = cells + static_cast<uint64_t>(kb) * kCellBytes;
        if (MR < kTileRows) prefetch_stream(cell, kCellBytes, kGemvPrefetchBytes);  // a GEMV
        __m256i x[MR];
        for (int r = 0; r < MR; ++r) x[r] = activations_u8(staged + r * ld, kb);
        for (int half = 0; half < 2; ++half) {
            HalfIndices index;
            if (decoded != nullptr) {
                const __m256i* at = reinterpret_cast<const __m256i*>(decoded + kb * kIndexBytesPerKBlock + 64 * half);
                index = {_mm256_loadu_si256(at), _mm256_loadu_si256(at + 1)};
            } else {
                index = half_indices(cell, half);
            }
            const __m256i values_a = load_values(cell, 0, half), values_b = load_values(cell, 1, half);
            for (int r = 0; r < MR; ++r) {
                __m256i& chain_a = acc[r][half][0];
                __m256i& chain_b = acc[r][half][kChains - 1];
                chain_a = _mm256_dpbusd_avx_epi32(chain_a, _mm256_shuffle_epi8(x[r], index.a), values_a);
                chain_b = _mm256_dpbusd_avx_epi32(chain_b, _mm256_shuffle_epi8(x[r], index.b), values_b);
            }
        }
    }
    __m256i sums[MR][2];
    for (int r = 0; r < MR; ++r) {
        for (int h = 0; h < 2; ++h) {
            sums[r][h] = acc[r][h][0];
            for (int c = 1; c < kChains; ++c) sums[r][h] = _mm256_add_epi32(sums[r][h], acc[r][h][c]);
        }
    }
    finish_s8_rows<MR>(args, row, block, sums);
}

}  // namespace

void gemm_2to4_s8_avx_vnni(const Gemm2to4S8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                           int64_t block_end) {
    // Rows in fours share each cell's index decoding, and with more than one
    // 4-row tile in the chunk every tile (and the rows left) reads the
    // block's indices decoded once; 1 to 3 rows (all of a GEMV) read the
    // weights as one prefetched stream.
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t ld = args.w.k_blocks * kBlockK;
    const int64_t index_bytes = args.w.k_blocks * kIndexBytesPerKBlock;
    for_row_chunks(row_begin, row_end, ld, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        const int64_t rows = chunk_end - chunk_begin;
        uint8_t* staged = thread_scratch(static_cast<size_t>(rows * ld + index_bytes));
        uint8_t* decoded = staged + rows * ld;
        stage_rows(args.a + chunk_begin * args.lda, args.lda, args.w.k, rows, ld, staged);
        const int64_t tiled_end = chunk_begin + rows / kTileRows * kTileRows;
        const uint8_t* thin = staged + (tiled_end - chunk_begin) * ld;
        const bool decode_once = tiled_end - chunk_begin > kTileRows;
        for (int64_t block = block_begin; block < block_end; ++block) {
            if (decode_once) {
                decode_indices(args.w.cells + static_cast<uint64_t>(block * args.w.k_blocks) * kCellBytes,
                               args.w.k_blocks, decoded);
            }
            const uint8_t* indices = decode_once ? decoded : nullptr;
            for (int64_t row = chunk_begin; row < tiled_end; row += kTileRows) {
                tile<kTileRows>(args, row, block, staged + (row - chunk_begin) * ld, ld, indices);
            }
            switch (chunk_end - tiled_end) {
                case 3: tile<3>(args, tiled_end, block, thin, ld, indices); break;
                case 2: tile<2>(args, tiled_end, block, thin, ld, indices); break;
                case 1: tile<1>(args, tiled_end, block, thin, ld, indices); break;
                default: break;
            }
        }
    });
}

}  // namespace edgevla
