// The int8 GEMM kernels run on the CPU (cuda/emulate/cuda_emulate.h) and
// checked exactly: int32 outputs equal to the integer reference, float
// outputs bit-identical to the W8A8 epilogue (epilogue_math.h) applied to it.
//   * gemm_s8s8_small_m_kernel: 8 warps (auto at M <= 16) and 4 / 16
//     (small_m_wave), 1 and 2 column tiles;
//   * gemm_s8s8_tiled_kernel: every tile (TileLarge, TileSmall, TileTiny,
//     TileWide, both split-K tiles), with cp.async landing at issue and as
//     late as the kernel's waits allow, over poisoned shared memory;
//   * the launchers gemm_s8s8 (every variant) and gemm_2to4_s8 (automatic,
//     tiled_wide: split-K, tiled, direct kernels by shape) on three device
//     models (cuda_emulated_check.h), the 2:4 weight packed by the host packer;
// 16-byte and byte loads, per-token and per-tensor activation scales. Inputs
// end at an inaccessible page; outputs are poisoned, and a strided output's
// gaps must stay so. Built and run by tests/test_cuda_emulated.py, which links
// emulated copies of the launchers (their <<<>>> launches rewritten) and
// cuda_runtime_emulate.cpp.
//
// Usage: cuda_emulated_s8 [--quick]   (one line per case; exit 1 on a mismatch)
#include "cuda_emulated_check.h"

#include "cuda/cuda_kernels.h"

#include "cuda/gemm_s8s8_kernels.cuh"
#include "cuda_emulated_2to4.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace edgevla::cuda {

// The tiled kernels' dynamic shared memory (extern __shared__ smem[]), large
// enough for every tile; poisoned before each block.
constexpr size_t kSmemCapacity = emulate::kDynamicSharedCapacity;
alignas(16) thread_local int8_t smem[kSmemCapacity];

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

// A . W^T over the first K of each row, in int64.
std::vector<int64_t> exact_sums(const Operands& o) {
    const Problem& p = o.p;
    std::vector<int64_t> exact(static_cast<size_t>(p.m * p.n), 0);
    for (int64_t r = 0; r < p.m; ++r) {
        for (int64_t c = 0; c < p.n; ++c) {
            for (int64_t kk = 0; kk < p.k; ++kk) exact[r * p.n + c] += int64_t{o.a[r * o.ld + kk]} * o.w[c * o.ld + kk];
        }
    }
    return exact;
}

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
    o.exact = exact_sums(o);
    return o;
}

struct Buffers {  // the operands in guarded buffers, as a launcher passes them
    const int8_t* a;
    const int8_t* w;
    OutputS8 out;
    size_t c_count;
};

Buffers upload(const Operands& o, bool vector) {
    const Problem& p = o.p;
    const size_t align = vector ? 16 : 1;
    Buffers b{};
    b.a = emulate::guarded_copy(o.a.data(), static_cast<size_t>((p.m - 1) * o.ld + p.k), align);
    b.w = emulate::guarded_copy(o.w.data(), static_cast<size_t>((p.n - 1) * o.ld + p.k), align);
    b.c_count = static_cast<size_t>((p.m - 1) * o.ldc + p.n);
    b.out.ldc = o.ldc;
    b.out.epilogue = EpilogueS8{emulate::guarded_copy(o.w_scale.data(), o.w_scale.size(), 4),
                                emulate::guarded_copy(o.a_scale.data(), o.a_scale.size(), 4), p.per_token ? 1 : 0,
                                emulate::guarded_copy(o.bias.data(), o.bias.size(), 4), p.activation};
    if (p.f32_out) {
        b.out.c_f32 = emulate::poisoned_output<float>(b.c_count);
    } else {
        b.out.c_s32 = emulate::poisoned_output<int32_t>(b.c_count);
    }
    return b;
}

