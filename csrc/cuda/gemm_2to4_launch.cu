// Launchers of the 2:4 sparse GEMMs: tokens per warp by M, vector loads when
// the activation rows allow them.
#include "cuda/cuda_kernels.h"
#include "cuda/gemm_2to4_kernels.cuh"
#include "cuda/gemm_2to4_sm90.h"
#include "cuda/launch_check.cuh"

#include <stdexcept>
#include <string>

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
    const uint4* values = reinterpret_cast<const uint4*>(g.values);
    if constexpr (kTilesM <= 2) {
        const bool vector = g.k % 16 == 0 && g.ldx % 16 == 0 && reinterpret_cast<uintptr_t>(g.x) % 16 == 0;
        const auto kernel =
            vector ? gemm_2to4_s8_split_k_kernel<kTilesM, true> : gemm_2to4_s8_split_k_kernel<kTilesM, false>;
        kernel<<<split_grid(g.m, g.n, kTilesM), k2to4SplitWarps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, out);
        check_launch("gemm_2to4_s8_split_k_kernel", stream);
    } else if (tiled_ok(g.x, g.ldx, g.k, 1)) {
        const auto kernel = wide ? gemm_2to4_s8_tiled_kernel<2> : gemm_2to4_s8_tiled_kernel<1>;
        kernel<<<tiled_grid(g.m, g.n, wide ? 2 : 1), k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, out);
        check_launch("gemm_2to4_s8_tiled_kernel", stream);
    } else {
        // int8 rows fit for 16-byte loads are exactly those tiled_ok takes: here, byte loads.
        gemm_2to4_s8_kernel<kTilesM, false><<<grid_of(g.m, g.n, kTilesM), k2to4Warps * 32, 0, stream>>>(
            g.m, g.n, g.k, g.x, g.ldx, values, g.meta, out);
        check_launch("gemm_2to4_s8_kernel", stream);
    }
}

template <int kTilesM>
void launch_f16(const Gemm2to4F16Args& g, bool wide, cudaStream_t stream) {
    const bool vector = g.ldx % 2 == 0 && reinterpret_cast<uintptr_t>(g.x) % 4 == 0;
    const uint4* values = reinterpret_cast<const uint4*>(g.values);
    const EpilogueF32 epilogue{g.bias, g.activation};
    if constexpr (kTilesM <= 2) {
        const auto kernel =
            vector ? gemm_2to4_f16_split_k_kernel<kTilesM, true> : gemm_2to4_f16_split_k_kernel<kTilesM, false>;
        kernel<<<split_grid(g.m, g.n, kTilesM), k2to4SplitWarps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, epilogue, g.c, g.ldc);
        check_launch("gemm_2to4_f16_split_k_kernel", stream);
    } else if (tiled_ok(g.x, g.ldx, g.k, 2)) {
        const auto kernel = wide ? gemm_2to4_f16_tiled_kernel<2> : gemm_2to4_f16_tiled_kernel<1>;
        kernel<<<tiled_grid(g.m, g.n, wide ? 2 : 1), k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values,
                                                                                  g.meta, epilogue, g.c, g.ldc);
        check_launch("gemm_2to4_f16_tiled_kernel", stream);
    } else {
        const auto kernel = vector ? gemm_2to4_f16_kernel<kTilesM, true> : gemm_2to4_f16_kernel<kTilesM, false>;
        kernel<<<grid_of(g.m, g.n, kTilesM), k2to4Warps * 32, 0, stream>>>(g.m, g.n, g.k, g.x, g.ldx, values, g.meta,
                                                                          epilogue, g.c, g.ldc);
        check_launch("gemm_2to4_f16_kernel", stream);
    }
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

bool gemm_2to4_wgmma_compiled() {
#ifdef EDGEVLA_CUTLASS_SM90
    return gemm_2to4_sm90_compiled();
#else
    return false;
#endif
}

