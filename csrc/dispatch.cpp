#include "dispatch.h"

#include <atomic>

namespace edgevla {
namespace {

bool always(const CpuFeatures&) { return true; }

constexpr IsaKernels kGeneric{"generic",           always,
                               gemm_packed_s8_f32_generic, quantize_row_generic,
                               gemm_sparse_f32_generic,    gemm_sparse_s8_generic,
                               gemm_2to4_f32_generic,      gemm_2to4_s8_generic,
                               gemm_w4_f32_generic,        gemm_w4a8_f32_generic,
                               quantize_w4a8_generic,      layer_norm_s8_generic,
                               quantize_s8_generic,        attention_f32_generic,
                               layer_norm_f32_generic,     softmax_f32_generic,
                               max_pool_f32_generic,       group_norm_sums_generic,
                               group_norm_apply_generic,   gated_f32_generic,
                               rotary_f32_generic};

const IsaKernels* best_available() {
    const IsaKernelList arch = arch_isa_kernels();
    for (size_t i = 0; i < arch.count; ++i) {
        if (arch.tables[i].supported(cpu_features())) return &arch.tables[i];
    }
    return &kGeneric;
}

std::atomic<const IsaKernels*>& active_slot() {
    static std::atomic<const IsaKernels*> slot{best_available()};
    return slot;
}

}  // namespace

const IsaKernels& active_isa() { return *active_slot().load(std::memory_order_acquire); }

std::vector<const IsaKernels*> compiled_isas() {
    std::vector<const IsaKernels*> isas;
    const IsaKernelList arch = arch_isa_kernels();
    for (size_t i = 0; i < arch.count; ++i) isas.push_back(&arch.tables[i]);
    isas.push_back(&kGeneric);
    return isas;
}

std::vector<const IsaKernels*> available_isas() {
    std::vector<const IsaKernels*> isas;
    for (const IsaKernels* isa : compiled_isas()) {
        if (isa->supported(cpu_features())) isas.push_back(isa);
    }
    return isas;
}

IsaSelection select_isa(const std::string& name) {
    if (name == "auto") {
        active_slot().store(best_available(), std::memory_order_release);
        return IsaSelection::selected;
    }
    for (const IsaKernels* isa : compiled_isas()) {
        if (name != isa->name) continue;
        if (!isa->supported(cpu_features())) return IsaSelection::unsupported;
        active_slot().store(isa, std::memory_order_release);
        return IsaSelection::selected;
    }
    return IsaSelection::unknown;
}

}  // namespace edgevla
