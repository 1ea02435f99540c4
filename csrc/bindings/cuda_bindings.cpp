// Python bindings of the CUDA kernels (csrc/cuda/cuda_kernels.h).
//
// Operands are device arrays: any object with __cuda_array_interface__
// (PyTorch CUDA tensors, CuPy, Numba) or __dlpack__ (read as a legacy
// DLPack capsule, which stays owned by its exporter). Every shape, dtype,
// stride, alignment, device and overlap is checked here, before a launch,
// and refused with TypeError or ValueError naming the argument; CUDA errors
// after a launch come back as RuntimeError. `stream` is a cudaStream_t as an
// int or an object with a `cuda_stream` attribute (torch.cuda.Stream); the
// kernels run asynchronously on it, like any CUDA library call.
//
// This file needs no CUDA headers: without CUDA the functions exist and
// raise, and cuda_kernels_compiled() says False.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "cuda/cuda_kernels.h"
#include "cuda/pack_2to4_mma.h"
#include "packed_formats.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace edgevla::bindings {
namespace py = pybind11;
namespace {

// ------------------------------------------------------------ DLPack ABI ----
// The few structs of dlpack.h (v0.8, ABI-stable) this file reads.
struct DLDevice {
    int32_t device_type;  // 2 = kDLCUDA, 13 = kDLCUDAManaged
    int32_t device_id;
};
struct DLDataType {
    uint8_t code;  // 0 int, 1 uint, 2 float
    uint8_t bits;
    uint16_t lanes;
};
struct DLTensor {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t* shape;
    int64_t* strides;  // elements; NULL = C-contiguous
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor*);
};

enum class DType { int8, uint8, int32, uint32, float16, float32, other };

const char* dtype_name(DType d) {
    switch (d) {
        case DType::int8: return "int8";
        case DType::uint8: return "uint8";
        case DType::int32: return "int32";
        case DType::uint32: return "uint32";
        case DType::float16: return "float16";
        case DType::float32: return "float32";
        default: return "an unsupported dtype";
    }
}

size_t dtype_bytes(DType d) {
    switch (d) {
        case DType::int8:
        case DType::uint8: return 1;
        case DType::float16: return 2;
        default: return 4;
    }
}

[[noreturn]] void fail_type(const std::string& message) { throw py::type_error(message); }
[[noreturn]] void fail_value(const std::string& message) { throw py::value_error(message); }

// A device array's pointer, shape and strides (in elements), kept alive by `owner`.
struct DeviceArray {
    py::object owner;
    const char* name = "";
    uintptr_t data = 0;
    DType dtype = DType::other;
    std::vector<int64_t> shape, strides;
    bool readonly = false;

    int64_t size() const {
        int64_t s = 1;
        for (int64_t d : shape) s *= d;
        return s;
    }
    // Bytes from the first to one past the last element.
    uint64_t extent_bytes() const {
        if (size() == 0) return 0;
        int64_t last = 0;
        for (size_t i = 0; i < shape.size(); ++i) last += (shape[i] - 1) * strides[i];
        return static_cast<uint64_t>(last + 1) * dtype_bytes(dtype);
    }
};

DType dtype_of_typestr(const std::string& s) {
    if (s.size() < 3) return DType::other;
    const std::string kind = s.substr(1);
    if (kind == "i1") return DType::int8;
    if (kind == "u1") return DType::uint8;
    if (kind == "i4") return DType::int32;
    if (kind == "u4") return DType::uint32;
    if (kind == "f2") return DType::float16;
    if (kind == "f4") return DType::float32;
    return DType::other;
}

DType dtype_of_dlpack(const DLDataType& t) {
    if (t.lanes != 1) return DType::other;
    if (t.code == 0 && t.bits == 8) return DType::int8;
    if (t.code == 1 && t.bits == 8) return DType::uint8;
    if (t.code == 0 && t.bits == 32) return DType::int32;
    if (t.code == 1 && t.bits == 32) return DType::uint32;
    if (t.code == 2 && t.bits == 16) return DType::float16;
    if (t.code == 2 && t.bits == 32) return DType::float32;
    return DType::other;
}

