// Python bindings of the sparse, 2:4 and int4 formats: packing (once, at
// load), the GEMMs on the active ISA, their scalar references, and
// packed_info. As everywhere in the bindings, every argument and the packed
// header are validated before a kernel runs, and kernels run without the GIL
// on the caller's memory.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "cpu_ops.h"
#include "gemm_ref.h"

#include <pybind11/numpy.h>

#include <string>
#include <type_traits>
#include <utility>

namespace edgevla::bindings {
namespace {

std::string text(int64_t value) { return std::to_string(value); }

// ---------------------------------------------------------------- packed ----

// The bytes of a packed buffer: a 1-D uint8 array, 4-byte aligned (its
// float32 and int32 sections are read as such).
ArrayArg packed_bytes(py::handle obj) {
    ArrayArg bytes = vector_arg(obj, "packed", Scalar::uint8);
    if (reinterpret_cast<uintptr_t>(bytes.buffer.ptr) % 4 != 0) {
        throw py::value_error("packed must start at a 4-byte aligned address (pass the array a pack_* function "
                              "returned, or a copy of it)");
    }
    return bytes;
}

template <typename View>
struct PackedArg {
    ArrayArg bytes;
    View view;
};

template <typename View, typename Validate>
PackedArg<View> packed_arg(py::handle obj, Validate validate) {
    PackedArg<View> packed{packed_bytes(obj), {}};
    const std::string problem =
        validate(packed.bytes.template data<const uint8_t>(), static_cast<uint64_t>(packed.bytes.size()), &packed.view);
    if (!problem.empty()) throw py::value_error("packed " + problem);
    return packed;
}

PackedArg<PackedSparseView> sparse_arg(py::handle obj, edgevla_packed_format format) {
    return packed_arg<PackedSparseView>(obj, [format](const uint8_t* data, uint64_t length, PackedSparseView* view) {
        return validate_packed_sparse(data, length, format, view);
    });
}

PackedArg<Packed2to4View> two_to_four_arg(py::handle obj, edgevla_packed_format format) {
    return packed_arg<Packed2to4View>(obj, [format](const uint8_t* data, uint64_t length, Packed2to4View* view) {
        return validate_packed_2to4(data, length, format, view);
    });
}

PackedArg<PackedW4View> w4_arg(py::handle obj) { return packed_arg<PackedW4View>(obj, validate_packed_w4); }

py::array_t<uint8_t> new_packed(uint64_t bytes) { return py::array_t<uint8_t>(static_cast<py::ssize_t>(bytes)); }

// ----------------------------------------------------------- weights --------

void check_k(const ArrayArg& w, int64_t max_k) {
    if (w.cols > max_k) {
        throw py::value_error("K = " + text(w.cols) + " is too large: this format holds K <= " + text(max_k) +
                              (max_k == EDGEVLA_GEMM_S8S8_MAX_K ? " (where the int32 accumulator is exact)" : ""));
    }
}

ArrayArg weight_scale_arg(py::handle w_scale, const ArrayArg& w) {
    ArrayArg scale = vector_arg(w_scale, "w_scale", Scalar::float32);
    if (scale.size() != w.rows) {
        throw py::value_error("w_scale must hold one value per output channel (N = " + text(w.rows) +
                              ", the rows of w), got " + text(scale.size()));
    }
    return scale;
}

py::array pack_sparse_f32_py(const py::object& w) {
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::float32, Access::read);
    check_k(w_arg, EDGEVLA_PACKED_F32_MAX_K);
    py::array_t<uint8_t> packed;
    SparseCounts counts;
    {
        py::gil_scoped_release no_gil;
        counts = count_sparse_f32(w_arg.rows, w_arg.cols, w_arg.data<const float>(), w_arg.ld);
    }
    packed = new_packed(packed_sparse_bytes(w_arg.rows, w_arg.cols, counts, 4));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        pack_sparse_f32(w_arg.rows, w_arg.cols, w_arg.data<const float>(), w_arg.ld, counts, out);
    }
    return std::move(packed);
}

