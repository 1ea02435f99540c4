// The CPU kernels behind the packed W8A8 GEMM and per-token quantization:
// the argument structs every ISA shares, one declaration per ISA, and packing.
//
// Each ISA lives in its own file under arch/ (generic: arch/generic/, compiled
// for every target; x86-64: arch/x86_64/*_avx2.cpp and *_avx512_vnni.cpp,
// compiled with their -m flags; aarch64: arch/aarch64/*_neon_dot.cpp with
// +dotprod). dispatch.h picks one at run time. Kernels trust their arguments
// (the bindings validate) and never allocate.
#pragma once

#include "gemm_s8s8.h"
#include "packed_formats.h"

#include <cstdint>
#include <string>

namespace edgevla {

// A validated EDGEVLA_PACKED_FORMAT_S8_N16K4 buffer, as pointers into it.
struct PackedS8View {
    int64_t n = 0, k = 0;
    int64_t k_groups = 0, n_blocks = 0;
    const int8_t* weights = nullptr;       // [n_blocks][k_groups][16][4]
    const float* w_scale = nullptr;        // [n_blocks * 16]
    const int32_t* compensation = nullptr; // [n_blocks * 16], 128 * rowsum(W)
};

// C = epilogue(A * W^T) for A int8 (m, k) and a packed W.
struct GemmPackedArgs {
    PackedS8View w;
    int64_t m = 0;
    const int8_t* a = nullptr;
    int64_t lda = 0;
    edgevla_gemm_epilogue_f32 epilogue{};  // w_scale points into the packed buffer
    float* c = nullptr;
    int64_t ldc = 0;
};

// Computes rows [row_begin, row_end) x output blocks [block_begin, block_end)
// (block b = columns 16 b .. 16 b + 15, clipped to N) of C. The threading layer
// hands disjoint tiles to different threads.
using GemmPackedS8F32Kernel = void (*)(const GemmPackedArgs& args, int64_t row_begin, int64_t row_end,
                                       int64_t block_begin, int64_t block_end);

// Quantizes one row (epilogue_math.h has the contract): writes q[0..k) and
// *scale and returns true, or returns false without writing q when the row
// holds a NaN or an infinity.
using QuantizeRowKernel = bool (*)(int64_t k, const float* x, int8_t* q, float* scale);

// ---- per-ISA kernels (each defined in its own file under arch/) ----
void gemm_packed_s8_f32_generic(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_generic(int64_t k, const float* x, int8_t* q, float* scale);

void gemm_packed_s8_f32_avx2(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_avx2(int64_t k, const float* x, int8_t* q, float* scale);

void gemm_packed_s8_f32_avx512_vnni(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_avx512(int64_t k, const float* x, int8_t* q, float* scale);

void gemm_packed_s8_f32_neon_dot(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);

// ---- packing (pack_s8.cpp) ----

// Bytes of the packed form of an (n, k) weight.
uint64_t packed_s8_bytes(int64_t n, int64_t k);

// Packs W int8 (n, k) (row stride ldw) with its scales into `out`, which holds
// packed_s8_bytes(n, k) bytes, every one of which is written.
void pack_weight_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, uint8_t* out);

// Checks a buffer claimed to be a packed S8_N16K4 weight: length, magic,
// format, version, block sizes, shape limits, offsets and total length. On
// success fills *view and returns ""; otherwise returns why not, in one
// sentence. Never reads past `length` bytes.
std::string validate_packed_s8(const uint8_t* data, uint64_t length, PackedS8View* view);

}  // namespace edgevla
