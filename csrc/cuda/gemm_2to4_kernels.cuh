// 2:4 sparse GEMM on the sparse tensor cores: C = epilogue(X . W^T) with W
// packed by pack_2to4_mma.h. The weight is the MMA's sparse A operand (16
// channels), the activations its B operand (8 tokens), so a warp computes
// C^T tiles of 16 channels x 8 kTilesM tokens, reusing each weight fragment
// kTilesM times; a block is 4 warps on 4 consecutive channel tiles, so the
// activations they share come from L1. Weight fragments are read straight
// from global memory, 16 bytes a lane, coalesced; activations as 16-byte
// (int8) or 4-byte (float16) loads of one token row.
//
// For M <= 16 (the *_split_k kernels) that leaves too few warps to stream the
// weight at memory speed, so there a block of 8 warps owns one channel tile,
// its warps take interleaved k-tiles (k2to4Batch in flight each), and the
// warps' partial sums meet in shared memory, in a fixed order.
#pragma once

#include "cuda/epilogue_cuda.cuh"
#include "cuda/gemm_s8s8_kernels.cuh"  // load_s8x16, OutputS8
#include "cuda/pack_2to4_mma.h"
#include "cuda/ptx_mma.cuh"

#include <cstdint>

namespace edgevla::cuda {

constexpr int k2to4Warps = 4;

// Two float16 of x[k0], x[k0 + 1] as one register, zero past K.
template <bool kVector>
__device__ __forceinline__ uint32_t load_f16x2(const uint16_t* __restrict__ row, int64_t k0, int64_t k, bool row_ok) {
    if (!row_ok || k0 >= k) return 0;
    if (kVector) return __ldg(reinterpret_cast<const uint32_t*>(row + k0));
    const uint32_t lo = row[k0];
    const uint32_t hi = k0 + 1 < k ? row[k0 + 1] : 0u;
    return lo | (hi << 16);
}

// What the int8 and the float16 kernels differ in: the element and the
// accumulator, the k of one MMA, where lane t's k start (kLaneK t), how a
// lane's B fragment (one token row's k values, one uint4) is read from global
// or shared memory, and the MMA itself.
template <bool kF16>
struct Sparse2to4Traits;

template <>
struct Sparse2to4Traits<false> {
    using Element = int8_t;
    using Acc = int32_t;
    static constexpr int kTileK = kTile2to4S8K;
    static constexpr int kLaneK = 16;  // lane t: 16 bytes of k, in the group order the packer permuted for

    // kVector: 16-byte aligned rows, K a multiple of 16 (one predicated load).
    template <bool kVector>
    static __device__ __forceinline__ uint4 load_b(const int8_t* __restrict__ row, int64_t k0, int64_t k, bool ok) {
        return kVector ? ptx::ldg_v4(row + k0, ok && k0 < k) : load_s8x16<false>(row, k0, k, ok);
    }
    // From a row of the tiled kernels' shared activation tile.
    static __device__ __forceinline__ uint4 load_b_shared(const uint8_t* row, int t) {
        return *reinterpret_cast<const uint4*>(row + 16 * t);
    }
    static __device__ __forceinline__ void mma(int32_t (&acc)[4], const uint4& a, const uint4& b, uint32_t e) {
        ptx::mma_sp_s8_m16n8k64(acc, a, b, e);
    }
};

template <>
struct Sparse2to4Traits<true> {
    using Element = uint16_t;
    using Acc = float;
    static constexpr int kTileK = kTile2to4F16K;
    static constexpr int kLaneK = 2;  // register j: k = 8 j + 2 t, 8 j + 2 t + 1

