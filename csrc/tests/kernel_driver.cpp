// A self-contained test driver of the CPU kernels, without Python: for every
// ISA this machine runs, the packed W8A8 GEMMs (dense, unstructured sparse,
// 2:4) must be bit-identical to the scalar reference
// (edgevla_gemm_s8s8_f32_ref on the dense weight), per-token quantization
// identical to edgevla_quantize_row_ref, and the float GEMMs (sparse and 2:4
// float32, int4 weight-only) within float32 summation error of
// edgevla_gemm_f32_ref / edgevla_gemm_w4_f32_ref (bound below), on odd
// shapes, empty to full sparsity, saturating values, per-tensor and
// per-token scales, with and without bias, every activation, into poisoned
// outputs followed by guard values. The int4 x int8 GEMM (W4A8) must be
// bit-identical to edgevla_gemm_w4a8_f32_ref.
//
// Its job is the ISAs the Python tests cannot reach on an x86-64 build host:
// tests/native/run_aarch64.sh cross-compiles it for aarch64 and runs it under
// qemu-aarch64 -cpu max, so the NEON dot-product path is tested on every
// change. Exit status 0 only when every case matches.
#include "attention_f32.h"
#include "cpu_kernels.h"
#include "cpu_ops.h"
#include "dispatch.h"
#include "gemm_ref.h"
#include "epilogue_math.h"
#include "layer_norm_s8.h"
#include "thread_pool.h"
#include "windows.h"

#include <algorithm>
#include <cmath>
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
    // A residual (row stride N + 3) on about half the cases, whichever the other options.
    const bool with_residual = ((c.m + c.n + static_cast<int64_t>(act) + (with_bias ? 1 : 0)) & 1) != 0;
    std::vector<float> residual(static_cast<size_t>(c.m * (c.n + 3)));
    for (float& v : residual) v = b_dist(rng);
    const edgevla_gemm_epilogue_f32 epilogue{
        w_scale.data(), a_scale.data(), per_token ? EDGEVLA_ACT_SCALE_PER_TOKEN : EDGEVLA_ACT_SCALE_PER_TENSOR,
        with_bias ? bias.data() : nullptr, act, with_residual ? residual.data() : nullptr, c.n + 3};

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

// LayerNorm (or RMSNorm) + static int8 quantization: the fast kernel's codes
// identical to the reference's, into outputs followed by guard bytes, on odd K
// (tails of every length), with and without beta, at scales that saturate.
int check_layer_norm_s8(int64_t m, int64_t k, float magnitude, float scale, bool with_beta, bool rms,
                        std::mt19937& rng) {
    std::normal_distribution<float> dist(0.5f * magnitude, magnitude), affine(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m * k)), gamma(static_cast<size_t>(k)), beta(static_cast<size_t>(k));
    for (float& v : x) v = dist(rng);
    for (float& v : gamma) v = affine(rng);
    for (float& v : beta) v = affine(rng);
    constexpr int8_t kGuardByte = 0x5A;
    std::vector<int8_t> q(static_cast<size_t>(m * k + kGuard), kGuardByte), q_ref(q);
    LayerNormS8Args args;
    args.m = m; args.k = k; args.x = x.data(); args.ldx = k; args.gamma = gamma.data();
    args.beta = with_beta ? beta.data() : nullptr; args.epsilon = 1e-5f; args.scale = scale; args.ldq = k;
    args.rms = rms;
    args.q = q.data();
    const int64_t bad = layer_norm_s8(args);
    args.q = q_ref.data();
    const int64_t bad_ref = layer_norm_s8_ref(args);
    bool guards = true;
    for (size_t i = static_cast<size_t>(m * k); i < q.size(); ++i) guards = guards && q[i] == kGuardByte;
    if (bad != -1 || bad_ref != -1 || !guards || q != q_ref) {
        std::printf("FAIL layer_norm_s8 m=%lld k=%lld magnitude=%g scale=%g beta=%d rms=%d\n", (long long)m,
                    (long long)k, magnitude, scale, with_beta, rms);
        return 1;
    }
    // The float LayerNorm: identical floats, nothing past its output.
    std::vector<float> y = poisoned(m * k), y_ref = poisoned(m * k);
    LayerNormF32Args f32;
    f32.m = m; f32.k = k; f32.x = x.data(); f32.ldx = k; f32.gamma = gamma.data();
    f32.beta = with_beta ? beta.data() : nullptr; f32.epsilon = 1e-5f; f32.ldy = k; f32.rms = rms;
    f32.y = y.data();
    const int64_t bad_f32 = layer_norm_f32(f32);
    f32.y = y_ref.data();
    const int64_t bad_f32_ref = layer_norm_f32_ref(f32);
    if (bad_f32 != -1 || bad_f32_ref != -1 || !guard_intact(y, m * k) ||
        std::memcmp(y.data(), y_ref.data(), static_cast<size_t>(m * k) * 4) != 0) {
        std::printf("FAIL layer_norm_f32 m=%lld k=%lld magnitude=%g beta=%d rms=%d\n", (long long)m, (long long)k,
                    magnitude, with_beta, rms);
        return 1;
    }
    // The quantization alone, with an infinity and a NaN in the data (they clamp; no undefined cast).
    const std::vector<float> finite_x = x;
    x[0] = -INFINITY;
    x[static_cast<size_t>(m * k - 1)] = NAN;
    QuantizeS8Args quant;
    quant.m = m; quant.k = k; quant.x = x.data(); quant.ldx = k; quant.scale = scale; quant.ldq = k;
    std::fill(q.begin(), q.end(), kGuardByte);
    std::fill(q_ref.begin(), q_ref.end(), kGuardByte);
    quant.q = q.data();
    quantize_s8(quant);
    quant.q = q_ref.data();
    quantize_s8_ref(quant);
    guards = true;
    for (size_t i = static_cast<size_t>(m * k); i < q.size(); ++i) guards = guards && q[i] == kGuardByte;
    if (!guards || q != q_ref || q[0] != -128 || q[static_cast<size_t>(m * k - 1)] != -128) {
        std::printf("FAIL quantize_s8 m=%lld k=%lld scale=%g\n", (long long)m, (long long)k, scale);
        return 1;
    }
    std::copy(finite_x.begin(), finite_x.end(), x.begin());
    x[static_cast<size_t>((m - 1) * k + k / 2)] = INFINITY;  // the last row's statistics are not finite
    if (layer_norm_s8(args) != m - 1 || layer_norm_s8_ref(args) != m - 1) {
        std::printf("FAIL layer_norm_s8 m=%lld k=%lld: an infinite row is not reported\n", (long long)m, (long long)k);
        return 1;
    }
    return 0;
}

