// Launchers of the W8A8 GEMM kernels: variant choice, grid, launch check.
#include "cuda/cuda_kernels.h"
#include "cuda/gemm_s8s8_kernels.cuh"
#include "cuda/launch_check.cuh"
#include "cuda/one_wave.cuh"

#ifdef EDGEVLA_CUTLASS_SM90
#include "cuda/gemm_s8s8_sm100.h"
#include "cuda/gemm_s8s8_sm90.h"
#endif

namespace edgevla::cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether every 16-byte piece the kernels load is aligned and wholly inside or
// wholly outside K.
bool vector_loads_ok(const GemmS8S8Args& g) {
    return g.k % 16 == 0 && g.lda % 16 == 0 && g.ldw % 16 == 0 && aligned16(g.a) && aligned16(g.w);
}

OutputS8 output_of(const GemmS8S8Args& g) {
    OutputS8 out{};
    out.c_f32 = g.c_f32;
    out.c_s32 = g.c_s32;
    out.ldc = g.ldc;
    out.epilogue = EpilogueS8{g.w_scale, g.a_scale, g.a_scale_per_token ? 1 : 0, g.bias, g.activation};
    return out;
}

template <int kTilesN>
void launch_small_m(const GemmS8S8Args& g, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((g.n + 8 * kTilesN - 1) / (8 * kTilesN)));
    const OutputS8 out = output_of(g);
    const auto kernel =
        vector_loads_ok(g) ? gemm_s8s8_small_m_kernel<kTilesN, true> : gemm_s8s8_small_m_kernel<kTilesN, false>;
    kernel<<<grid, kSmallMWarps * 32, 0, stream>>>(g.m, g.n, g.k, g.a, g.lda, g.w, g.ldw, out);
    check_launch("gemm_s8s8_small_m_kernel", stream);
}

// small_m_wave: the same kernel, 4, 8 or 16 warps a block by one_wave_warps.
template <int kTilesN, bool kVector>
void launch_small_m_wave_with(const GemmS8S8Args& g, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((g.n + 8 * kTilesN - 1) / (8 * kTilesN)));
    const OutputS8 out = output_of(g);
    const int64_t steps = (g.k + kSmallMStepK - 1) / kSmallMStepK;
    by_warps<true>(
        [](auto warps) { return gemm_s8s8_small_m_kernel<kTilesN, kVector, warps()>; },
        grid.x, steps, kSmallMBatch, [&](auto kernel, int warps) {
            kernel<<<grid, warps * 32, 0, stream>>>(g.m, g.n, g.k, g.a, g.lda, g.w, g.ldw, out);
            check_launch("gemm_s8s8_small_m_kernel", stream);
        });
}

template <int kTilesN>
void launch_small_m_wave(const GemmS8S8Args& g, cudaStream_t stream) {
    vector_loads_ok(g) ? launch_small_m_wave_with<kTilesN, true>(g, stream)
                       : launch_small_m_wave_with<kTilesN, false>(g, stream);
}

template <typename Tile, bool kVector>
void launch_tiled_kernel(const GemmS8S8Args& g, const OutputS8& out, cudaStream_t stream) {
    constexpr int kSmem = Tile::kSmemBytes;
    static const cudaError_t raised = cudaFuncSetAttribute(gemm_s8s8_tiled_kernel<Tile, kVector>,
                                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    check_cuda(raised, "cudaFuncSetAttribute(gemm_s8s8_tiled_kernel)");
    const dim3 grid(static_cast<unsigned>((g.n + Tile::kTileN - 1) / Tile::kTileN),
                    static_cast<unsigned>((g.m + Tile::kTileM - 1) / Tile::kTileM));
    gemm_s8s8_tiled_kernel<Tile, kVector>
        <<<grid, Tile::kThreads, kSmem, stream>>>(g.m, g.n, g.k, g.a, g.lda, g.w, g.ldw, out);
    check_launch("gemm_s8s8_tiled_kernel", stream);
}

template <typename Tile>
void launch_tiled(const GemmS8S8Args& g, cudaStream_t stream) {
    const OutputS8 out = output_of(g);
    if (vector_loads_ok(g)) {
        launch_tiled_kernel<Tile, true>(g, out, stream);
    } else {
        launch_tiled_kernel<Tile, false>(g, out, stream);
    }
}

template <typename Tile>
int64_t blocks_of(const GemmS8S8Args& g) {
    return ((g.n + Tile::kTileN - 1) / Tile::kTileN) * ((g.m + Tile::kTileM - 1) / Tile::kTileM);
}

}  // namespace

