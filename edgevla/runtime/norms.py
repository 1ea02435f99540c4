"""``edgevla.LayerNormS8``: LayerNorm and the static int8 QuantizeLinear after it, as one native kernel.

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
from .graph import Graph, Node

LAYER_NORM_S8_OP = "edgevla.LayerNormS8"


class LayerNormS8:
    """``QuantizeLinear(LayerNormalization(x, gamma, beta), scale, 0)`` over the last axis of x."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray | None, epsilon: float, scale: float):
        self.gamma = np.ascontiguousarray(gamma, np.float32).reshape(-1)
        self.beta = None if beta is None else np.ascontiguousarray(beta, np.float32).reshape(-1)
        self.epsilon, self.scale = float(epsilon), float(scale)
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
        self._kernel(x2, self.gamma, self.beta, self.epsilon, self.scale, q.reshape(-1, self.k))
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
    """Each ``LayerNormalization`` (last axis, 1-D constant gamma/beta) whose only reader is a static int8
    ``QuantizeLinear`` becomes one :data:`LAYER_NORM_S8_OP` node; returns how many."""
    if not LayerNormS8.available():
        return 0
    readers, outputs = graph.consumers(), set(graph.outputs)
    fused = 0
    for norm in [n for n in graph.nodes if n.op_type == "LayerNormalization"]:
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
        layer_norm = LayerNormS8(gamma, beta, float(norm.attrs.get("epsilon", 1e-5)), scale)
        index = graph.nodes.index(quantize)
        graph.nodes[index] = Node(norm.name, LAYER_NORM_S8_OP, (norm.inputs[0],), (quantize.outputs[0],),
                                  {"norm": layer_norm})
        graph.nodes.remove(norm)
        fused += 1
    return fused
