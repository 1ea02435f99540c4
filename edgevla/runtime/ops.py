"""NumPy implementations of the ONNX ops the native runtime executes.

Each op is registered under its ONNX name by a *compiler*: a function that
reads the node's attributes (and any input that is a constant) once, when the
model is loaded, and returns the callable run per inference. That callable
takes the node's inputs positionally (``None`` for an omitted optional input)
and returns one array, or a tuple for ops with several outputs.

Ops registered with ``writes_out=True`` also accept ``out=``: an array of the
output's shape and dtype, preallocated by the executor, which they fill and
return. The executor uses it to run without allocating after warm-up. An op
never writes into its inputs; view ops (Reshape, Slice, Split, ...) return
views of them instead of copies.

Semantics follow the ONNX operator specification (https://onnx.ai/onnx/operators/)
for the opsets the exporter emits (17 to 21), checked op by op against ONNX
Runtime in ``tests/test_runtime_ops.py``. Anything not here is refused at load
with :class:`~edgevla.errors.EdgevlaError` naming the op (see
:func:`check_supported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import helper

from .. import native
from ..errors import EdgevlaError
from .activations import clip, erf, gelu_erf, gelu_tanh, sigmoid
from .scratch import work_arrays

OpFn = Callable[..., Any]


@dataclass(frozen=True)
class OpKernel:
    """What runs a node: ``fn(*inputs[, out=...])``; ``writes_out`` says whether it takes ``out``."""

    fn: OpFn
    writes_out: bool


@dataclass(frozen=True)
class OpContext:
    """What an op compiler sees: attributes, constant inputs (None where dynamic or omitted), opset."""

    attrs: dict[str, Any]
    consts: tuple[np.ndarray | None, ...]
    opset: int
    n_outputs: int
    where: str  # "Softmax node 'x'", for messages

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def text(self, name: str, default: str) -> str:
        """A string attribute (ONNX stores them as bytes), or ``default``."""
        value = self.attrs.get(name)
        if value is None:
            return default
        return value.decode() if isinstance(value, bytes) else str(value)


_Compiler = Callable[[OpContext], OpFn]
_REGISTRY: dict[str, tuple[_Compiler, bool]] = {}


def register(*names: str, writes_out: bool = False) -> Callable[[_Compiler], _Compiler]:
    def decorate(compiler: _Compiler) -> _Compiler:
        for name in names:
            _REGISTRY[name] = (compiler, writes_out)
        return compiler
    return decorate


def supported_ops() -> list[str]:
    """The ONNX op types the native runtime implements, sorted."""
    return sorted(_REGISTRY)


def check_supported(op_type: str, where: str, opset: int) -> None:
    if op_type not in _REGISTRY:
        raise EdgevlaError(f"the native backend does not support the ONNX op {op_type!r} ({where}); "
                           "run this model with --backend onnxruntime")


def compile_op(op_type: str, attrs: dict[str, Any], consts: Sequence[np.ndarray | None], opset: int,
               n_outputs: int, where: str) -> OpKernel:
    check_supported(op_type, where, opset)
    compiler, writes_out = _REGISTRY[op_type]
    fn = compiler(OpContext(dict(attrs), tuple(consts), opset, n_outputs, where))
    return OpKernel(fn, writes_out)


def evaluate(op_type: str, attrs: dict[str, Any], args: Sequence[np.ndarray | None], opset: int,
             n_outputs: int, where: str) -> list[np.ndarray]:
    """Run one node once (constant folding); returns one array per output."""
    kernel = compile_op(op_type, attrs, args, opset, n_outputs, where)
    try:
        result = kernel.fn(*args)
    except EdgevlaError:
        raise
    except Exception as e:  # NumPy's ValueError/IndexError on a malformed model
        raise EdgevlaError(f"the native backend cannot evaluate {where}: {e}") from e
    results = list(result) if isinstance(result, tuple) else [result]
    return [np.asarray(r) for r in results]


def _fail(c: OpContext, why: str) -> EdgevlaError:
    return EdgevlaError(f"the native backend cannot run {c.where}: {why}")


def _ints(a: Any) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _np_dtype(onnx_type: int, c: OpContext) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))
    except Exception as e:
        raise _fail(c, f"unsupported element type {onnx_type}") from e


# --------------------------------------------------------------------------- elementwise math


def _plain(fn: Callable[..., np.ndarray]) -> _Compiler:
    """A compiler for ops without attributes: the same function for every node."""
    return lambda c: fn


for _name, _ufunc in {"Neg": np.negative, "Abs": np.absolute, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
                      "Tanh": np.tanh, "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil,
                      "Round": np.rint, "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin,
                      "Acos": np.arccos, "Atan": np.arctan, "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh,
                      "Acosh": np.arccosh, "Atanh": np.arctanh, "Not": np.logical_not, "Sign": np.sign}.items():
    register(_name, writes_out=True)(_plain(_ufunc))
register("Erf", writes_out=True)(_plain(erf))
register("Sigmoid", writes_out=True)(_plain(sigmoid))
register("IsNaN", writes_out=True)(_plain(np.isnan))  # the exporter's softmax over masked attention: NaN rows to 0


@register("IsInf", writes_out=True)
def _is_inf(c):
    positive, negative = bool(c.attr("detect_positive", 1)), bool(c.attr("detect_negative", 1))

    def is_inf(x, out=None):
        found = np.isinf(x, out=out)
        if not positive:
            found &= x < 0
        if not negative:
            found &= x > 0
        return found
    return is_inf


@register("Relu", writes_out=True)
def _relu(c):
    """``max(x, 0)`` against a zero array of x's shape, kept per shape: NumPy's SIMD loop for ``maximum`` takes
    two arrays, not an array and a scalar (14.5 against 4.5 us on a 24x24x64 float32 value, Zen 4)."""
    zeros: dict[tuple, np.ndarray] = {}

    def relu(x, out=None):
        key = (x.shape, x.dtype.str)
        zero = zeros.get(key)
        if zero is None:
            if len(zeros) >= 4:
                zeros.pop(next(iter(zeros)))
            zero = zeros[key] = np.zeros(x.shape, x.dtype)
        return np.maximum(x, zero, out=out)
    return relu


@register("LeakyRelu", writes_out=True)
def _leaky_relu(c):
    alpha = np.float32(c.attr("alpha", 0.01))
    return lambda x, out=None: _copy_into(out, np.where(x >= 0, x, x * alpha))


@register("PRelu", writes_out=True)
def _prelu(c):
    """``x`` where positive, else ``slope * x``; ``slope`` broadcasts to ``x`` (a channel's slope: shape
    ``(C, 1, 1)`` on NCHW, as ``nn.PReLU`` exports)."""
    return lambda x, slope, out=None: _copy_into(out, np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False))


@register("Selu", writes_out=True)
def _selu(c):
    alpha = np.float32(c.attr("alpha", 1.67326319217681884765625))
    gamma = np.float32(c.attr("gamma", 1.05070102214813232421875))
    return lambda x, out=None: _copy_into(out, gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))))


@register("Celu", writes_out=True)
def _celu(c):
    alpha = np.float32(c.attr("alpha", 1.0))
    return lambda x, out=None: _copy_into(out, np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0)
                                                                                                 / alpha)))


@register("ThresholdedRelu", writes_out=True)
def _thresholded_relu(c):
    alpha = np.float32(c.attr("alpha", 1.0))
    return lambda x, out=None: _copy_into(out, np.where(x > alpha, x, np.float32(0)).astype(x.dtype, copy=False))


@register("Elu", writes_out=True)
def _elu(c):
    alpha = np.float32(c.attr("alpha", 1.0))
    return lambda x, out=None: _copy_into(out, np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))))


@register("HardSigmoid", writes_out=True)
def _hard_sigmoid(c):
    alpha, beta = np.float32(c.attr("alpha", 0.2)), np.float32(c.attr("beta", 0.5))
    return lambda x, out=None: np.clip(x * alpha + beta, 0, 1, out=out)


@register("HardSwish", writes_out=True)
def _hard_swish(c):
    return lambda x, out=None: np.multiply(x, np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1), out=out)


@register("Softplus", writes_out=True)
def _softplus(c):
    return lambda x, out=None: np.logaddexp(x.dtype.type(0), x, out=out)


@register("Mish", writes_out=True)
def _mish(c):
    """``x tanh(softplus(x))`` (opset 18; Diffusion Policy's U-Nets use it)."""
    def mish(x, out=None):
        t = np.tanh(np.logaddexp(x.dtype.type(0), x))
        return np.multiply(x, t, out=out)
    return mish


@register("Gelu", writes_out=True)
def _gelu(c):
    approximate = c.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise _fail(c, f"approximate={approximate!r}")
    return gelu_tanh if approximate == "tanh" else gelu_erf


def _copy_into(out, value):
    if out is None:
        return value
    np.copyto(out, value)
    return out


@register("Clip", writes_out=True)
def _clip(c):
    if c.opset < 11:
        lo_attr, hi_attr = c.attr("min"), c.attr("max")

        def clip_attrs(x, out=None):
            return _clip_run(x, lo_attr, hi_attr, out)
        return clip_attrs

    def clip(x, lo=None, hi=None, out=None):
        return _clip_run(x, lo, hi, out)
    return clip


def _clip_run(x, lo, hi, out):
    if lo is None and hi is None:
        return _copy_into(out, x.copy() if out is None else x)
    return np.clip(x, lo, hi, out=out)


@register("Cast", writes_out=True)
def _cast(c):
    dtype = _np_dtype(c.attr("to"), c)

    def cast(x, out=None):
        if out is None:
            return x.astype(dtype)
        np.copyto(out, x, casting="unsafe")
        return out
    return cast


@register("CastLike", writes_out=True)
def _cast_like(c):
    def cast_like(x, like, out=None):
        if out is None:
            return x.astype(like.dtype)
        np.copyto(out, x, casting="unsafe")
        return out
    return cast_like


@register("Identity")
def _identity(c):
    return lambda x: x


# --------------------------------------------------------------------------- binary, variadic


def _int_div(a, b, out=None):
    # ONNX integer Div truncates toward zero (C semantics); NumPy's // floors.
    q = np.abs(a) // np.abs(b)
    return np.multiply(q, np.sign(a) * np.sign(b), out=out)


def _div(a, b, out=None):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return _int_div(a, b, out)
    return np.divide(a, b, out=out)


for _name, _ufunc in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                      "Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
                      "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
                      "Xor": np.logical_xor, "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or}.items():
    register(_name, writes_out=True)(_plain(_ufunc))
register("Div", writes_out=True)(_plain(_div))


@register("Pow", writes_out=True)
def _pow(c):
    """ONNX Pow; a float base to a scalar 2, 3 or 0.5 (variances, a GELU's cube, norms) by products or a
    square root, ~20x faster than ``np.power``'s general path. ``x*x*x`` may differ from ``powf`` by an ulp."""
    def power(x, y, out=None):
        y = np.asarray(y)
        if y.ndim == 0 and x.dtype.kind == "f" and float(y) in (2.0, 3.0, 0.5):
            e = float(y)
            if e == 0.5:
                return np.sqrt(x, out=out)
            result = np.multiply(x, x, out=out)
            return np.multiply(result, x, out=result) if e == 3.0 else result
        return _copy_into(out, np.power(x, y.astype(x.dtype)).astype(x.dtype, copy=False))
    return power


@register("Mod", writes_out=True)
def _mod(c):
    return _plain(np.fmod if c.attr("fmod", 0) else np.mod)(c)


def _variadic(ufunc) -> _Compiler:
    def compiler(c):
        def reduce(*xs, out=None):
            if len(xs) == 1:
                return _copy_into(out, xs[0].copy() if out is None else xs[0])
            acc = ufunc(xs[0], xs[1], out=out)
            for x in xs[2:]:
                acc = ufunc(acc, x, out=acc if out is not None else None)
            return acc
        return reduce
    return compiler


register("Max", writes_out=True)(_variadic(np.maximum))
register("Min", writes_out=True)(_variadic(np.minimum))
register("Sum", writes_out=True)(_variadic(np.add))


@register("Mean", writes_out=True)
def _mean(c):
    add = _variadic(np.add)(c)

    def mean(*xs, out=None):
        total = add(*xs, out=out)
        return np.divide(total, total.dtype.type(len(xs)), out=total)
    return mean


@register("Where", writes_out=True)
def _where(c):
    def where(cond, x, y, out=None):
        return _copy_into(out, np.where(cond, x, y))
    return where


# --------------------------------------------------------------------------- reductions


def _reduce_axes(c: OpContext, axes_input: Any) -> tuple[int, ...] | None:
    """The axes to reduce, from the input (new opsets) or the attribute; None means all (or noop)."""
    axes = axes_input if axes_input is not None else c.attr("axes")
    if axes is None:
        return None
    axes = _ints(axes)
    return tuple(axes) if axes else None


def _reduction(reduce_fn: Callable[..., np.ndarray]) -> _Compiler:
    def compiler(c):
        keepdims = bool(c.attr("keepdims", 1))
        noop = bool(c.attr("noop_with_empty_axes", 0))

        def reduce(x, axes=None, out=None):
            ax = _reduce_axes(c, axes)
            if ax is None and noop:
                return _copy_into(out, x.copy() if out is None else x)
            return reduce_fn(x, axis=ax, keepdims=keepdims, out=out)
        return reduce
    return compiler


def _sum_square(x, axis, keepdims, out):
    return np.sum(np.square(x), axis=axis, keepdims=keepdims, out=out)


def _l2(x, axis, keepdims, out):
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims), out=out)


