"""``edgevla bench kernels``: the native CPU kernels on the reference policies' linear shapes, beside the peers.

For every linear shape of the reference policies (``edgevla.models.vla.CONFIGS``:
attention ``d x d``, MLP ``d x 4d`` and ``4d x d``) and M = 1, 16, 64, 256 rows
(tokens), it times in one run, on the same data:

==============  ====================================================  =================================
op              what runs (input -> output)                           backends
==============  ====================================================  =================================
linear-f32      float32 x -> float32, dense float32 weight            torch-fp32 (``F.linear``)
linear-int8     float32 x -> quantize per token -> int8 GEMM ->       torch-dynamic-int8 (fbgemm), edgevla
                float32 (dynamic W8A8)
gemm-int8       int8 activations -> int8 GEMM (int32 out for ORT,     onnxruntime-int8 (one MatMulInteger
                dequantized float32 for edgevla)                      node), edgevla
sparse-f32      float32, unstructured sparse float32 weight           edgevla (50 % and 90 % sparsity)
sparse-int8     int8 activations, unstructured sparse int8 weight     edgevla (50 % and 90 %)
2to4-int8       int8 activations, 2:4 sparse int8 weight              edgevla
2to4-f32        float32, 2:4 sparse float32 weight                    edgevla
int4-g32/g128   float32, int4 weight, groups of 32 / 128: float32     edgevla (``gemm_w4_f32``),
                activations, or quantized to int8 per group (W4A8)    edgevla-w4a8 (``gemm_w4a8_f32``)
conv-int8       the GEMMs of a ResNet-18 encoder's convolutions on a  onnxruntime-int8 (MatMulInteger),
                96x96 image (:func:`conv_shapes`; M = output          edgevla
                positions), int8 windows as gemm-int8
==============  ====================================================  =================================

Each row has ``op``, ``M``, ``K``, ``N``, ``sparsity``, ``backend``, ``us``
(median microseconds of repeated calls), ``gops`` (dense-equivalent
``2 M N K`` operations per second, so sparse kernels show their speed-up),
``gbps`` (bytes of the weight as the backend stores it, plus input and
output, per second), ``shape`` (policy and layer) and ``cache``. ``hot`` rows
call the same weight again and again (it stays in cache, as in a loop over one
small layer); ``cold`` rows (M = 1 on the base-vla shapes) rotate over copies
of the weight totalling twice the last-level cache (read from sysfs; at
least 96 MiB), so each call streams its weight from DRAM, as a real model
larger than the cache does; the packed copies lie back to back on huge pages,
where the native runtime keeps a loaded model's weights (``WeightArena``):
those are the rows to hold against the measured bandwidths. Two are
measured, over buffers of that size: ``copy_gbps`` (``numpy.copyto``, bytes
read plus written, STREAM's convention), and ``read_gbps`` (a ``numpy``
XOR-reduction: bytes read), what one core can stream, the roof of a GEMV
that only reads its weight. The compute roofs of the ISA in use are measured
too, where it has the loops (``compute_roofs``: ``int8_gops`` from
``native.int8_peak_gops``, its int8 dot-product instruction on registers
alone, and ``f32_gflops`` from ``native.f32_peak_gflops``, its FMA; one
core): the most any int8 or float32 GEMM on those instructions can reach,
ours or a peer's. The M >= 16 GEMM goals give each side's fraction of its
roof (``of_peak``).

``thread_handoff`` is what splitting a GEMM over the threads costs and gains
(:func:`thread_handoff`), with the pool's threads polling for work (the
default) and asleep between calls (``native.set_thread_spin_us(0)``).

The issue's goals are computed from the rows as ratios within this one run and
reported as met or not, never asserted: on a shared machine only ratios are
meaningful.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevlaError
from ..runtime.weights import WeightArena
from . import write_json

CONFIG_NAMES = ("tiny-vla", "small-vla", "base-vla")
DEFAULT_MS = (1, 16, 64, 256)
MIN_COLD_BYTES = 96 * 2**20  # cold rows rotate over at least this, and twice the last-level cache
# The int4 GEMMs of edgevla.native, each a backend of the int4-g32 / int4-g128 rows, and what its goals add to
# their names: float32 activations, or quantized to int8 per group (W4A8).
INT4_BACKENDS = {"edgevla": "gemm_w4_f32", "edgevla-w4a8": "gemm_w4a8_f32"}
INT4_GOAL_SUFFIXES = {"edgevla": "", "edgevla-w4a8": ", W4A8"}


def run(args: argparse.Namespace) -> int:
    if getattr(args, "device", "cpu") == "cuda":
        from .kernels_cuda import run as run_cuda

        return run_cuda(args)
    configs = _names(args.configs, CONFIG_NAMES, "--configs") if args.configs else None
    ms = _ints(args.ms, "--ms") if args.ms else None
    threads = args.threads if args.threads is not None else _default_threads()
    if threads < 1:
        raise EdgevlaError("--threads must be >= 1")
    if args.min_time is not None and args.min_time <= 0:
        raise EdgevlaError("--min-time must be > 0")
    from .. import native

    with native.isa_scope(getattr(args, "isa", None)):
        result = bench_kernels(quick=args.quick, configs=configs, ms=ms, threads=threads, min_time=args.min_time,
                               convs=not args.no_convs)
    print_table(result)
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


def _default_threads() -> int:
    """The native kernels' default: one per physical core this process may use (native.default_num_threads)."""
    from .. import native

    return native.default_num_threads() if native.available() else (os.cpu_count() or 1)


