"""``edgevla.Rotary``: rotary position embeddings (RoPE) on one value as one step.

Llama, Gemma and the VLA trunks built on them rotate q and k by
``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = concat(-x[..., h:],
x[..., :h])``, which the exporter writes as seven nodes (two Slices, a Neg, a
Concat, two Muls, an Add) per rotated value, twice per layer. :func:`fuse_rotary`
makes each such chain, whose intermediates nothing else reads, one step:
:func:`edgevla.native.rotary_f32` (csrc/rotary_f32.h), exactly the graph's
floats in one pass, where ``cos`` and ``sin`` are tables over ``x``'s trailing
axes (tokens, width) that repeat over the leading ones (batch, heads), as
exported graphs slice them from constant tables; anything else that
broadcasts runs the graph's own arithmetic in NumPy.
"""

from __future__ import annotations

import math

import numpy as np

from .. import native
from .graph import Graph, GraphView, Node

ROTARY_OP = "edgevla.Rotary"
_TO_END = 2 ** 62  # a Slice end at or past this: to the end of the axis


class Rotary:
    """``x * cos + concat(-x[..., h:], x[..., :h]) * sin`` over the last axis, ``h`` half of it."""

    def __init__(self, half: int):
        self.half = half
        self._kernel = native.raw("rotary_f32") if native.available() else None
        self._last: tuple | None = None  # (x's shape, cos, sin, their tables): a signature's calls repeat them

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, out: np.ndarray | None = None):
        h, d = self.half, 2 * self.half
        last = self._last
        if last is not None and last[0] == x.shape and last[1] is cos and last[2] is sin:
            tables = last[3]
        else:
            tables = None if self._kernel is None else _tables(x, cos, sin, d)
            self._last = (x.shape, cos, sin, tables)
        if tables is not None:
            rows = x.reshape(-1, d)  # a view where it can be
            if rows.strides[1] == 4 or d == 1:
                y = np.empty(x.shape, np.float32) if out is None else out
                self._kernel(rows, tables[0], tables[1], y.reshape(-1, d))
                return y
        y = x * cos + np.concatenate([-x[..., h:], x[..., :h]], axis=-1) * sin  # the graph, as written
        if out is None:
            return y
        out[...] = y
        return out


def _tables(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``cos`` and ``sin`` as (P, D) tables that ``x``'s rows take in turn (row r: table row r mod P), when they
    cover ``x``'s trailing axes exactly and repeat over its leading ones; else None."""
    if not x.dtype == cos.dtype == sin.dtype == np.float32 or cos.shape != sin.shape or x.shape[-1:] != (d,):
        return None
    tail = cos.shape[next((i for i, n in enumerate(cos.shape) if n != 1), len(cos.shape) - 1):]
    if cos.ndim > x.ndim or x.shape[x.ndim - len(tail):] != tail:
        return None
    p = math.prod(tail[:-1])
    return tuple(t.reshape(p, d) if t.reshape(p, d).strides[1] == 4 else np.ascontiguousarray(t.reshape(p, d))
                 for t in (cos, sin))


def fuse_rotary(graph: Graph) -> int:
    """Rewrite every rotary chain of the module docstring into one :data:`ROTARY_OP` node; returns how many."""
    fused = 0
    for concat in [n for n in graph.nodes if n.op_type == "Concat" and len(n.inputs) == 2]:
        match = _match(graph, concat)
        if match is None:
            continue
        x, cos, sin, half, chain = match
        add = chain[-1]
        node = Node(add.name, ROTARY_OP, (x, cos, sin), add.outputs, {"rotary": Rotary(half)})
        ids = {id(n) for n in chain}
        at = max(i for i, n in enumerate(graph.nodes) if id(n) in ids)
        graph.nodes = [node if i == at else n for i, n in enumerate(graph.nodes) if i == at or id(n) not in ids]
        fused += 1
    return fused


def _match(graph: Graph, concat: Node) -> tuple[str, str, str, int, list[Node]] | None:
    """``(x, cos, sin, h, chain)`` when ``concat`` is ``rotate_half(x)`` inside ``x * cos + rotate_half(x) * sin``."""
    view = GraphView(graph)
    producer, only_reader = view.producer, view.only_reader

    def last_axis_slice(value: str) -> tuple[str, int, int] | None:
        """``(x, start, end)`` of a Slice of ``value``'s producer over the last axis with step 1."""
        node = producer.get(value)
        if node is None or node.op_type != "Slice" or len(node.inputs) < 4 or only_reader(value) is None:
            return None
        consts = [graph.constants.get(i) if i else None for i in node.inputs[1:5]]
        if any(c is None or c.size != 1 for c in consts[:3]) or (len(consts) > 3 and consts[3] is not None
                                                                  and int(consts[3].reshape(())) != 1):
            return None
        start, end, axis = (int(c.reshape(())) for c in consts[:3])
        rank = graph.ranks.get(node.inputs[0])
        if axis != -1 and (rank is None or axis != rank - 1):
            return None
        return node.inputs[0], start, end

    axis = int(concat.attrs.get("axis", 0))
    rank = graph.ranks.get(concat.outputs[0])
    neg = producer.get(concat.inputs[0])
    if (axis != -1 and (rank is None or axis != rank - 1)) or neg is None or neg.op_type != "Neg":
        return None
    second, first = last_axis_slice(neg.inputs[0]), last_axis_slice(concat.inputs[1])
    if second is None or first is None or only_reader(concat.inputs[0]) is not concat:
        return None
    (x, start2, end2), (x1, start1, end1) = second, first
    half = end1
    if x1 != x or start1 != 0 or half < 1 or start2 != half or not (end2 == 2 * half or end2 >= _TO_END):
        return None
    times_sin = only_reader(concat.outputs[0])
    if times_sin is None or times_sin.op_type != "Mul" or len(times_sin.inputs) != 2:
        return None
    sin = times_sin.inputs[1] if times_sin.inputs[0] == concat.outputs[0] else times_sin.inputs[0]
    add = only_reader(times_sin.outputs[0])
    if add is None or add.op_type != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] == times_sin.outputs[0] else add.inputs[0]
    times_cos = producer.get(other)
    if times_cos is None or times_cos.op_type != "Mul" or x not in times_cos.inputs or only_reader(other) is not add:
        return None
    cos = times_cos.inputs[1] if times_cos.inputs[0] == x else times_cos.inputs[0]
    slices = [producer[neg.inputs[0]], producer[concat.inputs[1]]]
    return x, cos, sin, half, [*slices, neg, concat, times_sin, times_cos, add]
