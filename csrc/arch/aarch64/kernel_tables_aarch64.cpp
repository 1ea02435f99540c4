// The aarch64 SIMD kernel tables, best first. Compiled with baseline
// (ARMv8.0) flags: it only takes the address of the dot-product entry point.
// Quantization has no NEON path yet and uses the portable one.
#include "dispatch.h"

namespace edgevla {
namespace {

bool has_dot_product(const CpuFeatures& f) { return f.asimd && f.asimddp; }

constexpr IsaKernels kTables[] = {
    {"neon_dot", has_dot_product, gemm_packed_s8_f32_neon_dot, quantize_row_generic},
};

}  // namespace

IsaKernelList arch_isa_kernels() { return {kTables, sizeof kTables / sizeof kTables[0]}; }

}  // namespace edgevla