DeviceArray from_cuda_array_interface(py::handle obj, const char* name) {
    DeviceArray array;
    array.owner = py::reinterpret_borrow<py::object>(obj);
    array.name = name;
    py::dict cai = obj.attr("__cuda_array_interface__").cast<py::dict>();
    py::tuple data = cai["data"].cast<py::tuple>();
    array.data = data[0].cast<uintptr_t>();
    array.readonly = data[1].cast<bool>();
    array.dtype = dtype_of_typestr(cai["typestr"].cast<std::string>());
    for (py::handle d : cai["shape"].cast<py::tuple>()) array.shape.push_back(d.cast<int64_t>());
    const size_t element = dtype_bytes(array.dtype);
    if (cai.contains("strides") && !cai["strides"].is_none()) {
        for (py::handle s : cai["strides"].cast<py::tuple>()) {
            const int64_t bytes = s.cast<int64_t>();
            if (bytes % static_cast<int64_t>(element) != 0) fail_value(std::string(name) + ": strides not in whole elements");
            array.strides.push_back(bytes / static_cast<int64_t>(element));
        }
    } else {
        array.strides.assign(array.shape.size(), 1);
        for (int i = static_cast<int>(array.shape.size()) - 2; i >= 0; --i) {
            array.strides[i] = array.strides[i + 1] * array.shape[i + 1];
        }
    }
    return array;
}

DeviceArray from_dlpack(py::handle obj, const char* name) {
    DeviceArray array;
    py::object capsule = obj.attr("__dlpack__")();
    if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) fail_type(std::string(name) + ": __dlpack__ gave no DLPack capsule");
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    const DLTensor& t = managed->dl_tensor;
    if (t.device.device_type != 2 && t.device.device_type != 13) {
        fail_type(std::string(name) + ": expected a CUDA array, got memory of DLPack device type " +
                  std::to_string(t.device.device_type) + (t.device.device_type == 1 ? " (host)" : ""));
    }
    array.owner = capsule;  // the capsule's destructor releases the tensor
    array.name = name;
    array.data = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
    array.dtype = dtype_of_dlpack(t.dtype);
    array.shape.assign(t.shape, t.shape + t.ndim);
    if (t.strides != nullptr) {
        array.strides.assign(t.strides, t.strides + t.ndim);
    } else {
        array.strides.assign(t.ndim, 1);
        for (int i = t.ndim - 2; i >= 0; --i) array.strides[i] = array.strides[i + 1] * array.shape[i + 1];
    }
    return array;
}

// Any device array, its dtype unchecked.
DeviceArray parse_device_array(py::handle obj, const char* name, bool writable) {
    if (!cuda::kernels_compiled()) {
        throw std::runtime_error("edgevla was built without CUDA (EDGEVLA_CUDA=OFF or no nvcc): no CUDA kernels");
    }
    DeviceArray array;
    if (py::hasattr(obj, "__cuda_array_interface__")) {
        array = from_cuda_array_interface(obj, name);
    } else if (py::hasattr(obj, "__dlpack__")) {
        array = from_dlpack(obj, name);
    } else {
        fail_type(std::string(name) + ": expected a CUDA array (__cuda_array_interface__ or __dlpack__), got " +
                  Py_TYPE(obj.ptr())->tp_name);
    }
    if (writable && array.readonly) fail_value(std::string(name) + ": read-only array");
    if (array.size() > 0) cuda::check_device_pointer(reinterpret_cast<const void*>(array.data), name);
    return array;
}

void check_dtype(const DeviceArray& array, std::initializer_list<DType> allowed) {
    for (DType d : allowed) {
        if (array.dtype == d) return;
    }
    std::string names;
    for (DType d : allowed) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
    fail_type(std::string(array.name) + ": expected " + names + ", got " + dtype_name(array.dtype));
}

DeviceArray device_array(py::handle obj, const char* name, DType want, bool writable) {
    DeviceArray array = parse_device_array(obj, name, writable);
    check_dtype(array, {want});
    return array;
}

