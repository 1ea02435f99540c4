// The CUDA kernels' host API: plain C++ (no CUDA types), so the Python
// bindings compile without the toolkit. Two implementations, CMake picks one:
// the launchers (*_launch.cu, built with EDGEVLA_CUDA) and
// cuda_kernels_without_cuda.cpp (every entry point throws "built without CUDA").
//
// Every pointer is a device pointer on the current device; the bindings check
// that, and shapes, before calling. Launchers pick the kernel variant, launch
// on `stream` (a cudaStream_t as an integer; 0 is the legacy default stream),
// check the launch, and with EDGEVLA_CUDA_SYNC=1 in the environment also
// synchronize and check the kernel's completion. Failures throw
// std::runtime_error with one line naming the kernel and the CUDA error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edgevla::cuda {

// True when this build has the CUDA kernels.
bool kernels_compiled();

// Throws std::invalid_argument unless `pointer` is device memory (or managed)
// of the current device: a host pointer handed to a kernel crashes it.
void check_device_pointer(const void* pointer, const char* name);
int current_device();

// ---------------------------------------------------------------- W8A8 GEMM ---
// C (M, N) = epilogue(A (M, K) int8 . W (N, K)^T int8), the contract of
// gemm_s8s8.h with W in the plain nn.Linear layout (no packing: the tensor
// core's column-major B operand is W's row-major rows). Exactly one of c_s32
// (raw int32 accumulators, no epilogue) and c_f32 (dequantized) is set.
// Variants: small_m (M <= 16, split K over warps, operands from global
// memory; small_m_wave: its warps per block chosen so the grid is resident in
// one wave, timed beside it until a GPU run shows where it wins), tiled (shared-memory tiles, the tile size by the grid it makes),
// and two shapes of the tiled kernel timed beside it until a GPU run shows
// where they win: tiled_wide (128 x 256 tiles) and tiled_split_k (the smaller
// tiles with K split among warp groups inside a block). wgmma: CUTLASS's
// Hopper kernel (gemm_s8s8_sm90.h), on sm_90 only, when built. tcgen05:
// CUTLASS's Blackwell kernel (gemm_s8s8_sm100.h), on sm_110 (Thor) / sm_100
// as built.
enum class GemmVariant : int {
    automatic = 0, small_m = 1, tiled = 2, tiled_wide = 3, tiled_split_k = 4, wgmma = 5, tcgen05 = 6,
    small_m_wave = 7
};
// Whether this build has the wgmma variant.
bool gemm_s8s8_wgmma_compiled();
// The compute capabilities (100, 110) this build has the tcgen05 variant for; empty: none.
std::vector<int> gemm_s8s8_tcgen05_ccs();

// The output of every int8 GEMM: exactly one of c_s32 (the raw int32
// accumulators; nothing else set) and c_f32 (the W8A8 epilogue of
// gemm_s8s8.h: scales, bias, activation).
struct W8A8OutputArgs {
    const float* w_scale = nullptr;  // [N]     (c_f32 only)
    const float* a_scale = nullptr;  // [1]/[M] (c_f32 only)
    bool a_scale_per_token = false;
    const float* bias = nullptr;     // [N] or nullptr
    int activation = 0;              // edgevla_activation
    float* c_f32 = nullptr;
    int32_t* c_s32 = nullptr;
    int64_t ldc = 0;
};

struct GemmS8S8Args : W8A8OutputArgs {
    int64_t m = 0, n = 0, k = 0;
    const int8_t* a = nullptr;
    int64_t lda = 0;
    const int8_t* w = nullptr;
    int64_t ldw = 0;
};
// The variant that `automatic` picks for m rows: small_m for m <= 16.
GemmVariant gemm_s8s8_pick(int64_t m);
void gemm_s8s8(const GemmS8S8Args& args, GemmVariant variant, uintptr_t stream);

