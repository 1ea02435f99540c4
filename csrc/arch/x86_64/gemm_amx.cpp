// AMX-INT8 kernel of the packed W8A8 GEMM: tdpbssd (signed x signed bytes,
// int32 accumulators) on tiles, the AVX-512 epilogue.
//
// Compiled with the AVX-512 flags plus -mamx-tile -mamx-int8 (CMakeLists.txt,
// this file only) and called only when dispatch.cpp has seen AMX-TILE,
// AMX-INT8, the OS's XTILECFG / XTILEDATA state and Linux's per-process
// permission (arch/x86_64/cpu_features_x86_64.cpp). Internal linkage for
// everything but the entry point, as in gemm_avx512_vnni.cpp.
//
// The packed S8_N16K4 weight is already AMX's B layout: block b, groups
// g0 .. g0 + 15 are 16 rows of 64 bytes (16 channels x 4 k) one after the
// other, i.e. the "VNNI" B tile of K 64 x N 16 for tdpbssd, loaded with
// tileloadd at a stride of 64 bytes. A tiles are 16 rows x 64 k of the
// activations at their row stride. tdpbssd multiplies signed by signed bytes,
// so no +128 shift and no compensation: the tile holds the exact int32
// accumulators (K <= EDGEVLA_GEMM_S8S8_MAX_K, no overflow), which the same
// store_s8_epilogue as the VNNI kernel turns into floats, bit-identical to
// the reference.
//
// Register use: a panel of up to 32 rows x 2 blocks, C tiles 0..3 (rows
// 16 r .. 16 r + 15, block j in tile 2 r + j), A tiles 4, 5, B tiles 6, 7.
// Rows go in chunks of whole panels that fit 32 KiB or 1 MiB of A (chunk_rows_for),
// each pair of blocks passing all panels of a chunk; the epilogue of one tile
// group runs while the next group's products execute (PendingTiles).
// Tails: the last rows of a range (fewer than 32) get tiles of fewer rows
// (one more tile configuration); the k past the last full 64 go
// through two zero-padded stack copies (64 k of each panel row, 16 groups of
// each block), so no tile load reads outside A or the weights; a partial last
// block computes its zero-padded channels and stores only the real ones.
// Row ranges of fewer than kMinRows rows go to the AVX-512 VNNI kernel
// (measured, see kMinRows).
#include "cpu_kernels.h"
#include "epilogue_math.h"
#include "kernel_common.h"

#include "arch/x86_64/simd_avx512.h"

#include <immintrin.h>

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N;
constexpr int64_t kCellBytes = EDGEVLA_PACKED_S8_BLOCK_N * EDGEVLA_PACKED_S8_BLOCK_K;  // 64
constexpr int64_t kTileK = 64;            // k per tdpbssd: 64 bytes of an A row
constexpr int64_t kTileGroups = kTileK / 4;  // rows of a B tile
constexpr int64_t kPanelRows = 32;        // two A tiles of 16 rows
constexpr int64_t kChunkRows = 256;       // the most rows of one chunk (k tails: 16 KiB of stack)
constexpr int64_t kChunkBytesL1 = 32768;    // A of a chunk kept in L1
constexpr int64_t kChunkBytesL2 = 1 << 20;  // A of a chunk kept in L2
constexpr int64_t kWeightBytesL2 = 1 << 20; // weights larger than this do not stay in L2 between chunks

// Rows of A that pass every pair of blocks together (each pair of blocks is
// loaded once per chunk). Weights that stay in L2 (up to kWeightBytesL2 of
// them): as many whole panels as fit 32 KiB of A, so A stays in L1 while the
// weights stream from L2. Larger weights would come from L3 once per chunk,
// so the chunk grows to 1 MiB of A, held in L2, and the weights are read
// about once. Measured (1 thread, us, small / large chunk): 256 x 768 x 3072
// 834 / 631, 64 x 3072 x 768 160 / 132; but 256 x 384 x 1536 (590 KB of
// weights) 214 / 269, hence the threshold.
inline int64_t chunk_rows_for(int64_t k, int64_t weight_bytes) {
    const int64_t chunk_bytes = weight_bytes > kWeightBytesL2 ? kChunkBytesL2 : kChunkBytesL1;
    int64_t rows = chunk_bytes / k / kPanelRows * kPanelRows;
    rows = rows < kPanelRows ? kPanelRows : rows;
    return rows > kChunkRows ? kChunkRows : rows;
}

