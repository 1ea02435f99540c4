// Run-time choice of the kernels of one instruction set (ISA).
//
// Each architecture lists the SIMD kernel tables it compiled, best first
// (arch/<arch>/kernel_tables_<arch>.cpp); the portable "generic" table is
// always there. The active table is the best one the CPU supports, unless a
// test or a benchmark forces another with select_isa().
#pragma once

#include "cpu_features.h"
#include "cpu_kernels.h"

#include <cstddef>
#include <string>
#include <vector>

namespace edgevla {

struct IsaKernels {
    const char* name;  // "generic", "avx2", "avx512_vnni", "neon_dot"
    bool (*supported)(const CpuFeatures&);
    GemmPackedS8F32Kernel gemm_packed_s8_f32;
    QuantizeRowKernel quantize_row;
    TileKernel<GemmSparseF32Args> gemm_sparse_f32;
    TileKernel<GemmSparseS8Args> gemm_sparse_s8;
    TileKernel<Gemm2to4F32Args> gemm_2to4_f32;
    TileKernel<Gemm2to4S8Args> gemm_2to4_s8;
    TileKernel<GemmW4F32Args> gemm_w4_f32;
    TileKernel<GemmW4A8Args> gemm_w4a8_f32;
    QuantizeW4A8Kernel quantize_w4a8;
    LayerNormS8Kernel layer_norm_s8;
    QuantizeS8Kernel quantize_s8;
    AttentionF32Kernel attention_f32;
    LayerNormF32Kernel layer_norm_f32;
    SoftmaxF32Kernel softmax_f32;
    MaxPoolF32Kernel max_pool_f32;
    GroupNormSumsKernel group_norm_sums;
    GroupNormApplyKernel group_norm_apply;
    GatedF32Kernel gated_f32;
    RotaryF32Kernel rotary_f32;
    Int8PeakLoop int8_peak = nullptr;  // the compute roofs' loops, where written
    F32PeakLoop f32_peak = nullptr;
};

struct IsaKernelList {
    const IsaKernels* tables;
    size_t count;
};

// The SIMD tables compiled for this architecture, best first (per-arch file).
IsaKernelList arch_isa_kernels();

// The kernels in use now.
const IsaKernels& active_isa();

// Every ISA compiled into this binary, and those this CPU can run, best first
// ("generic" last in both).
std::vector<const IsaKernels*> compiled_isas();
std::vector<const IsaKernels*> available_isas();

enum class IsaSelection { selected, unknown, unsupported };

// Makes `name` the active ISA ("auto": the best available). Returns unknown
// for a name not compiled in, unsupported when this CPU lacks it; the active
// ISA is unchanged then.
IsaSelection select_isa(const std::string& name);

}  // namespace edgevla
