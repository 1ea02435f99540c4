// The CPU kernels behind the packed GEMMs (dense W8A8, unstructured sparse,
// 2:4, int4 weight-only, int4 x int8) and per-token quantization: the
// argument structs every ISA shares, one declaration per ISA, packing and
// validation.
//
// Each ISA lives in its own file under arch/ (generic: arch/generic/, compiled
// for every target; x86-64: arch/x86_64/*_avx2.cpp and *_avx512_vnni.cpp,
// compiled with their -m flags; aarch64: arch/aarch64/*_neon_dot.cpp with
// +dotprod). dispatch.h picks one at run time. Kernels trust their arguments
// (the bindings validate) and never allocate.
#pragma once

#include "gemm_s8s8.h"
#include "gated_f32.h"
#include "rotary_f32.h"
#include "group_norm_f32.h"
#include "attention_f32.h"
#include "layer_norm_s8.h"
#include "windows.h"
#include "packed_formats.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgevla {

// The calling thread's scratch buffer of at least `bytes` bytes (in
// thread_pool.cpp), grown to the largest size asked of it and then kept, so a
// kernel that stages its operands allocates only in its first calls. One
// buffer per thread: a caller must be done with it before anything it calls
// asks for it again.
uint8_t* thread_scratch(size_t bytes);

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

// The compute roof of an ISA's int8 kernels: `iterations` rounds of
// kInt8PeakMacsPerIteration multiply-adds of its dot-product instruction on
// registers only (independent accumulators, no loads), what its int8 GEMMs can
// at best reach on one core. Fixed operands: every 4-byte dot product is
// 1 * 1 + 2 * (-2) + 3 * 2 + 4 * (-1) = -1, so the loop returns the sum of its
// accumulators, -(kInt8PeakMacsPerIteration / 4) * iterations.
constexpr int64_t kInt8PeakMacsPerIteration = 16 * 64;
using Int8PeakLoop = int64_t (*)(int64_t iterations);

// The float32 counterpart, the roof of float32 GEMMs (PyTorch's, for one):
// `iterations` rounds of kF32PeakFmasPerIteration fused multiply-adds on
// registers. Every FMA is acc * 1 + 1 from 0, so each accumulator lane ends
// at `iterations` (exact below 2^24) and the loop returns their sum,
// kF32PeakFmasPerIteration * iterations.
constexpr int64_t kF32PeakFmasPerIteration = 16 * 16;
using F32PeakLoop = double (*)(int64_t iterations);

// LayerNorm + static int8 quantization and the quantization alone
// (layer_norm_s8.h): all rows of args.
using LayerNormS8Kernel = int64_t (*)(const LayerNormS8Args& args);
using QuantizeS8Kernel = void (*)(const QuantizeS8Args& args);
int64_t layer_norm_s8_generic(const LayerNormS8Args& args);
int64_t layer_norm_s8_avx2(const LayerNormS8Args& args);
int64_t layer_norm_s8_avx512(const LayerNormS8Args& args);
void quantize_s8_generic(const QuantizeS8Args& args);
void quantize_s8_avx2(const QuantizeS8Args& args);
void quantize_s8_avx512(const QuantizeS8Args& args);
using LayerNormF32Kernel = int64_t (*)(const LayerNormF32Args& args);
int64_t layer_norm_f32_generic(const LayerNormF32Args& args);
int64_t layer_norm_f32_avx2(const LayerNormF32Args& args);
int64_t layer_norm_f32_avx512(const LayerNormF32Args& args);

// Float32 attention (attention_f32.h): heads [first, last) of args.
void attention_f32_generic(const AttentionF32Args& args, int64_t first, int64_t last);
void attention_f32_avx2(const AttentionF32Args& args, int64_t first, int64_t last);
void attention_f32_avx512(const AttentionF32Args& args, int64_t first, int64_t last);
void softmax_f32_generic(const SoftmaxF32Args& args);
void softmax_f32_avx2(const SoftmaxF32Args& args);
void softmax_f32_avx512(const SoftmaxF32Args& args);

// The float32 max pool (max_pool_rows.h): output positions [begin, end) of a
// 3-d window geometry (windows.cpp splits a pool over the threads).
using MaxPoolF32Kernel = void (*)(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end);
void max_pool_f32_generic(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end);
void max_pool_f32_avx2(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end);
void max_pool_f32_avx512(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end);

