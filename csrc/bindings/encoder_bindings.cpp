// Python bindings of what convolutional encoders run besides their GEMMs: the
// window gather, max pool and channels-last transpose (windows.h) on
// C-contiguous int8, uint8 or float32 arrays, and GroupNorm (group_norm_f32.h)
// on float32 ones; validated (shapes against the geometry, outputs writable and
// disjoint from the inputs), run without the GIL; and the gated MLPs' act(gate)
// * value (gated_f32.h) and rotary embeddings (rotary_f32.h) on float32
// matrices with contiguous rows.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "gated_f32.h"
#include "group_norm_f32.h"
#include "rotary_f32.h"
#include "windows.h"

#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace edgevla::bindings {
namespace {

namespace py = pybind11;

std::string shape_text(const std::vector<py::ssize_t>& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
}

// The element type's letter ('b' int8, 'B' uint8, 'f' float32), or 0 for any other.
char element_kind(const py::buffer_info& info) {
    std::string f = info.format;
    if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f = f.substr(1);
    if (f.size() == 1 && ((f[0] == 'b' || f[0] == 'B') && info.itemsize == 1)) return f[0];
    if (f == "f" && info.itemsize == 4) return 'f';
    return 0;
}

// The element type, C order and alignment of a requested buffer.
py::buffer_info checked_contiguous(py::buffer_info info, const char* name) {
    if (!element_kind(info)) {
        throw py::type_error(std::string(name) + " must be int8, uint8 or float32, got buffer format '" +
                             info.format + "'");
    }
    py::ssize_t expected = info.itemsize;
    for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
        if (info.shape[i] > 1 && info.strides[i] != expected) {
            throw py::value_error(std::string(name) + " must be C-contiguous");
        }
        expected *= info.shape[i];
    }
    if (reinterpret_cast<uintptr_t>(info.ptr) % static_cast<uintptr_t>(info.itemsize)) {
        throw py::value_error(std::string(name) + " must be aligned to its element size");
    }
    return info;
}