// Every output exact (int32) or bit-identical (float: the epilogue of the
// exact sum, evaluated on the host), every gap still poisoned.
int check(const Operands& o, const Buffers& b, const std::string& kernel) {
    const Problem& p = o.p;
    char name[200];
    std::snprintf(name, sizeof(name), "%-40s m=%-3ld n=%-3ld k=%-4ld pad=%-2ld %s%s", kernel.c_str(), long(p.m),
                  long(p.n), long(p.k), long(p.pad), p.f32_out ? "float" : "int32",
                  p.f32_out ? (p.per_token ? " per-token" : " per-tensor") : "");
    auto exact = [&](int64_t r, int64_t c) { return static_cast<int32_t>(o.exact[r * p.n + c]); };
    if (p.f32_out) {
        return emulate::check_output(b.out.c_f32, p.m, p.n, o.ldc, name, [&](int64_t r, int64_t c, float got) {
            const float want = b.out.epilogue(r, c, exact(r, c));
            return std::memcmp(&got, &want, 4) == 0;
        });
    }
    return emulate::check_output(b.out.c_s32, p.m, p.n, o.ldc, name,
                                 [&](int64_t r, int64_t c, int32_t got) { return got == exact(r, c); });
}

template <int kTilesN, bool kVector, int kWarps>
int run_small_m(const Operands& o) {
    const Problem& p = o.p;
    const Buffers b = upload(o, kVector);
    emulate::launch({unsigned((p.n + 8 * kTilesN - 1) / (8 * kTilesN)), 1, 1}, {kWarps * 32, 1, 1}, [&] {
        gemm_s8s8_small_m_kernel<kTilesN, kVector, kWarps>(p.m, p.n, p.k, b.a, o.ld, b.w, o.ld, b.out);
    });
    char name[64];
    std::snprintf(name, sizeof(name), "small_m<%d,%s,%d warps>", kTilesN, kVector ? "vector" : "bytes", kWarps);
    return check(o, b, name);
}

// The instantiations the launcher can pick at M <= 16: 1 or 2 column tiles,
// 8 warps (auto) or 4 / 8 / 16 (small_m_wave).
template <bool kVector>
int run_small_m_all(const Operands& o) {
    return run_small_m<1, kVector, 8>(o) + run_small_m<2, kVector, 8>(o) + run_small_m<1, kVector, 4>(o) +
           run_small_m<1, kVector, 16>(o) + run_small_m<2, kVector, 4>(o) + run_small_m<2, kVector, 16>(o);
}

template <typename Tile, bool kVector>
int run_tiled(const Operands& o, const char* tile, emulate::CopyLanding landing) {
    static_assert(Tile::kSmemBytes <= kSmemCapacity);
    const Problem& p = o.p;
    const Buffers b = upload(o, kVector);
    emulate::copy_landing() = landing;
    std::mt19937 rng(7);
    emulate::launch(
        {unsigned((p.n + Tile::kTileN - 1) / Tile::kTileN), unsigned((p.m + Tile::kTileM - 1) / Tile::kTileM), 1},
        {Tile::kThreads, 1, 1},
        [&] { gemm_s8s8_tiled_kernel<Tile, kVector>(p.m, p.n, p.k, b.a, o.ld, b.w, o.ld, b.out); },
        [&] {
            for (auto& byte : smem) byte = static_cast<int8_t>(rng());
        });
    emulate::copy_landing() = emulate::CopyLanding::at_wait;
    char name[80];
    std::snprintf(name, sizeof(name), "tiled<%s,%s> cp.async %s", tile, kVector ? "vector" : "bytes",
                  landing == emulate::CopyLanding::at_issue ? "early" : "late");
    return check(o, b, name);
}

// Every tile shape (the automatic three, measured on the H200, and the
// variants tiled_wide and tiled_split_k), each with cp.async landing as early
// and as late as allowed.
template <bool kVector>
int run_tiled_all(const Operands& o) {
    int failures = 0;
    for (const auto landing : {emulate::CopyLanding::at_issue, emulate::CopyLanding::at_wait}) {
        failures += run_tiled<TileLarge, kVector>(o, "TileLarge", landing);
        failures += run_tiled<TileSmall, kVector>(o, "TileSmall", landing);
        failures += run_tiled<TileTiny, kVector>(o, "TileTiny", landing);
        failures += run_tiled<TileWide, kVector>(o, "TileWide", landing);
        failures += run_tiled<TileSmallSplitK, kVector>(o, "TileSmallSplitK", landing);
        failures += run_tiled<TileTinySplitK, kVector>(o, "TileTinySplitK", landing);
    }
    return failures;
}

// ---- 2:4 sparse int8 (gemm_2to4_kernels.cuh) -------------------------------

