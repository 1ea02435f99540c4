// W8A8 GEMM kernels on the int8 tensor cores (mma.sync m16n8k32, int32
// accumulators), C = epilogue(A . W^T) with the contract of gemm_s8s8.h.
//
//   gemm_s8s8_small_m_kernel  M <= 16: one 16-row MMA tile; a block of 8 warps
//       owns 8 * kTilesN output columns and splits K among its warps (64 k per
//       step, interleaved), then adds the warps' int32 partial sums in shared
//       memory (exact, deterministic) and applies the epilogue. Operands come
//       straight from global memory as 16-byte loads: the weight is read once,
//       so there is nothing for shared memory to reuse. Each lane loads 16
//       consecutive k of its row, and the fragment registers take the k in a
//       permuted order (lane t's words are k = 16 t + 4 j); the same order on
//       A and W leaves the dot product unchanged.
//   gemm_s8s8_tiled_kernel    M > 16: 128 x 128 block tiles (8 warps of 64 x 32),
//       or 64 x 64 / 32 x 32 (4 warps) when larger tiles would leave
//       multiprocessors idle; 64 k per stage, 4 shared-memory stages filled
//       by cp.async (3 tiles in flight while the tensor cores work on one);
//       fragments by ldmatrix. Rows are padded to 80 bytes so ldmatrix's 8
//       row addresses hit distinct banks.
//
// kVector: A and W rows are 16-byte aligned and K % 16 == 0, so every 16-byte
// piece is either wholly inside K or wholly past it. Otherwise (odd K, odd
// strides) the same kernels load byte by byte with bounds checks.
#pragma once

#include "cuda/epilogue_cuda.cuh"
#include "cuda/ptx_mma.cuh"

#include <cstdint>

namespace edgevla::cuda {

// 16 bytes of row[k0 .. k0 + 16), zero past K or for a missing row.
template <bool kVector>
__device__ __forceinline__ uint4 load_s8x16(const int8_t* row, int64_t k0, int64_t k, bool row_ok) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (!row_ok) return v;
    if (kVector) {
        if (k0 < k) v = __ldg(reinterpret_cast<const uint4*>(row + k0));
        return v;
    }
    uint32_t words[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        if (k0 + i < k) words[i / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(row[k0 + i])) << (8 * (i % 4));
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int j) {
    return j == 0 ? v.x : (j == 1 ? v.y : (j == 2 ? v.z : v.w));
}

// Stores one accumulator: int32 as is, or float through the W8A8 epilogue.
struct OutputS8 {
    float* c_f32;
    int32_t* c_s32;
    int64_t ldc;
    EpilogueS8 epilogue;

