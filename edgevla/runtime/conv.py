"""Convolution, pooling and the image normalizations for the native runtime, in NumPy (NCHW, 1-3 spatial dims).

Policies with a convolutional image encoder (a ResNet stem, a patch
embedding written as ``nn.Conv2d``) or a 1-d convolutional U-Net (Diffusion
Policy's, with ``ConvTranspose`` up-sampling) export ``Conv`` (PyTorch folds an
eval-mode ``BatchNorm`` after a convolution into it), ``MaxPool``,
``AveragePool`` and the global pools; a ``BatchNormalization`` the exporter
could not fold (after a Linear, say) runs as its inference formula, and
``nn.GroupNorm`` (Diffusion Policy's ResNets use it in place of BatchNorm)
exports as ``InstanceNormalization`` between two reshapes.

A convolution is one batched matrix product: the padded input is viewed as
its sliding windows (no copy), gathered once into rows of ``C/group x
kernel`` values per output position (the only copy), and multiplied by the
weight, every group at once. A convolution of one group with a constant
weight (all but depthwise ones) is instead made a linear layer at load
(:class:`ConvLayer`, by :mod:`.fusion`): its rows then run on the kernel the
layer rules choose, our int8 GEMM at the default precision, and it is listed
in the plan like any other linear layer. Its windows are gathered by the
native ``gather_windows`` (C++, straight from the unpadded channels-last
input) where the build has it, else by NumPy from a padded copy; an int8
layer's GEMM gathers them itself (``windows=``: each thread the rows it
multiplies, a slab at a time, so the im2col matrix is never written whole).
A skip connection added to the output, a ReLU after it and the quantization
of the result for the next layer run in the GEMM's epilogue and output stage
(:meth:`~.linear.LinearLayer.set_output_stage`). Pooling reduces over the same window view.
A transposed convolution runs the other way round: the product first (each
input position's channels times the weight, a patch per position), then the
patches added into the output, one strided slice per kernel offset.
Semantics follow the ONNX specification (``auto_pad``, ``ceil_mode``,
``count_include_pad``, dilations, groups), checked against ONNX Runtime in
``tests/test_runtime_ops.py``. A Q/DQ convolution (edgevla's w8a8: int8
filters and a static int8 input) runs as a :class:`ConvLayer` on the
graph's int8 codes, its windows gathered in int8; pooling and the
normalizations are float32.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import native
from .linear import LinearLayer
from .ops import OpContext, _fail, _ints, register

#: A convolution with a constant weight, run by a linear layer over its input's windows (:class:`ConvLayer`).
CONV_OP = "edgevla.Conv"


def _geometry(c: OpContext, spatial: tuple[int, ...], kernel: list[int], ceil_mode: bool = False):
    """(strides, dilations, pads begin, pads end, output size) per spatial dimension, as the node says."""
    n = len(spatial)
    strides = _ints(c.attr("strides", [1] * n))
    dilations = _ints(c.attr("dilations", [1] * n))
    pads = _ints(c.attr("pads", [0] * (2 * n)))
    auto_pad = c.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if len(kernel) != n or len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise _fail(c, f"kernel_shape, strides, dilations and pads do not match {n} spatial dimensions")
    if min(strides + dilations + kernel) < 1 or min(pads) < 0:
        raise _fail(c, "strides, dilations and the kernel must be positive and pads non-negative")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    begin, end = pads[:n], pads[n:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(spatial, strides)]
        total = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extent, spatial)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
        end = [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    elif auto_pad != "NOTSET":
        raise _fail(c, f"unknown auto_pad {auto_pad!r}")
    out = []
    for i, b, e, x, s in zip(spatial, begin, end, extent, strides):
        room = i + b + e - x
        if room < 0:
            raise _fail(c, f"the window ({x}) is larger than the padded input ({i + b + e})")
        o = (math.ceil(room / s) if ceil_mode else room // s) + 1
        if ceil_mode and (o - 1) * s >= i + b:  # a last window starting in the end padding is dropped
            o -= 1
        out.append(o)
    return strides, dilations, begin, end, out


def _windows(x: np.ndarray, value: float, begin, end, out, kernel, strides, dilations) -> np.ndarray:
    """A read-only view (N, C, *out, *kernel) of ``x`` padded with ``value`` (and past its end as windows need)."""
    n = len(kernel)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out, strides, kernel, dilations)]
    after = [max(e, nd - (i + b)) for e, nd, i, b in zip(end, need, x.shape[2:], begin)]
    if any(begin) or any(after):
        x = np.pad(x, [(0, 0), (0, 0), *zip(begin, after)], constant_values=value)
    st = x.strides
    shape = (*x.shape[:2], *out, *kernel)
    view_strides = (*st[:2], *(st[2 + i] * strides[i] for i in range(n)), *(st[2 + i] * dilations[i] for i in range(n)))
    return as_strided(x, shape, view_strides, writeable=False)


@register("Conv")
def _conv(c):
    weight = c.consts[1] if len(c.consts) > 1 else None
    group = int(c.attr("group", 1))
    fixed = None  # the weight laid out for the product, once, when it is a constant

    def matrix(w: np.ndarray) -> np.ndarray:
        m = w.shape[0]
        if group < 1 or m % group:
            raise _fail(c, f"{m} output channels do not split into {group} groups")
        return np.ascontiguousarray(w.reshape(group, m // group, -1).transpose(0, 2, 1))  # (G, Cg*K, Mg)

    if weight is not None:
        fixed = matrix(np.asarray(weight, np.float32))

    def conv(x, w, bias=None):
        if x.ndim < 3 or x.ndim != w.ndim or x.ndim > 5:
            raise _fail(c, f"input of rank {x.ndim} and weight of rank {w.ndim}: expected N, C and 1-3 spatial dims")
        kernel = _ints(c.attr("kernel_shape", w.shape[2:]))
        if list(w.shape[2:]) != kernel:
            raise _fail(c, f"kernel_shape {kernel} is not the weight's {list(w.shape[2:])}")
        if x.shape[1] != w.shape[1] * group:
            raise _fail(c, f"{x.shape[1]} input channels, but the weight takes {w.shape[1]} per group x {group}")
        strides, dilations, begin, end, out = _geometry(c, x.shape[2:], kernel)
        view = _windows(x, 0.0, begin, end, out, kernel, strides, dilations)
        batch, channels = x.shape[:2]
        positions, per_group = math.prod(out), channels // group
        n = len(kernel)
        # (N, G, Cg, *out, *k) -> (N, G, *out, Cg, *k): one row of Cg*K inputs per output position.
        grouped = view.reshape(batch, group, per_group, *out, *kernel)
        order = (0, 1, *range(3, 3 + n), 2, *range(3 + n, 3 + 2 * n))
        rows = np.ascontiguousarray(grouped.transpose(order)).reshape(batch, group, positions, -1)
        y = np.matmul(rows, fixed if fixed is not None else matrix(w))  # (N, G, P, Mg)
        y = y.transpose(0, 1, 3, 2).reshape(batch, w.shape[0], *out)
        if bias is not None:
            y += bias.reshape(1, -1, *([1] * n))
        return y
    return conv


@register("ConvTranspose")
def _conv_transpose(c):
    """The gradient of a convolution (U-Net up-sampling): each input position's ``C_in`` values times the weight
    ``(C_in, C_out / group, *kernel)`` give a ``(C_out / group, *kernel)`` patch, added into the output at
    ``position x stride - pads``, one kernel offset at a time (a strided slice of the output per offset)."""
    return _ConvTranspose(c, channels_last=False)


class _ConvTranspose:
    """``ConvTranspose`` on ``(N, C, *spatial)``, or channels last on ``(N, *spatial, C)`` (:mod:`.layout`).

    Per input shape a plan is kept: the output geometry, and per kernel offset the strided slice of the output
    its patches add into. Per call: the input as rows of ``C_in`` values (the channels-last input is that
    already), one 2-d product per group into channels-last patches, the patches added in, the crop, the bias.
    """

    def __init__(self, c: OpContext, channels_last: bool):
        self.c, self.channels_last = c, channels_last
        self.group = int(c.attr("group", 1))
        auto_pad = c.attr("auto_pad", b"NOTSET")
        self.auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if self.auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise _fail(c, f"unknown auto_pad {self.auto_pad!r}")
        self._plans: dict[tuple, tuple] = {}
        self._weights: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        c, group = self.c, self.group
        n = x.ndim - 2
        if not 1 <= n <= 3 or w.ndim != x.ndim:
            raise _fail(c, f"input of rank {x.ndim} and weight of rank {w.ndim}: expected N, C and 1-3 spatial dims")
        channels = x.shape[-1] if self.channels_last else x.shape[1]
        if channels != w.shape[0] or w.shape[0] % group:
            raise _fail(c, f"{channels} input channels, a weight for {w.shape[0]} in {group} group(s)")
        spatial = x.shape[1:-1] if self.channels_last else x.shape[2:]
        plan = self._plans.get((spatial, w.shape))
        if plan is None:
            if len(self._plans) >= 4:
                self._plans.clear()
            plan = self._plans[(spatial, w.shape)] = self._plan(spatial, w.shape)
        full, crop, offsets = plan
        batch, out_per_group = x.shape[0], w.shape[1]
        per_group, positions = channels // group, math.prod(spatial)
        kernel = w.shape[2:]
        # Patches channels last, one 2-d product per group: (N x P, Cg_in) @ (Cg_in, K x Cg_out), the weight's
        # kernel offsets outermost so that each offset's patch is a (P, Cg_out) block of contiguous rows.
        matrices = self._matrices(w, per_group, out_per_group, math.prod(kernel))
        if self.channels_last:
            rows = x.reshape(batch * positions, channels)
        else:
            rows = x.reshape(batch, channels, positions).transpose(0, 2, 1).reshape(batch * positions, channels)
        y = np.zeros((batch, *full, group, out_per_group), np.result_type(x, w))  # offsets add whole rows
        for g in range(group):
            part = rows[:, g * per_group:(g + 1) * per_group] if group > 1 else rows
            patches = (part @ matrices[g]).reshape(batch, *spatial, *kernel, out_per_group)
            for into, offset in offsets:
                y[(*into, g)] += patches[offset]
        y = y.reshape(batch, *full, group * out_per_group)[crop]
        if bias is not None:
            y += bias
        return np.ascontiguousarray(y) if self.channels_last else np.ascontiguousarray(np.moveaxis(y, -1, 1))

    def _plan(self, spatial: tuple[int, ...], w_shape: tuple[int, ...]):
        """(full output size, the crop of it, per kernel offset (where in the output, which patch))."""
        c, n = self.c, len(spatial)
        kernel = _ints(c.attr("kernel_shape", w_shape[2:]))
        strides = _ints(c.attr("strides", [1] * n))
        dilations = _ints(c.attr("dilations", [1] * n))
        extra = _ints(c.attr("output_padding", [0] * n))
        if kernel != list(w_shape[2:]) or len(strides) != n or len(dilations) != n or len(extra) != n:
            raise _fail(c, "kernel_shape, strides, dilations and output_padding do not match the weight")
        full = [s * (i - 1) + (k - 1) * d + 1 + e for s, i, k, d, e in zip(strides, spatial, kernel, dilations, extra)]
        wanted = c.attr("output_shape", None)
        if wanted is not None or self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = _ints(wanted)[-n:] if wanted is not None else [i * s for i, s in zip(spatial, strides)]
            total = [f - t for f, t in zip(full, target)]
            if min(total) < 0:
                raise _fail(c, f"output_shape {target} is larger than the transposed convolution's {full}")
            upper = self.auto_pad == "SAME_UPPER"
            begin = [t // 2 if upper else t - t // 2 for t in total]
        elif self.auto_pad == "VALID":
            begin, target = [0] * n, full
        else:
            pads = _ints(c.attr("pads", [0] * (2 * n)))
            begin, target = pads[:n], [f - b - e for f, b, e in zip(full, pads[:n], pads[n:])]
        offsets = []
        for offset in np.ndindex(*kernel):
            # input position p lands at p * stride + offset * dilation
            into = (slice(None), *(slice(o * d, o * d + (i - 1) * s + 1, s)
                                   for o, d, i, s in zip(offset, dilations, spatial, strides)))
            offsets.append((into, (slice(None), *([slice(None)] * n), *offset)))
        crop = (slice(None), *(slice(b, b + t) for b, t in zip(begin, target)))
        return full, crop, offsets

    def _matrices(self, w: np.ndarray, per_group: int, out_per_group: int, taps: int) -> list[np.ndarray]:
        """Per group, the weight as (Cg_in, K x Cg_out), kernel offsets outer; kept for a constant weight."""
        hit = self._weights.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
        grouped = w.reshape(self.group, per_group, out_per_group, taps).transpose(0, 1, 3, 2)
        matrices = [np.ascontiguousarray(grouped[g].reshape(per_group, taps * out_per_group))
                    for g in range(self.group)]
        if len(self.c.consts) > 1 and self.c.consts[1] is w:
            self._weights.clear()
            self._weights[id(w)] = (w, matrices)
        return matrices


#: ``ConvTranspose`` reading and writing channels-last values (see :mod:`.layout`).
CONV_TRANSPOSE_LAST_OP = "edgevla.ConvTransposeChannelsLast"


@register(CONV_TRANSPOSE_LAST_OP)
def _conv_transpose_channels_last(c):
    return _ConvTranspose(c, channels_last=True)


class ConvLayer:
    """A ``Conv`` of one group with a constant weight, as a linear layer over the input's windows.

    The layer's ``(M, kernel x C)`` matrix is the weight ``(M, C, *kernel)`` with its channels
    last (:func:`conv_matrix`). Each call moves the input's channels last (one copy of the
    input, padded on the way), views the result as windows ``(N, *out, *kernel, C)`` and
    gathers them into one row per output position, contiguous runs of ``C`` (or ``kernel
    width x C``) values, then runs the layer's kernel on the rows (``int8-dynamic`` at the
    default precision: each row quantized, our threaded int8 GEMM; ``fp32``: NumPy's matmul;
    ``int8-static``: the input arrives as the graph's int8 codes, padded with code 0, the
    zero point), bias and ReLU in its epilogue, and moves the output's channels back. An
    ``int8-static`` layer with the native gather skips the rows: its GEMM's threads gather
    the windows they multiply (``windows=``, a ``native.WindowSpec`` kept per input shape).
    With a skip connection (a second input) and the layer's output stage, a call returns
    the float output, the int8 codes, or both (:meth:`_staged`).

    :mod:`.layout` sets ``input_last`` / ``output_last`` where the values around the layer are
    kept channels last, ``(N, *spatial, C)``: then the input needs no transpose (a 1x1
    convolution of stride 1 no copy at all) and the output stays as the GEMM wrote it.
    """

    def __init__(self, context: OpContext, kernel: list[int], layer: LinearLayer):
        self.context, self.kernel, self.layer = context, kernel, layer
        self.input_last = self.output_last = False
        self.keep_float = True  # with output codes, whether the float output is an output too (:mod:`.fusion`)
        self._plans: dict[tuple, _ConvPlan] = {}

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None):
        """The output (``(N, *spatial, M)`` when ``output_last``, else ONNX order); with a residual (the skip
        connection added to it, in the same layout) and the layer's output stage (:meth:`LinearLayer.set_output_stage`):
        the float output and the int8 codes, or the codes alone when not ``keep_float``."""
        key = (x.shape, x.dtype.str, self.input_last)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 4:  # a few input shapes (batch sizes) at a time, as the executor keeps
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = self._plan(x)
        if plan.gather is not None:  # the native gather: no padded copy, no strided view
            x = np.ascontiguousarray(x)
            if not self.input_last:
                native.to_channels_last(x, plan.last)
                x = plan.last
            if plan.windows is not None:  # the GEMM's threads gather the windows they multiply
                return self._staged(x, residual, plan)
            rows = x.reshape(plan.rows.shape) if plan.direct else plan.gather(x)
        else:
            if plan.padded is None:  # channels last already, no padding: the windows are a view of x itself
                st = x.strides
                view = as_strided(x, plan.view_shape, plan.view_strides(st), writeable=False)
            else:
                plan.padded[plan.inner] = x if self.input_last else x.transpose(plan.to_last)
                view = plan.view
            np.copyto(plan.rows_view, view)
            rows = plan.rows
        if residual is None and not self.layer.has_output_stage:
            return self._laid_out(self.layer(rows).reshape(plan.out_shape))
        return self._staged(rows, residual, plan)

    def _laid_out(self, y: np.ndarray) -> np.ndarray:
        """A channels-last result as the layer writes it: as it is, or in ONNX order."""
        return y if self.output_last else np.ascontiguousarray(np.moveaxis(y, -1, 1))

    def _staged(self, rows: np.ndarray, residual: np.ndarray | None, plan: "_ConvPlan"):
        """The product (of ``rows``, or of the windows of the channels-last input ``rows`` where the plan has
        a ``WindowSpec``), the residual and the output stage: in the kernel's epilogue when the residual has
        the output's shape, else (a residual that broadcasts) added in NumPy, in the output's layout, before
        the stage."""
        layer, out_shape = self.layer, plan.out_shape
        last = residual if residual is None or self.output_last else np.moveaxis(residual, 1, -1)
        if last is None or last.shape == out_shape:
            r2 = None if last is None else last.reshape(-1, layer.n)
            y, codes = layer.staged(rows, r2, self.keep_float or layer.codes_scale is None, plan.windows,
                                    plan.positions)
            y = None if y is None else self._laid_out(y.reshape(out_shape))
            codes = None if codes is None else self._laid_out(codes.reshape(out_shape))
        else:
            if plan.windows is not None:
                rows = plan.gather(rows)
            y = self._laid_out(layer(rows).reshape(out_shape)) + residual
            codes = layer.finish(y)
        if codes is None:
            return y
        return (y, codes) if self.keep_float else codes

    def _plan(self, x: np.ndarray) -> "_ConvPlan":
        """Geometry and buffers for one input shape: the zero-bordered channels-last copy of the input (its border
        is written once), the window view of it, and the rows the windows are gathered into."""
        c, n = self.context, len(self.kernel)
        channels, spatial = (x.shape[-1], x.shape[1:-1]) if self.input_last else (x.shape[1], x.shape[2:])
        if x.ndim != n + 2 or channels * math.prod(self.kernel) != self.layer.k:
            raise _fail(c, f"input of shape {x.shape} does not fit a {n}-d kernel {self.kernel} over "
                           f"{self.layer.k // math.prod(self.kernel)} channels")
        strides, dilations, begin, end, out = _geometry(c, spatial, self.kernel)
        view_shape = (x.shape[0], *out, *self.kernel, channels)

        def view_strides(st):  # st: the strides of a (N, *spatial, C) array
            return (st[0], *(st[1 + i] * strides[i] for i in range(n)),
                    *(st[1 + i] * dilations[i] for i in range(n)), st[-1])

        rows = np.empty((x.shape[0] * math.prod(out), self.layer.k), x.dtype)
        plan = _ConvPlan(view_shape, view_strides, rows, rows.reshape(view_shape), (x.shape[0], *out, self.layer.n),
                         (0, *range(2, 2 + n), 1))
        if _native_gather(x.dtype):
            if not self.input_last:
                plan.last = np.empty((x.shape[0], *spatial, channels), x.dtype)
            # A 1x1 convolution of stride 1 and no padding: its rows are its (channels-last) input itself.
            plan.direct = all(k == 1 for k in self.kernel) and all(s == 1 for s in strides) and not any(begin)
            plan.gather = functools.partial(_gather, rows=rows, kernel=list(self.kernel), strides=strides,
                                            dilations=dilations, pads_begin=begin, out=out)
            if x.dtype == np.int8 and self.layer.takes_windows and not plan.direct:
                plan.windows = native.window_spec(kernel=list(self.kernel), strides=strides, dilations=dilations,
                                                  pads_begin=begin, out=out)
            return plan
        if not (self.input_last and not any(begin) and not any(end)):
            plan.padded = np.zeros((x.shape[0], *(i + b + e for i, b, e in zip(spatial, begin, end)), channels), x.dtype)
            plan.inner = (slice(None), *(slice(b, b + i) for b, i in zip(begin, spatial)), slice(None))
            plan.view = as_strided(plan.padded, view_shape, view_strides(plan.padded.strides), writeable=False)
        return plan


class _ConvPlan:
    """What :class:`ConvLayer` keeps per input shape (see :meth:`ConvLayer._plan`)."""

    def __init__(self, view_shape, view_strides, rows, rows_view, out_shape, to_last):
        self.view_shape, self.view_strides, self.rows, self.rows_view = view_shape, view_strides, rows, rows_view
        self.out_shape, self.to_last = out_shape, to_last
        self.padded = self.inner = self.view = None
        self.gather = self.last = None  # the native gather (windows of a channels-last input) and its input buffer
        self.direct = False
        self.windows = None  # a native.WindowSpec: the int8 GEMM gathers the windows itself
        self.positions = rows.shape[0]  # the rows of the product: N x prod(out)


def _native_gather(dtype: np.dtype) -> bool:
    """Whether :func:`native.gather_windows` gathers windows of this dtype in this build."""
    return dtype in (np.int8, np.uint8, np.float32) and native.available() and hasattr(native, "gather_windows")


def _gather(x: np.ndarray, *, rows: np.ndarray, **geometry) -> np.ndarray:
    native.gather_windows(x, rows, **geometry)
    return rows


def conv_matrix(w: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A convolution weight ``(M, C, *kernel)`` (or its int8 codes) as the ``(M, kernel x C)`` matrix
    :class:`ConvLayer` multiplies."""
    return np.ascontiguousarray(np.moveaxis(w, 1, -1).reshape(w.shape[0], -1), dtype=dtype)