py::buffer_info contiguous(py::handle obj, const char* name, bool writable) {
    py::buffer_info info;
    if (ndarray_buffer(obj, writable, &info)) return checked_contiguous(std::move(info), name);
    if (!PyObject_CheckBuffer(obj.ptr())) {
        throw py::type_error(std::string(name) + " must be an int8, uint8 or float32 array, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    }
    try {
        info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
    } catch (py::error_already_set&) {
        throw py::value_error(std::string(name) + (writable ? " must be a writable array" : " is not readable"));
    }
    return checked_contiguous(std::move(info), name);
}

std::vector<int64_t> sizes(const std::vector<int64_t>& values, const char* what, int dims, int64_t least) {
    if (static_cast<int>(values.size()) != dims) {
        throw py::value_error(std::string(what) + " must have " + std::to_string(dims) + " values (one per spatial "
                              "dimension), got " + std::to_string(values.size()));
    }
    for (int64_t v : values) {
        if (v < least) {
            throw py::value_error(std::string(what) + " must be >= " + std::to_string(least) + ", got " +
                                  std::to_string(v));
        }
    }
    return values;
}

// The windows of `dims` spatial dimensions the five lists describe, validated (one value per dimension;
// kernel, strides, dilations and out >= 1, pads_begin >= 0).
WindowSpec spec_of(int dims, const std::vector<int64_t>& kernel, const std::vector<int64_t>& strides,
                   const std::vector<int64_t>& dilations, const std::vector<int64_t>& pads_begin,
                   const std::vector<int64_t>& out) {
    const auto k = sizes(kernel, "kernel", dims, 1), s = sizes(strides, "strides", dims, 1);
    const auto d = sizes(dilations, "dilations", dims, 1), p = sizes(pads_begin, "pads_begin", dims, 0);
    const auto o = sizes(out, "out", dims, 1);
    WindowSpec spec;
    spec.dims = dims;
    for (int i = 0; i < dims; ++i) {
        spec.kernel[i] = k[i], spec.stride[i] = s[i], spec.dilation[i] = d[i], spec.pad_begin[i] = p[i];
        spec.out[i] = o[i];
    }
    return spec;
}

// The geometry of windows over x (N, spatial..., C), validated.
WindowGeometry window_geometry(const py::buffer_info& x, const std::vector<int64_t>& kernel,
                               const std::vector<int64_t>& strides, const std::vector<int64_t>& dilations,
                               const std::vector<int64_t>& pads_begin, const std::vector<int64_t>& out) {
    const int dims = static_cast<int>(x.ndim) - 2;
    if (dims < 1 || dims > kMaxWindowDims) {
        throw py::value_error("x must be (N, spatial..., C) with 1 to 3 spatial dimensions, got shape " +
                              shape_text(x.shape));
    }
    return windows_over(spec_of(dims, kernel, strides, dilations, pads_begin, out), x);
}

bool overlap(const py::buffer_info& a, const py::buffer_info& b) {
    const auto lo = [](const py::buffer_info& i) { return reinterpret_cast<uintptr_t>(i.ptr); };
    const auto hi = [&](const py::buffer_info& i) { return lo(i) + static_cast<uintptr_t>(i.size * i.itemsize); };
    return lo(a) < hi(b) && lo(b) < hi(a);
}

void gather_windows_py(py::handle x_obj, py::handle rows_obj, const std::vector<int64_t>& kernel,
                       const std::vector<int64_t>& strides, const std::vector<int64_t>& dilations,
                       const std::vector<int64_t>& pads_begin, const std::vector<int64_t>& out) {
    const py::buffer_info x = contiguous(x_obj, "x", false);
    const py::buffer_info rows = contiguous(rows_obj, "rows", true);
    const WindowGeometry g = window_geometry(x, kernel, strides, dilations, pads_begin, out);
    if (element_kind(x) != element_kind(rows)) throw py::type_error("rows must have the dtype of x");
    int64_t positions = g.batch, window = g.channels;
    for (int i = 0; i < g.dims; ++i) {
        positions *= g.out[i];
        window *= g.kernel[i];
    }
    if (rows.ndim != 2 || rows.shape[0] != positions || rows.shape[1] != window) {
        throw py::value_error("rows must have shape (" + std::to_string(positions) + ", " + std::to_string(window) +
                              ") for these windows, got " + shape_text(rows.shape));
    }
    if (overlap(x, rows)) throw py::value_error("rows must not overlap x");
    if (x.size == 0 || rows.size == 0) return;
    py::gil_scoped_release no_gil;
    gather_windows(g, static_cast<size_t>(x.itemsize), static_cast<const uint8_t*>(x.ptr),
                   static_cast<uint8_t*>(rows.ptr));
}

void max_pool_py(py::handle x_obj, py::handle y_obj, const std::vector<int64_t>& kernel,
                 const std::vector<int64_t>& strides, const std::vector<int64_t>& dilations,
                 const std::vector<int64_t>& pads_begin, const std::vector<int64_t>& out) {
    const py::buffer_info x = contiguous(x_obj, "x", false);
    const py::buffer_info y = contiguous(y_obj, "y", true);
    const WindowGeometry g = window_geometry(x, kernel, strides, dilations, pads_begin, out);
    if (element_kind(x) != element_kind(y)) throw py::type_error("y must have the dtype of x");
    std::vector<py::ssize_t> expected{x.shape[0]};
    for (int i = 0; i < g.dims; ++i) expected.push_back(g.out[i]);
    expected.push_back(x.shape[x.ndim - 1]);
    if (y.shape != expected) {
        throw py::value_error("y must have shape " + shape_text(expected) + ", got " + shape_text(y.shape));
    }
    if (overlap(x, y)) throw py::value_error("y must not overlap x");
    if (x.size == 0 || y.size == 0) return;
    const char kind = element_kind(x);
    const PoolElement element = kind == 'f' ? PoolElement::float32 : kind == 'b' ? PoolElement::int8 : PoolElement::uint8;
    py::gil_scoped_release no_gil;
    max_pool_windows(g, element, static_cast<const uint8_t*>(x.ptr), static_cast<uint8_t*>(y.ptr));
}

void to_channels_last_py(py::handle x_obj, py::handle y_obj) {
    const py::buffer_info x = contiguous(x_obj, "x", false);
    const py::buffer_info y = contiguous(y_obj, "y", true);
    if (x.ndim < 3) throw py::value_error("x must be (N, C, spatial...), got shape " + shape_text(x.shape));
    std::vector<py::ssize_t> expected{x.shape[0]};
    expected.insert(expected.end(), x.shape.begin() + 2, x.shape.end());
    expected.push_back(x.shape[1]);
    if (element_kind(x) != element_kind(y)) throw py::type_error("y must have the dtype of x");
    if (y.shape != expected) {
        throw py::value_error("y must have shape " + shape_text(expected) + ", got " + shape_text(y.shape));
    }
    if (overlap(x, y)) throw py::value_error("y must not overlap x");
    if (x.size == 0) return;
    const int64_t spatial = x.size / (x.shape[0] * x.shape[1]);
    py::gil_scoped_release no_gil;
    to_channels_last(x.shape[0], x.shape[1], spatial, static_cast<size_t>(x.itemsize),
                     static_cast<const uint8_t*>(x.ptr), static_cast<uint8_t*>(y.ptr));
}

// A float32 vector of n values.
const float* channel_constants(const py::buffer_info& v, const char* name, int64_t n) {
    if (element_kind(v) != 'f' || v.ndim != 1 || v.shape[0] != n) {
        throw py::value_error(std::string(name) + " must be float32 of shape (" + std::to_string(n) + ",), got " +
                              shape_text(v.shape));
    }
    return static_cast<const float*>(v.ptr);
}

// A FiLM operand: float32 (N, C), or (1, C) for every sample (stride 0).
const float* film_rows(const py::buffer_info& v, const char* name, int64_t batch, int64_t channels, int64_t* stride) {
    if (element_kind(v) != 'f' || v.ndim != 2 || (v.shape[0] != batch && v.shape[0] != 1) || v.shape[1] != channels) {
        throw py::value_error(std::string(name) + " must be float32 of shape (" + std::to_string(batch) + ", " +
                              std::to_string(channels) + ") or (1, " + std::to_string(channels) + "), got " +
                              shape_text(v.shape));
    }
    *stride = v.shape[0] == 1 ? 0 : channels;
    return static_cast<const float*>(v.ptr);
}

GroupNormActivation group_norm_activation(const std::string& name) {
    if (name == "none") return GroupNormActivation::none;
    if (name == "relu") return GroupNormActivation::relu;
    if (name == "mish") return GroupNormActivation::mish;
    throw py::value_error("activation must be 'none', 'relu' or 'mish', got '" + name + "'");
}

void group_norm_py(py::handle x_obj, int64_t groups, py::handle scale_obj, py::handle shift_obj, double epsilon,
                   bool channels_last, const std::string& activation, py::handle out_obj, py::handle film_scale_obj,
                   py::handle film_shift_obj, py::handle residual_obj, bool relu_after, py::handle codes_obj,
                   py::handle codes_scale) {
    const py::buffer_info x = contiguous(x_obj, "x", false);
    const py::buffer_info out = contiguous(out_obj, "out", true);
    if (element_kind(x) != 'f' || element_kind(out) != 'f') throw py::type_error("x and out must be float32");
    if (x.ndim < 2) {
        throw py::value_error("x must be (N, C, spatial...) or (N, spatial..., C), got " + shape_text(x.shape));
    }
    if (out.shape != x.shape) {
        throw py::value_error("out must have the shape of x " + shape_text(x.shape) + ", got " + shape_text(out.shape));
    }
    if (out.ptr != x.ptr && overlap(x, out)) throw py::value_error("out must be x itself or not overlap it");
    GroupNormF32Args args;
    args.batch = x.shape[0];
    args.channels = channels_last ? x.shape[x.ndim - 1] : x.shape[1];
    if (groups < 1 || args.channels % groups) {
        throw py::value_error("groups must be >= 1 and divide the " + std::to_string(args.channels) +
                              " channels, got " + std::to_string(groups));
    }
    if (!(epsilon >= 0.0 && std::isfinite(epsilon))) throw py::value_error("epsilon must be finite and >= 0");
    const py::buffer_info scale = contiguous(scale_obj, "scale", false);
    const py::buffer_info shift = contiguous(shift_obj, "shift", false);
    args.scale = channel_constants(scale, "scale", args.channels);
    args.shift = channel_constants(shift, "shift", args.channels);
    args.activation = group_norm_activation(activation);
    py::buffer_info film_scale, film_shift, residual, codes;
    if (!film_scale_obj.is_none()) {
        film_scale = contiguous(film_scale_obj, "film_scale", false);
        args.film_scale = film_rows(film_scale, "film_scale", args.batch, args.channels, &args.film_scale_stride);
        if (overlap(film_scale, out)) throw py::value_error("film_scale must not overlap out");
    }
    if (!film_shift_obj.is_none()) {
        film_shift = contiguous(film_shift_obj, "film_shift", false);
        args.film_shift = film_rows(film_shift, "film_shift", args.batch, args.channels, &args.film_shift_stride);
        if (overlap(film_shift, out)) throw py::value_error("film_shift must not overlap out");
    }
    if (!residual_obj.is_none()) {
        residual = contiguous(residual_obj, "residual", false);
        if (element_kind(residual) != 'f' || residual.shape != x.shape) {
            throw py::value_error("residual must be float32 of the shape of x " + shape_text(x.shape));
        }
        if (overlap(residual, out)) throw py::value_error("residual must not overlap out");
        args.residual = static_cast<const float*>(residual.ptr);
    }
    args.relu_after = relu_after;
    if (codes_obj.is_none() != codes_scale.is_none()) {
        throw py::value_error("codes and codes_scale come together: the int8 array of x's shape the output is "
                              "quantized into, and the scale");
    }
    if (!codes_obj.is_none()) {
        codes = contiguous(codes_obj, "codes", true);
        if (element_kind(codes) != 'b' || codes.shape != x.shape) {
            throw py::value_error("codes must be int8 of the shape of x " + shape_text(x.shape));
        }
        if (overlap(codes, out) || overlap(codes, x) || (args.residual != nullptr && overlap(codes, residual))) {
            throw py::value_error("codes must not overlap x, out or residual");
        }
        const float scale = static_cast<float>(codes_scale.cast<double>());
        if (!(scale > 0.0f) || !std::isfinite(scale)) {
            throw py::value_error("codes_scale must be a positive finite float32");
        }
        args.codes = static_cast<int8_t*>(codes.ptr);
        args.codes_scale = scale;
    }
    if (x.size == 0) return;
    args.groups = groups;
    args.positions = x.size / (args.batch * args.channels);
    args.channels_last = channels_last;
    args.epsilon = static_cast<float>(epsilon);
    args.x = static_cast<const float*>(x.ptr);
    args.y = static_cast<float*>(out.ptr);
    py::gil_scoped_release no_gil;
    group_norm_f32(args);
}

WindowSpec window_spec(const std::vector<int64_t>& kernel, const std::vector<int64_t>& strides,
                       const std::vector<int64_t>& dilations, const std::vector<int64_t>& pads_begin,
                       const std::vector<int64_t>& out) {
    const int dims = static_cast<int>(kernel.size());
    if (dims < 1 || dims > kMaxWindowDims) {
        throw py::value_error("kernel must have 1 to 3 values (one per spatial dimension), got " +
                              std::to_string(dims));
    }
    return spec_of(dims, kernel, strides, dilations, pads_begin, out);
}

using GatedFn = void (*)(const GatedF32Args&);

GatedActivation gated_activation_arg(const std::string& name) {
    if (name == "silu") return GatedActivation::silu;
    if (name == "gelu_tanh") return GatedActivation::gelu_tanh;
    if (name == "gelu_erf") return GatedActivation::gelu_erf;
    throw py::value_error("activation must be 'silu', 'gelu_tanh' or 'gelu_erf', got '" + name + "'");
}

py::object gated_py(GatedFn kernel, const py::object& gate, const py::object& value, const std::string& activation,
                    const py::object& out) {
    GatedF32Args args;
    args.activation = gated_activation_arg(activation);
    const ArrayArg g = matrix_arg(gate, "gate", "(M, N)", Scalar::float32, Access::read);
    ArrayArg v;
    const bool has_value = !value.is_none();
    if (has_value) {
        v = matrix_arg(value, "value", "(M, N)", Scalar::float32, Access::read);
        if (v.rows != g.rows || v.cols != g.cols) {
            throw py::value_error("value must have gate's shape (M, N) = (" + std::to_string(g.rows) + ", " +
                                  std::to_string(g.cols) + "), got (" + std::to_string(v.rows) + ", " +
                                  std::to_string(v.cols) + ")");
        }
    }
    const OutputArg o = output_arg(out, Scalar::float32, g.rows, g.cols, {&g, has_value ? &v : nullptr});
    args.m = g.rows;
    args.n = g.cols;
    args.gate = g.data<const float>();
    args.ld_gate = g.ld;
    args.value = has_value ? v.data<const float>() : nullptr;
    args.ld_value = has_value ? v.ld : 0;
    args.out = o.array.data<float>();
    args.ld_out = o.array.ld;
    {
        py::gil_scoped_release no_gil;
        kernel(args);
    }
    return o.object;
}

}  // namespace

using RotaryFn = void (*)(const RotaryF32Args&);

py::object rotary_py(RotaryFn kernel, const py::object& x, const py::object& cos, const py::object& sin,
                     const py::object& out) {
    const ArrayArg xa = matrix_arg(x, "x", "(M, D)", Scalar::float32, Access::read);
    const ArrayArg ca = matrix_arg(cos, "cos", "(P, D)", Scalar::float32, Access::read);
    const ArrayArg sa = matrix_arg(sin, "sin", "(P, D)", Scalar::float32, Access::read);
    if (xa.cols % 2 != 0) throw py::value_error("x must have an even width D, got " + std::to_string(xa.cols));
    if (ca.rows != sa.rows || ca.cols != xa.cols || sa.cols != xa.cols || ca.rows < 1 || xa.rows % ca.rows != 0) {
        throw py::value_error("cos and sin must both be (P, D) with D = " + std::to_string(xa.cols) +
                              " and P dividing M = " + std::to_string(xa.rows) + ", got (" +
                              std::to_string(ca.rows) + ", " + std::to_string(ca.cols) + ") and (" +
                              std::to_string(sa.rows) + ", " + std::to_string(sa.cols) + ")");
    }
    const OutputArg o = output_arg(out, Scalar::float32, xa.rows, xa.cols, {&xa, &ca, &sa});
    RotaryF32Args args;
    args.m = xa.rows;
    args.d = xa.cols;
    args.p = ca.rows;
    args.x = xa.data<const float>();
    args.ld_x = xa.ld;
    args.cos = ca.data<const float>();
    args.ld_cos = ca.ld;
    args.sin = sa.data<const float>();
    args.ld_sin = sa.ld;
    args.out = o.array.data<float>();
    args.ld_out = o.array.ld;
    {
        py::gil_scoped_release no_gil;
        kernel(args);
    }
    return o.object;
}

void register_encoders(py::module_& m) {
    m.def(
        "rotary_f32",
        [](const py::object& x, const py::object& cos, const py::object& sin, const py::object& out) {
            return rotary_py(rotary_f32, x, cos, sin, out);
        },
        py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("out") = py::none(),
        "x * cos + rotate_half(x) * sin on float32 x (M, D) rows, cos and sin (P, D) with P dividing M (row r reads "
        "row r mod P): rotary position embeddings (csrc/rotary_f32.h). Returns out, or a new float32 (M, D) array.");
    m.def(
        "rotary_f32_ref",
        [](const py::object& x, const py::object& cos, const py::object& sin, const py::object& out) {
            return rotary_py(rotary_f32_ref, x, cos, sin, out);
        },
        py::arg("x"), py::arg("cos"), py::arg("sin"), py::kw_only(), py::arg("out") = py::none(),
        "The baseline copy of rotary_f32 (one thread): identical floats.");
    m.def(
        "gated_f32",
        [](const py::object& gate, const py::object& value, const std::string& activation, const py::object& out) {
            return gated_py(gated_f32, gate, value, activation, out);
        },
        py::arg("gate"), py::arg("value"), py::arg("activation"), py::arg("out") = py::none(),
        "act(gate) * value (value None: act(gate) alone) on float32 (M, N) matrices with contiguous rows; activation "
        "'silu', 'gelu_tanh' or 'gelu_erf' (csrc/gated_f32.h). Returns out, or a new float32 (M, N) array.");
    m.def(
        "gated_f32_ref",
        [](const py::object& gate, const py::object& value, const std::string& activation, const py::object& out) {
            return gated_py(gated_f32_ref, gate, value, activation, out);
        },
        py::arg("gate"), py::arg("value"), py::kw_only(), py::arg("activation"), py::arg("out") = py::none(),
        "The baseline copy of gated_f32 (one thread): identical floats.");
    py::class_<WindowSpec>(m, "WindowSpec",
                           "A convolution's windows without their input, for the int8 GEMMs' windows= argument: "
                           "kernel, strides, dilations, pads_begin and out (the output size), one value per "
                           "spatial dimension.")
        .def(py::init(&window_spec), py::kw_only(), py::arg("kernel"), py::arg("strides"), py::arg("dilations"),
             py::arg("pads_begin"), py::arg("out"))
        .def_property_readonly("kernel", [](const WindowSpec& w) {
            return std::vector<int64_t>(w.kernel, w.kernel + w.dims);
        })
        .def_property_readonly("out", [](const WindowSpec& w) { return std::vector<int64_t>(w.out, w.out + w.dims); });
    m.def("gather_windows", &gather_windows_py, py::arg("x"), py::arg("rows"), py::arg("kernel"),
          py::arg("strides"), py::arg("dilations"), py::arg("pads_begin"), py::arg("out"),
          "Writes a convolution's input windows into rows (N * prod(out), prod(kernel) * C), in (kernel..., C) "
          "order, from a channels-last x (N, spatial..., C); positions outside x read as zero.");
    m.def("max_pool_channels_last", &max_pool_py, py::arg("x"), py::arg("y"), py::arg("kernel"), py::arg("strides"),
          py::arg("dilations"), py::arg("pads_begin"), py::arg("out"),
          "MaxPool of a channels-last x (N, spatial..., C) into y (N, out..., C) over the windows gather_windows "
          "gathers, positions outside x left out; NaN propagates.");
    m.def("to_channels_last", &to_channels_last_py, py::arg("x"), py::arg("y"),
          "Writes x (N, C, spatial...) channels last into y (N, spatial..., C).");
    m.def("group_norm_f32", &group_norm_py, py::arg("x"), py::arg("groups"), py::arg("scale"), py::arg("shift"),
          py::arg("epsilon"), py::arg("channels_last"), py::arg("activation"), py::arg("out"),
          py::arg("film_scale") = py::none(), py::arg("film_shift") = py::none(), py::arg("residual") = py::none(), py::arg("relu_after") = false, py::arg("codes") = py::none(),
          py::arg("codes_scale") = py::none(),
          "GroupNorm of float32 x (N, C, spatial...) or, channels_last, (N, spatial..., C) into out (x itself "
          "allowed): per sample and group, two-pass statistics, then act((x - mean) * scale / std + shift) per "
          "channel (csrc/group_norm_f32.h); act 'none', 'relu' or 'mish'; then * film_scale and + film_shift "
          "((N, C) or (1, C): per sample and channel), + residual, max(., 0) with relu_after, and the int8 codes "
          "at codes_scale into codes.");
}

}  // namespace edgevla::bindings
