"""Linear layers of the native runtime: which kernel runs each weight, and the kernels' wrappers.

Every ``MatMul`` / ``Gemm`` whose weight is a constant becomes a :class:`LinearLayer`
(see :mod:`.fusion` for the graph patterns). What runs it is decided once, at
load, in two steps.

**How the layer computes** (:func:`compute_mode`):

=====================================  ==========================  ====================
weight in the graph                    activation in the graph      computes as
=====================================  ==========================  ====================
int4 codes (blocked DequantizeLinear)  float                        ``int4-dynamic`` (W4A8) if
                                                                    precision is ``int8``, else
                                                                    ``int4`` weight-only
int8 codes (per-channel DQ, zp 0)      QuantizeLinear→Dequantize    ``int8-static``: the graph's
                                       (per-tensor scale, zp 0)     own scale, no requantization
int8 codes                             float (weight-only W8A16)    ``int8-dynamic`` if precision
                                                                    is ``int8``, else ``fp32``
float32                                any                          ``int8-dynamic`` if precision
                                                                    is ``int8`` and K, N >= 16,
                                                                    else ``fp32``
=====================================  ==========================  ====================

``precision`` is the runtime option for float work: ``"int8"`` (the default:
the native backend exists to run our int8 kernels; float weights are
quantized per output channel at load and activations per token at run time,
as ONNX Runtime's dynamic quantization does with one scale per tensor; int4 weights
run W4A8, their activations quantized per weight group, ~43 dB SQNR against float
activations, 2.5-4x the float-activation int4 kernel at M = 1) or ``"fp32"`` (NumPy
float32 matmul: ONNX Runtime's numbers to ~1e-6). Float layers with fewer
than :data:`MIN_INT8_WIDTH` inputs or outputs stay float: the int8 kernel
works in blocks of 16 output channels, quantizing two inputs costs more than
their product, and such layers are rarely plain linear maps (tiny-vla's
soft-argmax ``probabilities @ coordinates``, N = 2, is one: quantizing its
probabilities per token doubled the model's int8 error).

**Which kernel** (:data:`RULES`): the first row whose mode and weight pattern
match *and* whose kernel this build provides and takes the weight (int4
group sizes 32/64/128, float K limits) wins; otherwise the next row is
tried, ending at a dense kernel that always exists:

========================  ====================================  ==============
mode                      weight                                kernel
========================  ====================================  ==============
int4-dynamic              group-wise codes                      s4a8-groupwise
int4 / int4-dynamic       group-wise codes                      s4-groupwise
int4 / int4-dynamic       (any other blocking)                  f32-dense
int8-static / -dynamic    2:4 (not on AMX)                      s8-2:4
int8-static / -dynamic    >= 95 % zeros (not on AMX)            s8-sparse
int8-static / -dynamic    anything                              s8-dense
fp32                      2:4                                   f32-2:4
fp32                      >= 50 % zeros                         f32-sparse
fp32                      anything                              f32-dense
========================  ====================================  ==============
 The weight pattern is measured on the weight itself:
``2:4`` when every aligned group of four inputs of every output channel holds
at most two nonzeros; its sparsity (fraction of exact zeros) decides between
the unstructured sparse kernels and the dense ones, at thresholds measured
per kernel family (:data:`F32_SPARSE_MIN`, :data:`S8_SPARSE_MIN`). Where the
dense int8 GEMM runs on AMX tiles (``native.get_isa() == "avx512_amx"``) or on
the AVX2 table it is faster than the 2:4 and sparse int8 kernels, which then
give way to it; on AVX-VNNI only the sparse int8 kernel does (its 2:4 one is
vpdpbusd's, like AVX-512's). On the AVX2-class tables (``"avx_vnni"``,
``"avx2"``) the float 2:4 and sparse kernels give way to NumPy's dense matmul.

Each decision is recorded as a :class:`LayerChoice` (layer, shape, weight
format, sparsity, pattern, mode, kernel, epilogue, the rule that picked it);
``NativeModel.plan()`` lists them and ``edgevla profile --backend native``
prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import native
from ..errors import EdgevlaError
from .graph import QuantizedConstant
from .ops import gelu_erf, gelu_tanh, quantize_symmetric_int8
from .weights import WeightArena

LINEAR_OP = "edgevla.Linear"  # the fused graph's node for one LinearLayer
PRECISIONS = ("int8", "fp32")
DEFAULT_PRECISION = "int8"
#: Float layers with fewer inputs or outputs are not quantized (see the module docstring).
MIN_INT8_WIDTH = 16
#: Fraction of exact zeros from which the plan calls a weight "unstructured" (sparse kernels have
#: their own thresholds, :data:`F32_SPARSE_MIN` and :data:`S8_SPARSE_MIN`).
SPARSE_MIN_SPARSITY = 0.5

ACTIVATIONS = ("none", "relu", "gelu_tanh", "gelu_erf")


@dataclass(frozen=True)
class WeightInfo:
    """What the planner knows about one weight, in the ``(N, K)`` nn.Linear layout."""

    stored: str  # "fp32", "int8" or "int4": the element type the graph stores
    n: int
    k: int
    sparsity: float  # fraction of exact zeros
    pattern: str  # "2:4", "unstructured" or "dense"


@dataclass(frozen=True)
class Rule:
    """One row of the kernel table: in ``modes``, when the weight is 2:4 (if ``two_four``) and at least
    ``min_sparsity`` zeros, run ``kernel`` — unless the kernels running now are one of ``not_on``
    (instruction sets whose dense kernel is faster than this one)."""

    modes: tuple[str, ...]
    kernel: str
    why: str
    two_four: bool = False
    min_sparsity: float = 0.0
    not_on: tuple[str, ...] = ()

    def matches(self, mode: str, w: WeightInfo, isa: str | None = None) -> bool:
        return (mode in self.modes and (not self.two_four or w.pattern == "2:4")
                and w.sparsity >= self.min_sparsity and (isa is None or isa not in self.not_on))


_INT8 = ("int8-static", "int8-dynamic")
_INT4 = ("int4", "int4-dynamic")
#: Sparsity from which the unstructured sparse kernels beat the dense ones, measured on this repo's
#: kernels (1 thread, N=1536, K=384, AVX-512 VNNI). float32: sparse 24 us vs NumPy dense 28 us at
#: M=1 and 232 vs 347 us at M=32, both at 50 % zeros. int8: the dense VNNI kernel is so fast that
#: sparse only breaks even at 90 % (7.1 vs 7.4 us at M=1; 87 vs 70 us at M=32) and wins at 95 %
#: (5.1 vs 7.4 us at M=1, 65 vs 70 us at M=32).
F32_SPARSE_MIN = 0.5
S8_SPARSE_MIN = 0.95
#: The kernel table, first available match wins (see the module docstring). 2:4 int8 measured
#: 1.04-1.2x faster than dense int8 at M=1 and on par at M=32 (0.97-1.04x; small-vla shapes, 1 thread,
#: AVX-512 VNNI, 2026-12-04), with half the weight bytes; 2:4 float32 2.2x NumPy dense. Where the
#: dense int8 GEMM runs on AMX tiles, dense wins at M=32 (34 vs 95 us for 384->1536, 17 vs 90 us for
#: 1536->384, 10 vs 26 us for 384->384; 1 thread, 2026-12-04) and ties at M=1: the int8 2:4 and sparse
#: kernels give way to it.
#: On the AVX2-class tables (1 thread, 2026-12-06, Sapphire Rapids forced to each table; N x K =
#: 1536x384, 384x1536, 384x384) AVX2's 2:4 and sparse int8 kernels, widening to int16 for vpmaddwd, lose
#: to the dense GEMM at every shape: AVX-VNNI dense 7.0 / 101.5 us at M = 1 / 32 for 1536x384 against
#: 29.6 / 717 (AVX2's 2:4, which AVX-VNNI no longer runs) and 33.9 / 989 (95 % sparse); AVX2 dense 15.6 / 276.
#: Their float 2:4 and sparse kernels lose to NumPy's matmul on OpenBLAS's AVX2 kernels
#: (OPENBLAS_CORETYPE=Haswell): 2:4 49.5 / 1447 vs 46.6 / 400 us at M = 1 / 32 for 1536x384, 12.8 / 368
#: vs 5.0 / 96 for 384x384; 50 % sparse 83.6 / 2071.
#: AVX-VNNI has its own 2:4 int8 kernel (the AVX-512 design at 256 bits; 1 thread, 2026-12-06, Sapphire
#: Rapids class forced to the table, benchmarks/cpu/two-four-vs-dense-amx-xeon-2026-12-06.json): against its
#: dense GEMM 0.86-1.03x with the weights in cache (the shapes above at M = 1-32) and 1.37-1.40x at M = 1-4
#: with them in DRAM (4096 x 4096, 40 copies in turn: 856 vs 1172 us at M = 1), on 0.62x the weight bytes;
#: whole 2:4 bundles (2 threads) 0.95x (base-vla, 64-80 tokens) and 0.96x (tiny-vla) of the all-dense plan.
#: As on AVX-512 VNNI (1.03x, 0.96x), the 2:4 weights run on it: the dense GEMM's few percent at many tokens
#: for a third less weight memory and the GEMV's DRAM-bound gain.
_DENSE_INT8_FASTER_THAN_2TO4_ON = ("avx512_amx", "avx2")
_DENSE_INT8_FASTER_THAN_SPARSE_ON = ("avx512_amx", "avx_vnni", "avx2")
_DENSE_F32_FASTER_ON = ("avx_vnni", "avx2")
RULES: tuple[Rule, ...] = (
    Rule(("int4-dynamic",), "s4a8-groupwise", "int4 weights, activations in int8 per weight group (W4A8)"),
    Rule(_INT4, "s4-groupwise", "int4 weight-only, unpacked in the kernel"),
    Rule(_INT4, "f32-dense", "int4 weights dequantized at load (no int4 kernel takes them)"),
    Rule(_INT8, "s8-2:4", "2:4 weights: half the multiply-adds", two_four=True,
         not_on=_DENSE_INT8_FASTER_THAN_2TO4_ON),
    Rule(_INT8, "s8-sparse", f">= {S8_SPARSE_MIN:.0%} zeros: sparse int8 beats dense", min_sparsity=S8_SPARSE_MIN,
         not_on=_DENSE_INT8_FASTER_THAN_SPARSE_ON),
    Rule(_INT8, "s8-dense", "dense W8A8"),
    Rule(("fp32",), "f32-2:4", "2:4 weights: half the multiply-adds", two_four=True, not_on=_DENSE_F32_FASTER_ON),
    Rule(("fp32",), "f32-sparse", f">= {F32_SPARSE_MIN:.0%} zeros: sparse float beats dense",
         min_sparsity=F32_SPARSE_MIN, not_on=_DENSE_F32_FASTER_ON),
    Rule(("fp32",), "f32-dense", "dense float32 (NumPy matmul)"),
)


@dataclass
class LayerChoice:
    """One line of the plan: what runs one linear layer and why."""

    layer: str
    k: int
    n: int
    weight: str
    sparsity: float
    pattern: str
    mode: str
    kernel: str
    epilogue: str
    rule: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- weights


@dataclass
class LinearWeight:
    """A constant weight as the planner receives it: float values, and the codes if the graph has them.

    ``values`` is float32 ``(N, K)``; ``codes`` int8 ``(N, K)`` with ``scale``
    ``(N,)`` when the graph dequantizes symmetric per-channel (or
    per-tensor) int8 codes; ``int4`` carries the graph's blocked int4 codes.
    """

    name: str
    values: np.ndarray
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    int4: QuantizedConstant | None = None
    transposed: bool = False  # whether the graph stores (K, N)

    @property
    def stored(self) -> str:
        return "int4" if self.int4 is not None else "int8" if self.codes is not None else "fp32"

    def info(self) -> WeightInfo:
        w = self.codes if self.codes is not None else self.values
        nonzero = np.count_nonzero(w)
        n, k = w.shape
        sparsity = 1.0 - nonzero / w.size if w.size else 0.0
        if sparsity > 0 and is_two_four(w):
            pattern = "2:4"
        elif sparsity >= SPARSE_MIN_SPARSITY:
            pattern = "unstructured"
        else:
            pattern = "dense"
        return WeightInfo(self.stored, n, k, float(sparsity), pattern)


def is_two_four(w: np.ndarray) -> bool:
    """Whether K (the last axis) is a multiple of 4 and every aligned group of 4 has at most 2 nonzeros."""
    n, k = w.shape
    if k % 4 or not w.size:
        return False
    return bool((np.count_nonzero(w.reshape(n, k // 4, 4), axis=2) <= 2).all())


def weight_from_constant(name: str, value: np.ndarray, quantized: QuantizedConstant | None, *,
                         transposed: bool, scale_factor: float = 1.0) -> LinearWeight:
    """The weight of a MatMul (``transposed``: the graph holds ``(K, N)``) or Gemm, in ``(N, K)``.

    ``scale_factor`` is Gemm's alpha, folded into the weight (or its scales).
    """
    values = np.ascontiguousarray((value.T if transposed else value).astype(np.float32))
    if scale_factor != 1.0:
        values = values * np.float32(scale_factor)
    weight = LinearWeight(name, values, transposed=transposed)
    if quantized is None or not quantized.symmetric():
        return weight
    out_axis = 1 if transposed else 0
    if quantized.bits == 4:
        if quantized.block_size and quantized.axis == 1 - out_axis and scale_factor == 1.0:
            weight.int4 = quantized  # blocked along the inputs: the group-wise int4 kernel's form
        return weight
    scale = np.asarray(quantized.scale, np.float32)
    n = values.shape[0]
    if scale.size == 1:
        scale = np.full(n, scale.reshape(()), np.float32)
    elif quantized.block_size or quantized.axis != out_axis or scale.size != n:
        return weight  # scales along the inputs: not the per-channel form the int8 kernels take
    codes = quantized.codes.T if transposed else quantized.codes
    weight.codes = np.ascontiguousarray(codes, dtype=np.int8)
    weight.scale = np.ascontiguousarray(scale.reshape(n) * np.float32(scale_factor))
    return weight


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and one scale per output channel (row) of a float ``(N, K)`` weight.

    ``scale = max|w[n]| / 127``, codes ``round_half_even(w / scale)``; an all-zero row
    gets scale 1 and zero codes. Exact zeros stay zeros, so sparsity survives.
    """
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale


