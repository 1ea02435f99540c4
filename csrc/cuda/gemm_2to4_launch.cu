// Launchers of the 2:4 sparse GEMMs: tokens per warp by M, vector loads when
// the activation rows allow them.
#include "cuda/cuda_kernels.h"
#include "cuda/gemm_2to4_kernels.cuh"
#include "cuda/launch_check.cuh"

namespace edgevla::cuda {
namespace {

dim3 grid_of(int64_t m, int64_t n, int tiles_m) {
    const int64_t n_tiles = (n + 15) / 16;
    return dim3(static_cast<unsigned>((n_tiles + k2to4Warps - 1) / k2to4Warps),
                static_cast<unsigned>((m + 8 * tiles_m - 1) / (8 * tiles_m)));
}

// M > 16 with 16-byte aligned activation rows: 64 x 64 tiles through shared memory.
bool tiled_ok(const void* x, int64_t ldx, int64_t k, int element) {
    return reinterpret_cast<uintptr_t>(x) % 16 == 0 && (ldx * element) % 16 == 0 && (k * element) % 16 == 0;
}

dim3 tiled_grid(int64_t m, int64_t n, int channel_tiles) {
    const int64_t n_tiles = (n + 15) / 16, per_block = int64_t{k2to4Warps} * channel_tiles;
    return dim3(static_cast<unsigned>((n_tiles + per_block - 1) / per_block),
                static_cast<unsigned>((m + k2to4TileTokens - 1) / k2to4TileTokens));
}

// M <= 16: one block of 8 warps per channel tile, K split among the warps.
dim3 split_grid(int64_t m, int64_t n, int tiles_m) {
    return dim3(static_cast<unsigned>((n + 15) / 16), static_cast<unsigned>((m + 8 * tiles_m - 1) / (8 * tiles_m)));
}

template <int kTilesM>
void launch_s8(const Gemm2to4S8Args& g, bool wide, cudaStream_t stream) {
    OutputS8 out{};
    out.c_f32 = g.c_f32;
    out.c_s32 = g.c_s32;
    out.ldc = g.ldc;
    out.epilogue = EpilogueS8{g.w_scale, g.a_scale, g.a_scale_per_token ? 1 : 0, g.bias, g.activation};
    const bool vector = g.k % 16 == 0 && g.ldx % 16 == 0 && reinterpret_cast<uintptr_t>(g.x) % 16 == 0;
    const uint4* values = reinterpret_cast<const uint4*>(g.values);
    if constexpr (kTilesM <= 2) {
        const dim3 grid = split_grid(g.m, g.n, kTilesM);
        if (vector) {
            gemm_2to4_s8_split_k_kernel<kTilesM, true>
                <<<grid, k2to4SplitWarps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values, g.meta, out);
        } else {
            gemm_2to4_s8_split_k_kernel<kTilesM, false>
                <<<grid, k2to4SplitWarps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values, g.meta, out);
        }
        check_launch("gemm_2to4_s8_split_k_kernel", stream);
        return;
    }
    if (tiled_ok(g.x, g.ldx, g.k, 1)) {
        if (wide) {
            gemm_2to4_s8_tiled_kernel<2><<<tiled_grid(g.m, g.n, 2), k2to4Warps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, out);
        } else {
            gemm_2to4_s8_tiled_kernel<1><<<tiled_grid(g.m, g.n, 1), k2to4Warps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, out);
        }
        check_launch("gemm_2to4_s8_tiled_kernel", stream);
        return;
    }
    const dim3 grid = grid_of(g.m, g.n, kTilesM);
    if (vector) {
        gemm_2to4_s8_kernel<kTilesM, true><<<grid, k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                 g.meta, out);
    } else {
        gemm_2to4_s8_kernel<kTilesM, false><<<grid, k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, out);
    }
    check_launch("gemm_2to4_s8_kernel", stream);
}

template <int kTilesM>
void launch_f16(const Gemm2to4F16Args& g, bool wide, cudaStream_t stream) {
    const bool vector = g.ldx % 2 == 0 && reinterpret_cast<uintptr_t>(g.x) % 4 == 0;
    const uint4* values = reinterpret_cast<const uint4*>(g.values);
    const EpilogueF32 epilogue{g.bias, g.activation};
    if constexpr (kTilesM <= 2) {
        const dim3 grid = split_grid(g.m, g.n, kTilesM);
        if (vector) {
            gemm_2to4_f16_split_k_kernel<kTilesM, true><<<grid, k2to4SplitWarps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, epilogue, g.c, g.ldc);
        } else {
            gemm_2to4_f16_split_k_kernel<kTilesM, false><<<grid, k2to4SplitWarps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, epilogue, g.c, g.ldc);
        }
        check_launch("gemm_2to4_f16_split_k_kernel", stream);
        return;
    }
    if (tiled_ok(g.x, g.ldx, g.k, 2)) {
        if (wide) {
            gemm_2to4_f16_tiled_kernel<2><<<tiled_grid(g.m, g.n, 2), k2to4Warps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, epilogue, g.c, g.ldc);
        } else {
            gemm_2to4_f16_tiled_kernel<1><<<tiled_grid(g.m, g.n, 1), k2to4Warps * 32, 0, stream>>>(
                g.m, g.n, g.k, g.x, g.ldx, values, g.meta, epilogue, g.c, g.ldc);
        }
        check_launch("gemm_2to4_f16_tiled_kernel", stream);
        return;
    }
    const dim3 grid = grid_of(g.m, g.n, kTilesM);
    if (vector) {
        gemm_2to4_f16_kernel<kTilesM, true><<<grid, k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, epilogue, g.c, g.ldc);
    } else {
        gemm_2to4_f16_kernel<kTilesM, false><<<grid, k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                   g.meta, epilogue, g.c, g.ldc);
    }
    check_launch("gemm_2to4_f16_kernel", stream);
}

}  // namespace

void gemm_2to4_s8(const Gemm2to4S8Args& g, Gemm2to4Variant variant, uintptr_t stream_handle) {
    if (g.m == 0 || g.n == 0) return;
    const cudaStream_t stream = as_stream(stream_handle);
    const bool wide = variant == Gemm2to4Variant::tiled_wide;
    if (g.m <= 8) {
        launch_s8<1>(g, wide, stream);
    } else if (g.m <= 16) {
        launch_s8<2>(g, wide, stream);
    } else {
        launch_s8<4>(g, wide, stream);
    }
}

void gemm_2to4_f16(const Gemm2to4F16Args& g, Gemm2to4Variant variant, uintptr_t stream_handle) {
    if (g.m == 0 || g.n == 0) return;
    const cudaStream_t stream = as_stream(stream_handle);
    const bool wide = variant == Gemm2to4Variant::tiled_wide;
    if (g.m <= 8) {
        launch_f16<1>(g, wide, stream);
    } else if (g.m <= 16) {
        launch_f16<2>(g, wide, stream);
    } else {
        launch_f16<4>(g, wide, stream);
    }
}

}  // namespace edgevla::cuda
