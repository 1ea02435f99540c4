// Python bindings of LayerNorm fused with static int8 quantization and of
// that quantization alone (layer_norm_s8.h): the fast kernels on the active
// ISA and their scalar references, validated the same way, run without the
// GIL on the caller's memory.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "layer_norm_s8.h"

#include <cmath>
#include <string>

namespace edgevla::bindings {
namespace {

using LayerNormKernel = int64_t (*)(const LayerNormS8Args&);

// gamma (K,), beta (K,) or None and epsilon (finite, >= 0), validated.
struct NormAffine {
    ArrayArg gamma, beta;
    bool has_beta = false;
    float epsilon = 0.0f;
    const float* beta_data() const { return has_beta ? beta.data<const float>() : nullptr; }
    const ArrayArg* beta_input() const { return has_beta ? &beta : nullptr; }
};

NormAffine norm_affine(const py::object& gamma, const py::object& beta, int64_t k, double epsilon) {
    NormAffine a;
    a.gamma = vector_arg(gamma, "gamma", Scalar::float32);
    if (a.gamma.size() != k) {
        throw py::value_error("gamma must hold one value per column of x (K = " + std::to_string(k) + "), got " +
                              std::to_string(a.gamma.size()));
    }
    a.has_beta = !beta.is_none();
    if (a.has_beta) {
        a.beta = vector_arg(beta, "beta", Scalar::float32);
        if (a.beta.size() != k) {
            throw py::value_error("beta must hold one value per column of x (K = " + std::to_string(k) + "), got " +
                                  std::to_string(a.beta.size()));
        }
    }
    a.epsilon = static_cast<float>(epsilon);
    if (!(a.epsilon >= 0.0f && std::isfinite(a.epsilon))) {
        throw py::value_error("epsilon must be finite and >= 0, got " + std::to_string(epsilon));
    }
    return a;
}

[[noreturn]] void throw_not_finite(int64_t row) {
    throw py::value_error("x must be finite, but the statistics of row " + std::to_string(row) +
                          " are not (a NaN or an infinity in the row, or a sum past float32's range)");
}

// A LayerNorm kernel on validated x (M, K), gamma, beta and epsilon, into `out` (out_scalar); `finish`
// sets what only that kernel's arguments hold (the output pointer, the int8 scale).
template <typename Args, typename Finish>
py::object run_norm(int64_t (*kernel)(const Args&), const py::object& x, const py::object& gamma,
                    const py::object& beta, double epsilon, bool rms, const py::object& out, Scalar out_scalar,
                    Finish finish) {
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    const int64_t m = x_arg.rows, k = x_arg.cols;
    if (k < 1) throw py::value_error("x must have at least one column (LayerNorm over K = 0 values is undefined)");
    const NormAffine affine = norm_affine(gamma, beta, k, epsilon);
    const OutputArg o = output_arg(out, out_scalar, m, k, {&x_arg, &affine.gamma, affine.beta_input()});
    Args args;
    args.m = m;
    args.k = k;
    args.x = x_arg.data<const float>();
    args.ldx = x_arg.ld;
    args.gamma = affine.gamma.data<const float>();
    args.beta = affine.beta_data();
    args.epsilon = affine.epsilon;
    args.rms = rms;
    finish(args, o.array);
    int64_t bad_row;
    {
        py::gil_scoped_release no_gil;
        bad_row = kernel(args);
    }
    if (bad_row >= 0) throw_not_finite(bad_row);
    return o.object;
}

py::object run_layer_norm_s8(LayerNormKernel kernel, const py::object& x, const py::object& gamma,
                             const py::object& beta, double epsilon, double scale, bool rms, const py::object& out) {
    const float scale_f = static_cast<float>(scale);
    if (!(scale_f > 0.0f && std::isfinite(scale_f))) {
        throw py::value_error("scale must be finite and > 0 in float32, got " + std::to_string(scale));
    }
    return run_norm(kernel, x, gamma, beta, epsilon, rms, out, Scalar::int8, [scale_f](LayerNormS8Args& args,
                                                                                const ArrayArg& q) {
        args.scale = scale_f;
        args.q = q.data<int8_t>();
        args.ldq = q.ld;
    });
}

using LayerNormF32Fn = int64_t (*)(const LayerNormF32Args&);

py::object run_layer_norm_f32(LayerNormF32Fn kernel, const py::object& x, const py::object& gamma,
                              const py::object& beta, double epsilon, bool rms, const py::object& out) {
    return run_norm(kernel, x, gamma, beta, epsilon, rms, out, Scalar::float32, [](LayerNormF32Args& args,
                                                                            const ArrayArg& y) {
        args.y = y.data<float>();
        args.ldy = y.ld;
    });
}

using QuantizeKernel = void (*)(const QuantizeS8Args&);

py::object run_quantize_s8(QuantizeKernel kernel, const py::object& x, double scale, const py::object& out) {
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    const float scale_f = static_cast<float>(scale);
    if (!(scale_f > 0.0f && std::isfinite(scale_f))) {
        throw py::value_error("scale must be finite and > 0 in float32, got " + std::to_string(scale));
    }
    const OutputArg q = output_arg(out, Scalar::int8, x_arg.rows, x_arg.cols, {&x_arg});
    QuantizeS8Args args;
    args.m = x_arg.rows;
    args.k = x_arg.cols;
    args.x = x_arg.data<const float>();
    args.ldx = x_arg.ld;
    args.scale = scale_f;
    args.q = q.array.data<int8_t>();
    args.ldq = q.array.ld;
    {
        py::gil_scoped_release no_gil;
        kernel(args);
    }
    return q.object;
}

}  // namespace

void register_norms(py::module_& m) {
    const char* doc =
        "LayerNorm of each row of float32 x (M, K) with gamma (K,) and beta (K,) or None, then int8 quantization "
        "with one per-tensor scale: clamp(round_half_even(y / scale), -128, 127), as LayerNormalization -> "
        "QuantizeLinear (zero point 0); rms=True: RMSNorm (no mean subtracted). Arithmetic spelled out in "
        "csrc/layer_norm_s8.h. Returns out, or a new int8 (M, K) array.";
    m.def(
        "layer_norm_s8",
        [](const py::object& x, const py::object& gamma, const py::object& beta, double epsilon, double scale,
           const py::object& out, bool rms) {
            return run_layer_norm_s8(layer_norm_s8, x, gamma, beta, epsilon, scale, rms, out);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("epsilon"), py::arg("scale"),
        py::arg("out") = py::none(), py::arg("rms") = false, doc);
    m.def(
        "layer_norm_s8_ref",
        [](const py::object& x, const py::object& gamma, const py::object& beta, double epsilon, double scale,
           const py::object& out, bool rms) {
            return run_layer_norm_s8(layer_norm_s8_ref, x, gamma, beta, epsilon, scale, rms, out);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::kw_only(), py::arg("epsilon"), py::arg("scale"),
        py::arg("out") = py::none(), py::arg("rms") = false, "The scalar reference of layer_norm_s8: identical codes, one element at a time.");
    m.def(
        "layer_norm_f32",
        [](const py::object& x, const py::object& gamma, const py::object& beta, double epsilon,
           const py::object& out, bool rms) {
            return run_layer_norm_f32(layer_norm_f32, x, gamma, beta, epsilon, rms, out);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("epsilon"),
        py::arg("out") = py::none(), py::arg("rms") = false,
        "LayerNorm of each row of float32 x (M, K), float32 out: ((x - mean) * inv) * gamma + beta with the "
        "statistics of layer_norm_s8 (rms=True: RMSNorm, x * inv * gamma + beta), identical to layer_norm_f32_ref. "
        "Returns out, or a new float32 (M, K) array.");
    m.def(
        "layer_norm_f32_ref",
        [](const py::object& x, const py::object& gamma, const py::object& beta, double epsilon,
           const py::object& out, bool rms) {
            return run_layer_norm_f32(layer_norm_f32_ref, x, gamma, beta, epsilon, rms, out);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::kw_only(), py::arg("epsilon"),
        py::arg("out") = py::none(), py::arg("rms") = false, "The scalar reference of layer_norm_f32: identical floats.");
    m.def(
        "quantize_s8",
        [](const py::object& x, double scale, const py::object& out) {
            return run_quantize_s8(quantize_s8, x, scale, out);
        },
        py::arg("x"), py::arg("scale"), py::arg("out") = py::none(),
        "Static int8 quantization of float32 x (M, K) with one per-tensor scale, as QuantizeLinear with zero point 0: "
        "clamp(round_half_even(x / scale), -128, 127), NaN -> -128. Returns out, or a new int8 (M, K) array.");
    m.def(
        "quantize_s8_ref",
        [](const py::object& x, double scale, const py::object& out) {
            return run_quantize_s8(quantize_s8_ref, x, scale, out);
        },
        py::arg("x"), py::kw_only(), py::arg("scale"), py::arg("out") = py::none(),
        "The scalar reference of quantize_s8: identical codes.");
}

}  // namespace edgevla::bindings
