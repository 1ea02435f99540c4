// The int4 CUDA kernels run on the CPU (cuda/emulate/cuda_emulate.h) and
// checked against a double-precision reference: every kernel, row count,
// warp count and column-tile count the launcher (gemm_w4_launch.cu) can
// pick, float32 and float16 x, on shapes with K and N tails, groups of 32, 64
// and 128, x rows from 1e-30 to 1e30, strides that allow 16-byte loads and
// strides that do not. Inputs and outputs end at an inaccessible page;
// outputs are poisoned first, and the gaps of a strided output must stay
// poisoned. Built and run by tests/test_cuda_emulated.py.
//
// Usage: cuda_emulated_w4 [--quick]   (prints one line per case; exit 1 on a mismatch)
#include "cuda_emulated_check.h"

#include "cuda/cuda_kernels.h"
#include "packed_formats.h"

#include "cuda/gemm_w4_kernels.cuh"
#include "cuda/gemm_w4_mma_kernels.cuh"
#include "cuda/gemm_w4_stream_kernels.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace edgevla::cuda {
namespace {

using emulate::Index3;

struct Problem {
    int64_t m, n, k, group;
    int64_t x_pad, y_pad;  // row strides ldx = k + x_pad, ldy = n + y_pad
    int activation;
    bool extreme_rows;  // row r of x scaled by 1e-30, 1, 1e30, 1e-3, ... in turn
};

int shift_of(int64_t group) {
    int s = 0;
    while ((int64_t{1} << s) < group) ++s;
    return s;
}

struct Operands {
    Problem p;
    int64_t ldx, ldy, k_cells, k_groups, blocks;
    std::vector<float> x;          // as the kernel sees it (float16 rows: values exact in float16)
    std::vector<uint32_t> codes;   // [blocks][k_cells][16]
    std::vector<float> scales;     // [blocks][k_groups][16]
    std::vector<float> bias;       // [n]
    emulate::FloatReference reference;
};

int code_of(const std::vector<uint32_t>& codes, int64_t k_cells, int64_t channel, int64_t kk) {
    const uint32_t word = codes[((channel / 16) * k_cells + kk / 8) * 16 + channel % 16];
    const int nibble = static_cast<int>((word >> (4 * (kk % 8))) & 0xFu);
    return nibble >= 8 ? nibble - 16 : nibble;
}

Operands make(const Problem& p, bool f16, uint32_t seed) {
    Operands o;
    o.p = p;
    o.ldx = p.k + p.x_pad;
    o.ldy = p.n + p.y_pad;
    o.k_cells = (p.k + 7) / 8;
    o.k_groups = (p.k + p.group - 1) / p.group;
    o.blocks = (p.n + 15) / 16;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    static const float kRowScales[] = {1e-30f, 1.0f, 1e30f, 1e-3f, 7.0f};
    o.x.assign(static_cast<size_t>(p.m * o.ldx), 0.0f);
    for (int64_t r = 0; r < p.m; ++r) {
        const float scale = p.extreme_rows ? kRowScales[r % 5] : 1.0f;
        for (int64_t i = 0; i < o.ldx; ++i) {
            float v = uniform(rng) * scale;
            if (f16) v = __half2float(__float2half(uniform(rng)));  // float16 x: no extreme rows
            o.x[r * o.ldx + i] = v;
        }
    }
    o.codes.resize(static_cast<size_t>(o.blocks * o.k_cells * 16));
    for (auto& w : o.codes) w = static_cast<uint32_t>(rng());  // codes past K and N too: must not matter
    o.scales.resize(static_cast<size_t>(o.blocks * o.k_groups * 16));
    for (auto& s : o.scales) s = std::ldexp(uniform(rng), -4);
    o.bias.resize(static_cast<size_t>(p.n));
    for (auto& b : o.bias) b = uniform(rng);
    auto terms = [&](int64_t r, int64_t c, double& sum, double& magnitude) {
        for (int64_t kk = 0; kk < p.k; ++kk) {
            const double x = o.x[r * o.ldx + kk];
            const double s = o.scales[((c / 16) * o.k_groups + kk / p.group) * 16 + c % 16];
            sum += x * code_of(o.codes, o.k_cells, c, kk) * s;
            magnitude += std::fabs(x) * 8.0 * std::fabs(s);  // |code| <= 8
        }
    };
    o.reference = emulate::FloatReference::of(p.m, p.n, o.bias, terms);
    return o;
}

struct Device {  // the operands in guarded buffers, as a launcher would pass them
    const void* x;
    bool x_vector;
    const uint32_t* codes;
    const float* scales;
    const float* bias;
    float* y;
};

template <typename T>
Device upload(const Operands& o) {
    Device d{};
    const size_t x_count = static_cast<size_t>((o.p.m - 1) * o.ldx + o.p.k);  // the last row ends at K
    const bool strides16 = (o.ldx * sizeof(T)) % 16 == 0;
    T* x = emulate::guarded_alloc<T>(x_count, strides16 ? 16 : sizeof(T));
    for (size_t i = 0; i < x_count; ++i) {
        if constexpr (sizeof(T) == 2) {
            x[i] = __float2half(o.x[i]);
        } else {
            x[i] = o.x[i];
        }
    }
    d.x = x;
    d.x_vector = reinterpret_cast<uintptr_t>(x) % 16 == 0 && strides16;
    d.codes = emulate::guarded_copy(o.codes.data(), o.codes.size(), 16);
    d.scales = emulate::guarded_copy(o.scales.data(), o.scales.size(), 16);
    d.bias = emulate::guarded_copy(o.bias.data(), o.bias.size(), 4);
    d.y = emulate::poisoned_output<float>(static_cast<size_t>((o.p.m - 1) * o.ldy + o.p.n));
    return d;
}

int check(const Operands& o, const Device& d, const std::string& name) {
    return o.reference.check(d.y, o.ldy, o.p.activation, name);
}

std::string describe(const char* kernel, const Problem& p, bool f16, int a, int b) {
    char text[200];
    std::snprintf(text, sizeof(text), "%s<%s,%d,%d> m=%ld n=%ld k=%ld g=%ld ldx+%ld%s", kernel, f16 ? "f16" : "f32", a,
                  b, long(p.m), long(p.n), long(p.k), long(p.group), long(p.x_pad), p.extreme_rows ? " extreme" : "");
    return text;
}

template <typename T, int kRows>
int run_cuda_cores(const Operands& o) {
    const Device d = upload<T>(o);
    const Problem& p = o.p;
    const Index3 grid{unsigned(o.blocks), unsigned((p.m + kRows - 1) / kRows), 1};
    emulate::launch(grid, {kW4Warps * 32, 1, 1}, [&] {
        gemm_w4_kernel<T, kRows>(p.m, p.n, p.k, shift_of(p.group), static_cast<const T*>(d.x), o.ldx, d.x_vector,
                                 d.codes, d.scales, EpilogueF32{d.bias, p.activation}, d.y, o.ldy);
    });
    return check(o, d, describe("cuda_cores", p, sizeof(T) == 2, kRows, kW4Warps));
}

template <typename T, int kRows, int kWarps>
int run_streaming(const Operands& o) {
    const Device d = upload<T>(o);
    const Problem& p = o.p;
    const Index3 grid{unsigned(o.blocks), unsigned((p.m + kRows - 1) / kRows), 1};
    emulate::launch(grid, {kWarps * 32, 1, 1}, [&] {
        gemm_w4_stream_kernel<T, kRows, kWarps>(p.m, p.n, p.k, shift_of(p.group), static_cast<const T*>(d.x), o.ldx,
                                                d.x_vector, d.codes, d.scales, EpilogueF32{d.bias, p.activation},
                                                d.y, o.ldy);
    });
    return check(o, d, describe("streaming", p, sizeof(T) == 2, kRows, kWarps));
}

template <typename T, int kColTiles, int kWarps, int kChanTiles = 1>
int run_tensor_cores(const Operands& o) {
    const Device d = upload<T>(o);
    const Problem& p = o.p;
    emulate::launch({unsigned((o.blocks + kChanTiles - 1) / kChanTiles), 1, 1}, {kWarps * 32, 1, 1}, [&] {
        gemm_w4_mma_kernel<T, kColTiles, kWarps, kChanTiles>(p.m, p.n, p.k, shift_of(p.group),
                                                             static_cast<const T*>(d.x), o.ldx, d.x_vector, d.codes,
                                                             d.scales, EpilogueF32{d.bias, p.activation}, d.y, o.ldy);
    });
    char kernel[40];
    std::snprintf(kernel, sizeof(kernel), "tensor_cores/%dch", 16 * kChanTiles);
    return check(o, d, describe(kernel, p, sizeof(T) == 2, kColTiles, kWarps));
}

// Through the launcher (gemm_w4_launch.cu, emulated): each variant on each
// device model, the packed buffer laid out as the bindings pass it (header,
// codes, scales at scales_offset).
template <typename T>
int run_launcher(const Operands& o, GemmW4Variant variant, const char* variant_name, const emulate::DeviceModel& model,
                 const char* model_name) {
    const Problem& p = o.p;
    const Device d = upload<T>(o);
    const size_t header = sizeof(edgevla_packed_header), codes = o.codes.size() * 4, scales = o.scales.size() * 4;
    std::vector<uint8_t> bytes(header + codes + scales, 0);
    std::memcpy(bytes.data() + header, o.codes.data(), codes);
    std::memcpy(bytes.data() + header + codes, o.scales.data(), scales);
    GemmW4Args args;
    args.m = p.m, args.n = p.n, args.k = p.k, args.group = p.group;
    args.x = d.x, args.x_f16 = sizeof(T) == 2, args.ldx = o.ldx;
    args.packed = emulate::guarded_copy(bytes.data(), bytes.size(), 16);
    args.scales_offset = header + codes;
    args.bias = d.bias, args.activation = p.activation;
    args.y = d.y, args.ldy = o.ldy;
    const std::string launched = emulate::launched_on(model, [&] { gemm_w4(args, variant, 0); });
    char name[240];
    std::snprintf(name, sizeof(name), "gemm_w4(%s) on %s %s m=%ld n=%ld k=%ld g=%ld ldx+%ld%s [%s]", variant_name,
                  model_name, sizeof(T) == 2 ? "f16" : "f32", long(p.m), long(p.n), long(p.k), long(p.group),
                  long(p.x_pad), p.extreme_rows ? " extreme" : "", launched.c_str());
    return check(o, d, name);
}

template <typename T>
int run_launchers(const Operands& o) {
    int failures = 0;
    for (const emulate::NamedModel& m : emulate::kDeviceModels) {
        failures += run_launcher<T>(o, GemmW4Variant::automatic, "automatic", m.model, m.name) +
                    run_launcher<T>(o, GemmW4Variant::streaming, "streaming", m.model, m.name) +
                    run_launcher<T>(o, GemmW4Variant::tensor_cores, "tensor_cores", m.model, m.name);
    }
    return failures;
}

// Every instantiation the launcher may pick for this M (and, for the row
// kernels, every row count: a block of kRows rows takes any M).
template <typename T>
int run_all(const Problem& p, uint32_t seed, bool quick) {
    const Operands o = make(p, sizeof(T) == 2, seed);
    int failures = run_launchers<T>(o);
    failures += run_cuda_cores<T, 1>(o) + run_cuda_cores<T, 4>(o);
    if (!quick) failures += run_cuda_cores<T, 2>(o);
    failures += run_streaming<T, 1, 4>(o) + run_streaming<T, 2, 8>(o) + run_streaming<T, 4, 16>(o);
    if (!quick) {
        failures += run_streaming<T, 1, 8>(o) + run_streaming<T, 1, 16>(o) + run_streaming<T, 2, 4>(o) +
                    run_streaming<T, 2, 16>(o) + run_streaming<T, 4, 4>(o) + run_streaming<T, 4, 8>(o);
    }
    if (p.m <= 8) {
        failures += run_tensor_cores<T, 1, 4>(o) + run_tensor_cores<T, 1, 16>(o) + run_tensor_cores<T, 1, 8, 2>(o) +
                    run_tensor_cores<T, 1, 16, 4>(o);
        if (!quick) failures += run_tensor_cores<T, 1, 8>(o) + run_tensor_cores<T, 1, 4, 4>(o);
    } else if (p.m <= 16) {
        failures += run_tensor_cores<T, 2, 8>(o) + run_tensor_cores<T, 2, 16, 2>(o);
        if (!quick) {
            failures += run_tensor_cores<T, 2, 4>(o) + run_tensor_cores<T, 2, 16>(o) + run_tensor_cores<T, 2, 4, 2>(o);
        }
    } else if (p.m <= 32) {
        failures += run_tensor_cores<T, 4, 4>(o) + run_tensor_cores<T, 4, 8>(o);
    } else {
        failures += run_tensor_cores<T, 8, 4>(o) + run_tensor_cores<T, 8, 8>(o);
    }
    return failures;
}

}  // namespace
}  // namespace edgevla::cuda

