"""Channels-last activations between convolutions: the last graph rewrite of the native runtime.

A :class:`~.conv.ConvLayer` works channels last — it gathers windows of
``(*spatial, C)`` rows and its GEMM writes ``(*spatial, M)`` — so, with every
value kept in ONNX's ``(N, C, *spatial)`` order, each convolution moved its
input's channels last and its output's back: two transposing copies per
layer, a third of a small ResNet's convolution time. This pass keeps the
values between convolutions channels last instead:

* a convolution writes ``(N, *spatial, M)`` (its int8 codes too, where it
  writes them), unless an output is a graph output, and reads either layout
  (a skip connection it adds follows its output's);
* element-wise ops whose every tensor input is channels last, or a scalar
  constant (``Relu``, ``Add`` of a skip connection, a SiLU's ``edgevla.Gated``
  step, a ``QuantizeLinear`` with one scale and zero point), keep it: broadcasting
  between two same-rank tensors is the same under the same permutation;
* ``MaxPool`` and ``AveragePool`` run on the channels-last window view
  (:data:`~.conv.CHANNELS_LAST_POOLS`), a ``ConvTranspose`` (a U-Net's
  up-sampling) rewritten as a convolution interleaves its phases channels
  last (:mod:`.conv_transpose`), one that is not takes its rows and writes
  its patches channels last, a
  ``Concat`` of channels joins along the last axis, and ``edgevla.GroupNorm``
  reduces over a channels-last value as it lies;
* a mean over every spatial axis (``GlobalAveragePool``, ``ReduceMean`` of
  constant axes: a conv encoder's last pool) reduces the channels-last value
  as it lies and writes ONNX order (``edgevla.SpatialMeanChannelsLast``);
* an element-wise binary op with one operand channels last and the other
  not (FiLM's per-channel scale and shift, ``(N, C, 1)``) keeps it: the other
  operand is laid out to broadcast against it (``edgevla.BroadcastChannelsLast``,
  a view);
* any other reader (``Reshape``, another ``ReduceMean``, ``GroupNorm``'s
  ``InstanceNormalization`` when it is not a fused GroupNorm, a graph output) gets the value back in ONNX
  order from one ``edgevla.ToChannelsFirst`` node, shared by its readers —
  the copy the convolution used to make itself.

No value changes: only where its elements sit in memory (checked against the
channels-first run in ``tests/test_runtime_layout.py``).
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgevlaError
from .conv import CHANNELS_LAST_POOLS, CONV_OP, CONV_TRANSPOSE_LAST_OP
from .conv_transpose import PHASES_TO_SPACE_LAST_OP, PHASES_TO_SPACE_OP
from .graph import Graph, Node
from .gated import GATED_OP
from .group_norm import GROUP_NORM_OP
from .ops import register

TO_CHANNELS_FIRST_OP = "edgevla.ToChannelsFirst"
SPATIAL_MEAN_OP = "edgevla.SpatialMeanChannelsLast"
BROADCAST_LAST_OP = "edgevla.BroadcastChannelsLast"
_UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Identity", "Neg", "Abs", "Sqrt", "Exp", "Softplus",
                    "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Mish"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})
_PER_TENSOR = frozenset({"QuantizeLinear", "DequantizeLinear", "Clip"})  # element-wise when the extra inputs are scalars


@register(TO_CHANNELS_FIRST_OP)
def _to_channels_first(c):
    return lambda x: np.ascontiguousarray(np.moveaxis(x, -1, 1))


@register(BROADCAST_LAST_OP)
def _broadcast_channels_last(c):
    """The other operand of an element-wise op on a channels-last value, laid out to broadcast against it as it
    did in ONNX order: padded with leading 1s to the value's rank (ONNX aligns trailing axes), then its axis 1
    moved last. A view: for a per-channel operand (FiLM's ``(N, C, 1)`` scale and shift) nothing moves."""
    orders: dict[int, tuple[int, ...]] = {}  # per rank, axis 1 moved last (np.moveaxis costs ~3 us a call)

    def to_last(v, like):
        rank = like.ndim
        if v.ndim > rank:
            raise EdgevlaError(f"{c.where}: an operand of rank {v.ndim} broadcast against a channels-last value of "
                               f"rank {rank}; the native runtime keeps element-wise ops rank-preserving")
        if v.ndim < rank:
            v = v.reshape((1,) * (rank - v.ndim) + v.shape)
        order = orders.get(rank)
        if order is None:
            order = orders[rank] = (0, *range(2, rank), 1)
        return v.transpose(order) if rank > 2 else v
    return to_last


@register(SPATIAL_MEAN_OP)
def _spatial_mean(c):
    """The mean of ``(N, *spatial, C)`` over the ONNX axes ``axes`` (every spatial one: ``(N, C, 1, ...)``, or
    ``(N, C)`` without keepdims), in ONNX order; other axes (a rank the rewrite could not know) take the
    channels-first value and NumPy's mean."""
    axes, keepdims = c.attr("axes"), bool(c.attr("keepdims", 1))

    def mean(x):
        rank = x.ndim
        onnx_axes = sorted({a % rank for a in axes}) if axes is not None else list(range(2, rank))
        if onnx_axes != list(range(2, rank)):
            first = np.moveaxis(x, -1, 1)
            return np.mean(first, axis=tuple(onnx_axes), keepdims=keepdims).astype(x.dtype, copy=False)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        # np.add.reduce, not np.mean: one C call (np.mean's Python wrapper, cold after the convolutions'
        # GEMMs, cost 3x the arithmetic).
        y = np.divide(np.add.reduce(flat, axis=1), x.dtype.type(flat.shape[1]))
        return y.reshape(*y.shape, *([1] * (rank - 2))) if keepdims else y
    return mean


def keep_channels_last(graph: Graph) -> int:
    """Rewrite ``graph`` in place (see the module docstring); returns how many values it keeps channels last."""
    outputs = set(graph.outputs)
    last: set[str] = set()
    first_copy: dict[str, str] = {}
    broadcast_copy: dict[tuple[str, str], str] = {}
    nodes: list[Node] = []

    def channels_first(value: str) -> str:
        if value not in last:
            return value
        if value not in first_copy:
            name = f"{value}::channels_first"
            nodes.append(Node(name, TO_CHANNELS_FIRST_OP, (value,), (name,)))
            first_copy[value] = name
        return first_copy[value]

    def broadcast_last(value: str, like: str) -> str:
        key = (value, like)
        if key not in broadcast_copy:
            name = f"{value}::channels_last_like::{like}"
            nodes.append(Node(name, BROADCAST_LAST_OP, (value, like), (name,)))
            broadcast_copy[key] = name
        return broadcast_copy[key]

    for node in graph.nodes:
        out = node.outputs[0] if len(node.outputs) == 1 else None
        keeps = out is not None and out not in outputs and _keeps_layout(graph, node, last)
        if node.op_type == CONV_OP:
            conv = node.attrs["conv"]
            skip = node.inputs[1] if len(node.inputs) > 1 else None  # added to the output: in its layout
            conv.input_last = node.inputs[0] in last
            conv.output_last = not outputs.intersection(node.outputs)
            if conv.output_last:
                last.update(node.outputs)
                if skip is not None and skip not in last:
                    node.inputs = (node.inputs[0], broadcast_last(skip, node.inputs[0]))
            elif skip is not None:
                node.inputs = (node.inputs[0], channels_first(skip))
        elif node.op_type == GROUP_NORM_OP and node.inputs[0] in last and not outputs.intersection(node.outputs):
            node.attrs["norm"].channels_last = True
            last.update(node.outputs)
            # the values its stage multiplies and adds (FiLM's scale and shift, a skip), in its layout
            node.inputs = (node.inputs[0], *(i if i in last else broadcast_last(i, node.inputs[0])
                                             for i in node.inputs[1:]))
        elif node.op_type in CHANNELS_LAST_POOLS and node.inputs[0] in last and out not in outputs:
            node.op_type = CHANNELS_LAST_POOLS[node.op_type]
            last.add(out)
        elif node.op_type == PHASES_TO_SPACE_OP and node.inputs[0] in last and out not in outputs:
            node.op_type = PHASES_TO_SPACE_LAST_OP  # a rewritten ConvTranspose's phases, interleaved as they lie
            last.add(out)
        elif (node.op_type == "ConvTranspose" and node.inputs[0] in last and out not in outputs
              and all(i in graph.constants for i in node.inputs[1:] if i)):
            node.op_type = CONV_TRANSPOSE_LAST_OP
            last.add(out)
        elif (node.op_type == "Concat" and int(node.attrs.get("axis", 0)) == 1 and out not in outputs
              and all(i in last for i in node.inputs if i)):  # the channels: the last axis, channels last
            node.attrs = {**node.attrs, "axis": -1}
            last.add(out)
        elif (mean := _spatial_mean_attrs(graph, node, last)) is not None:  # writes ONNX order
            node.op_type, node.inputs, node.attrs = SPATIAL_MEAN_OP, node.inputs[:1], mean
        elif keeps:
            last.add(out)
        elif (like := _mixed_binary(graph, node, last, outputs)) is not None:
            # one operand channels last, the others not: those follow it (views), not it them (a copy)
            node.inputs = tuple(i if i in last or _is_scalar(graph, i) else broadcast_last(i, like)
                                for i in node.inputs)
            last.add(out)
        else:
            node.inputs = tuple(channels_first(i) for i in node.inputs)
        nodes.append(node)
    graph.nodes = nodes
    return len(last)


def _spatial_mean_attrs(graph: Graph, node: Node, last: set[str]) -> dict | None:
    """The attributes of :data:`SPATIAL_MEAN_OP` for a ``GlobalAveragePool``, or a ``ReduceMean`` of constant
    non-empty axes, of a channels-last value; None for any other node."""
    if not node.inputs or node.inputs[0] not in last or len(node.outputs) != 1:
        return None
    if node.op_type == "GlobalAveragePool":
        return {"axes": None, "keepdims": 1}
    if node.op_type != "ReduceMean":
        return None
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1]:
        constant = graph.constants.get(node.inputs[1])
        axes = None if constant is None else constant.reshape(-1).tolist()
    if not axes:  # none given (every axis), or not constant
        return None
    return {"axes": [int(a) for a in axes], "keepdims": int(node.attrs.get("keepdims", 1))}