def _l1(x, axis, keepdims, out):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims, out=out)


def _log_sum_exp(x, axis, keepdims, out):
    m = np.max(x, axis=axis, keepdims=True)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return _copy_into(out, s if keepdims else np.squeeze(s, axis=axis))


def _reduce_mean(x, axis, keepdims, out):
    """``np.mean`` of a float array as its ufunc sum divided by the count: the same floats (the same pairwise
    sum, the same division) without ``np.mean``'s Python layer, half the time of a small pooling mean."""
    if x.dtype not in (np.float32, np.float64) or x.size == 0:  # np.mean sums float16 in float32
        return np.mean(x, axis=axis, keepdims=keepdims, out=out)
    count = x.size if axis is None else math.prod(x.shape[a] for a in axis)
    total = np.add.reduce(x, axis=axis, keepdims=keepdims, out=out)
    return np.divide(total, x.dtype.type(count), out=total if isinstance(total, np.ndarray) else None)


register("ReduceMean", writes_out=True)(_reduction(_reduce_mean))
register("ReduceSum", writes_out=True)(_reduction(np.sum))
register("ReduceMax", writes_out=True)(_reduction(np.max))
register("ReduceMin", writes_out=True)(_reduction(np.min))
register("ReduceProd", writes_out=True)(_reduction(np.prod))
register("ReduceSumSquare", writes_out=True)(_reduction(_sum_square))
register("ReduceL1", writes_out=True)(_reduction(_l1))
register("ReduceL2", writes_out=True)(_reduction(_l2))
register("ReduceLogSumExp", writes_out=True)(_reduction(_log_sum_exp))


