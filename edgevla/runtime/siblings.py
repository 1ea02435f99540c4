"""Linear layers that read the same value, stacked into one GEMM: an attention block's q, k and v.

Run one by one, q, k and v are three kernel calls over the same input, each
with its own call overhead and its own pass over the activation. Stacked,
their weights are one ``(Nq + Nk + Nv, K)`` matrix and the layer writes one
``(M, Nq + Nk + Nv)`` output; each original value becomes a view of its
columns (an ``edgevla.Columns`` step, no copy), which the reshapes and the
attention that follow read through their strides.

Only int8 kernels are stacked, and only layers that agree on everything but
their weights (mode, kernel, activation, whether they have a bias, activation
scale): the int32 accumulation of those kernels is exact and their epilogue
works per output channel, so each layer's columns are bit-identical to what
the layer computes alone. Float layers are left alone (a BLAS call of another
width may sum in another order). The stacked weight must get the same kernel
from the rules as each layer did (a 2:4 layer stacked with a dense one would
not), or nothing is stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import ops
from .graph import Graph, Node
from .linear import LINEAR_OP, LinearSpec, LinearWeight

COLUMNS_OP = "edgevla.Columns"


class Columns:
    """``y[..., start:stop]``: one stacked layer's share of the stacked output, as a view; then, when
    the layer's only reader was a ``Reshape`` to a constant shape (the head split before attention),
    that reshape too, which splits the last axis and stays a view."""

    def __init__(self, start: int, stop: int, reshape: ops.OpFn | None = None, shape: np.ndarray | None = None):
        self.start, self.stop, self.reshape, self.shape = start, stop, reshape, shape

    def __call__(self, y: np.ndarray) -> np.ndarray:
        columns = y[..., self.start:self.stop]
        return columns if self.reshape is None else self.reshape(columns, self.shape)


def merge_sibling_linears(graph: Graph, precision_of: Callable[[str], str]) -> int:
    """Stack the mergeable ``edgevla.Linear`` nodes (attrs ``spec``) of each value in place; returns how many
    stacked layers were made. ``precision_of(layer)``: how that layer's float work runs."""
    made = 0
    for value, readers in graph.consumers().items():
        nodes = [node for node, _ in readers if node.op_type == LINEAR_OP and node.inputs == (value,)]
        groups: dict[tuple, list[Node]] = {}
        for node in nodes:
            spec = node.attrs["spec"]
            key = _stacking_key(spec, precision_of(spec.name))
            if key is not None:
                groups.setdefault(key, []).append(node)
        for (precision, _, kernel, *_), group in groups.items():
            if len(group) >= 2 and _stack(graph, value, group, kernel, precision):
                made += 1
    return made


def _stacking_key(spec: LinearSpec, precision: str) -> tuple | None:
    """What stacked layers must share; None for a layer that is not stacked."""
    if spec.parts or spec.residual is not None or spec.weight.int4 is not None:
        return None
    mode, kernel = spec.kernel(precision)
    if not kernel.startswith("s8-"):
        return None
    return (precision, mode, kernel, spec.activation, spec.bias is not None, spec.static_scale,
            spec.weight.codes is not None, spec.weight.values.shape[1])


def _stack(graph: Graph, value: str, group: Sequence[Node], kernel: str, precision: str) -> bool:
    specs: list[LinearSpec] = [node.attrs["spec"] for node in group]
    weights = [s.weight for s in specs]
    codes = None if weights[0].codes is None else np.concatenate([w.codes for w in weights])
    scale = None if weights[0].scale is None else np.concatenate([w.scale for w in weights])
    name = "+".join(s.name for s in specs)
    stacked = LinearSpec(
        name, LinearWeight(name, np.concatenate([w.values for w in weights]), codes, scale),
        None if specs[0].bias is None else np.concatenate([s.bias for s in specs]),
        specs[0].activation, specs[0].static_scale, parts=tuple((s.name, s.weight.values.shape[0]) for s in specs))
    if stacked.kernel(precision)[1] != kernel:
        return False  # the stacked weight would run elsewhere (its sparsity or pattern differs)
    out = f"{value}::stacked"
    nodes: list[Node] = [Node(name, LINEAR_OP, (value,), (out,), {"spec": stacked})]
    readers, outputs = graph.consumers(), set(graph.outputs)
    members = {id(node) for node in group}
    start = 0
    for node, spec in zip(group, specs):
        stop = start + spec.weight.values.shape[0]
        columns, result = Columns(start, stop), node.outputs
        reshape = _only_constant_reshape(graph, readers.get(node.outputs[0], []))
        if reshape is not None and node.outputs[0] not in outputs:
            shape = graph.constants[reshape.inputs[1]]
            kernel = ops.compile_op("Reshape", reshape.attrs, (None, shape), graph.opset, 1, reshape.describe())
            columns, result = Columns(start, stop, kernel.fn, shape), reshape.outputs
            members.add(id(reshape))
        nodes.append(Node(f"{node.name}::columns", COLUMNS_OP, (out,), result, {"columns": columns}))
        start = stop
    first = min(i for i, node in enumerate(graph.nodes) if id(node) in members)
    graph.nodes = [*[n for n in graph.nodes[:first] if id(n) not in members], *nodes,
                   *[n for n in graph.nodes[first:] if id(n) not in members]]
    return True


def _only_constant_reshape(graph: Graph, readers: list[tuple[Node, int]]) -> Node | None:
    """The reader, when a value's only reader is a ``Reshape`` of it (as its data) to a constant shape."""
    if len(readers) != 1:
        return None
    node, index = readers[0]
    if node.op_type != "Reshape" or index != 0 or len(node.inputs) < 2 or node.inputs[1] not in graph.constants:
        return None
    return node


__all__ = ["COLUMNS_OP", "Columns", "merge_sibling_linears"]
