// 2:4 sparse weights in the fragment order of the sparse tensor cores
// (mma.sp m16n8k64 int8, m16n8k32 float16), packed on the host. Plain C++,
// built with or without CUDA, so the packing is tested on any machine.
//
// W (N, K), int8 or float16 bits, row-major with row stride ldw; every group
// of 4 consecutive k of a row (k = 4 c .. 4 c + 3, zero past K) holds at most
// 2 non-zeros (float16: +-0 count as zero). The MMA's A operand is W (16
// output channels per tile), its B operand the activations, so the kernels
// compute C^T tiles of 16 channels x 8 tokens.
//
// Tiles of 16 channels x kTileK k: NT = ceil(N / 16), KT = ceil(K / kTileK).
//   values  uint32 [NT][KT][32 lanes][4]   lane's A registers a0..a3
//   meta    uint32 [NT][KT][32 lanes]      lane's metadata register
// A warp loads a tile's values as one 512-byte coalesced read (16 bytes a
// lane) and its metadata as 128 bytes. 0.5625 bytes per weight for int8
// (0.5 + 1/16; the CPU's 2TO4_S8_N16K16 takes 0.625), 1.125 for float16.
//
// Within a group the two kept positions p0 < p1 (the non-zeros, completed
// with the lowest zero positions when a group has fewer than 2) give the
// nibble p0 | p1 << 2 (never 0b0000, 0b0101, 0b1010, 0b1111) and the two
// values in that order.
//
// A registers, g = lane / 4, t = lane % 4, compressed column cc = 2 c + i for
// value i of logical group c of the tile:
//   int8  (kTileK 64): a0 = row g, cc 4t..4t+3; a1 = row g+8, same; a2 = row g,
//         cc 16+4t..; a3 = row g+8, cc 16+4t.. (bytes in cc order)
//   f16   (kTileK 32): a0 = row g, cc 2t, 2t+1; a1 = row g+8; a2 = row g,
//         cc 8+2t, 9+2t; a3 = row g+8 (halves in cc order)
// int8 logical group c of a tile is physical group 4 (c % 4) + c / 4: the
// kernel's lane t loads 16 consecutive activations, k = 16 t .. 16 t + 15, and
// its register j must hold logical k 16 j + 4 t .. (the B fragment), so the
// 4 x 4 transpose of groups makes a contiguous load the fragment. float16
// groups are not permuted.
//
// Metadata: which (row, group) each nibble of a lane's register describes is
// given by MetaLayout. The PTX ISA shows it only in figures, so the packer
// implements the candidate readings below and the GPU decides: on an H200
// (sm_90, 2026-12-04) the exact products came from layout 2 for int8 and
// layout 0 for float16, the defaults of edgevla/cuda_kernels.py, which
// tests/test_cuda_kernels.py re-checks on every GPU it runs on.
#pragma once

#include <cstdint>

namespace edgevla::cuda {

constexpr int kTile2to4S8K = 64;
constexpr int kTile2to4F16K = 32;

struct Packed2to4MmaLayout {
    int64_t n_tiles = 0, k_tiles = 0;
    int64_t value_words = 0;  // uint32 words of values
    int64_t meta_words = 0;   // uint32 words of metadata
};

Packed2to4MmaLayout packed_2to4_mma_layout(int64_t n, int64_t k, bool f16);

// Candidate metadata layouts: for nibble q (0..7) of lane (g, t), the row
// within the tile and the logical group within the tile.
//   0  rows g | g+8 in the low | high 16 bits, groups 4t .. 4t+3
//   1  the lane's own A registers: nibbles 2r, 2r+1 = the two groups of a_r
//   2  one row per lane: row g + 8 (t % 2), groups 8 (t / 2) .. + 7   (int8 on sm_90)
//   3  one row per lane: row g + 8 (t / 2), groups 8 (t % 2) .. + 7
// float16 (threads t = 0, 1 of a quad hold metadata, t = 2, 3 repeat them):
//   0  rows g | g+8 in the low | high 16 bits, groups 4t .. 4t+3     (float16 on sm_90)
//   1  one row per lane: row g + 8t, groups 0 .. 7
constexpr int kMetaLayoutsS8 = 4;
constexpr int kMetaLayoutsF16 = 2;

// Throw std::invalid_argument naming the first row and k of a group with more
// than 2 non-zeros, or a bad meta_layout. values / meta: layout-sized buffers.
void pack_2to4_s8_mma(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int meta_layout, uint32_t* values,
                      uint32_t* meta);
void pack_2to4_f16_mma(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int meta_layout, uint32_t* values,
                       uint32_t* meta);

}  // namespace edgevla::cuda
