// A self-contained test driver of the CPU kernels, without Python: for every
// ISA this machine runs, the packed W8A8 GEMM must be bit-identical to the
// scalar reference (edgevla_gemm_s8s8_f32_ref) and per-token quantization
// identical to edgevla_quantize_row_ref, on odd shapes, saturating values,
// per-tensor and per-token scales, with and without bias, every activation,
// into poisoned outputs followed by guard values.
//
// Its job is the ISAs the Python tests cannot reach on an x86-64 build host:
// tests/native/run_aarch64.sh cross-compiles it for aarch64 and runs it under
// qemu-aarch64 -cpu max, so the NEON dot-product path is tested on every
// change. Exit status 0 only when every case matches.
#include "cpu_kernels.h"
#include "cpu_ops.h"
#include "dispatch.h"
#include "gemm_ref.h"
#include "thread_pool.h"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace edgevla;

constexpr uint32_t kPoison = 0x7FC0DEADu;
constexpr int64_t kGuard = 19;

std::vector<float> poisoned(int64_t count) {
    std::vector<float> values(static_cast<size_t>(count + kGuard));
    for (float& v : values) std::memcpy(&v, &kPoison, 4);
    return values;
}

bool guard_intact(const std::vector<float>& values, int64_t count) {
    for (size_t i = static_cast<size_t>(count); i < values.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &values[i], 4);
        if (bits != kPoison) return false;
    }
    return true;
}

struct Case {
    int64_t m, n, k;
    int mode;  // 0 uniform, 1 extremes (-128, -127, 127), 2 all -128
};

int8_t draw(std::mt19937& rng, int mode) {
    static const int8_t extremes[] = {-128, -127, 127};
    if (mode == 2) return -128;
    if (mode == 1) return extremes[rng() % 3];
    return static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
}

int check_gemm(const IsaKernels& isa, const Case& c, bool per_token, bool with_bias, edgevla_activation act,
               std::mt19937& rng) {
    std::vector<int8_t> a(static_cast<size_t>(c.m * c.k)), w(static_cast<size_t>(c.n * c.k));
    for (int8_t& v : a) v = draw(rng, c.mode);
    for (int8_t& v : w) v = draw(rng, c.mode);
    std::uniform_real_distribution<float> w_dist(1e-4f, 1e-2f), a_dist(1e-3f, 1e-1f), b_dist(-1.0f, 1.0f);
    std::vector<float> w_scale(static_cast<size_t>(c.n)), a_scale(static_cast<size_t>(per_token ? c.m : 1));
    std::vector<float> bias(static_cast<size_t>(c.n));
    for (float& v : w_scale) v = w_dist(rng);
    for (float& v : a_scale) v = a_dist(rng);
    for (float& v : bias) v = b_dist(rng);
    const edgevla_gemm_epilogue_f32 epilogue{
        w_scale.data(), a_scale.data(), per_token ? EDGEVLA_ACT_SCALE_PER_TOKEN : EDGEVLA_ACT_SCALE_PER_TENSOR,
        with_bias ? bias.data() : nullptr, act};

    std::vector<float> expected = poisoned(c.m * c.n);
    edgevla_gemm_s8s8_f32_ref(c.m, c.n, c.k, a.data(), c.k, w.data(), c.k, &epilogue, expected.data(), c.n);

    std::vector<uint8_t> packed(static_cast<size_t>(packed_s8_bytes(c.n, c.k)));
    pack_weight_s8(c.n, c.k, w.data(), c.k, w_scale.data(), packed.data());
    GemmPackedArgs args;
    const std::string problem = validate_packed_s8(packed.data(), packed.size(), &args.w);
    if (!problem.empty()) {
        std::printf("FAIL pack: packed %s\n", problem.c_str());
        return 1;
    }
    std::vector<float> got = poisoned(c.m * c.n);
    args.m = c.m;
    args.a = a.data();
    args.lda = c.k;
    args.epilogue = epilogue;
    args.epilogue.w_scale = args.w.w_scale;
    args.c = got.data();
    args.ldc = c.n;
    gemm_packed_s8_f32(args);

    if (!guard_intact(got, c.m * c.n)) {
        std::printf("FAIL %s m=%lld n=%lld k=%lld: wrote past the end\n", isa.name, (long long)c.m, (long long)c.n,
                    (long long)c.k);
        return 1;
    }
    if (std::memcmp(got.data(), expected.data(), static_cast<size_t>(c.m * c.n) * 4) != 0) {
        std::printf("FAIL %s m=%lld n=%lld k=%lld mode=%d per_token=%d bias=%d act=%d: differs from the reference\n",
                    isa.name, (long long)c.m, (long long)c.n, (long long)c.k, c.mode, per_token, with_bias, act);
        return 1;
    }
    return 0;
}

