// AVX-512 int4 weight-only GEMM over the W4_N16K8 layout (packed_formats.h).
//
// A cell is 16 channels x 8 k: one register of 32-bit words, nibble i of word
// c being the code of channel c at k = 8 t + i. vpermps reads only the low 4
// bits of each index, so permuting a 16-entry table of the code values by the
// word (shifted right by 4 i) turns nibble i of all 16 channels into floats in
// one instruction; a broadcast activation and an FMA follow. Per group, the
// plain dot product of the codes is scaled once (one FMA per 16 channels).
// Each row's products go to 4 interleaved accumulators (k = 8 t + i into
// i % 4): one chain of dependent FMAs would be bound by their latency, not by
// their throughput (1 FMA per 16 weights is this kernel's floor). Every tile
// shape sums in this same order, so no output depends on the batch size or
// on how rows are split over threads.
//
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt,
// this file only) and called only after dispatch.cpp has seen the CPU
// features at run time. Everything but the entry point has internal linkage.
#include "arch/x86_64/simd_avx512.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

constexpr int kChains = 4;

// Rows [row, row + MR) x one block of 16 channels.
template <int MR>
void tile(const GemmW4F32Args& args, int64_t row, int64_t block) {
    const PackedW4View& w = args.w;
    // The 4-bit two's complement codes 0..15 as floats.
    const __m512 code_values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    const int64_t cells_per_group = w.group / kCellK;
    const int64_t full_cells = w.k / kCellK;  // cells whose 8 activations all lie inside K
    const uint32_t* codes = w.codes + block * w.k_cells * kBlockN;
    const float* scales = w.scales + block * w.k_groups * kBlockN;
    const float* x[MR];
    for (int r = 0; r < MR; ++r) x[r] = args.x + (row + r) * args.ldx;

    __m512 acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t group = 0; group < w.k_groups; ++group) {
        __m512 partial[MR][kChains];
        for (int r = 0; r < MR; ++r)
            for (int h = 0; h < kChains; ++h) partial[r][h] = _mm512_setzero_ps();
        const int64_t cell_begin = group * cells_per_group;
        const int64_t cell_end = cell_begin + cells_per_group < w.k_cells ? cell_begin + cells_per_group : w.k_cells;
        for (int64_t cell = cell_begin; cell < cell_end; ++cell) {
            // The cell's 8 activations per row; the last, partial cell reads a zero-padded copy.
            float tail[MR][kCellK];
            const float* xs[MR];
            for (int r = 0; r < MR; ++r) {
                if (cell < full_cells) {
                    xs[r] = x[r] + cell * kCellK;
                } else {
                    copy_window(x[r], w.k, cell * kCellK, kCellK, tail[r]);
                    xs[r] = tail[r];
                }
            }
            __m512i words = _mm512_loadu_si512(codes + cell * kBlockN);
            for (int i = 0; i < kCellK; ++i) {
                const __m512 weights = _mm512_permutexvar_ps(words, code_values);
                words = _mm512_srli_epi32(words, 4);
                for (int r = 0; r < MR; ++r) {
                    partial[r][i % kChains] = _mm512_fmadd_ps(weights, _mm512_set1_ps(xs[r][i]), partial[r][i % kChains]);
                }
            }
        }
        const __m512 scale = _mm512_loadu_ps(scales + group * kBlockN);
        for (int r = 0; r < MR; ++r) {
            __m512 sum = partial[r][0];
            for (int h = 1; h < kChains; ++h) sum = _mm512_add_ps(sum, partial[r][h]);
            acc[r] = _mm512_fmadd_ps(sum, scale, acc[r]);
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

// Four rows share the unpacked codes of one block (4 x 4 partial sums); a
// single row reads one block at a time too: the blocks lie one after the
// other, so the weights are one sequential stream, which the hardware
// prefetcher follows. (Two blocks at once, two streams, measured about 2x
// slower at M = 1 with the weights in DRAM, for the same speed in cache.)
void rows(const GemmW4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block) {
    int64_t row = row_begin;
    for (; row + 4 <= row_end; row += 4) tile<4>(args, row, block);
    for (; row < row_end; ++row) tile<1>(args, row, block);
}

}  // namespace

void gemm_w4_f32_avx512_vnni(const GemmW4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                             int64_t block_end) {
    for_row_chunks(row_begin, row_end, args.w.k, 4, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t block = block_begin; block < block_end; ++block) rows(args, chunk_begin, chunk_end, block);
    });
}

}  // namespace edgevla