#ifdef EDGEVLA_CUTLASS_SM90
namespace {

// The lowest index row * groups + group of a group of 4 k (the last one
// partial when k % 4 != 0) with more than 2 non-zeros, by atomicMin into
// *first (left at ~0 when there is none).
__global__ void first_dense_group_kernel(const int8_t* w, int64_t n, int64_t k, int64_t ldw,
                                         unsigned long long* first) {
    const int64_t groups = (k + 3) / 4;
    const int64_t stride = int64_t{gridDim.x} * blockDim.x;
    for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n * groups; i += stride) {
        const int64_t row = i / groups, k0 = 4 * (i % groups);
        int count = 0;
        for (int64_t kk = k0; kk < k0 + 4 && kk < k; ++kk) count += w[row * ldw + kk] != 0;
        if (count > 2) atomicMin(first, static_cast<unsigned long long>(i));
    }
}

// CUTLASS's compressor assumes 2:4 and writes past a group's two slots
// otherwise: refuse such a weight first (one pass and one synchronization,
// once per weight), naming the first offending group.
void check_2to4_on_device(const int8_t* w, int64_t n, int64_t k, int64_t ldw, cudaStream_t stream) {
    unsigned long long* first = nullptr;
    check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&first), sizeof(*first), stream), "cudaMallocAsync");
    unsigned long long found = ~0ull;
    cudaError_t status = cudaMemsetAsync(first, 0xFF, sizeof(*first), stream);
    if (status == cudaSuccess) {
        first_dense_group_kernel<<<256, 256, 0, stream>>>(w, n, k, ldw, first);
        status = cudaGetLastError();
    }
    if (status == cudaSuccess) status = cudaMemcpyAsync(&found, first, sizeof(found), cudaMemcpyDeviceToHost, stream);
    if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
    cudaFreeAsync(first, stream);
    check_cuda(status, "pack_2to4_s8 (wgmma): checking the 2:4 pattern");
    if (found != ~0ull) {
        const int64_t groups = (k + 3) / 4, index = static_cast<int64_t>(found);
        const int64_t row = index / groups, k0 = 4 * (index % groups);
        throw std::invalid_argument("not 2:4 sparse: row " + std::to_string(row) + " has more than 2 non-zeros in k " +
                                    std::to_string(k0) + ".." + std::to_string(k0 + 3));
    }
}

}  // namespace

Sparse2to4WgmmaSizes sparse_2to4_s8_wgmma_sizes(int64_t n, int64_t k) { return sparse_2to4_s8_sm90_sizes(n, k); }

void compress_2to4_s8_wgmma(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int8_t* values, uint8_t* meta,
                            uintptr_t stream) {
    const cudaStream_t s = as_stream(stream);
    sparse_2to4_s8_sm90_sizes(n, k);  // the shape checks, before the pattern's
    if (ldw < k) throw std::invalid_argument("pack_2to4_s8 (wgmma): the row stride is below K");
    check_2to4_on_device(w, n, k, ldw, s);
    compress_2to4_s8_sm90(w, n, k, ldw, values, meta, s);
}

void gemm_2to4_s8_wgmma(const Gemm2to4S8WgmmaArgs& g, uintptr_t stream) {
    if (g.m == 0) return;
    gemm_2to4_s8_sm90(g, as_stream(stream));
}
#else
namespace {
[[noreturn]] void no_wgmma() { throw_variant_not_built("gemm_2to4_s8", "wgmma", "sm_90"); }
}  // namespace

Sparse2to4WgmmaSizes sparse_2to4_s8_wgmma_sizes(int64_t, int64_t) { no_wgmma(); }
void compress_2to4_s8_wgmma(const int8_t*, int64_t, int64_t, int64_t, int8_t*, uint8_t*, uintptr_t) { no_wgmma(); }
void gemm_2to4_s8_wgmma(const Gemm2to4S8WgmmaArgs&, uintptr_t) { no_wgmma(); }
#endif

}  // namespace edgevla::cuda
