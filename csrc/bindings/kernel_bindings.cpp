// Python bindings of the fast CPU kernels: weight packing, the packed W8A8
// GEMM, per-token quantization, and the knobs of dispatch and threading.
// Every argument, the packed header included, is validated before a kernel
// runs; kernels run without the GIL on the caller's memory.
#include "bindings/array_args.h"
#include "bindings/module_parts.h"
#include "cpu_ops.h"
#include "dispatch.h"
#include "thread_pool.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace edgevla::bindings {
namespace {

constexpr int kMaxThreads = 1024;

std::string count_text(int64_t value) { return std::to_string(value); }

// The packed weight, validated down to its header (see packed_formats.h).
struct PackedArg {
    ArrayArg bytes;
    PackedS8View view;
};

PackedArg packed_arg(py::handle obj) {
    PackedArg packed{vector_arg(obj, "packed", Scalar::uint8), {}};
    if (reinterpret_cast<uintptr_t>(packed.bytes.buffer.ptr) % 4 != 0) {
        throw py::value_error("packed must start at a 4-byte aligned address (pass the array pack_weight_s8 "
                              "returned, or a copy of it)");
    }
    const std::string problem = validate_packed_s8(packed.bytes.data<const uint8_t>(),
                                                   static_cast<uint64_t>(packed.bytes.size()), &packed.view);
    if (!problem.empty()) throw py::value_error("packed " + problem);
    return packed;
}

py::array pack_weight_s8_py(const py::object& w, const py::object& w_scale) {
    const ArrayArg w_arg = matrix_arg(w, "w", "(N, K)", Scalar::int8, Access::read);
    if (w_arg.cols > EDGEVLA_GEMM_S8S8_MAX_K) {
        throw py::value_error("K = " + count_text(w_arg.cols) + " is too large: the int32 accumulator is exact only "
                              "up to K = " + count_text(EDGEVLA_GEMM_S8S8_MAX_K));
    }
    const ArrayArg scale_arg = vector_arg(w_scale, "w_scale", Scalar::float32);
    if (scale_arg.size() != w_arg.rows) {
        throw py::value_error("w_scale must hold one value per output channel (N = " + count_text(w_arg.rows) +
                              ", the rows of w), got " + count_text(scale_arg.size()));
    }
    py::array_t<uint8_t> packed(static_cast<py::ssize_t>(packed_s8_bytes(w_arg.rows, w_arg.cols)));
    uint8_t* out = packed.mutable_data();
    {
        py::gil_scoped_release no_gil;
        edgevla::pack_weight_s8(w_arg.rows, w_arg.cols, w_arg.data<const int8_t>(), w_arg.ld,
                       scale_arg.data<const float>(), out);
    }
    return std::move(packed);
}

py::object gemm_s8s8_f32(const py::object& a, const py::object& packed, const py::object& a_scale,
                         const py::object& bias, const py::object& act, const py::object& out,
                         const py::object& residual, const py::object& relu_after, const py::object& codes,
                         const py::object& codes_scale, const py::object& windows) {
    const edgevla_activation activation = activation_arg(act);
    const LeftArg left = left_arg(a, windows);
    const PackedArg w = packed_arg(packed);
    const int64_t m = left.m, n = w.view.n;
    if (left.k != w.view.k) {
        throw py::value_error(std::string(left.windowed ? "the windows of a are" : "a is") + " (M, K) and the packed "
                              "weight is (N, K) = (" + count_text(n) + ", " + count_text(w.view.k) + "), so their K "
                              "must match: " + (left.windowed ? "the windows have" : "a has") + " K = " +
                              count_text(left.k));
    }
    const ActScaleArg scale = act_scale_arg(a_scale, m);
    const BiasArg bias_a = bias_arg(bias, n);
    const ResidualArg residual_a = residual_arg(residual, m, n);
    const OutputArg c = output_arg(out, Scalar::float32, m, n,
                                   {&left.array, &w.bytes, &scale.array, bias_a.input(), residual_a.input()});
    const StageArg stage = stage_arg(relu_after, codes, codes_scale, m, n);
    stage.check_disjoint({&c.array, &left.array, &w.bytes, &scale.array, bias_a.input(), residual_a.input()});
    GemmPackedArgs args;
    args.w = w.view;
    args.m = m;
    args.a = left.windowed ? nullptr : left.array.data<const int8_t>();
    args.lda = left.windowed ? 0 : left.array.ld;
    args.epilogue = {w.view.w_scale, scale.array.data<const float>(), scale.mode, bias_a.data(), activation,
                     residual_a.data(), residual_a.ld()};
    args.c = c.array.data<float>();
    args.ldc = c.array.ld;
    {
        py::gil_scoped_release no_gil;
        gemm_packed_s8_f32(args, stage.stage, left.windows());
    }
    return c.object;
}

py::tuple quantize_per_token_py(const py::object& x) {
    const ArrayArg x_arg = matrix_arg(x, "x", "(M, K)", Scalar::float32, Access::read);
    const int64_t m = x_arg.rows, k = x_arg.cols;
    py::array_t<int8_t> q(std::vector<py::ssize_t>{m, k});
    py::array_t<float> scale(std::vector<py::ssize_t>{m});
    int8_t* q_data = q.mutable_data();
    float* scale_data = scale.mutable_data();
    int64_t bad_row;
    {
        py::gil_scoped_release no_gil;
        bad_row = quantize_per_token(m, k, x_arg.data<const float>(), x_arg.ld, q_data, k, scale_data);
    }
    if (bad_row >= 0) {
        throw py::value_error("x must be finite, but row " + count_text(bad_row) + " holds a NaN or an infinity");
    }
    return py::make_tuple(std::move(q), std::move(scale));
}

std::vector<std::string> isa_names(const std::vector<const IsaKernels*>& isas) {
    std::vector<std::string> names;
    for (const IsaKernels* isa : isas) names.emplace_back(isa->name);
    return names;
}

std::string joined(const std::vector<std::string>& names) {
    std::string text;
    for (const std::string& name : names) text += (text.empty() ? "'" : ", '") + name + "'";
    return text;
}

py::value_error unknown_isa(const std::string& name, const std::string& also = "") {
    return py::value_error("unknown ISA '" + name + "': this build has " + joined(isa_names(compiled_isas())) + also);
}

py::value_error unsupported_isa(const std::string& name) {
    return py::value_error("this CPU cannot run the '" + name + "' kernels; it runs " +
                           joined(isa_names(available_isas())));
}

void set_isa_py(const std::string& name) {
    switch (select_isa(name)) {
        case IsaSelection::selected: return;
        case IsaSelection::unknown: throw unknown_isa(name, " (or 'auto' for the best this CPU runs)");
        case IsaSelection::unsupported: throw unsupported_isa(name);
    }
}

// The ISA `name`'s compute-roof loop `member`: the CPU must run the ISA, and
// a loop must be written for it.
template <typename Loop>
Loop peak_loop_of(const std::string& name, Loop IsaKernels::*member) {
    for (const IsaKernels* isa : available_isas()) {
        if (name != isa->name) continue;
        if (isa->*member == nullptr) throw py::value_error("the '" + name + "' kernels have no compute-roof loop");
        return isa->*member;
    }
    for (const IsaKernels* isa : compiled_isas()) {
        if (name == isa->name) throw unsupported_isa(name);
    }
    throw unknown_isa(name);
}

template <typename Loop>
auto peak_loop_py(const std::string& name, int64_t iterations, Loop IsaKernels::*member) {
    if (iterations < 0) throw py::value_error("iterations must be >= 0, got " + count_text(iterations));
    const Loop loop = peak_loop_of(name, member);
    py::gil_scoped_release no_gil;
    return loop(iterations);
}

// The best of three timings of the loop, each long enough to last `seconds`,
// in G operations per second (`ops` per iteration), on the calling thread.
template <typename Loop>
double peak_rate_py(const std::string& name, double seconds, Loop IsaKernels::*member, int64_t ops) {
    if (!(seconds > 0.0 && seconds <= 10.0)) throw py::value_error("seconds must be in (0, 10]");
    const Loop loop = peak_loop_of(name, member);
    py::gil_scoped_release no_gil;
    using Clock = std::chrono::steady_clock;
    const auto timed = [loop](int64_t iterations) {
        const auto start = Clock::now();
        volatile auto sink = loop(iterations);
        (void)sink;
        return std::chrono::duration<double>(Clock::now() - start).count();
    };
    int64_t iterations = 1 << 12;
    while (timed(iterations) < seconds && iterations < (int64_t{1} << 40)) iterations *= 2;
    double best = timed(iterations);
    for (int round = 0; round < 2; ++round) best = std::min(best, timed(iterations));
    return static_cast<double>(ops) * static_cast<double>(iterations) / best / 1e9;
}

void set_num_threads_py(int threads) {
    if (threads < 1 || threads > kMaxThreads) {
        throw py::value_error("the thread count must be between 1 and " + count_text(kMaxThreads) + ", got " +
                              count_text(threads));
    }
    py::gil_scoped_release no_gil;  // waits for a running kernel to finish
    ThreadPool::global().set_num_threads(threads);
}

}  // namespace