// The channels-last GroupNorm loops (group_norm_rows.h): per-channel double sums of rows x rows of c values
// (of (x - mean)^2 when mean is given), and y = act((x - mean) * factor + shift), act none, ReLU or Mish.
using GroupNormSumsKernel = void (*)(const float* x, int64_t rows, int64_t c, const float* mean, double* sums);
using GroupNormApplyKernel = void (*)(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                                      const float* factor, const float* shift, GroupNormActivation act);
void group_norm_sums_generic(const float* x, int64_t rows, int64_t c, const float* mean, double* sums);
void group_norm_apply_generic(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                           const float* factor, const float* shift, GroupNormActivation act);
void group_norm_sums_avx2(const float* x, int64_t rows, int64_t c, const float* mean, double* sums);
void group_norm_apply_avx2(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                           const float* factor, const float* shift, GroupNormActivation act);
void group_norm_sums_avx512(const float* x, int64_t rows, int64_t c, const float* mean, double* sums);
void group_norm_apply_avx512(const float* x, float* y, int64_t rows, int64_t c, const float* mean,
                           const float* factor, const float* shift, GroupNormActivation act);

// The gated MLP product act(gate) * value (gated_rows.h), rows [first, last).
void gated_f32_generic(const GatedF32Args& args, int64_t first, int64_t last);
void gated_f32_avx2(const GatedF32Args& args, int64_t first, int64_t last);
void gated_f32_avx512(const GatedF32Args& args, int64_t first, int64_t last);

// Rotary position embeddings (rotary_rows.h), rows [first, last).
void rotary_f32_generic(const RotaryF32Args& args, int64_t first, int64_t last);
void rotary_f32_avx2(const RotaryF32Args& args, int64_t first, int64_t last);
void rotary_f32_avx512(const RotaryF32Args& args, int64_t first, int64_t last);

