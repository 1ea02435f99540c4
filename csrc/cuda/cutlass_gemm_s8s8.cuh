// The W8A8 GEMM on CUTLASS 3 collectives, whatever the architecture's
// mainloop (Hopper's wgmma in gemm_s8s8_sm90.cu, Blackwell's tcgen05 in
// gemm_s8s8_sm100.cu): the epilogue visitor that is gemm_s8s8.h's float32
// epilogue, the TMA operand rules, and one launcher for both outputs.
#pragma once

#include "cuda/cuda_kernels.h"
#include "cuda/cutlass_run.cuh"
#include "epilogue_math.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"

#include <climits>
#include <stdexcept>
#include <string>

namespace edgevla::cuda::cutlass_s8s8 {

using namespace cute;

constexpr int kAlignmentS8 = 16;  // elements: TMA moves 16-byte pieces
constexpr int kAlignmentOut = 4;  // int32 / float32 elements

// The float32 out: the W8A8 epilogue of gemm_s8s8.h as one epilogue-visitor
// node over the accumulators and three broadcasts (a_scale per row, or one
// value for all rows; w_scale and bias per column). CUTLASS converts its
// inputs to float with round-to-nearest, as the C cast of
// edgevla_dequant_s8_f32 does, and the node applies csrc/epilogue_math.h in
// EpilogueS8's order (the CUTLASS sources are built with --fmad=false too),
// so the result is the CPU reference's bits.
struct W8A8Options {
    int activation = 0;  // edgevla_activation
    int has_bias = 0;
};

template <typename T>
struct W8A8Node {  // the scalar form only names the options (CUTLASS reads ComputeFn<float>::Arguments)
    using Arguments = W8A8Options;
};

template <int N>
struct W8A8Node<cutlass::Array<float, N>> {
    using Arguments = W8A8Options;
    using Fragment = cutlass::Array<float, N>;

    CUTLASS_DEVICE Fragment operator()(const Fragment& acc, const Fragment& a_scale, const Fragment& w_scale,
                                       const Fragment& bias, const Arguments& options) const {
        Fragment out;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < N; ++i) {
            float v = edgevla_dequant_converted_f32(acc[i], a_scale[i], w_scale[i]);
            if (options.has_bias) v = v + bias[i];
            out[i] = edgevla_activate_f32(static_cast<edgevla_activation>(options.activation), v);
        }
        return out;
    }
};

// The visitor tree: the node over the accumulators, a_scale, w_scale and bias.
template <typename AScale, typename ChannelVector>
using W8A8Tree = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<W8A8Node, float, float, cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90AccFetch, AScale, ChannelVector, ChannelVector>;

// C = A . W^T: rows are tokens (a_scale per row, or one value: a dynamic
// column broadcast), columns channels (w_scale and bias: row broadcasts).
template <typename TileShape>
using W8A8Visitor = W8A8Tree<
    cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<bool, _0, int64_t>, 1>,
    cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>, 1>>;

// The transposed problem C^T = W . X^T of the 2:4 kernel (gemm_2to4_sm90.h):
// CUTLASS's rows are channels there and its columns tokens, so the
// broadcasts swap.
template <typename TileShape>
using W8A8VisitorTransposed = W8A8Tree<
    cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, bool, int64_t>, 1>,
    cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>, 1>>;

// The visitor tree's arguments: children first (accumulators, a_scale with
// its stride, w_scale, bias), then the node's options.
template <typename TreeArguments, typename AScaleStride>
void set_visitor_arguments(TreeArguments& tree, const W8A8OutputArgs& g, AScaleStride a_scale_stride) {
    tree = {{},
            {g.a_scale, 0.0f, a_scale_stride},
            {g.w_scale, 0.0f, {}},
            {g.bias, 0.0f, {}},
            W8A8Options{g.activation, g.bias != nullptr ? 1 : 0}};
}

// The one output pointer of g (int32 or float32); throws unless exactly one is set.
inline const void* single_output(const W8A8OutputArgs& g, const char* kernel) {
    if ((g.c_s32 == nullptr) == (g.c_f32 == nullptr)) {
        throw std::invalid_argument(std::string(kernel) + ": exactly one of the int32 and the float32 outputs");
    }
    return g.c_s32 != nullptr ? static_cast<const void*>(g.c_s32) : static_cast<const void*>(g.c_f32);
}

// TMA's rules for A (M, K), W (N, K) and C (M, N), checked before any launch.
inline void check_operands(const GemmS8S8Args& g, const std::string& variant) {
    const void* c = single_output(g, "gemm_s8s8");
    // K = 0 would pass the alignment rule, but TMA takes no empty dimension and the mainloop, with no k tile,
    // would leave the accumulators unwritten.
    if (g.k <= 0) throw std::invalid_argument("gemm_s8s8: the " + variant + " variant takes K > 0");
    if (g.k % kAlignmentS8 != 0 || g.lda % 16 != 0 || g.ldw % 16 != 0 || !aligned16(g.a) || !aligned16(g.w) ||
        g.n % kAlignmentOut != 0 || g.ldc % kAlignmentOut != 0 || !aligned16(c)) {
        throw std::invalid_argument("gemm_s8s8: the " + variant +
                                    " variant needs 16-byte aligned A, W and C, K and the row strides of A and W "
                                    "multiples of 16, N and C's row stride multiples of 4");
    }
    if (g.m > INT32_MAX || g.n > INT32_MAX || g.k > INT32_MAX) {
        throw std::invalid_argument("gemm_s8s8: the " + variant + " variant takes M, N, K below 2^31");
    }
}

// Runs GemmS32 (int32 out) or GemmF32 (float32 out through W8A8Visitor),
// both GemmUniversalAdapters over a (M, N, K, L) problem, A row-major and W
// as B column-major.
template <typename GemmS32, typename GemmF32>
void run(const GemmS8S8Args& g, const std::string& kernel, cudaStream_t stream) {
    const Shape<int, int, int, int> problem{static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), 1};
    const auto stride_a = make_stride(static_cast<int64_t>(g.lda), Int<1>{}, int64_t{0});
    const auto stride_w = make_stride(static_cast<int64_t>(g.ldw), Int<1>{}, int64_t{0});
    const auto stride_c = make_stride(static_cast<int64_t>(g.ldc), Int<1>{}, int64_t{0});
    if (g.c_s32 != nullptr) {
        using Kernel = typename GemmS32::GemmKernel;
        const typename GemmS32::Arguments args{
            cutlass::gemm::GemmUniversalMode::kGemm,
            problem,
            {g.a, typename Kernel::StrideA(stride_a), g.w, typename Kernel::StrideB(stride_w)},
            {{1, 0}, nullptr, {}, g.c_s32, typename Kernel::StrideD(stride_c)},
            hardware_info()};
        run_cutlass<GemmS32>(args, kernel, stream);
        return;
    }
    using Kernel = typename GemmF32::GemmKernel;
    typename GemmF32::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        problem,
        {g.a, typename Kernel::StrideA(stride_a), g.w, typename Kernel::StrideB(stride_w)},
        {{}, nullptr, {}, g.c_f32, typename Kernel::StrideD(stride_c)},
        hardware_info()};
    set_visitor_arguments(args.epilogue.thread, g, make_stride(g.a_scale_per_token, _0{}, int64_t{0}));
    run_cutlass<GemmF32>(args, kernel + " + W8A8 epilogue", stream);
}

}  // namespace edgevla::cuda::cutlass_s8s8