py::array pack_sparse_s8_py(const py::object& w, const py::object& w_scale) {
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::int8, Access::read);
    check_k(w_arg, EDGEVLA_GEMM_S8S8_MAX_K);
    const ArrayArg scale = weight_scale_arg(w_scale, w_arg);
    SparseCounts counts;
    {
        py::gil_scoped_release no_gil;
        counts = count_sparse_s8(w_arg.rows, w_arg.cols, w_arg.data<const int8_t>(), w_arg.ld);
    }
    py::array_t<uint8_t> packed = new_packed(packed_sparse_bytes(w_arg.rows, w_arg.cols, counts, 1));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        pack_sparse_s8(w_arg.rows, w_arg.cols, w_arg.data<const int8_t>(), w_arg.ld, scale.data<const float>(), counts,
                       out);
    }
    return std::move(packed);
}

[[noreturn]] void not_2to4(const Violation2to4& violation) {
    throw py::value_error("w is not 2:4 sparse: row " + text(violation.row) + " has " + text(violation.nonzeros) +
                          " non-zeros in columns " + text(4 * violation.group) + ".." + text(4 * violation.group + 3) +
                          " (at most 2 of every 4 consecutive weights of a row may be non-zero)");
}

py::array pack_2to4_f32_py(const py::object& w) {
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::float32, Access::read);
    check_k(w_arg, EDGEVLA_PACKED_F32_MAX_K);
    Violation2to4 violation;
    {
        py::gil_scoped_release no_gil;
        violation = find_2to4_violation_f32(w_arg.rows, w_arg.cols, w_arg.data<const float>(), w_arg.ld);
    }
    if (violation.found) not_2to4(violation);
    py::array_t<uint8_t> packed = new_packed(packed_2to4_bytes(w_arg.rows, w_arg.cols, 4));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        pack_2to4_f32(w_arg.rows, w_arg.cols, w_arg.data<const float>(), w_arg.ld, out);
    }
    return std::move(packed);
}

py::array pack_2to4_s8_py(const py::object& w, const py::object& w_scale) {
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::int8, Access::read);
    check_k(w_arg, EDGEVLA_GEMM_S8S8_MAX_K);
    const ArrayArg scale = weight_scale_arg(w_scale, w_arg);
    Violation2to4 violation;
    {
        py::gil_scoped_release no_gil;
        violation = find_2to4_violation_s8(w_arg.rows, w_arg.cols, w_arg.data<const int8_t>(), w_arg.ld);
    }
    if (violation.found) not_2to4(violation);
    py::array_t<uint8_t> packed = new_packed(packed_2to4_bytes(w_arg.rows, w_arg.cols, 1));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        pack_2to4_s8(w_arg.rows, w_arg.cols, w_arg.data<const int8_t>(), w_arg.ld, scale.data<const float>(), out);
    }
    return std::move(packed);
}

// The int4 weight of edgevla.quant.primitives: codes (N, ceil(K / 2)) and
// scales (N, ceil(K / group)), checked against each other.
struct W4Weight {
    ArrayArg qdata, scale;
    int64_t n, k, group;
};

// An integer argument: a Python int or anything with __index__ (NumPy
// integers), not a bool.
int64_t integer_arg(const py::object& obj, const char* name, const char* expected) {
    if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr())) {
        throw py::type_error(std::string(name) + " must be an int (" + expected + "), got " + Py_TYPE(obj.ptr())->tp_name);
    }
    PyObject* index = PyNumber_Index(obj.ptr());
    if (index == nullptr) throw py::error_already_set();
    const py::int_ value = py::reinterpret_steal<py::int_>(index);
    int overflow = 0;
    const long long result = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
    if (overflow != 0) throw py::value_error(std::string(name) + " is out of range");
    return static_cast<int64_t>(result);
}

