// Small helpers that every ISA's packed kernels share: where a sparse slice's
// slots are (clamped, so a corrupt body cannot send a kernel out of the
// buffer), zero-padded copies of the last, partial window of a row, and the
// row loop of the W4A8 activations' quantization.
//
// Everything is in an anonymous namespace: each translation unit, including
// those compiled with -mavx512f or +dotprod, gets its own private copy, so the
// linker can never hand an AVX-512 instance to baseline code.
#pragma once

#include "cpu_kernels.h"
#include "epilogue_math.h"

#include <cstring>
#include <limits>

namespace edgevla {
namespace {

constexpr int64_t kSparseSlice = EDGEVLA_PACKED_SPARSE_SLICE;
constexpr int64_t kSparseWindow = EDGEVLA_PACKED_SPARSE_WINDOW;

// The slots of slice `slice`: [begin, end) within [0, slots], whatever the
// stored offsets say.
struct SlotRange {
    uint64_t begin, end;
};

inline SlotRange slice_slot_range(const PackedSparseView& w, int64_t slice) {
    uint64_t begin = w.slice_slots[slice], end = w.slice_slots[slice + 1];
    begin = begin < w.slots ? begin : w.slots;
    end = end < w.slots ? end : w.slots;
    return {begin, end < begin ? begin : end};
}

// Slots of window `window` of a slice, clamped to what the slice has left.
inline uint64_t window_slot_count(const PackedSparseView& w, int64_t slice, int64_t window, uint64_t left) {
    const uint64_t stored = w.window_slots[slice * w.n_windows + window];
    return stored < left ? stored : left;
}

// Elements of a window of `width` starting at k0 that lie inside K.
inline int64_t window_length(int64_t k, int64_t k0, int64_t width) { return k - k0 < width ? k - k0 : width; }

// x[k0 .. k0 + width) into `window`, zero past K: kernels that read whole
// windows read this copy for the last, partial one instead of the caller's row.
template <typename T>
inline void copy_window(const T* row, int64_t k, int64_t k0, int64_t width, T* window) {
    const int64_t length = window_length(k, k0, width);
    std::memset(window, 0, static_cast<size_t>(width) * sizeof(T));
    std::memcpy(window, row + k0, static_cast<size_t>(length) * sizeof(T));
}

// Calls body(chunk_begin, chunk_end) over [row_begin, row_end) in chunks of
// rows whose activations (k elements of element_bytes each) fit in about
// 256 KiB: kernels loop over output blocks inside a chunk, so the chunk's rows
// stay in L2 while every block reuses them, instead of the whole activation
// matrix streaming through the cache once per block (M = 256 of a 3072-wide
// float32 layer is 3 MiB). Chunks are multiples of 4 rows, the register tile.
template <typename Body>
inline void for_row_chunks(int64_t row_begin, int64_t row_end, int64_t k, int64_t element_bytes, Body body) {
    constexpr int64_t kChunkBytes = 256 * 1024;
    const int64_t row_bytes = k * element_bytes > 0 ? k * element_bytes : 1;
    int64_t rows = kChunkBytes / row_bytes / 4 * 4;
    rows = rows < 4 ? 4 : rows;
    for (int64_t begin = row_begin; begin < row_end; begin += rows) {
        body(begin, begin + rows < row_end ? begin + rows : row_end);
    }
}

// GEMVs (1 to 3 rows) read each weight byte once, as one sequential stream
// from DRAM, and the hardware prefetcher alone keeps too few reads in flight
// for one core to reach its bandwidth. Fetching kStreamPrefetchBytes ahead of
// the cell being read (1 thread, weights cold, 2-vCPU Xeon VM, 2026-12-04):
// a plain AVX-512 read loop 13.2 -> 15.9 GB/s (the core's read ceiling, ~17
// GB/s with 4 streams); the 2:4 int8 GEMV 11-12 -> 13-20 GB/s, the dense one
// 15-16 -> 16-19 GB/s over repeated runs (1024 and 8192 ahead did no better).
// A prefetch is a hint: past the end of the buffer it reads nothing and
// cannot fault.
constexpr uint64_t kStreamPrefetchBytes = 4096;

// A read prefetch of the line `lines` 64-byte lines after p, into L1
// (Locality 3) or L2 (2). Address arithmetic on integers: the line may lie
// past the end of the buffer, which a prefetch, never faulting, ignores.
template <int Locality>
inline void prefetch_lines_ahead(const void* p, int64_t lines) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(64 * lines);
    __builtin_prefetch(reinterpret_cast<const void*>(address), 0, Locality);
}

// Prefetches the cache lines of [p, p + bytes) shifted `ahead` bytes (by
// default kStreamPrefetchBytes) ahead, into L1.
inline void prefetch_stream(const void* p, uint64_t bytes, uint64_t ahead = kStreamPrefetchBytes) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(p);
    for (uint64_t b = 0; b < bytes; b += 64) {
        prefetch_lines_ahead<3>(reinterpret_cast<const void*>(first + b), static_cast<int64_t>(ahead / 64));
    }
}

