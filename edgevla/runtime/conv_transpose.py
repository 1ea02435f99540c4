"""A transposed convolution rewritten as a convolution and a reshape: the first graph rewrite of the native runtime.

``ConvTranspose`` (a U-Net's up-sampling) scatters: each input position's
channels times the weight give a patch, added into the output at
``position x stride``, one strided slice per kernel offset. Run that way it
is a float product and ``prod(kernel)`` read-modify-write passes over the
output. Gathered instead, output position ``o = q s + r`` (``r`` its phase,
``0 <= r < s``) is

    y[q s + r] = sum over j of x[q - j] W[:, :, j s + r]     (j s + r < k)

per spatial dimension: a convolution of stride 1 over ``J = ceil(k / s)``
input positions with one filter bank per phase, ``prod(s) x C_out`` output
channels (phase major), the weight taps flipped and the missing ones zero.
Its ``(N, *Q, prod(s) x C_out)`` output *is* the up-sampled value, phases
interleaved: ``(N, *Q, *s, C_out)`` with each phase axis moved next to its
position axis (no copy in 1-d), then cropped by the pads
(``edgevla.PhasesToSpace``). The convolution is then an ordinary
:class:`~.conv.ConvLayer`: its windows gathered natively, the product on the
kernel the layer rules choose (our int8 GEMM at the default precision), in
the plan like any other layer, channels last between the U-Net's
convolutions. Diffusion Policy's ``ConvTranspose1d(C, C, 4, 2, 1)`` becomes a
``Conv1d(C, 2C, 2)``: the same multiply-adds, no scatter.

A weight the graph dequantizes from int8 codes per output channel (axis 1
of its ``(C_in, C_out, *kernel)``: a w8a8 bundle's) keeps its codes: the
filter banks are the codes rearranged, each phase's filters with their
channel's scale, so the convolution runs on the exporter's integers (and on
the static int8 input its ``QuantizeLinear → DequantizeLinear`` gives), not
on requantized floats.

Rewritten: one group, dilations 1, a constant float weight (and bias),
explicit pads or ``VALID``. Any other ``ConvTranspose`` (grouped, dilated,
``SAME_*``, ``output_shape``, a computed weight) stays the scattering op
(:mod:`.conv`), checked against ONNX Runtime like this one
(``tests/test_runtime_conv_transpose.py``).
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph, Node, QuantizedConstant, layer_name
from .ops import _fail, _ints, register

PHASES_TO_SPACE_OP = "edgevla.PhasesToSpace"
PHASES_TO_SPACE_LAST_OP = "edgevla.PhasesToSpaceChannelsLast"


def rewrite_conv_transposes(graph: Graph) -> int:
    """Each ``ConvTranspose`` the module docstring lists as a ``Conv`` and a :data:`PHASES_TO_SPACE_OP` node, in
    place; returns how many."""
    rewritten = 0
    nodes: list[Node] = []
    taken: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # phase weight names given, and what they hold
    for node in graph.nodes:
        parts = _as_conv(graph, node) if node.op_type == "ConvTranspose" else None
        if parts is None:
            nodes.append(node)
            continue
        weight, bias, codes, conv_attrs, phase_attrs = parts
        # named after the weight's layer (``up.weight``, ``up.weight_DequantizeLinear``: the layer ``up.phases`` in
        # the plan); a weight several nodes read (a U-Net run twice) is rewritten the same way for each, unless
        # their attributes differ
        stem = f"{layer_name(node.inputs[1])}.phases"
        if stem in taken and not _same(taken[stem], (weight, bias)):
            stem = f"{stem}.{node.name}"
        taken[stem] = (weight, bias)
        w_name, phases = f"{stem}.weight", f"{node.outputs[0]}::phases"
        graph.constants[w_name] = weight
        if codes is not None:
            graph.quantized[w_name] = codes
        inputs = [node.inputs[0], w_name]
        if bias is not None:
            graph.constants[f"{stem}.bias"] = bias
            inputs.append(f"{stem}.bias")
        nodes.append(Node(node.name, "Conv", tuple(inputs), (phases,), conv_attrs))
        nodes.append(Node(f"{node.name}::to_space", PHASES_TO_SPACE_OP, (phases,), node.outputs, phase_attrs))
        rewritten += 1
    graph.nodes = nodes
    return rewritten


def _same(a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None]) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                             and np.array_equal(x, y)) for x, y in zip(a, b))


def _as_conv(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray | None, QuantizedConstant | None, dict,
                                                dict] | None:
    """(the phase weight, the phase bias, its int8 codes where the weight has them, the Conv's attributes, the
    PhasesToSpace's), or None where not rewritten."""
    w = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    b_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    b = graph.constants.get(b_name) if b_name else None
    if w is None or w.dtype != np.float32 or not 3 <= w.ndim <= 5 or (b_name and b is None):
        return None
    n, a = w.ndim - 2, node.attrs
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    kernel = list(w.shape[2:])
    strides = _ints(a.get("strides", [1] * n))
    extra = _ints(a.get("output_padding", [0] * n))
    pads = [0] * (2 * n) if auto_pad == "VALID" else _ints(a.get("pads", [0] * (2 * n)))
    if (int(a.get("group", 1)) != 1 or any(d != 1 for d in _ints(a.get("dilations", [1] * n)))
            or auto_pad not in ("NOTSET", "VALID") or "output_shape" in a
            or _ints(a.get("kernel_shape", kernel)) != kernel or len(strides) != n or len(extra) != n
            or len(pads) != 2 * n or min(strides) < 1 or min(pads + extra) < 0
            or (b is not None and b.shape != (w.shape[1],))):
        return None
    taps = [math.ceil(k / s) for k, s in zip(kernel, strides)]
    # Per dimension, the phase blocks q cover positions [0, Q s) with Q = L - 1 + ceil((k + e) / s): the last
    # ceil((k + e) / s) s - k - e of them lie past the transposed convolution's full output, s (L - 1) + k + e.
    blocks = [math.ceil((k + e) / s) for k, e, s in zip(kernel, extra, strides)]
    phases = math.prod(strides)
    weight = _phase_banks(w, strides, taps)
    codes = _channel_codes(graph.quantized.get(node.inputs[1]), w.shape[1])
    if codes is not None:
        codes = QuantizedConstant(_phase_banks(codes[0], strides, taps), 8, np.tile(codes[1], phases), None, 0, 0)
    conv_attrs = {"kernel_shape": taps, "strides": [1] * n, "dilations": [1] * n, "group": 1,
                  "pads": [t - 1 for t in taps] + [q - 1 for q in blocks]}
    past = [q * s - k - e for q, s, k, e in zip(blocks, strides, kernel, extra)]
    phase_attrs = {"strides": strides, "begin": pads[:n], "end": [p + e for p, e in zip(past, pads[n:])]}
    bias = None if b is None else np.tile(b.astype(np.float32), phases)
    return weight, bias, codes, conv_attrs, phase_attrs


def _phase_banks(w: np.ndarray, strides: list[int], taps: list[int]) -> np.ndarray:
    """The ``(prod(s) x C_out, C_in, *taps)`` filter banks of a ``(C_in, C_out, *kernel)`` transposed
    convolution weight (float or int8 codes), phase major, taps flipped, missing ones zero."""
    c_in, c_out, kernel = w.shape[0], w.shape[1], w.shape[2:]
    banks = np.zeros((math.prod(strides), c_out, c_in, *taps), w.dtype)
    for p, phase in enumerate(np.ndindex(*strides)):
        for tap in np.ndindex(*taps):
            # window tap i reads x[q - (J - 1 - i)]: kernel offset (J - 1 - i) s + r
            offset = tuple((t - 1 - i) * s + r for t, i, s, r in zip(taps, tap, strides, phase))
            if all(o < k for o, k in zip(offset, kernel)):
                banks[(p, slice(None), slice(None), *tap)] = w[(slice(None), slice(None), *offset)].T
    return banks.reshape(-1, c_in, *taps)


def _channel_codes(quantized: QuantizedConstant | None, c_out: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 codes, one scale per output channel) of a transposed convolution weight dequantized per output
    channel (axis 1) or per tensor, zero point 0; None otherwise."""
    if quantized is None or quantized.bits != 8 or not quantized.symmetric() or quantized.block_size:
        return None
    scale = np.asarray(quantized.scale, np.float32).reshape(-1)
    if scale.size == 1:
        return quantized.codes, np.full(c_out, scale[0], np.float32)
    if quantized.axis != 1 or scale.size != c_out:
        return None
    return quantized.codes, np.ascontiguousarray(scale)


@register(PHASES_TO_SPACE_OP)
def _phases_to_space(c):
    return _PhasesToSpace(c, channels_last=False)


@register(PHASES_TO_SPACE_LAST_OP)
def _phases_to_space_channels_last(c):
    return _PhasesToSpace(c, channels_last=True)


class _PhasesToSpace:
    """The phase-major channels of the rewritten convolution's output, ``prod(strides) x C``, interleaved into
    the positions (each phase axis after its position axis) and cropped: ``begin`` positions off the start and
    ``end`` off the end of each spatial dimension. ONNX order in and out, or channels last (:mod:`.layout`)."""

    def __init__(self, c, channels_last: bool):
        self.c, self.channels_last = c, channels_last
        self.strides, self.begin, self.end = (_ints(c.attr(k)) for k in ("strides", "begin", "end"))
        self._plans: dict[tuple, tuple] = {}

    def __call__(self, y: np.ndarray) -> np.ndarray:
        plan = self._plans.get(y.shape)
        if plan is None:
            if len(self._plans) >= 4:
                self._plans.clear()
            plan = self._plans[y.shape] = self._plan(y.shape)
        split, order, joined, crop = plan
        if order is None:  # 1-d channels last: the phases already follow their positions in memory
            return y.reshape(joined)[crop]
        return y.reshape(split).transpose(order).reshape(joined)[crop]

    def _plan(self, shape: tuple[int, ...]):
        """(the shape with the phases split out, the axis order that interleaves them (None: no move), the
        interleaved shape, the crop)."""
        n, s = len(self.strides), self.strides
        phases = math.prod(s)
        channels = shape[-1] if self.channels_last else shape[1]
        if len(shape) != n + 2 or channels % phases:
            raise _fail(self.c, f"a value of shape {shape} does not hold {phases} phases of {n}-d positions")
        batch, c = shape[0], channels // phases
        blocks = shape[1:-1] if self.channels_last else shape[2:]
        full = [q * k for q, k in zip(blocks, s)]
        if any(b + e >= f for b, e, f in zip(self.begin, self.end, full)):
            raise _fail(self.c, f"pads crop the whole {full} output")
        window = tuple(slice(b, f - e) for b, e, f in zip(self.begin, self.end, full))
        if self.channels_last:  # (N, *Q, *s, C) -> (N, Q1, s1, Q2, s2, ..., C)
            split = (batch, *blocks, *s, c)
            order = None if n == 1 else (0, *(a for i in range(n) for a in (1 + i, 1 + n + i)), 2 * n + 1)
            return split, order, (batch, *full, c), (slice(None), *window, slice(None))
        split = (batch, *s, c, *blocks)  # (N, *s, C, *Q) -> (N, C, Q1, s1, Q2, s2, ...)
        order = (0, n + 1, *(a for i in range(n) for a in (n + 2 + i, 1 + i)))
        return split, order, (batch, c, *full), (slice(None), slice(None), *window)


__all__ = ["PHASES_TO_SPACE_LAST_OP", "PHASES_TO_SPACE_OP", "rewrite_conv_transposes"]