std::string shape_text(const DeviceArray& a) {
    std::string s = "(";
    for (size_t i = 0; i < a.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(a.shape[i]);
    return s + (a.shape.size() == 1 ? ",)" : ")");
}

// A 2-D array with unit column stride; returns the row stride.
int64_t matrix_ld(const DeviceArray& a, int64_t rows, int64_t cols, const char* dims) {
    if (a.shape.size() != 2) fail_value(std::string(a.name) + ": expected a 2-D array " + dims + ", got shape " + shape_text(a));
    if (rows >= 0 && a.shape[0] != rows) {
        fail_value(std::string(a.name) + ": expected " + std::to_string(rows) + " rows " + dims + ", got shape " + shape_text(a));
    }
    if (cols >= 0 && a.shape[1] != cols) {
        fail_value(std::string(a.name) + ": expected " + std::to_string(cols) + " columns " + dims + ", got shape " +
                   shape_text(a));
    }
    if (a.shape[1] > 1 && a.strides[1] != 1) fail_value(std::string(a.name) + ": rows must be contiguous (column stride 1)");
    const int64_t ld = a.shape[0] > 1 ? a.strides[0] : a.shape[1];
    if (ld < a.shape[1]) fail_value(std::string(a.name) + ": row stride smaller than the row");
    return ld < 1 ? 1 : ld;
}

void check_vector(const DeviceArray& a, int64_t length) {
    if (a.shape.size() != 1 || a.shape[0] != length) {
        fail_value(std::string(a.name) + ": expected shape (" + std::to_string(length) + ",), got " + shape_text(a));
    }
    if (length > 1 && a.strides[0] != 1) fail_value(std::string(a.name) + ": must be contiguous");
}

void check_aligned(const DeviceArray& a, size_t bytes) {
    if (a.data % bytes != 0) fail_value(std::string(a.name) + ": device pointer must be " + std::to_string(bytes) + "-byte aligned");
}

void check_disjoint(const DeviceArray& out, std::initializer_list<const DeviceArray*> inputs) {
    const uint64_t begin = out.data, end = out.data + out.extent_bytes();
    for (const DeviceArray* in : inputs) {
        if (in == nullptr || in->size() == 0 || out.size() == 0) continue;
        const uint64_t b = in->data, e = in->data + in->extent_bytes();
        if (begin < e && b < end) fail_value(std::string("out overlaps ") + in->name);
    }
}

uintptr_t stream_handle(py::handle stream) {
    if (stream.is_none()) return 0;
    if (py::hasattr(stream, "cuda_stream")) return stream.attr("cuda_stream").cast<uintptr_t>();
    if (py::isinstance<py::int_>(stream)) return stream.cast<uintptr_t>();
    fail_type(std::string("stream must be an int (cudaStream_t) or have .cuda_stream, got ") + Py_TYPE(stream.ptr())->tp_name);
}

cuda::GemmVariant variant_arg(const std::string& name) {
    if (name == "auto") return cuda::GemmVariant::automatic;
    if (name == "small_m") return cuda::GemmVariant::small_m;
    if (name == "small_m_wave") return cuda::GemmVariant::small_m_wave;
    if (name == "tiled") return cuda::GemmVariant::tiled;
    if (name == "tiled_wide") return cuda::GemmVariant::tiled_wide;
    if (name == "tiled_split_k") return cuda::GemmVariant::tiled_split_k;
    if (name == "wgmma") return cuda::GemmVariant::wgmma;
    if (name == "tcgen05") return cuda::GemmVariant::tcgen05;
    fail_value("variant must be 'auto', 'small_m', 'small_m_wave', 'tiled', 'tiled_wide', 'tiled_split_k', 'wgmma' or "
               "'tcgen05', got '" + name + "'");
}

cuda::GemmW4Variant w4_variant_arg(const std::string& name) {
    if (name == "auto") return cuda::GemmW4Variant::automatic;
    if (name == "cuda_cores") return cuda::GemmW4Variant::cuda_cores;
    if (name == "streaming") return cuda::GemmW4Variant::streaming;
    if (name == "tensor_cores") return cuda::GemmW4Variant::tensor_cores;
    fail_value("variant must be 'auto', 'cuda_cores', 'streaming' or 'tensor_cores', got '" + name + "'");
}

cuda::Gemm2to4Variant sparse_variant_arg(const std::string& name) {
    if (name == "auto") return cuda::Gemm2to4Variant::automatic;
    if (name == "tiled_wide") return cuda::Gemm2to4Variant::tiled_wide;
    fail_value("variant must be 'auto' or 'tiled_wide', got '" + name + "'");
}

struct OptionalArray {
    DeviceArray array;
    bool present = false;
    const DeviceArray* input() const { return present ? &array : nullptr; }
    template <typename T>
    const T* data() const { return present ? reinterpret_cast<const T*>(array.data) : nullptr; }
};

OptionalArray optional_vector(py::handle obj, const char* name, int64_t length) {
    OptionalArray o;
    if (obj.is_none()) return o;
    o.array = device_array(obj, name, DType::float32, false);
    check_vector(o.array, length);
    o.present = true;
    return o;
}

// The W8A8 epilogue's scales: w_scale (N,), a_scale (1,) or (M,).
struct Scales {
    OptionalArray w_scale, a_scale;
    bool per_token = false;
};

Scales scales_arg(py::handle w_scale, py::handle a_scale, int64_t m, int64_t n, bool needed) {
    Scales s;
    if (!needed) {
        if (!w_scale.is_none() || !a_scale.is_none()) fail_value("w_scale / a_scale apply to float32 out only (int32 out is the raw accumulator)");
        return s;
    }
    if (w_scale.is_none() || a_scale.is_none()) fail_value("float32 out needs w_scale (N,) and a_scale (1,) or (M,)");
    s.w_scale = optional_vector(w_scale, "w_scale", n);
    s.a_scale.array = device_array(a_scale, "a_scale", DType::float32, false);
    s.a_scale.present = true;
    const DeviceArray& a = s.a_scale.array;
    const int64_t length = a.shape.size() == 1 ? a.shape[0] : (a.shape.empty() ? 1 : -1);
    if (length == 1) {
        s.per_token = false;  // for M = 1 the two modes coincide
    } else if (length == m) {
        s.per_token = true;
    } else {
        fail_value("a_scale: expected shape (1,) or (M,) = (" + std::to_string(m) + ",), got " + shape_text(a));
    }
    if (s.per_token && m > 1 && a.strides[0] != 1) fail_value("a_scale: must be contiguous");
    return s;
}

// ------------------------------------------------------------ W8A8 GEMM -----
// The output of the int8 GEMMs: int32 (the raw accumulators, nothing else
// allowed) or float32 through the W8A8 epilogue (scales, bias, activation).
struct W8A8Output {
    DeviceArray out;
    int64_t ldc = 0;
    bool int32_out = false;
    Scales scales;
    OptionalArray bias;
    int activation = 0;

    // `out` must not overlap `x`, `w` (when given) or the epilogue's vectors.
    void check_disjoint_from(const DeviceArray& x, const DeviceArray* w, const DeviceArray* w2 = nullptr) const {
        check_disjoint(out, {&x, w, w2, scales.w_scale.input(), scales.a_scale.input(), bias.input()});
    }

    // Sets the output fields every W8A8 argument struct shares.
    void into(cuda::W8A8OutputArgs& g) const {
        g.w_scale = scales.w_scale.data<float>();
        g.a_scale = scales.a_scale.data<float>();
        g.a_scale_per_token = scales.per_token;
        g.bias = bias.data<float>();
        g.activation = activation;
        if (int32_out) {
            g.c_s32 = reinterpret_cast<int32_t*>(out.data);
        } else {
            g.c_f32 = reinterpret_cast<float*>(out.data);
        }
        g.ldc = ldc;
    }
};

W8A8Output w8a8_output(py::handle out_obj, py::handle w_scale, py::handle a_scale, py::handle bias_obj, py::handle act,
                       int64_t m, int64_t n) {
    W8A8Output o;
    o.out = parse_device_array(out_obj, "out", true);
    check_dtype(o.out, {DType::int32, DType::float32});
    o.int32_out = o.out.dtype == DType::int32;
    o.ldc = matrix_ld(o.out, m, n, "(M, N)");
    o.scales = scales_arg(w_scale, a_scale, m, n, !o.int32_out);
    o.bias = optional_vector(bias_obj, "bias", n);
    o.activation = activation_arg(act);
    if (o.int32_out && (o.bias.present || o.activation != EDGEVLA_ACTIVATION_NONE)) {
        fail_value("int32 out takes no bias or activation");
    }
    return o;
}

void cuda_gemm_s8s8(py::handle a_obj, py::handle w_obj, py::handle out_obj, py::handle w_scale, py::handle a_scale,
                    py::handle bias_obj, py::handle act, const std::string& variant, py::handle stream) {
    const DeviceArray a = device_array(a_obj, "a", DType::int8, false);
    const DeviceArray w = device_array(w_obj, "w", DType::int8, false);
    const int64_t lda = matrix_ld(a, -1, -1, "(M, K)");
    const int64_t m = a.shape[0], k = a.shape[1];
    const int64_t ldw = matrix_ld(w, -1, k, "(N, K)");
    const int64_t n = w.shape[0];
    if (k > EDGEVLA_GEMM_S8S8_MAX_K) fail_value("K must be <= " + std::to_string(EDGEVLA_GEMM_S8S8_MAX_K));
    const W8A8Output o = w8a8_output(out_obj, w_scale, a_scale, bias_obj, act, m, n);
    o.check_disjoint_from(a, &w);

    cuda::GemmS8S8Args g;
    g.m = m, g.n = n, g.k = k;
    g.a = reinterpret_cast<const int8_t*>(a.data), g.lda = lda;
    g.w = reinterpret_cast<const int8_t*>(w.data), g.ldw = ldw;
    o.into(g);
    const cuda::GemmVariant v = variant_arg(variant);
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::gemm_s8s8(g, v, s);
}

// ------------------------------------------------------------- int4 GEMV ----
void cuda_gemm_w4(py::handle x_obj, py::handle packed_obj, py::handle out_obj, int64_t n, int64_t k, int64_t group,
                  py::handle bias_obj, py::handle act, const std::string& variant, py::handle stream) {
    if (group != 32 && group != 64 && group != 128) fail_value("group must be 32, 64 or 128, got " + std::to_string(group));
    if (n < 0 || k < 0 || n > (int64_t(1) << 31) || k > EDGEVLA_PACKED_F32_MAX_K) fail_value("bad n or k");
    const DeviceArray x = parse_device_array(x_obj, "x", false);
    check_dtype(x, {DType::float32, DType::float16});
    const bool f16 = x.dtype == DType::float16;
    const int64_t ldx = matrix_ld(x, -1, k, "(M, K)");
    const int64_t m = x.shape[0];
    if (m > cuda::kGemmW4MaxM) fail_value("x: M must be <= " + std::to_string(cuda::kGemmW4MaxM) + " for the int4 GEMV, got " + std::to_string(m));
    const DeviceArray packed = device_array(packed_obj, "packed", DType::uint8, false);
    const edgevla_packed_w4_layout layout = edgevla_packed_w4_layout_of(n, k, group);
    if (packed.shape.size() != 1 || static_cast<uint64_t>(packed.shape[0]) < layout.total_bytes || (packed.shape[0] > 1 && packed.strides[0] != 1)) {
        fail_value("packed: expected a contiguous uint8 buffer of " + std::to_string(layout.total_bytes) +
                   " bytes (the W4_N16K8 buffer of n, k, group), got shape " + shape_text(packed));
    }
    check_aligned(packed, 16);
    const DeviceArray out = device_array(out_obj, "out", DType::float32, true);
    const int64_t ldy = matrix_ld(out, m, n, "(M, N)");
    const OptionalArray bias = optional_vector(bias_obj, "bias", n);
    check_disjoint(out, {&x, &packed, bias.input()});

    cuda::GemmW4Args g;
    g.m = m, g.n = n, g.k = k, g.group = group;
    g.x = reinterpret_cast<const void*>(x.data), g.x_f16 = f16, g.ldx = ldx;
    g.packed = reinterpret_cast<const uint8_t*>(packed.data);
    g.scales_offset = layout.scales_offset;
    g.bias = bias.data<float>();
    g.activation = activation_arg(act);
    g.y = reinterpret_cast<float*>(out.data), g.ldy = ldy;
    const cuda::GemmW4Variant v = w4_variant_arg(variant);
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::gemm_w4(g, v, s);
}

// ------------------------------------------------------------ 2:4 sparse ----
struct Packed2to4 {
    DeviceArray values, meta;
};

Packed2to4 packed_2to4_args(py::handle values_obj, py::handle meta_obj, int64_t n, int64_t k, bool f16) {
    if (n < 0 || k < 0 || n > (int64_t(1) << 31) || k > EDGEVLA_GEMM_S8S8_MAX_K) fail_value("bad n or k");
    const cuda::Packed2to4MmaLayout layout = cuda::packed_2to4_mma_layout(n, k, f16);
    // uint32 words; int32 accepted too (PyTorch's uint32 tensors support few operations).
    Packed2to4 p{parse_device_array(values_obj, "values", false), parse_device_array(meta_obj, "meta", false)};
    check_dtype(p.values, {DType::uint32, DType::int32});
    check_dtype(p.meta, {DType::uint32, DType::int32});
    if (p.values.shape.size() != 1 || p.values.shape[0] != layout.value_words || (layout.value_words > 1 && p.values.strides[0] != 1)) {
        fail_value("values: expected a contiguous (" + std::to_string(layout.value_words) + ",) uint32 or int32 array, got " + shape_text(p.values));
    }
    if (p.meta.shape.size() != 1 || p.meta.shape[0] != layout.meta_words || (layout.meta_words > 1 && p.meta.strides[0] != 1)) {
        fail_value("meta: expected a contiguous (" + std::to_string(layout.meta_words) + ",) uint32 or int32 array, got " + shape_text(p.meta));
    }
    check_aligned(p.values, 16);
    return p;
}

void cuda_gemm_2to4_s8(py::handle x_obj, py::handle values_obj, py::handle meta_obj, py::handle out_obj, int64_t n,
                       int64_t k, py::handle w_scale, py::handle a_scale, py::handle bias_obj, py::handle act,
                       const std::string& variant, py::handle stream) {
    const cuda::Gemm2to4Variant v = sparse_variant_arg(variant);
    const DeviceArray x = device_array(x_obj, "x", DType::int8, false);
    const int64_t ldx = matrix_ld(x, -1, k, "(M, K)");
    const int64_t m = x.shape[0];
    const Packed2to4 p = packed_2to4_args(values_obj, meta_obj, n, k, false);
    const W8A8Output o = w8a8_output(out_obj, w_scale, a_scale, bias_obj, act, m, n);
    o.check_disjoint_from(x, &p.values, &p.meta);

    cuda::Gemm2to4S8Args g;
    g.m = m, g.n = n, g.k = k;
    g.x = reinterpret_cast<const int8_t*>(x.data), g.ldx = ldx;
    g.values = reinterpret_cast<const uint32_t*>(p.values.data);
    g.meta = reinterpret_cast<const uint32_t*>(p.meta.data);
    o.into(g);
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::gemm_2to4_s8(g, v, s);
}

void cuda_gemm_2to4_f16(py::handle x_obj, py::handle values_obj, py::handle meta_obj, py::handle out_obj, int64_t n,
                        int64_t k, py::handle bias_obj, py::handle act, const std::string& variant,
                        py::handle stream) {
    const cuda::Gemm2to4Variant v = sparse_variant_arg(variant);
    const DeviceArray x = device_array(x_obj, "x", DType::float16, false);
    const int64_t ldx = matrix_ld(x, -1, k, "(M, K)");
    const int64_t m = x.shape[0];
    const Packed2to4 p = packed_2to4_args(values_obj, meta_obj, n, k, true);
    const DeviceArray out = device_array(out_obj, "out", DType::float32, true);
    const int64_t ldc = matrix_ld(out, m, n, "(M, N)");
    const OptionalArray bias = optional_vector(bias_obj, "bias", n);
    check_disjoint(out, {&x, &p.values, &p.meta, bias.input()});

    cuda::Gemm2to4F16Args g;
    g.m = m, g.n = n, g.k = k;
    g.x = reinterpret_cast<const uint16_t*>(x.data), g.ldx = ldx;
    g.values = reinterpret_cast<const uint32_t*>(p.values.data);
    g.meta = reinterpret_cast<const uint32_t*>(p.meta.data);
    g.bias = bias.data<float>();
    g.activation = activation_arg(act);
    g.c = reinterpret_cast<float*>(out.data), g.ldc = ldc;
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::gemm_2to4_f16(g, v, s);
}

// ------------------------------------------- 2:4 int8 on wgmma (CUTLASS) ---
// The weight in CUTLASS's compressed layout: values int8 and meta uint8, two
// flat buffers of the sizes cuda_2to4_s8_wgmma_sizes(n, k) gives.
Packed2to4 packed_2to4_wgmma_args(py::handle values_obj, py::handle meta_obj, int64_t n, int64_t k, bool writable) {
    const cuda::Sparse2to4WgmmaSizes sizes = cuda::sparse_2to4_s8_wgmma_sizes(n, k);
    Packed2to4 p{parse_device_array(values_obj, "values", writable), parse_device_array(meta_obj, "meta", writable)};
    check_dtype(p.values, {DType::int8, DType::uint8});
    check_dtype(p.meta, {DType::uint8, DType::int8});
    for (const auto& [array, bytes] : {std::pair{&p.values, sizes.value_bytes}, std::pair{&p.meta, sizes.meta_bytes}}) {
        if (array->shape.size() != 1 || array->shape[0] != bytes || (bytes > 1 && array->strides[0] != 1)) {
            fail_value(std::string(array->name) + ": expected a contiguous (" + std::to_string(bytes) +
                       ",) int8 or uint8 array, got " + shape_text(*array));
        }
        check_aligned(*array, 16);
    }
    return p;
}

void check_wgmma_shape(int64_t n, int64_t k) {
    if (n <= 0 || k <= 0 || n > (int64_t(1) << 30) || k > EDGEVLA_GEMM_S8S8_MAX_K) fail_value("bad n or k");
}

py::tuple cuda_2to4_s8_wgmma_sizes(int64_t n, int64_t k) {
    check_wgmma_shape(n, k);
    const cuda::Sparse2to4WgmmaSizes sizes = cuda::sparse_2to4_s8_wgmma_sizes(n, k);
    return py::make_tuple(sizes.value_bytes, sizes.meta_bytes);
}

void cuda_pack_2to4_s8_wgmma(py::handle w_obj, py::handle values_obj, py::handle meta_obj, py::handle stream) {
    const DeviceArray w = device_array(w_obj, "w", DType::int8, false);
    const int64_t ldw = matrix_ld(w, -1, -1, "(N, K)");
    const int64_t n = w.shape[0], k = w.shape[1];
    check_wgmma_shape(n, k);
    const Packed2to4 p = packed_2to4_wgmma_args(values_obj, meta_obj, n, k, true);
    check_disjoint(p.values, {&w, &p.meta});
    check_disjoint(p.meta, {&w});
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::compress_2to4_s8_wgmma(reinterpret_cast<const int8_t*>(w.data), n, k, ldw,
                                 reinterpret_cast<int8_t*>(p.values.data), reinterpret_cast<uint8_t*>(p.meta.data), s);
}

void cuda_gemm_2to4_s8_wgmma(py::handle x_obj, py::handle values_obj, py::handle meta_obj, py::handle out_obj,
                             int64_t n, int64_t k, py::handle w_scale, py::handle a_scale, py::handle bias_obj,
                             py::handle act, py::handle stream) {
    check_wgmma_shape(n, k);
    const DeviceArray x = device_array(x_obj, "x", DType::int8, false);
    const int64_t ldx = matrix_ld(x, -1, k, "(M, K)");
    const int64_t m = x.shape[0];
    const Packed2to4 p = packed_2to4_wgmma_args(values_obj, meta_obj, n, k, false);
    const W8A8Output o = w8a8_output(out_obj, w_scale, a_scale, bias_obj, act, m, n);
    o.check_disjoint_from(x, &p.values, &p.meta);

    cuda::Gemm2to4S8WgmmaArgs g;
    g.m = m, g.n = n, g.k = k;
    g.x = reinterpret_cast<const int8_t*>(x.data), g.ldx = ldx;
    g.values = reinterpret_cast<const int8_t*>(p.values.data);
    g.meta = reinterpret_cast<const uint8_t*>(p.meta.data);
    o.into(g);
    const uintptr_t s = stream_handle(stream);
    py::gil_scoped_release no_gil;
    cuda::gemm_2to4_s8_wgmma(g, s);
}

// ------------------------------------------------- host 2:4 packing ---------
template <typename T>
py::tuple pack_2to4_mma(py::array w_obj, int meta_layout, bool f16, const char* dtype) {
    if (!py::isinstance<py::array_t<T>>(w_obj) || w_obj.dtype().itemsize() != sizeof(T) ||
        w_obj.dtype().kind() != (f16 ? 'u' : 'i')) {
        fail_type(std::string("w: expected a NumPy ") + dtype + " array (N, K), got dtype " + py::str(w_obj.dtype()).cast<std::string>());
    }
    auto w = py::array_t<T, py::array::c_style>::ensure(w_obj);
    if (!w || w.ndim() != 2) fail_value("w: expected a 2-D array (N, K)");
    const int64_t n = w.shape(0), k = w.shape(1);
    if (k > EDGEVLA_GEMM_S8S8_MAX_K || n > (int64_t(1) << 31)) fail_value("w: too large");
    const cuda::Packed2to4MmaLayout layout = cuda::packed_2to4_mma_layout(n, k, f16);
    py::array_t<uint32_t> values(layout.value_words), meta(layout.meta_words);
    const T* src = w.data();
    uint32_t* v = values.mutable_data();
    uint32_t* e = meta.mutable_data();
    {
        py::gil_scoped_release no_gil;
        if constexpr (sizeof(T) == 1) {
            cuda::pack_2to4_s8_mma(src, n, k, k, meta_layout, v, e);
        } else {
            cuda::pack_2to4_f16_mma(src, n, k, k, meta_layout, v, e);
        }
    }
    return py::make_tuple(values, meta);
}

}  // namespace

