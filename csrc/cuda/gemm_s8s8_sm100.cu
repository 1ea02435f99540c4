// gemm_s8s8_sm100.h on CUTLASS 3's Blackwell collectives (compiled for
// sm_100a and/or sm_110a: EDGEVLA_SM100_CCS lists which, as 100, 110).
#include "cuda/gemm_s8s8_sm100.h"

#include "cuda/cutlass_gemm_s8s8.cuh"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#ifndef EDGEVLA_SM100_CCS
#error "EDGEVLA_SM100_CCS (the compute capabilities this file is built for, e.g. 110) comes from CMakeLists.txt"
#endif

namespace edgevla::cuda {
namespace {

using namespace cute;
using cutlass_s8s8::kAlignmentOut;
using cutlass_s8s8::kAlignmentS8;

// One SM per tile (Thor has 20 SMs: pairs of SMs would halve the tiles a
// policy's layer makes), 128 x 128 accumulators in tensor memory.
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;

template <typename Epilogue>
struct DenseGemm {
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm100, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, kAlignmentS8, int8_t,
        cutlass::layout::ColumnMajor, kAlignmentS8, int32_t, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;
    // Stream-K as on Hopper: Thor's 20 SMs outnumber a batch-1 layer's tiles less often, but K = 3072 layers
    // at M = 256 still make fewer tiles than two waves.
    using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                        cutlass::gemm::StreamKScheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <typename ElementD, typename Fusion>
using EpilogueOf = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm100, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, ElementD, void, cutlass::layout::RowMajor,
    kAlignmentOut, ElementD, cutlass::layout::RowMajor, kAlignmentOut,
    cutlass::epilogue::collective::EpilogueScheduleAuto, Fusion>::CollectiveOp;

// int32 out: D = A . B^T (CUTLASS's default linear combination, alpha 1, no C).
using GemmS32 = DenseGemm<EpilogueOf<int32_t, cutlass::epilogue::fusion::LinearCombination<int32_t, int32_t>>>;
// float32 out: the W8A8 epilogue visitor.
using GemmF32 = DenseGemm<EpilogueOf<float, cutlass_s8s8::W8A8Visitor<TileShape>>>;

}  // namespace

bool gemm_s8s8_sm100_compiled() { return true; }

void gemm_s8s8_sm100(const GemmS8S8Args& g, cudaStream_t stream) {
    check_device_is("gemm_s8s8", "tcgen05", {EDGEVLA_SM100_CCS});
    cutlass_s8s8::check_operands(g, "tcgen05");
    cutlass_s8s8::run<GemmS32::Gemm, GemmF32::Gemm>(g, "gemm_s8s8 tcgen05 (CUTLASS sm100)", stream);
}

}  // namespace edgevla::cuda
