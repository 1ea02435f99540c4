// gemm_s8s8_sm90.h on CUTLASS 3's Hopper collectives (compiled for sm_90a).
#include "cuda/gemm_s8s8_sm90.h"

#include "cuda/cutlass_sm90_run.cuh"
#include "epilogue_math.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include <stdexcept>
#include <string>

namespace edgevla::cuda {
namespace {

using namespace cute;

using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _2, _1>;
constexpr int kAlignmentS8 = 16;   // elements: TMA moves 16-byte pieces
constexpr int kAlignmentS32 = 4;

// A (M, K) row-major; W (N, K) row-major is B column-major (the "TN" int8
// layout). Stream-K (CUTLASS's heuristic decomposition): the policies' layers
// at M = 256 make 12-48 output tiles for 132 SMs, so K is split among CTAs
// there; large problems stay data-parallel. int32 partial sums add exactly.
template <typename Epilogue, typename KernelSchedule>
struct DenseGemm {
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, kAlignmentS8, int8_t,
        cutlass::layout::ColumnMajor, kAlignmentS8, int32_t, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        KernelSchedule>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                        cutlass::gemm::StreamKScheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// int32 out: D = A . B^T, no source C (void), alpha 1.
using EpilogueS32 = cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, int32_t, void, cutlass::layout::RowMajor,
    kAlignmentS32, int32_t, cutlass::layout::RowMajor, kAlignmentS32,
    cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;
using GemmS32 = DenseGemm<EpilogueS32, cutlass::gemm::collective::KernelScheduleAuto>;

// float32 out: the W8A8 epilogue of gemm_s8s8.h as one epilogue-visitor node
// over the accumulators and three broadcasts (a_scale per row, or one value
// for all rows; w_scale and bias per column). CUTLASS converts its inputs to
// float with round-to-nearest, as the C cast of edgevla_dequant_s8_f32 does,
// and the node applies csrc/epilogue_math.h in EpilogueS8's order (this file
// is built with --fmad=false too), so the result is the CPU reference's bits.
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

namespace fusion = cutlass::epilogue::fusion;
using AScale = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<bool, _0, int64_t>, 1>;
using WScale = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>, 1>;
using W8A8Visitor = fusion::Sm90EVT<fusion::Sm90Compute<W8A8Node, float, float, cutlass::FloatRoundStyle::round_to_nearest>,
                                    fusion::Sm90AccFetch, AScale, WScale, WScale>;

using EpilogueF32 = cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, cutlass::layout::RowMajor, 4, float,
    cutlass::layout::RowMajor, 4, cutlass::epilogue::TmaWarpSpecializedCooperative, W8A8Visitor>::CollectiveOp;
using GemmF32 = DenseGemm<EpilogueF32, cutlass::gemm::KernelTmaWarpSpecializedCooperative>;

}  // namespace

bool gemm_s8s8_sm90_compiled() { return true; }

void gemm_s8s8_sm90(const GemmS8S8Args& g, cudaStream_t stream) {
    if ((g.c_s32 == nullptr) == (g.c_f32 == nullptr)) {
        throw std::invalid_argument("gemm_s8s8: exactly one of the int32 and the float32 outputs");
    }
    check_device_is_sm90("gemm_s8s8");
    const void* c = g.c_s32 != nullptr ? static_cast<const void*>(g.c_s32) : static_cast<const void*>(g.c_f32);
    if (g.k % kAlignmentS8 != 0 || g.lda % 16 != 0 || g.ldw % 16 != 0 || !aligned16(g.a) || !aligned16(g.w) ||
        g.n % kAlignmentS32 != 0 || g.ldc % kAlignmentS32 != 0 || !aligned16(c)) {
        throw std::invalid_argument(
            "gemm_s8s8: the wgmma variant needs 16-byte aligned A, W and C, K and the row strides of A and W "
            "multiples of 16, N and C's row stride multiples of 4");
    }
    if (g.m > INT32_MAX || g.n > INT32_MAX || g.k > INT32_MAX) {
        throw std::invalid_argument("gemm_s8s8: the wgmma variant takes M, N, K below 2^31");
    }
    const Shape<int, int, int, int> problem{static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), 1};
    const auto stride_a = make_stride(static_cast<int64_t>(g.lda), Int<1>{}, int64_t{0});
    const auto stride_w = make_stride(static_cast<int64_t>(g.ldw), Int<1>{}, int64_t{0});
    const auto stride_c = make_stride(static_cast<int64_t>(g.ldc), Int<1>{}, int64_t{0});
    if (g.c_s32 != nullptr) {
        using Kernel = GemmS32::Kernel;
        const typename GemmS32::Gemm::Arguments args{
            cutlass::gemm::GemmUniversalMode::kGemm,
            problem,
            {g.a, typename Kernel::StrideA(stride_a), g.w, typename Kernel::StrideB(stride_w)},
            {{1, 0}, nullptr, {}, g.c_s32, typename Kernel::StrideD(stride_c)},
            hardware_info()};
        run_cutlass<GemmS32::Gemm>(args, "gemm_s8s8 wgmma (CUTLASS sm90)", stream);
        return;
    }
    using Kernel = GemmF32::Kernel;
    typename GemmF32::Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        problem,
        {g.a, typename Kernel::StrideA(stride_a), g.w, typename Kernel::StrideB(stride_w)},
        {{}, nullptr, {}, g.c_f32, typename Kernel::StrideD(stride_c)},
        hardware_info()};
    // The visitor tree's arguments: children first (accumulators, a_scale, w_scale, bias), then the node's.
    auto& visitor = args.epilogue.thread;
    visitor = {{},
               {g.a_scale, 0.0f, {g.a_scale_per_token, _0{}, int64_t{0}}},
               {g.w_scale, 0.0f, {}},
               {g.bias, 0.0f, {}},
               W8A8Options{g.activation, g.bias != nullptr ? 1 : 0}};
    run_cutlass<GemmF32::Gemm>(args, "gemm_s8s8 wgmma + W8A8 epilogue (CUTLASS sm90)", stream);
}

}  // namespace edgevla::cuda
