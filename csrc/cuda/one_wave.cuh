// Warps per block for the batch-1 kernels whose blocks each own a slice of
// the output and split K among their warps (the int4 streaming and
// tensor-core GEMVs, the int8 small_m_wave GEMV). A memory-bound GEMV wants
// every block resident at once: blocks that run in waves each pay a ramp (the
// first DRAM round trip) and a drain (the reduction), and the last wave
// leaves SMs idle. So among a kernel's instantiations for 4, 8 and 16 warps,
// the launcher takes the most warps with which the whole grid still fits the
// GPU in one wave, asking CUDA's occupancy calculator (registers, shared
// memory and block limits of this GPU and this build).
#pragma once

#include "cuda/launch_check.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

namespace edgevla::cuda {

// Blocks of `threads` threads of `kernel` that one SM of the current device
// holds at once. The answer depends only on the device, the kernel and the
// block size, so it is asked of CUDA once per triple and kept: a batch-1
// layer is launched thousands of times, and eagerly each launch would pay
// 2 or 3 occupancy queries of host time on a ~10 us kernel.
inline int resident_blocks_per_sm(const void* kernel, int threads) {
    static std::mutex mutex;
    static std::map<std::tuple<int, const void*, int>, int> known;
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    const auto key = std::make_tuple(device, kernel, threads);
    {
        const std::lock_guard<std::mutex> lock(mutex);
        if (const auto found = known.find(key); found != known.end()) return found->second;
    }
    int per_sm = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    const std::lock_guard<std::mutex> lock(mutex);
    known.emplace(key, per_sm);
    return per_sm;
}

// Of the instantiations (warp count, kernel), listed from fewest warps: the
// most warps with which `blocks` blocks are resident at once and every warp
// has at least one step of `units_per_step` of the block's `units`; the
// fewest when none fits the grid in one wave (the blocks cycle anyway, and
// small ones balance the last wave better).
inline int one_wave_warps(std::initializer_list<std::pair<int, const void*>> kernels, int64_t blocks, int64_t units,
                          int64_t units_per_step) {
    const int64_t sms = multiprocessor_count();
    int chosen = kernels.begin()->first;
    for (const auto& [warps, kernel] : kernels) {
        const int64_t per_sm = resident_blocks_per_sm(kernel, warps * 32);
        if (blocks <= per_sm * sms && units >= warps * units_per_step) chosen = warps;
    }
    return chosen;
}

// run(kernel(warps), warps) with `warps` the one_wave_warps choice among 4, 8
// and (unless the block's shared memory forbids it: kWith16 false) 16.
// kernel(std::integral_constant<int, W>) names the instantiation for W warps.
template <bool kWith16, typename Kernel, typename Run>
void by_warps(Kernel kernel, int64_t blocks, int64_t units, int64_t units_per_step, Run run) {
    const auto k4 = kernel(std::integral_constant<int, 4>{}), k8 = kernel(std::integral_constant<int, 8>{});
    int warps = 4;
    if constexpr (kWith16) {
        const auto k16 = kernel(std::integral_constant<int, 16>{});
        warps = one_wave_warps({{4, reinterpret_cast<const void*>(k4)}, {8, reinterpret_cast<const void*>(k8)},
                                {16, reinterpret_cast<const void*>(k16)}},
                               blocks, units, units_per_step);
        if (warps == 16) return run(k16, 16);
    } else {
        warps = one_wave_warps({{4, reinterpret_cast<const void*>(k4)}, {8, reinterpret_cast<const void*>(k8)}},
                               blocks, units, units_per_step);
    }
    return warps == 8 ? run(k8, 8) : run(k4, 4);
}

}  // namespace edgevla::cuda