    template <bool kVector>
    static __device__ __forceinline__ uint4 load_b(const uint16_t* __restrict__ row, int64_t k0, int64_t k, bool ok) {
        return make_uint4(load_f16x2<kVector>(row, k0, k, ok), load_f16x2<kVector>(row, k0 + 8, k, ok),
                          load_f16x2<kVector>(row, k0 + 16, k, ok), load_f16x2<kVector>(row, k0 + 24, k, ok));
    }
    // register j: bytes 16 j + 4 t .. of the row
    static __device__ __forceinline__ uint4 load_b_shared(const uint8_t* row, int t) {
        return make_uint4(*reinterpret_cast<const uint32_t*>(row + 4 * t),
                          *reinterpret_cast<const uint32_t*>(row + 16 + 4 * t),
                          *reinterpret_cast<const uint32_t*>(row + 32 + 4 * t),
                          *reinterpret_cast<const uint32_t*>(row + 48 + 4 * t));
    }
    static __device__ __forceinline__ void mma(float (&acc)[4], const uint4& a, const uint4& b, uint32_t e) {
        ptx::mma_sp_f16_m16n8k32(acc, a, b, e);
    }
};

// How the kernels store one accumulator: int32 as is or through the W8A8
// epilogue (OutputS8), and float16 GEMMs' float32 sums through EpilogueF32.
struct Store2to4F32 {
    EpilogueF32 epilogue;
    float* __restrict__ c;
    int64_t ldc;
    __device__ __forceinline__ void operator()(int64_t row, int64_t col, float v) const {
        c[row * ldc + col] = epilogue(col, v);
    }
};
struct Store2to4S8 {
    OutputS8 out;
    __device__ __forceinline__ void operator()(int64_t row, int64_t col, int32_t v) const { out.store(row, col, v); }
};

// ---- M > 16 without the tiled kernels' alignment: one warp a channel tile --
template <bool kF16, int kTilesM, bool kVector, typename Store>
__device__ __forceinline__ void gemm_2to4_direct(int64_t m, int64_t n, int64_t k,
                                                 const typename Sparse2to4Traits<kF16>::Element* __restrict__ x,
                                                 int64_t ldx, const uint4* __restrict__ values,
                                                 const uint32_t* __restrict__ meta, const Store& store) {
    using Traits = Sparse2to4Traits<kF16>;
    using Acc = typename Traits::Acc;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int64_t n_tile = static_cast<int64_t>(blockIdx.x) * k2to4Warps + warp;
    const int64_t n_tiles = (n + 15) / 16;
    if (n_tile >= n_tiles) return;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * 8 * kTilesM;
    const int64_t k_tiles = (k + Traits::kTileK - 1) / Traits::kTileK;

    Acc acc[kTilesM][4];
#pragma unroll
    for (int i = 0; i < kTilesM; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = Acc(0);

    const uint4* tile_values = values + n_tile * k_tiles * 32 + lane;
    const uint32_t* tile_meta = meta + n_tile * k_tiles * 32 + lane;
#pragma unroll 2
    for (int64_t kt = 0; kt < k_tiles; ++kt) {
        const uint4 a = __ldcs(tile_values + kt * 32);
        const uint32_t e = __ldcs(tile_meta + kt * 32);
        const int64_t k0 = kt * Traits::kTileK + Traits::kLaneK * t;
#pragma unroll
        for (int i = 0; i < kTilesM; ++i) {
            const int64_t row = m0 + 8 * i + g;
            const uint4 b = Traits::template load_b<kVector>(x + (row < m ? row : 0) * ldx, k0, k, row < m);
            Traits::mma(acc[i], a, b, e);
        }
    }
    // acc[i]: c0, c1 = channel g, tokens 2t, 2t+1; c2, c3 = channel g+8.
#pragma unroll
    for (int i = 0; i < kTilesM; ++i) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int64_t col = n_tile * 16 + g + 8 * (r / 2);
            const int64_t row = m0 + 8 * i + 2 * t + (r % 2);
            if (row < m && col < n) store(row, col, acc[i][r]);
        }
    }
}

// ---- M <= 16: a block of 8 warps a channel tile, K split among its warps ----
constexpr int k2to4SplitWarps = 8;
constexpr int k2to4Batch = 4;