// ---- per-ISA kernels of the dense W8A8 GEMM (each defined in its own file under arch/) ----
void gemm_packed_s8_f32_generic(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_generic(int64_t k, const float* x, int8_t* q, float* scale);

void gemm_packed_s8_f32_avx2(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_avx2(int64_t k, const float* x, int8_t* q, float* scale);

// AVX-VNNI (arch/x86_64/gemm_avx_vnni.cpp, with its W4A8 GEMM, declared below the format kernels): the rest
// of its table is AVX2's.
void gemm_packed_s8_f32_avx_vnni(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
int64_t int8_peak_loop_avx_vnni(int64_t iterations);

void gemm_packed_s8_f32_avx512_vnni(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);
bool quantize_row_avx512(int64_t k, const float* x, int8_t* q, float* scale);
int64_t int8_peak_loop_avx512_vnni(int64_t iterations);
double f32_peak_loop_avx512(int64_t iterations);

// AMX-INT8 (arch/x86_64/gemm_amx.cpp); hands row ranges too short for AMX to the VNNI kernel.
void gemm_packed_s8_f32_amx(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);

void gemm_packed_s8_f32_neon_dot(const GemmPackedArgs&, int64_t, int64_t, int64_t, int64_t);

// ---- the packed formats of packed_formats.h, seen through validated views ----

// SPARSE_F32_N16W32 / SPARSE_S8_N16W32.
struct PackedSparseView {
    int64_t n = 0, k = 0, n_slices = 0, n_windows = 0;
    uint64_t slots = 0, nonzeros = 0;
    const uint32_t* slice_slots = nullptr;  // [n_slices + 1]
    const uint8_t* window_slots = nullptr;  // [n_slices][n_windows]
    const uint8_t* slot_data = nullptr;     // [slots] x {uint8 position[16]; value[16]}
    const float* w_scale = nullptr;         // [16 n_slices], int8 only
};

// 2TO4_F32_N16K16 / 2TO4_S8_N16K16.
struct Packed2to4View {
    int64_t n = 0, k = 0, n_blocks = 0, k_blocks = 0;
    const uint8_t* cells = nullptr;         // [n_blocks][k_blocks] cells
    const float* w_scale = nullptr;         // [16 n_blocks], int8 only
    const int32_t* compensation = nullptr;  // [16 n_blocks], int8 only
};

// W4_N16K8.
struct PackedW4View {
    int64_t n = 0, k = 0, group = 0, n_blocks = 0, k_cells = 0, k_groups = 0;
    const uint32_t* codes = nullptr;  // [n_blocks][k_cells][16]
    const float* scales = nullptr;    // [n_blocks][k_groups][16]
};

// The epilogue of the float-activation kernels, in float32 and in this order:
// v = acc + bias[n] (skipped when bias is NULL), then the activation.
struct EpilogueF32 {
    const float* bias = nullptr;
    edgevla_activation activation = EDGEVLA_ACTIVATION_NONE;
};

// C = epilogue(X * W^T) for float32 X (m, k) and a packed W.
template <typename View>
struct GemmF32Args {
    View w;
    int64_t m = 0;
    const float* x = nullptr;
    int64_t ldx = 0;
    EpilogueF32 epilogue{};
    float* c = nullptr;
    int64_t ldc = 0;
};

// C = epilogue(A * W^T) for int8 A (m, k) and a packed int8 W: the W8A8
// contract of gemm_s8s8.h, bit-identical to edgevla_gemm_s8s8_f32_ref on the
// dense weight (the int32 accumulators are exact, the epilogue is the same).
template <typename View>
struct GemmS8Args {
    View w;
    int64_t m = 0;
    const int8_t* a = nullptr;
    int64_t lda = 0;
    edgevla_gemm_epilogue_f32 epilogue{};  // w_scale points into the packed buffer
    float* c = nullptr;
    int64_t ldc = 0;
};

using GemmSparseF32Args = GemmF32Args<PackedSparseView>;
using GemmSparseS8Args = GemmS8Args<PackedSparseView>;
using Gemm2to4F32Args = GemmF32Args<Packed2to4View>;
using Gemm2to4S8Args = GemmS8Args<Packed2to4View>;
using GemmW4F32Args = GemmF32Args<PackedW4View>;

// Float32 activations quantized for the W4A8 GEMM (the ISA's quantize_w4a8
// fills them once per call, gemm_ref.h states the arithmetic): each row of x in groups of
// the weight's group size (the last one partial when K is not a multiple),
// every group quantized to int8 by the per-token rule of epilogue_math.h on
// that group alone. The codes are rearranged per cell of 8 k so that the low
// nibbles of a weight word (k = 8 t + 0, 2, 4, 6) meet one 4-byte word of
// activations and the high nibbles (8 t + 1, 3, 5, 7) the next.
struct QuantizedW4A8Rows {
    const int8_t* q = nullptr;        // [m][k_cells][8]: q[8t+0,2,4,6], q[8t+1,3,5,7]; zero past K
    const float* scale = nullptr;     // [m][k_groups]: amax / 127, NaN where the group is not finite
    const int32_t* sum = nullptr;     // [m][k_groups]: the group's codes summed (what unsigned c + 8 adds / 8)
    int64_t ldq = 0, ldg = 0;         // row strides: k_cells * 8 bytes, k_groups values
};

// The quantization of rows [0, m) of float32 x into QuantizedW4A8Rows
// (q, scale, sum with row strides ldq, ldg) for a weight of K = k and
// groups of `group`: one kernel per ISA, all with identical results.
struct QuantizeW4A8Args {
    int64_t m = 0, k = 0, group = 0;
    const float* x = nullptr;
    int64_t ldx = 0;
    int8_t* q = nullptr;
    float* scale = nullptr;
    int32_t* sum = nullptr;
    int64_t ldq = 0, ldg = 0;
};
using QuantizeW4A8Kernel = void (*)(const QuantizeW4A8Args& args);
void quantize_w4a8_generic(const QuantizeW4A8Args& args);
void quantize_w4a8_avx2(const QuantizeW4A8Args& args);
void quantize_w4a8_avx512(const QuantizeW4A8Args& args);

// C = epilogue(X * W^T) with X quantized per group (W4A8): per group and
// channel an exact int32 dot product of the int4 and int8 codes, scaled and
// summed in float32 in group order (gemm_ref.h, edgevla_gemm_w4a8_f32_ref).
struct GemmW4A8Args {
    PackedW4View w;
    int64_t m = 0;
    QuantizedW4A8Rows a;
    EpilogueF32 epilogue{};
    float* c = nullptr;
    int64_t ldc = 0;
};

// Every packed kernel computes rows [row_begin, row_end) x output blocks
// [block_begin, block_end) of C (a block is 16 channels: a slice of the
// sparse formats), like GemmPackedS8F32Kernel.
template <typename Args>
using TileKernel = void (*)(const Args& args, int64_t row_begin, int64_t row_end, int64_t block_begin,
                            int64_t block_end);

#define EDGEVLA_DECLARE_FORMAT_KERNELS(isa)                                                              \
    void gemm_sparse_f32_##isa(const GemmSparseF32Args&, int64_t, int64_t, int64_t, int64_t);          \
    void gemm_sparse_s8_##isa(const GemmSparseS8Args&, int64_t, int64_t, int64_t, int64_t);            \
    void gemm_2to4_f32_##isa(const Gemm2to4F32Args&, int64_t, int64_t, int64_t, int64_t);              \
    void gemm_2to4_s8_##isa(const Gemm2to4S8Args&, int64_t, int64_t, int64_t, int64_t);                \
    void gemm_w4_f32_##isa(const GemmW4F32Args&, int64_t, int64_t, int64_t, int64_t);                  \
    void gemm_w4a8_f32_##isa(const GemmW4A8Args&, int64_t, int64_t, int64_t, int64_t);

EDGEVLA_DECLARE_FORMAT_KERNELS(generic)
EDGEVLA_DECLARE_FORMAT_KERNELS(avx2)
EDGEVLA_DECLARE_FORMAT_KERNELS(avx512_vnni)
EDGEVLA_DECLARE_FORMAT_KERNELS(neon_dot)
#undef EDGEVLA_DECLARE_FORMAT_KERNELS
void gemm_w4a8_f32_avx_vnni(const GemmW4A8Args&, int64_t, int64_t, int64_t, int64_t);  // gemm_avx_vnni.cpp
void gemm_2to4_s8_avx_vnni(const Gemm2to4S8Args&, int64_t, int64_t, int64_t, int64_t);  // gemm_2to4_avx_vnni.cpp

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

// ---- sparse packing (pack_sparse.cpp) ----

// The slot and non-zero counts of a weight: first pass of packing.
struct SparseCounts {
    uint64_t slots = 0, nonzeros = 0;
};
SparseCounts count_sparse_f32(int64_t n, int64_t k, const float* w, int64_t ldw);
SparseCounts count_sparse_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw);
uint64_t packed_sparse_bytes(int64_t n, int64_t k, SparseCounts counts, int value_bytes);

// Second pass: writes every one of packed_sparse_bytes(...) bytes of `out`.
void pack_sparse_f32(int64_t n, int64_t k, const float* w, int64_t ldw, SparseCounts counts, uint8_t* out);
void pack_sparse_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, SparseCounts counts,
                    uint8_t* out);

// `format` is EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32 or _S8_N16W32.
std::string validate_packed_sparse(const uint8_t* data, uint64_t length, edgevla_packed_format format,
                                   PackedSparseView* view);

// ---- 2:4 packing (pack_2to4.cpp) ----

// A group of 4 k holding more than 2 non-zeros, which 2:4 cannot represent.
struct Violation2to4 {
    bool found = false;
    int64_t row = 0, group = 0, nonzeros = 0;
};
Violation2to4 find_2to4_violation_f32(int64_t n, int64_t k, const float* w, int64_t ldw);
Violation2to4 find_2to4_violation_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw);
uint64_t packed_2to4_bytes(int64_t n, int64_t k, int value_bytes);