# --------------------------------------------------------------------------- planning


def compute_mode(weight: LinearWeight, static_scale: float | None, precision: str) -> str:
    """How a layer computes (the table in the module docstring)."""
    if weight.int4 is not None:
        return "int4-dynamic" if precision == "int8" else "int4"
    if weight.codes is not None:
        if static_scale is not None:
            return "int8-static"
        return "int8-dynamic" if precision == "int8" else "fp32"
    if precision == "int8" and min(weight.values.shape) >= MIN_INT8_WIDTH:
        return "int8-dynamic"
    return "fp32"


def choose_kernel(mode: str, info: WeightInfo, weight: LinearWeight | None = None) -> Rule:
    """The first rule of :data:`RULES` that matches and whose kernel this build has (and takes the weight)."""
    isa = native.get_isa() if native.available() else None
    for rule in RULES:
        if rule.matches(mode, info, isa) and kernel_available(rule.kernel, weight):
            return rule
    raise EdgevlaError(f"no kernel of this build runs a {info.stored} {info.n}x{info.k} layer in mode {mode}")


# --------------------------------------------------------------------------- kernels


Run = Callable[[np.ndarray, np.ndarray], None]  # (x 2-D, y 2-D out) -> None


@dataclass(frozen=True)
class KernelEntry:
    available: Callable[[], bool]
    build: Callable[["LinearLayer"], Run]
    accepts: Callable[[LinearWeight], bool] = lambda weight: True  # shape or format limits of the kernel


