/* Packed weight formats of edgevla, declared once for the CPU kernels, the
 * Python bindings and (later) the CUDA kernels. Weights are packed once, when
 * a model is loaded; a packed buffer is a plain byte array that starts with an
 * edgevla_packed_header, so it can be saved, mapped or handed to any kernel
 * and validated first (magic, format, version, header checksum, sizes, total
 * length).
 *
 * All integers are little-endian (every target edgevla supports). Sections
 * start at 64-byte boundaries of the buffer.
 *
 * ---- EDGEVLA_PACKED_FORMAT_S8_N16K4, version 1: int8 weights, W8A8 GEMM ----
 * A weight W int8 (N, K) (the nn.Linear layout) with one float32 scale per
 * output channel. Let N_pad = N rounded up to block_n = 16, K_pad = K rounded
 * up to block_k = 4, KG = K_pad / 4 (groups of four k).
 *
 *   offset 0                 header (64 bytes)
 *   offset 64                weights: int8 [N_pad / 16][KG][16][4]
 *                              byte (b, g, j, i) = W[16 b + j][4 g + i],
 *                              zero where 16 b + j >= N or 4 g + i >= K
 *   w_scale_offset           float32 [N_pad], w_scale[n], zero past N
 *   compensation_offset      int32 [N_pad], 128 * sum_k W[n][k], zero past N
 *   total_bytes              end of the buffer
 *
 * One (b, g) cell is 64 bytes: 16 output channels x 4 consecutive k, exactly
 * one AVX-512 register for vpdpbusd, two AVX2 registers, four NEON registers
 * for sdot. Every ISA reads the same layout, so one packed buffer runs on any
 * machine. vpdpbusd multiplies unsigned by signed bytes, so the AVX-512 VNNI
 * kernel feeds a + 128 (a XOR 0x80) as the unsigned operand and subtracts
 * the compensation: sum (a + 128) w = sum a w + 128 sum w. With K <=
 * EDGEVLA_GEMM_S8S8_MAX_K the compensation fits int32 (|128 * 128 * K| <
 * 2^31), and int32 wrap-around in the accumulation cancels exactly.
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
    EDGEVLA_PACKED_FORMAT_S8_N16K4 = 1
} edgevla_packed_format;

#define EDGEVLA_PACKED_S8_N16K4_VERSION 1
#define EDGEVLA_PACKED_S8_BLOCK_N 16
#define EDGEVLA_PACKED_S8_BLOCK_K 4
#define EDGEVLA_PACKED_ALIGN 64

typedef struct edgevla_packed_header {
    uint32_t magic;                /*  0  EDGEVLA_PACKED_MAGIC */
    uint16_t format;               /*  4  edgevla_packed_format */
    uint16_t version;              /*  6  version of that format's layout */
    uint16_t block_n;              /*  8  output channels per block */
    uint16_t block_k;              /* 10  k per group */
    uint32_t header_bytes;         /* 12  sizeof(edgevla_packed_header) = 64 */
    int64_t n;                     /* 16  output channels (rows of W) */
    int64_t k;                     /* 24  input features (columns of W) */
    uint64_t w_scale_offset;       /* 32  byte offset of the float32 scales */
    uint64_t compensation_offset;  /* 40  byte offset of the int32 compensation */
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

/* The section sizes of a packed S8_N16K4 weight of shape (n, k), computed
 * from n and k alone; a header is valid only if it agrees with them. The
 * caller keeps n <= 2^31 and 0 <= k <= EDGEVLA_GEMM_S8S8_MAX_K so that no
 * product overflows. */
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

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLA_PACKED_FORMATS_H */
