// gemm_s8s8_sm90.h on CUTLASS 3's Hopper collectives (compiled for sm_90a).
#include "cuda/gemm_s8s8_sm90.h"

#include "cuda/cutlass_sm90_run.cuh"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
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

// D = A . B^T in int32: no source C (void), alpha 1.
using Epilogue = cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, int32_t, void, cutlass::layout::RowMajor,
    kAlignmentS32, int32_t, cutlass::layout::RowMajor, kAlignmentS32,
    cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

// A (M, K) row-major; W (N, K) row-major is B column-major (the "TN" int8 layout).
using Mainloop = cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, kAlignmentS8, int8_t,
    cutlass::layout::ColumnMajor, kAlignmentS8, int32_t, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

// Stream-K (CUTLASS's heuristic decomposition): the policies' layers at
// M = 256 make 12-48 output tiles for 132 SMs, so K is split among CTAs
// there; large problems stay data-parallel. int32 partial sums add exactly.
using Kernel =
    cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, cutlass::gemm::StreamKScheduler>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

}  // namespace

bool gemm_s8s8_sm90_compiled() { return true; }

void gemm_s8s8_sm90(const GemmS8S8Args& g, cudaStream_t stream) {
    if (g.c_s32 == nullptr || g.c_f32 != nullptr) {
        throw std::invalid_argument("gemm_s8s8: the wgmma variant writes int32 out only (no float epilogue)");
    }
    check_device_is_sm90("gemm_s8s8");
    if (g.k % kAlignmentS8 != 0 || g.lda % 16 != 0 || g.ldw % 16 != 0 || !aligned16(g.a) || !aligned16(g.w) ||
        g.n % kAlignmentS32 != 0 || g.ldc % kAlignmentS32 != 0 || !aligned16(g.c_s32)) {
        throw std::invalid_argument(
            "gemm_s8s8: the wgmma variant needs 16-byte aligned A, W and C, K and the row strides of A and W "
            "multiples of 16, N and C's row stride multiples of 4");
    }
    if (g.m > INT32_MAX || g.n > INT32_MAX || g.k > INT32_MAX) {
        throw std::invalid_argument("gemm_s8s8: the wgmma variant takes M, N, K below 2^31");
    }
    const auto stride_a = make_stride(static_cast<int64_t>(g.lda), Int<1>{}, int64_t{0});
    const auto stride_w = make_stride(static_cast<int64_t>(g.ldw), Int<1>{}, int64_t{0});
    const auto stride_c = make_stride(static_cast<int64_t>(g.ldc), Int<1>{}, int64_t{0});
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), 1},
        {g.a, typename Kernel::StrideA(stride_a), g.w, typename Kernel::StrideB(stride_w)},
        {{1, 0}, nullptr, {}, g.c_s32, typename Kernel::StrideD(stride_c)},
        hardware_info()};
    run_cutlass<Gemm>(args, "gemm_s8s8 wgmma (CUTLASS sm90)", stream);
}

}  // namespace edgevla::cuda