def _post_activation(y: np.ndarray, act: str) -> None:
    if act == "relu":
        np.maximum(y, np.float32(0), out=y)
    elif act == "gelu_tanh":
        gelu_tanh(y, out=y)
    elif act == "gelu_erf":
        gelu_erf(y, out=y)


_EPILOGUE_ACTS = ("none", "relu", "gelu_tanh", "gelu_erf")  # what every CPU GEMM applies in its epilogue


def _kernel_act(act: str) -> tuple[str, str]:
    """(activation the kernel's epilogue applies, activation left for NumPy afterwards)."""
    return (act, "none") if act in _EPILOGUE_ACTS else ("none", act)


def _build_f32_dense(layer: LinearLayer) -> Run:
    # (K, N): the layout NumPy's matmul reads fastest. int4 weights arrive dequantized (folded at load).
    wt = layer.keep(np.ascontiguousarray(layer.weight.values.T))
    bias, act = layer.bias, layer.activation

    def run(x: np.ndarray, y: np.ndarray) -> None:
        np.matmul(x, wt, out=y)
        if bias is not None:
            y += bias
        _post_activation(y, act)
    return run


def _float_kernel(pack: Callable[[LinearWeight], np.ndarray], gemm_name: str) -> Callable[[LinearLayer], Run]:
    """A builder for the float-activation GEMMs: ``gemm(x, packed, bias, act=, out=)``."""
    def build(layer: LinearLayer) -> Run:
        packed = layer.keep(pack(layer.weight))
        gemm, bias = native.raw(gemm_name), layer.bias
        in_kernel, after = _kernel_act(layer.activation)

        def run(x: np.ndarray, y: np.ndarray) -> None:
            gemm(x, packed, bias, in_kernel, y)
            _post_activation(y, after)
        return run
    return build


