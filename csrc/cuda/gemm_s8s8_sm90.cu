// gemm_s8s8_sm90.h on CUTLASS 3's Hopper collectives (compiled for sm_90a).
#include "cuda/gemm_s8s8_sm90.h"

#include "cuda/cutlass_gemm_s8s8.cuh"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace edgevla::cuda {
namespace {

using namespace cute;
using cutlass_s8s8::kAlignmentS8;
constexpr int kAlignmentS32 = cutlass_s8s8::kAlignmentOut;

using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _2, _1>;
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

// float32 out: the W8A8 epilogue (cutlass_gemm_s8s8.cuh) as an epilogue visitor.
using EpilogueF32 = cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, cutlass::layout::RowMajor, 4, float,
    cutlass::layout::RowMajor, 4, cutlass::epilogue::TmaWarpSpecializedCooperative,
    cutlass_s8s8::W8A8Visitor<TileShape>>::CollectiveOp;
using GemmF32 = DenseGemm<EpilogueF32, cutlass::gemm::KernelTmaWarpSpecializedCooperative>;

}  // namespace

bool gemm_s8s8_sm90_compiled() { return true; }

void gemm_s8s8_sm90(const GemmS8S8Args& g, cudaStream_t stream) {
    check_device_is_sm90("gemm_s8s8");
    cutlass_s8s8::check_operands(g, "wgmma");
    cutlass_s8s8::run<GemmS32::Gemm, GemmF32::Gemm>(g, "gemm_s8s8 wgmma (CUTLASS sm90)", stream);
}

}  // namespace edgevla::cuda