def _names(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in chosen if name not in allowed]
    if unknown or not chosen:
        raise EdgevlaError(f"{flag}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return chosen


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EdgevlaError(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return values


# ------------------------------------------------------------------ shapes ---

@dataclass(frozen=True)
class Shape:
    policy: str
    layer: str
    k: int
    n: int

    @property
    def name(self) -> str:
        return f"{self.policy} {self.layer}"


@dataclass(frozen=True)
class ConvShape:
    """A convolution as the native runtime runs it: one GEMM of ``m`` output positions by ``k`` (kernel x input
    channels) by ``n`` output channels."""
    layer: str
    m: int
    k: int
    n: int

    @property
    def shape(self) -> Shape:
        return Shape(CONV_POLICY, self.layer, self.k, self.n)


CONV_POLICY = "resnet18-96"


def conv_shapes(size: int = 96) -> list[ConvShape]:
    """The distinct convolution GEMMs of a ResNet-18 encoder on a ``size`` x ``size`` image, batch 1 (the
    torchvision layout; ``benchmarks/cpu/policies/resnet18_policy.py``): the 7x7 stride-2 stem, a stride-2
    pool, then 4 stages of 2 basic blocks (3x3 convolutions; the first block of stages 2-4 has stride 2 and a
    1x1 stride-2 shortcut)."""
    def out(n: int, kernel: int, stride: int, pad: int) -> int:
        return (n + 2 * pad - kernel) // stride + 1

    side = out(size, 7, 2, 3)
    shapes = [ConvShape(f"conv7x7/2 3->64 @{side}", side * side, 7 * 7 * 3, 64)]
    side, cin = out(side, 3, 2, 1), 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        side = out(side, 3, stride, 1)
        shapes.append(ConvShape(f"conv3x3{'/2' if stride > 1 else ''} {cin}->{cout} @{side}", side * side, 9 * cin,
                                cout))
        if cin != cout:
            shapes.append(ConvShape(f"conv1x1/2 {cin}->{cout} @{side}", side * side, cin, cout))
        if stride > 1 or cin != cout:
            shapes.append(ConvShape(f"conv3x3 {cout}->{cout} @{side}", side * side, 9 * cout, cout))
        cin = cout
    return shapes


def reference_shapes(configs: Sequence[str] = CONFIG_NAMES) -> list[Shape]:
    """The distinct linear shapes of the reference policies' transformer blocks."""
    from ..models.vla import CONFIGS

    shapes = []
    for name in configs:
        d = CONFIGS[name].d_model
        hidden = int(d * CONFIGS[name].mlp_ratio)
        shapes += [Shape(name, "attn", d, d), Shape(name, "fc1", d, hidden), Shape(name, "fc2", hidden, d)]
    return shapes


# ------------------------------------------------------------------ timing ---

def time_us(call: Callable[[], Any], min_time: float, min_runs: int = 5) -> float:
    """Median microseconds of one call, over at least `min_runs` calls and `min_time` seconds."""
    call()
    call()
    samples: list[int] = []
    start = time.perf_counter()
    while len(samples) < min_runs or (time.perf_counter() - start < min_time and len(samples) < 100_000):
        t0 = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def copy_bandwidth_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Best numpy copy of a `megabytes` buffer, in GB/s of bytes read plus written."""
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.empty_like(source)
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(repeats))
    return 2 * source.nbytes / best / 1e9


def read_bandwidth_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Best numpy XOR-reduction of a `megabytes` buffer on one core, in GB/s of bytes read."""
    source = np.ones(megabytes * 2**20 // 8, np.uint64)
    best = min(_timed(lambda: np.bitwise_xor.reduce(source)) for _ in range(repeats))
    return source.nbytes / best / 1e9


def _timed(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


# -------------------------------------------------------------- backends ---

class _Rows:
    """Collects rows; each backend adds its timing with the bytes it moves."""

    def __init__(self, min_time: float):
        self.min_time = min_time
        self.rows: list[dict[str, Any]] = []

    def add(self, op: str, shape: Shape, m: int, backend: str, call: Callable[[], Any], *, weight_bytes: int,
            io_bytes: int, sparsity: float = 0.0, cache: str = "hot") -> None:
        us = time_us(call, self.min_time)
        self.rows.append({
            "op": op, "M": m, "K": shape.k, "N": shape.n, "sparsity": sparsity, "backend": backend,
            "us": round(us, 3), "gops": round(2 * m * shape.n * shape.k / us / 1e3, 3),
            "gbps": round((weight_bytes + io_bytes) / us / 1e3, 3), "shape": shape.name, "cache": cache,
            "weight_bytes": weight_bytes,
        })


def _rotating(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One call per invocation, cycling through `calls` (each on its own copy of a weight)."""
    state = {"next": 0}

    def call():
        calls[state["next"]]()
        state["next"] = (state["next"] + 1) % len(calls)

    return call


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0 in bytes, from Linux sysfs (0 where it does not say)."""
    largest = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        try:
            size = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
        except ValueError:
            continue
        largest = max(largest, size)
    return largest


def cold_bytes() -> int:
    """How many bytes of weight copies a cold row rotates over: twice the LLC, at least 96 MiB."""
    return max(MIN_COLD_BYTES, 2 * last_level_cache_bytes())


def _copies(weight_bytes: int, rotate_bytes: int) -> int:
    return max(2, -(-rotate_bytes // max(weight_bytes, 1)))


def _unstructured(rng: np.random.Generator, w: np.ndarray, sparsity: float) -> np.ndarray:
    w = w.copy()
    w[rng.random(w.shape) < sparsity] = 0
    return w


def _two_to_four(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """Keep the 2 largest of every 4 consecutive weights of a row (magnitude 2:4 pruning)."""
    n, k = w.shape
    padded = np.zeros((n, -(-k // 4) * 4), w.dtype)
    padded[:, :k] = w
    groups = padded.reshape(n, -1, 4)
    drop = np.argsort(np.abs(groups), axis=2)[:, :, :2]
    np.put_along_axis(groups, drop, 0, axis=2)
    return padded[:, :k].copy()


def _torch_dynamic_int8(linear):
    """PyTorch's dynamic int8 Linear (fbgemm): the peer the issue names, deprecated in favour of
    torchao but still PyTorch's own int8 CPU path; its deprecation warnings are not the user's business."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.ao.quantization")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantized tensor creation")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def _ort_matmul_integer(k: int, n: int, w_int8: np.ndarray, threads: int):
    """An ONNX Runtime session of one MatMulInteger node: uint8 (M, K) x int8 (K, N) -> int32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])],
        "matmul_integer",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", n])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(w_int8.T), "w"),
                     numpy_helper.from_array(np.array(128, np.uint8), "a_zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _bench_shape(rows: _Rows, shape: Shape, ms: Sequence[int], threads: int, cold: int,
                 rng: np.random.Generator) -> None:
    import torch

    from .. import native

    k, n = shape.k, shape.n
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.02).astype(np.float32)
    w_scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    w_int8 = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)

    linear = torch.nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(bias))
    dynamic = _torch_dynamic_int8(linear)
    w_t = torch.from_numpy(w)
    bias_t = torch.from_numpy(bias)

    packed = {"dense-int8": native.pack_weight_s8(w_int8, w_scale)}
    for sparsity in (0.5, 0.9):
        packed[f"sparse-f32@{sparsity}"] = native.pack_sparse_f32(_unstructured(rng, w, sparsity))
        packed[f"sparse-int8@{sparsity}"] = native.pack_sparse_s8(_unstructured(rng, w_int8, sparsity), w_scale)
    w24 = _two_to_four(rng, w)
    packed["2to4-f32"] = native.pack_2to4_f32(w24)
    packed["2to4-int8"] = native.pack_2to4_s8(np.clip(np.rint(w24 / w_scale[:, None]), -127, 127).astype(np.int8),
                                              w_scale)
    for group in (32, 128):
        codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)  # every nibble, as quantized weights are
        scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
        packed[f"int4-g{group}"] = native.pack_w4(codes, scales, group, k=k)

    for m in ms:
        x = rng.standard_normal((m, k)).astype(np.float32)
        x_t = torch.from_numpy(x)
        q, a_scale = native.quantize_per_token(x)
        a_u8 = (q.astype(np.int16) + 128).astype(np.uint8)
        out = np.empty((m, n), np.float32)
        f32_io, int8_io = 4 * m * (k + n), m * (k + 4 * n)

        with torch.inference_mode():
            rows.add("linear-f32", shape, m, "torch-fp32", lambda: torch.nn.functional.linear(x_t, w_t, bias_t),
                     weight_bytes=4 * n * k, io_bytes=f32_io)
            rows.add("linear-int8", shape, m, "torch-dynamic-int8", lambda: dynamic(x_t), weight_bytes=n * k,
                     io_bytes=f32_io)

        def linear_int8():
            q_, s_ = native.quantize_per_token(x)
            native.gemm_s8s8_f32(q_, packed["dense-int8"], s_, bias, out=out)

        rows.add("linear-int8", shape, m, "edgevla", linear_int8, weight_bytes=packed["dense-int8"].size,
                 io_bytes=f32_io)
        rows.add("gemm-int8", shape, m, "edgevla",
                 lambda: native.gemm_s8s8_f32(q, packed["dense-int8"], a_scale, bias, out=out),
                 weight_bytes=packed["dense-int8"].size, io_bytes=int8_io)
        # A session only for its row, after ours: ONNX Runtime's threads keep polling for work a while after
        # a run (and after the session starts), taking the cores from whatever is timed next.
        session = _ort_matmul_integer(k, n, w_int8, threads)
        rows.add("gemm-int8", shape, m, "onnxruntime-int8", lambda: session.run(None, {"a": a_u8}),
                 weight_bytes=n * k, io_bytes=int8_io)
        del session
        for sparsity in (0.5, 0.9):
            p = packed[f"sparse-f32@{sparsity}"]
            rows.add("sparse-f32", shape, m, "edgevla", lambda p=p: native.gemm_sparse_f32(x, p, bias, out=out),
                     weight_bytes=p.size, io_bytes=f32_io, sparsity=sparsity)
            p = packed[f"sparse-int8@{sparsity}"]
            rows.add("sparse-int8", shape, m, "edgevla",
                     lambda p=p: native.gemm_sparse_s8s8_f32(q, p, a_scale, bias, out=out),
                     weight_bytes=p.size, io_bytes=int8_io, sparsity=sparsity)
        rows.add("2to4-int8", shape, m, "edgevla",
                 lambda: native.gemm_2to4_s8s8_f32(q, packed["2to4-int8"], a_scale, bias, out=out),
                 weight_bytes=packed["2to4-int8"].size, io_bytes=int8_io, sparsity=0.5)
        rows.add("2to4-f32", shape, m, "edgevla", lambda: native.gemm_2to4_f32(x, packed["2to4-f32"], bias, out=out),
                 weight_bytes=packed["2to4-f32"].size, io_bytes=f32_io, sparsity=0.5)
        for group in (32, 128):
            p = packed[f"int4-g{group}"]
            for backend, name in INT4_BACKENDS.items():
                rows.add(f"int4-g{group}", shape, m, backend,
                         lambda p=p, gemm=getattr(native, name): gemm(x, p, bias, out=out),
                         weight_bytes=p.size, io_bytes=f32_io)

        if cold and m == 1:
            _bench_cold(rows, shape, x, q, a_scale, bias, out, w, packed, rotate_bytes=cold)


def _bench_conv(rows: _Rows, conv: ConvShape, threads: int, rng: np.random.Generator) -> None:
    """One convolution GEMM on int8 windows: ours (float32 out, per-channel scales and bias: the runtime's
    int8-static layer) and ONNX Runtime's MatMulInteger (int32 out)."""
    from .. import native

    m, k, n = conv.m, conv.k, conv.n
    codes = rng.integers(-127, 128, (m, k), dtype=np.int8)
    w_int8 = rng.integers(-127, 128, (n, k), dtype=np.int8)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = native.pack_weight_s8(w_int8, w_scale)
    out = np.empty((m, n), np.float32)
    a_u8 = (codes.astype(np.int16) + 128).astype(np.uint8)
    io = m * (k + 4 * n)
    rows.add("conv-int8", conv.shape, m, "edgevla",
             lambda: native.gemm_s8s8_f32(codes, packed, np.float32(0.02), bias, out=out),
             weight_bytes=packed.size, io_bytes=io)
    session = _ort_matmul_integer(k, n, w_int8, threads)
    rows.add("conv-int8", conv.shape, m, "onnxruntime-int8", lambda: session.run(None, {"a": a_u8}),
             weight_bytes=n * k, io_bytes=io)
    del session  # see _bench_shape


def thread_handoff(threads: int, min_time: float) -> dict[str, Any] | None:
    """What splitting a GEMM over ``threads`` costs and gains, with the pool's threads polling for work (the
    default) and asleep between calls (``native.set_thread_spin_us(0)``): on a small int8 GEMM, the microseconds
    over one thread (``overhead_us``); on a 10M multiply-add convolution GEMM, the speed-up over one thread
    (``speedup``). None on one thread."""
    from .. import native

    if threads < 2:
        return None
    rng = np.random.default_rng(0)

    def gemm(m, k, n):
        codes = rng.integers(-127, 128, (m, k), dtype=np.int8)
        packed = native.pack_weight_s8(rng.integers(-127, 128, (n, k), dtype=np.int8), np.ones(n, np.float32))
        out = np.empty((m, n), np.float32)
        return lambda: native.gemm_s8s8_f32(codes, packed, np.float32(1), out=out)

    small, split = (8, 64, 64), (144, 576, 128)  # ~1 us of work; a ResNet-18 stage-2 convolution
    calls = {shape: gemm(*shape) for shape in (small, split)}
    spin, least = native.get_thread_spin_us(), native.get_min_macs_per_thread()
    alone, timed = {}, {}
    try:
        native.set_num_threads(1)
        alone = {shape: time_us(call, min_time) for shape, call in calls.items()}
        native.set_num_threads(threads)
        native.set_min_macs_per_thread(1)
        for mode, spin_us in (("polling", spin), ("sleeping", 0)):
            native.set_thread_spin_us(spin_us)
            timed[mode] = {shape: time_us(call, min_time) for shape, call in calls.items()}
    finally:
        native.set_thread_spin_us(spin)
        native.set_min_macs_per_thread(least)
        native.set_num_threads(threads)
    return {
        "threads": threads, "spin_us": spin,
        "small_gemm": list(small), "small_one_thread_us": round(alone[small], 3),
        "overhead_us": {mode: round(t[small] - alone[small], 3) for mode, t in timed.items()},
        "split_gemm": list(split), "split_one_thread_us": round(alone[split], 3),
        "speedup": {mode: round(alone[split] / t[split], 3) for mode, t in timed.items()},
    }


def _bench_cold(rows: _Rows, shape: Shape, x, q, a_scale, bias, out, w, packed, *, rotate_bytes: int) -> None:
    """M = 1 with the weight streamed from memory: each call uses the next of many copies."""
    import torch

    from .. import native

    x_t, bias_t = torch.from_numpy(x), torch.from_numpy(bias)
    torch_copies = [torch.from_numpy(w.copy()) for _ in range(_copies(w.nbytes, rotate_bytes))]
    with torch.inference_mode():
        rows.add("linear-f32", shape, 1, "torch-fp32",
                 _rotating([lambda w_t=w_t: torch.nn.functional.linear(x_t, w_t, bias_t) for w_t in torch_copies]),
                 weight_bytes=w.nbytes, io_bytes=4 * (shape.k + shape.n), cache="cold")
    del torch_copies
    # (op, packed weight, sparsity, int8 activations, backend, GEMM)
    cases = [("gemm-int8", "dense-int8", 0.0, True, "edgevla", "gemm_s8s8_f32"),
             ("sparse-f32", "sparse-f32@0.9", 0.9, False, "edgevla", "gemm_sparse_f32"),
             ("2to4-int8", "2to4-int8", 0.5, True, "edgevla", "gemm_2to4_s8s8_f32")]
    cases += [(f"int4-g{group}", f"int4-g{group}", 0.0, False, backend, name)
              for group in (32, 128) for backend, name in INT4_BACKENDS.items()]
    for op, key, sparsity, int8, backend, name in cases:
        # Where the native runtime keeps a loaded model's weights: back to back on huge
        # pages (runtime/weights.py), as the float copies above are (numpy advises huge
        # pages for arrays of 4 MiB and more), not each on 4 KiB pages of its own.
        arena = WeightArena()
        copies = [arena.place(packed[key].copy()) for _ in range(_copies(packed[key].size, rotate_bytes))]
        gemm = getattr(native, name)
        if int8:
            calls = [lambda p=p: gemm(q, p, a_scale, bias, out=out) for p in copies]
        else:
            calls = [lambda p=p: gemm(x, p, bias, out=out) for p in copies]
        rows.add(op, shape, 1, backend, _rotating(calls), weight_bytes=packed[key].size,
                 io_bytes=(1 if int8 else 4) * shape.k + 4 * shape.n, sparsity=sparsity, cache="cold")
        del calls, copies, arena


# ------------------------------------------------------------------- goals ---

def _find(rows, **match) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _ratio_goal(rows, goal: str, threshold: float, pairs) -> dict[str, Any]:
    """`pairs`: (label, numerator row, denominator row); the ratio is numerator us / denominator us."""
    values = []
    for label, slow, fast in pairs:
        if slow is not None and fast is not None:
            values.append({"where": label, "ratio": round(slow["us"] / fast["us"], 3)})
    return _verdict(goal, threshold, values)


def _verdict(goal: str, threshold: float, values: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [v["ratio"] for v in values]
    met_count = sum(r >= threshold for r in ratios)
    return {
        "goal": goal, "threshold": threshold, "values": values,
        "geomean": round(float(np.exp(np.mean(np.log(ratios)))), 3) if ratios else None,
        "min": min(ratios) if ratios else None, "met_count": met_count, "count": len(ratios),
        "met": (met_count == len(ratios)) if ratios else None,
    }


def goals(rows: list[dict[str, Any]], copy_gbps: float, read_gbps: float | None = None,
          roofs: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The issue's kernel goals, as ratios of rows of this run.

    With ``roofs`` (:func:`compute_roofs` of the ISA in use), each value of the
    M >= 16 GEMM goals also says what fraction of its compute roof each side
    reaches (``of_peak``): how much room a compute-bound shape leaves.
    """
    roofs = roofs or {}
    int8_peak, f32_peak = roofs.get("int8_gops"), roofs.get("f32_gflops")
    shapes = sorted({(r["shape"], r["K"], r["N"]) for r in rows}, key=lambda s: (s[1] * s[2], s[0]))
    ms = sorted({r["M"] for r in rows})

    def at(op, backend, shape, m, cache="hot", **extra):
        return _find(rows, op=op, backend=backend, shape=shape[0], M=m, cache=cache, **extra)

    big_ms = [m for m in ms if m >= 16]
    def gemm_goal(goal, threshold, peer_op, peer, peer_peak, our_op):
        pairs = [(f"{s[0]} M={m}", at(peer_op, peer, s, m), at(our_op, "edgevla", s, m)) for s in shapes for m in big_ms]
        return _with_roofs(_ratio_goal(rows, goal, threshold, pairs), pairs, peer, peer_peak, int8_peak)

    result = [
        gemm_goal("int8 GEMM >= 1.2x PyTorch dynamic int8 at M >= 16 (linear-int8, quantization included)", 1.2,
                  "linear-int8", "torch-dynamic-int8", int8_peak, "linear-int8"),
        gemm_goal("int8 GEMM >= 1.2x ONNX Runtime int8 at M >= 16 (gemm-int8, MatMulInteger)", 1.2,
                  "gemm-int8", "onnxruntime-int8", int8_peak, "gemm-int8"),
        gemm_goal("int8 GEMM about 4x PyTorch fp32 at M >= 16 (linear-int8 vs linear-f32)", 4.0,
                  "linear-f32", "torch-fp32", f32_peak, "linear-int8"),
    ]
    convs = sorted({(r["shape"], r["M"]) for r in rows if r["op"] == "conv-int8"}, key=lambda s: s[1])
    result.append(_with_roofs(_ratio_goal(
        rows, "(comparison) int8 convolution GEMMs >= 1.0x ONNX Runtime int8 (conv-int8, ResNet-18 at 96x96)", 1.0,
        pairs := [(f"{name} M={m}", _find(rows, op="conv-int8", backend="onnxruntime-int8", shape=name, M=m),
                   _find(rows, op="conv-int8", backend="edgevla", shape=name, M=m)) for name, m in convs]),
        pairs, "onnxruntime-int8", int8_peak, int8_peak))
    for backend, suffix in INT4_GOAL_SUFFIXES.items():
        for cache in ("hot", "cold"):
            for group in (32, 128):
                result.append(_ratio_goal(
                    rows, f"int4 g{group} GEMV >= 5x fp32 GEMV at M = 1 ({cache} weights{suffix})", 5.0,
                    [(s[0], at("linear-f32", "torch-fp32", s, 1, cache), at(f"int4-g{group}", backend, s, 1, cache))
                     for s in shapes]))
        for group in (32, 128):
            values = [{"where": r["shape"], "ratio": round(r["gbps"] / copy_gbps, 3),
                       **({"of_read_bandwidth": round(r["gbps"] / read_gbps, 3)} if read_gbps else {})}
                      for r in rows if r["op"] == f"int4-g{group}" and r["backend"] == backend and r["M"] == 1
                      and r["cache"] == "cold"]
            result.append(_verdict(
                f"int4 g{group} GEMV at M = 1 >= 70 % of the copy bandwidth (cold weights{suffix})", 0.7, values))
    for cache in ("hot", "cold"):
        result.append(_ratio_goal(
            rows, f"90 % unstructured sparse GEMV >= 4x dense fp32 GEMV ({cache} weights)", 4.0,
            [(s[0], at("linear-f32", "torch-fp32", s, 1, cache), at("sparse-f32", "edgevla", s, 1, cache, sparsity=0.9))
             for s in shapes]))
        result.append(_ratio_goal(
            rows, f"2:4 int8 GEMV >= 1.4x dense int8 GEMV ({cache} weights)", 1.4,
            [(s[0], at("gemm-int8", "edgevla", s, 1, cache), at("2to4-int8", "edgevla", s, 1, cache))
             for s in shapes]))
    return [g for g in result if g["count"]]


def _with_roofs(goal: dict[str, Any], pairs, peer: str, peer_peak: float | None,
                our_peak: float | None) -> dict[str, Any]:
    """Adds to each value of ``goal`` both sides' fraction of their compute roof (GOP/s), where measured."""
    if peer_peak and our_peak:
        measured = {label: (theirs, ours) for label, theirs, ours in pairs if theirs is not None and ours is not None}
        for value in goal["values"]:
            theirs, ours = measured[value["where"]]
            value["of_peak"] = {"edgevla": round(ours["gops"] / our_peak, 3),
                                peer: round(theirs["gops"] / peer_peak, 3)}
    return goal


def compute_roofs(isa: str) -> dict[str, float]:
    """``isa``'s measured compute roofs on one core, where it has the loops: ``int8_gops``, ``f32_gflops``."""
    from .. import native

    roofs = {}
    for key, measure in (("int8_gops", native.int8_peak_gops), ("f32_gflops", native.f32_peak_gflops)):
        try:
            roofs[key] = round(measure(isa), 1)
        except ValueError:  # no loop written for this ISA
            continue
    return roofs


# ------------------------------------------------------------------- entry ---

def bench_kernels(*, quick: bool = False, configs: Sequence[str] | None = None, ms: Sequence[int] | None = None,
                  threads: int | None = None, min_time: float | None = None, seed: int = 0,
                  convs: bool = True) -> dict[str, Any]:
    """Run the benchmark; a JSON-ready dict: host, copy bandwidth, thread hand-off, rows and goals.

    ``quick``: tiny-vla and base-vla shapes at M = 1 and 16 with short timing
    (a smoke run); otherwise every config at M = 1, 16, 64, 256. ``convs``: also
    the ResNet-18 convolution GEMMs (:func:`conv_shapes`).
    """
    import onnxruntime
    import torch

    from .. import native

    if quick:
        configs = configs or ("tiny-vla", "base-vla")
        ms = ms or (1, 16)
        min_time = min_time or 0.02
    configs = tuple(configs or CONFIG_NAMES)
    ms = tuple(ms or DEFAULT_MS)
    min_time = min_time or 0.15
    threads = threads or _default_threads()

    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    torch_threads = torch.get_num_threads()
    native_threads = native.get_num_threads()
    torch.set_num_threads(threads)
    native.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows = _Rows(min_time)
    try:
        rotate_bytes = MIN_COLD_BYTES if quick else cold_bytes()
        megabytes = rotate_bytes // 2**21  # the copy's source + target: the cold rotation's size
        copy_gbps = copy_bandwidth_gbps(megabytes)
        read_gbps = read_bandwidth_gbps(2 * megabytes)
        roofs = compute_roofs(native.get_isa())
        for shape in reference_shapes(configs):
            _bench_shape(rows, shape, ms, threads, cold=rotate_bytes if shape.policy == "base-vla" else 0, rng=rng)
        for conv in conv_shapes() if convs else ():
            _bench_conv(rows, conv, threads, rng)
        handoff = thread_handoff(threads, min_time)
    finally:
        torch.set_num_threads(torch_threads)
        native.set_num_threads(native_threads)
    return {
        "benchmark": "kernels",
        "host": {"machine": platform.machine(), "cpu": _cpu_name(), "cores": os.cpu_count(),
                 "load_average": [round(v, 2) for v in os.getloadavg()],
                 "isa": native.get_isa(), "threads": threads, "torch": torch.__version__,
                 "torch_quantized_engine": torch.backends.quantized.engine,
                 "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "copy_gbps": round(copy_gbps, 2),
        "read_gbps": round(read_gbps, 2),
        "compute_roofs": roofs,
        "thread_handoff": handoff,
        "cold_bytes": rotate_bytes,
        "min_time_s": min_time,
        "rows": rows.rows,
        "goals": goals(rows.rows, copy_gbps, read_gbps, roofs),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    host = result["host"]
    table = Table(title=f"bench kernels · {host['cpu']} · {host['isa']} · {host['threads']} thread(s) · "
                        f"copy bandwidth {result['copy_gbps']:.1f} GB/s (read + write), "
                        f"read {result['read_gbps']:.1f} GB/s (one core) · "
                        + "".join(f"{name.replace('_gops', ' roof').replace('_gflops', ' roof')} {value:.0f} GOP/s · "
                                  for name, value in result.get("compute_roofs", {}).items())
                        + f"load average {host['load_average'][0]:.1f} on {host['cores']} cores")
    for column in ("shape", "op", "M", "K", "N", "sparsity", "backend", "cache", "us", "GOP/s", "GB/s"):
        table.add_column(column, justify="left" if column in ("shape", "op", "backend", "cache") else "right")
    for r in result["rows"]:
        table.add_row(r["shape"], r["op"], str(r["M"]), str(r["K"]), str(r["N"]),
                      f"{r['sparsity']:.0%}" if r["sparsity"] else "-", r["backend"], r["cache"], f"{r['us']:,.1f}",
                      f"{r['gops']:,.1f}", f"{r['gbps']:,.1f}")
    console = Console(highlight=False, width=200)
    console.print(table)
    if handoff := result.get("thread_handoff"):
        dims = {key: "x".join(map(str, handoff[key])) for key in ("small_gemm", "split_gemm")}
        console.print(f"thread hand-off ({handoff['threads']} threads): an int8 GEMM of {dims['small_gemm']} "
                      f"({handoff['small_one_thread_us']:.1f} us on one thread) "
                      f"+{handoff['overhead_us']['polling']:.1f} us polling ({handoff['spin_us']} us spin), "
                      f"+{handoff['overhead_us']['sleeping']:.1f} us asleep; {dims['split_gemm']} "
                      f"{handoff['speedup']['polling']:.2f}x over one thread polling, "
                      f"{handoff['speedup']['sleeping']:.2f}x asleep")
    for g in result["goals"]:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        console.print(f"goal: {g['goal']}: geomean {g['geomean']}, min {g['min']} "
                      f"(met on {g['met_count']}/{g['count']}) — {verdict}")