int check_quantize(const IsaKernels& isa, int64_t m, int64_t k, float magnitude, std::mt19937& rng) {
    std::normal_distribution<float> dist(0.0f, magnitude);
    std::vector<float> x(static_cast<size_t>(m * k));
    for (float& v : x) v = dist(rng);
    std::vector<int8_t> q(x.size()), q_ref(x.size());
    std::vector<float> scale(static_cast<size_t>(m)), scale_ref(static_cast<size_t>(m));
    if (quantize_per_token(m, k, x.data(), k, q.data(), k, scale.data()) != -1 ||
        edgevla_quantize_per_token_ref(m, k, x.data(), k, q_ref.data(), k, scale_ref.data()) != -1 ||
        q != q_ref || std::memcmp(scale.data(), scale_ref.data(), scale.size() * 4) != 0) {
        std::printf("FAIL %s quantize m=%lld k=%lld\n", isa.name, (long long)m, (long long)k);
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // Optional argument: an ISA that must be available (the aarch64 run asks for neon_dot).
    const std::string required = argc > 1 ? argv[1] : "";
    std::printf("arch %s, ISAs available:", cpu_arch());
    bool found_required = required.empty();
    for (const IsaKernels* isa : available_isas()) {
        std::printf(" %s", isa->name);
        found_required = found_required || required == isa->name;
    }
    std::printf("\n");
    if (!found_required) {
        std::printf("FAIL: this CPU does not run the required ISA %s\n", required.c_str());
        return 1;
    }

    const Case cases[] = {{1, 17, 257, 0}, {1, 1, 1, 0},   {3, 16, 4, 1},   {4, 33, 513, 0}, {5, 48, 65, 2},
                          {7, 17, 3, 1},   {9, 70, 130, 0}, {2, 31, 1000, 1}, {64, 40, 96, 0}, {2, 5, 131071, 2}};
    const edgevla_activation acts[] = {EDGEVLA_ACTIVATION_NONE, EDGEVLA_ACTIVATION_RELU,
                                       EDGEVLA_ACTIVATION_GELU_TANH};
    int failures = 0;
    for (const IsaKernels* isa : available_isas()) {
        select_isa(isa->name);
        for (int threads : {1, 3}) {
            ThreadPool::global().set_num_threads(threads);
            std::mt19937 rng(12345);
            int isa_failures = 0;
            for (const Case& c : cases) {
                for (edgevla_activation act : acts) {
                    for (int variant = 0; variant < 4; ++variant) {
                        isa_failures += check_gemm(*isa, c, variant & 1, variant & 2, act, rng);
                    }
                }
            }
            for (int64_t k : {1, 7, 16, 17, 100, 257}) {
                for (float magnitude : {1e-3f, 1.0f, 1e6f}) isa_failures += check_quantize(*isa, 5, k, magnitude, rng);
            }
            if (isa_failures == 0) std::printf("%s: all cases bit-identical (%d threads)\n", isa->name, threads);
            failures += isa_failures;
        }
    }
    return failures == 0 ? 0 : 1;
}
