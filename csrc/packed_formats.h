/* Packed weight formats of edgevla, declared once for the CPU kernels, the
 * Python bindings and (later) the CUDA kernels. Weights are packed once, when
 * a model is loaded; a packed buffer is a plain byte array that starts with an
 * edgevla_packed_header, so it can be saved, mapped or handed to any kernel
 * and validated first (magic, format, version, header checksum, sizes, total
 * length).
 *
 * All integers are little-endian (every target edgevla supports). Sections
 * start at 64-byte boundaries of the buffer. Every format keeps N output
 * channels in blocks of 16 (one AVX-512 register of int32 or float32, two
 * AVX2 registers, four NEON registers), padded with zeros, so that one packed
 * buffer runs on every ISA.
 *
 * Kernels never read outside a buffer whose header validated, whatever its
 * contents: indices stored in the body are masked or clamped by the kernels
 * (documented per format), so a corrupt body gives wrong numbers, not a crash.
 *
 * ---- EDGEVLA_PACKED_FORMAT_S8_N16K4, version 1: int8 weights, W8A8 GEMM ----
 * A weight W int8 (N, K) (the nn.Linear layout) with one float32 scale per
 * output channel. Let N_pad = N rounded up to block_n = 16, K_pad = K rounded
 * up to block_k = 4, KG = K_pad / 4 (groups of four k).
 *   param[0] = w_scale offset, param[1] = compensation offset.
 *
 *   offset 64                weights: int8 [N_pad / 16][KG][16][4]
 *                              byte (b, g, j, i) = W[16 b + j][4 g + i],
 *                              zero where 16 b + j >= N or 4 g + i >= K
 *   w_scale_offset           float32 [N_pad], w_scale[n], zero past N
 *   compensation_offset      int32 [N_pad], 128 * sum_k W[n][k], zero past N
 *   total_bytes              end of the buffer
 *
 * One (b, g) cell is 64 bytes: 16 output channels x 4 consecutive k, exactly
 * one AVX-512 register for vpdpbusd, two AVX2 registers, four NEON registers
 * for sdot. vpdpbusd multiplies unsigned by signed bytes, so the AVX-512 VNNI
 * kernel feeds a + 128 (a XOR 0x80) as the unsigned operand and subtracts
 * the compensation: sum (a + 128) w = sum a w + 128 sum w. With K <=
 * EDGEVLA_GEMM_S8S8_MAX_K the compensation fits int32 (|128 * 128 * K| <
 * 2^31), and int32 wrap-around in the accumulation cancels exactly.
 *
 * ---- EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32 / SPARSE_S8_N16W32, version 1 ----
 * Unstructured sparsity: the non-zeros of W float32 or int8 (N, K), in a
 * sliced ELLPACK over windows of k ("SELL-16/W32"). block_n = 16 (a slice of
 * output channels), block_k = 32 (a window of k). NS = ceil(N / 16) slices,
 * NW = ceil(K / 32) windows. param[0] = S, the number of slots; param[1] =
 * the number of non-zeros (information only, <= 16 S).
 *
 * Within slice s and window w, lane c (channel 16 s + c) has some non-zeros
 * at k in [32 w, 32 w + 32); the window gets L(s, w) = the largest such count
 * over the 16 lanes slots. Slot t of the window holds, for every lane, the
 * lane's t-th non-zero of the window (in increasing k): its position k - 32 w
 * (0..31) and its value; lanes with fewer non-zeros hold position 0, value 0.
 *
 *   offset 64                slice_slots: uint32 [NS + 1], slice_slots[0] = 0,
 *                              slice s owns slots [slice_slots[s], slice_slots[s + 1])
 *   window_slots_offset      uint8 [NS][NW], L(s, w) (<= 32)
 *   slots_offset             slots: [S] x { uint8 position[16]; value[16] }
 *                              value float32 (80-byte slots) or int8 (32-byte slots)
 *   w_scale_offset (S8 only) float32 [16 NS], w_scale[n], zero past N
 *   total_bytes
 *
 * The kernels hold a window of x in registers (two AVX-512 registers of
 * float32, one of int16) and pick each lane's activation with one permute
 * (vpermt2ps / vpermw), which use only the low 5 bits of a position; ISAs
 * without such a permute mask the position with 31 and read a zero-padded
 * copy of the window. Slot ranges are clamped to [0, S] and to the slice.
 * The format was chosen by measurement (float32, AVX-512, one thread, K x N =
 * 768 x 3072, microseconds at M = 1 / M = 16; 3072 x 768 and the small-vla
 * shapes rank the same):
 *                                          90 % sparse        50 % sparse
 *   CSR rows, 16-wide gathers               89 / 1461          379 / 6305
 *   sliced ELLPACK (rows sorted), gathers   72 / 1401          364 / 6936
 *   bitmap per (16 channels, k), vexpand   534 / 2195          538 / 2212
 *   SELL-16 with windows of 16 k            37 /  656          106 / 1646
 *   SELL-16 with windows of 32 k (this)     29 /  513          102 / 1527
 *   SELL-16 with windows of 64 k            26 /  528           95 / 1582
 * Gathers cost about 13 cycles each on this CPU; a window held in registers
 * turns each into one permute. Windows of 64 need two permutes and a blend,
 * windows of 16 pad more (2.5x the non-zeros at 90 % vs 2.0x for 32).
 * int8 values are multiplied signed x signed in int16 (vpmaddwd / vpdpwssd,
 * smull on NEON), so no compensation is needed; the accumulation is exact.
 *
 * ---- EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16 / 2TO4_S8_N16K16, version 1 ----
 * 2:4 structured sparsity: each group of 4 consecutive k of a row (k = 4 g ..
 * 4 g + 3, zero past K) holds at most 2 non-zeros. Each group keeps exactly 2
 * values with their 2-bit positions p0 < p1 in the group (a group with fewer
 * non-zeros keeps zeros at unused positions). block_n = 16, block_k = 16 (a
 * k-block of 4 groups). NB = ceil(N / 16), KB = ceil(K / 16). param = {0, 0}.
 *
 * A channel keeps 8 values per k-block; value j (0..7) lies in group j / 2.
 * Its metadata is one uint16 per (channel, k-block): bits 2 j .. 2 j + 1 hold
 * the position of value j in its group, so value j sits at k = 16 t + 4 (j / 2)
 * + ((meta >> 2 j) & 3) of k-block t.
 *
 *   offset 64                cells [NB][KB], then (S8 only) w_scale and compensation
 *   F32 cell (544 bytes):    float32 values[8][16]  (value j of channel c at [j][c])
 *                            uint16 meta[16]
 *   S8 cell (160 bytes):     int8 values[2][16][4]  ([0][c] = v0 v4 v1 v5,
 *                                                    [1][c] = v2 v6 v3 v7 of channel c)
 *                            uint16 meta[16]
 *   w_scale_offset (S8)      float32 [16 NB], zero past N
 *   compensation_offset (S8) int32 [16 NB], 128 * sum of the channel's values
 *   total_bytes
 *
 * The int8 order lets one 32-bit shift-or, t = meta | meta << 14, give the
 * byte-shuffle indices of both value vectors of a channel: the low two bits of
 * the bytes of t are (p0, p4, p1, p5) and of t >> 4 are (p2, p6, p3, p7);
 * adding the group offsets (0, 8, 0, 8) and (4, 12, 4, 12) makes them indices
 * into the 16 activations of the k-block (vpshufb, NEON tbl), which then meet
 * the values in a dot product: vpdpbusd with the same +128 compensation as
 * S8_N16K4 (AVX-512), vpmaddwd after widening to int16 (AVX2), sdot (NEON). The float kernels pick value j's
 * activation with a 16-entry permute (vpermps / vpermt2ps). Every position is
 * masked to 2 bits and every index stays inside the 16-value window, so no
 * metadata can send a kernel out of bounds. Memory per weight: 0.625 bytes
 * (int8), 2.125 bytes (float32).
 *
 * ---- EDGEVLA_PACKED_FORMAT_W4_N16K8, version 1: int4 weights, fp32 activations ----
 * Weight-only int4, group-wise: W[n][k] = q[n][k] * scale[n][k / G] with
 * codes q in [-8, 7] (4-bit two's complement, zero point 0) and G = block_k
 * in {32, 64, 128}; block_n = 16. The codes are those of
 * edgevla.quant.primitives.pack_int4 (element 2 i in the low nibble of byte
 * i, element 2 i + 1 in the high nibble, ONNX's int4 order), re-ordered here.
 * NB = ceil(N / 16), KC = ceil(K / 8) cells of 8 k, KG = ceil(K / G) groups.
 * param = {0, 0}.
 *
 *   offset 64                codes: uint32 [NB][KC][16]; word (b, t, c) holds
 *                              q[16 b + c][8 t + i] in bits 4 i .. 4 i + 3
 *                              (i = 0..7), zero past N or K
 *   scales_offset            float32 [NB][KG][16], scale[16 b + c][g], zero past N
 *   total_bytes
 *
 * On AVX-512 a word's low nibble indexes a 16-entry table of the code values
 * (vpermps uses only the low 4 bits), so a 64-byte cell of 16 channels x 8 k
 * turns into 8 float vectors with one shift and one permute each; AVX2 and
 * NEON sign-extend each nibble with a shift left and an arithmetic shift
 * right. G is a multiple of 8, so no cell straddles two groups. 0.5 bytes per weight plus 4 / G for the
 * scales. The int4 x int8 GEMMs (gemm_w4a8_f32) read the same buffer: the
 * low nibbles of a word's 4 bytes are its codes at k = 8 t + 0, 2, 4, 6, the
 * high nibbles those at 8 t + 1, 3, 5, 7, each a byte lane of a dot product.
 */