    __device__ __forceinline__ void store(int64_t row, int64_t col, int32_t acc) const {
        if (c_s32 != nullptr) {
            c_s32[row * ldc + col] = acc;
        } else {
            c_f32[row * ldc + col] = epilogue(row, col, acc);
        }
    }
};

constexpr int kSmallMWarps = 8;
constexpr int kSmallMStepK = 64;
constexpr int kSmallMBatch = 4;

template <int kTilesN, bool kVector>
__global__ void __launch_bounds__(kSmallMWarps * 32)
    gemm_s8s8_small_m_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ a, int64_t lda,
                             const int8_t* __restrict__ w, int64_t ldw, OutputS8 out) {
    __shared__ int32_t partial[kSmallMWarps][kTilesN][4][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * 8 * kTilesN;

    int32_t acc[kTilesN][4];
#pragma unroll
    for (int j = 0; j < kTilesN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;

    const bool row0_ok = g < m, row1_ok = g + 8 < m;
    const int8_t* a_row0 = a + (row0_ok ? g : 0) * lda;
    const int8_t* a_row1 = a + (row1_ok ? g + 8 : 0) * lda;
    // kSmallMBatch steps per warp in flight: every load of a batch is issued
    // before the first MMA, so a warp keeps 16 kSmallMBatch kTilesN bytes of W
    // per lane in the air (the kernel is bound by streaming W).
    const int64_t steps = (k + kSmallMStepK - 1) / kSmallMStepK;
    for (int64_t first = warp; first < steps; first += kSmallMWarps * kSmallMBatch) {
        uint4 x0[kSmallMBatch], x1[kSmallMBatch], wv[kSmallMBatch][kTilesN];
#pragma unroll
        for (int u = 0; u < kSmallMBatch; ++u) {
            const int64_t step = first + u * kSmallMWarps;
            const bool in_k = step < steps;
            const int64_t k0 = step * kSmallMStepK + 16 * t;
#pragma unroll
            for (int j = 0; j < kTilesN; ++j) {
                const int64_t col = n0 + 8 * j + g;
                const int8_t* w_row = w + (col < n ? col : 0) * ldw;
                wv[u][j] = kVector ? ptx::ldg_stream_v4(w_row + k0, col < n && in_k && k0 < k)
                                   : load_s8x16<false>(w_row, k0, k, col < n && in_k);
            }
            x0[u] = kVector ? ptx::ldg_v4(a_row0 + k0, row0_ok && in_k && k0 < k)
                            : load_s8x16<false>(a_row0, k0, k, row0_ok && in_k);
            x1[u] = kVector ? ptx::ldg_v4(a_row1 + k0, row1_ok && in_k && k0 < k)
                            : load_s8x16<false>(a_row1, k0, k, row1_ok && in_k);
        }
#pragma unroll
        for (int u = 0; u < kSmallMBatch; ++u) {
#pragma unroll
            for (int s = 0; s < 2; ++s) {
#pragma unroll
                for (int j = 0; j < kTilesN; ++j) {
                    ptx::mma_s8_m16n8k32(acc[j], word_of(x0[u], 2 * s), word_of(x1[u], 2 * s),
                                         word_of(x0[u], 2 * s + 1), word_of(x1[u], 2 * s + 1),
                                         word_of(wv[u][j], 2 * s), word_of(wv[u][j], 2 * s + 1));
                }
            }
        }
    }

#pragma unroll
    for (int j = 0; j < kTilesN; ++j) {
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[warp][j][r][lane] = acc[j][r];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kTilesN * 4 * 32; e += kSmallMWarps * 32) {
        const int j = e / 128, r = (e / 32) % 4, l = e % 32;
        int32_t sum = 0;
#pragma unroll
        for (int v = 0; v < kSmallMWarps; ++v) sum += partial[v][j][r][l];
        const int64_t row = l / 4 + 8 * (r / 2);
        const int64_t col = n0 + 8 * j + 2 * (l % 4) + (r % 2);
        if (row < m && col < n) out.store(row, col, sum);
    }
}

constexpr int kTileK = 64;
constexpr int kTileRowBytes = kTileK + 16;  // padded: conflict-free ldmatrix

// The block tile of the tiled kernel: kWarpsM x kWarpsN warps, each computing
// (16 kFragsM) x (8 kFragsN) outputs.
template <int kWarpsM_, int kWarpsN_, int kFragsM_, int kFragsN_>
struct TileConfig {
    static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_, kFragsM = kFragsM_, kFragsN = kFragsN_;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kTileM = kWarpsM * 16 * kFragsM, kTileN = kWarpsN * 8 * kFragsN;
    static_assert(kFragsN % 2 == 0, "B fragments are loaded two n8 tiles at a time");
};
using TileLarge = TileConfig<2, 4, 4, 4>;  // 128 x 128, 256 threads
using TileSmall = TileConfig<2, 2, 2, 4>;  // 64 x 64, 128 threads: more blocks for small grids
using TileTiny = TileConfig<2, 2, 1, 2>;   // 32 x 32, 128 threads: the policies' layers at M = 256

// Shared-memory stages of the tiled kernel: kTiledStages - 1 tiles are in
// flight (cp.async) while the tensor cores work on one.
constexpr int kTiledStages = 4;
template <typename Tile>
constexpr int tiled_smem_bytes() {
    return kTiledStages * (Tile::kTileM + Tile::kTileN) * kTileRowBytes;
}

// One stage's A (or W) tile: `rows` x 64 k from (row0, k0) into shared memory.
template <int kRows, int kThreads, bool kVector>
__device__ __forceinline__ void load_tile_s8(int8_t* tile, const int8_t* __restrict__ src, int64_t ld, int64_t rows,
                                             int64_t row0, int64_t k0, int64_t k) {
#pragma unroll
    for (int i = 0; i < kRows * 4 / kThreads; ++i) {
        const int piece = threadIdx.x + i * kThreads;  // 16-byte pieces, 4 per row
        const int r = piece / 4, c = (piece % 4) * 16;
        const int64_t row = row0 + r, kk = k0 + c;
        int8_t* dst = tile + r * kTileRowBytes + c;
        if (kVector) {
            const bool ok = row < rows && kk < k;
            ptx::cp_async_16(dst, ok ? src + row * ld + kk : src, ok ? 16 : 0);
        } else {
            const uint4 v = load_s8x16<false>(src + (row < rows ? row : 0) * ld, kk, k, row < rows);
            *reinterpret_cast<uint4*>(dst) = v;
        }
    }
}

template <typename Tile, bool kVector>
__global__ void __launch_bounds__(Tile::kThreads)
    gemm_s8s8_tiled_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ a, int64_t lda,
                           const int8_t* __restrict__ w, int64_t ldw, OutputS8 out) {
    constexpr int kFM = Tile::kFragsM, kFN = Tile::kFragsN, kTM = Tile::kTileM, kTN = Tile::kTileN;
    constexpr int kThreads = Tile::kThreads;
    constexpr int kStageBytes = (kTM + kTN) * kTileRowBytes;
    extern __shared__ __align__(16) int8_t smem[];  // kTiledStages x {A tile, W tile}
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Tile::kWarpsN, warp_n = warp % Tile::kWarpsN;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTN;

    int32_t acc[kFM][kFN][4];
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
        for (int j = 0; j < kFN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0;

    const int64_t k_tiles = (k + kTileK - 1) / kTileK;
    auto load_stage = [&](int64_t kt) {
        int8_t* stage = smem + (kt % kTiledStages) * kStageBytes;
        load_tile_s8<kTM, kThreads, kVector>(stage, a, lda, m, m0, kt * kTileK, k);
        load_tile_s8<kTN, kThreads, kVector>(stage + kTM * kTileRowBytes, w, ldw, n, n0, kt * kTileK, k);
    };
    // Prologue: the first kTiledStages - 1 tiles. One commit group per tile,
    // empty past the last, so wait_group counts stay uniform.
#pragma unroll
    for (int s = 0; s < kTiledStages - 1; ++s) {
        if (s < k_tiles) load_stage(s);
        ptx::cp_async_commit();
    }

    for (int64_t kt = 0; kt < k_tiles; ++kt) {
        ptx::cp_async_wait<kTiledStages - 2>();  // tile kt has landed
        __syncthreads();                         // ... for every thread; stage (kt - 1) is free again
        if (kt + kTiledStages - 1 < k_tiles) load_stage(kt + kTiledStages - 1);
        ptx::cp_async_commit();

        const int8_t* stage = smem + (kt % kTiledStages) * kStageBytes;
        const int8_t* at = stage + (warp_m * 16 * kFM) * kTileRowBytes;
        const int8_t* wt = stage + kTM * kTileRowBytes + (warp_n * 8 * kFN) * kTileRowBytes;
#pragma unroll
        for (int ks = 0; ks < kTileK / 32; ++ks) {
            uint32_t af[kFM][4], bf[kFN / 2][4];
            // A: matrices (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31).
#pragma unroll
            for (int i = 0; i < kFM; ++i) {
                ptx::ldmatrix_x4(af[i], at + (i * 16 + lane % 16) * kTileRowBytes + ks * 32 + (lane / 16) * 16);
            }
            // W: (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31): b0, b1 of two n8 tiles.
#pragma unroll
            for (int jp = 0; jp < kFN / 2; ++jp) {
                ptx::ldmatrix_x4(bf[jp], wt + (jp * 16 + lane % 8 + (lane / 16) * 8) * kTileRowBytes + ks * 32 +
                                             ((lane / 8) % 2) * 16);
            }
#pragma unroll
            for (int i = 0; i < kFM; ++i) {
#pragma unroll
                for (int j = 0; j < kFN; ++j) {
                    const uint32_t* b = bf[j / 2] + 2 * (j % 2);
                    ptx::mma_s8_m16n8k32(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3], b[0], b[1]);
                }
            }
        }
    }
    ptx::cp_async_wait<0>();  // the trailing (empty) groups

    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < kFM; ++i) {
#pragma unroll
        for (int j = 0; j < kFN; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int64_t row = m0 + warp_m * 16 * kFM + i * 16 + g + 8 * (r / 2);
                const int64_t col = n0 + warp_n * 8 * kFN + j * 8 + 2 * t + (r % 2);
                if (row < m && col < n) out.store(row, col, acc[i][j][r]);
            }
        }
    }
}

}  // namespace edgevla::cuda