// ---- the formats beyond dense int8 ----

const char* act_name(edgevla_activation act) {
    switch (act) {
        case EDGEVLA_ACTIVATION_NONE: return "none";
        case EDGEVLA_ACTIVATION_RELU: return "relu";
        case EDGEVLA_ACTIVATION_GELU_TANH: return "gelu_tanh";
        case EDGEVLA_ACTIVATION_GELU_ERF: return "gelu_erf";
    }
    return "?";
}

// Zeroes weights: sparsity 0..1 (unstructured), or 2:4 when two_four.
template <typename T>
void sparsify(std::vector<T>& w, int64_t n, int64_t k, double sparsity, bool two_four, std::mt19937& rng) {
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t col = 0; col < k; ++col) {
            if (!two_four && unit(rng) < sparsity) w[static_cast<size_t>(row * k + col)] = T(0);
        }
        if (!two_four) continue;
        for (int64_t g = 0; 4 * g < k; ++g) {  // keep a random pair of every group of four
            const int first = static_cast<int>(rng() % 4), second = (first + 1 + static_cast<int>(rng() % 3)) % 4;
            for (int p = 0; p < 4 && 4 * g + p < k; ++p) {
                if (p != first && p != second) w[static_cast<size_t>(row * k + 4 * g + p)] = T(0);
            }
        }
    }
}

// Float kernels vs the double-summed references: |got - ref| <= 1.2 (K + 8)
// 2^-24 (sum_k |w x| + |bias|) for the pre-activation (any float32 summation
// order), times 1.2 for GELU's slope, plus 16 ulp of the result for the
// activation's own rounding.
bool within_tolerance(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<double>& magnitude,
                      int64_t k, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
        const double bound = 1.2 * 1.2 * static_cast<double>(k + 8) * std::ldexp(1.0, -24) * magnitude[i] +
                             16.0 * std::ldexp(1.0, -24) * std::fabs(ref[i]) + 1e-30;
        if (!(std::fabs(static_cast<double>(got[i]) - ref[i]) <= bound)) return false;
    }
    return true;
}

struct FloatCase {
    int64_t m, n, k;
    double sparsity;
};

// sum_k |w[n][k] x[m][k]| + |bias[n]| per output.
std::vector<double> magnitudes(int64_t m, int64_t n, int64_t k, const std::vector<float>& x,
                               const std::vector<double>& w_abs, const float* bias) {
    std::vector<double> out(static_cast<size_t>(m * n));
    for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
            double sum = bias ? std::fabs(bias[col]) : 0.0;
            for (int64_t i = 0; i < k; ++i) sum += std::fabs(x[static_cast<size_t>(row * k + i)]) * w_abs[static_cast<size_t>(col * k + i)];
            out[static_cast<size_t>(row * n + col)] = sum;
        }
    }
    return out;
}

int report(const IsaKernels& isa, const char* kernel, const FloatCase& c, const char* problem, const char* act) {
    std::printf("FAIL %s %s m=%lld n=%lld k=%lld sparsity=%.2f act=%s: %s\n", isa.name, kernel, (long long)c.m,
                (long long)c.n, (long long)c.k, c.sparsity, act, problem);
    return 1;
}

