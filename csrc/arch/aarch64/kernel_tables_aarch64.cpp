// The aarch64 SIMD kernel tables, best first. Compiled with baseline
// (ARMv8.0) flags: it only takes the addresses of the dot-product entry points.
// Per-token quantization (and the W4A8 activations' per-group quantization,
// built on it) has no NEON path yet and uses the portable one; the
// LayerNorm + int8 rows and the float attention use the portable files, which
// the compiler vectorizes with NEON (baseline on aarch64).
#include "dispatch.h"

namespace edgevla {
namespace {

bool has_dot_product(const CpuFeatures& f) { return f.asimd && f.asimddp; }

constexpr IsaKernels kTables[] = {
    {"neon_dot", has_dot_product, gemm_packed_s8_f32_neon_dot, quantize_row_generic,
     gemm_sparse_f32_neon_dot, gemm_sparse_s8_neon_dot, gemm_2to4_f32_neon_dot, gemm_2to4_s8_neon_dot,
     gemm_w4_f32_neon_dot, gemm_w4a8_f32_neon_dot, quantize_w4a8_generic,
     layer_norm_s8_generic, quantize_s8_generic, attention_f32_generic, layer_norm_f32_generic, softmax_f32_generic,
     max_pool_f32_generic, group_norm_sums_generic, group_norm_apply_generic, gated_f32_generic, rotary_f32_generic},
};

}  // namespace

IsaKernelList arch_isa_kernels() { return {kTables, sizeof kTables / sizeof kTables[0]}; }

}  // namespace edgevla