// Rows [0, rows) of int8 activations (k a row, at a stride of lda) as panels
// of up to PanelRows rows, for register tiles that broadcast a group of 4 k
// of each of their rows from one pointer: the panel of rows [p, p + R) starts
// at element p * 4 * groups and holds, for each group g, the R rows' four
// values of that group one after the other (offset (g * R + r) * 4). Each
// value is stage(a) (the kernel's operand type); `pad` fills the last group
// past k.
template <int PanelRows, typename T, typename Stage>
inline void stage_row_panels(const int8_t* a, int64_t lda, int64_t k, int64_t rows, int64_t groups, T pad,
                             Stage stage, T* staged) {
    for (int64_t p = 0; p < rows; p += PanelRows) {
        const int64_t panel_rows = rows - p < PanelRows ? rows - p : PanelRows;
        T* panel = staged + p * groups * 4;
        for (int64_t r = 0; r < panel_rows; ++r) {
            const int8_t* row = a + (p + r) * lda;
            for (int64_t g = 0; g < groups; ++g) {
                T* out = panel + (g * panel_rows + r) * 4;
                if (g * 4 + 4 <= k) {  // one load and one store a group, which the compiler vectorizes
                    int8_t in[4];
                    T group[4];
                    std::memcpy(in, row + g * 4, sizeof in);
                    for (int i = 0; i < 4; ++i) group[i] = stage(in[i]);
                    std::memcpy(out, group, sizeof group);
                } else {
                    for (int64_t i = 0; i < 4; ++i) out[i] = g * 4 + i < k ? stage(row[g * 4 + i]) : pad;
                }
            }
        }
    }
}

// The 4-bit two's complement code in bits 4 i .. 4 i + 3 of a W4_N16K8 word (the scalar kernels' unpack).
inline int32_t w4_code(uint32_t word, int64_t i) {
    const int32_t nibble = static_cast<int32_t>((word >> (4 * i)) & 0xFu);
    return nibble < 8 ? nibble : nibble - 16;
}

// Output channels of block `block` (16 wide) that exist: at most 16.
inline int64_t block_columns(int64_t n, int64_t block) { return n - 16 * block < 16 ? n - 16 * block : 16; }

// The epilogue of the float-activation kernels on one value (cpu_kernels.h).
inline float epilogue_f32(const EpilogueF32& epilogue, int64_t col, float acc) {
    float v = acc;
    if (epilogue.bias != nullptr) v = v + epilogue.bias[col];
    return edgevla_activate_f32(epilogue.activation, v);
}

// The W8A8 epilogue on one value, op by op as in gemm_s8s8.h.
inline float epilogue_s8(const edgevla_gemm_epilogue_f32& epilogue, int64_t row, int64_t col, int32_t acc) {
    const float a_scale = epilogue.a_scale[epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN ? row : 0];
    float v = edgevla_dequant_s8_f32(acc, a_scale, epilogue.w_scale[col]);
    if (epilogue.bias != nullptr) v = v + epilogue.bias[col];
    v = edgevla_activate_f32(epilogue.activation, v);
    if (epilogue.residual != nullptr) v = v + epilogue.residual[row * epilogue.ld_residual + col];
    return v;
}

// The W8A8 epilogue's last step on the `cols` finished values of row `row`
// from column col0 (for kernels that finish a block in a float buffer).
inline void add_residual_s8(const edgevla_gemm_epilogue_f32& epilogue, int64_t row, int64_t col0, int64_t cols,
                            float* values) {
    if (epilogue.residual == nullptr) return;
    const float* r = epilogue.residual + row * epilogue.ld_residual + col0;
    for (int64_t i = 0; i < cols; ++i) values[i] = values[i] + r[i];
}

// ---- W4A8 activations (QuantizedW4A8Rows) ----

constexpr int64_t kW4A8CellK = EDGEVLA_PACKED_W4_CELL_K;