// Unstructured sparse or 2:4 float32 (two_four), against edgevla_gemm_f32_ref.
int check_sparse_f32(const IsaKernels& isa, const FloatCase& c, bool two_four, bool with_bias, edgevla_activation act,
                     std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(c.m * c.k)), w(static_cast<size_t>(c.n * c.k)), bias(static_cast<size_t>(c.n));
    for (float& v : x) v = normal(rng);
    for (float& v : w) v = normal(rng);
    for (float& v : bias) v = normal(rng);
    sparsify(w, c.n, c.k, c.sparsity, two_four, rng);
    const float* b = with_bias ? bias.data() : nullptr;
    std::vector<float> expected = poisoned(c.m * c.n), got = poisoned(c.m * c.n);
    edgevla_gemm_f32_ref(c.m, c.n, c.k, x.data(), c.k, w.data(), c.k, b, act, expected.data(), c.n);

    std::vector<uint8_t> packed;
    std::string problem;
    if (two_four) {
        if (find_2to4_violation_f32(c.n, c.k, w.data(), c.k).found) return report(isa, "2to4 f32", c, "not 2:4", "");
        packed.resize(static_cast<size_t>(packed_2to4_bytes(c.n, c.k, 4)));
        pack_2to4_f32(c.n, c.k, w.data(), c.k, packed.data());
        Gemm2to4F32Args args;
        problem = validate_packed_2to4(packed.data(), packed.size(), EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16, &args.w);
        args.m = c.m; args.x = x.data(); args.ldx = c.k; args.epilogue = {b, act}; args.c = got.data(); args.ldc = c.n;
        if (problem.empty()) gemm_2to4_f32(args);
    } else {
        const SparseCounts counts = count_sparse_f32(c.n, c.k, w.data(), c.k);
        packed.resize(static_cast<size_t>(packed_sparse_bytes(c.n, c.k, counts, 4)));
        pack_sparse_f32(c.n, c.k, w.data(), c.k, counts, packed.data());
        GemmSparseF32Args args;
        problem = validate_packed_sparse(packed.data(), packed.size(), EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32, &args.w);
        args.m = c.m; args.x = x.data(); args.ldx = c.k; args.epilogue = {b, act}; args.c = got.data(); args.ldc = c.n;
        if (problem.empty()) gemm_sparse_f32(args);
    }
    const char* kernel = two_four ? "2to4 f32" : "sparse f32";
    if (!problem.empty()) return report(isa, kernel, c, ("packed " + problem).c_str(), act_name(act));
    if (!guard_intact(got, c.m * c.n)) return report(isa, kernel, c, "wrote past the end", act_name(act));
    std::vector<double> w_abs(w.size());
    for (size_t i = 0; i < w.size(); ++i) w_abs[i] = std::fabs(w[i]);
    if (!within_tolerance(got, expected, magnitudes(c.m, c.n, c.k, x, w_abs, b), c.k, c.m * c.n)) {
        return report(isa, kernel, c, "outside the tolerance of the reference", act_name(act));
    }
    return 0;
}

// Unstructured sparse or 2:4 int8: bit-identical to edgevla_gemm_s8s8_f32_ref.
int check_sparse_s8(const IsaKernels& isa, const Case& shape, double sparsity, bool two_four, bool per_token,
                    bool with_bias, edgevla_activation act, std::mt19937& rng) {
    const FloatCase c{shape.m, shape.n, shape.k, sparsity};
    std::vector<int8_t> a(static_cast<size_t>(c.m * c.k)), w(static_cast<size_t>(c.n * c.k));
    for (int8_t& v : a) v = draw(rng, shape.mode);
    for (int8_t& v : w) v = draw(rng, shape.mode);
    sparsify(w, c.n, c.k, sparsity, two_four, rng);
    std::uniform_real_distribution<float> w_dist(1e-4f, 1e-2f), a_dist(1e-3f, 1e-1f), b_dist(-1.0f, 1.0f);
    std::vector<float> w_scale(static_cast<size_t>(c.n)), a_scale(static_cast<size_t>(per_token ? c.m : 1));
    std::vector<float> bias(static_cast<size_t>(c.n));
    for (float& v : w_scale) v = w_dist(rng);
    for (float& v : a_scale) v = a_dist(rng);
    for (float& v : bias) v = b_dist(rng);
    // A residual (row stride N + 3) on about half the cases, whichever the other options.
    const bool with_residual = ((c.m + c.n + static_cast<int64_t>(act) + (with_bias ? 1 : 0)) & 1) != 0;
    std::vector<float> residual(static_cast<size_t>(c.m * (c.n + 3)));
    for (float& v : residual) v = b_dist(rng);
    const edgevla_gemm_epilogue_f32 epilogue{
        w_scale.data(), a_scale.data(), per_token ? EDGEVLA_ACT_SCALE_PER_TOKEN : EDGEVLA_ACT_SCALE_PER_TENSOR,
        with_bias ? bias.data() : nullptr, act, with_residual ? residual.data() : nullptr, c.n + 3};
    std::vector<float> expected = poisoned(c.m * c.n), got = poisoned(c.m * c.n);
    edgevla_gemm_s8s8_f32_ref(c.m, c.n, c.k, a.data(), c.k, w.data(), c.k, &epilogue, expected.data(), c.n);

    std::vector<uint8_t> packed;
    std::string problem;
    if (two_four) {
        packed.resize(static_cast<size_t>(packed_2to4_bytes(c.n, c.k, 1)));
        pack_2to4_s8(c.n, c.k, w.data(), c.k, w_scale.data(), packed.data());
        Gemm2to4S8Args args;
        problem = validate_packed_2to4(packed.data(), packed.size(), EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16, &args.w);
        args.m = c.m; args.a = a.data(); args.lda = c.k; args.epilogue = epilogue;
        args.epilogue.w_scale = args.w.w_scale; args.c = got.data(); args.ldc = c.n;
        if (problem.empty()) gemm_2to4_s8(args);
    } else {
        const SparseCounts counts = count_sparse_s8(c.n, c.k, w.data(), c.k);
        packed.resize(static_cast<size_t>(packed_sparse_bytes(c.n, c.k, counts, 1)));
        pack_sparse_s8(c.n, c.k, w.data(), c.k, w_scale.data(), counts, packed.data());
        GemmSparseS8Args args;
        problem = validate_packed_sparse(packed.data(), packed.size(), EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32, &args.w);
        args.m = c.m; args.a = a.data(); args.lda = c.k; args.epilogue = epilogue;
        args.epilogue.w_scale = args.w.w_scale; args.c = got.data(); args.ldc = c.n;
        if (problem.empty()) gemm_sparse_s8(args);
    }
    const char* kernel = two_four ? "2to4 s8" : "sparse s8";
    if (!problem.empty()) return report(isa, kernel, c, ("packed " + problem).c_str(), act_name(act));
    if (!guard_intact(got, c.m * c.n)) return report(isa, kernel, c, "wrote past the end", act_name(act));
    if (std::memcmp(got.data(), expected.data(), static_cast<size_t>(c.m * c.n) * 4) != 0) {
        return report(isa, kernel, c, "differs from the reference", act_name(act));
    }
    return 0;
}