def _arg_reduction(fn) -> _Compiler:
    def compiler(c):
        axis, keepdims = int(c.attr("axis", 0)), bool(c.attr("keepdims", 1))
        last = bool(c.attr("select_last_index", 0))

        def arg(x):
            if last:
                flipped = np.flip(x, axis=axis)
                idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
            else:
                idx = fn(x, axis=axis)
            idx = idx.astype(np.int64)
            return np.expand_dims(idx, axis) if keepdims else idx
        return arg
    return compiler


register("ArgMax")(_arg_reduction(np.argmax))
register("ArgMin")(_arg_reduction(np.argmin))


# --------------------------------------------------------------------------- normalization


def _softmax_axes(c: OpContext, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Opset >= 13: one axis. Older: the input is flattened to 2-D at ``axis`` (default 1)."""
    if c.opset >= 13:
        return x, int(c.attr("axis", -1))
    axis = int(c.attr("axis", 1)) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1), 1


_ROW_VECTORS: dict[tuple[int, float], np.ndarray] = {}
#: A softmax row whose sum of exp(x - global max) falls below this is redone with its own max
#: (its values sit ~69 below the global maximum, near float32's underflow).
_MIN_ROW_SUM = 1e-30


def _row_reduce(x2: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """``weight * x2.sum(axis=1, keepdims=True)`` of a 2-D float32 array, as one BLAS matrix-vector product.

    NumPy's reductions over a short trailing axis run row by row (an (80, 96)
    mean takes ~5 us); the BLAS product reads the array once (~1 us).
    """
    d = x2.shape[1]
    vector = _ROW_VECTORS.get((d, weight))
    if vector is None:
        vector = _ROW_VECTORS.setdefault((d, weight), np.full((d, 1), weight, np.float32))
    return x2 @ vector


def _fast_rows(x: np.ndarray, axis: int) -> bool:
    """Whether ``axis`` is the last one of a non-empty, C-contiguous float32 array (the BLAS row path)."""
    return (x.dtype == np.float32 and x.size > 0 and axis % x.ndim == x.ndim - 1
            and x.flags.c_contiguous)


#: Kernel tables whose :func:`edgevla.native.softmax_f32` beats NumPy's (8 x 1024, 1 thread: AVX-512 4.9 us,
#: AVX2 8.5, SSE2 22.0 vs NumPy 14.4; the AVX-VNNI table's softmax is AVX2's); elsewhere (NEON until
#: measured on a Jetson) NumPy runs.
NATIVE_SOFTMAX_ISAS = ("avx512_amx", "avx512_vnni", "avx_vnni", "avx2")


@register("Softmax", writes_out=True)
def _softmax(c):
    has_native = native.available() and hasattr(native, "softmax_f32")
    native_softmax = native.raw("softmax_f32") if has_native else None

    def softmax(x, out=None):
        x2, axis = _softmax_axes(c, x)
        y = np.empty_like(x) if out is None else out
        y2 = y.reshape(x2.shape)
        if _fast_rows(x2, axis) and has_native and y2.flags.c_contiguous and native.get_isa() in NATIVE_SOFTMAX_ISAS:
            k = x2.shape[-1]
            native_softmax(x2.reshape(-1, k), y2.reshape(-1, k))  # max, exp, sum per row in one pass
            return y
        if _fast_rows(x2, axis):
            # Any per-row constant may be subtracted; the global maximum is one fast reduction instead
            # of one per row. Rows far below it (or non-finite inputs) take the per-row path below.
            top = x2.max()
            if np.isfinite(top):
                np.subtract(x2, top, out=y2)
                np.exp(y2, out=y2)
                rows = y2.reshape(-1, x2.shape[-1])
                sums = _row_reduce(rows)
                if sums.min() >= _MIN_ROW_SUM:
                    rows /= sums
                    return y
        np.subtract(x2, np.max(x2, axis=axis, keepdims=True), out=y2)
        np.exp(y2, out=y2)
        y2 /= np.sum(y2, axis=axis, keepdims=True)
        return y
    return softmax


@register("LogSoftmax", writes_out=True)
def _log_softmax(c):
    def log_softmax(x, out=None):
        x2, axis = _softmax_axes(c, x)
        y = np.empty_like(x) if out is None else out
        y2 = y.reshape(x2.shape)
        np.subtract(x2, np.max(x2, axis=axis, keepdims=True), out=y2)
        y2 -= np.log(np.sum(np.exp(y2), axis=axis, keepdims=True))
        return y
    return log_softmax


@register("LayerNormalization", writes_out=True)
def _layer_norm(c):
    return _normalization(c, rms=False)


@register("RMSNormalization", writes_out=True)
def _rms_norm(c):
    """Opset 23's RMSNormalization, and what the runtime fuses an exported ``nn.RMSNorm`` (or a Llama-style
    ``x * rsqrt(mean(x^2) + eps) * w``) into (:func:`~.norms.fuse_rms_norm`)."""
    return _normalization(c, rms=True)


def _normalization(c, rms: bool):
    """LayerNorm, or RMSNorm (no mean; the mean square for the variance), over the axes from ``axis`` on."""
    axis = int(c.attr("axis", -1))
    eps = np.float32(c.attr("epsilon", 1e-5))
    if int(c.attr("stash_type", 1)) != 1:
        raise _fail(c, "only stash_type=1 (float32 statistics) is implemented")

    use_native = native.available() and hasattr(native, "layer_norm_f32") and c.n_outputs == 1
    native_layer_norm = native.raw("layer_norm_f32") if use_native else None
    spread: dict[tuple[int, float], np.ndarray] = {}  # a one-value scale as a vector, per width and value

    def layer_norm(x, scale, bias=None, out=None):
        first = axis % x.ndim
        d = math.prod(x.shape[first:])
        if scale.size == 1 and d > 1 and scale.dtype == np.float32:
            key = (d, float(scale.reshape(())))
            if key not in spread:
                spread[key] = np.full(d, key[1], np.float32)
            scale = spread[key]
        y = np.empty(x.shape, np.float32) if out is None else out
        x2, y2 = x.reshape(-1, d), y.reshape(-1, d)
        if (use_native and x.dtype == scale.dtype == np.float32 and d > 0 and scale.size == d
                and (bias is None or (bias.dtype == np.float32 and bias.size == d))):
            try:  # one C++ pass per row (csrc/layer_norm_s8_rows.h); rows that are not finite: NumPy below
                native_layer_norm(x2 if x2.flags.c_contiguous else np.ascontiguousarray(x2), scale.reshape(d),
                                  None if bias is None else bias.reshape(d), float(eps), y2, rms)
                return y
            except ValueError:
                pass
        if rms:
            mean = np.zeros((x2.shape[0], 1), np.float32)
            np.copyto(y2, x2)
            var = np.mean(np.square(y2), axis=1, keepdims=True, dtype=np.float32)
        elif x.dtype == np.float32 and d > 0 and x2.flags.c_contiguous:
            mean = _row_reduce(x2, 1.0 / d)
            np.subtract(x2, mean, out=y2)
            (squares,) = work_arrays(y2.shape, 1)
            var = _row_reduce(np.multiply(y2, y2, out=squares), 1.0 / d)
        else:
            mean = np.mean(x2, axis=1, keepdims=True, dtype=np.float32)
            np.subtract(x2, mean, out=y2)
            var = np.mean(np.square(y2), axis=1, keepdims=True)
        inv = np.add(var, eps, out=var)
        np.sqrt(inv, out=inv)
        np.reciprocal(inv, out=inv)
        y2 *= inv
        y *= scale
        if bias is not None:
            y += bias
        if c.n_outputs > 1:
            stats = x.shape[:first] + (1,) * (x.ndim - first)
            return (y, mean.reshape(stats), inv.reshape(stats))[: c.n_outputs]
        return y
    return layer_norm


# --------------------------------------------------------------------------- linear algebra


@register("MatMul", writes_out=True)
def _matmul(c):
    return lambda a, b, out=None: np.matmul(a, b, out=out)


@register("Einsum")
def _einsum(c):
    """ONNX Einsum: NumPy's, on the node's equation (``torch.einsum`` exports it as written)."""
    equation = c.text("equation", "")
    if not equation:
        raise _fail(c, "no equation")
    return lambda *xs: np.einsum(equation, *xs, optimize=len(xs) > 2)


@register("Gemm", writes_out=True)
def _gemm(c):
    ta, tb = bool(c.attr("transA", 0)), bool(c.attr("transB", 0))
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)

    def gemm(a, b, bias=None, out=None):
        y = np.matmul(a.T if ta else a, b.T if tb else b, out=out)
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if bias is not None and beta != 0.0:
            y += bias if beta == 1.0 else bias * y.dtype.type(beta)
        return y
    return gemm


# --------------------------------------------------------------------------- shapes and layout


@register("Reshape")
def _reshape(c):
    allowzero = bool(c.attr("allowzero", 0))

    def reshape(x, shape):
        dims = _ints(shape)
        if not allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    const = c.consts[1] if len(c.consts) > 1 else None
    if const is not None and (allowzero or 0 not in _ints(const)):
        fixed = tuple(_ints(const))  # parsed once: the shape input is a constant
        return lambda x, shape: x.reshape(fixed)
    return reshape


@register("Flatten")
def _flatten(c):
    axis = int(c.attr("axis", 1))

    def flatten(x):
        a = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)
    return flatten


@register("Transpose", writes_out=True)
def _transpose(c):
    perm = c.attr("perm")

    def transpose(x, out=None):
        view = x.transpose(perm) if perm is not None else x.T
        if out is None:
            return np.ascontiguousarray(view)
        np.copyto(out, view)
        return out
    return transpose


@register("Unsqueeze")
def _unsqueeze(c):
    def unsqueeze(x, axes=None):
        ax = _ints(axes if axes is not None else c.attr("axes"))
        rank = x.ndim + len(ax)
        return np.expand_dims(x, tuple(sorted(a % rank for a in ax)))

    const = c.consts[1] if len(c.consts) > 1 and c.consts[1] is not None else c.attr("axes")
    if const is None:
        return unsqueeze
    fixed = _ints(const)
    shapes: dict[tuple[int, ...], tuple[int, ...]] = {}

    def unsqueeze_constant(x, axes=None):
        # Constant axes: the output shape per input shape, once, then a reshape (a view; np.expand_dims's
        # Python costs ~3 us a call).
        shape = shapes.get(x.shape)
        if shape is None:
            if len(shapes) >= 8:
                shapes.clear()
            shape = shapes[x.shape] = unsqueeze(np.empty(x.shape, np.bool_), fixed).shape
        return x.reshape(shape)
    return unsqueeze_constant


@register("Squeeze")
def _squeeze(c):
    def squeeze(x, axes=None):
        ax = axes if axes is not None else c.attr("axes")
        if ax is None or not len(_ints(ax)):
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(a % x.ndim for a in _ints(ax)))

    constant = c.consts[1] if len(c.consts) > 1 else None
    if constant is None and len(c.consts) > 1:
        return squeeze  # axes computed at run time
    axes = _ints(constant if constant is not None else c.attr("axes", []))
    if not axes:
        return squeeze
    by_rank: dict[int, tuple[int, ...]] = {}

    def squeeze_constant(x, *_):  # axes known at load (an input constant or the opset-11 attribute)
        ax = by_rank.get(x.ndim)
        if ax is None:
            ax = by_rank[x.ndim] = tuple(a % x.ndim for a in axes)
        return np.squeeze(x, axis=ax)
    return squeeze_constant


@register("Concat", writes_out=True)
def _concat(c):
    axis = int(c.attr("axis"))
    return lambda *xs, out=None: np.concatenate(xs, axis=axis, out=out)


@register("Split")
def _split(c):
    axis = int(c.attr("axis", 0))
    n = c.n_outputs

    def indices(x, sizes):
        """The index of each part: basic slices, so the parts are views (much cheaper than np.split)."""
        sizes = _ints(sizes) if sizes is not None else c.attr("split")
        dim = x.shape[axis]
        if sizes is None:
            parts = int(c.attr("num_outputs", n))
            chunk = -(-dim // parts)
            sizes = [min(chunk, dim - i * chunk) for i in range(parts)]
        if sum(sizes) != dim or len(sizes) != n:
            raise _fail(c, f"split sizes {sizes} do not fit dimension {dim} into {n} outputs")
        lead = (slice(None),) * (axis % x.ndim)
        starts = np.cumsum([0, *sizes]).tolist()
        return [(*lead, slice(a, b)) for a, b in zip(starts, starts[1:])]

    if len(c.consts) > 1 and c.consts[1] is None:
        return lambda x, sizes=None: tuple(x[i] for i in indices(x, sizes))
    cached: dict[tuple[int, ...], list[tuple]] = {}  # constant sizes: the slices per input shape, once

    def split_constant(x, sizes=None):
        where = cached.get(x.shape)
        if where is None:
            if len(cached) >= 8:
                cached.clear()
            where = cached[x.shape] = indices(x, sizes)
        return tuple(x[i] for i in where)
    return split_constant


@register("Pad")
def _pad(c):
    """ONNX Pad (opset 11+: pads as an input; 18: axes): constant, reflect, edge and wrap, by ``np.pad``
    (``nn.Conv*`` with ``padding_mode`` reflect or circular exports it)."""
    mode = c.text("mode", "constant")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
    if mode not in modes:
        raise _fail(c, f"unknown pad mode {mode!r}")
    if c.opset < 11:
        raise _fail(c, "opset < 11 (pads as an attribute) is not supported")

    def pad(x, pads, constant_value=None, axes=None):
        pads = _ints(pads)
        axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in _ints(axes)]
        if len(pads) != 2 * len(axes):
            raise _fail(c, f"{len(pads)} pads for {len(axes)} axes")
        widths = [(0, 0)] * x.ndim
        for i, axis in enumerate(axes):
            widths[axis] = (pads[i], pads[i + len(axes)])
        if any(b < 0 or e < 0 for b, e in widths):  # negative pads crop
            crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(widths))
            x = x[crop]
            widths = [(max(b, 0), max(e, 0)) for b, e in widths]
        if mode == "constant":
            value = 0 if constant_value is None or constant_value.size == 0 else constant_value.reshape(-1)[0]
            return np.pad(x, widths, mode="constant", constant_values=value)
        return np.pad(x, widths, mode=modes[mode])
    return pad


@register("Slice")
def _slice(c):
    def index_of(ndim, starts, ends, axes=None, steps=None) -> tuple:
        starts, ends = _ints(starts), _ints(ends)
        axes = _ints(axes) if axes is not None else list(range(len(starts)))
        steps = _ints(steps) if steps is not None else [1] * len(starts)
        index = [slice(None)] * ndim
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            index[a % ndim] = slice(s, e, st)
        return tuple(index)

    fixed = c.consts[1:]
    if len(fixed) >= 2 and all(b is not None for b in fixed):
        # Every bound a constant (a decoding loop's slices): the index built once per rank.
        by_rank: dict[int, tuple] = {}

        def slice_constant(x, *_):
            index = by_rank.get(x.ndim)
            if index is None:
                index = by_rank[x.ndim] = index_of(x.ndim, *fixed)
            return x[index]
        return slice_constant

    def slice_(x, *bounds):
        return x[index_of(x.ndim, *bounds)]
    return slice_


@register("Gather", writes_out=True)
def _gather(c):
    axis = int(c.attr("axis", 0))

    def gather(x, indices, out=None):
        idx = np.asarray(indices)
        if idx.size and (idx.max() >= x.shape[axis] or idx.min() < -x.shape[axis]):
            raise EdgevlaError(f"{c.where}: index out of range for a dimension of size {x.shape[axis]} "
                               f"(indices span {idx.min()}..{idx.max()})")
        return np.take(x, idx, axis=axis, out=out)
    return gather


@register("GatherElements")
def _gather_elements(c):
    axis = int(c.attr("axis", 0))
    return lambda x, indices: np.take_along_axis(x, np.where(indices < 0, indices + x.shape[axis], indices), axis)


@register("GatherND")
def _gather_nd(c):
    """ONNX GatherND (opset 12+: ``batch_dims``): the last axis of ``indices`` addresses the leading axes of
    ``data`` after the batch ones (PyTorch exports a 1-d ``F.interpolate`` as GatherND on constant indices)."""
    b = int(c.attr("batch_dims", 0))

    def gather_nd(data, indices):
        k = indices.shape[-1]
        if b == 0 and k == 1 and data.ndim >= 1:  # rows picked by one index each (a decoded token's bin): a take
            try:
                return np.take(data, indices[..., 0], axis=0)
            except IndexError:
                raise _fail(c, "an index is out of range") from None
        if b + k > data.ndim or data.shape[:b] != indices.shape[:b]:
            raise _fail(c, f"indices {indices.shape} do not address data {data.shape} with batch_dims {b}")
        lead = np.asarray(data.shape[b:b + k], np.int64)
        idx = np.where(indices < 0, indices + lead, indices)
        if ((idx < 0) | (idx >= lead)).any():
            raise _fail(c, "an index is out of range")
        rank = indices.ndim - 1
        batch = [np.arange(n).reshape([n if j == i else 1 for j in range(rank)]) for i, n in enumerate(data.shape[:b])]
        return data[(*batch, *np.moveaxis(idx, -1, 0))]
    return gather_nd


@register("Shape")
def _shape(c):
    start, end = c.attr("start", 0), c.attr("end")
    return lambda x: np.array(x.shape[start:end], dtype=np.int64)


@register("Size")
def _size(c):
    return lambda x: np.array(x.size, dtype=np.int64)


@register("Expand")
def _expand(c):
    # The broadcast shape per (input shape, requested shape): np.broadcast_shapes builds arrays to find it,
    # 10-15 us a call inside a model's run (cold), most of the op's time.
    shapes: dict[tuple, tuple[int, ...]] = {}

    def expand(x, shape):
        key = (x.shape, tuple(_ints(shape)))
        out_shape = shapes.get(key)
        if out_shape is None:
            if len(shapes) >= 8:
                shapes.pop(next(iter(shapes)))
            out_shape = shapes[key] = np.broadcast_shapes(*key)
        return np.broadcast_to(x, out_shape)
    return expand


@register("Tile")
def _tile(c):
    return lambda x, repeats: np.tile(x, _ints(repeats))


@register("ConstantOfShape")
def _constant_of_shape(c):
    value = c.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return lambda shape: np.full(_ints(shape), fill[0], dtype=fill.dtype)


@register("Range")
def _range(c):
    return lambda start, limit, delta: np.arange(start, limit, delta, dtype=np.asarray(start).dtype)


@register("Trilu")
def _trilu(c):
    upper = bool(c.attr("upper", 1))

    def trilu(x, k=None):
        kk = int(np.asarray(k).reshape(-1)[0]) if k is not None else 0
        return np.triu(x, kk) if upper else np.tril(x, kk)
    return trilu


# --------------------------------------------------------------------------- quantization


def _along(param: np.ndarray, axis: int, ndim: int, block: int, x_shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point shaped to broadcast against x: per tensor, per axis, or blocked."""
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1 and block == 0:
        return param.reshape(())
    if block:
        return np.repeat(param, block, axis=axis)[tuple(slice(0, d) for d in x_shape)]
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


