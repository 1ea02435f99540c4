// AVX-VNNI kernels: the packed W8A8 and the W4A8 GEMMs on the VEX-encoded, 256-bit vpdpbusd
// of Alder Lake and later Intel cores (Alder / Raptor / Meteor / Arrow Lake,
// the x86 robot PCs of these years: they have AVX-VNNI but no AVX-512) and of
// Zen 5 parts without AVX-512.
//
// Compiled with -mavx2 -mfma -mavxvnni (CMakeLists.txt, this file only) and
// called only after dispatch.cpp has seen AVX2, FMA and AVX-VNNI at run time.
// Everything but the entry points has internal linkage (simd_avx2.h), so no
// AVX-VNNI code can leak into a function the linker shares with baseline code.
//
// The arithmetic is that of the AVX-512 VNNI kernel at half the width:
// vpdpbusd multiplies the activations + 128, unsigned, by the signed weights,
// and the packed compensation 128 * rowsum(W) is subtracted at the end
// (packed_formats.h). A block of 16 channels is two ymm accumulators a row
// (channels 0-7 and 8-15: a cell's two 32-byte halves). The epilogue is the
// AVX2 one (simd_avx2.h), bit-identical to the reference.
//
// With 16 ymm registers the tile is 6 rows x 1 block: 12 accumulators, the
// block's two weight vectors and one broadcast. Fewer rows keep several
// groups in flight instead (thin_tile), so vpdpbusd's latency (5 cycles, two
// issued a cycle on Golden Cove) stays hidden down to M = 1.
//
// The W4A8 GEMM (int4 weights, int8 activations) is the AVX2 tile
// (gemm_w4a8_avx2_tile.h) with its products summed by two vpdpbusd a half
// cell (even and odd k) instead of vpmaddubsw + vpmaddwd.
//
// The activations of a chunk of rows are staged once as panels (stage_panels):
// + 128, zero-padded to whole groups of 4, and interleaved so that a tile's
// rows lie side by side for each group. The k loop then walks one pointer
// with fixed offsets; six row pointers plus the loop's own did not fit the
// general registers and were reloaded from the stack on every group.
#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "kernel_common.h"

#include "arch/x86_64/gemm_w4a8_avx2_tile.h"
#include "arch/x86_64/simd_avx2.h"

#include <immintrin.h>

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;
constexpr int kTileRows = 6;

// A chunk's activations as panels of kTileRows rows (stage_row_panels), each
// + 128 as vpdpbusd's unsigned operand, 0x80 (a zero activation) past k.
void stage_panels(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t groups, uint8_t* staged) {
    stage_row_panels<kTileRows>(a, lda, k, rows, groups, uint8_t{0x80},
                                [](int8_t v) { return static_cast<uint8_t>(v ^ 0x80); }, staged);
}

// The four staged activations at `a` in every 32-bit lane.
inline __m256i broadcast_group(const uint8_t* a) {
    int32_t bytes;
    std::memcpy(&bytes, a, 4);  // a fixed size: one load, not a call
    return _mm256_set1_epi32(bytes);
}

inline __m256i load_half(const int8_t* cell, int half) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + 32 * half));
}

// Rows [row, row + MR) x one block, 4 <= MR <= 6: 2 MR independent
// accumulators. `panel` is the rows' staged panel (stage_panels).
template <int MR>
void tile(const GemmPackedArgs& args, int64_t row, int64_t block, const uint8_t* panel) {
    const PackedS8View& w = args.w;
    const int8_t* cell = w.weights + block * w.k_groups * kCellBytes;
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t group = 0; group < w.k_groups; ++group, cell += kCellBytes, panel += MR * 4) {
        const __m256i low = load_half(cell, 0), high = load_half(cell, 1);
        for (int r = 0; r < MR; ++r) {
            const __m256i a_u8 = broadcast_group(panel + r * 4);
            acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], a_u8, low);
            acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], a_u8, high);
        }
    }
    finish_s8_rows<MR>(args, row, block, acc);
}

