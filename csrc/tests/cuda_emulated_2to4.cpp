// The float16 2:4 sparse GEMM (gemm_2to4_f16: the launcher and its kernels)
// run on the CPU (cuda/emulate/cuda_emulate.h) on weights packed by the host
// packer (pack_2to4_mma.cpp, metadata layout 0: the one the H200 computed
// with), each output within 1e-5 of a double-precision dense sum (float32
// accumulators added in another order). Both variants, on three device
// models, with x aligned for the tiled kernel, for 4-byte loads, and for
// neither, so every kernel runs (split-K at M <= 8 and <= 16; tiled, tiled
// with 2 channel tiles a warp, or the direct kernel at M > 16); cp.async
// landing at issue and as late as allowed; groups with 0, 1 and 2 non-zeros.
// (The int8 2:4 kernels are checked exactly by cuda_emulated_s8.) Built and
// run by tests/test_cuda_emulated.py with an emulated copy of the launcher.
//
// Usage: cuda_emulated_2to4   (one line per case; exit 1 on a mismatch)
#include "cuda_emulated_check.h"

#include "cuda/cuda_kernels.h"

#include "cuda_emulated_2to4.h"

#include <cmath>
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
    int64_t pad;  // ldx = k + pad, ldc = n + pad
    int activation;
};

uint16_t half_bits(float v) {
    const __half h = __float2half(v);
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
}
double half_value(uint16_t u) {
    __half_raw raw;
    raw.x = u;
    return __half2float(__half(raw));
}

struct Operands {
    Problem p;
    int64_t ldx, ldc;
    std::vector<uint16_t> x, w;  // float16 bits: [m][ldx], [n][k] (2:4)
    std::vector<float> bias;
    Packed2to4 packed;
    emulate::FloatReference reference;
};

Operands make(const Problem& p, uint32_t seed) {
    Operands o;
    o.p = p;
    o.ldx = p.k + p.pad;
    o.ldc = p.n + p.pad;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
    std::uniform_int_distribution<int> keep(0, 2), position(0, 3);
    o.x.resize(static_cast<size_t>(p.m * o.ldx));
    for (auto& v : o.x) v = half_bits(uniform(rng));
    o.w.assign(static_cast<size_t>(p.n * p.k), 0);
    for (int64_t r = 0; r < p.n; ++r) {
        for (int64_t c = 0; c < p.k; c += 4) {
            for (int i = keep(rng); i > 0; --i) {
                const int64_t kk = c + position(rng);
                if (kk < p.k) o.w[r * p.k + kk] = half_bits(uniform(rng));
            }
        }
    }
    o.bias.resize(static_cast<size_t>(p.n));
    for (auto& b : o.bias) b = uniform(rng);
    auto terms = [&](int64_t r, int64_t c, double& sum, double& magnitude) {
        for (int64_t kk = 0; kk < p.k; ++kk) {
            const double term = half_value(o.x[r * o.ldx + kk]) * half_value(o.w[c * p.k + kk]);
            sum += term;
            magnitude += std::fabs(term);
        }
    };
    o.reference = emulate::FloatReference::of(p.m, p.n, o.bias, terms);
    o.packed = Packed2to4::of(o.w.data(), p.n, p.k, p.k);
    return o;
}

// One launcher call (gemm_2to4_f16, emulated): x aligned to `align` bytes
// (16: what the tiled kernel needs; 4: 4-byte loads; 2: neither).
int run(const Operands& o, Gemm2to4Variant variant, const char* variant_name, const emulate::NamedModel& model,
        size_t align, emulate::CopyLanding landing) {
    const Problem& p = o.p;
    Gemm2to4F16Args args;
    args.m = p.m, args.n = p.n, args.k = p.k, args.ldx = o.ldx;
    args.x = emulate::guarded_copy(o.x.data(), static_cast<size_t>((p.m - 1) * o.ldx + p.k), align);
    args.values = reinterpret_cast<const uint32_t*>(o.packed.device_values()), args.meta = o.packed.device_meta();
    args.bias = emulate::guarded_copy(o.bias.data(), o.bias.size(), 4), args.activation = p.activation;
    args.c = emulate::poisoned_output<float>(static_cast<size_t>((p.m - 1) * o.ldc + p.n)), args.ldc = o.ldc;
    emulate::copy_landing() = landing;
    const std::string launched = emulate::launched_on(model.model, [&] { gemm_2to4_f16(args, variant, 0); });
    emulate::copy_landing() = emulate::CopyLanding::at_wait;
    char name[240];
    std::snprintf(name, sizeof(name), "gemm_2to4_f16(%s) on %s, x aligned to %zu%s m=%ld n=%ld k=%ld pad=%ld [%s]",
                  variant_name, model.name, align, landing == emulate::CopyLanding::at_issue ? ", cp.async early" : "",
                  long(p.m), long(p.n), long(p.k), long(p.pad), launched.c_str());
    return o.reference.check(args.c, o.ldc, p.activation, name);
}

// Both variants on every device model with x 16-byte aligned, and with x
// aligned to 4 and 2 bytes (other kernels, or other loads); cp.async landing
// early too on the first model.
int run_all(const Operands& o) {
    int failures = 0;
    const auto late = emulate::CopyLanding::at_wait, early = emulate::CopyLanding::at_issue;
    for (const emulate::NamedModel& model : emulate::kDeviceModels) {
        for (const auto variant : {Gemm2to4Variant::automatic, Gemm2to4Variant::tiled_wide}) {
            const char* name = variant == Gemm2to4Variant::automatic ? "automatic" : "tiled_wide";
            failures += run(o, variant, name, model, 16, late);
            if (&model != &emulate::kDeviceModels[0]) continue;
            failures += run(o, variant, name, model, 16, early) + run(o, variant, name, model, 4, late) +
                        run(o, variant, name, model, 2, late);
        }
    }
    return failures;
}

}  // namespace
}  // namespace edgevla::cuda

int main() {
    using edgevla::cuda::Problem;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const Problem problems[] = {
        {1, 40, 512, 0, EDGEVLA_ACTIVATION_NONE},    // batch 1, an N tail
        {7, 16, 200, 1, EDGEVLA_ACTIVATION_RELU},    // odd stride: 2-byte loads; a K tail
        {13, 24, 96, 2, EDGEVLA_ACTIVATION_NONE},    // two token tiles, one partial
        {70, 136, 160, 0, EDGEVLA_ACTIVATION_NONE},  // tiled: M and N tails, 5 K tiles
        {33, 40, 100, 4, EDGEVLA_ACTIVATION_RELU},   // K % 8: the direct kernel
    };
    int failures = 0;
    uint32_t seed = 31;
    for (const Problem& p : problems) failures += edgevla::cuda::run_all(edgevla::cuda::make(p, seed++));
    std::printf("%d problems: %d kernel runs failed\n", int(sizeof(problems) / sizeof(problems[0])), failures);
    return failures == 0 ? 0 : 1;
}