@register("QuantizeLinear", writes_out=True)
def _quantize_linear(c):
    block = int(c.attr("block_size", 0))
    out_type = c.attr("output_dtype", 0)
    scale_c, zero_c = (list(c.consts[1:3]) + [None, None])[:2]
    if (scale_c is not None and scale_c.size == 1 and len(c.consts) > 2 and zero_c is not None
            and zero_c.size == 1 and zero_c.dtype == np.int8 and not zero_c.any() and not out_type):
        return quantize_symmetric_int8(np.float32(scale_c.reshape(())))

    def quantize(x, scale, zero_point=None, out=None):
        dtype = zero_point.dtype if zero_point is not None else (
            _np_dtype(out_type, c) if out_type else np.dtype(np.uint8))
        if dtype.kind not in "iu" or dtype.itemsize != 1:
            raise _fail(c, f"quantizing to {dtype} is not implemented (int8 and uint8 are)")
        axis = int(c.attr("axis", 1)) % max(x.ndim, 1)
        q = np.divide(x, _along(scale, axis, x.ndim, block, x.shape), dtype=np.float32)
        np.rint(q, out=q)
        if zero_point is not None:
            q += _along(zero_point, axis, x.ndim, block, x.shape).astype(np.float32)
        info = np.iinfo(dtype)
        np.clip(q, info.min, info.max, out=q)
        if out is None:
            return q.astype(dtype)
        np.copyto(out, q, casting="unsafe")
        return out
    return quantize


