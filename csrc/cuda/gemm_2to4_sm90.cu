// gemm_2to4_sm90.h on CUTLASS 3's Hopper sparse collectives (compiled for sm_90a).
#include "cuda/gemm_2to4_sm90.h"

#include "cuda/cutlass_gemm_s8s8.cuh"
#include "cuda/cutlass_run.cuh"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"

#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace edgevla::cuda {
namespace {

using namespace cute;

using ProblemShape = Shape<int, int, int, int>;
// K 128 logical = 64 stored bytes a row per stage: two wgmma.sp k64 steps.
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _2, _1>;
constexpr int kAlignmentS8 = 16;
constexpr int kAlignmentS32 = 4;

// A = W (channels, K) row-major, sparse; B = X: (K, tokens) column-major;
// D (channels, tokens) column-major = C (tokens, channels) row-major.
// Stream-K, as the dense kernel (gemm_s8s8_sm90.cu): with half the MMAs per
// tile, the sparse kernel is even more short of tiles at M = 256.
template <typename Epilogue>
struct SparseGemm {
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, int8_t, cutlass::layout::RowMajor, kAlignmentS8,
        int8_t, cutlass::layout::ColumnMajor, kAlignmentS8, int32_t, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue, cutlass::gemm::StreamKScheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

using GemmS32 = SparseGemm<typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, int32_t, void, cutlass::layout::ColumnMajor,
    kAlignmentS32, int32_t, cutlass::layout::ColumnMajor, kAlignmentS32,
    cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp>;

// float32 out: the W8A8 epilogue visitor with the broadcasts transposed (cutlass_gemm_s8s8.cuh).
using GemmF32 = SparseGemm<typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, cutlass::layout::ColumnMajor,
    kAlignmentS32, float, cutlass::layout::ColumnMajor, kAlignmentS32,
    cutlass::epilogue::TmaWarpSpecializedCooperative,
    cutlass_s8s8::W8A8VisitorTransposed<TileShape>>::CollectiveOp>;

// One compressed layout serves both (the mainloops are the same type but for the epilogue's smem carve-out).
using Mainloop = GemmS32::Mainloop;
static_assert(std::is_same_v<typename GemmS32::Mainloop::SparseConfig, typename GemmF32::Mainloop::SparseConfig>);
using SparseConfig = typename Mainloop::SparseConfig;
using StrideDenseA = cutlass::gemm::TagToStrideA_t<cutlass::layout::RowMajor>;
using CompressorUtility =
    cutlass::transform::kernel::StructuredSparseCompressorUtility<ProblemShape, int8_t, cutlass::layout::RowMajor,
                                                                  SparseConfig>;
using CompressorKernel =
    cutlass::transform::kernel::StructuredSparseCompressor<ProblemShape, int8_t, cutlass::layout::RowMajor,
                                                           SparseConfig, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressorKernel>;

static_assert(sizeof(typename Mainloop::ElementE) == 1, "the metadata is handed over as bytes");

// The compressed weight is the GEMM's A: (channels, tokens = any, K). Only
// M and K shape the layouts.
ProblemShape weight_problem(int64_t n, int64_t k) { return {static_cast<int>(n), 1, static_cast<int>(k), 1}; }

void check_weight_shape(int64_t n, int64_t k, const char* kernel) {
    if (n <= 0 || k <= 0 || n > INT32_MAX || k > INT32_MAX) {
        throw std::invalid_argument(std::string(kernel) + ": the wgmma variant takes 0 < N, K < 2^31");
    }
    if (k % 32 != 0) {
        // 16-byte TMA rows of the compressed values (K / 2 bytes).
        throw std::invalid_argument(std::string(kernel) + ": the wgmma variant needs K a multiple of 32, got " +
                                    std::to_string(k));
    }
}

}  // namespace

bool gemm_2to4_sm90_compiled() { return true; }

Sparse2to4WgmmaSizes sparse_2to4_s8_sm90_sizes(int64_t n, int64_t k) {
    check_weight_shape(n, k, "pack_2to4_s8 (wgmma)");
    const ProblemShape problem = weight_problem(n, k);
    const CompressorUtility utility(problem, StrideDenseA(make_stride(k, Int<1>{}, int64_t{0})));
    Sparse2to4WgmmaSizes sizes;
    sizes.value_bytes = static_cast<int64_t>(utility.get_compressed_tensor_A_bytes());
    sizes.meta_bytes = static_cast<int64_t>(utility.get_tensor_E_bytes());
    return sizes;
}

void compress_2to4_s8_sm90(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int8_t* values, uint8_t* meta,
                           cudaStream_t stream) {
    const std::string kernel = "pack_2to4_s8 (CUTLASS sm90 compressor)";
    check_weight_shape(n, k, kernel.c_str());
    check_device_is_sm90(kernel);
    const StrideDenseA stride_w = make_stride(ldw, Int<1>{}, int64_t{0});
    // The compressor clears the padding it writes; the buffers are exactly
    // sparse_2to4_s8_sm90_sizes(n, k).
    const typename Compressor::Arguments args{weight_problem(n, k), {w, stride_w, values, meta}, hardware_info()};
    run_cutlass<Compressor>(args, kernel, stream);
}

void gemm_2to4_s8_sm90(const Gemm2to4S8WgmmaArgs& g, cudaStream_t stream) {
    const std::string kernel = "gemm_2to4_s8 wgmma (CUTLASS sm90)";
    check_weight_shape(g.n, g.k, "gemm_2to4_s8");
    check_device_is_sm90("gemm_2to4_s8");
    const void* c = cutlass_s8s8::single_output(g, "gemm_2to4_s8");
    if (g.m > INT32_MAX) throw std::invalid_argument("gemm_2to4_s8: the wgmma variant takes M below 2^31");
    if (g.ldx % 16 != 0 || !aligned16(g.x) || !aligned16(g.values) || !aligned16(g.meta) || g.n % kAlignmentS32 != 0 ||
        g.ldc % kAlignmentS32 != 0 || !aligned16(c)) {
        throw std::invalid_argument(
            "gemm_2to4_s8: the wgmma variant needs 16-byte aligned X, weight and C, X's row stride a multiple of 16, "
            "N and C's row stride multiples of 4");
    }
    const ProblemShape problem{static_cast<int>(g.n), static_cast<int>(g.m), static_cast<int>(g.k), 1};
    const auto stride_x = make_stride(static_cast<int64_t>(g.ldx), Int<1>{}, int64_t{0});
    const auto stride_c = make_stride(Int<1>{}, static_cast<int64_t>(g.ldc), int64_t{0});
    if (g.c_s32 != nullptr) {
        using Kernel = GemmS32::Kernel;
        const typename GemmS32::Gemm::Arguments args{
            cutlass::gemm::GemmUniversalMode::kGemm,
            problem,
            {g.values, SparseConfig::fill_layoutA(problem), g.x, typename Kernel::StrideB(stride_x), g.meta,
             SparseConfig::fill_layoutE(problem)},
            {{1, 0}, nullptr, {}, g.c_s32, typename Kernel::StrideD(stride_c)},
            hardware_info()};
        run_cutlass<GemmS32::Gemm>(args, kernel, stream);
        return;
    }
    using Kernel = GemmF32::Kernel;
    typename GemmF32::Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        problem,
        {g.values, SparseConfig::fill_layoutA(problem), g.x, typename Kernel::StrideB(stride_x), g.meta,
         SparseConfig::fill_layoutE(problem)},
        {{}, nullptr, {}, g.c_f32, typename Kernel::StrideD(stride_c)},
        hardware_info()};
    // a_scale per token is per CUTLASS column here.
    cutlass_s8s8::set_visitor_arguments(args.epilogue.thread, g, make_stride(_0{}, g.a_scale_per_token, int64_t{0}));
    run_cutlass<GemmF32::Gemm>(args, kernel + " + W8A8 epilogue", stream);
}

}  // namespace edgevla::cuda