void register_kernels(py::module_& m) {
    m.def("pack_weight_s8", &pack_weight_s8_py, py::arg("w"), py::arg("w_scale"),
          "Packs an int8 (N, K) weight and its float32 (N,) per-channel scales into the S8_N16K4 format "
          "(csrc/packed_formats.h). Returns a new uint8 array.");
    m.def("gemm_s8s8_f32", &gemm_s8s8_f32, py::arg("a"), py::arg("packed"), py::arg("a_scale"),
          py::arg("bias") = py::none(), py::arg("act") = "none", py::arg("out") = py::none(),
          py::arg("residual") = py::none(), py::arg("relu_after") = false, py::arg("codes") = py::none(),
          py::arg("codes_scale") = py::none(), py::arg("windows") = py::none(),
          "W8A8 GEMM on the active ISA: act((a @ w.T) * (a_scale * w_scale) + bias) (+ residual) in float32, "
          "bit-identical to gemm_s8s8_f32_ref; then, tile by tile, the output stage: with relu_after, "
          "out = max(out, 0) (a ReLU after the residual); with codes (int8 (M, N)) and codes_scale, codes = "
          "quantize_s8(out, codes_scale) (a following static QuantizeLinear). With windows (a WindowSpec), a is "
          "the int8 (N, spatial..., C) input of a convolution and the GEMM's rows are its windows, gathered by "
          "the threads that multiply them. Returns out, or a new float32 (M, N) array.");
    m.def("quantize_per_token", &quantize_per_token_py, py::arg("x"),
          "Dynamic symmetric int8 quantization of each row of a float32 (M, K) array: returns (q int8 (M, K), "
          "scale float32 (M,)) with x ~= q * scale[:, None].");
    m.def("set_isa", &set_isa_py, py::arg("name"),
          "Forces the kernels of one ISA ('generic', 'avx2', 'avx_vnni', 'avx512_vnni', 'avx512_amx', 'neon_dot'), "
          "or 'auto'.");
    m.def("get_isa", [] { return std::string(active_isa().name); }, "The ISA whose kernels run now.");
    m.def("compiled_isas", [] { return isa_names(compiled_isas()); }, "ISAs compiled into this build, best first.");
    m.def("available_isas", [] { return isa_names(available_isas()); }, "ISAs this CPU can run, best first.");
    m.def(
        "int8_peak_loop",
        [](const std::string& isa, int64_t iterations) { return peak_loop_py(isa, iterations, &IsaKernels::int8_peak); },
        py::arg("isa"), py::arg("iterations"),
        "Runs the ISA's int8 compute-roof loop (cpu_kernels.h: Int8PeakLoop) and returns the sum of its "
        "accumulators, -256 * iterations.");
    m.def(
        "int8_peak_gops",
        [](const std::string& isa, double seconds) {
            return peak_rate_py(isa, seconds, &IsaKernels::int8_peak, 2 * kInt8PeakMacsPerIteration);
        },
        py::arg("isa"), py::arg("seconds") = 0.05,
        "The ISA's int8 compute roof on one core: GOP/s of its dot-product instruction on registers alone.");
    m.def(
        "f32_peak_loop",
        [](const std::string& isa, int64_t iterations) { return peak_loop_py(isa, iterations, &IsaKernels::f32_peak); },
        py::arg("isa"), py::arg("iterations"),
        "Runs the ISA's float32 compute-roof loop (cpu_kernels.h: F32PeakLoop) and returns the sum of its "
        "accumulators, 256 * iterations.");
    m.def(
        "f32_peak_gflops",
        [](const std::string& isa, double seconds) {
            return peak_rate_py(isa, seconds, &IsaKernels::f32_peak, 2 * kF32PeakFmasPerIteration);
        },
        py::arg("isa"), py::arg("seconds") = 0.05,
        "The ISA's float32 compute roof on one core: GFLOP/s of its FMA on registers alone.");
    m.def("set_num_threads", &set_num_threads_py, py::arg("threads"), "Sets the kernels' thread count (1 to 1024).");
    m.def("get_num_threads", [] { return ThreadPool::global().num_threads(); }, "The kernels' thread count.");
    m.attr("DEFAULT_THREAD_SPIN_US") = ThreadPool::kDefaultSpinUs;
    m.def(
        "set_thread_spin_us",
        [](int64_t microseconds) {
            if (microseconds < 0 || microseconds > 1000000) {
                throw py::value_error("the spin time must be between 0 and 1000000 microseconds, got " +
                                      std::to_string(microseconds));
            }
            ThreadPool::global().set_spin_us(microseconds);
        },
        py::arg("microseconds"),
        "How long the kernels' threads poll for the next piece of work before they sleep (0: never poll). "
        "Polling makes handing a GEMM to the other threads ~50x cheaper and keeps their cores busy meanwhile.");
    m.def("get_thread_spin_us", [] { return ThreadPool::global().spin_us(); },
          "How long the kernels' threads poll before they sleep, in microseconds.");
    m.attr("DEFAULT_MIN_MACS_PER_THREAD") = kDefaultMinMacsPerThread;
    m.def(
        "set_min_macs_per_thread",
        [](int64_t macs) {
            if (macs < 1) {
                throw py::value_error("the minimum work per thread must be >= 1 multiply-add, got " + count_text(macs));
            }
            set_min_macs_per_thread(macs);
        },
        py::arg("macs"),
        "Sets the least work (multiply-adds) each thread of a packed GEMM gets; smaller GEMMs use fewer threads.");
    m.def("get_min_macs_per_thread", [] { return min_macs_per_thread(); },
          "The least work (multiply-adds) each thread of a packed GEMM gets.");
}

}  // namespace edgevla::bindings