def _is_scalar(graph: Graph, value: str) -> bool:
    return value in graph.constants and graph.constants[value].size == 1


def _mixed_binary(graph: Graph, node: Node, last: set[str], outputs: set[str]) -> str | None:
    """For an element-wise binary op (``Mul``, ``Add``, ...) whose first operand is channels last and whose
    other is not (a FiLM scale or shift from a linear layer, a per-channel constant), that first operand."""
    inputs = [i for i in node.inputs if i]
    if (node.op_type not in _BINARY or len(inputs) != 2 or len(node.outputs) != 1 or node.outputs[0] in outputs
            or not any(i in last for i in inputs)):
        return None
    return next(i for i in inputs if i in last)


def _keeps_layout(graph: Graph, node: Node, last: set[str]) -> bool:
    """Whether ``node`` is element-wise over channels-last tensor inputs (the others scalar constants)."""
    inputs = [i for i in node.inputs if i]
    if not inputs or inputs[0] not in last:
        return False
    scalar = [i in graph.constants and graph.constants[i].size == 1 for i in inputs]
    if node.op_type in _UNARY:
        return len(inputs) == 1
    if node.op_type == GATED_OP:  # act(gate), times a value of the same shape: element-wise in one layout
        return all(i in last for i in inputs)
    if node.op_type in _PER_TENSOR:
        return all(scalar[1:])
    if node.op_type in _BINARY:
        return all(i in last or s for i, s in zip(inputs, scalar))
    return False


__all__ = ["BROADCAST_LAST_OP", "SPATIAL_MEAN_OP", "TO_CHANNELS_FIRST_OP", "keep_channels_last"]