// A random int4 weight of the primitives layout (every nibble, -8 and 7
// included), packed, with its activations and bias. x_mode 0: Gaussian;
// 1: +-3, 1.5 and a value rounding to -126.5 / 127 (every group saturates);
// 2: Gaussian with every other group of `group` zero; 3: Gaussian times
// 2^-110 (below the quantization's least amax); 4: Gaussian with a NaN in
// the last row.
struct W4Data {
    int64_t row_bytes, groups;
    std::vector<float> x, bias, scale;
    std::vector<uint8_t> qdata, packed;
    PackedW4View view;
    std::string problem;  // from validate_packed_w4
};

W4Data w4_data(const FloatCase& c, int64_t group, int x_mode, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> scale_dist(1e-3f, 1e-1f);
    W4Data d;
    d.row_bytes = (c.k + 1) / 2;
    d.groups = (c.k + group - 1) / group;
    d.x.resize(static_cast<size_t>(c.m * c.k));
    d.bias.resize(static_cast<size_t>(c.n));
    d.qdata.resize(static_cast<size_t>(c.n * d.row_bytes));
    d.scale.resize(static_cast<size_t>(c.n * d.groups));
    const float saturating[] = {-3.0f, 3.0f, 1.5f, -3.0f * 126.5f / 127.0f};
    for (int64_t i = 0; i < c.m * c.k; ++i) {
        float& v = d.x[static_cast<size_t>(i)];
        v = x_mode == 1 ? saturating[rng() % 4] : normal(rng);
        if (x_mode == 2 && (i % c.k) / group % 2 == 0) v = 0.0f;
        if (x_mode == 3) v *= std::ldexp(1.0f, -110);
    }
    if (x_mode == 4 && c.m * c.k > 0) d.x[static_cast<size_t>(c.m * c.k - 1 - (c.k - 1) / 2)] = NAN;
    for (float& v : d.bias) v = normal(rng);
    for (uint8_t& v : d.qdata) v = static_cast<uint8_t>(rng());
    for (float& v : d.scale) v = scale_dist(rng);
    d.packed.resize(static_cast<size_t>(packed_w4_bytes(c.n, c.k, group)));
    pack_w4(c.n, c.k, group, d.qdata.data(), d.row_bytes, d.scale.data(), d.groups, d.packed.data());
    d.problem = validate_packed_w4(d.packed.data(), d.packed.size(), &d.view);
    return d;
}

// int4 weight-only, against edgevla_gemm_w4_f32_ref on the primitives layout.
int check_w4(const IsaKernels& isa, const FloatCase& c, int64_t group, bool with_bias, edgevla_activation act,
             std::mt19937& rng) {
    const W4Data d = w4_data(c, group, 0, rng);
    if (!d.problem.empty()) return report(isa, "w4", c, ("packed " + d.problem).c_str(), act_name(act));
    const float* b = with_bias ? d.bias.data() : nullptr;
    std::vector<float> expected = poisoned(c.m * c.n), got = poisoned(c.m * c.n);
    edgevla_gemm_w4_f32_ref(c.m, c.n, c.k, group, d.x.data(), c.k, d.qdata.data(), d.row_bytes, d.scale.data(),
                            d.groups, b, act, expected.data(), c.n);
    GemmW4F32Args args;
    args.w = d.view;
    args.m = c.m; args.x = d.x.data(); args.ldx = c.k; args.epilogue = {b, act}; args.c = got.data(); args.ldc = c.n;
    gemm_w4_f32(args);
    if (!guard_intact(got, c.m * c.n)) return report(isa, "w4", c, "wrote past the end", act_name(act));
    std::vector<double> w_abs(static_cast<size_t>(c.n * c.k));
    for (int64_t row = 0; row < c.n; ++row) {
        for (int64_t i = 0; i < c.k; ++i) {
            const int nibble = (d.qdata[static_cast<size_t>(row * d.row_bytes + i / 2)] >> (4 * (i % 2))) & 0xF;
            const double scale = d.scale[static_cast<size_t>(row * d.groups + i / group)];
            w_abs[static_cast<size_t>(row * c.k + i)] = std::fabs((nibble < 8 ? nibble : nibble - 16) * scale);
        }
    }
    if (!within_tolerance(got, expected, magnitudes(c.m, c.n, c.k, d.x, w_abs, b), c.k, c.m * c.n)) {
        return report(isa, "w4", c, "outside the tolerance of the reference", act_name(act));
    }
    return 0;
}

// int4 x int8 (W4A8): bit-identical to edgevla_gemm_w4a8_f32_ref (NaN for NaN).
int check_w4a8(const IsaKernels& isa, const FloatCase& c, int64_t group, int x_mode, bool with_bias,
               edgevla_activation act, std::mt19937& rng) {
    const W4Data d = w4_data(c, group, x_mode, rng);
    if (!d.problem.empty()) return report(isa, "w4a8", c, ("packed " + d.problem).c_str(), act_name(act));
    const float* b = with_bias ? d.bias.data() : nullptr;
    std::vector<float> expected = poisoned(c.m * c.n), got = poisoned(c.m * c.n);
    edgevla_gemm_w4a8_f32_ref(c.m, c.n, c.k, group, d.x.data(), c.k, d.qdata.data(), d.row_bytes, d.scale.data(),
                              d.groups, b, act, expected.data(), c.n);
    GemmW4F32Args args;
    args.w = d.view;
    args.m = c.m; args.x = d.x.data(); args.ldx = c.k; args.epilogue = {b, act}; args.c = got.data(); args.ldc = c.n;
    gemm_w4a8_f32(args);
    if (!guard_intact(got, c.m * c.n)) return report(isa, "w4a8", c, "wrote past the end", act_name(act));
    for (int64_t i = 0; i < c.m * c.n; ++i) {
        const float g = got[static_cast<size_t>(i)], e = expected[static_cast<size_t>(i)];
        if (std::isnan(e) ? !std::isnan(g) : std::memcmp(&g, &e, 4) != 0) {
            return report(isa, "w4a8", c, ("differs from the reference, x mode " + std::to_string(x_mode)).c_str(),
                          act_name(act));
        }
    }
    return 0;
}