// ---------------------------------------------------- weight-only int4 GEMV ---
// Y (M, N) float32 = X (M, K) . dequant(W)^T + bias, activation; W is the body
// of an EDGEVLA_PACKED_FORMAT_W4_N16K8 buffer (packed_formats.h), copied to the
// device unchanged: codes at byte 64, scales at scales_offset. For M <= 64.
struct GemmW4Args {
    int64_t m = 0, n = 0, k = 0, group = 0;
    const void* x = nullptr;  // float32 or float16 (x_f16)
    bool x_f16 = false;
    int64_t ldx = 0;
    const uint8_t* packed = nullptr;  // the whole packed buffer, header included
    uint64_t scales_offset = 0;
    const float* bias = nullptr;
    int activation = 0;
    float* y = nullptr;
    int64_t ldy = 0;
};
constexpr int64_t kGemmW4MaxM = 64;
// cuda_cores: float32 FMAs on decoded codes (float32 or float16 X), measured
// on an H200. streaming: the same arithmetic, laid out so the grid is
// resident in one wave (gemm_w4_stream_kernels.cuh). tensor_cores: float16
// MMAs (float32 X split in two float16 parts). streaming and tensor_cores were written and compiled
// without a GPU and are timed beside cuda_cores by the benchmark until a GPU
// run shows where they win; automatic picks cuda_cores meanwhile.
enum class GemmW4Variant : int { automatic = 0, cuda_cores = 1, tensor_cores = 2, streaming = 3 };
void gemm_w4(const GemmW4Args& args, GemmW4Variant variant, uintptr_t stream);

// ------------------------------------------------------------- 2:4 sparse ---
// C (M, N) = epilogue(X (M, K) . W^T) with W 2:4 sparse along K, packed by
// pack_2to4_mma.h into tensor-core fragment order. int8: exact int32 (c_s32)
// or the W8A8 epilogue (c_f32). float16: float32 accumulation, bias and
// activation.
struct Gemm2to4S8Args : W8A8OutputArgs {
    int64_t m = 0, n = 0, k = 0;
    const int8_t* x = nullptr;
    int64_t ldx = 0;
    const uint32_t* values = nullptr;  // pack_2to4_mma.h, int8 layout
    const uint32_t* meta = nullptr;
};
// automatic: 64-channel tiles at M > 16 (measured on an H200). tiled_wide:
// 128-channel tiles there (each warp 2 channel tiles, so an activation
// fragment read from shared memory feeds 2 MMAs), written without a GPU and
// timed beside automatic by the benchmark. M <= 16 runs the same kernel either way.
enum class Gemm2to4Variant : int { automatic = 0, tiled_wide = 1 };
void gemm_2to4_s8(const Gemm2to4S8Args& args, Gemm2to4Variant variant, uintptr_t stream);

// wgmma: 2:4 int8 on Hopper's sparse wgmma through CUTLASS 3
// (gemm_2to4_sm90.h), int32 or W8A8 float32 out, sm_90 only, when built. The weight is in
// CUTLASS's own compressed layout, which its compressor kernel makes on the
// GPU from the dense (N, K) weight: sizes from sparse_2to4_s8_wgmma_sizes.
bool gemm_2to4_wgmma_compiled();
struct Sparse2to4WgmmaSizes {
    int64_t value_bytes = 0, meta_bytes = 0;
};
Sparse2to4WgmmaSizes sparse_2to4_s8_wgmma_sizes(int64_t n, int64_t k);
// w: dense int8 (N, K) device memory, row stride ldw, 2:4 along K (checked by
// the caller); values / meta: device buffers of the sizes above.
void compress_2to4_s8_wgmma(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int8_t* values, uint8_t* meta,
                            uintptr_t stream);
struct Gemm2to4S8WgmmaArgs : W8A8OutputArgs {
    int64_t m = 0, n = 0, k = 0;
    const int8_t* x = nullptr;
    int64_t ldx = 0;
    const int8_t* values = nullptr;
    const uint8_t* meta = nullptr;
};
void gemm_2to4_s8_wgmma(const Gemm2to4S8WgmmaArgs& args, uintptr_t stream);

struct Gemm2to4F16Args {
    int64_t m = 0, n = 0, k = 0;
    const uint16_t* x = nullptr;  // float16 bits
    int64_t ldx = 0;
    const uint32_t* values = nullptr;
    const uint32_t* meta = nullptr;
    const float* bias = nullptr;
    int activation = 0;
    float* c = nullptr;
    int64_t ldc = 0;
};
void gemm_2to4_f16(const Gemm2to4F16Args& args, Gemm2to4Variant variant, uintptr_t stream);

}  // namespace edgevla::cuda