W4Weight w4_weight(const py::object& qdata, const py::object& scale, const py::object& group_size, int64_t k) {
    const int64_t group = integer_arg(group_size, "group_size", "32, 64 or 128");
    if (group != 32 && group != 64 && group != 128) {
        throw py::value_error("group_size must be 32, 64 or 128, got " + text(group));
    }
    W4Weight w{matrix_arg(qdata, "qdata", "(N, ceil(K / 2))", Scalar::uint8, Access::read),
               matrix_arg(scale, "scale", "(N, ceil(K / group_size))", Scalar::float32, Access::read), 0, k, group};
    w.n = w.qdata.rows;
    if (w.k < 0) w.k = 2 * w.qdata.cols;
    if (w.k > EDGEVLA_PACKED_F32_MAX_K) throw py::value_error("K = " + text(w.k) + " is too large for an int4 weight");
    if (w.qdata.cols != (w.k + 1) / 2) {
        throw py::value_error("qdata must be (N, ceil(K / 2)) = (" + text(w.n) + ", " + text((w.k + 1) / 2) +
                              ") for K = " + text(w.k) + ", got " + text(w.qdata.cols) + " columns");
    }
    const int64_t groups = (w.k + group - 1) / group;
    if (w.scale.rows != w.n || w.scale.cols != groups) {
        throw py::value_error("scale must be (N, ceil(K / group_size)) = (" + text(w.n) + ", " + text(groups) +
                              "), got (" + text(w.scale.rows) + ", " + text(w.scale.cols) + ")");
    }
    return w;
}

py::array pack_w4_py(const py::object& qdata, const py::object& scale, const py::object& group_size,
                     const py::object& k) {
    int64_t k_value = -1;
    if (!k.is_none()) {
        k_value = integer_arg(k, "k", "K, or None for 2 * qdata.shape[1]");
        if (k_value < 0) throw py::value_error("k must be None or a non-negative int, got " + text(k_value));
    }
    const W4Weight w = w4_weight(qdata, scale, group_size, k_value);
    py::array_t<uint8_t> packed = new_packed(packed_w4_bytes(w.n, w.k, w.group));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        pack_w4(w.n, w.k, w.group, w.qdata.data<const uint8_t>(), w.qdata.ld, w.scale.data<const float>(), w.scale.ld,
                out);
    }
    return std::move(packed);
}

// -------------------------------------------------------------- GEMMs -------

template <typename View>
void check_activation_k(const ArrayArg& x, const View& w) {
    if (x.cols != w.k) {
        throw py::value_error(std::string(x.name) + " is (M, K) and the packed weight is (N, K) = (" + text(w.n) +
                              ", " + text(w.k) + "), so their K must match: " + x.name + " has K = " + text(x.cols));
    }
}

// act(x @ W.T + bias) for float32 x and a float-activation packed weight.
template <typename View, typename Op>
py::object gemm_f32(const py::object& x, const PackedArg<View>& w, const py::object& bias, const py::object& act,
                    const py::object& out, Op op) {
    const edgevla_activation activation = activation_arg(act);
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    check_activation_k(x_arg, w.view);
    const BiasArg bias_a = bias_arg(bias, w.view.n);
    const OutputArg c = output_arg(out, Scalar::float32, x_arg.rows, w.view.n, {&x_arg, &w.bytes, bias_a.input()});
    GemmF32Args<View> args;
    args.w = w.view;
    args.m = x_arg.rows;
    args.x = x_arg.data<const float>();
    args.ldx = x_arg.ld;
    args.epilogue = {bias_a.data(), activation};
    args.c = c.array.data<float>();
    args.ldc = c.array.ld;
    {
        py::gil_scoped_release no_gil;
        op(args);
    }
    return c.object;
}

// The W8A8 contract of gemm_s8s8_f32 for an int8 packed weight.
template <typename View, typename Op>
py::object gemm_s8(const py::object& a, const PackedArg<View>& w, const py::object& a_scale, const py::object& bias,
                   const py::object& act, const py::object& out, const py::object& residual,
                   const py::object& relu_after, const py::object& codes, const py::object& codes_scale,
                   const py::object& windows, Op op) {
    const edgevla_activation activation = activation_arg(act);
    const LeftArg left = left_arg(a, windows);
    if (left.k != w.view.k) {
        throw py::value_error(std::string(left.windowed ? "the windows of a are" : "a is") + " (M, K) and the packed "
                              "weight is (N, K) = (" + text(w.view.n) + ", " + text(w.view.k) + "), so their K must "
                              "match: " + (left.windowed ? "the windows have" : "a has") + " K = " + text(left.k));
    }
    const ActScaleArg scale = act_scale_arg(a_scale, left.m);
    const BiasArg bias_a = bias_arg(bias, w.view.n);
    const ResidualArg residual_a = residual_arg(residual, left.m, w.view.n);
    const OutputArg c = output_arg(out, Scalar::float32, left.m, w.view.n,
                                   {&left.array, &w.bytes, &scale.array, bias_a.input(), residual_a.input()});
    const StageArg stage = stage_arg(relu_after, codes, codes_scale, left.m, w.view.n);
    stage.check_disjoint({&c.array, &left.array, &w.bytes, &scale.array, bias_a.input(), residual_a.input()});
    GemmS8Args<View> args;
    args.w = w.view;
    args.m = left.m;
    args.a = left.windowed ? nullptr : left.array.data<const int8_t>();
    args.lda = left.windowed ? 0 : left.array.ld;
    args.epilogue = {w.view.w_scale, scale.array.data<const float>(), scale.mode, bias_a.data(), activation,
                     residual_a.data(), residual_a.ld()};
    args.c = c.array.data<float>();
    args.ldc = c.array.ld;
    {
        py::gil_scoped_release no_gil;
        op(args, stage.stage, left.windows());
    }
    return c.object;
}