void register_cuda(py::module_& m) {
    m.def("cuda_kernels_compiled", &cuda::kernels_compiled, "Whether this build has the CUDA kernels.");
    m.def("cuda_wgmma_compiled", [] { return cuda::gemm_s8s8_wgmma_compiled() && cuda::gemm_2to4_wgmma_compiled(); },
          "Whether this build has the wgmma variants of gemm_s8s8 and gemm_2to4_s8 (CUTLASS, sm_90a).");
    m.def("cuda_tcgen05_ccs", &cuda::gemm_s8s8_tcgen05_ccs,
          "The compute capabilities (100, 110) this build has gemm_s8s8's tcgen05 variant for (CUTLASS); [] if none.");
    m.def("cuda_2to4_s8_wgmma_sizes", &cuda_2to4_s8_wgmma_sizes, py::arg("n"), py::arg("k"),
          "(value bytes, metadata bytes) of an (N, K) 2:4 int8 weight in CUTLASS's sm90 compressed layout.");
    m.def("cuda_pack_2to4_s8_wgmma", &cuda_pack_2to4_s8_wgmma, py::arg("w"), py::arg("values"), py::arg("meta"),
          py::kw_only(), py::arg("stream") = py::none(),
          "Compresses a dense 2:4 int8 (N, K) device weight into values / meta with CUTLASS's sm90 compressor "
          "(checks the pattern first, synchronizing the stream).");
    m.def("cuda_gemm_2to4_s8_wgmma", &cuda_gemm_2to4_s8_wgmma, py::arg("x"), py::arg("values"), py::arg("meta"),
          py::arg("out"), py::kw_only(), py::arg("n"), py::arg("k"), py::arg("w_scale") = py::none(),
          py::arg("a_scale") = py::none(), py::arg("bias") = py::none(), py::arg("act") = "none",
          py::arg("stream") = py::none(),
          "out (M, N) = x (M, K) int8 . W^T on Hopper's sparse wgmma (CUTLASS), W from cuda_pack_2to4_s8_wgmma: int32 "
          "out raw, float32 out with the W8A8 epilogue.");
    m.def("cuda_gemm_s8s8", &cuda_gemm_s8s8, py::arg("a"), py::arg("w"), py::arg("out"), py::kw_only(),
          py::arg("w_scale") = py::none(), py::arg("a_scale") = py::none(), py::arg("bias") = py::none(),
          py::arg("act") = "none", py::arg("variant") = "auto", py::arg("stream") = py::none(),
          "out (M, N) = A (M, K) int8 . W (N, K)^T int8 on the GPU: int32 out is the raw accumulator, float32 out "
          "the W8A8 epilogue (gemm_s8s8.h).");
    m.def("cuda_gemm_w4", &cuda_gemm_w4, py::arg("x"), py::arg("packed"), py::arg("out"), py::kw_only(), py::arg("n"),
          py::arg("k"), py::arg("group"), py::arg("bias") = py::none(), py::arg("act") = "none",
          py::arg("variant") = "auto", py::arg("stream") = py::none(),
          "out (M, N) float32 = x (M, K) . W^T, W a W4_N16K8 packed buffer on the GPU.");
    m.def("cuda_gemm_2to4_s8", &cuda_gemm_2to4_s8, py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("out"),
          py::kw_only(), py::arg("n"), py::arg("k"), py::arg("w_scale") = py::none(), py::arg("a_scale") = py::none(),
          py::arg("bias") = py::none(), py::arg("act") = "none", py::arg("variant") = "auto",
          py::arg("stream") = py::none(), "2:4 sparse int8 GEMM on the sparse tensor cores (weights from pack_2to4_s8_mma).");
    m.def("cuda_gemm_2to4_f16", &cuda_gemm_2to4_f16, py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("out"),
          py::kw_only(), py::arg("n"), py::arg("k"), py::arg("bias") = py::none(), py::arg("act") = "none",
          py::arg("variant") = "auto", py::arg("stream") = py::none(),
          "2:4 sparse float16 GEMM, float32 accumulation and output.");
    m.def("pack_2to4_s8_mma", [](py::array w, int meta_layout) { return pack_2to4_mma<int8_t>(w, meta_layout, false, "int8"); },
          py::arg("w"), py::arg("meta_layout"),
          "(values, meta) uint32 arrays: a 2:4 sparse int8 (N, K) weight in mma.sp fragment order (host).");
    m.def("pack_2to4_f16_mma", [](py::array w, int meta_layout) { return pack_2to4_mma<uint16_t>(w, meta_layout, true, "uint16 (float16 bits)"); },
          py::arg("w"), py::arg("meta_layout"),
          "(values, meta) uint32 arrays: a 2:4 sparse float16 (N, K) weight (as uint16 bits) in mma.sp fragment order.");
    m.attr("CUDA_META_LAYOUTS_S8") = cuda::kMetaLayoutsS8;
    m.attr("CUDA_META_LAYOUTS_F16") = cuda::kMetaLayoutsF16;
    m.attr("CUDA_GEMM_W4_MAX_M") = cuda::kGemmW4MaxM;
}

}  // namespace edgevla::bindings
