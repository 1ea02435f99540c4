// The int8 small-M GEMM kernel (gemm_s8s8_small_m_kernel: the auto path at
// M <= 16 with 8 warps, and the small_m_wave variant's 4 and 16) run on the
// CPU (cuda/emulate/cuda_emulate.h) and checked exactly: int32 outputs equal
// to the integer reference, float outputs bit-identical to the W8A8 epilogue
// (epilogue_math.h) applied to it, for 1 and 2 column tiles, 16-byte and byte
// loads, per-token and per-tensor activation scales. Inputs end at an
// inaccessible page; outputs are poisoned, and a strided output's gaps must
// stay so. Built and run by tests/test_cuda_emulated.py.
//
// Usage: cuda_emulated_s8   (one line per case; exit 1 on a mismatch)
#include "cuda/emulate/cuda_emulate.h"

#include "cuda/gemm_s8s8_kernels.cuh"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace edgevla::cuda {
namespace {

struct Problem {
    int64_t m, n, k;
    int64_t pad;  // lda = ldw = k + pad, ldc = n + pad
    bool f32_out, per_token;
    int activation;
};

struct Operands {
    Problem p;
    int64_t ld, ldc;
    std::vector<int8_t> a, w;  // [m][ld], [n][ld]
    std::vector<float> a_scale, w_scale, bias;
    std::vector<int64_t> exact;  // [m][n]
};

Operands make(const Problem& p, uint32_t seed) {
    Operands o;
    o.p = p;
    o.ld = p.k + p.pad;
    o.ldc = p.n + p.pad;
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> byte(-128, 127);
    std::uniform_real_distribution<float> uniform(0.001f, 0.02f);
    o.a.resize(static_cast<size_t>(p.m * o.ld));
    o.w.resize(static_cast<size_t>(p.n * o.ld));
    for (auto& v : o.a) v = static_cast<int8_t>(byte(rng));  // past K too: must not matter
    for (auto& v : o.w) v = static_cast<int8_t>(byte(rng));
    o.a_scale.resize(static_cast<size_t>(p.per_token ? p.m : 1));
    for (auto& s : o.a_scale) s = uniform(rng);
    o.w_scale.resize(static_cast<size_t>(p.n));
    for (auto& s : o.w_scale) s = uniform(rng);
    o.bias.resize(static_cast<size_t>(p.n));
    for (auto& b : o.bias) b = uniform(rng) * 50.0f - 0.5f;
    o.exact.assign(static_cast<size_t>(p.m * p.n), 0);
    for (int64_t r = 0; r < p.m; ++r)
        for (int64_t c = 0; c < p.n; ++c)
            for (int64_t kk = 0; kk < p.k; ++kk) o.exact[r * p.n + c] += int64_t{o.a[r * o.ld + kk]} * o.w[c * o.ld + kk];
    return o;
}

template <int kTilesN, bool kVector, int kWarps>
int run(const Operands& o) {
    const Problem& p = o.p;
    const size_t align = kVector ? 16 : 1;
    const int8_t* a = emulate::guarded_copy(o.a.data(), static_cast<size_t>((p.m - 1) * o.ld + p.k), align);
    const int8_t* w = emulate::guarded_copy(o.w.data(), static_cast<size_t>((p.n - 1) * o.ld + p.k), align);
    const size_t c_count = static_cast<size_t>((p.m - 1) * o.ldc + p.n);
    OutputS8 out{};
    out.ldc = o.ldc;
    out.epilogue = EpilogueS8{emulate::guarded_copy(o.w_scale.data(), o.w_scale.size(), 4),
                              emulate::guarded_copy(o.a_scale.data(), o.a_scale.size(), 4), p.per_token ? 1 : 0,
                              emulate::guarded_copy(o.bias.data(), o.bias.size(), 4), p.activation};
    if (p.f32_out) {
        out.c_f32 = emulate::poisoned_output<float>(c_count);
    } else {
        out.c_s32 = emulate::poisoned_output<int32_t>(c_count);
    }
    emulate::launch({unsigned((p.n + 8 * kTilesN - 1) / (8 * kTilesN)), 1, 1}, {kWarps * 32, 1, 1},
                    [&] { gemm_s8s8_small_m_kernel<kTilesN, kVector, kWarps>(p.m, p.n, p.k, a, o.ld, w, o.ld, out); });

    int bad = 0;
    for (size_t i = 0; i < c_count; ++i) {
        const int64_t r = static_cast<int64_t>(i) / o.ldc, c = static_cast<int64_t>(i) % o.ldc;
        const bool gap = c >= p.n;
        bool ok;
        if (p.f32_out) {
            const float got = out.c_f32[i];
            if (gap) {
                ok = emulate::is_poison(got);
            } else {
                // The epilogue of the exact sum, evaluated on the host: the same bits.
                const float want = out.epilogue(r, c, static_cast<int32_t>(o.exact[r * p.n + c]));
                ok = std::memcmp(&got, &want, 4) == 0;
            }
        } else {
            const int32_t got = out.c_s32[i];
            ok = gap ? emulate::is_poison(got) : got == o.exact[r * p.n + c];
        }
        if (!ok && bad++ < 3) std::printf("  wrong or stray output at row %ld col %ld\n", long(r), long(c));
    }
    std::printf("small_m<%d,%s,%d warps> m=%-2ld n=%-3ld k=%-4ld pad=%ld %s%s: %s\n", kTilesN,
                kVector ? "vector" : "bytes", kWarps, long(p.m), long(p.n), long(p.k), long(p.pad),
                p.f32_out ? "float" : "int32", p.f32_out ? (p.per_token ? " per-token" : " per-tensor") : "",
                bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

// The instantiations the launcher can pick: 1 or 2 column tiles, 8 warps
// (auto) or 4 / 8 / 16 (small_m_wave); 16-byte loads only where it would use them.
template <bool kVector>
int run_all(const Operands& o) {
    return run<1, kVector, 8>(o) + run<2, kVector, 8>(o) + run<1, kVector, 4>(o) + run<1, kVector, 16>(o) +
           run<2, kVector, 4>(o) + run<2, kVector, 16>(o);
}

}  // namespace
}  // namespace edgevla::cuda

int main() {
    using edgevla::cuda::Problem;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    // m, n, k, pad, float out, per-token a_scale, activation
    const Problem problems[] = {
        {1, 40, 1024, 0, false, false, EDGEVLA_ACTIVATION_NONE},        // batch 1, N tail of a column tile
        {1, 16, 4096, 0, true, false, EDGEVLA_ACTIVATION_RELU},         // many steps a warp
        {5, 24, 336, 16, true, true, EDGEVLA_ACTIVATION_GELU_TANH},     // strided, K a multiple of 16
        {9, 17, 203, 3, false, false, EDGEVLA_ACTIVATION_NONE},         // both row halves, odd K: byte loads
        {16, 33, 64, 0, true, true, EDGEVLA_ACTIVATION_NONE},           // M = 16, one step
        {12, 8, 33, 0, true, false, EDGEVLA_ACTIVATION_RELU},           // odd K, a single column tile
    };
    int failures = 0;
    uint32_t seed = 11;
    for (const Problem& p : problems) {
        const auto o = edgevla::cuda::make(p, seed++);
        const bool vector = p.k % 16 == 0 && (p.k + p.pad) % 16 == 0;
        failures += edgevla::cuda::run_all<false>(o);
        if (vector) failures += edgevla::cuda::run_all<true>(o);
    }
    std::printf("%d problems: %d kernel runs failed\n", int(sizeof(problems) / sizeof(problems[0])), failures);
    return failures == 0 ? 0 : 1;
}
