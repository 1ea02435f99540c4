// Launchers of the int4 GEMV: the CUDA-core kernel (rows per block by M,
// float32 or float16 X), its streaming layout (rows by M, warps per block by
// the grid) and the tensor-core kernel (float16 or float32 X, column tiles
// by M, channel tiles and warps per block by the grid).
#include "cuda/cuda_kernels.h"
#include "cuda/gemm_w4_kernels.cuh"
#include "cuda/gemm_w4_mma_kernels.cuh"
#include "cuda/gemm_w4_stream_kernels.cuh"
#include "cuda/launch_check.cuh"
#include "cuda/one_wave.cuh"

#include "packed_formats.h"

#include <type_traits>

namespace edgevla::cuda {
namespace {

// log2 of the group size (32, 64 or 128): a shift instead of a 64-bit division per cell.
int group_shift(int64_t group) {
    int shift = 0;
    while ((int64_t{1} << shift) < group) ++shift;
    return shift;
}

// The operands as the kernels take them.
struct W4Operands {
    const uint32_t* codes;
    const float* scales;
    int group_shift;
    bool x_vector;  // x and its row stride allow 16-byte loads
    EpilogueF32 epilogue;
};

template <typename T>
W4Operands operands(const GemmW4Args& g) {
    return {reinterpret_cast<const uint32_t*>(g.packed + sizeof(edgevla_packed_header)),
            reinterpret_cast<const float*>(g.packed + g.scales_offset), group_shift(g.group),
            reinterpret_cast<uintptr_t>(g.x) % 16 == 0 && (g.ldx * sizeof(T)) % 16 == 0,
            EpilogueF32{g.bias, g.activation}};
}

// Rows per block by M: 1, 2 or 4. At most 4: 8 rows took 169 registers a
// thread in gemm_w4_kernel, and the lost occupancy cost more than re-reading
// W (from L2) once per 4 rows.
template <typename Launch>
void by_rows(int64_t m, Launch launch) {
    if (m == 1) {
        launch(std::integral_constant<int, 1>{});
    } else if (m <= 2) {
        launch(std::integral_constant<int, 2>{});
    } else {
        launch(std::integral_constant<int, 4>{});
    }
}

dim3 row_grid(const GemmW4Args& g, int rows) {
    return dim3(static_cast<unsigned>((g.n + 15) / 16), static_cast<unsigned>((g.m + rows - 1) / rows));
}

int64_t w4_units(const GemmW4Args& g) { return ((g.k + 7) / 8 + 3) / 4; }  // units of 32 k

// gemm_w4_kernel: 8 warps a block, as measured on the H200.
template <typename T>
void launch_cuda_cores(const GemmW4Args& g, cudaStream_t stream) {
    by_rows(g.m, [&](auto rows) {
        const W4Operands o = operands<T>(g);
        gemm_w4_kernel<T, rows()><<<row_grid(g, rows()), kW4Warps * 32, 0, stream>>>(
            g.m, g.n, g.k, o.group_shift, static_cast<const T*>(g.x), g.ldx, o.x_vector, o.codes, o.scales,
            o.epilogue, g.y, g.ldy);
        check_launch("gemm_w4_kernel", stream);
    });
}

template <typename T>
void launch_streaming(const GemmW4Args& g, cudaStream_t stream) {
    by_rows(g.m, [&](auto rows) {
        const W4Operands o = operands<T>(g);
        const dim3 grid = row_grid(g, rows());
        by_warps<true>([](auto warps) { return gemm_w4_stream_kernel<T, decltype(rows)::value, warps()>; },
                       static_cast<int64_t>(grid.x) * grid.y, w4_units(g), kW4StreamUnitsPerWarp,
                       [&](auto kernel, int warps) {
                           kernel<<<grid, warps * 32, 0, stream>>>(g.m, g.n, g.k, o.group_shift,
                                                                   static_cast<const T*>(g.x), g.ldx, o.x_vector,
                                                                   o.codes, o.scales, o.epilogue, g.y, g.ldy);
                           check_launch("gemm_w4_stream_kernel", stream);
                       });
    });
}

template <typename T, int kColTiles, int kChanTiles>
void launch_mma_with(const GemmW4Args& g, cudaStream_t stream) {
    const W4Operands o = operands<T>(g);
    const dim3 grid(static_cast<unsigned>(((g.n + 15) / 16 + kChanTiles - 1) / kChanTiles));
    // With 4 or 8 column tiles, 16 warps of partial sums would pass the 48 KB of static shared memory.
    by_warps<(kColTiles <= 2)>(
        [](auto warps) { return gemm_w4_mma_kernel<T, kColTiles, warps(), kChanTiles>; }, grid.x, w4_units(g),
        kW4MmaBatch / kChanTiles, [&](auto kernel, int warps) {
            kernel<<<grid, warps * 32, 0, stream>>>(g.m, g.n, g.k, o.group_shift, static_cast<const T*>(g.x), g.ldx,
                                                    o.x_vector, o.codes, o.scales, o.epilogue, g.y, g.ldy);
            check_launch("gemm_w4_mma_kernel", stream);
        });
}

// Column tiles of 8 rows by M (at most 8), and channel tiles of 16 a block:
// the most (4 or 2, with at most 4 tiles of either kind a warp) that still
// give every multiprocessor a block, so a unit's x is loaded and split once
// for up to 64 channels.
template <typename T, int kColTiles>
void launch_mma(const GemmW4Args& g, cudaStream_t stream) {
    const int64_t tiles = (g.n + 15) / 16, sms = multiprocessor_count();
    if constexpr (kColTiles == 1) {
        if (tiles / 4 >= sms) return launch_mma_with<T, kColTiles, 4>(g, stream);
    }
    if constexpr (kColTiles <= 2) {
        if (tiles / 2 >= sms) return launch_mma_with<T, kColTiles, 2>(g, stream);
    }
    launch_mma_with<T, kColTiles, 1>(g, stream);
}

template <typename T>
void launch_tensor_cores(const GemmW4Args& g, cudaStream_t stream) {
    static_assert(kGemmW4MaxM <= 64, "column tiles of 8 rows: at most 8");
    if (g.m <= 8) {
        launch_mma<T, 1>(g, stream);
    } else if (g.m <= 16) {
        launch_mma<T, 2>(g, stream);
    } else if (g.m <= 32) {
        launch_mma<T, 4>(g, stream);
    } else {
        launch_mma<T, 8>(g, stream);
    }
}

}  // namespace

void gemm_w4(const GemmW4Args& g, GemmW4Variant variant, uintptr_t stream_handle) {
    if (g.m == 0 || g.n == 0) return;
    if (g.m > kGemmW4MaxM) {
        throw std::invalid_argument("gemm_w4: M must be <= " + std::to_string(kGemmW4MaxM) + ", got " +
                                    std::to_string(g.m));
    }
    const cudaStream_t stream = as_stream(stream_handle);
    if (variant == GemmW4Variant::tensor_cores) {
        g.x_f16 ? launch_tensor_cores<__half>(g, stream) : launch_tensor_cores<float>(g, stream);
    } else if (variant == GemmW4Variant::streaming) {
        g.x_f16 ? launch_streaming<__half>(g, stream) : launch_streaming<float>(g, stream);
    } else {
        g.x_f16 ? launch_cuda_cores<__half>(g, stream) : launch_cuda_cores<float>(g, stream);
    }
}

}  // namespace edgevla::cuda