def _int8_codes(weight: LinearWeight) -> tuple[np.ndarray, np.ndarray]:
    """The graph's int8 codes and scales, or per-channel codes of the float weight."""
    if weight.codes is not None:
        return weight.codes, weight.scale
    return quantize_per_channel(weight.values)


def _int8_kernel(pack_name: str, gemm_name: str) -> Callable[[LinearLayer], Run]:
    """A builder for the W8A8 GEMMs: ``gemm(a int8, packed, a_scale, bias, act=, out=)``.

    Static layers read the graph's int8 activation and its per-tensor scale;
    dynamic ones quantize each call's activation per token first, or take
    codes and scales quantized once for several layers (``run.on_codes``).
    """
    def build(layer: LinearLayer) -> Run:
        packed = layer.keep(getattr(native, pack_name)(*_int8_codes(layer.weight)))
        gemm, quantize, bias = native.raw(gemm_name), native.quantize_per_token, layer.bias
        in_kernel, after = _kernel_act(layer.activation)
        if layer.static_scale is not None:
            a_scale = np.array([layer.static_scale], np.float32)

            def run_static(x: np.ndarray, y: np.ndarray, residual: np.ndarray | None = None,
                           codes: np.ndarray | None = None, windows=None, relu_after: bool = False) -> None:
                gemm(x, packed, a_scale, bias, in_kernel, y, residual, relu_after, codes,
                     None if codes is None else layer.codes_scale, windows)
                if after != "none":
                    _post_activation(y, after)
            run_static.takes_residual = after == "none"  # added in the epilogue, after the activation
            run_static.takes_windows = after == "none"  # x may be a convolution's input, its rows its windows
            return run_static

        def run_on_codes(q: np.ndarray, s: np.ndarray, y: np.ndarray, residual: np.ndarray | None = None,
                         codes: np.ndarray | None = None, relu_after: bool = False) -> None:
            gemm(q, packed, s, bias, in_kernel, y, residual, relu_after, codes,
                 None if codes is None else layer.codes_scale)
            if after != "none":
                _post_activation(y, after)

        def run_dynamic(x: np.ndarray, y: np.ndarray, residual: np.ndarray | None = None,
                        codes: np.ndarray | None = None, relu_after: bool = False) -> None:
            run_on_codes(*quantize(x), y, residual, codes, relu_after)
        run_dynamic.on_codes = run_on_codes  # for activations quantized once for several layers
        run_dynamic.takes_residual = after == "none"
        return run_dynamic
    return build


