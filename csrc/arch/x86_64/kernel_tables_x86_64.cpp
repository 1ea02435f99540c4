// The x86-64 SIMD kernel tables, best first. Compiled with baseline flags: it
// only takes the addresses of the AVX-512 and AVX2 entry points.
#include "dispatch.h"

namespace edgevla {
namespace {

bool has_avx512_vnni(const CpuFeatures& f) { return f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni; }
bool has_avx512_amx(const CpuFeatures& f) { return has_avx512_vnni(f) && f.amx_tile && f.amx_int8; }
// The AVX2 kernels are compiled with -mfma too (the epilogue's polynomials);
// every AVX2 CPU made has FMA3, but a hypervisor may hide it.
bool has_avx2(const CpuFeatures& f) { return f.avx2 && f.fma; }
bool has_avx_vnni(const CpuFeatures& f) { return has_avx2(f) && f.avx_vnni; }

constexpr IsaKernels kTables[] = {
    // The VNNI table with the AMX-INT8 dense W8A8 GEMM (gemm_amx.cpp).
    {"avx512_amx", has_avx512_amx, gemm_packed_s8_f32_amx, quantize_row_avx512,
     gemm_sparse_f32_avx512_vnni, gemm_sparse_s8_avx512_vnni, gemm_2to4_f32_avx512_vnni, gemm_2to4_s8_avx512_vnni,
     gemm_w4_f32_avx512_vnni, gemm_w4a8_f32_avx512_vnni, quantize_w4a8_avx512,
     layer_norm_s8_avx512, quantize_s8_avx512, attention_f32_avx512, layer_norm_f32_avx512, softmax_f32_avx512,
     max_pool_f32_avx512, group_norm_sums_avx512, group_norm_apply_avx512, gated_f32_avx512, rotary_f32_avx512,
     nullptr /* no AMX roof loop yet: the VNNI one is not this table's int8 roof */, f32_peak_loop_avx512},
    {"avx512_vnni", has_avx512_vnni, gemm_packed_s8_f32_avx512_vnni, quantize_row_avx512,
     gemm_sparse_f32_avx512_vnni, gemm_sparse_s8_avx512_vnni, gemm_2to4_f32_avx512_vnni, gemm_2to4_s8_avx512_vnni,
     gemm_w4_f32_avx512_vnni, gemm_w4a8_f32_avx512_vnni, quantize_w4a8_avx512,
     layer_norm_s8_avx512, quantize_s8_avx512, attention_f32_avx512, layer_norm_f32_avx512, softmax_f32_avx512,
     max_pool_f32_avx512, group_norm_sums_avx512, group_norm_apply_avx512, gated_f32_avx512, rotary_f32_avx512,
     int8_peak_loop_avx512_vnni, f32_peak_loop_avx512},
    // AVX2 with the VEX vpdpbusd (Alder Lake and later without AVX-512): the
    // dense W8A8, the 2:4 int8 and the W4A8 GEMMs on it (gemm_avx_vnni.cpp,
    // gemm_2to4_avx_vnni.cpp), every other kernel AVX2's.
    {"avx_vnni", has_avx_vnni, gemm_packed_s8_f32_avx_vnni, quantize_row_avx2,
     gemm_sparse_f32_avx2, gemm_sparse_s8_avx2, gemm_2to4_f32_avx2, gemm_2to4_s8_avx_vnni,
     gemm_w4_f32_avx2, gemm_w4a8_f32_avx_vnni, quantize_w4a8_avx2, layer_norm_s8_avx2, quantize_s8_avx2,
     attention_f32_avx2, layer_norm_f32_avx2, softmax_f32_avx2, max_pool_f32_avx2, group_norm_sums_avx2,
     group_norm_apply_avx2, gated_f32_avx2, rotary_f32_avx2, int8_peak_loop_avx_vnni},
    {"avx2", has_avx2, gemm_packed_s8_f32_avx2, quantize_row_avx2,
     gemm_sparse_f32_avx2, gemm_sparse_s8_avx2, gemm_2to4_f32_avx2, gemm_2to4_s8_avx2,
     gemm_w4_f32_avx2, gemm_w4a8_f32_avx2, quantize_w4a8_avx2, layer_norm_s8_avx2, quantize_s8_avx2,
     attention_f32_avx2, layer_norm_f32_avx2, softmax_f32_avx2, max_pool_f32_avx2, group_norm_sums_avx2,
     group_norm_apply_avx2, gated_f32_avx2, rotary_f32_avx2},
};

}  // namespace

IsaKernelList arch_isa_kernels() { return {kTables, sizeof kTables / sizeof kTables[0]}; }

}  // namespace edgevla
