// Turning Python arguments into validated, zero-copy views of their memory.
//
// Kernels trust their arguments (gemm_s8s8.h); this is where that trust is
// earned. Anything with the buffer protocol is accepted (NumPy arrays,
// memoryviews, array.array, ...) and checked for dtype, rank, shape, strides,
// alignment and writability before a kernel sees a pointer. Failures raise
// TypeError (wrong kind of object or dtype) or ValueError (right dtype, wrong
// shape or layout) with a message that names the argument.
#pragma once

#include <pybind11/pybind11.h>

#include "cpu_ops.h"
#include "gemm_s8s8.h"

#include <cstdint>
#include <initializer_list>

namespace edgevla::bindings {

namespace py = pybind11;

enum class Scalar { int8, uint8, int32, float32 };
enum class Access { read, write };

// A NumPy array's memory as a buffer_info read from the array's own fields,
// without a PEP 3118 export: the export (format string, shape and strides
// copied, released again) was most of a small kernel call's ~2 us of
// validation. True when `obj` is an ndarray of a plain numeric type in native
// byte order, aligned to its elements, and writable if `writable`; false for
// anything else, which the caller then requests through the buffer protocol
// (whose path also words every error). The array is the caller's argument and
// stays referenced for the call; unlike an export this does not stop another
// thread from resize(refcheck=False) on it while a kernel runs without the GIL.
bool ndarray_buffer(py::handle obj, bool writable, py::buffer_info* info);

// A validated array of rank 0, 1 or 2, seen as rows x cols with contiguous
// rows: element (r, c) lives at data<T>()[r * ld + c]. Holding the Py_buffer
// keeps the exporter's memory alive and unresizable while a kernel runs
// without the GIL.
struct ArrayArg {
    py::buffer_info buffer;
    const char* name = "";
    int64_t rows = 1;
    int64_t cols = 0;
    int64_t ld = 0;  // elements from one row to the next

    int64_t size() const { return rows * cols; }

    template <typename T>
    T* data() const {
        return static_cast<T*>(buffer.ptr);
    }

    // True when the bytes holding this array's elements and other's intersect.
    bool overlaps(const ArrayArg& other) const;
};

// A 2-D array with contiguous rows. `dims` names the expected shape in
// messages, e.g. "(M, K)".
ArrayArg matrix_arg(py::handle obj, const char* name, const char* dims, Scalar scalar, Access access);

// A 1-D contiguous array; with allow_scalar, a 0-d array counts as length 1.
ArrayArg vector_arg(py::handle obj, const char* name, Scalar scalar, bool allow_scalar = false);

// ValueError unless `out` is disjoint from every input: a kernel writing into
// memory it is still reading gives garbage.
void check_disjoint(const ArrayArg& out, std::initializer_list<const ArrayArg*> inputs);

// The output of a kernel: the caller's `out` array validated as a writable
// (rows, cols) matrix, or a new C-contiguous NumPy array when `out` is None.
struct OutputArg {
    py::object object;  // what the binding returns
    ArrayArg array;
};

// The epilogue activation named by a Python string: "none", "relu",
// "gelu_tanh" or "gelu_erf" (ValueError otherwise, TypeError for a non-string).
edgevla_activation activation_arg(py::handle obj);

OutputArg output_arg(py::handle out, Scalar scalar, int64_t rows, int64_t cols,
                     std::initializer_list<const ArrayArg*> inputs);

// The activation scale of a W8A8 GEMM: one float32 value (a 0-D array or
// shape (1,)) for a per-tensor scale, or (M,) for one per token.
struct ActScaleArg {
    ArrayArg array;
    edgevla_act_scale_mode mode = EDGEVLA_ACT_SCALE_PER_TENSOR;
};
ActScaleArg act_scale_arg(py::handle obj, int64_t m);

// An optional float32 (N,) bias: None gives present = false.
struct BiasArg {
    ArrayArg array;
    bool present = false;
    const float* data() const { return present ? array.data<const float>() : nullptr; }
    const ArrayArg* input() const { return present ? &array : nullptr; }
};
BiasArg bias_arg(py::handle obj, int64_t n);

// An optional float32 (M, N) residual added after the activation (the W8A8
// epilogue's last step, gemm_s8s8.h): None gives present = false.
struct ResidualArg {
    ArrayArg array;
    bool present = false;
    const float* data() const { return present ? array.data<const float>() : nullptr; }
    int64_t ld() const { return present ? array.ld : 0; }
    const ArrayArg* input() const { return present ? &array : nullptr; }
};
ResidualArg residual_arg(py::handle obj, int64_t m, int64_t n);

// A convolution's windows without their input (the kernel, strides,
// dilations, begin pads and output size per spatial dimension, validated):
// Python's native.WindowSpec, made once per layer and input shape, which the
// int8 GEMMs take as `windows=` (cpu_ops.h, WindowSource).
struct WindowSpec {
    int dims = 0;
    int64_t kernel[kMaxWindowDims] = {}, stride[kMaxWindowDims] = {}, dilation[kMaxWindowDims] = {};
    int64_t pad_begin[kMaxWindowDims] = {}, out[kMaxWindowDims] = {};
};

// The geometry of spec's windows over x, C-contiguous (N, spatial..., C) with
// spec.dims spatial dimensions (the caller checks the rank).
WindowGeometry windows_over(const WindowSpec& spec, const py::buffer_info& x);

// The left operand of an int8 GEMM: `a` itself, an int8 (M, K) matrix with
// contiguous rows; or, with `windows` (a WindowSpec), the windows over `a`, a
// C-contiguous int8 (N, spatial..., C) array: M = N x prod(out) and
// K = prod(kernel) x C.
struct LeftArg {
    ArrayArg array;  // the matrix, or x as one row of all its elements (for the overlap checks)
    int64_t m = 0, k = 0;
    bool windowed = false;
    WindowSource source;
    const WindowSource* windows() const { return windowed ? &source : nullptr; }
};
LeftArg left_arg(py::handle a, py::handle windows);

// The output stage of an int8 GEMM (cpu_ops.h): `relu_after` a bool, and
// `codes` a writable int8 (M, N) array with its `codes_scale`, a positive
// finite number, both or neither. check_disjoint then keeps codes clear of
// the float output and of every input.
struct StageArg {
    GemmOutputStage stage;
    ArrayArg codes;
    bool has_codes = false;
    void check_disjoint(std::initializer_list<const ArrayArg*> others) const;
};
StageArg stage_arg(py::handle relu_after, py::handle codes, py::handle codes_scale, int64_t m, int64_t n);

}  // namespace edgevla::bindings