#ifndef EDGEVLA_PACKED_FORMATS_H
#define EDGEVLA_PACKED_FORMATS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "EVLA" as bytes in the buffer (read as a little-endian uint32). */
#define EDGEVLA_PACKED_MAGIC 0x414C5645u

typedef enum edgevla_packed_format {
    EDGEVLA_PACKED_FORMAT_S8_N16K4 = 1,
    EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32 = 2,
    EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32 = 3,
    EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16 = 4,
    EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16 = 5,
    EDGEVLA_PACKED_FORMAT_W4_N16K8 = 6
} edgevla_packed_format;

#define EDGEVLA_PACKED_S8_N16K4_VERSION 1
#define EDGEVLA_PACKED_SPARSE_VERSION 1
#define EDGEVLA_PACKED_2TO4_VERSION 1
#define EDGEVLA_PACKED_W4_VERSION 1

#define EDGEVLA_PACKED_S8_BLOCK_N 16
#define EDGEVLA_PACKED_S8_BLOCK_K 4
#define EDGEVLA_PACKED_SPARSE_SLICE 16  /* block_n */
#define EDGEVLA_PACKED_SPARSE_WINDOW 32 /* block_k */
#define EDGEVLA_PACKED_2TO4_BLOCK_N 16
#define EDGEVLA_PACKED_2TO4_BLOCK_K 16
#define EDGEVLA_PACKED_W4_BLOCK_N 16
#define EDGEVLA_PACKED_W4_CELL_K 8
#define EDGEVLA_PACKED_ALIGN 64