// W must have no violation. Every byte of `out` is written.
void pack_2to4_f32(int64_t n, int64_t k, const float* w, int64_t ldw, uint8_t* out);
void pack_2to4_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, uint8_t* out);

// `format` is EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16 or _S8_N16K16.
std::string validate_packed_2to4(const uint8_t* data, uint64_t length, edgevla_packed_format format,
                                 Packed2to4View* view);

// ---- int4 packing (pack_w4.cpp) ----

uint64_t packed_w4_bytes(int64_t n, int64_t k, int64_t group);

// qdata: uint8 (n, ceil(k / 2)) codes in the layout of edgevla.quant.primitives.pack_int4
// (row stride ldq bytes); scale: float32 (n, ceil(k / group)) (row stride lds).
// group is 32, 64 or 128. Every byte of `out` is written.
void pack_w4(int64_t n, int64_t k, int64_t group, const uint8_t* qdata, int64_t ldq, const float* scale,
             int64_t lds, uint8_t* out);

std::string validate_packed_w4(const uint8_t* data, uint64_t length, PackedW4View* view);

// ---- any format ----

// The validated header of a packed buffer of any known format (its checksum,
// magic, version and length checked): returns "" and fills *header, or why not.
std::string read_packed_header(const uint8_t* data, uint64_t length, edgevla_packed_header* header);

// "s8_n16k4", "sparse_f32_n16w32", ...; "" for an unknown format.
const char* packed_format_name(uint16_t format);

}  // namespace edgevla