// Adds the warps' accumulators in warp order and stores the tile.
template <int kTilesM, typename Acc, typename Store>
__device__ __forceinline__ void reduce_and_store(Acc (&acc)[kTilesM][4], Acc (*partial)[kTilesM][4][32], int64_t m,
                                                 int64_t n, int64_t n_tile, int64_t m0, const Store& store) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[warp][i][r][lane] = acc[i][r];
    __syncthreads();
    for (int e = threadIdx.x; e < kTilesM * 128; e += k2to4SplitWarps * 32) {
        const int i = e / 128, r = (e / 32) % 4, l = e % 32;
        Acc sum = partial[0][i][r][l];
#pragma unroll
        for (int v = 1; v < k2to4SplitWarps; ++v) sum += partial[v][i][r][l];
        const int64_t col = n_tile * 16 + l / 4 + 8 * (r / 2);
        const int64_t row = m0 + 8 * i + 2 * (l % 4) + (r % 2);
        if (row < m && col < n) store(row, col, sum);
    }
}

template <bool kF16, int kTilesM, bool kVector, typename Store>
__device__ __forceinline__ void gemm_2to4_split_k(int64_t m, int64_t n, int64_t k,
                                                  const typename Sparse2to4Traits<kF16>::Element* __restrict__ x,
                                                  int64_t ldx, const uint4* __restrict__ values,
                                                  const uint32_t* __restrict__ meta, const Store& store) {
    using Traits = Sparse2to4Traits<kF16>;
    using Acc = typename Traits::Acc;
    __shared__ Acc partial[k2to4SplitWarps][kTilesM][4][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int64_t n_tile = blockIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * 8 * kTilesM;
    const int64_t k_tiles = (k + Traits::kTileK - 1) / Traits::kTileK;

    Acc acc[kTilesM][4];
#pragma unroll
    for (int i = 0; i < kTilesM; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = Acc(0);
    const uint4* tile_values = values + n_tile * k_tiles * 32 + lane;
    const uint32_t* tile_meta = meta + n_tile * k_tiles * 32 + lane;
    for (int64_t first = warp; first < k_tiles; first += k2to4SplitWarps * k2to4Batch) {
        uint4 a[k2to4Batch], b[k2to4Batch][kTilesM];
        uint32_t e[k2to4Batch];
#pragma unroll
        for (int u = 0; u < k2to4Batch; ++u) {
            const int64_t kt = first + u * k2to4SplitWarps;
            const bool in_k = kt < k_tiles;
            a[u] = ptx::ldg_stream_v4(tile_values + kt * 32, in_k);
            e[u] = ptx::ldg_stream_u32(tile_meta + kt * 32, in_k, 0x44444444u);  // positions (0, 1): valid
            const int64_t k0 = kt * Traits::kTileK + Traits::kLaneK * t;
#pragma unroll
            for (int i = 0; i < kTilesM; ++i) {
                const int64_t row = m0 + 8 * i + g;
                b[u][i] = Traits::template load_b<kVector>(x + (row < m ? row : 0) * ldx, k0, k, row < m && in_k);
            }
        }
#pragma unroll
        for (int u = 0; u < k2to4Batch; ++u) {
#pragma unroll
            for (int i = 0; i < kTilesM; ++i) Traits::mma(acc[i], a[u], b[u][i], e[u]);
        }
    }
    reduce_and_store<kTilesM>(acc, partial, m, n, n_tile, m0, store);
}

// ---- M > 16: tiles of 64 (or 128) channels x 64 tokens ---------------------
// 4 warps, kChannelTiles 16-channel tiles each (1, or 2 for the tiled_wide
// variant: each activation fragment read from shared memory feeds 2 MMAs
// instead of 1), 8 token tiles of 8 each. The activation
// tile (64 tokens x 64 bytes of k: 64 int8 or 32 float16) is shared by the 4
// warps through shared memory, k2to4TiledStages deep, filled by cp.async; each
// warp's weight fragments (512 bytes of values, 128 of metadata per k-tile)
// travel in the same stages, so they too arrive k2to4TiledStages - 1 tiles
// ahead, and each is used by 8 MMAs. Needs 16-byte aligned activation rows whose
// byte length is a multiple of 16 (the launcher checks; else the kernels above).
constexpr int k2to4TiledStages = 4;
constexpr int k2to4TileTokens = 64;
constexpr int k2to4RowBytes = 64 + 16;  // padded rows: conflict-free 16-byte reads of 8 rows

template <bool kF16, int kChannelTiles, typename Store>
__device__ __forceinline__ void gemm_2to4_tiled(int64_t m, int64_t n, int64_t k,
                                                const typename Sparse2to4Traits<kF16>::Element* __restrict__ x,
                                                int64_t ldx, const uint4* __restrict__ values,
                                                const uint32_t* __restrict__ meta, const Store& store) {
    using Traits = Sparse2to4Traits<kF16>;
    using Acc = typename Traits::Acc;
    constexpr int kTileK = Traits::kTileK;
    constexpr int kElement = sizeof(typename Traits::Element);
    __shared__ __align__(16) uint8_t x_tile[k2to4TiledStages][k2to4TileTokens * k2to4RowBytes];
    __shared__ __align__(16) uint4 w_tile[k2to4TiledStages][k2to4Warps][kChannelTiles][32];
    __shared__ uint32_t e_tile[k2to4TiledStages][k2to4Warps][kChannelTiles][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int64_t n_tiles = (n + 15) / 16;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * k2to4TileTokens;
    const int64_t k_tiles = (k + kTileK - 1) / kTileK;
    const int64_t row_bytes = k * kElement;
    const uint8_t* x_bytes = reinterpret_cast<const uint8_t*>(x);
    int64_t n_tile[kChannelTiles];
    bool tile_ok[kChannelTiles];
    const uint4* tile_values[kChannelTiles];
    const uint32_t* tile_meta[kChannelTiles];
#pragma unroll
    for (int c = 0; c < kChannelTiles; ++c) {
        n_tile[c] = (static_cast<int64_t>(blockIdx.x) * k2to4Warps + warp) * kChannelTiles + c;
        tile_ok[c] = n_tile[c] < n_tiles;
        tile_values[c] = values + (tile_ok[c] ? n_tile[c] : 0) * k_tiles * 32 + lane;
        tile_meta[c] = meta + (tile_ok[c] ? n_tile[c] : 0) * k_tiles * 32 + lane;
    }

    // Per stage: 64 rows x 4 pieces of 16 bytes of x (2 per thread), and each
    // lane's own weight fragments and metadata words (zero-filled past the last
    // channel tile: those tiles compute nothing that is stored).
    auto load_stage = [&](int64_t kt) {
        const int stage = kt % k2to4TiledStages;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int piece = threadIdx.x + i * k2to4Warps * 32;
            const int r = piece / 4, c = (piece % 4) * 16;
            const int64_t row = m0 + r, byte = kt * 64 + c;
            const bool ok = row < m && byte < row_bytes;
            ptx::cp_async_16(x_tile[stage] + r * k2to4RowBytes + c, ok ? x_bytes + row * ldx * kElement + byte : x_bytes,
                             ok ? 16 : 0);
        }
#pragma unroll
        for (int c = 0; c < kChannelTiles; ++c) {
            ptx::cp_async_16(&w_tile[stage][warp][c][lane], tile_values[c] + kt * 32, tile_ok[c] ? 16 : 0);
            ptx::cp_async_4(&e_tile[stage][warp][c][lane], tile_meta[c] + kt * 32, tile_ok[c] ? 4 : 0);
        }
    };

    Acc acc[kChannelTiles][8][4];
#pragma unroll
    for (int c = 0; c < kChannelTiles; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[c][i][0] = acc[c][i][1] = acc[c][i][2] = acc[c][i][3] = Acc(0);

#pragma unroll
    for (int s = 0; s < k2to4TiledStages - 1; ++s) {
        if (s < k_tiles) load_stage(s);
        ptx::cp_async_commit();
    }
    for (int64_t kt = 0; kt < k_tiles; ++kt) {
        ptx::cp_async_wait<k2to4TiledStages - 2>();
        __syncthreads();
        if (kt + k2to4TiledStages - 1 < k_tiles) load_stage(kt + k2to4TiledStages - 1);
        ptx::cp_async_commit();

        const int stage = kt % k2to4TiledStages;
        uint4 a[kChannelTiles];
        uint32_t e[kChannelTiles];
#pragma unroll
        for (int c = 0; c < kChannelTiles; ++c) {
            a[c] = w_tile[stage][warp][c][lane];
            // Zero-filled metadata (a channel tile past N) is not a valid selector: use positions (0, 1).
            e[c] = tile_ok[c] ? e_tile[stage][warp][c][lane] : 0x44444444u;
        }
        const uint8_t* x_stage = x_tile[stage];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint4 b = Traits::load_b_shared(x_stage + (i * 8 + g) * k2to4RowBytes, t);
#pragma unroll
            for (int c = 0; c < kChannelTiles; ++c) Traits::mma(acc[c][i], a[c], b, e[c]);
        }
    }
    ptx::cp_async_wait<0>();
#pragma unroll
    for (int c = 0; c < kChannelTiles; ++c) {
        if (!tile_ok[c]) continue;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int64_t col = n_tile[c] * 16 + g + 8 * (r / 2);
                const int64_t row = m0 + 8 * i + 2 * t + (r % 2);
                if (row < m && col < n) store(row, col, acc[c][i][r]);
            }
        }
    }
}