/* Largest K of the float formats: far beyond any linear layer, and small
 * enough that no size product of a layout can overflow. */
#define EDGEVLA_PACKED_F32_MAX_K (1 << 24)

typedef struct edgevla_packed_header {
    uint32_t magic;                /*  0  EDGEVLA_PACKED_MAGIC */
    uint16_t format;               /*  4  edgevla_packed_format */
    uint16_t version;              /*  6  version of that format's layout */
    uint16_t block_n;              /*  8  output channels per block */
    uint16_t block_k;              /* 10  k per group / window / k-block */
    uint32_t header_bytes;         /* 12  sizeof(edgevla_packed_header) = 64 */
    int64_t n;                     /* 16  output channels (rows of W) */
    int64_t k;                     /* 24  input features (columns of W) */
    uint64_t param[2];             /* 32  format parameters, see each format above */
    uint64_t total_bytes;          /* 48  length of the whole buffer */
    uint64_t header_checksum;      /* 56  FNV-1a 64 of bytes 0..55, see below */
} edgevla_packed_header;

#ifdef __cplusplus
static_assert(sizeof(edgevla_packed_header) == 64, "the packed header is 64 bytes on every target");
#else
_Static_assert(sizeof(edgevla_packed_header) == 64, "the packed header is 64 bytes on every target");
#endif

