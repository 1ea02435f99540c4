// Python bindings of the reference int8 GEMMs: validate, then run the kernel
// without the GIL on the caller's memory.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "gemm_ref.h"

#include <string>

namespace edgevla::bindings {
namespace {

// A and W of one int8 GEMM, checked against each other.
struct GemmOperands {
    ArrayArg a;
    ArrayArg w;
    int64_t m() const { return a.rows; }
    int64_t n() const { return w.rows; }
    int64_t k() const { return a.cols; }
};

GemmOperands gemm_operands(py::handle a_obj, py::handle w_obj) {
    GemmOperands ops{matrix_arg(a_obj, "a", "(M, K)", Scalar::int8, Access::read),
                     matrix_arg(w_obj, "w", "(N, K)", Scalar::int8, Access::read)};
    if (ops.a.cols != ops.w.cols) {
        throw py::value_error("a is (M, K) and w is (N, K) (the nn.Linear weight layout), so their K must match: "
                              "a has K = " + std::to_string(ops.a.cols) + ", w has K = " +
                              std::to_string(ops.w.cols));
    }
    if (ops.k() > EDGEVLA_GEMM_S8S8_MAX_K) {
        throw py::value_error("K = " + std::to_string(ops.k()) + " is too large: the int32 accumulator is exact "
                              "only up to K = " + std::to_string(EDGEVLA_GEMM_S8S8_MAX_K));
    }
    return ops;
}

py::object gemm_s8s8_s32_ref(const py::object& a, const py::object& w, const py::object& out) {
    const GemmOperands ops = gemm_operands(a, w);
    const OutputArg c = output_arg(out, Scalar::int32, ops.m(), ops.n(), {&ops.a, &ops.w});
    {
        py::gil_scoped_release no_gil;
        edgevla_gemm_s8s8_s32_ref(ops.m(), ops.n(), ops.k(), ops.a.data<const int8_t>(), ops.a.ld,
                                  ops.w.data<const int8_t>(), ops.w.ld, c.array.data<int32_t>(), c.array.ld);
    }
    return c.object;
}

py::object gemm_s8s8_f32_ref(const py::object& a, const py::object& w, const py::object& w_scale,
                             const py::object& a_scale, const py::object& bias, const py::object& act,
                             const py::object& out, const py::object& residual) {
    const edgevla_activation activation = activation_arg(act);
    const GemmOperands ops = gemm_operands(a, w);
    const std::string n_text = "N = " + std::to_string(ops.n());

    const ArrayArg w_scale_arg = vector_arg(w_scale, "w_scale", Scalar::float32);
    if (w_scale_arg.size() != ops.n()) {
        throw py::value_error("w_scale must hold one value per output channel (" + n_text +
                              ", the rows of w), got " + std::to_string(w_scale_arg.size()));
    }

    const ArrayArg a_scale_arg = vector_arg(a_scale, "a_scale", Scalar::float32, /*allow_scalar=*/true);
    edgevla_act_scale_mode a_scale_mode;
    if (a_scale_arg.size() == 1) {
        a_scale_mode = EDGEVLA_ACT_SCALE_PER_TENSOR;
    } else if (a_scale_arg.size() == ops.m()) {
        a_scale_mode = EDGEVLA_ACT_SCALE_PER_TOKEN;
    } else {
        throw py::value_error("a_scale must hold 1 value (per-tensor) or one per row of a (per-token, M = " +
                              std::to_string(ops.m()) + "), got " + std::to_string(a_scale_arg.size()));
    }

    ArrayArg bias_arg;
    const bool has_bias = !bias.is_none();
    if (has_bias) {
        bias_arg = vector_arg(bias, "bias", Scalar::float32);
        if (bias_arg.size() != ops.n()) {
            throw py::value_error("bias must hold one value per output channel (" + n_text + "), got " +
                                  std::to_string(bias_arg.size()));
        }
    }

    const ResidualArg residual_a = residual_arg(residual, ops.m(), ops.n());
    const OutputArg c = output_arg(out, Scalar::float32, ops.m(), ops.n(),
                                   {&ops.a, &ops.w, &w_scale_arg, &a_scale_arg, has_bias ? &bias_arg : nullptr,
                                    residual_a.input()});
    const edgevla_gemm_epilogue_f32 epilogue{w_scale_arg.data<const float>(), a_scale_arg.data<const float>(),
                                             a_scale_mode, has_bias ? bias_arg.data<const float>() : nullptr,
                                             activation, residual_a.data(), residual_a.ld()};
    {
        py::gil_scoped_release no_gil;
        edgevla_gemm_s8s8_f32_ref(ops.m(), ops.n(), ops.k(), ops.a.data<const int8_t>(), ops.a.ld,
                                  ops.w.data<const int8_t>(), ops.w.ld, &epilogue, c.array.data<float>(),
                                  c.array.ld);
    }
    return c.object;
}

}  // namespace

void register_gemm(py::module_& m) {
    m.attr("GEMM_S8S8_MAX_K") = EDGEVLA_GEMM_S8S8_MAX_K;
    m.def("gemm_s8s8_s32_ref", &gemm_s8s8_s32_ref, py::arg("a"), py::arg("w"), py::kw_only(),
          py::arg("out") = py::none(),
          "Reference int8 GEMM, C = a @ w.T in int32. a: int8 (M, K), w: int8 (N, K). Returns out, or a new "
          "int32 (M, N) array.");
    m.def("gemm_s8s8_f32_ref", &gemm_s8s8_f32_ref, py::arg("a"), py::arg("w"), py::arg("w_scale"),
          py::arg("a_scale"), py::arg("bias") = py::none(), py::kw_only(), py::arg("act") = "none",
          py::arg("out") = py::none(), py::arg("residual") = py::none(),
          "Reference int8 GEMM with float32 dequantization: C = act((a @ w.T) * (a_scale * w_scale) + bias) "
          "(+ residual, float32 (M, N)), act 'none', 'relu', 'gelu_tanh' or 'gelu_erf'. Returns out, or a new "
          "float32 (M, N) array.");
}

}  // namespace edgevla::bindings