def _pack_w4(weight: LinearWeight) -> np.ndarray:
    """The graph's blocked int4 codes and scales, in the (N, K) layout :func:`native.pack_w4` takes."""
    q = weight.int4
    codes = q.codes.T if weight.transposed else q.codes  # (N, K)
    scale = q.scale.T if weight.transposed else q.scale  # (N, groups)
    n, k = codes.shape
    nibbles = (codes.astype(np.int16) & 0xF).astype(np.uint8)
    if k % 2:
        nibbles = np.pad(nibbles, ((0, 0), (0, 1)))
    qdata = np.ascontiguousarray(nibbles[:, 0::2] | (nibbles[:, 1::2] << 4))
    return native.pack_w4(qdata, np.ascontiguousarray(scale, np.float32), q.block_size, k=k)


def _w4_accepts(weight: LinearWeight) -> bool:
    return weight.int4 is not None and weight.int4.block_size in (32, 64, 128)


def _f32_accepts(weight: LinearWeight) -> bool:
    return weight.values.shape[1] <= getattr(native, "PACKED_F32_MAX_K", 0)


def _has(*names: str) -> Callable[[], bool]:
    return lambda: native.available() and all(hasattr(native, n) for n in names)


#: Kernel name -> (available?, builder, accepts?). A rule naming a kernel that is not here, not in
#: this build, or that does not take the weight (int4 group sizes, float K limits) falls through.
KERNELS: dict[str, KernelEntry] = {
    "f32-dense": KernelEntry(lambda: True, _build_f32_dense),
    "s8-dense": KernelEntry(_has("pack_weight_s8", "gemm_s8s8_f32", "quantize_per_token"),
                            _int8_kernel("pack_weight_s8", "gemm_s8s8_f32")),
    "s8-2:4": KernelEntry(_has("pack_2to4_s8", "gemm_2to4_s8s8_f32", "quantize_per_token"),
                          _int8_kernel("pack_2to4_s8", "gemm_2to4_s8s8_f32")),
    "s8-sparse": KernelEntry(_has("pack_sparse_s8", "gemm_sparse_s8s8_f32", "quantize_per_token"),
                             _int8_kernel("pack_sparse_s8", "gemm_sparse_s8s8_f32")),
    "f32-2:4": KernelEntry(_has("pack_2to4_f32", "gemm_2to4_f32"),
                           _float_kernel(lambda w: native.pack_2to4_f32(w.values), "gemm_2to4_f32"), _f32_accepts),
    "f32-sparse": KernelEntry(_has("pack_sparse_f32", "gemm_sparse_f32"),
                              _float_kernel(lambda w: native.pack_sparse_f32(w.values), "gemm_sparse_f32"),
                              _f32_accepts),
    "s4-groupwise": KernelEntry(_has("pack_w4", "gemm_w4_f32"), _float_kernel(_pack_w4, "gemm_w4_f32"), _w4_accepts),
    "s4a8-groupwise": KernelEntry(_has("pack_w4", "gemm_w4a8_f32"), _float_kernel(_pack_w4, "gemm_w4a8_f32"),
                                  _w4_accepts),
}