/* FNV-1a (64-bit) of the first 56 header bytes, stored in header_checksum,
 * so a header damaged in a way that still looks self-consistent (say N
 * changed within one block of 16) is refused instead of read. */
static inline uint64_t edgevla_packed_header_checksum(const uint8_t* header) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (int i = 0; i < 56; ++i) {
        hash ^= header[i];
        hash *= 0x100000001b3ull;
    }
    return hash;
}

static inline uint64_t edgevla_packed_align(uint64_t bytes) {
    return (bytes + EDGEVLA_PACKED_ALIGN - 1) / EDGEVLA_PACKED_ALIGN * EDGEVLA_PACKED_ALIGN;
}

static inline int64_t edgevla_packed_blocks(int64_t count, int64_t block) { return (count + block - 1) / block; }

/* ---- S8_N16K4: the section sizes of a packed (n, k) weight, computed from n
 * and k alone; a header is valid only if it agrees with them. The caller
 * keeps n <= 2^31 and 0 <= k <= EDGEVLA_GEMM_S8S8_MAX_K so that no product
 * overflows. */
typedef struct edgevla_packed_s8_layout {
    int64_t n_pad, k_pad, k_groups, n_blocks;
    uint64_t w_scale_offset, compensation_offset, total_bytes;
} edgevla_packed_s8_layout;

static inline edgevla_packed_s8_layout edgevla_packed_s8_layout_of(int64_t n, int64_t k) {
    edgevla_packed_s8_layout l;
    l.n_pad = (n + EDGEVLA_PACKED_S8_BLOCK_N - 1) / EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_N;
    l.k_pad = (k + EDGEVLA_PACKED_S8_BLOCK_K - 1) / EDGEVLA_PACKED_S8_BLOCK_K * EDGEVLA_PACKED_S8_BLOCK_K;
    l.k_groups = l.k_pad / EDGEVLA_PACKED_S8_BLOCK_K;
    l.n_blocks = l.n_pad / EDGEVLA_PACKED_S8_BLOCK_N;
    /* n_pad * k_pad is a multiple of 64 and so is 4 * n_pad: every section stays aligned. */
    l.w_scale_offset = (uint64_t)sizeof(edgevla_packed_header) + (uint64_t)l.n_pad * (uint64_t)l.k_pad;
    l.compensation_offset = l.w_scale_offset + 4u * (uint64_t)l.n_pad;
    l.total_bytes = l.compensation_offset + 4u * (uint64_t)l.n_pad;
    return l;
}

/* ---- SPARSE_*_N16W32: sections of a weight with `slots` slots. value_bytes
 * is 4 (float32) or 1 (int8). The caller keeps n < 2^31, k <= 2^24 and
 * slots <= n_slices * n_windows * 32. */
typedef struct edgevla_packed_sparse_layout {
    int64_t n_slices, n_windows;
    uint64_t slot_bytes;
    uint64_t window_slots_offset, slots_offset, w_scale_offset, total_bytes;
} edgevla_packed_sparse_layout;