py::object gemm_sparse_f32_py(const py::object& x, const py::object& packed, const py::object& bias,
                              const py::object& act, const py::object& out) {
    return gemm_f32(x, sparse_arg(packed, EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32), bias, act, out,
                    [](const GemmSparseF32Args& args) { gemm_sparse_f32(args); });
}

py::object gemm_sparse_s8_py(const py::object& a, const py::object& packed, const py::object& a_scale,
                             const py::object& bias, const py::object& act, const py::object& out,
                             const py::object& residual, const py::object& relu_after, const py::object& codes,
                             const py::object& codes_scale, const py::object& windows) {
    return gemm_s8(a, sparse_arg(packed, EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32), a_scale, bias, act, out, residual,
                   relu_after, codes, codes_scale, windows,
                   [](const GemmSparseS8Args& args, const GemmOutputStage& stage, const WindowSource* windows) {
                       gemm_sparse_s8(args, stage, windows);
                   });
}

py::object gemm_2to4_f32_py(const py::object& x, const py::object& packed, const py::object& bias,
                            const py::object& act, const py::object& out) {
    return gemm_f32(x, two_to_four_arg(packed, EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16), bias, act, out,
                    [](const Gemm2to4F32Args& args) { gemm_2to4_f32(args); });
}

py::object gemm_2to4_s8_py(const py::object& a, const py::object& packed, const py::object& a_scale,
                           const py::object& bias, const py::object& act, const py::object& out,
                           const py::object& residual, const py::object& relu_after, const py::object& codes,
                           const py::object& codes_scale, const py::object& windows) {
    return gemm_s8(a, two_to_four_arg(packed, EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16), a_scale, bias, act, out, residual,
                   relu_after, codes, codes_scale, windows,
                   [](const Gemm2to4S8Args& args, const GemmOutputStage& stage, const WindowSource* windows) {
                       gemm_2to4_s8(args, stage, windows);
                   });
}

py::object gemm_w4_f32_py(const py::object& x, const py::object& packed, const py::object& bias,
                          const py::object& act, const py::object& out) {
    return gemm_f32(x, w4_arg(packed), bias, act, out, [](const GemmW4F32Args& args) { gemm_w4_f32(args); });
}

py::object gemm_w4a8_f32_py(const py::object& x, const py::object& packed, const py::object& bias,
                            const py::object& act, const py::object& out) {
    return gemm_f32(x, w4_arg(packed), bias, act, out, [](const GemmW4F32Args& args) { gemm_w4a8_f32(args); });
}

// ---------------------------------------------------------- references ------

py::object gemm_f32_ref_py(const py::object& x, const py::object& w, const py::object& bias, const py::object& act,
                           const py::object& out) {
    const edgevla_activation activation = activation_arg(act);
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::float32, Access::read);
    if (x_arg.cols != w_arg.cols) {
        throw py::value_error("x is (M, K) and w is (N, K) (the nn.Linear weight layout), so their K must match: "
                              "x has K = " + text(x_arg.cols) + ", w has K = " + text(w_arg.cols));
    }
    const BiasArg bias_a = bias_arg(bias, w_arg.rows);
    const OutputArg c = output_arg(out, Scalar::float32, x_arg.rows, w_arg.rows, {&x_arg, &w_arg, bias_a.input()});
    {
        py::gil_scoped_release no_gil;
        edgevla_gemm_f32_ref(x_arg.rows, w_arg.rows, x_arg.cols, x_arg.data<const float>(), x_arg.ld,
                             w_arg.data<const float>(), w_arg.ld, bias_a.data(), activation, c.array.data<float>(),
                             c.array.ld);
    }
    return c.object;
}

