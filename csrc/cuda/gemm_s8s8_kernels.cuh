// W8A8 GEMM kernels on the int8 tensor cores (mma.sync m16n8k32, int32
// accumulators), C = epilogue(A . W^T) with the contract of gemm_s8s8.h.
//
//   gemm_s8s8_small_m_kernel  M <= 16: one 16-row MMA tile; a block of 8 warps
//       owns 8 * kTilesN output columns and splits K among its warps (64 k per
//       step, interleaved), then adds the warps' int32 partial sums in shared
//       memory (exact, deterministic) and applies the epilogue. The
//       small_m_wave variant runs the same kernel with 4, 8 or 16 warps a
//       block, the most that keep the whole grid resident at once
//       (cuda/one_wave.cuh). Operands come
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
//       row addresses hit distinct banks. Two more shapes of the same kernel
//       are variants to time (TileWide, in-block split-K): see TileConfig.
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

// kWarps warps a block. (No minimum of blocks an SM in __launch_bounds__: even
// a minimum of 1 made ptxas spend 80-110 registers where it takes 46-58.)
template <int kTilesN, bool kVector, int kWarps = kSmallMWarps>
__global__ void __launch_bounds__(kWarps * 32)
    gemm_s8s8_small_m_kernel(int64_t m, int64_t n, int64_t k, const int8_t* __restrict__ a, int64_t lda,
                             const int8_t* __restrict__ w, int64_t ldw, OutputS8 out) {
    __shared__ int32_t partial[kWarps][kTilesN][4][32];
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
    for (int64_t first = warp; first < steps; first += kWarps * kSmallMBatch) {
        uint4 x0[kSmallMBatch], x1[kSmallMBatch], wv[kSmallMBatch][kTilesN];
#pragma unroll
        for (int u = 0; u < kSmallMBatch; ++u) {
            const int64_t step = first + u * kWarps;
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
    for (int e = threadIdx.x; e < kTilesN * 4 * 32; e += kWarps * 32) {
        const int j = e / 128, r = (e / 32) % 4, l = e % 32;
        int32_t sum = 0;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) sum += partial[v][j][r][l];
        const int64_t row = l / 4 + 8 * (r / 2);
        const int64_t col = n0 + 8 * j + 2 * (l % 4) + (r % 2);
        if (row < m && col < n) out.store(row, col, sum);
    }
}

constexpr int kTileK = 64;
constexpr int kTileRowBytes = kTileK + 16;  // padded: conflict-free ldmatrix

// The block tile of the tiled kernel: kWarpsM x kWarpsN warps, each computing
// (16 kFragsM) x (8 kFragsN) outputs, through kStages shared-memory stages
// (kStages - 1 tiles in flight by cp.async while the tensor cores work on
// one). With kSplitK > 1 the block holds kSplitK such warp groups, each with
// its own stages, splitting the K tiles among them (in-block split-K): a
// small grid keeps kSplitK times as many loads and MMAs in flight per
// multiprocessor, with no workspace and no second launch; the groups' int32
// sums are added in shared memory (exact, deterministic) before the epilogue.
template <int kWarpsM_, int kWarpsN_, int kFragsM_, int kFragsN_, int kStages_ = 4, int kSplitK_ = 1>
struct TileConfig {
    static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_, kFragsM = kFragsM_, kFragsN = kFragsN_;
    static constexpr int kStages = kStages_, kSplitK = kSplitK_;
    static constexpr int kGroupThreads = 32 * kWarpsM * kWarpsN;  // one warp group: one K share
    static constexpr int kThreads = kGroupThreads * kSplitK;
    static constexpr int kTileM = kWarpsM * 16 * kFragsM, kTileN = kWarpsN * 8 * kFragsN;
    static constexpr int kStageBytes = (kTileM + kTileN) * kTileRowBytes;
    static constexpr int kSumBytes = (kSplitK - 1) * kTileM * kTileN * 4;  // the other groups' int32 sums
    static constexpr int kSmemBytes =
        kSplitK * kStages * kStageBytes > kSumBytes ? kSplitK * kStages * kStageBytes : kSumBytes;
    static_assert(kFragsN % 2 == 0, "B fragments are loaded two n8 tiles at a time");
    static_assert(kStages >= 2 && kSplitK >= 1 && kSplitK <= 8, "stages and K groups");
};
using TileLarge = TileConfig<2, 4, 4, 4>;  // 128 x 128, 256 threads
using TileSmall = TileConfig<2, 2, 2, 4>;  // 64 x 64, 128 threads: more blocks for small grids
using TileTiny = TileConfig<2, 2, 1, 2>;   // 32 x 32, 128 threads: the policies' layers at M = 256
// Variants timed beside the automatic choice (edgevla bench kernels --device cuda):
// 128 x 256 with warps of 64 x 64 (twice the MMAs per ldmatrix of TileLarge;
// 3 stages, 92 KiB, within sm_89's 99 KiB), and TileSmall / TileTiny with the
// K tiles split among 2 / 4 warp groups (80 KiB each).
using TileWide = TileConfig<2, 4, 4, 8, 3>;
using TileSmallSplitK = TileConfig<2, 2, 2, 4, 4, 2>;
using TileTinySplitK = TileConfig<2, 2, 1, 2, 4, 4>;

// Waits at the barrier of warp group `group` (kThreads threads): the whole
// block when there is one group, otherwise named barrier 1 + group.
template <int kGroups, int kThreads>
__device__ __forceinline__ void group_barrier(int group) {
    if (kGroups == 1) {
        __syncthreads();
    } else {
        ptx::bar_sync<kThreads>(1 + group);
    }
}

// One stage's A (or W) tile: `rows` x 64 k from (row0, k0) into shared
// memory, by the kThreads threads of one warp group (tid = index in the group).
template <int kRows, int kThreads, bool kVector>
__device__ __forceinline__ void load_tile_s8(int8_t* tile, const int8_t* __restrict__ src, int64_t ld, int64_t rows,
                                             int64_t row0, int64_t k0, int64_t k, int tid) {
    static_assert(kRows * 4 % kThreads == 0, "whole 16-byte pieces per thread");
#pragma unroll
    for (int i = 0; i < kRows * 4 / kThreads; ++i) {
        const int piece = tid + i * kThreads;  // 16-byte pieces, 4 per row
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
    constexpr int kThreads = Tile::kGroupThreads, kStages = Tile::kStages, kSplit = Tile::kSplitK;
    constexpr int kStageBytes = Tile::kStageBytes;
    extern __shared__ __align__(16) int8_t smem[];  // kSplit groups x kStages x {A tile, W tile}
    const int group = threadIdx.x / kThreads, tid = threadIdx.x % kThreads;
    const int lane = tid % 32, warp = tid / 32;
    const int warp_m = warp / Tile::kWarpsN, warp_n = warp % Tile::kWarpsN;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTN;
    int8_t* stages = smem + group * kStages * kStageBytes;

    int32_t acc[kFM][kFN][4];
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
        for (int j = 0; j < kFN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0;

    // This group's K tiles: group, group + kSplit, ... (local index lt).
    const int64_t k_tiles_all = (k + kTileK - 1) / kTileK;
    const int64_t k_tiles = k_tiles_all > group ? (k_tiles_all - group + kSplit - 1) / kSplit : 0;
    auto load_stage = [&](int64_t lt) {
        int8_t* stage = stages + (lt % kStages) * kStageBytes;
        const int64_t k0 = (group + lt * kSplit) * kTileK;
        load_tile_s8<kTM, kThreads, kVector>(stage, a, lda, m, m0, k0, k, tid);
        load_tile_s8<kTN, kThreads, kVector>(stage + kTM * kTileRowBytes, w, ldw, n, n0, k0, k, tid);
    };
    // Prologue: the first kStages - 1 tiles. One commit group per tile,
    // empty past the last, so wait_group counts stay uniform.
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_tiles) load_stage(s);
        ptx::cp_async_commit();
    }

    for (int64_t lt = 0; lt < k_tiles; ++lt) {
        ptx::cp_async_wait<kStages - 2>();       // tile lt has landed
        group_barrier<kSplit, kThreads>(group);  // ... for every thread; stage (lt - 1) is free again
        if (lt + kStages - 1 < k_tiles) load_stage(lt + kStages - 1);
        ptx::cp_async_commit();

        const int8_t* stage = stages + (lt % kStages) * kStageBytes;
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

    if constexpr (kSplit > 1) {
        // Groups 1.. leave their sums in shared memory (over the stages, now
        // idle), fragment by fragment with the thread index fastest; group 0
        // adds them to its own.
        int32_t* sums = reinterpret_cast<int32_t*>(smem);
        constexpr int kPerGroup = kFM * kFN * 4 * kThreads;
        __syncthreads();  // every group is done reading its stages
        if (group > 0) {
#pragma unroll
            for (int i = 0; i < kFM; ++i)
#pragma unroll
                for (int j = 0; j < kFN; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        sums[(group - 1) * kPerGroup + ((i * kFN + j) * 4 + r) * kThreads + tid] = acc[i][j][r];
        }
        __syncthreads();
        if (group > 0) return;
#pragma unroll
        for (int v = 0; v < kSplit - 1; ++v)
#pragma unroll
            for (int i = 0; i < kFM; ++i)
#pragma unroll
                for (int j = 0; j < kFN; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r) acc[i][j][r] += sums[v * kPerGroup + ((i * kFN + j) * 4 + r) * kThreads + tid];
    }

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