// The operands with W made 2:4 (each group of 4 k keeps 0, 1 or 2 of its
// values, at random), the exact sums redone, and W packed as the GPU's
// pack_2to4_s8 packs it (metadata layout 2, the one the H200 computed with).
Operands sparsify(const Operands& dense, Packed2to4& packed, uint32_t seed) {
    Operands o = dense;
    const Problem& p = o.p;
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> keep(0, 2);
    for (int64_t r = 0; r < p.n; ++r) {
        for (int64_t c = 0; c < p.k; c += 4) {
            int kept = keep(rng);
            for (int64_t kk = c; kk < c + 4 && kk < p.k; ++kk) {
                int8_t& v = o.w[r * o.ld + kk];
                if (v == 0) continue;
                if (kept > 0 && rng() % 2 == 0) {
                    --kept;
                } else {
                    v = 0;
                }
            }
        }
    }
    o.exact = exact_sums(o);
    packed = Packed2to4::of(o.w.data(), p.n, p.k, o.ld);
    return o;
}

// ---- Through the launchers (gemm_s8s8_launch.cu, gemm_2to4_launch.cu, emulated)

// The W8A8 output fields of `b` into a launcher's arguments.
void set_output(W8A8OutputArgs& args, const Buffers& b) {
    args.w_scale = b.out.epilogue.w_scale, args.a_scale = b.out.epilogue.a_scale;
    args.a_scale_per_token = b.out.epilogue.a_scale_per_token != 0;
    args.bias = b.out.epilogue.bias, args.activation = b.out.epilogue.activation;
    args.c_f32 = b.out.c_f32, args.c_s32 = b.out.c_s32, args.ldc = b.out.ldc;
}

// Buffers aligned for 16-byte loads where the shape allows them (the
// launcher then takes them), byte-aligned otherwise.
bool vector_shape(const Operands& o) { return o.p.k % 16 == 0 && o.ld % 16 == 0; }

int run_gemm(const Operands& o, GemmVariant variant, const char* variant_name, const emulate::NamedModel& model) {
    const Problem& p = o.p;
    const Buffers b = upload(o, vector_shape(o));
    GemmS8S8Args args;
    set_output(args, b);
    args.m = p.m, args.n = p.n, args.k = p.k, args.a = b.a, args.lda = o.ld, args.w = b.w, args.ldw = o.ld;
    const std::string launched = emulate::launched_on(model.model, [&] { gemm_s8s8(args, variant, 0); });
    return check(o, b, std::string("gemm_s8s8(") + variant_name + ") on " + model.name + " [" + launched + "]");
}

int run_gemm_2to4(const Operands& o, const Packed2to4& packed, Gemm2to4Variant variant, const char* variant_name,
                  const emulate::NamedModel& model, emulate::CopyLanding landing) {
    const Problem& p = o.p;
    const Buffers b = upload(o, vector_shape(o));
    Gemm2to4S8Args args;
    set_output(args, b);
    args.m = p.m, args.n = p.n, args.k = p.k, args.x = b.a, args.ldx = o.ld;
    args.values = reinterpret_cast<const uint32_t*>(packed.device_values()), args.meta = packed.device_meta();
    emulate::copy_landing() = landing;
    const std::string launched = emulate::launched_on(model.model, [&] { gemm_2to4_s8(args, variant, 0); });
    emulate::copy_landing() = emulate::CopyLanding::at_wait;
    const char* early = landing == emulate::CopyLanding::at_issue ? " cp.async early" : "";
    return check(o, b,
                 std::string("gemm_2to4_s8(") + variant_name + ") on " + model.name + early + " [" + launched + "]");
}

// Every variant the launchers take at this M, on every device model; the
// 2:4 ones on a 2:4 copy of W, with cp.async landing late and (on the first
// model) early too.
int run_launchers(const Operands& dense, uint32_t seed) {
    Packed2to4 packed;
    const Operands sparse = sparsify(dense, packed, seed);
    int failures = 0;
    for (const emulate::NamedModel& model : emulate::kDeviceModels) {
        failures += run_gemm(dense, GemmVariant::automatic, "automatic", model) +
                    run_gemm(dense, GemmVariant::tiled_split_k, "tiled_split_k", model);
        if (dense.p.m <= 16) {
            failures += run_gemm(dense, GemmVariant::small_m, "small_m", model) +
                        run_gemm(dense, GemmVariant::small_m_wave, "small_m_wave", model);
        } else {
            failures += run_gemm(dense, GemmVariant::tiled, "tiled", model) +
                        run_gemm(dense, GemmVariant::tiled_wide, "tiled_wide", model);
        }
        for (const auto landing : {emulate::CopyLanding::at_wait, emulate::CopyLanding::at_issue}) {
            if (landing == emulate::CopyLanding::at_issue && &model != &emulate::kDeviceModels[0]) continue;
            failures += run_gemm_2to4(sparse, packed, Gemm2to4Variant::automatic, "automatic", model, landing) +
                        run_gemm_2to4(sparse, packed, Gemm2to4Variant::tiled_wide, "tiled_wide", model, landing);
        }
    }
    return failures;
}

}  // namespace
}  // namespace edgevla::cuda