bool gemm_s8s8_wgmma_compiled() {
#ifdef EDGEVLA_CUTLASS_SM90
    return gemm_s8s8_sm90_compiled();
#else
    return false;
#endif
}

std::vector<int> gemm_s8s8_tcgen05_ccs() {
#ifdef EDGEVLA_CUTLASS_SM100
    return {EDGEVLA_SM100_CCS};
#else
    return {};
#endif
}

GemmVariant gemm_s8s8_pick(int64_t m) { return m <= 16 ? GemmVariant::small_m : GemmVariant::tiled; }

void gemm_s8s8(const GemmS8S8Args& g, GemmVariant variant, uintptr_t stream_handle) {
    if (g.m == 0 || g.n == 0) return;
    if (variant == GemmVariant::automatic) variant = gemm_s8s8_pick(g.m);
    if ((variant == GemmVariant::small_m || variant == GemmVariant::small_m_wave) && g.m > 16) {
        throw std::invalid_argument(std::string("gemm_s8s8: the ") +
                                    (variant == GemmVariant::small_m ? "small_m" : "small_m_wave") +
                                    " variant takes M <= 16, got M = " + std::to_string(g.m));
    }
    const cudaStream_t stream = as_stream(stream_handle);
    if (variant == GemmVariant::wgmma) {
#ifdef EDGEVLA_CUTLASS_SM90
        gemm_s8s8_sm90(g, stream);
        return;
#else
        throw_variant_not_built("gemm_s8s8", "wgmma", "sm_90");
#endif
    }
    if (variant == GemmVariant::tcgen05) {
#ifdef EDGEVLA_CUTLASS_SM100
        gemm_s8s8_sm100(g, stream);
        return;
#else
        throw_variant_not_built("gemm_s8s8", "tcgen05", "110 or 100");
#endif
    }
    if (variant == GemmVariant::small_m || variant == GemmVariant::small_m_wave) {
        // Blocks of 8 columns when the N / 16 blocks would not fill the GPU twice over.
        const bool narrow = (g.n + 15) / 16 < 2 * multiprocessor_count();
        if (variant == GemmVariant::small_m_wave) {
            narrow ? launch_small_m_wave<1>(g, stream) : launch_small_m_wave<2>(g, stream);
        } else {
            narrow ? launch_small_m<1>(g, stream) : launch_small_m<2>(g, stream);
        }
    } else if (variant == GemmVariant::tiled_wide) {
        launch_tiled<TileWide>(g, stream);
    } else {
        // The largest tile that still gives every multiprocessor a block;
        // tiled_split_k splits the smaller tiles' K among warp groups.
        const int sms = multiprocessor_count();
        const bool split = variant == GemmVariant::tiled_split_k;
        if (blocks_of<TileLarge>(g) >= sms) {
            launch_tiled<TileLarge>(g, stream);
        } else if (blocks_of<TileSmall>(g) >= sms) {
            split ? launch_tiled<TileSmallSplitK>(g, stream) : launch_tiled<TileSmall>(g, stream);
        } else {
            split ? launch_tiled<TileTinySplitK>(g, stream) : launch_tiled<TileTiny>(g, stream);
        }
    }
}

}  // namespace edgevla::cuda