static inline edgevla_packed_sparse_layout edgevla_packed_sparse_layout_of(int64_t n, int64_t k, uint64_t slots,
                                                                            int value_bytes) {
    edgevla_packed_sparse_layout l;
    l.n_slices = edgevla_packed_blocks(n, EDGEVLA_PACKED_SPARSE_SLICE);
    l.n_windows = edgevla_packed_blocks(k, EDGEVLA_PACKED_SPARSE_WINDOW);
    l.slot_bytes = (uint64_t)EDGEVLA_PACKED_SPARSE_SLICE * (1u + (uint64_t)value_bytes);
    l.window_slots_offset =
        edgevla_packed_align((uint64_t)sizeof(edgevla_packed_header) + 4u * ((uint64_t)l.n_slices + 1u));
    l.slots_offset = edgevla_packed_align(l.window_slots_offset + (uint64_t)l.n_slices * (uint64_t)l.n_windows);
    l.w_scale_offset = edgevla_packed_align(l.slots_offset + slots * l.slot_bytes);
    l.total_bytes = value_bytes == 1
                        ? edgevla_packed_align(l.w_scale_offset +
                                               4u * EDGEVLA_PACKED_SPARSE_SLICE * (uint64_t)l.n_slices)
                        : l.w_scale_offset;
    return l;
}

/* ---- 2TO4_*_N16K16: sections of an (n, k) weight; value_bytes 4 or 1. */
typedef struct edgevla_packed_2to4_layout {
    int64_t n_blocks, k_blocks;
    uint64_t cell_bytes;
    uint64_t w_scale_offset, compensation_offset, total_bytes;
} edgevla_packed_2to4_layout;

static inline edgevla_packed_2to4_layout edgevla_packed_2to4_layout_of(int64_t n, int64_t k, int value_bytes) {
    edgevla_packed_2to4_layout l;
    l.n_blocks = edgevla_packed_blocks(n, EDGEVLA_PACKED_2TO4_BLOCK_N);
    l.k_blocks = edgevla_packed_blocks(k, EDGEVLA_PACKED_2TO4_BLOCK_K);
    /* 8 values and one uint16 of metadata per channel. */
    l.cell_bytes = (uint64_t)EDGEVLA_PACKED_2TO4_BLOCK_N * (8u * (uint64_t)value_bytes + 2u);
    const uint64_t cells_end =
        (uint64_t)sizeof(edgevla_packed_header) + (uint64_t)l.n_blocks * (uint64_t)l.k_blocks * l.cell_bytes;
    const uint64_t channels = (uint64_t)l.n_blocks * EDGEVLA_PACKED_2TO4_BLOCK_N;
    if (value_bytes == 1) {
        l.w_scale_offset = edgevla_packed_align(cells_end);
        l.compensation_offset = edgevla_packed_align(l.w_scale_offset + 4u * channels);
        l.total_bytes = edgevla_packed_align(l.compensation_offset + 4u * channels);
    } else {
        l.w_scale_offset = l.compensation_offset = 0;
        l.total_bytes = edgevla_packed_align(cells_end);
    }
    return l;
}

/* ---- W4_N16K8: sections of an (n, k) weight with groups of `group` k. */
typedef struct edgevla_packed_w4_layout {
    int64_t n_blocks, k_cells, k_groups;
    uint64_t scales_offset, total_bytes;
} edgevla_packed_w4_layout;

static inline edgevla_packed_w4_layout edgevla_packed_w4_layout_of(int64_t n, int64_t k, int64_t group) {
    edgevla_packed_w4_layout l;
    l.n_blocks = edgevla_packed_blocks(n, EDGEVLA_PACKED_W4_BLOCK_N);
    l.k_cells = edgevla_packed_blocks(k, EDGEVLA_PACKED_W4_CELL_K);
    l.k_groups = edgevla_packed_blocks(k, group);
    const uint64_t channels = (uint64_t)l.n_blocks * EDGEVLA_PACKED_W4_BLOCK_N;
    l.scales_offset = edgevla_packed_align((uint64_t)sizeof(edgevla_packed_header) +
                                           4u * channels * (uint64_t)l.k_cells);
    l.total_bytes = edgevla_packed_align(l.scales_offset + 4u * channels * (uint64_t)l.k_groups);
    return l;
}

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLA_PACKED_FORMATS_H */