int main(int argc, char** argv) {
    using edgevla::cuda::Problem;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    // --quick, for the race check (a case costs ~10x as much under ThreadSanitizer): the first small-M
    // problem, and one tiled problem smaller than the first of the list that still has M and N tails for
    // every tile and wraps the 4-stage ring (5 K tiles).
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    // m, n, k, pad, float out, per-token a_scale, activation
    const Problem small_m[] = {
        {1, 40, 1024, 0, false, false, EDGEVLA_ACTIVATION_NONE},     // batch 1, N tail of a column tile
        {1, 16, 4096, 0, true, false, EDGEVLA_ACTIVATION_RELU},      // many steps a warp
        {5, 24, 336, 16, true, true, EDGEVLA_ACTIVATION_GELU_TANH},  // strided, K a multiple of 16
        {9, 17, 203, 3, false, false, EDGEVLA_ACTIVATION_NONE},      // both row halves, odd K: byte loads
        {16, 33, 64, 0, true, true, EDGEVLA_ACTIVATION_NONE},        // M = 16, one step
        {12, 8, 33, 0, true, false, EDGEVLA_ACTIVATION_RELU},        // odd K, a single column tile
    };
    const Problem tiled[] = {
        {140, 136, 320, 0, false, false, EDGEVLA_ACTIVATION_NONE},  // M and N tails of the large tiles, 5 K tiles
        {40, 72, 200, 8, true, true, EDGEVLA_ACTIVATION_RELU},      // odd K: byte loads; strided
        {17, 264, 64, 0, true, false, EDGEVLA_ACTIVATION_NONE},     // one K tile (split-K groups with none)
    };
    const Problem tiled_quick[] = {{72, 40, 320, 0, false, false, EDGEVLA_ACTIVATION_NONE}};
    int failures = 0, problems = 0;
    uint32_t seed = 11;
    for (const Problem& p : small_m) {
        if (quick && &p != &small_m[0]) continue;
        const auto o = edgevla::cuda::make(p, seed++);
        failures += edgevla::cuda::run_small_m_all<false>(o);
        if (p.k % 16 == 0 && (p.k + p.pad) % 16 == 0) failures += edgevla::cuda::run_small_m_all<true>(o);
        failures += edgevla::cuda::run_launchers(o, seed++);
        ++problems;
    }
    for (const Problem& p : quick ? std::vector<Problem>(std::begin(tiled_quick), std::end(tiled_quick))
                                  : std::vector<Problem>(std::begin(tiled), std::end(tiled))) {
        const auto o = edgevla::cuda::make(p, seed++);
        failures += edgevla::cuda::run_tiled_all<false>(o);
        if (p.k % 16 == 0 && (p.k + p.pad) % 16 == 0) failures += edgevla::cuda::run_tiled_all<true>(o);
        failures += edgevla::cuda::run_launchers(o, seed++);
        ++problems;
    }
    for (const auto variant : {edgevla::cuda::GemmVariant::small_m, edgevla::cuda::GemmVariant::small_m_wave}) {
        edgevla::cuda::GemmS8S8Args rows17;
        rows17.m = 17, rows17.n = 16, rows17.k = 64;
        failures += edgevla::cuda::emulate::check_refusal(
            std::string("gemm_s8s8 refuses M = 17 for variant ") + std::to_string(static_cast<int>(variant)),
            "takes M <= 16", [&] { edgevla::cuda::gemm_s8s8(rows17, variant, 0); });
    }
    std::printf("%d problems: %d kernel runs failed\n", problems, failures);
    return failures == 0 ? 0 : 1;
}