// The x86-64 W4A8 kernels do so little work per byte of weight that, at
// M = 1 with the weights outside the caches, the hardware prefetcher alone
// does not keep enough lines in flight (measured: the stream at 11-12 GB/s,
// 20-25 GB/s with these prefetches, on a 25 GB/s-copy Xeon). Each cell (one
// 64-byte line of codes) prefetches the weight stream 2 KiB ahead into L1
// and 8 KiB ahead into L2, each group's scales 16 groups ahead. The blocks
// lie one after the other, so "ahead" runs on into the next block.
constexpr int64_t kW4A8PrefetchL1Lines = 32, kW4A8PrefetchL2Lines = 128, kW4A8PrefetchScaleLines = 16;

// The prefetches of the cell of codes at `cell` and of the scales at `scales`.
inline void prefetch_w4a8_cell(const uint32_t* cell) {
    prefetch_lines_ahead<3>(cell, kW4A8PrefetchL1Lines);
    prefetch_lines_ahead<2>(cell, kW4A8PrefetchL2Lines);
}
inline void prefetch_w4a8_scales(const float* scales) { prefetch_lines_ahead<3>(scales, kW4A8PrefetchScaleLines); }

// A cell of 8 codes in k order -> the order of QuantizedW4A8Rows (even k,
// the weight words' low nibbles, in bytes 0..3, odd k in bytes 4..7), in
// place; returns the codes' sum. Bit tricks on the 8 bytes as one
// little-endian word (x86-64 and aarch64).
inline int32_t arrange_w4a8_cell(int8_t* cell) {
    constexpr uint64_t kLowBytes = 0x00FF00FF00FF00FFull, kLowHalves = 0x0000FFFF0000FFFFull;
    uint64_t v;
    std::memcpy(&v, cell, 8);
    // The sum: each byte + 128 is unsigned; pairs, then the four pair sums at the top by one multiply.
    const uint64_t biased = v ^ 0x8080808080808080ull;
    const uint64_t pairs = (biased & kLowBytes) + ((biased >> 8) & kLowBytes);
    const int32_t total = static_cast<int32_t>((pairs * 0x0001000100010001ull) >> 48) - 8 * 128;
    uint64_t even = v & kLowBytes, odd = (v >> 8) & kLowBytes;
    even = (even | (even >> 8)) & kLowHalves;
    odd = (odd | (odd >> 8)) & kLowHalves;
    v = ((even | (even >> 16)) & 0xFFFFFFFFull) | (((odd | (odd >> 16)) & 0xFFFFFFFFull) << 32);
    std::memcpy(cell, &v, 8);
    return total;
}

// One group of `length` values through a per-token quantize_row kernel, then
// rearranged: writes ceil(length / 8) cells of q (zero past length), *scale
// and *sum; false (q partly written) when the group is not finite.
inline bool quantize_w4a8_group_by_row(QuantizeRowKernel quantize_row, int64_t length, const float* x, int8_t* q,
                                       float* scale, int32_t* sum) {
    const int64_t padded = (length + kW4A8CellK - 1) / kW4A8CellK * kW4A8CellK;
    if (padded != length) std::memset(q + padded - kW4A8CellK, 0, kW4A8CellK);
    if (!quantize_row(length, x, q, scale)) return false;
    int32_t total = 0;
    for (int64_t i = 0; i < length; i += kW4A8CellK) total += arrange_w4a8_cell(q + i);
    *sum = total;
    return true;
}

// Every group of every row of args through quantize_group(length, x, q,
// &scale, &sum) (the contract of quantize_w4a8_group_by_row); a group that is
// not finite gets zero codes, sum 0 and a NaN scale (gemm_ref.h).
template <typename QuantizeGroup>
inline void quantize_w4a8_rows(const QuantizeW4A8Args& args, QuantizeGroup quantize_group) {
    for (int64_t row = 0; row < args.m; ++row) {
        for (int64_t begin = 0, g = 0; begin < args.k; begin += args.group, ++g) {
            const int64_t length = args.k - begin < args.group ? args.k - begin : args.group;
            int8_t* q = args.q + row * args.ldq + begin;
            float* scale = args.scale + row * args.ldg + g;
            int32_t* sum = args.sum + row * args.ldg + g;
            if (!quantize_group(length, args.x + row * args.ldx + begin, q, scale, sum)) {
                std::memset(q, 0, static_cast<size_t>((length + kW4A8CellK - 1) / kW4A8CellK * kW4A8CellK));
                *scale = std::numeric_limits<float>::quiet_NaN();
                *sum = 0;
            }
        }
    }
}

}  // namespace
}  // namespace edgevla