def kernel_available(name: str, weight: LinearWeight | None = None) -> bool:
    """Whether this build runs kernel ``name`` (and, given a weight, whether the kernel takes it)."""
    entry = KERNELS.get(name)
    return entry is not None and entry.available() and (weight is None or entry.accepts(weight))


# --------------------------------------------------------------------------- the layer


@dataclass
class LinearSpec:
    """A linear layer as the graph rewrite finds it, before a kernel is chosen and its weight packed."""

    name: str
    weight: LinearWeight
    bias: np.ndarray | None
    activation: str
    static_scale: float | None
    parts: tuple[tuple[str, int], ...] = ()
    residual: str | None = None  # the value a following Add adds to the output (a skip connection)

    def kernel(self, precision: str) -> tuple[str, str]:
        """(mode, kernel) the rules give this layer, as :class:`LinearLayer` will choose them."""
        mode = compute_mode(self.weight, self.static_scale, precision)
        return mode, choose_kernel(mode, self.weight.info(), self.weight).kernel

    def build(self, precision: str, arena: WeightArena | None = None) -> "LinearLayer":
        return LinearLayer(self.name, self.weight, self.bias, self.activation, self.static_scale,
                           int8_input=self.static_scale is not None, precision=precision, arena=arena,
                           parts=self.parts, residual=self.residual is not None)