int check_formats(const IsaKernels& isa, std::mt19937& rng) {
    const edgevla_activation acts[] = {EDGEVLA_ACTIVATION_NONE, EDGEVLA_ACTIVATION_RELU,
                                       EDGEVLA_ACTIVATION_GELU_TANH, EDGEVLA_ACTIVATION_GELU_ERF};
    const FloatCase float_cases[] = {{1, 17, 257, 0.9}, {1, 1, 1, 0.0}, {3, 16, 32, 0.5}, {4, 33, 95, 0.0},
                                     {5, 48, 65, 1.0}, {7, 17, 3, 0.5}, {2, 70, 300, 0.9}, {9, 31, 64, 0.7}};
    int failures = 0;
    int variant = 0;
    for (const FloatCase& c : float_cases) {
        for (edgevla_activation act : acts) {
            const bool with_bias = (variant++ & 1) != 0;
            failures += check_sparse_f32(isa, c, false, with_bias, act, rng);
            failures += check_sparse_f32(isa, c, true, !with_bias, act, rng);
            for (int64_t group : {32, 64, 128}) {
                failures += check_w4(isa, c, group, with_bias, act, rng);
                failures += check_w4a8(isa, c, group, variant % 5, !with_bias, act, rng);
            }
        }
    }
    // W4A8 beyond the float cases: long rows (many groups, a partial last one), more rows than a 4-row tile.
    for (const FloatCase& c : {FloatCase{2, 33, 1000, 0.0}, FloatCase{9, 20, 77, 0.0}, FloatCase{1, 64, 3072, 0.0}}) {
        for (int x_mode = 0; x_mode < 5; ++x_mode) {
            failures += check_w4a8(isa, c, 32 << (x_mode % 3), x_mode, x_mode % 2 == 0, acts[x_mode % 4], rng);
        }
    }
    const Case int8_cases[] = {{1, 17, 257, 0}, {1, 1, 1, 0}, {3, 16, 4, 1}, {4, 33, 100, 0},
                               {5, 48, 65, 2}, {7, 17, 3, 1}, {2, 31, 1000, 1}, {6, 40, 96, 0}};
    for (const Case& c : int8_cases) {
        for (double sparsity : {0.0, 0.5, 0.9, 1.0}) {
            const edgevla_activation act = acts[variant % 4];
            const bool per_token = (variant & 1) != 0, with_bias = (variant & 2) != 0;
            ++variant;
            failures += check_sparse_s8(isa, c, sparsity, false, per_token, with_bias, act, rng);
        }
        for (edgevla_activation act : acts) {
            failures += check_sparse_s8(isa, c, 0.0, true, (variant & 1) != 0, (variant & 2) != 0, act, rng);
            ++variant;
        }
    }
    return failures;
}

// With the default minimum work per thread, small-vla's M = 32 layers (4.7M
// and 18.9M multiply-adds) stay on the calling thread; twice the largest splits.
// The float attention against its scalar reference, on q, k and v that are
// column views of one stacked (B, T, 3 H D + 5) array (as the runtime hands
// them over): |got - ref| <= 4e-6 (1 + max |scaled score|) max |v| (summation
// order and the polynomial exp), into a poisoned output followed by guards.
// `grouped`: k and v have one head per two query heads (h even); `masked`: a
// (T, S) bias broadcast over batch and heads hides the keys past the diagonal
// (-inf) and shifts the others.
int check_attention(const IsaKernels& isa, int64_t b, int64_t t, int64_t s, int64_t h, int64_t d, int scale_mode,
                    bool grouped, bool masked, std::mt19937& rng) {
    const int64_t width = 3 * h * d + 5, tokens = std::max(t, s);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::vector<float> stacked(static_cast<size_t>(b * tokens * width));
    for (float& x : stacked) x = normal(rng);
    AttentionF32Args args;
    args.batch = b;
    args.t = t;
    args.s = s;
    args.heads = h;
    args.d = d;
    args.q = stacked.data();
    args.k = stacked.data() + h * d;
    args.v = stacked.data() + 2 * h * d;
    args.q_strides = args.k_strides = args.v_strides = AttentionStrides{tokens * width, width, d};
    args.out_strides = AttentionStrides{t * h * d, h * d, d};
    args.scale_mode = scale_mode;
    args.scale = scale_mode == kAttentionDivide ? 8.0f : 0.125f;
    args.kv_heads = grouped ? h / 2 : 0;
    std::vector<float> bias(static_cast<size_t>(t * s));
    double bias_max = 0.0;
    for (int64_t i = 0; i < t; ++i) {
        for (int64_t j = 0; j < s; ++j) {
            const float shift = normal(rng);
            bias[size_t(i * s + j)] = j > i + s - t && j > 0 ? -INFINITY : shift;  // key 0 always visible
            if (j <= i + s - t || j == 0) bias_max = std::max(bias_max, std::fabs(double(shift)));
        }
    }
    if (masked) {
        args.bias = bias.data();
        args.bias_strides = AttentionBiasStrides{0, 0, s};
    }
    const int64_t count = b * t * h * d;
    std::vector<float> got = poisoned(count), ref = poisoned(count);
    args.out = got.data();
    attention_f32(args);
    args.out = ref.data();
    attention_f32_ref(args);
    double v_max = 0.0, score_max = 0.0;
    for (int64_t bb = 0; bb < b; ++bb) {
        for (int64_t j = 0; j < tokens; ++j) {
            const float* row = stacked.data() + bb * tokens * width + j * width;
            for (int64_t x = 0; x < h * d; ++x) v_max = std::max(v_max, std::fabs(double(row[2 * h * d + x])));
        }
        for (int64_t hh = 0; hh < h; ++hh) {
            const int64_t g = attention_kv_head(args, hh);
            for (int64_t i = 0; i < t; ++i) {
                for (int64_t j = 0; j < s; ++j) {
                    double dot = 0.0;
                    for (int64_t x = 0; x < d; ++x) {
                        dot += double(args.q[bb * tokens * width + i * width + hh * d + x]) *
                               double(args.k[bb * tokens * width + j * width + g * d + x]);
                    }
                    score_max = std::max(score_max, std::fabs(dot) * (scale_mode == kAttentionNoScale ? 1.0 : 0.125));
                }
            }
        }
    }
    const double bound = 4e-6 * (1.0 + score_max + (masked ? bias_max : 0.0)) * std::max(v_max, 1.0);
    for (int64_t i = 0; i < count; ++i) {
        if (!(std::fabs(double(got[size_t(i)]) - double(ref[size_t(i)])) <= bound)) {
            std::printf("FAIL %s attention b=%lld t=%lld s=%lld h=%lld d=%lld scale=%d grouped=%d masked=%d: %g vs %g "
                        "at %lld\n", isa.name, (long long)b, (long long)t, (long long)s, (long long)h, (long long)d,
                        scale_mode, grouped, masked, double(got[size_t(i)]), double(ref[size_t(i)]), (long long)i);
            return 1;
        }
    }
    if (!guard_intact(got, count) || !guard_intact(ref, count)) {
        std::printf("FAIL %s attention: wrote past its output\n", isa.name);
        return 1;
    }
    return 0;
}