// Row ranges shorter than this go to the VNNI kernel. Measured on this Xeon
// (2 vCPUs, one thread, microseconds VNNI / AMX, K x N = 384 x 384, 384 x 1536,
// 1536 x 384): M = 2: 5.1/5.0, 15.3/14.0, 14.7/13.9; M = 4: 5.4/4.9,
// 16.4/14.5, 15.5/15.4; M = 8: 7.9/5.8, 26.1/13.6, 24.1/13.5; M = 16:
// 13.8/6.9, 50.0/22.2, 48.1/19.4. A tile of few rows costs nearly what one of
// 16 does, so AMX only ties below 4 rows; the VNNI kernel keeps M = 1 to 3
// (GEMV-like, its one-stream weight order suits weights in DRAM).
constexpr int64_t kMinRows = 4;

// GCC 12's _tile_loadd is an asm statement with the address as a plain
// register operand and no memory clobber, so the compiler does not see it
// read memory: stores to a buffer that only tile loads read (the zero-padded
// tails) could be sunk past the load or dropped as dead. This barrier hands
// the buffer's address to an asm that may read any memory, so every store to
// it happens first.
inline void publish(const void* buffer) { __asm__ volatile("" : : "r"(buffer) : "memory"); }

// The 64-byte tile configuration of palette 1 (Intel SDM, LDTILECFG).
struct alignas(64) TileConfig {
    uint8_t palette = 0;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles for a panel of rows0 + rows1 rows (rows0 in 1..16, rows1 in 0..16).
void configure_tiles(int rows0, int rows1) {
    TileConfig config;
    config.palette = 1;
    const int rows[2] = {rows0, rows1};
    for (int r = 0; r < 2; ++r) {
        if (rows[r] == 0) continue;
        for (int j = 0; j < 2; ++j) {
            config.rows[2 * r + j] = static_cast<uint8_t>(rows[r]);  // C: 16 int32 per row
            config.colsb[2 * r + j] = 64;
        }
        config.rows[4 + r] = static_cast<uint8_t>(rows[r]);  // A: 64 int8 per row
        config.colsb[4 + r] = 64;
    }
    for (int j = 0; j < 2; ++j) {  // B: 16 groups x 16 channels x 4 k
        config.rows[6 + j] = static_cast<uint8_t>(kTileGroups);
        config.colsb[6 + j] = 64;
    }
    // Not _tile_loadconfig: GCC 12 declares it as reading only the first 8
    // bytes of the configuration, so the stores of the rows and colsb fields
    // may be dropped as dead (seen here: tilezero then raised #UD). The whole
    // struct as the memory operand keeps every byte written.
    __asm__ volatile("ldtilecfg %0" : : "m"(config));
}

// Accumulators stored by one panel_blocks call, waiting for their epilogue.
// The epilogue of one tile group runs while the next group's tdpbssd
// instructions execute (the AMX unit works beside the AVX-512 ports): with
// the small K of the reference policies (a few tdpbssd per tile) a stored
// tile's epilogue costs about as much as its products, so overlapping the
// two nearly halves the time. Two scratch buffers alternate.
struct PendingTiles {
    bool valid = false;
    int nt = 0;
    int64_t row = 0, rows = 0, block = 0;
    int buffer = 0;
};

struct Scratch {
    alignas(64) int32_t c_tile[2][kPanelRows * 32];  // [buffer][row][32 columns of int32]
    PendingTiles pending;
};

// The epilogue of store_s8_epilogue (op by op as the reference) on the
// pending tiles, with each block's scales, bias and mask loaded once.
void finish_pending(const GemmPackedArgs& args, Scratch& scratch) {
    PendingTiles& pending = scratch.pending;
    if (!pending.valid) return;
    pending.valid = false;
    const int32_t* c_tile = scratch.c_tile[pending.buffer];
    const edgevla_gemm_epilogue_f32& epilogue = args.epilogue;
    const bool per_token = epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN;
    for (int j = 0; j < pending.nt; ++j) {
        const int64_t col0 = (pending.block + j) * kBlockN;
        const __mmask16 mask = first_lanes(block_columns(args.w.n, pending.block + j));
        const __m512 w_scale = _mm512_loadu_ps(epilogue.w_scale + col0);
        const __m512 bias = epilogue.bias ? _mm512_maskz_loadu_ps(mask, epilogue.bias + col0) : _mm512_setzero_ps();
        float* c = args.c + pending.row * args.ldc + col0;
        for (int64_t r = 0; r < pending.rows; ++r, c += args.ldc) {
            const __m512 scale =
                _mm512_mul_ps(_mm512_set1_ps(epilogue.a_scale[per_token ? pending.row + r : 0]), w_scale);
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c_tile + r * 32 + j * 16)), scale);
            if (epilogue.bias) v = _mm512_add_ps(v, bias);
            v = activate(epilogue.activation, v);
            if (epilogue.residual) {
                const float* residual = epilogue.residual + (pending.row + r) * epilogue.ld_residual + col0;
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, residual));
            }
            _mm512_mask_storeu_ps(c, mask, v);
        }
    }
}

