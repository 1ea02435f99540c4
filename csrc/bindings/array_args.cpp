#include "bindings/array_args.h"

#include <pybind11/numpy.h>

#include <cmath>
#include <sstream>
#include <string>

namespace edgevla::bindings {
namespace {

const char* scalar_name(Scalar scalar) {
    switch (scalar) {
        case Scalar::int8: return "int8";
        case Scalar::uint8: return "uint8";
        case Scalar::int32: return "int32";
        case Scalar::float32: return "float32";
    }
    return "?";
}

py::ssize_t scalar_size(Scalar scalar) { return scalar == Scalar::int8 || scalar == Scalar::uint8 ? 1 : 4; }

char scalar_kind(Scalar scalar) {
    return scalar == Scalar::float32 ? 'f' : scalar == Scalar::uint8 ? 'u' : 'i';
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// A buffer's element type in NumPy's words. The struct-module format is
// "[byte order]code"; the item size, not the code, fixes the width (the native
// size of 'l' differs between platforms).
struct ElementType {
    char kind = '?';  // 'i' signed, 'u' unsigned, 'f' float, 'b' bool, '?' other
    bool native_order = true;
    py::ssize_t itemsize = 0;
    std::string format;

    std::string describe() const {
        std::string base;
        switch (kind) {
            case 'i': base = "int" + std::to_string(itemsize * 8); break;
            case 'u': base = "uint" + std::to_string(itemsize * 8); break;
            case 'f': base = "float" + std::to_string(itemsize * 8); break;
            case 'b': return "bool";
            default: return "buffer format '" + format + "'";
        }
        return native_order ? base : "byte-swapped " + base;
    }
};

ElementType element_type(const py::buffer_info& info) {
    ElementType type;
    type.format = info.format;
    type.itemsize = info.itemsize;
    std::string code = info.format;
    char order = '@';
    if (!code.empty() && std::string("@=<>!").find(code[0]) != std::string::npos) {
        order = code[0];
        code.erase(0, 1);
    }
    if (code.size() != 1) return type;
    const bool little = order == '<';
    const bool big = order == '>' || order == '!';
    type.native_order = info.itemsize == 1 || (!little && !big) || little == kLittleEndian;
    const std::string signed_codes = "bhilq", unsigned_codes = "BHILQ", float_codes = "efd";
    if (signed_codes.find(code[0]) != std::string::npos) type.kind = 'i';
    else if (unsigned_codes.find(code[0]) != std::string::npos) type.kind = 'u';
    else if (float_codes.find(code[0]) != std::string::npos) type.kind = 'f';
    else if (code[0] == '?') type.kind = 'b';
    return type;
}

std::string shape_string(const py::buffer_info& info) {
    std::ostringstream text;
    text << '(';
    for (size_t i = 0; i < info.shape.size(); ++i) {
        text << (i ? ", " : "") << info.shape[i];
    }
    text << (info.shape.size() == 1 ? ",)" : ")");
    return text.str();
}

std::string strides_string(const py::buffer_info& info) {
    std::ostringstream text;
    text << '(';
    for (size_t i = 0; i < info.strides.size(); ++i) {
        text << (i ? ", " : "") << info.strides[i];
    }
    text << ") bytes";
    return text.str();
}

// The struct-module code NumPy exports for the scalar type.
char struct_code(Scalar scalar) {
    switch (scalar) {
        case Scalar::int8: return 'b';
        case Scalar::uint8: return 'B';
        case Scalar::int32: return 'i';
        case Scalar::float32: return 'f';
    }
    return '?';
}

[[noreturn]] void fail_type(const std::string& message) { throw py::type_error(message); }
[[noreturn]] void fail_value(const std::string& message) { throw py::value_error(message); }

// Requests the buffer and checks the element type; rank and layout are the
// caller's business.
py::buffer_info typed_buffer(py::handle obj, const char* name, Scalar scalar, Access access) {
    py::buffer_info fast;
    if (ndarray_buffer(obj, access == Access::write, &fast) && fast.itemsize == scalar_size(scalar) &&
        fast.format[0] == struct_code(scalar)) {
        return fast;
    }
    if (!PyObject_CheckBuffer(obj.ptr())) {
        fail_type(std::string(name) + " must be an array of dtype " + scalar_name(scalar) +
                  " (a NumPy array or another object with the buffer protocol), got " +
                  Py_TYPE(obj.ptr())->tp_name);
    }
    // Not PyBUF_WRITABLE: a read-only `out` gets the clearer message below.
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request(false);
    const ElementType type = element_type(info);
    if (type.kind != scalar_kind(scalar) || type.itemsize != scalar_size(scalar) || !type.native_order) {
        fail_type(std::string(name) + " must have dtype " + scalar_name(scalar) + ", got " + type.describe());
    }
    if (access == Access::write && info.readonly) {
        fail_value(std::string(name) + " must be writable, got a read-only array");
    }
    // Kernels load int32/float32 as such; a misaligned pointer is undefined
    // behaviour in C++ and faults in aligned vector loads.
    if (reinterpret_cast<uintptr_t>(info.ptr) % static_cast<uintptr_t>(info.itemsize) != 0) {
        fail_value(std::string(name) + " must be aligned to its " + std::to_string(info.itemsize) +
                   "-byte elements, got an array starting at an unaligned address (pass a copy)");
    }
    return info;
}

}  // namespace

bool ndarray_buffer(py::handle obj, bool writable, py::buffer_info* info) {
    if (!py::isinstance<py::array>(obj)) return false;
    const auto array = py::reinterpret_borrow<py::array>(obj);
    if (writable && !array.writeable()) return false;
    const py::dtype type = array.dtype();
    const char order = type.byteorder();  // '=' native, '|' one byte, '<' / '>' explicit
    const py::ssize_t itemsize = type.itemsize();
    if (!(order == '=' || order == '|' || (order == '<') == kLittleEndian)) return false;
    char code = 0;  // as NumPy's own export writes it for the types the kernels take
    switch (type.kind()) {
        case 'i': code = itemsize == 1 ? 'b' : itemsize == 4 ? 'i' : 0; break;
        case 'u': code = itemsize == 1 ? 'B' : itemsize == 4 ? 'I' : 0; break;
        case 'f': code = itemsize == 4 ? 'f' : itemsize == 8 ? 'd' : 0; break;
        default: break;
    }
    const void* data = array.data();
    if (code == 0 || reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(itemsize) != 0) return false;
    const py::ssize_t ndim = array.ndim();
    *info = py::buffer_info(const_cast<void*>(data), itemsize, std::string(1, code), ndim,
                            std::vector<py::ssize_t>(array.shape(), array.shape() + ndim),
                            std::vector<py::ssize_t>(array.strides(), array.strides() + ndim), !array.writeable());
    return true;
}

bool ArrayArg::overlaps(const ArrayArg& other) const {
    if (size() == 0 || other.size() == 0) return false;
    const auto begin = [](const ArrayArg& a) { return reinterpret_cast<uintptr_t>(a.buffer.ptr); };
    const auto end = [&](const ArrayArg& a) {
        return begin(a) + static_cast<uintptr_t>(((a.rows - 1) * a.ld + a.cols) * a.buffer.itemsize);
    };
    return begin(*this) < end(other) && begin(other) < end(*this);
}

ArrayArg matrix_arg(py::handle obj, const char* name, const char* dims, Scalar scalar, Access access) {
    ArrayArg arg{typed_buffer(obj, name, scalar, access), name};
    const py::buffer_info& info = arg.buffer;
    if (info.ndim != 2) {
        fail_value(std::string(name) + " must be a 2-D array " + dims + ", got a " + std::to_string(info.ndim) +
                   "-D array of shape " + shape_string(info));
    }
    arg.rows = info.shape[0];
    arg.cols = info.shape[1];
    arg.ld = arg.cols;
    // Strides of an axis of length 0 or 1 are never followed (NumPy leaves
    // them arbitrary), so only the others are checked.
    if (arg.rows == 0 || arg.cols == 0) return arg;
    const py::ssize_t itemsize = info.itemsize;
    const bool unit_columns = arg.cols == 1 || info.strides[1] == itemsize;
    const py::ssize_t row_stride = arg.rows == 1 ? arg.cols * itemsize : info.strides[0];
    const bool rows_ok = row_stride >= arg.cols * itemsize && row_stride % itemsize == 0;
    if (!unit_columns || !rows_ok) {
        fail_value(std::string(name) + " must have contiguous rows (C order, or a slice of rows or leading " +
                   "columns of a C-order array), got shape " + shape_string(info) + " with strides " +
                   strides_string(info) + "; pass numpy.ascontiguousarray(" + name + ")");
    }
    arg.ld = row_stride / itemsize;
    return arg;
}

ArrayArg vector_arg(py::handle obj, const char* name, Scalar scalar, bool allow_scalar) {
    ArrayArg arg{typed_buffer(obj, name, scalar, Access::read), name};
    const py::buffer_info& info = arg.buffer;
    if (info.ndim == 0 && allow_scalar) {
        arg.cols = arg.ld = 1;
        return arg;
    }
    if (info.ndim != 1) {
        fail_value(std::string(name) + " must be a 1-D array" + (allow_scalar ? " or a 0-D scalar array" : "") +
                   ", got a " + std::to_string(info.ndim) + "-D array of shape " + shape_string(info));
    }
    arg.cols = arg.ld = info.shape[0];
    if (arg.cols > 1 && info.strides[0] != info.itemsize) {
        fail_value(std::string(name) + " must be contiguous, got strides " + strides_string(info) +
                   "; pass numpy.ascontiguousarray(" + name + ")");
    }
    return arg;
}

void check_disjoint(const ArrayArg& out, std::initializer_list<const ArrayArg*> inputs) {
    for (const ArrayArg* input : inputs) {
        if (input != nullptr && out.overlaps(*input)) {
            fail_value(std::string(out.name) + " must not share memory with the input " + input->name);
        }
    }
}

edgevla_activation activation_arg(py::handle obj) {
    if (!py::isinstance<py::str>(obj)) {
        fail_type(std::string("act must be a string ('none', 'relu', 'gelu_tanh' or 'gelu_erf'), got ") + Py_TYPE(obj.ptr())->tp_name);
    }
    const std::string name = obj.cast<std::string>();
    if (name == "none") return EDGEVLA_ACTIVATION_NONE;
    if (name == "relu") return EDGEVLA_ACTIVATION_RELU;
    if (name == "gelu_tanh") return EDGEVLA_ACTIVATION_GELU_TANH;
    if (name == "gelu_erf") return EDGEVLA_ACTIVATION_GELU_ERF;
    fail_value("act must be 'none', 'relu', 'gelu_tanh' or 'gelu_erf', got '" + name + "'");
}

OutputArg output_arg(py::handle out, Scalar scalar, int64_t rows, int64_t cols,
                     std::initializer_list<const ArrayArg*> inputs) {
    if (out.is_none()) {
        const std::vector<py::ssize_t> shape{rows, cols};
        py::array fresh = scalar == Scalar::int32  ? py::array(py::array_t<int32_t>(shape))
                          : scalar == Scalar::int8 ? py::array(py::array_t<int8_t>(shape))
                                                   : py::array(py::array_t<float>(shape));
        ArrayArg array = matrix_arg(fresh, "out", "(M, N)", scalar, Access::write);
        return {std::move(fresh), std::move(array)};
    }
    ArrayArg array = matrix_arg(out, "out", "(M, N)", scalar, Access::write);
    if (array.rows != rows || array.cols != cols) {
        fail_value("out must have shape (M, N) = (" + std::to_string(rows) + ", " + std::to_string(cols) +
                   "), got " + shape_string(array.buffer));
    }
    check_disjoint(array, inputs);
    return {py::reinterpret_borrow<py::object>(out), std::move(array)};
}

ActScaleArg act_scale_arg(py::handle obj, int64_t m) {
    ActScaleArg arg{vector_arg(obj, "a_scale", Scalar::float32, /*allow_scalar=*/true)};
    if (arg.array.size() == 1) {
        arg.mode = EDGEVLA_ACT_SCALE_PER_TENSOR;
    } else if (arg.array.size() == m) {
        arg.mode = EDGEVLA_ACT_SCALE_PER_TOKEN;
    } else {
        fail_value("a_scale must hold 1 value (per-tensor) or one per row of a (per-token, M = " + std::to_string(m) +
                   "), got " + std::to_string(arg.array.size()));
    }
    return arg;
}

BiasArg bias_arg(py::handle obj, int64_t n) {
    BiasArg arg;
    if (obj.is_none()) return arg;
    arg.array = vector_arg(obj, "bias", Scalar::float32);
    arg.present = true;
    if (arg.array.size() != n) {
        fail_value("bias must hold one value per output channel (N = " + std::to_string(n) + "), got " +
                   std::to_string(arg.array.size()));
    }
    return arg;
}

ResidualArg residual_arg(py::handle obj, int64_t m, int64_t n) {
    ResidualArg arg;
    if (obj.is_none()) return arg;
    arg.array = matrix_arg(obj, "residual", "(M, N)", Scalar::float32, Access::read);
    arg.present = true;
    if (arg.array.rows != m || arg.array.cols != n) {
        fail_value("residual must be (M, N) = (" + std::to_string(m) + ", " + std::to_string(n) + "), like the "
                   "output, got (" + std::to_string(arg.array.rows) + ", " + std::to_string(arg.array.cols) + ")");
    }
    return arg;
}

StageArg stage_arg(py::handle relu_after, py::handle codes, py::handle codes_scale, int64_t m, int64_t n) {
    StageArg arg;
    if (!py::isinstance<py::bool_>(relu_after)) {
        fail_type(std::string("relu_after must be a bool, got ") + Py_TYPE(relu_after.ptr())->tp_name);
    }
    arg.stage.relu = relu_after.cast<bool>();
    if (codes.is_none() != codes_scale.is_none()) {
        fail_value("codes and codes_scale come together: the int8 (M, N) array the output is quantized into, and "
                   "the scale it is quantized with");
    }
    if (codes.is_none()) return arg;
    if (!py::isinstance<py::float_>(codes_scale) && !py::isinstance<py::int_>(codes_scale)) {
        fail_type(std::string("codes_scale must be a number, got ") + Py_TYPE(codes_scale.ptr())->tp_name);
    }
    const double scale = codes_scale.cast<double>();
    const float scale_f = static_cast<float>(scale);
    if (!(scale_f > 0.0f) || !std::isfinite(scale_f)) {
        fail_value("codes_scale must be a positive finite float32, got " + std::to_string(scale));
    }
    arg.codes = matrix_arg(codes, "codes", "(M, N)", Scalar::int8, Access::write);
    if (arg.codes.rows != m || arg.codes.cols != n) {
        fail_value("codes must have shape (M, N) = (" + std::to_string(m) + ", " + std::to_string(n) + "), got " +
                   shape_string(arg.codes.buffer));
    }
    arg.has_codes = true;
    arg.stage.codes = arg.codes.data<int8_t>();
    arg.stage.ldq = arg.codes.ld;
    arg.stage.scale = scale_f;
    return arg;
}

void StageArg::check_disjoint(std::initializer_list<const ArrayArg*> others) const {
    if (has_codes) bindings::check_disjoint(codes, others);
}

WindowGeometry windows_over(const WindowSpec& spec, const py::buffer_info& x) {
    WindowGeometry g;
    g.dims = spec.dims;
    g.batch = x.shape[0];
    g.channels = x.shape[x.ndim - 1];
    for (int i = 0; i < spec.dims; ++i) {
        g.in[i] = x.shape[1 + i];
        g.kernel[i] = spec.kernel[i], g.stride[i] = spec.stride[i], g.dilation[i] = spec.dilation[i];
        g.pad_begin[i] = spec.pad_begin[i], g.out[i] = spec.out[i];
    }
    return g;
}

LeftArg left_arg(py::handle a, py::handle windows) {
    LeftArg arg;
    if (windows.is_none()) {
        arg.array = matrix_arg(a, "a", "(M, K)", Scalar::int8, Access::read);
        arg.m = arg.array.rows;
        arg.k = arg.array.cols;
        return arg;
    }
    if (!py::isinstance<WindowSpec>(windows)) {
        fail_type(std::string("windows must be a native.WindowSpec, got ") + Py_TYPE(windows.ptr())->tp_name);
    }
    const WindowSpec& spec = windows.cast<const WindowSpec&>();
    arg.array = ArrayArg{typed_buffer(a, "a", Scalar::int8, Access::read), "a"};
    const py::buffer_info& info = arg.array.buffer;
    if (info.ndim != spec.dims + 2) {
        fail_value("a must be the (N, spatial..., C) input of " + std::to_string(spec.dims) + "-D windows, got shape " +
                   shape_string(info));
    }
    py::ssize_t expected = 1;
    for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
        if (info.shape[i] > 1 && info.strides[i] != expected) {
            fail_value("a must be C-contiguous under windows=; pass numpy.ascontiguousarray(a)");
        }
        expected *= info.shape[i];
    }
    // Any output size is safe: a window reads x only inside it, and zeros elsewhere (as pads do).
    const WindowGeometry& g = arg.source.geometry = windows_over(spec, info);
    arg.m = g.batch;
    arg.k = g.channels;
    for (int i = 0; i < g.dims; ++i) {
        arg.m *= g.out[i];
        arg.k *= g.kernel[i];
    }
    arg.array.rows = 1;
    arg.array.cols = arg.array.ld = static_cast<int64_t>(info.size);
    arg.source.x = arg.array.data<const int8_t>();
    arg.windowed = true;
    return arg;
}

}  // namespace edgevla::bindings