// ---- The kernels ------------------------------------------------------------
template <int kTilesM, bool kVector>
__global__ void __launch_bounds__(k2to4Warps * 32)
    gemm_2to4_s8_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ x, int64_t ldx,
                        const uint4* __restrict__ values, const uint32_t* __restrict__ meta, OutputS8 out) {
    gemm_2to4_direct<false, kTilesM, kVector>(m, n, k, x, ldx, values, meta, Store2to4S8{out});
}

template <int kTilesM, bool kVector>
__global__ void __launch_bounds__(k2to4Warps * 32)
    gemm_2to4_f16_kernel(int64_t m, int64_t n, int64_t k, const uint16_t* __restrict__ x, int64_t ldx,
                         const uint4* __restrict__ values, const uint32_t* __restrict__ meta, EpilogueF32 epilogue,
                         float* __restrict__ c, int64_t ldc) {
    gemm_2to4_direct<true, kTilesM, kVector>(m, n, k, x, ldx, values, meta, Store2to4F32{epilogue, c, ldc});
}

template <int kTilesM, bool kVector>
__global__ void __launch_bounds__(k2to4SplitWarps * 32)
    gemm_2to4_s8_split_k_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ x, int64_t ldx,
                                const uint4* __restrict__ values, const uint32_t* __restrict__ meta, OutputS8 out) {
    gemm_2to4_split_k<false, kTilesM, kVector>(m, n, k, x, ldx, values, meta, Store2to4S8{out});
}