// The int4 references (float32 or int8-quantized activations) share their arguments.
using W4Reference = decltype(&edgevla_gemm_w4_f32_ref);
static_assert(std::is_same_v<W4Reference, decltype(&edgevla_gemm_w4a8_f32_ref)>, "one signature for both");

template <W4Reference reference>
py::object gemm_w4_ref_py(const py::object& x, const py::object& qdata, const py::object& scale,
                          const py::object& group_size, const py::object& bias, const py::object& act,
                          const py::object& out) {
    const edgevla_activation activation = activation_arg(act);
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    const W4Weight w = w4_weight(qdata, scale, group_size, x_arg.cols);
    const BiasArg bias_a = bias_arg(bias, w.n);
    const OutputArg c =
        output_arg(out, Scalar::float32, x_arg.rows, w.n, {&x_arg, &w.qdata, &w.scale, bias_a.input()});
    {
        py::gil_scoped_release no_gil;
        reference(x_arg.rows, w.n, w.k, w.group, x_arg.data<const float>(), x_arg.ld, w.qdata.data<const uint8_t>(),
                  w.qdata.ld, w.scale.data<const float>(), w.scale.ld, bias_a.data(), activation,
                  c.array.data<float>(), c.array.ld);
    }
    return c.object;
}

// --------------------------------------------------------- packed_info ------

py::dict packed_info_py(const py::object& packed) {
    const ArrayArg bytes = packed_bytes(packed);
    const uint8_t* data = bytes.data<const uint8_t>();
    const uint64_t length = static_cast<uint64_t>(bytes.size());
    edgevla_packed_header header{};
    std::string problem = read_packed_header(data, length, &header);
    py::dict info;
    const auto format = static_cast<edgevla_packed_format>(header.format);
    if (problem.empty()) {
        // The format's own validator: the whole layout, not just the header.
        switch (format) {
            case EDGEVLA_PACKED_FORMAT_S8_N16K4: {
                PackedS8View view;
                problem = validate_packed_s8(data, length, &view);
                break;
            }
            case EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32:
            case EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32: {
                PackedSparseView view;
                problem = validate_packed_sparse(data, length, format, &view);
                info["slots"] = view.slots;
                info["nonzeros"] = view.nonzeros;
                break;
            }
            case EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16:
            case EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16: {
                Packed2to4View view;
                problem = validate_packed_2to4(data, length, format, &view);
                break;
            }
            case EDGEVLA_PACKED_FORMAT_W4_N16K8: {
                PackedW4View view;
                problem = validate_packed_w4(data, length, &view);
                info["group_size"] = view.group;
                break;
            }
        }
    }
    if (!problem.empty()) throw py::value_error("packed " + problem);
    const bool int8_weights = format == EDGEVLA_PACKED_FORMAT_S8_N16K4 ||
                              format == EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32 ||
                              format == EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16;
    info["format"] = packed_format_name(header.format);
    info["version"] = header.version;
    info["n"] = header.n;
    info["k"] = header.k;
    info["nbytes"] = header.total_bytes;
    info["block_n"] = header.block_n;
    info["block_k"] = header.block_k;
    info["weight_dtype"] = int8_weights ? "int8" : format == EDGEVLA_PACKED_FORMAT_W4_N16K8 ? "int4" : "float32";
    info["activation_dtype"] = int8_weights ? "int8" : "float32";
    return info;
}

}  // namespace