// One panel (RT tiles of rows, rows as configured) x NT blocks from `block`.
// a_tail: the panel's k past full_k, [32][64] zero-padded. The accumulators
// go to a scratch buffer; their epilogue runs during the next call (or
// finish_pending at the end).
template <int RT, int NT>
void panel_blocks(const GemmPackedArgs& args, int64_t row, int64_t rows, int64_t block, const int8_t* a_tail,
                  Scratch& scratch) {
    const PackedS8View& w = args.w;
    const int64_t full_k = w.k / kTileK * kTileK;
    const int8_t* cells[NT];
    for (int j = 0; j < NT; ++j) cells[j] = w.weights + (block + j) * w.k_groups * kCellBytes;
    const int8_t* a0 = args.a + row * args.lda;
    const int8_t* a1 = RT == 2 ? args.a + (row + 16) * args.lda : a0;  // read only when RT == 2
    const int64_t lda = args.lda;

    _tile_zero(0);
    if constexpr (NT == 2) _tile_zero(1);
    if constexpr (RT == 2) {
        _tile_zero(2);
        if constexpr (NT == 2) _tile_zero(3);
    }
    for (int64_t k0 = 0; k0 < full_k; k0 += kTileK) {
        const int64_t cell = k0 / 4 * kCellBytes;  // bytes: k0 / 4 groups of 16 channels x 4 k
        _tile_loadd(4, a0 + k0, lda);
        _tile_loadd(6, cells[0] + cell, 64);
        if constexpr (NT == 2) _tile_loadd(7, cells[NT - 1] + cell, 64);
        _tile_dpbssd(0, 4, 6);
        if constexpr (NT == 2) _tile_dpbssd(1, 4, 7);
        if constexpr (RT == 2) {
            _tile_loadd(5, a1 + k0, lda);
            _tile_dpbssd(2, 5, 6);
            if constexpr (NT == 2) _tile_dpbssd(3, 5, 7);
        }
    }
    if (full_k < w.k) {  // the last k: zero-padded copies of A (made by the caller) and of the groups
        alignas(64) int8_t b_tail[2][kTileGroups * kCellBytes];
        const int64_t first_group = full_k / 4;
        const size_t tail_bytes = static_cast<size_t>((w.k_groups - first_group) * kCellBytes);
        for (int j = 0; j < NT; ++j) {
            std::memcpy(b_tail[j], cells[j] + first_group * kCellBytes, tail_bytes);
            std::memset(b_tail[j] + tail_bytes, 0, sizeof b_tail[j] - tail_bytes);
        }
        publish(b_tail);
        _tile_loadd(4, a_tail, kTileK);
        _tile_loadd(6, b_tail[0], 64);
        if constexpr (NT == 2) _tile_loadd(7, b_tail[NT - 1], 64);
        _tile_dpbssd(0, 4, 6);
        if constexpr (NT == 2) _tile_dpbssd(1, 4, 7);
        if constexpr (RT == 2) {
            _tile_loadd(5, a_tail + 16 * kTileK, kTileK);
            _tile_dpbssd(2, 5, 6);
            if constexpr (NT == 2) _tile_dpbssd(3, 5, 7);
        }
    }

    // The previous tiles' epilogue, while these tdpbssd run; then store these.
    finish_pending(args, scratch);
    const int buffer = scratch.pending.buffer ^ 1;
    int32_t* c_tile = scratch.c_tile[buffer];
    constexpr int64_t kStride = 32 * sizeof(int32_t);  // bytes per c_tile row
    _tile_stored(0, c_tile, kStride);
    if constexpr (NT == 2) _tile_stored(1, c_tile + 16, kStride);
    if constexpr (RT == 2) {
        _tile_stored(2, c_tile + 16 * 32, kStride);
        if constexpr (NT == 2) _tile_stored(3, c_tile + 16 * 32 + 16, kStride);
    }
    scratch.pending = PendingTiles{true, NT, row, rows, block, buffer};
}

