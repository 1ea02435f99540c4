// The CUDA emulation's own checks (cuda/emulate/cuda_emulate.h), each on a
// small kernel written to trip it; tests/test_cuda_emulated.py runs every
// mode and reads the exit status and the one-line report.
//
// Usage: cuda_emulate_selftest MODE
//   sum            a block-wide sum through shuffles and shared memory (exit 0)
//   mma            mma.m16n8k16.f16 and mma.m16n8k32.s8 on matrices laid out
//                  by the PTX ISA's fragment tables, against plain loops (exit 0)
//   divergent      a shuffle only half the warp reaches (exit 3, "divergence")
//   past-the-end   a read one element past a guarded input (exit 4, "invalid memory access")
//   exited-lane    a shuffle after some lanes returned (exit 3, "returned")
//   index-past-shared  the warps' sums stored two slots on, the last one past
//                  the array (built with -fsanitize=undefined: out of bounds)
//   unwritten-shared  a fifth warp-sum slot the kernel reads but never writes,
//                  counting on shared memory starting at zero (exit 1: it
//                  starts as NaN, as a GPU's may hold anything)
// Built with -fsanitize=thread (the race check), two more, each a data race
// that ThreadSanitizer must report:
//   no-barrier     the warps' sums read from shared memory with no __syncthreads
//   warp-synchronous  a lane reads what another lane of its warp wrote, ordered
//                  only by a shuffle (which exchanges registers, not memory)
#include "cuda/emulate/cuda_emulate.h"

#include "cuda/ptx_mma.cuh"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using edgevla::cuda::emulate::guarded_copy;
using edgevla::cuda::emulate::launch;

// What a mode makes go wrong in block_sum.
enum class Trip { nothing, divergence, lanes_exit, past_the_end, no_barrier, warp_synchronous, unwritten_shared,
                  index_past_shared };

// 4 warps: each lane adds its value over the warp by shuffles, warp sums meet in shared memory.
void block_sum(const float* in, float* out, Trip trip) {
    __shared__ float warp_sums[5];  // [4]: only ever read, under Trip::unwritten_shared
    __shared__ float lane_values[128];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (trip == Trip::lanes_exit && lane >= 30) return;
    float v = in[threadIdx.x];
    if (trip == Trip::warp_synchronous) {
        // Lanes swap values in pairs through shared memory (the warp's sum is the same), "ordered" by a shuffle.
        lane_values[threadIdx.x] = v;
        (void)__shfl_xor_sync(0xffffffffu, v, 0);
        v = lane_values[threadIdx.x ^ 1u];
    }
    for (int m = 16; m >= 1; m /= 2) {
        if (trip == Trip::divergence && m == 4 && lane >= 16) continue;
        v += __shfl_xor_sync(0xffffffffu, v, m);
    }
    if (lane == 0) warp_sums[trip == Trip::index_past_shared ? warp + 2 : warp] = v;
    if (trip != Trip::no_barrier) __syncthreads();
    if (threadIdx.x == 0) {
        *out = warp_sums[0] + warp_sums[1] + warp_sums[2] + warp_sums[3];
        if (trip == Trip::unwritten_shared) *out += warp_sums[4];
    }
}

int run_sum(Trip trip) {
    std::vector<float> values(128);
    for (int i = 0; i < 128; ++i) values[i] = static_cast<float>(i % 7) - 3.0f;  // sums exactly
    const float* in = guarded_copy(values.data(), trip == Trip::past_the_end ? 127 : 128, 4);
    float* out = edgevla::cuda::emulate::poisoned_output<float>(1);
    launch({1, 1, 1}, {128, 1, 1}, [&] { block_sum(in, out, trip); });
    float want = 0.0f;
    for (float v : values) want += v;
    std::printf("block sum %g, expected %g\n", double(*out), double(want));
    return *out == want ? 0 : 1;
}

uint32_t half_bits(float v) {
    const __half h = __float2half(v);
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
}