@dataclass
class LinearLayer:
    """``y = act(x @ W^T + bias)`` over the last axis of x, on the kernel the rules chose.

    With ``parts``, the layer is several of the graph's layers that read the same
    input, their weights stacked along N and run as one GEMM (:mod:`.siblings`):
    ``parts`` names each one and its number of output channels, in column order,
    and :attr:`choices` has one plan row per part.
    """

    name: str
    weight: LinearWeight
    bias: np.ndarray | None
    activation: str
    static_scale: float | None  # the graph's per-tensor activation scale (int8-static)
    int8_input: bool  # x arrives as the graph's int8 codes (a shared QuantizeLinear)
    precision: str
    arena: WeightArena | None = field(default=None, repr=False)  # where the kernel's weights are kept
    parts: tuple[tuple[str, int], ...] = ()
    residual: bool = False  # a second input is added to the output (:meth:`with_residual`)
    relu_after: bool = False  # then max(y, 0) (:meth:`set_output_stage`)
    codes_scale: float | None = None  # then the output also quantized to int8 codes at this scale
    choice: LayerChoice = field(init=False)
    choices: list[LayerChoice] = field(init=False)
    _run: Run = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise EdgevlaError(f"layer {self.name}: unknown activation {self.activation!r}")
        info = self.weight.info()
        mode = compute_mode(self.weight, self.static_scale, self.precision)
        if (mode == "int8-static") != self.int8_input:
            raise EdgevlaError(f"layer {self.name}: a static int8 layer reads the graph's int8 activation, "
                               f"and only it does (mode {mode})")
        rule = choose_kernel(mode, info, self.weight)
        self.choice = LayerChoice(self.name, info.k, info.n, info.stored, round(info.sparsity, 4), info.pattern,
                                  mode, rule.kernel, self._epilogue(), rule.why)
        self.choices = self._part_choices() if self.parts else [self.choice]
        self._run = KERNELS[rule.kernel].build(self)
        # The int8 kernels add the residual in their epilogue and run the output stage on each tile.
        self._epilogue_residual = bool(getattr(self._run, "takes_residual", False))
        self._quantize_codes: Callable | None = None  # the output stage's quantization, where the kernel has none
        self._scratch: dict[tuple[int, ...], np.ndarray] = {}  # float outputs nobody reads, by shape
        self.n, self.k = info.n, info.k
        # The kernel holds its own (packed or transposed) copy; drop the planner's.
        self.weight = LinearWeight(self.weight.name, np.empty((0, 0), np.float32))

    def _epilogue(self) -> str:
        """The plan's epilogue column: what follows the product, in order (``bias+residual+relu+int8``)."""
        return "+".join(p for p in ("bias" if self.bias is not None else "",
                                    self.activation if self.activation != "none" else "",
                                    "residual" if self.residual else "", "relu" if self.relu_after else "",
                                    "int8" if self.codes_scale is not None else "") if p) or "-"

    @property
    def has_output_stage(self) -> bool:
        return self.relu_after or self.codes_scale is not None

    def set_output_stage(self, relu_after: bool, codes_scale: float | None) -> None:
        """What the graph does to the output next, run by the layer (:mod:`.fusion`): with ``relu_after``, a
        ReLU after the residual (a ResNet block's end); with ``codes_scale``, a static int8 ``QuantizeLinear``
        (per-tensor scale > 0, zero point 0), whose codes :meth:`staged` returns. The int8 kernels run both on
        each tile of the output while it is in cache (``native.gemm_s8s8_f32``'s output stage); other kernels
        run them afterwards, with the same results."""
        if relu_after and not self.residual:
            raise EdgevlaError(f"layer {self.name}: a ReLU after the residual needs a residual")
        if codes_scale is not None and not (np.isfinite(codes_scale) and codes_scale > 0):
            raise EdgevlaError(f"layer {self.name}: output codes need a positive finite scale, got {codes_scale}")
        if self.parts:
            raise EdgevlaError(f"layer {self.name}: stacked layers have no output stage (each part has its own reader)")
        self.relu_after, self.codes_scale = relu_after, codes_scale
        if codes_scale is not None:
            self._quantize_codes = quantize_symmetric_int8(np.float32(codes_scale))
        self.choice.epilogue = self._epilogue()
        self.choices = [self.choice]

    @property
    def takes_windows(self) -> bool:
        """Whether the kernel multiplies a convolution's windows straight from its int8 input (:meth:`staged`)."""
        return bool(getattr(self._run, "takes_windows", False))

    def staged(self, x: np.ndarray, residual: np.ndarray | None = None, keep_float: bool = True,
               windows=None, rows: int = 0) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The layer, its residual and its output stage: ``(float output, int8 codes)``; the float output is
        None unless ``keep_float`` (then it is written to a buffer the layer keeps), the codes None without
        ``codes_scale``. With ``windows`` (a ``native.WindowSpec``, where :attr:`takes_windows`), ``x`` is a
        convolution's int8 channels-last input and the ``rows`` rows of the product are its windows."""
        if windows is None:
            shape, x2 = self._rows(x)
        else:
            shape, x2 = (rows, self.n), x
        if keep_float:
            y = np.empty(shape, np.float32)
        else:
            y = self._scratch.get(shape)
            if y is None:
                if len(self._scratch) >= 4:
                    self._scratch.pop(next(iter(self._scratch)))
                y = self._scratch[shape] = np.empty(shape, np.float32)
        codes = None if self.codes_scale is None else np.empty(shape, np.int8)
        y2 = y.reshape(-1, self.n)
        fits = residual is None or (residual.shape == shape and residual.dtype == np.float32)
        if self._epilogue_residual and fits:
            r2 = None if residual is None else np.ascontiguousarray(residual.reshape(-1, self.n))
            q2 = None if codes is None else codes.reshape(-1, self.n)
            if windows is None:
                self._run(x2, y2, r2, q2, relu_after=self.relu_after)
            else:
                self._run(x2, y2, r2, q2, windows, relu_after=self.relu_after)
        elif windows is not None:
            raise EdgevlaError(f"layer {self.name}: windows need a kernel that takes them and a residual of the "
                               f"output's shape")
        else:
            self._run(x2, y2)
            if residual is not None:  # a residual that broadcasts may make the sum larger than y
                y = np.add(y, residual, out=y if np.broadcast_shapes(shape, residual.shape) == shape else None)
            codes = self.finish(y, codes if codes is not None and codes.shape == y.shape else None)
        return (y if keep_float else None), codes

    def stage_step(self, keep_float: bool) -> Callable:
        """The executor's step for a node of this layer with an output stage: ``(x[, residual])`` to the float
        output, the codes, or both (float first), as the node's outputs are."""
        def step(x: np.ndarray, residual: np.ndarray | None = None):
            y, codes = self.staged(x, residual, keep_float)
            if codes is None:
                return y
            return (y, codes) if keep_float else codes
        return step

    def finish(self, y: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray | None:
        """The output stage in NumPy, on a float output that has its residual: ReLU in place, then the codes
        (into ``codes`` if given); None without ``codes_scale``."""
        if self.relu_after:
            np.maximum(y, np.float32(0), out=y)
        if self.codes_scale is None:
            return None
        return self._quantize_codes(y, out=np.empty(y.shape, np.int8) if codes is None else codes)

    def _part_choices(self) -> list[LayerChoice]:
        """One plan row per stacked layer: its own shape and weight statistics, the shared kernel."""
        if sum(n for _, n in self.parts) != self.choice.n:
            raise EdgevlaError(f"layer {self.name}: parts of {[n for _, n in self.parts]} channels do not add "
                               f"up to N = {self.choice.n}")
        rows, start = [], 0
        for name, n in self.parts:
            w = self.weight
            part = LinearWeight(name, w.values[start:start + n],
                                None if w.codes is None else w.codes[start:start + n]).info()
            together = ", ".join(other for other, _ in self.parts if other != name)
            rows.append(LayerChoice(name, part.k, part.n, self.choice.weight, round(part.sparsity, 4), part.pattern,
                                    self.choice.mode, self.choice.kernel, self.choice.epilogue,
                                    f"{self.choice.rule}; one GEMM with {together} (same input)"))
            start += n
        return rows

    def keep(self, weight: np.ndarray) -> np.ndarray:
        """The array a kernel keeps for this layer (packed or transposed), moved into the model's arena."""
        return weight if self.arena is None else self.arena.place(weight)

    @property
    def takes_token_codes(self) -> bool:
        """Whether the layer quantizes per token (int8-dynamic), so that it can take codes quantized elsewhere."""
        return getattr(self._run, "on_codes", None) is not None

    def __call__(self, x: np.ndarray, token_scale: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """``act(x @ W^T + bias)``; with ``token_scale``, ``x`` holds int8 codes from ``quantize_per_token``."""
        shape, x2 = self._rows(x)
        y = np.empty(shape, np.float32) if out is None else out
        if token_scale is None:
            self._run(x2, y.reshape(-1, self.n))
        else:
            self._run.on_codes(x2, token_scale, y.reshape(-1, self.n))
        return y

    def with_residual(self, x: np.ndarray, residual: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``act(x @ W^T + bias) + residual``: the int8 kernels add it in their epilogue (one pass, bit-identical
        to adding afterwards); other kernels, or a residual that broadcasts, get a NumPy add."""
        shape, x2 = self._rows(x)
        if self._epilogue_residual and residual.shape == shape and residual.dtype == np.float32:
            y = np.empty(shape, np.float32) if out is None else out  # the kernel refuses an out overlapping it
            r2 = residual.reshape(-1, self.n)
            self._run(x2, y.reshape(-1, self.n), r2 if r2.flags.c_contiguous else np.ascontiguousarray(r2))
            return y
        y = np.empty(shape, np.float32)
        self._run(x2, y.reshape(-1, self.n))
        return np.add(y, residual, out=out if out is not None and out.shape == np.broadcast_shapes(
            shape, residual.shape) else None)

    def _rows(self, x: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
        if x.shape[-1:] != (self.k,):
            raise EdgevlaError(f"layer {self.name} takes {self.k} input features, got shape {x.shape}")
        x2 = x.reshape(-1, self.k)
        return (*x.shape[:-1], self.n), x2 if x2.flags.c_contiguous else np.ascontiguousarray(x2)


def quantize_tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``edgevla.QuantizePerToken``: int8 codes of ``x`` (its shape) and one scale per token (row)."""
    q, s = native.quantize_per_token(np.ascontiguousarray(x.reshape(-1, x.shape[-1])))
    return q.reshape(x.shape), s