void register_formats(py::module_& m) {
    m.attr("PACKED_F32_MAX_K") = EDGEVLA_PACKED_F32_MAX_K;
    m.def("pack_sparse_f32", &pack_sparse_f32_py, py::arg("w"),
          "Packs the non-zeros of a float32 (N, K) weight into the SPARSE_F32_N16W32 format.");
    m.def("pack_sparse_s8", &pack_sparse_s8_py, py::arg("w"), py::arg("w_scale"),
          "Packs the non-zeros of an int8 (N, K) weight and its float32 (N,) scales into SPARSE_S8_N16W32.");
    m.def("pack_2to4_f32", &pack_2to4_f32_py, py::arg("w"),
          "Packs a 2:4 sparse float32 (N, K) weight into 2TO4_F32_N16K16; ValueError if it is not 2:4.");
    m.def("pack_2to4_s8", &pack_2to4_s8_py, py::arg("w"), py::arg("w_scale"),
          "Packs a 2:4 sparse int8 (N, K) weight and its (N,) scales into 2TO4_S8_N16K16.");
    m.def("pack_w4", &pack_w4_py, py::arg("qdata"), py::arg("scale"), py::arg("group_size"), py::kw_only(),
          py::arg("k") = py::none(),
          "Packs int4 codes (uint8 (N, ceil(K / 2)), edgevla.quant.primitives layout) and float32 scales "
          "(N, ceil(K / group_size)) into W4_N16K8.");
    m.def("gemm_sparse_f32", &gemm_sparse_f32_py, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "act(x @ w.T + bias) for float32 x and a pack_sparse_f32 weight, on the active ISA.");
    m.def("gemm_sparse_s8s8_f32", &gemm_sparse_s8_py, py::arg("a"), py::arg("packed"), py::arg("a_scale"),
          py::arg("bias") = py::none(), py::arg("act") = "none", py::arg("out") = py::none(),
          py::arg("residual") = py::none(), py::arg("relu_after") = false, py::arg("codes") = py::none(),
          py::arg("codes_scale") = py::none(), py::arg("windows") = py::none(),
          "W8A8 GEMM on a pack_sparse_s8 weight, bit-identical to gemm_s8s8_f32_ref on the dense weight; then the "
          "output stage and windows as gemm_s8s8_f32's.");
    m.def("gemm_2to4_f32", &gemm_2to4_f32_py, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "act(x @ w.T + bias) for float32 x and a pack_2to4_f32 weight, on the active ISA.");
    m.def("gemm_2to4_s8s8_f32", &gemm_2to4_s8_py, py::arg("a"), py::arg("packed"), py::arg("a_scale"),
          py::arg("bias") = py::none(), py::arg("act") = "none", py::arg("out") = py::none(),
          py::arg("residual") = py::none(), py::arg("relu_after") = false, py::arg("codes") = py::none(),
          py::arg("codes_scale") = py::none(), py::arg("windows") = py::none(),
          "W8A8 GEMM on a pack_2to4_s8 weight, bit-identical to gemm_s8s8_f32_ref on the dense weight; then the "
          "output stage and windows as gemm_s8s8_f32's.");
    m.def("gemm_w4_f32", &gemm_w4_f32_py, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "act(x @ dequant(w).T + bias) for float32 x and a pack_w4 weight, on the active ISA.");
    m.def("gemm_f32_ref", &gemm_f32_ref_py, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::kw_only(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "Reference float32 GEMM, act(x @ w.T + bias), summed in double.");
    m.def("gemm_w4a8_f32", &gemm_w4a8_f32_py, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "act(x @ dequant(w).T + bias) for a pack_w4 weight with x quantized to int8 per weight group (W4A8), on "
          "the active ISA; bit-identical to gemm_w4a8_f32_ref.");
    m.def("gemm_w4_f32_ref", &gemm_w4_ref_py<edgevla_gemm_w4_f32_ref>, py::arg("x"), py::arg("qdata"), py::arg("scale"),
          py::arg("group_size"), py::arg("bias") = py::none(), py::kw_only(), py::arg("act") = "none",
          py::arg("out") = py::none(),
          "Reference int4 weight-only GEMM on unpacked primitives-layout codes, summed in double.");
    m.def("gemm_w4a8_f32_ref", &gemm_w4_ref_py<edgevla_gemm_w4a8_f32_ref>, py::arg("x"), py::arg("qdata"),
          py::arg("scale"), py::arg("group_size"), py::arg("bias") = py::none(), py::kw_only(),
          py::arg("act") = "none", py::arg("out") = py::none(),
          "Reference int4 x int8 GEMM on unpacked primitives-layout codes: x quantized to int8 per group, exact "
          "integer dot products, scaled and summed in float32 in group order.");
    m.def("packed_info", &packed_info_py, py::arg("packed"),
          "The validated header of any packed weight: format, version, n, k, nbytes, block sizes, dtypes.");
}

}  // namespace edgevla::bindings
