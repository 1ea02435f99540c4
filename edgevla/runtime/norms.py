"""RMSNorm as one step, and ``edgevla.LayerNormS8``: LayerNorm or RMSNorm and the static int8 QuantizeLinear
after it, as one native kernel.

The exporter spells ``nn.RMSNorm`` (and a Llama-style ``x * rsqrt(mean(x^2) + eps) * w``) as seven nodes:
``Pow(x, 2)`` (or ``Mul(x, x)``), ``ReduceMean`` over the last axis, ``Add(eps)``, ``Sqrt``, ``Reciprocal``
and ``Mul(x, .)`` (or ``Div(x, sqrt)``), then ``Mul`` by the 1-D weight. :func:`fuse_rms_norm` makes each such
chain whose intermediates nothing else reads one ``RMSNormalization`` node (opset 23's op), which runs on the
LayerNorm kernel with the mean taken as 0: one pass over the rows instead of seven NumPy calls.

A W8A8 graph quantizes each LayerNorm's output for the linear layers that read
it (q/k/v, fc1): ``LayerNormalization -> QuantizeLinear(x, s, 0)``. The fused
step runs :func:`edgevla.native.layer_norm_s8` instead: one pass over the
rows, int8 codes out, no float32 LayerNorm output in memory. Its arithmetic
(csrc/layer_norm_s8.h) differs from NumPy's LayerNorm in summation order
only, so a code can differ by one where ``y / s`` lies within float32 noise
of a rounding tie, as between any two runtimes.
"""

from __future__ import annotations

import numpy as np

from .. import native
from .graph import Graph, GraphView, Node

LAYER_NORM_S8_OP = "edgevla.LayerNormS8"