_INT8_MIN, _INT8_MAX = np.float32(-128.0), np.float32(127.0)


def quantize_symmetric_int8(scale: np.float32) -> OpFn:
    """QuantizeLinear with one constant scale and a zero point of 0 (W8A8 activations).

    On float32 data, :func:`edgevla.native.quantize_s8` (one pass, the same
    codes; NaN gives -128); otherwise 4 NumPy passes:

    ``clip(rint(x / s))`` equals ``rint(clip(x / s))`` for integer bounds; the
    float work array is the runtime's shared one (:mod:`.scratch`), so the hot path does not allocate it.
    """
    usable = native.available() and bool(np.isfinite(scale)) and scale > 0
    native_quantize = native.raw("quantize_s8") if usable else None
    scale_value = float(scale)

    def quantize(x, scale_=None, zero_point=None, out=None):
        if native_quantize is not None and x.dtype == np.float32 and x.ndim and x.size:
            q = np.empty(x.shape, np.int8) if out is None else out
            x2 = x.reshape(-1, x.shape[-1])
            native_quantize(x2 if x2.flags.c_contiguous else np.ascontiguousarray(x2), scale_value,
                            q.reshape(-1, x.shape[-1]))
            return q
        (t,) = work_arrays(x.shape, 1)
        np.divide(x, scale, out=t)
        clip(t, _INT8_MIN, _INT8_MAX, out=t)
        np.rint(t, out=t)
        if out is None:
            return t.astype(np.int8)
        np.copyto(out, t, casting="unsafe")
        return out
    return quantize


@register("DequantizeLinear", writes_out=True)
def _dequantize_linear(c):
    block = int(c.attr("block_size", 0))

    def dequantize(x, scale, zero_point=None, out=None):
        axis = int(c.attr("axis", 1)) % max(x.ndim, 1)
        s = _along(scale, axis, x.ndim, block, x.shape)
        y = x.astype(np.float32)
        if zero_point is not None:
            y -= _along(zero_point, axis, x.ndim, block, x.shape).astype(np.float32)
        return np.multiply(y, s, out=out)
    return dequantize
