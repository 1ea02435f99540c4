// What the emulated 2:4 drivers (cuda_emulated_s8.cpp's int8 part,
// cuda_emulated_2to4.cpp) share: packing with the H200's metadata layouts,
// and the launcher's grid for each 2:4 kernel (gemm_2to4_launch.cu).
#pragma once

#include "cuda/emulate/cuda_emulate.h"

#include "cuda/gemm_2to4_kernels.cuh"
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

enum class Sparse2to4Kernel { direct, split_k, tiled };

inline const char* name_of(Sparse2to4Kernel kernel) {
    return kernel == Sparse2to4Kernel::direct ? "direct" : kernel == Sparse2to4Kernel::split_k ? "split_k" : "tiled";
}

// The launcher's grid and block for `kernel` with `tiles` token tiles
// (direct, split_k) or channel tiles a warp (tiled).
struct Launch2to4 {
    emulate::Index3 grid, block;
};
inline Launch2to4 launch_of(Sparse2to4Kernel kernel, int tiles, int64_t m, int64_t n) {
    const auto n_tiles = static_cast<unsigned>((n + 15) / 16);
    const auto token_blocks = static_cast<unsigned>((m + 8 * tiles - 1) / (8 * tiles));
    switch (kernel) {
        case Sparse2to4Kernel::split_k: return {{n_tiles, token_blocks, 1}, {k2to4SplitWarps * 32, 1, 1}};
        case Sparse2to4Kernel::tiled: {
            const unsigned per_block = k2to4Warps * static_cast<unsigned>(tiles);
            return {{(n_tiles + per_block - 1) / per_block, static_cast<unsigned>((m + k2to4TileTokens - 1) / k2to4TileTokens), 1},
                    {k2to4Warps * 32, 1, 1}};
        }
        default: return {{(n_tiles + k2to4Warps - 1) / k2to4Warps, token_blocks, 1}, {k2to4Warps * 32, 1, 1}};
    }
}

}  // namespace edgevla::cuda