class LayerNormS8:
    """``QuantizeLinear(LayerNormalization(x, gamma, beta), scale, 0)`` over the last axis of x (``rms``:
    ``RMSNormalization(x, gamma)``)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray | None, epsilon: float, scale: float, rms: bool = False):
        self.gamma = np.ascontiguousarray(gamma, np.float32).reshape(-1)
        self.beta = None if beta is None else np.ascontiguousarray(beta, np.float32).reshape(-1)
        self.epsilon, self.scale, self.rms = float(epsilon), float(scale), rms
        self.k = self.gamma.size
        self._kernel = native.raw("layer_norm_s8") if self.available() else None

    @staticmethod
    def available() -> bool:
        return native.available() and hasattr(native, "layer_norm_s8")

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = np.empty(x.shape, np.int8) if out is None else out
        x2 = x.reshape(-1, self.k)
        if not x2.flags.c_contiguous or x2.dtype != np.float32:
            x2 = np.ascontiguousarray(x2, np.float32)
        self._kernel(x2, self.gamma, self.beta, self.epsilon, self.scale, q.reshape(-1, self.k), self.rms)
        return q


def _per_tensor_int8_scale(graph: Graph, quantize: Node) -> float | None:
    """The scale of a ``QuantizeLinear`` to int8 with one constant scale and a zero point of 0, else None."""
    if quantize.op_type != "QuantizeLinear" or len(quantize.inputs) < 3 or quantize.attrs.get("output_dtype", 0):
        return None
    if quantize.attrs.get("block_size", 0):
        return None
    scale, zero = graph.constants.get(quantize.inputs[1]), graph.constants.get(quantize.inputs[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    if zero.dtype != np.int8 or zero.any():
        return None
    value = float(np.float32(scale.reshape(())))
    return value if np.isfinite(value) and value > 0 else None


def fuse_layer_norm_quantize(graph: Graph) -> int:
    """Each ``LayerNormalization`` or ``RMSNormalization`` (last axis, 1-D constant gamma/beta) whose only
    reader is a static int8 ``QuantizeLinear`` becomes one :data:`LAYER_NORM_S8_OP` node; returns how many."""
    if not LayerNormS8.available():
        return 0
    readers, outputs = graph.consumers(), set(graph.outputs)
    fused = 0
    for norm in [n for n in graph.nodes if n.op_type in ("LayerNormalization", "RMSNormalization")]:
        if len(norm.outputs) != 1 or int(norm.attrs.get("axis", -1)) != -1 or int(norm.attrs.get("stash_type", 1)) != 1:
            continue
        y = norm.outputs[0]
        if y in outputs or len(readers.get(y, [])) != 1:
            continue
        quantize = readers[y][0][0]
        scale = _per_tensor_int8_scale(graph, quantize)
        gamma = graph.constants.get(norm.inputs[1]) if len(norm.inputs) > 1 else None
        beta = graph.constants.get(norm.inputs[2]) if len(norm.inputs) > 2 and norm.inputs[2] else None
        has_beta = len(norm.inputs) > 2 and bool(norm.inputs[2])
        if scale is None or quantize.inputs[0] != y or gamma is None or gamma.ndim != 1 or (has_beta and beta is None):
            continue
        if gamma.dtype != np.float32 or (beta is not None and (beta.dtype != np.float32 or beta.shape != gamma.shape)):
            continue
        rms = norm.op_type == "RMSNormalization"
        if rms and (has_beta or gamma.size < 2):  # a one-value scale spreads over a width only the run knows
            continue
        layer_norm = LayerNormS8(gamma, beta, float(norm.attrs.get("epsilon", 1e-5)), scale, rms)
        index = graph.nodes.index(quantize)
        graph.nodes[index] = Node(norm.name, LAYER_NORM_S8_OP, (norm.inputs[0],), (quantize.outputs[0],),
                                  {"norm": layer_norm})
        graph.nodes.remove(norm)
        fused += 1
    return fused


def fuse_rms_norm(graph: Graph) -> int:
    """Each RMSNorm spelled out over the last axis (module docstring) becomes one ``RMSNormalization`` node;
    returns how many."""
    fused = 0
    for reduce in [n for n in graph.nodes if n.op_type == "ReduceMean"]:
        match = _match_rms_norm(GraphView(graph), reduce)
        if match is None:
            continue
        x, epsilon, scale, chain = match
        if scale is None:
            scale = f"{reduce.name}.rms_scale"
            graph.constants[scale] = np.ones(1, np.float32)
        norm = Node(chain[-1].name, "RMSNormalization", (x, scale), (chain[-1].outputs[0],),
                    {"axis": -1, "epsilon": epsilon})
        index = graph.nodes.index(chain[-1])
        graph.nodes[index] = norm
        for node in chain[:-1]:
            graph.nodes.remove(node)
        fused += 1
    return fused


def _match_rms_norm(view: GraphView, reduce: Node) -> tuple[str, float, str | None, list[Node]] | None:
    """``(x, epsilon, the 1-D weight's name or None, the chain's nodes in order)`` of the RMSNorm whose mean
    of squares is ``reduce``, else None."""
    graph, producer, only_reader, scalar = view.graph, view.producer, view.only_reader, view.scalar

    axes = graph.constants.get(reduce.inputs[1]) if len(reduce.inputs) > 1 and reduce.inputs[1] else None
    axes = np.ravel(reduce.attrs.get("axes", []) if axes is None else axes).tolist()
    rank = graph.ranks.get(reduce.inputs[0])
    if len(axes) != 1 or axes[0] not in (-1, None if rank is None else rank - 1):  # the last axis only
        return None
    square = producer.get(reduce.inputs[0])
    if square is None or not reduce.attrs.get("keepdims", 1) or only_reader(reduce.inputs[0]) is not reduce:
        return None
    if square.op_type == "Pow" and scalar(square.inputs[1]) == 2.0:
        x = square.inputs[0]
    elif square.op_type == "Mul" and square.inputs[0] == square.inputs[1]:
        x = square.inputs[0]
    else:
        return None
    add = only_reader(reduce.outputs[0])
    if add is None or add.op_type != "Add" or len(add.inputs) != 2:
        return None
    epsilon = scalar(add.inputs[1] if add.inputs[0] == reduce.outputs[0] else add.inputs[0])
    sqrt = only_reader(add.outputs[0])
    if epsilon is None or epsilon < 0 or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    step = only_reader(sqrt.outputs[0])
    if step is not None and step.op_type == "Reciprocal":
        chain = [square, reduce, add, sqrt, step]
        scaled = only_reader(step.outputs[0])
        if scaled is None or scaled.op_type != "Mul" or sorted(scaled.inputs) != sorted((x, step.outputs[0])):
            return None
    elif step is not None and step.op_type == "Div" and step.inputs == (x, sqrt.outputs[0]):
        chain, scaled = [square, reduce, add, sqrt], step
    else:
        return None
    chain.append(scaled)
    weighted = only_reader(scaled.outputs[0])
    if weighted is not None and weighted.op_type == "Mul" and len(weighted.inputs) == 2:
        other = weighted.inputs[1] if weighted.inputs[0] == scaled.outputs[0] else weighted.inputs[0]
        weight = graph.constants.get(other)
        if weight is not None and weight.ndim == 1 and weight.dtype == np.float32:
            return x, epsilon, other, chain + [weighted]
    return x, epsilon, None, chain
