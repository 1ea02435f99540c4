// What the emulated-kernel drivers (cuda_emulated_*.cpp) share: reading a
// strided output back against a reference, one line per case, and the
// device models their launcher runs use.
#pragma once

#include "cuda/emulate/cuda_runtime_emulate.h"

#include "gemm_s8s8.h"  // edgevla_activation

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgevla::cuda::emulate {

// An output of `rows` x `cols` with row stride `ld`, allocated as
// poisoned_output((rows - 1) * ld + cols). Every element (r, c < cols) must
// satisfy ok(r, c, value) (printing why not); every gap (c >= cols) must
// still hold the poison. Prints "name: ok" or "name: FAIL"; returns 0 or 1.
template <typename T, typename Ok>
int check_output(const T* out, int64_t rows, int64_t cols, int64_t ld, const std::string& name, Ok ok) {
    int bad = 0;
    const int64_t count = (rows - 1) * ld + cols;
    for (int64_t i = 0; i < count; ++i) {
        const int64_t r = i / ld, c = i % ld;
        if (c >= cols) {
            if (!is_poison(out[i]) && bad++ < 3) std::printf("  wrote the gap at row %ld col %ld\n", long(r), long(c));
        } else if (!ok(r, c, out[i]) && bad++ < 3) {
            std::printf("  at row %ld col %ld\n", long(r), long(c));
        }
    }
    std::printf("%s: %s\n", name.c_str(), bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

// The device models the launchers run on: a server GPU, an Orin-like part,
// and one so small that most grids do not fit in one wave.
struct NamedModel {
    const char* name;
    DeviceModel model;
};
inline const NamedModel kDeviceModels[] = {
    {"H200", {0, 132, 9, 0, 64, 32}}, {"Orin", {1, 16, 8, 7, 48, 16}}, {"2-SM", {2, 2, 8, 7, 16, 2}}};

// The reference of a float32 output (M x N): each element's double sum plus
// bias, and the error it may carry: 1e-5 of the magnitude of its terms
// (float32 sums added in another order, float16 splits).
struct FloatReference {
    int64_t m = 0, n = 0;
    std::vector<double> expected, bound;  // [m][n]; expected before the activation

    // terms(r, c, sum, magnitude) adds output (r, c)'s terms and their magnitudes.
    template <typename Terms>
    static FloatReference of(int64_t m, int64_t n, const std::vector<float>& bias, Terms terms) {
        FloatReference ref;
        ref.m = m, ref.n = n;
        ref.expected.assign(static_cast<size_t>(m * n), 0.0);
        ref.bound.assign(static_cast<size_t>(m * n), 0.0);
        for (int64_t r = 0; r < m; ++r) {
            for (int64_t c = 0; c < n; ++c) {
                double sum = 0.0, magnitude = 0.0;
                terms(r, c, sum, magnitude);
                ref.expected[r * n + c] = sum + bias[c];
                ref.bound[r * n + c] = 1e-5 * magnitude + 1e-37;
            }
        }
        return ref;
    }

    // y (row stride ld) within the bounds, through `activation` (none or relu),
    // its gaps still poisoned.
    int check(const float* y, int64_t ld, int activation, const std::string& name) const {
        return check_output(y, m, n, ld, name, [&](int64_t r, int64_t c, float got) {
            double want = expected[r * n + c];
            if (activation == EDGEVLA_ACTIVATION_RELU) want = want > 0.0 ? want : 0.0;
            if (std::fabs(static_cast<double>(got) - want) <= bound[r * n + c]) return true;
            std::printf("  %.9g, expected %.9g (bound %.3g)\n", double(got), want, bound[r * n + c]);
            return false;
        });
    }
};

// A launcher call that must throw std::invalid_argument with `message` in
// its text, and launch nothing. Prints "name: ok" or "name: FAIL".
template <typename Call>
int check_refusal(const std::string& name, const char* message, Call call) {
    launch_log().clear();
    bool ok = false;
    try {
        call();
    } catch (const std::invalid_argument& error) {
        ok = std::string(error.what()).find(message) != std::string::npos;
        if (!ok) std::printf("  said: %s\n", error.what());
    }
    ok = ok && launch_log().empty();
    std::printf("%s: %s\n", name.c_str(), ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
}

// Runs `call` (one launcher call) on `model`, and returns what it launched.
template <typename Call>
std::string launched_on(const DeviceModel& model, Call call) {
    device_model() = model;
    launch_log().clear();
    call();
    return describe_launches();
}

}  // namespace edgevla::cuda::emulate