int main(int argc, char** argv) {
    using edgevla::cuda::Problem;
    // --quick, for the race check (a case costs ~10x as much under ThreadSanitizer): the problems whose
    // shapes take the kernels' shared memory and barriers down different paths (N and unit tails, byte
    // loads, two column tiles one partial, several channel and column tiles), fewer instantiations (run_all).
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // the lines so far survive a fault report
    // m, n, k, group, x_pad, y_pad, activation, extreme rows
    const Problem problems[] = {
        {1, 40, 1000, 32, 0, 0, EDGEVLA_ACTIVATION_NONE, false},   // batch 1, N and unit tails
        {1, 40, 4096, 128, 0, 0, EDGEVLA_ACTIVATION_RELU, false},  // many units a warp; 3 blocks
        {3, 24, 203, 64, 1, 3, EDGEVLA_ACTIVATION_NONE, false},    // K % 8, odd strides: no vector loads
        {5, 16, 520, 32, 0, 2, EDGEVLA_ACTIVATION_NONE, true},     // x from 1e-30 to 1e30
        {8, 33, 256, 128, 4, 0, EDGEVLA_ACTIVATION_RELU, false},   // a full column tile
        {13, 16, 96, 32, 0, 0, EDGEVLA_ACTIVATION_NONE, true},     // two column tiles, one partial
        {30, 16, 160, 64, 0, 1, EDGEVLA_ACTIVATION_NONE, false},   // four column tiles
        {64, 16, 64, 32, 0, 0, EDGEVLA_ACTIVATION_NONE, false},    // eight: kGemmW4MaxM
        {1, 136, 256, 64, 0, 0, EDGEVLA_ACTIVATION_NONE, true},    // 9 channel tiles: blocks of 4 with 3 past N
        {9, 72, 128, 32, 0, 0, EDGEVLA_ACTIVATION_RELU, false},    // 5 channel tiles, 2 column tiles
    };
    const Problem* quick_problems[] = {&problems[0], &problems[2], &problems[5], &problems[9]};
    int failures = 0, cases = 0;
    uint32_t seed = 1;
    for (const Problem& p : problems) {
        if (quick && std::find(std::begin(quick_problems), std::end(quick_problems), &p) == std::end(quick_problems)) {
            continue;
        }
        failures += edgevla::cuda::run_all<float>(p, seed++, quick);
        Problem half = p;
        half.extreme_rows = false;  // float16 x has no such range
        failures += edgevla::cuda::run_all<__half>(half, seed++, quick);
        cases += 2;
    }
    edgevla::cuda::GemmW4Args too_many_rows;
    too_many_rows.m = edgevla::cuda::kGemmW4MaxM + 1, too_many_rows.n = 16, too_many_rows.k = 64;
    failures += edgevla::cuda::emulate::check_refusal("gemm_w4 refuses M = 65", "M must be <= 64", [&] {
        edgevla::cuda::gemm_w4(too_many_rows, edgevla::cuda::GemmW4Variant::tensor_cores, 0);
    });
    std::printf("%d problems x both x types: %d kernel runs failed\n", cases / 2, failures);
    return failures == 0 ? 0 : 1;
}
