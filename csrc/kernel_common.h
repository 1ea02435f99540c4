// Small helpers that every ISA's packed kernels share: where a sparse slice's
// slots are (clamped, so a corrupt body cannot send a kernel out of the
// buffer) and zero-padded copies of the last, partial window of a row.
//
// Everything is in an anonymous namespace: each translation unit, including
// those compiled with -mavx512f or +dotprod, gets its own private copy, so the
// linker can never hand an AVX-512 instance to baseline code.
#pragma once

#include "cpu_kernels.h"
#include "epilogue_math.h"

#include <cstring>

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

// Output channels of block `block` (16 wide) that exist: at most 16.
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

// Prefetches the cache lines of [p, p + bytes) shifted kStreamPrefetchBytes ahead.
inline void prefetch_stream(const void* p, uint64_t bytes) {
    const char* ahead = static_cast<const char*>(p) + kStreamPrefetchBytes;
    for (uint64_t b = 0; b < bytes; b += 64) __builtin_prefetch(ahead + b, 0, 3);
}

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
    float v = static_cast<float>(acc) * (a_scale * epilogue.w_scale[col]);
    if (epilogue.bias != nullptr) v = v + epilogue.bias[col];
    return edgevla_activate_f32(epilogue.activation, v);
}

}  // namespace
}  // namespace edgevla
