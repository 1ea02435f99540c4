// What the emulated 2:4 drivers (cuda_emulated_s8.cpp's int8 part,
// cuda_emulated_2to4.cpp) share: packing with the H200's metadata layouts.
#pragma once

#include "cuda/emulate/cuda_emulate.h"

#include "cuda/pack_2to4_mma.h"

#include <cstdint>
#include <type_traits>
#include <vector>

namespace edgevla::cuda {

// W (N, K) int8 or float16 bits, packed as pack_2to4_s8 / pack_2to4_f16 pack
// it on a GPU: metadata layout 2 (int8) or 0 (float16), the H200's.
struct Packed2to4 {
    std::vector<uint32_t> values, meta;

    template <typename T>
    static Packed2to4 of(const T* w, int64_t n, int64_t k, int64_t ldw) {
        constexpr bool kF16 = std::is_same_v<T, uint16_t>;
        const Packed2to4MmaLayout layout = packed_2to4_mma_layout(n, k, kF16);
        Packed2to4 packed;
        packed.values.resize(static_cast<size_t>(layout.value_words));
        packed.meta.resize(static_cast<size_t>(layout.meta_words));
        if constexpr (kF16) {
            pack_2to4_f16_mma(w, n, k, ldw, 0, packed.values.data(), packed.meta.data());
        } else {
            pack_2to4_s8_mma(w, n, k, ldw, 2, packed.values.data(), packed.meta.data());
        }
        return packed;
    }
    // Guarded copies, as the kernels take them.
    const uint4* device_values() const {
        return reinterpret_cast<const uint4*>(emulate::guarded_copy(values.data(), values.size(), 16));
    }
    const uint32_t* device_meta() const { return emulate::guarded_copy(meta.data(), meta.size(), 16); }
};

}  // namespace edgevla::cuda