// Panels [row, row + panels * 32) (or one panel of `rows` rows when
// panels == 0) x blocks [block_begin, block_end), blocks outermost: a pair of
// blocks' weights (2 x 16 x K bytes) stays in L1 while the panels pass.
template <int RT>
void blocks_of_panels(const GemmPackedArgs& args, int64_t row, int64_t panels, int64_t rows, int64_t block_begin,
                      int64_t block_end, const int8_t* a_tail, Scratch& scratch) {
    const int64_t count = panels > 0 ? panels : 1;
    int64_t block = block_begin;
    for (; block + 2 <= block_end; block += 2) {
        for (int64_t p = 0; p < count; ++p) {
            panel_blocks<RT, 2>(args, row + p * kPanelRows, rows, block, a_tail + p * kPanelRows * kTileK, scratch);
        }
    }
    if (block < block_end) {
        for (int64_t p = 0; p < count; ++p) {
            panel_blocks<RT, 1>(args, row + p * kPanelRows, rows, block, a_tail + p * kPanelRows * kTileK, scratch);
        }
    }
}

}  // namespace

void gemm_packed_s8_f32_amx(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                            int64_t block_end) {
    if (row_end - row_begin < kMinRows || block_begin >= block_end || args.w.k == 0) {
        gemm_packed_s8_f32_avx512_vnni(args, row_begin, row_end, block_begin, block_end);
        return;
    }
    const int64_t full_k = args.w.k / kTileK * kTileK;
    alignas(64) int8_t a_tail[kChunkRows * kTileK];  // the k past full_k of a chunk's rows, zero-padded to 64
    Scratch scratch;
    const int64_t step = chunk_rows_for(args.w.k, (block_end - block_begin) * kBlockN * args.w.k);
    for (int64_t chunk = row_begin; chunk < row_end; chunk += step) {
        const int64_t chunk_rows = row_end - chunk < step ? row_end - chunk : step;
        if (full_k < args.w.k) {
            std::memset(a_tail, 0, static_cast<size_t>(chunk_rows * kTileK));
            for (int64_t r = 0; r < chunk_rows; ++r) {
                std::memcpy(a_tail + r * kTileK, args.a + (chunk + r) * args.lda + full_k,
                            static_cast<size_t>(args.w.k - full_k));
            }
            publish(a_tail);
        }
        const int64_t panels = chunk_rows / kPanelRows, rows = chunk_rows % kPanelRows;
        if (panels > 0) {
            configure_tiles(16, 16);
            blocks_of_panels<2>(args, chunk, panels, kPanelRows, block_begin, block_end, a_tail, scratch);
        }
        if (rows > 0) {  // the last rows: tiles of fewer rows
            const int64_t row = chunk + panels * kPanelRows;
            const int8_t* tail = a_tail + panels * kPanelRows * kTileK;
            const int rows0 = static_cast<int>(rows < 16 ? rows : 16), rows1 = static_cast<int>(rows - rows0);
            configure_tiles(rows0, rows1);
            if (rows1 > 0) {
                blocks_of_panels<2>(args, row, 0, rows, block_begin, block_end, tail, scratch);
            } else {
                blocks_of_panels<1>(args, row, 0, rows, block_begin, block_end, tail, scratch);
            }
        }
    }
    finish_pending(args, scratch);
    _tile_release();
}

}  // namespace edgevla