// The row softmax against its reference: relative error 4e-5 (the reference
// sums K terms in order), into a poisoned output followed by guards.
int check_softmax(const IsaKernels& isa, int64_t m, int64_t k, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 4.0f);
    std::vector<float> x(static_cast<size_t>(m * (k + 3)));
    for (float& v : x) v = normal(rng);
    std::vector<float> got = poisoned(m * k), ref = poisoned(m * k);
    SoftmaxF32Args args;
    args.m = m; args.k = k; args.x = x.data(); args.ldx = k + 3; args.ldy = k;
    args.y = got.data();
    softmax_f32(args);
    args.y = ref.data();
    softmax_f32_ref(args);
    for (int64_t i = 0; i < m * k; ++i) {
        const double g = got[size_t(i)], r = ref[size_t(i)];
        if (!(std::fabs(g - r) <= 4e-5 * std::fabs(r) + 1e-12)) {
            std::printf("FAIL %s softmax m=%lld k=%lld: %g vs %g\n", isa.name, (long long)m, (long long)k, g, r);
            return 1;
        }
    }
    if (!guard_intact(got, m * k)) {
        std::printf("FAIL %s softmax: wrote past its output\n", isa.name);
        return 1;
    }
    return 0;
}

// The gated product act(gate) * value: the active table's copy identical to the
// baseline one, on the two column halves of one (m, 2n + 3) array (as a fused
// gate-up layer's output is read), with and without a value, values from -90
// to 90 (every clamp of the exp), into a poisoned output followed by guards.
int check_gated(const IsaKernels& isa, int64_t m, int64_t n, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 30.0f);
    const int64_t ld = 2 * n + 3;
    std::vector<float> x(static_cast<size_t>(m * ld));
    for (float& v : x) v = normal(rng);
    for (GatedActivation act : {GatedActivation::silu, GatedActivation::gelu_tanh, GatedActivation::gelu_erf}) {
        for (bool with_value : {true, false}) {
            std::vector<float> got = poisoned(m * n), ref = poisoned(m * n);
            GatedF32Args args;
            args.m = m; args.n = n; args.gate = x.data(); args.ld_gate = ld; args.ld_out = n;
            args.value = with_value ? x.data() + n : nullptr; args.ld_value = ld; args.activation = act;
            args.out = got.data();
            gated_f32(args);
            args.out = ref.data();
            gated_f32_ref(args);
            if (!guard_intact(got, m * n) || std::memcmp(got.data(), ref.data(), size_t(m * n) * 4) != 0) {
                std::printf("FAIL %s gated m=%lld n=%lld act=%d value=%d\n", isa.name, (long long)m, (long long)n,
                            int(act), with_value);
                return 1;
            }
        }
    }
    return 0;
}

