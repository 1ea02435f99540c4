// Launchers of the int4 GEMV: the CUDA-core kernel (rows per block by M,
// float32 or float16 X) and the tensor-core kernel (float16 X, column tiles by M).
#include "cuda/cuda_kernels.h"
#include "cuda/gemm_w4_kernels.cuh"
#include "cuda/gemm_w4_mma_kernels.cuh"
#include "cuda/launch_check.cuh"

#include "packed_formats.h"

namespace edgevla::cuda {
namespace {

// log2 of the group size (32, 64 or 128): a shift instead of a 64-bit division per cell.
int group_shift(int64_t group) {
    int shift = 0;
    while ((int64_t{1} << shift) < group) ++shift;
    return shift;
}

template <typename T, int kRows>
void launch(const GemmW4Args& g, cudaStream_t stream) {
    const int64_t blocks = (g.n + 15) / 16;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>((g.m + kRows - 1) / kRows));
    const size_t element = sizeof(T);
    const bool vector = reinterpret_cast<uintptr_t>(g.x) % 16 == 0 && (g.ldx * element) % 16 == 0;
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(g.packed + sizeof(edgevla_packed_header));
    const float* scales = reinterpret_cast<const float*>(g.packed + g.scales_offset);
    gemm_w4_kernel<T, kRows><<<grid, kW4Warps * 32, 0, stream>>>(g.m, g.n, g.k, group_shift(g.group), static_cast<const T*>(g.x),
                                                                  g.ldx, vector, codes, scales,
                                                                  EpilogueF32{g.bias, g.activation}, g.y, g.ldy);
    check_launch("gemm_w4_kernel", stream);
}

template <typename T>
void launch_rows(const GemmW4Args& g, cudaStream_t stream) {
    if (g.m == 1) {
        launch<T, 1>(g, stream);
    } else if (g.m <= 2) {
        launch<T, 2>(g, stream);
    } else {
        // At most 4 rows per block: 8 rows took 169 registers a thread, and the
        // lost occupancy cost more than re-reading W (from L2) once per 4 rows.
        launch<T, 4>(g, stream);
    }
}

template <int kColTiles>
void launch_mma(const GemmW4Args& g, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((g.n + 15) / 16));
    const bool vector = reinterpret_cast<uintptr_t>(g.x) % 16 == 0 && (g.ldx * sizeof(__half)) % 16 == 0;
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(g.packed + sizeof(edgevla_packed_header));
    const float* scales = reinterpret_cast<const float*>(g.packed + g.scales_offset);
    gemm_w4_mma_kernel<kColTiles><<<grid, kW4MmaWarps * 32, 0, stream>>>(
        g.m, g.n, g.k, group_shift(g.group), static_cast<const __half*>(g.x), g.ldx, vector, codes, scales,
        EpilogueF32{g.bias, g.activation}, g.y, g.ldy);
    check_launch("gemm_w4_mma_kernel", stream);
}

void launch_tensor_cores(const GemmW4Args& g, cudaStream_t stream) {
    static_assert(kGemmW4MaxM <= 64, "column tiles of 8 rows: at most 8");
    if (g.m <= 8) {
        launch_mma<1>(g, stream);
    } else if (g.m <= 16) {
        launch_mma<2>(g, stream);
    } else if (g.m <= 32) {
        launch_mma<4>(g, stream);
    } else {
        launch_mma<8>(g, stream);
    }
}

}  // namespace

void gemm_w4(const GemmW4Args& g, GemmW4Variant variant, uintptr_t stream_handle) {
    if (g.m == 0 || g.n == 0) return;
    if (g.m > kGemmW4MaxM) {
        throw std::invalid_argument("gemm_w4: M must be <= " + std::to_string(kGemmW4MaxM) + ", got " +
                                    std::to_string(g.m));
    }
    if (variant == GemmW4Variant::tensor_cores && !g.x_f16) {
        throw std::invalid_argument("gemm_w4: the tensor_cores variant takes float16 x");
    }
    const cudaStream_t stream = as_stream(stream_handle);
    if (variant == GemmW4Variant::tensor_cores) {
        launch_tensor_cores(g, stream);
    } else if (g.x_f16) {
        launch_rows<__half>(g, stream);
    } else {
        launch_rows<float>(g, stream);
    }
}

}  // namespace edgevla::cuda