def _pool_attrs(c: OpContext, x: np.ndarray):
    if x.ndim < 3 or x.ndim > 5:
        raise _fail(c, f"input of rank {x.ndim}: expected N, C and 1-3 spatial dims")
    kernel = _ints(c.attr("kernel_shape", []))
    ceil_mode = bool(c.attr("ceil_mode", 0))
    return kernel, ceil_mode, _geometry(c, x.shape[2:], kernel, ceil_mode)


@register("MaxPool")
def _max_pool(c):
    if c.n_outputs > 1:
        raise _fail(c, "the Indices output is not supported")
    if int(c.attr("storage_order", 0)) != 0:
        raise _fail(c, "storage_order 1 (column-major indices) is not supported")

    def max_pool(x):
        kernel, _, (strides, dilations, begin, end, out) = _pool_attrs(c, x)
        return _reduce_windows(_windows(x, _lowest(x.dtype), begin, end, out, kernel, strides, dilations), np.maximum)
    return max_pool


def _lowest(dtype: np.dtype):
    """What a max pool pads with: -inf, or an integer type's least value (ONNX's MaxPool takes int8 and uint8)."""
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _reduce_windows(view: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` over the kernel axes of a window view, one kernel offset at a time (each a strided slice
    of the output's shape: NumPy reduces those at memory speed, the kernel axes of the view it does not)."""
    n = (view.ndim - 2) // 2
    offsets = np.ndindex(*view.shape[2 + n:])
    y = np.array(view[(..., *next(offsets))])
    for offset in offsets:
        ufunc(y, view[(..., *offset)], out=y)
    return y


@register("AveragePool")
def _average_pool(c):
    include_pad = bool(c.attr("count_include_pad", 0))

    def average_pool(x):
        kernel, ceil_mode, (strides, dilations, begin, end, out) = _pool_attrs(c, x)
        total = _reduce_windows(_windows(x, 0.0, begin, end, out, kernel, strides, dilations), np.add)
        # The divisor: the window's cells inside the input, or inside the node's own pads too; never
        # the cells ceil_mode reaches past them.
        ones = np.ones((1, 1, *x.shape[2:]), np.float32)
        if include_pad:
            ones = np.pad(ones, [(0, 0), (0, 0), *zip(begin, end)], constant_values=1.0)
            counted = _windows(ones, 0.0, [0] * len(kernel), [0] * len(kernel), out, kernel, strides, dilations)
        else:
            counted = _windows(ones, 0.0, begin, end, out, kernel, strides, dilations)
        return (total / _reduce_windows(counted, np.add)).astype(x.dtype)
    return average_pool


#: Pools that read and write channels-last values, by the ONNX op they implement (see :mod:`.layout`).
CHANNELS_LAST_POOLS = {"MaxPool": "edgevla.MaxPoolChannelsLast", "AveragePool": "edgevla.AveragePoolChannelsLast"}


@register(CHANNELS_LAST_POOLS["MaxPool"])
def _max_pool_channels_last(c):
    """``MaxPool`` over ``(N, *spatial, C)``: :func:`native.max_pool_channels_last` where the build has it
    (one pass, no padded copy), else one spatial axis at a time in NumPy (a maximum is separable): for
    each axis, each kernel offset along it is a strided slice of the previous pass's output, of the next
    pass's shape and layout, and the running maximum runs over those at memory speed. The padded input
    buffer (its border filled once) and the passes' outputs are kept per input shape."""
    if c.n_outputs > 1 or int(c.attr("storage_order", 0)) != 0:
        raise _fail(c, "the Indices output is not supported")
    plans: dict[tuple, object] = {}

    def plan_for(x):
        kernel, _, (strides, dilations, begin, end, out) = _pool_attrs(c, np.moveaxis(x, -1, 1))
        if len(plans) >= 4:
            plans.pop(next(iter(plans)))
        if _native_gather(x.dtype) and hasattr(native, "max_pool_channels_last"):
            geometry = dict(kernel=kernel, strides=strides, dilations=dilations, pads_begin=begin, out=out)
            shape = (x.shape[0], *out, x.shape[-1])

            def pool_native(x):
                y = np.empty(shape, x.dtype)
                native.max_pool_channels_last(np.ascontiguousarray(x), y, **geometry)
                return y
            plan = plans[(x.shape, x.dtype.str)] = pool_native
            return plan
        need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out, strides, kernel, dilations)]
        after = [max(e, nd - (i + b)) for e, nd, i, b in zip(end, need, x.shape[1:-1], begin)]
        padded = np.full((x.shape[0], *(i + b + a for i, b, a in zip(x.shape[1:-1], begin, after)), x.shape[-1]),
                         _lowest(x.dtype), x.dtype)
        inner = (slice(None), *(slice(b, b + i) for b, i in zip(begin, x.shape[1:-1])), slice(None))
        passes, shape = [], list(padded.shape)
        for axis, (k, d, m, s) in enumerate(zip(kernel, dilations, out, strides), start=1):
            shape[axis] = m
            slices = [(*(slice(None),) * axis, slice(o * d, o * d + (m - 1) * s + 1, s)) for o in range(k)]
            passes.append((slices, np.empty(shape, x.dtype)))

        def pool_numpy(x):
            padded[inner] = x
            source = padded
            for slices, y in passes:
                np.copyto(y, source[slices[0]])
                for window in slices[1:]:
                    np.maximum(y, source[window], out=y)
                source = y
            return source.copy()  # the executor may keep the result; the pass buffers are reused
        plan = plans[(x.shape, x.dtype.str)] = pool_numpy
        return plan

    def max_pool(x):
        return (plans.get((x.shape, x.dtype.str)) or plan_for(x))(x)
    return max_pool


@register(CHANNELS_LAST_POOLS["AveragePool"])
def _average_pool_channels_last(c):
    """``AveragePool`` over ``(N, *spatial, C)``: the channels-first pool on the transposed view, moved back."""
    pool = _average_pool(c)
    return lambda x: np.ascontiguousarray(np.moveaxis(pool(np.moveaxis(x, -1, 1)), 1, -1))


@register("GlobalAveragePool")
def _global_average_pool(c):
    return lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


@register("GlobalMaxPool")
def _global_max_pool(c):
    return lambda x: x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@register("BatchNormalization")
def _batch_norm(c):
    if int(c.attr("training_mode", 0)) or c.n_outputs > 1:
        raise _fail(c, "training mode (batch statistics) is not supported; export the policy in eval mode")
    eps = np.float32(c.attr("epsilon", 1e-5))

    def batch_norm(x, scale, bias, mean, var):
        shape = (1, -1, *([1] * (x.ndim - 2)))
        factor = (scale / np.sqrt(var + eps)).astype(x.dtype)
        return x * factor.reshape(shape) + (bias - mean * factor).astype(x.dtype).reshape(shape)
    return batch_norm


@register("InstanceNormalization")
def _instance_norm(c):
    """Per sample and channel over the spatial dims (``nn.GroupNorm`` exports as it, between reshapes)."""
    eps = np.float32(c.attr("epsilon", 1e-5))

    def instance_norm(x, scale, bias):
        axes = tuple(range(2, x.ndim))
        shape = (1, -1, *([1] * (x.ndim - 2)))
        centered = x - x.mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
        return (centered * inv * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)
    return instance_norm


__all__ = ["CHANNELS_LAST_POOLS", "CONV_OP", "CONV_TRANSPOSE_LAST_OP", "ConvLayer", "conv_matrix"]
