// NEON 2:4 sparse GEMMs over the 2TO4_*_N16K16 layout (packed_formats.h).
//
// int8: per 4 channels, t = meta | meta << 14 gives the tbl indices of both
// value vectors (packed_formats.h), tbl picks the activations from the
// k-block's 16, and sdot multiplies them by the values, signed x signed, so
// no compensation is needed. float32: each value's activation is loaded from
// the k-block's 16 at its 2-bit position plus the group offset.
//
// Compiled with -march=armv8.2-a+dotprod (CMakeLists.txt, this file only) and
// called only after dispatch.cpp has seen asimddp at run time. Everything but
// the entry points has internal linkage.
#include "arch/aarch64/simd_neon.h"
#include "cpu_kernels.h"
#include "kernel_common.h"

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;
constexpr uint64_t kCellBytesS8 = 8 * kBlockN + 2 * kBlockN;
constexpr uint64_t kCellBytesF32 = 8 * kBlockN * 4 + 2 * kBlockN;

template <int MR>
void tile_s8(const Gemm2to4S8Args& args, int64_t row, int64_t block) {
    const Packed2to4View& w = args.w;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytesS8;
    const uint32x4_t two_bits = vdupq_n_u32(0x03030303u);
    const uint32x4_t offsets_a = vdupq_n_u32(0x08000800u);
    const uint32x4_t offsets_b = vdupq_n_u32(0x0C040C04u);
    int32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_s32(0);

    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += kCellBytesS8) {
        int8x16_t x[MR];
        for (int r = 0; r < MR; ++r) {
            int8_t window[kBlockK];
            copy_window(args.a + (row + r) * args.lda, w.k, kb * kBlockK, kBlockK, window);
            x[r] = vld1q_s8(window);
        }
        for (int q = 0; q < 4; ++q) {
            uint16_t meta16[4];
            std::memcpy(meta16, cell + 8 * kBlockN + 8 * q, sizeof meta16);
            const uint32x4_t meta = vmovl_u16(vld1_u16(meta16));
            const uint32x4_t t = vorrq_u32(meta, vshlq_n_u32(meta, 14));
            const uint8x16_t index_a = vreinterpretq_u8_u32(vorrq_u32(vandq_u32(t, two_bits), offsets_a));
            const uint8x16_t index_b =
                vreinterpretq_u8_u32(vorrq_u32(vandq_u32(vshrq_n_u32(t, 4), two_bits), offsets_b));
            const int8x16_t values_a = vld1q_s8(reinterpret_cast<const int8_t*>(cell + 16 * q));
            const int8x16_t values_b = vld1q_s8(reinterpret_cast<const int8_t*>(cell + 4 * kBlockN + 16 * q));
            for (int r = 0; r < MR; ++r) {
                acc[r][q] = vdotq_s32(acc[r][q], values_a, vqtbl1q_s8(x[r], index_a));
                acc[r][q] = vdotq_s32(acc[r][q], values_b, vqtbl1q_s8(x[r], index_b));
            }
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) {
        store16_s8_epilogue(args.epilogue, row + r, col0, cols, acc[r], args.c + (row + r) * args.ldc);
    }
}

template <int MR>
void tile_f32(const Gemm2to4F32Args& args, int64_t row, int64_t block) {
    const Packed2to4View& w = args.w;
    const uint8_t* cell = w.cells + static_cast<uint64_t>(block * w.k_blocks) * kCellBytesF32;
    float32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_f32(0.0f);

    for (int64_t kb = 0; kb < w.k_blocks; ++kb, cell += kCellBytesF32) {
        float x[MR][kBlockK];
        for (int r = 0; r < MR; ++r) copy_window(args.x + (row + r) * args.ldx, w.k, kb * kBlockK, kBlockK, x[r]);
        uint16_t meta[kBlockN];
        std::memcpy(meta, cell + 8 * kBlockN * 4, sizeof meta);
        const float* values = reinterpret_cast<const float*>(cell);
        for (int v = 0; v < 8; ++v) {
            for (int q = 0; q < 4; ++q) {
                const float32x4_t value = vld1q_f32(values + v * kBlockN + 4 * q);
                int position[4];
                for (int i = 0; i < 4; ++i) position[i] = 4 * (v / 2) + ((meta[4 * q + i] >> (2 * v)) & 3);
                for (int r = 0; r < MR; ++r) {
                    const float picked[4] = {x[r][position[0]], x[r][position[1]], x[r][position[2]],
                                             x[r][position[3]]};
                    acc[r][q] = vfmaq_f32(acc[r][q], value, vld1q_f32(picked));
                }
            }
        }
    }
    const int64_t col0 = block * kBlockN, cols = block_columns(w.n, block);
    for (int r = 0; r < MR; ++r) store16_f32_epilogue(args.epilogue, col0, cols, acc[r], args.c + (row + r) * args.ldc);
}

template <typename Args, void (*Tile2)(const Args&, int64_t, int64_t), void (*Tile1)(const Args&, int64_t, int64_t)>
void run_tiles(const Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
        int64_t row = row_begin;
        for (; row + 2 <= row_end; row += 2) Tile2(args, row, block);
        if (row < row_end) Tile1(args, row, block);
    }
}

}  // namespace

void gemm_2to4_s8_neon_dot(const Gemm2to4S8Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                           int64_t block_end) {
    run_tiles<Gemm2to4S8Args, tile_s8<2>, tile_s8<1>>(args, row_begin, row_end, block_begin, block_end);
}

void gemm_2to4_f32_neon_dot(const Gemm2to4F32Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                            int64_t block_end) {
    run_tiles<Gemm2to4F32Args, tile_f32<2>, tile_f32<1>>(args, row_begin, row_end, block_begin, block_end);
}

}  // namespace edgevla