// 1 to 3 rows x one block: the rest of M after the tiles, and all of a GEMV.
// Alternate groups go to separate accumulators (4 chains for one row, 2 for
// two or three) so that about ten vpdpbusd are independent; integer sums do
// not depend on the order. The weights are read once, as one stream
// (prefetched, see kernel_common.h).
template <int MR>
void thin_tile(const GemmPackedArgs& args, int64_t row, int64_t block, const uint8_t* panel) {
    constexpr int kChains = MR == 1 ? 4 : 2;
    const PackedS8View& w = args.w;
    const int8_t* cells = w.weights + block * w.k_groups * kCellBytes;
    __m256i acc[MR][kChains][2];
    for (int r = 0; r < MR; ++r)
        for (int h = 0; h < kChains; ++h) acc[r][h][0] = acc[r][h][1] = _mm256_setzero_si256();

    int64_t group = 0;
    for (; group + kChains <= w.k_groups; group += kChains) {
        prefetch_stream(cells + group * kCellBytes, kChains * kCellBytes);
        for (int h = 0; h < kChains; ++h) {
            const int8_t* cell = cells + (group + h) * kCellBytes;
            const __m256i low = load_half(cell, 0), high = load_half(cell, 1);
            for (int r = 0; r < MR; ++r) {
                const __m256i a_u8 = broadcast_group(panel + ((group + h) * MR + r) * 4);
                acc[r][h][0] = _mm256_dpbusd_avx_epi32(acc[r][h][0], a_u8, low);
                acc[r][h][1] = _mm256_dpbusd_avx_epi32(acc[r][h][1], a_u8, high);
            }
        }
    }
    for (; group < w.k_groups; ++group) {  // the last groups
        const int8_t* cell = cells + group * kCellBytes;
        const __m256i low = load_half(cell, 0), high = load_half(cell, 1);
        for (int r = 0; r < MR; ++r) {
            const __m256i a_u8 = broadcast_group(panel + (group * MR + r) * 4);
            acc[r][0][0] = _mm256_dpbusd_avx_epi32(acc[r][0][0], a_u8, low);
            acc[r][0][1] = _mm256_dpbusd_avx_epi32(acc[r][0][1], a_u8, high);
        }
    }
    __m256i sums[MR][2];
    for (int r = 0; r < MR; ++r) {
        for (int half = 0; half < 2; ++half) {
            sums[r][half] = acc[r][0][half];
            for (int h = 1; h < kChains; ++h) sums[r][half] = _mm256_add_epi32(sums[r][half], acc[r][h][half]);
        }
    }
    finish_s8_rows<MR>(args, row, block, sums);
}

// Rows [row, row + rows) x one block, rows <= kTileRows, from their panel.
void panel_rows(const GemmPackedArgs& args, int64_t rows, int64_t row, int64_t block, const uint8_t* panel) {
    switch (rows) {
        case 6: tile<6>(args, row, block, panel); break;
        case 5: tile<5>(args, row, block, panel); break;
        case 4: tile<4>(args, row, block, panel); break;
        case 3: thin_tile<3>(args, row, block, panel); break;
        case 2: thin_tile<2>(args, row, block, panel); break;
        case 1: thin_tile<1>(args, row, block, panel); break;
        default: break;
    }
}

// W4A8: a half cell's unsigned codes (c + 8) times the signed activations, 4 products to an int32 lane.
struct VnniDot {
    static __m256i add(__m256i dot, __m256i even, __m256i x_even, __m256i odd, __m256i x_odd) {
        return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(dot, even, x_even), odd, x_odd);
    }
};

}  // namespace

void gemm_w4a8_f32_avx_vnni(const GemmW4A8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                            int64_t block_end) {
    w4a8_rows<VnniDot>(args, row_begin, row_end, block_begin, block_end);
}

void gemm_packed_s8_f32_avx_vnni(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                 int64_t block_begin, int64_t block_end) {
    if (row_begin >= row_end || block_begin >= block_end) return;
    const int64_t groups = args.w.k_groups, ld = groups * 4;
    for_row_chunks(row_begin, row_end, ld, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        uint8_t* staged = thread_scratch(static_cast<size_t>((chunk_end - chunk_begin) * ld));
        stage_panels(args.a + chunk_begin * args.lda, args.lda, args.w.k, chunk_end - chunk_begin, groups, staged);
        // One block at a time: its weights stay in L1 while every panel of rows reads them.
        for (int64_t block = block_begin; block < block_end; ++block) {
            for (int64_t row = chunk_begin; row < chunk_end; row += kTileRows) {
                const int64_t rows = chunk_end - row < kTileRows ? chunk_end - row : kTileRows;
                panel_rows(args, rows, row, block, staged + (row - chunk_begin) * ld);
            }
        }
    });
}

int64_t int8_peak_loop_avx_vnni(int64_t iterations) {
    // 32 ymm vpdpbusd an iteration over 14 accumulators (16 registers less the
    // two operands): no chain is more than 3 deep, 15 cycles of latency
    // against the 16 that two issues a cycle take.
    constexpr int kDots = static_cast<int>(kInt8PeakMacsPerIteration / 32);
    constexpr int kChains = 14;
    __m256i a = _mm256_set1_epi32(0x04030201);                         // unsigned 1, 2, 3, 4
    __m256i b = _mm256_set1_epi32(static_cast<int32_t>(0xFF02FE01u));  // signed 1, -2, 2, -1
    // Opaque to the compiler, so it cannot fold the products out of the loop.
    __asm__("" : "+x"(a), "+x"(b));
    __m256i acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_setzero_si256();
    static_assert(kDots == 2 * kChains + 4, "two rounds over the accumulators and four more");
    for (int64_t i = 0; i < iterations; ++i) {
        for (int c = 0; c < kChains; ++c) acc[c] = _mm256_dpbusd_avx_epi32(acc[c], a, b);
        for (int c = 0; c < kChains; ++c) acc[c] = _mm256_dpbusd_avx_epi32(acc[c], a, b);
        for (int c = 0; c < 4; ++c) acc[c] = _mm256_dpbusd_avx_epi32(acc[c], a, b);
    }
    int64_t sum = 0;
    for (int c = 0; c < kChains; ++c) {
        alignas(32) int32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[c]);
        for (int lane = 0; lane < 8; ++lane) sum += lanes[lane];
    }
    return sum;
}

}  // namespace edgevla