template <int kTilesM, bool kVector>
__global__ void __launch_bounds__(k2to4SplitWarps * 32)
    gemm_2to4_f16_split_k_kernel(int64_t m, int64_t n, int64_t k, const uint16_t* __restrict__ x, int64_t ldx,
                                 const uint4* __restrict__ values, const uint32_t* __restrict__ meta,
                                 EpilogueF32 epilogue, float* __restrict__ c, int64_t ldc) {
    gemm_2to4_split_k<true, kTilesM, kVector>(m, n, k, x, ldx, values, meta, Store2to4F32{epilogue, c, ldc});
}

template <int kChannelTiles>
__global__ void __launch_bounds__(k2to4Warps * 32)
    gemm_2to4_s8_tiled_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ x, int64_t ldx,
                              const uint4* __restrict__ values, const uint32_t* __restrict__ meta, OutputS8 out) {
    gemm_2to4_tiled<false, kChannelTiles>(m, n, k, x, ldx, values, meta, Store2to4S8{out});
}

template <int kChannelTiles>
__global__ void __launch_bounds__(k2to4Warps * 32)
    gemm_2to4_f16_tiled_kernel(int64_t m, int64_t n, int64_t k, const uint16_t* __restrict__ x, int64_t ldx,
                               const uint4* __restrict__ values, const uint32_t* __restrict__ meta,
                               EpilogueF32 epilogue, float* __restrict__ c, int64_t ldc) {
    gemm_2to4_tiled<true, kChannelTiles>(m, n, k, x, ldx, values, meta, Store2to4F32{epilogue, c, ldc});
}

}  // namespace edgevla::cuda