// One warp: A (16 x K) and B (K x 8) given as plain matrices, loaded into
// fragments by the layout tables (g = lane / 4, t = lane % 4), one MMA,
// accumulators written back by the C table.
int run_mma() {
    std::mt19937 rng(5);
    std::uniform_int_distribution<int> small(-9, 9);
    float a16[16][16], b16[16][8], c16[16][8], d16[16][8];
    int8_t a8[16][32], b8[32][8];
    int32_t c8[16][8], d8[16][8];
    for (auto& row : a16) for (auto& v : row) v = 0.25f * small(rng);
    for (auto& row : b16) for (auto& v : row) v = 0.5f * small(rng);
    for (auto& row : c16) for (auto& v : row) v = static_cast<float>(small(rng));
    for (auto& row : a8) for (auto& v : row) v = static_cast<int8_t>(small(rng) * 13);
    for (auto& row : b8) for (auto& v : row) v = static_cast<int8_t>(small(rng) * 11);
    for (auto& row : c8) for (auto& v : row) v = small(rng) * 1000;
    launch({1, 1, 1}, {32, 1, 1}, [&] {
        const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
        // f16: a_i = (row g [+8], k 2t [+8]), two halves a register; b_i = (k 2t [+8], col g);
        // c = (row g [+8], col 2t, 2t+1).
        auto pair = [](float lo, float hi) { return half_bits(lo) | (half_bits(hi) << 16); };
        float d[4] = {c16[g][2 * t], c16[g][2 * t + 1], c16[g + 8][2 * t], c16[g + 8][2 * t + 1]};
        edgevla::cuda::ptx::mma_f16_m16n8k16(
            d, pair(a16[g][2 * t], a16[g][2 * t + 1]), pair(a16[g + 8][2 * t], a16[g + 8][2 * t + 1]),
            pair(a16[g][2 * t + 8], a16[g][2 * t + 9]), pair(a16[g + 8][2 * t + 8], a16[g + 8][2 * t + 9]),
            pair(b16[2 * t][g], b16[2 * t + 1][g]), pair(b16[2 * t + 8][g], b16[2 * t + 9][g]));
        d16[g][2 * t] = d[0], d16[g][2 * t + 1] = d[1], d16[g + 8][2 * t] = d[2], d16[g + 8][2 * t + 1] = d[3];
        // s8: a_i = (row g [+8], k 4t .. 4t+3 [+16]); b_i = (k 4t .. [+16], col g).
        auto quad = [](auto at) {
            uint32_t r = 0;
            for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>(static_cast<uint8_t>(at(i))) << (8 * i);
            return r;
        };
        int32_t e[4] = {c8[g][2 * t], c8[g][2 * t + 1], c8[g + 8][2 * t], c8[g + 8][2 * t + 1]};
        edgevla::cuda::ptx::mma_s8_m16n8k32(e, quad([&](int i) { return a8[g][4 * t + i]; }),
                                            quad([&](int i) { return a8[g + 8][4 * t + i]; }),
                                            quad([&](int i) { return a8[g][16 + 4 * t + i]; }),
                                            quad([&](int i) { return a8[g + 8][16 + 4 * t + i]; }),
                                            quad([&](int i) { return b8[4 * t + i][g]; }),
                                            quad([&](int i) { return b8[16 + 4 * t + i][g]; }));
        d8[g][2 * t] = e[0], d8[g][2 * t + 1] = e[1], d8[g + 8][2 * t] = e[2], d8[g + 8][2 * t + 1] = e[3];
    });
    int bad = 0;
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 8; ++j) {
            double want16 = c16[i][j];
            int64_t want8 = c8[i][j];
            for (int kk = 0; kk < 16; ++kk) want16 += double(a16[i][kk]) * b16[kk][j];
            for (int kk = 0; kk < 32; ++kk) want8 += int64_t{a8[i][kk]} * b8[kk][j];
            bad += d16[i][j] != static_cast<float>(want16);
            bad += d8[i][j] != want8;
        }
    }
    std::printf("mma: %d of 256 outputs wrong\n", bad);
    return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "sum") return run_sum(Trip::nothing);
    if (mode == "mma") return run_mma();
    if (mode == "divergent") return run_sum(Trip::divergence);
    if (mode == "past-the-end") return run_sum(Trip::past_the_end);
    if (mode == "exited-lane") return run_sum(Trip::lanes_exit);
    if (mode == "no-barrier") return run_sum(Trip::no_barrier);
    if (mode == "warp-synchronous") return run_sum(Trip::warp_synchronous);
    if (mode == "unwritten-shared") return run_sum(Trip::unwritten_shared);
    if (mode == "index-past-shared") return run_sum(Trip::index_past_shared);
    std::fprintf(stderr, "usage: cuda_emulate_selftest sum|mma|divergent|past-the-end|exited-lane|no-barrier|"
                         "warp-synchronous|unwritten-shared|index-past-shared\n");
    return 2;
}