// Rotary embeddings: the active table's copy identical to the baseline one and to
// the graph's arithmetic spelled out here, rows a stride apart, tables of P rows
// repeating, into a poisoned output followed by guards.
int check_rotary(const IsaKernels& isa, int64_t m, int64_t p, int64_t d, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 2.0f);
    const int64_t ld = d + 3;
    std::vector<float> x(static_cast<size_t>(m * ld)), cos(static_cast<size_t>(p * d)), sin(cos.size());
    for (float& v : x) v = normal(rng);
    for (float& v : cos) v = normal(rng);
    for (float& v : sin) v = normal(rng);
    std::vector<float> got = poisoned(m * d), ref = poisoned(m * d);
    RotaryF32Args args;
    args.m = m; args.d = d; args.p = p; args.x = x.data(); args.ld_x = ld; args.cos = cos.data(); args.ld_cos = d;
    args.sin = sin.data(); args.ld_sin = d; args.ld_out = d;
    args.out = got.data();
    rotary_f32(args);
    args.out = ref.data();
    rotary_f32_ref(args);
    bool graph = true;
    const int64_t h = d / 2;
    for (int64_t r = 0; r < m; ++r) {
        const float* xr = x.data() + r * ld;
        const float* c = cos.data() + (r % p) * d;
        const float* s = sin.data() + (r % p) * d;
        for (int64_t j = 0; j < d; ++j) {
            const float rotated = j < h ? -xr[j + h] : xr[j - h];
            const float product = xr[j] * c[j];
            const float want = product + rotated * s[j];
            graph = graph && std::memcmp(&want, &got[size_t(r * d + j)], 4) == 0;
        }
    }
    if (!guard_intact(got, m * d) || !graph || std::memcmp(got.data(), ref.data(), size_t(m * d) * 4) != 0) {
        std::printf("FAIL %s rotary m=%lld p=%lld d=%lld\n", isa.name, (long long)m, (long long)p, (long long)d);
        return 1;
    }
    return 0;
}

// The compute-roof loops (cpu_kernels.h) compute what they time: sums known in closed form.
int check_roof_loops(const IsaKernels& isa) {
    int failures = 0;
    for (int64_t iterations : {0, 1, 1000}) {
        if (isa.int8_peak != nullptr && isa.int8_peak(iterations) != -(kInt8PeakMacsPerIteration / 4) * iterations) {
            std::printf("FAIL %s int8 roof loop, %lld iterations\n", isa.name, (long long)iterations);
            ++failures;
        }
        if (isa.f32_peak != nullptr &&
            isa.f32_peak(iterations) != static_cast<double>(kF32PeakFmasPerIteration * iterations)) {
            std::printf("FAIL %s float32 roof loop, %lld iterations\n", isa.name, (long long)iterations);
            ++failures;
        }
    }
    return failures;
}

// The dense int8 GEMM over a convolution's windows with its output stage
// (cpu_ops.h: each thread gathers its slabs of rows; ReLU after the residual,
// then the codes) against gather_windows into the whole matrix, the reference
// GEMM, then ReLU and quantize_s8_ref on the whole output: bit for bit, into
// guarded outputs. 2-d, 3x3 and 7x7 stride 2 (windows in the padding), per-token
// scales (each slab reads its own rows'), more rows than one slab.
int check_window_gemm(const IsaKernels& isa, std::mt19937& rng) {
    struct Shape {
        int64_t batch, h, w, c, kernel, stride, pad, n;
    };
    const Shape shapes[] = {{1, 12, 11, 8, 3, 1, 1, 24}, {2, 9, 9, 3, 7, 2, 3, 17}, {1, 1, 1, 5, 3, 1, 1, 16}};
    std::uniform_real_distribution<float> w_dist(1e-4f, 1e-2f), a_dist(1e-3f, 1e-1f), b_dist(-1.0f, 1.0f);
    for (const Shape& sh : shapes) {
        WindowSource windows;
        WindowGeometry& g = windows.geometry;
        g.dims = 2, g.batch = sh.batch, g.channels = sh.c;
        for (int i = 0; i < 2; ++i) {
            g.in[i] = i == 0 ? sh.h : sh.w;
            g.kernel[i] = sh.kernel, g.stride[i] = sh.stride, g.dilation[i] = 1, g.pad_begin[i] = sh.pad;
            g.out[i] = (g.in[i] + 2 * sh.pad - sh.kernel) / sh.stride + 1;
        }
        const int64_t m = sh.batch * g.out[0] * g.out[1], k = sh.kernel * sh.kernel * sh.c, n = sh.n;
        std::vector<int8_t> x(static_cast<size_t>(sh.batch * sh.h * sh.w * sh.c)), w(static_cast<size_t>(n * k));
        for (int8_t& v : x) v = draw(rng, 0);
        for (int8_t& v : w) v = draw(rng, 0);
        std::vector<int8_t> rows(static_cast<size_t>(m * k));
        gather_windows(g, 1, reinterpret_cast<const uint8_t*>(x.data()), reinterpret_cast<uint8_t*>(rows.data()));
        std::vector<float> w_scale(static_cast<size_t>(n)), bias(static_cast<size_t>(n));
        std::vector<float> a_scale(static_cast<size_t>(m)), residual(static_cast<size_t>(m * n));
        for (float& v : w_scale) v = w_dist(rng);
        for (float& v : a_scale) v = a_dist(rng);
        for (float& v : bias) v = b_dist(rng);
        for (float& v : residual) v = b_dist(rng);
        const edgevla_gemm_epilogue_f32 epilogue{w_scale.data(), a_scale.data(), EDGEVLA_ACT_SCALE_PER_TOKEN,
                                                 bias.data(), EDGEVLA_ACTIVATION_NONE, residual.data(), n};
        std::vector<float> expected = poisoned(m * n);
        edgevla_gemm_s8s8_f32_ref(m, n, k, rows.data(), k, w.data(), k, &epilogue, expected.data(), n);
        for (int64_t i = 0; i < m * n; ++i) expected[size_t(i)] = edgevla_relu_f32(expected[size_t(i)]);
        const float code_scale = 0.02f;
        std::vector<int8_t> expected_codes(static_cast<size_t>(m * n));
        QuantizeS8Args q;
        q.m = m, q.k = n, q.x = expected.data(), q.ldx = n, q.scale = code_scale;
        q.q = expected_codes.data(), q.ldq = n;
        quantize_s8_ref(q);

        std::vector<uint8_t> packed(static_cast<size_t>(packed_s8_bytes(n, k)));
        pack_weight_s8(n, k, w.data(), k, w_scale.data(), packed.data());
        GemmPackedArgs args;
        validate_packed_s8(packed.data(), packed.size(), &args.w);
        std::vector<float> got = poisoned(m * n);
        std::vector<int8_t> codes(static_cast<size_t>(m * n + kGuard), int8_t{77});
        args.m = m;
        args.epilogue = epilogue;
        args.epilogue.w_scale = args.w.w_scale;
        args.c = got.data();
        args.ldc = n;
        windows.x = x.data();
        GemmOutputStage stage;
        stage.relu = true, stage.codes = codes.data(), stage.ldq = n, stage.scale = code_scale;
        gemm_packed_s8_f32(args, stage, &windows);
        bool guards = guard_intact(got, m * n);
        for (int64_t i = m * n; i < m * n + kGuard; ++i) guards = guards && codes[size_t(i)] == 77;
        if (!guards || std::memcmp(got.data(), expected.data(), static_cast<size_t>(m * n) * 4) != 0 ||
            std::memcmp(codes.data(), expected_codes.data(), static_cast<size_t>(m * n)) != 0) {
            std::printf("FAIL %s windowed GEMM %lldx%lld kernel %lld stride %lld: %s\n", isa.name, (long long)sh.h,
                        (long long)sh.w, (long long)sh.kernel, (long long)sh.stride,
                        guards ? "differs from gather + reference + stage" : "wrote past its outputs");
            return 1;
        }
    }
    return 0;
}

