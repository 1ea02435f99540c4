"""A loaded model on the native runtime: load once, then run observations to actions."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import EdgevlaError
from .executor import Program
from .fusion import LINEAR_OP, fuse
from .graph import ValueSpec, load_graph
from .linear import DEFAULT_PRECISION, PRECISIONS, LayerChoice
from .weights import WeightArena


@dataclass(frozen=True)
class OpTime:
    """Where the time of one call goes: one op type (fused linear layers as ``edgevla.Linear``)."""

    op_type: str
    count: int
    seconds: float


class NativeModel:
    """An ONNX model (a bundle's ``model.onnx``) on edgevla's kernels.

    Loading reads and folds the graph, fuses linear layers and attention,
    and packs the layers' weights into one huge-page arena
    (:mod:`edgevla.runtime.linear` says which kernel runs each layer and
    why); :meth:`run` then executes it. ``precision`` chooses how float
    weights run: ``"int8"`` (default; dynamic per-token W8A8) or ``"fp32"``.
    Weights the graph already quantized run on their own codes either way.

    Calls are serialized (a lock): intermediate buffers are planned once and
    reused, so two threads may share a model but not run it at once.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, precision: str = DEFAULT_PRECISION):
        if precision not in PRECISIONS:
            raise EdgevlaError(f"unknown native precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        self.precision = precision
        graph = load_graph(model)
        self._weights = WeightArena()
        self._layers = fuse(graph, precision, self._weights)
        self.inputs: list[ValueSpec] = list(graph.inputs)
        self.outputs: list[str] = list(graph.outputs)
        self._program = Program(graph)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name -> outputs by name (fresh arrays the caller owns)."""
        arrays = self._check(feeds)
        with self._lock:
            return dict(zip(self.outputs, self._program.run(arrays)))

    def plan(self) -> list[LayerChoice]:
        """One row per linear layer: shape, weight format, sparsity, pattern, mode, kernel, epilogue, rule."""
        return [choice for layer in self._layers for choice in layer.choices]

    def op_count(self) -> dict[str, int]:
        """How many steps of each op type one call runs, after fusion."""
        counts: dict[str, int] = {}
        for step in self._program.steps:
            counts[step.node.op_type] = counts.get(step.node.op_type, 0) + 1
        return counts

    def profile_ops(self, feeds: Mapping[str, np.ndarray], runs: int = 20) -> list[OpTime]:
        """Median time per step over ``runs`` calls, summed by op type, slowest first."""
        if runs < 1:
            raise EdgevlaError("profile_ops needs runs >= 1")
        by_op: dict[str, list[float]] = {}
        with self._lock:
            timed = self._program.time_steps(self._check(feeds), runs)
        for node, seconds in timed:
            by_op.setdefault(node.op_type, []).append(seconds)
        rows = [OpTime(op, len(t), float(sum(t))) for op, t in by_op.items()]
        return sorted(rows, key=lambda r: -r.seconds)

    def _check(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [v.name for v in self.inputs if v.name not in feeds]
        if missing:
            raise EdgevlaError(f"the model needs input {missing[0]!r}; got {sorted(feeds)}")
        arrays = []
        for v in self.inputs:
            a = np.asarray(feeds[v.name])
            if a.dtype != v.dtype:
                raise EdgevlaError(f"input {v.name!r} must be {v.dtype}, got {a.dtype}")
            if v.shape is not None:
                if a.ndim != len(v.shape) or any(d is not None and d != s for d, s in zip(v.shape, a.shape)):
                    want = tuple("?" if d is None else d for d in v.shape)
                    raise EdgevlaError(f"input {v.name!r} must have shape {want}, got {a.shape}")
            arrays.append(a)
        return arrays


def format_plan(plan: list[LayerChoice]) -> str:
    """The plan as a fixed-width text table, one layer per line."""
    header = ("layer", "K", "N", "weight", "sparsity", "pattern", "mode", "kernel", "epilogue")
    rows = [header] + [(c.layer, str(c.k), str(c.n), c.weight, f"{c.sparsity:.2f}", c.pattern, c.mode, c.kernel,
                        c.epilogue) for c in plan]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


__all__ = ["LINEAR_OP", "NativeModel", "OpTime", "format_plan"]
