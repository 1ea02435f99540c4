// Python bindings of the float32 attention (attention_f32.h): the fast kernel
// on the active ISA and its scalar reference, on (B, T, H, D) arrays of any
// non-negative strides whose last axis is contiguous (the runtime's q, k and v
// are column views of one stacked GEMM output), validated, run without the GIL.
#include "attention_f32.h"
#include "bindings/array_args.h"
#include "bindings/module_parts.h"

#include <pybind11/numpy.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace edgevla::bindings {
namespace {

namespace py = pybind11;

struct HeadsArg {
    py::buffer_info info;
    int64_t dims[4] = {0, 0, 0, 0};  // B, T (or S), H, D
    AttentionStrides strides;
    uintptr_t lo = 0, hi = 0;  // the bytes the elements span, [lo, hi); empty when lo == hi

    template <typename T>
    T* data() const {
        return static_cast<T*>(info.ptr);
    }
    bool overlaps(const HeadsArg& other) const { return lo < other.hi && other.lo < hi; }
};

std::string shape_of(const py::buffer_info& info) {
    std::string text = "(";
    for (size_t i = 0; i < info.shape.size(); ++i) text += (i ? ", " : "") + std::to_string(info.shape[i]);
    return text + (info.shape.size() == 1 ? ",)" : ")");
}

HeadsArg heads_arg(py::handle obj, const std::string& name, bool writable) {
    if (!PyObject_CheckBuffer(obj.ptr())) {
        throw py::type_error(name + " must be a float32 array of shape (B, T, H, D), got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    }
    HeadsArg arg;
    if (!ndarray_buffer(obj, writable, &arg.info)) {
        try {
            arg.info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
        } catch (py::error_already_set&) {
            throw py::value_error(name + (writable ? " must be a writable buffer" : " is not a readable buffer"));
        }
    }
    const py::buffer_info& info = arg.info;
    const std::string& f = info.format;
    if (info.itemsize != 4 || !(f == "f" || f == "<f" || f == "=f" || f == "@f")) {
        throw py::type_error(name + " must be float32, got buffer format '" + f + "'");
    }
    if (info.ndim != 4) throw py::value_error(name + " must be 4-D (B, T, H, D), got shape " + shape_of(info));
    int64_t span = 0;
    bool empty = false;
    for (int i = 0; i < 4; ++i) {
        arg.dims[i] = info.shape[i];
        if (info.strides[i] < 0 || info.strides[i] % 4) {
            throw py::value_error(name + " must have non-negative strides that are whole float32 elements");
        }
        empty = empty || info.shape[i] == 0;
        span += (info.shape[i] - 1) * info.strides[i];
    }
    if (info.strides[3] != 4 && info.shape[3] > 1) {
        throw py::value_error(name + " must be contiguous along its last axis (D)");
    }
    if (reinterpret_cast<uintptr_t>(info.ptr) % alignof(float)) {
        throw py::value_error(name + " must be aligned to 4 bytes");
    }
    arg.strides.batch = info.strides[0] / 4;
    arg.strides.token = info.strides[1] / 4;
    arg.strides.head = info.strides[2] / 4;
    arg.lo = reinterpret_cast<uintptr_t>(info.ptr);
    arg.hi = empty ? arg.lo : arg.lo + static_cast<uintptr_t>(span) + 4;
    return arg;
}

// The additive bias: float32 (B or 1, H or 1, T or 1, S), S contiguous; an axis of 1 is broadcast (stride 0).
void bias_arg(const py::object& bias, int64_t b, int64_t h, int64_t t, int64_t s, AttentionF32Args* args,
              py::buffer_info* keep) {
    if (!PyObject_CheckBuffer(bias.ptr())) throw py::type_error("bias must be a float32 array (B, H, T, S)");
    if (!ndarray_buffer(bias, false, keep)) *keep = py::reinterpret_borrow<py::buffer>(bias).request(false);
    const std::string& f = keep->format;
    if (keep->itemsize != 4 || !(f == "f" || f == "<f" || f == "=f" || f == "@f")) {
        throw py::type_error("bias must be float32, got buffer format '" + f + "'");
    }
    const int64_t want[4] = {b, h, t, s};
    bool fits = keep->ndim == 4;
    for (int i = 0; fits && i < 4; ++i) {
        fits = (keep->shape[i] == want[i] || (keep->shape[i] == 1 && i < 3)) && keep->strides[i] >= 0 &&
               keep->strides[i] % 4 == 0;
    }
    if (!fits) {
        throw py::value_error("bias must be float32 (B or 1, H or 1, T or 1, S) = (" + std::to_string(b) + ", " +
                              std::to_string(h) + ", " + std::to_string(t) + ", " + std::to_string(s) +
                              ") with non-negative strides, got shape " + shape_of(*keep));
    }
    if (keep->strides[3] != 4 && s > 1) throw py::value_error("bias must be contiguous along its last axis (S)");
    if (reinterpret_cast<uintptr_t>(keep->ptr) % alignof(float)) throw py::value_error("bias must be aligned to 4 bytes");
    args->bias = static_cast<const float*>(keep->ptr);
    args->bias_strides.batch = keep->shape[0] == 1 ? 0 : keep->strides[0] / 4;
    args->bias_strides.head = keep->shape[1] == 1 ? 0 : keep->strides[1] / 4;
    args->bias_strides.token = keep->shape[2] == 1 ? 0 : keep->strides[2] / 4;
}

using AttentionFn = void (*)(const AttentionF32Args&);

py::object run_attention(AttentionFn kernel, const py::object& q, const py::object& k, const py::object& v,
                         const py::object& scale, bool divide, const py::object& out, const py::object& bias,
                         bool zero_nan_rows) {
    const HeadsArg q_arg = heads_arg(q, "q", false), k_arg = heads_arg(k, "k", false), v_arg = heads_arg(v, "v", false);
    const int64_t b = q_arg.dims[0], t = q_arg.dims[1], h = q_arg.dims[2], d = q_arg.dims[3];
    const int64_t s = k_arg.dims[1], kv_heads = k_arg.dims[2];
    for (const HeadsArg* a : {&k_arg, &v_arg}) {
        if (a->dims[0] != b || a->dims[1] != s || a->dims[2] != kv_heads || a->dims[3] != d || kv_heads < 1 ||
            h % kv_heads != 0) {
            throw py::value_error("k and v must have shape (B, S, Hkv, D) = (" + std::to_string(b) + ", S, Hkv, " +
                                  std::to_string(d) + ") with one S and one Hkv dividing H = " + std::to_string(h) +
                                  ", got k " + shape_of(k_arg.info) + " and v " + shape_of(v_arg.info));
        }
    }
    if (s < 1) throw py::value_error("attention needs at least one key (S >= 1): a softmax over none is undefined");
    AttentionF32Args args;
    if (!scale.is_none()) {
        const double value = scale.cast<double>();
        const float f = static_cast<float>(value);
        if (!std::isfinite(f) || (divide && f == 0.0f)) {
            throw py::value_error("scale must be finite in float32" + std::string(divide ? " and nonzero" : "") +
                                  ", got " + std::to_string(value));
        }
        args.scale = f;
        args.scale_mode = divide ? kAttentionDivide : kAttentionMultiply;
    } else if (divide) {
        throw py::value_error("divide=True needs a scale");
    }
    py::object result = out;
    if (out.is_none()) result = py::array_t<float>({b, t, h, d});
    const HeadsArg o_arg = heads_arg(result, "out", true);
    if (o_arg.dims[0] != b || o_arg.dims[1] != t || o_arg.dims[2] != h || o_arg.dims[3] != d) {
        throw py::value_error("out must have shape (B, T, H, D) = (" + std::to_string(b) + ", " + std::to_string(t) +
                              ", " + std::to_string(h) + ", " + std::to_string(d) + "), got " + shape_of(o_arg.info));
    }
    if (o_arg.overlaps(q_arg) || o_arg.overlaps(k_arg) || o_arg.overlaps(v_arg)) {
        throw py::value_error("out must not share memory with q, k or v");
    }
    args.batch = b;
    args.t = t;
    args.s = s;
    args.heads = h;
    args.d = d;
    args.q = q_arg.data<const float>();
    args.k = k_arg.data<const float>();
    args.v = v_arg.data<const float>();
    args.out = o_arg.data<float>();
    args.q_strides = q_arg.strides;
    args.k_strides = k_arg.strides;
    args.v_strides = v_arg.strides;
    args.out_strides = o_arg.strides;
    args.kv_heads = kv_heads;
    args.zero_nan_rows = zero_nan_rows;
    py::buffer_info bias_info;
    if (!bias.is_none()) {
        bias_arg(bias, b, h, t, s, &args, &bias_info);
        const uintptr_t lo = reinterpret_cast<uintptr_t>(bias_info.ptr);
        int64_t span = 0;
        for (int i = 0; i < 4; ++i) span += (bias_info.shape[i] - 1) * bias_info.strides[i];
        HeadsArg bias_span;
        bias_span.lo = lo;
        bias_span.hi = b * h * t * s == 0 ? lo : lo + static_cast<uintptr_t>(span) + 4;
        if (o_arg.overlaps(bias_span)) throw py::value_error("out must not share memory with the bias");
    }
    {
        py::gil_scoped_release no_gil;
        kernel(args);
    }
    return result;
}

using SoftmaxFn = void (*)(const SoftmaxF32Args&);

py::object run_softmax(SoftmaxFn kernel, const py::object& x, const py::object& out) {
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    if (x_arg.cols < 1) throw py::value_error("x must have at least one column (a softmax over none is undefined)");
    const OutputArg y = output_arg(out, Scalar::float32, x_arg.rows, x_arg.cols, {&x_arg});
    SoftmaxF32Args args;
    args.m = x_arg.rows;
    args.k = x_arg.cols;
    args.x = x_arg.data<const float>();
    args.ldx = x_arg.ld;
    args.y = y.array.data<float>();
    args.ldy = y.array.ld;
    {
        py::gil_scoped_release no_gil;
        kernel(args);
    }
    return y.object;
}

}  // namespace

void register_attention(py::module_& m) {
    m.def(
        "softmax_f32", [](const py::object& x, const py::object& out) { return run_softmax(softmax_f32, x, out); },
        py::arg("x"), py::arg("out") = py::none(),
        "Softmax over each row of float32 x (M, K), K >= 1: the attention kernel's (csrc/attention_f32.h). Returns "
        "out, or a new float32 (M, K) array.");
    m.def(
        "softmax_f32_ref", [](const py::object& x, const py::object& out) { return run_softmax(softmax_f32_ref, x, out); },
        py::arg("x"), py::kw_only(), py::arg("out") = py::none(), "The scalar reference of softmax_f32 (std::exp).");
    m.def(
        "attention_f32",
        [](const py::object& q, const py::object& k, const py::object& v, const py::object& scale, bool divide,
           const py::object& out, const py::object& bias, bool zero_nan_rows) {
            return run_attention(attention_f32, q, k, v, scale, divide, out, bias, zero_nan_rows);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale") = py::none(),
        py::arg("divide") = false, py::arg("out") = py::none(), py::arg("bias") = py::none(),
        py::arg("zero_nan_rows") = false,
        "softmax(scale(q_h @ k_h^T) + bias) @ v_h per batch and head on float32 (B, T, H, D) q, (B, S, Hkv, D) k "
        "and v (Hkv dividing H: grouped-query heads), bias (B|1, H|1, T|1, S) or None; zero_nan_rows: a query "
        "whose probabilities are NaN (every key masked) gets zeros. The active ISA's kernel, heads split over the "
        "thread pool (csrc/attention_f32.h).");
    m.def(
        "attention_f32_ref",
        [](const py::object& q, const py::object& k, const py::object& v, const py::object& scale, bool divide,
           const py::object& out, const py::object& bias, bool zero_nan_rows) {
            return run_attention(attention_f32_ref, q, k, v, scale, divide, out, bias, zero_nan_rows);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale") = py::none(), py::kw_only(),
        py::arg("divide") = false, py::arg("out") = py::none(), py::arg("bias") = py::none(),
        py::arg("zero_nan_rows") = false,
        "The scalar reference of attention_f32: sums in order, std::exp, one thread.");
}

}  // namespace edgevla::bindings