int check_small_gemms_stay_on_one_thread() {
    const int64_t least = kDefaultMinMacsPerThread;
    if (gemm_part_count(2 * least - 1, 24, 3) != 1 || gemm_part_count(2 * least, 96, 3) != 2 ||
        gemm_part_count(3 * least, 96, 3) != 3 || gemm_part_count(100 * least, 96, 3) != 3 ||
        gemm_part_count(100 * least, 2, 3) != 2 || gemm_part_count(100 * least, 1, 3) != 1) {
        std::printf("FAIL gemm_part_count: the minimum work per thread is not applied\n");
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
                          {7, 17, 3, 1},   {9, 70, 130, 0}, {2, 31, 1000, 1}, {64, 40, 96, 0}, {2, 5, 131071, 2},
                          // AMX tiles (16 rows x 64 k x 16 channels, panels of 32 rows): tails of each
                          {15, 15, 63, 0}, {16, 16, 64, 1}, {17, 17, 65, 0}, {33, 33, 130, 2}, {48, 1, 5, 0},
                          {17, 4, 131071, 2}};
    const edgevla_activation acts[] = {EDGEVLA_ACTIVATION_NONE, EDGEVLA_ACTIVATION_RELU,
                                       EDGEVLA_ACTIVATION_GELU_TANH, EDGEVLA_ACTIVATION_GELU_ERF};
    int failures = 0;
    for (const IsaKernels* isa : available_isas()) {
        select_isa(isa->name);
        for (int threads : {1, 3}) {
            ThreadPool::global().set_num_threads(threads);
            set_min_macs_per_thread(1);  // split even the small cases, so the 3-thread run tests the tiling
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
            for (int64_t k : {1, 7, 16, 17, 100, 257, 384}) {
                for (float scale : {0.01f, 0.05f, 1.0f}) {
                    for (bool rms : {false, true}) {
                        isa_failures += check_layer_norm_s8(3, k, 1.0f, scale, k % 2 == 0, rms, rng);
                        isa_failures += check_layer_norm_s8(2, k, 1e4f, scale, k % 2 == 1, rms, rng);
                    }
                }
            }
            const int64_t shapes[][5] = {{1, 1, 1, 1, 1},  {1, 6, 6, 6, 64},  {2, 5, 7, 3, 67}, {1, 32, 32, 6, 64},
                                         {1, 17, 33, 2, 16}, {1, 3, 40, 1, 100}, {3, 4, 4, 5, 3}};
            int attention_failures = 0;
            for (const auto& sh : shapes) {
                for (int mode : {kAttentionNoScale, kAttentionMultiply, kAttentionDivide}) {
                    attention_failures += check_attention(*isa, sh[0], sh[1], sh[2], sh[3], sh[4], mode, false, false,
                                                          rng);
                }
                attention_failures += check_attention(*isa, sh[0], sh[1], sh[2], sh[3], sh[4], kAttentionMultiply,
                                                      sh[3] % 2 == 0, true, rng);
            }
            for (int64_t k : {1, 7, 16, 33, 1024}) attention_failures += check_softmax(*isa, 3, k, rng);
            if (attention_failures == 0) {
                std::printf("%s: attention and softmax within their bounds of the references (%d threads)\n", isa->name,
                            threads);
            }
            isa_failures += attention_failures;
            for (int64_t n : {1, 7, 16, 33, 352}) isa_failures += check_gated(*isa, 3, n, rng);
            for (int64_t d : {2, 10, 32, 64}) isa_failures += check_rotary(*isa, 12, 4, d, rng);
            const int format_failures = check_formats(*isa, rng);
            if (isa_failures == 0) std::printf("%s: all cases bit-identical (%d threads)\n", isa->name, threads);
            if (format_failures == 0) {
                std::printf("%s: sparse, 2:4, int4 and W4A8 kernels match their references (%d threads)\n", isa->name,
                            threads);
            }
            isa_failures += format_failures;
            isa_failures += check_roof_loops(*isa);
            isa_failures += check_window_gemm(*isa, rng);
            failures += isa_failures;
        }
    }
    ThreadPool::global().set_num_threads(3);
    set_min_macs_per_thread(kDefaultMinMacsPerThread);
    failures += check_small_gemms_stay_on_one_thread();
    return failures == 0 ? 0 : 1;
}
