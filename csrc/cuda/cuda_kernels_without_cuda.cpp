// The CUDA kernels' entry points in a build without CUDA (EDGEVLA_CUDA=OFF,
// or AUTO without nvcc): each one says so. The bindings check
// kernels_compiled() first, so these are a second line of defence.
#include "cuda/cuda_kernels.h"

#include <stdexcept>

namespace edgevla::cuda {
namespace {

[[noreturn]] void no_cuda() {
    throw std::runtime_error("edgevla was built without CUDA (EDGEVLA_CUDA=OFF or no nvcc): no CUDA kernels");
}

}  // namespace

bool kernels_compiled() { return false; }
bool gemm_s8s8_wgmma_compiled() { return false; }
std::vector<int> gemm_s8s8_tcgen05_ccs() { return {}; }
void check_device_pointer(const void*, const char*) { no_cuda(); }
int current_device() { no_cuda(); }
GemmVariant gemm_s8s8_pick(int64_t m) { return m <= 16 ? GemmVariant::small_m : GemmVariant::tiled; }
void gemm_s8s8(const GemmS8S8Args&, GemmVariant, uintptr_t) { no_cuda(); }
void gemm_w4(const GemmW4Args&, GemmW4Variant, uintptr_t) { no_cuda(); }
void gemm_2to4_s8(const Gemm2to4S8Args&, Gemm2to4Variant, uintptr_t) { no_cuda(); }
void gemm_2to4_f16(const Gemm2to4F16Args&, Gemm2to4Variant, uintptr_t) { no_cuda(); }
bool gemm_2to4_wgmma_compiled() { return false; }
Sparse2to4WgmmaSizes sparse_2to4_s8_wgmma_sizes(int64_t, int64_t) { no_cuda(); }
void compress_2to4_s8_wgmma(const int8_t*, int64_t, int64_t, int64_t, int8_t*, uint8_t*, uintptr_t) { no_cuda(); }
void gemm_2to4_s8_wgmma(const Gemm2to4S8WgmmaArgs&, uintptr_t) { no_cuda(); }

}  // namespace edgevla::cuda
