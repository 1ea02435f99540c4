"""Sensitivity analysis: how much each layer (or group of layers) tolerates pruning.

For every unit (a Linear layer, or a named group such as a block's layers)
and every sparsity of a grid, a copy of the policy is pruned *in that unit
only* and measured: closed-loop success on fixed seeded episodes and the
normalized-action MSE against the unpruned policy on held-out observations.
The curves say where pruning is cheap; :func:`allocate_sparsity` turns them
into non-uniform per-layer sparsities meeting a global target of parameters,
FLOPs or latency removed (greedy: the next cut goes where the curve is
flattest per unit of cost, as in AMC/NetAdapt-style allocation), and
:func:`plot_sensitivity` draws them for the report.

Latency is each unit's measured dense time on this host at batch 1 (median of
timed calls at the input shape the layer sees in the policy); the allocation
counts a unit pruned to sparsity s as saving s of it — the model of a sparse
kernel whose time follows its nonzeros (edgevla's CPU sparse GEMM, and
structured pruning on any runtime), not of a dense runtime, where zeros save
nothing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import EdgevlaError
from .masks import apply_masks, nm_masks, prunable_linears
from .recovery import Batch, action_errors, heldout_batch
from .schedule import exact_unstructured_masks, make_criterion

METRICS = ("action_error", "success")
COSTS = ("params", "flops", "latency")


@dataclass
class SensitivityCurve:
    unit: str
    layers: list[str]
    params: int  # weights of the unit's layers
    flops: int  # multiply-accumulates x 2 of those layers for one sample
    sparsities: list[float]
    success: list[float]
    action_error: list[float]
    latency_us: float = 0.0  # measured dense time of the unit's layers at batch 1, this host

    def damage(self, metric: str, base_success: float) -> np.ndarray:
        """Loss in ``metric`` at each sparsity: success points lost, or the action error itself."""
        if metric == "success":
            return np.maximum(0.0, base_success - np.asarray(self.success, dtype=np.float64))
        return np.asarray(self.action_error, dtype=np.float64)


@dataclass
class SensitivityResult:
    structure: str
    base_success: float
    curves: list[SensitivityCurve] = field(default_factory=list)

    def curve(self, unit: str) -> SensitivityCurve:
        for c in self.curves:
            if c.unit == unit:
                return c
        raise EdgevlaError(f"no sensitivity curve for {unit!r}")

    def table(self) -> list[dict]:
        """One row per (unit, sparsity): what a report's table prints."""
        return [{"unit": c.unit, "params": c.params, "flops": c.flops, "latency_us": c.latency_us,
                 "sparsity": s, "success": ok, "action_error": err}
                for c in self.curves for s, ok, err in zip(c.sparsities, c.success, c.action_error)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "SensitivityResult":
        """Back from :meth:`to_dict` (extra keys, like a report section's, are ignored)."""
        curves = [SensitivityCurve(**c) for c in data["curves"]]
        return cls(data["structure"], float(data["base_success"]), curves)


def _linear_inputs(model: nn.Module, layers: Iterable[str], inputs: Sequence[torch.Tensor]) -> dict[str, list]:
    """The input of every call of each named layer during one batch-1 forward of ``model``."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [modules[name].register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(args[0]))
               for name in seen]
    try:
        with torch.no_grad():
            model(*(x[:1] for x in inputs))
    finally:
        for h in handles:
            h.remove()
    return seen


def _layer_flops(model: nn.Module, seen: Mapping[str, list[torch.Tensor]]) -> dict[str, int]:
    """2 x in x out x rows each Linear computes for one sample (rows: the tokens it sees)."""
    return {n: 2 * model.get_submodule(n).weight.numel() * sum(int(np.prod(x.shape[:-1])) for x in xs)
            for n, xs in seen.items()}


def _layer_latency_us(model: nn.Module, seen: Mapping[str, list[torch.Tensor]], runs: int = 30) -> dict[str, float]:
    """Median microseconds each Linear spends on its inputs of one batch-1 forward, run alone."""
    latency = {}
    with torch.no_grad():
        for name, xs in seen.items():
            layer = model.get_submodule(name)
            for x in xs[:1] * 3:  # warm-up
                layer(x)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                for x in xs:
                    layer(x)
                times.append(time.perf_counter() - start)
            latency[name] = float(np.median(times) * 1e6) if xs else 0.0  # never called: costs nothing
    return latency


def _units(model: nn.Module, units: Mapping[str, Sequence[str]] | Sequence[str] | None,
           scope: str | None) -> dict[str, list[str]]:
    linears = prunable_linears(model)
    if units is None:
        names = [n for n in linears if scope is None or n == scope or n.startswith(scope + ".")]
        if not names:
            raise EdgevlaError(f"no nn.Linear layers{' under ' + repr(scope) if scope else ''} to analyse")
        return {n: [n] for n in names}
    if isinstance(units, Mapping):
        chosen = {u: list(ls) for u, ls in units.items()}
    else:
        chosen = {u: [u] for u in units}
    for u, ls in chosen.items():
        for n in ls:
            if n not in linears:
                raise EdgevlaError(f"sensitivity unit {u!r}: no nn.Linear named {n!r}")
    return chosen


def _masks_for(model: nn.Module, layers: list[str], structure: str, sparsity: float, criterion):
    if structure == "unstructured":
        return exact_unstructured_masks(model, sparsity, criterion, "layer", layers)
    n, _, m = structure.partition(":")
    if sparsity != 1.0 - int(n) / int(m):
        raise EdgevlaError(f"an N:M sweep has a single sparsity {1 - int(n) / int(m)}, got {sparsity}")
    return nm_masks(model, int(n), int(m), criterion, layers)


def layer_sensitivity(policy: nn.Module, sparsities: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0), *,
                      structure: str = "unstructured", units=None, scope: str | None = None,
                      criterion="magnitude", calibration=None, episodes: int = 50, seed: int = 10_000,
                      heldout: Batch | None = None,
                      success_fn: Callable[[nn.Module], float] | None = None) -> SensitivityResult:
    """Curves of success and action error against sparsity, pruning one unit at a time.

    ``units`` is None (every Linear, optionally under ``scope``), a list of
    layer names, or a mapping from a unit name to its layers (a block, a
    group). ``structure`` is ``"unstructured"`` or an N:M pattern (then
    ``sparsities`` holds its one sparsity). The policy itself is not changed.
    """
    from ..train import closed_loop_success

    if structure != "unstructured" and not all(p.isdigit() for p in structure.split(":")):
        raise EdgevlaError(f"sensitivity structure must be unstructured or N:M, got {structure!r}")
    grid = sorted(float(s) for s in sparsities)
    if not grid or grid[0] < 0.0 or grid[-1] > 1.0:
        raise EdgevlaError(f"sensitivity sparsities must be fractions in [0, 1], got {list(sparsities)}")
    if success_fn is None:
        def success_fn(p: nn.Module) -> float:
            return closed_loop_success(p, episodes=episodes, seed=seed)
    heldout = heldout if heldout is not None else heldout_batch(policy, 128)
    chosen = _units(policy, units, scope)
    seen = _linear_inputs(policy, [n for ls in chosen.values() for n in ls], heldout[0])
    flops, latency = _layer_flops(policy, seen), _layer_latency_us(policy, seen)
    crit = make_criterion(criterion, policy, calibration)
    layers = prunable_linears(policy)
    policy.eval()
    base_success = float(success_fn(policy))
    result = SensitivityResult(structure, base_success)
    for unit, names in chosen.items():
        success, error = [], []
        for s in grid:
            pruned = copy.deepcopy(policy)
            apply_masks(pruned, _masks_for(pruned, names, structure, s, crit))
            pruned.eval()
            success.append(float(success_fn(pruned)))
            error.append(action_errors(pruned, policy, heldout)[0])
        result.curves.append(SensitivityCurve(unit, names, sum(layers[n].weight.numel() for n in names),
                                              sum(flops[n] for n in names), grid, success, error,
                                              round(sum(latency[n] for n in names), 3)))
    return result


@dataclass
class Allocation:
    """Per-unit sparsity meeting a global target; ``removed / total`` is the achieved fraction.

    ``removed`` and ``total`` are in the cost's unit: weights, FLOPs, or nanoseconds of latency.
    """

    cost: str
    target: float
    sparsity: dict[str, float]
    removed: int
    total: int

    @property
    def achieved(self) -> float:
        return self.removed / self.total if self.total else 0.0

    def layer_sparsity(self, result: SensitivityResult) -> dict[str, float]:
        """Expanded to layers: every layer of a unit gets the unit's sparsity."""
        return {n: self.sparsity[c.unit] for c in result.curves for n in c.layers}


def allocate_sparsity(result: SensitivityResult, target: float, cost: str = "params",
                      metric: str = "action_error", max_sparsity: float = 1.0) -> Allocation:
    """Non-uniform sparsities removing ``target`` of the units' parameters (FLOPs, latency), damage-greedy.

    Each unit climbs its curve's sparsity grid (from 0); the next climb is the
    one adding the least damage per unit of cost removed. The last climb is cut
    short — interpolated between grid points — so the removed cost hits the
    target to within one weight per unit. ``max_sparsity`` caps every unit.
    """
    if cost not in COSTS:
        raise EdgevlaError(f"allocation cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if metric not in METRICS:
        raise EdgevlaError(f"allocation metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not result.curves:
        raise EdgevlaError("no sensitivity curves to allocate from")
    weights = {c.unit: _cost(c, cost) for c in result.curves}
    total = sum(weights.values())
    reachable = sum(w * max_sparsity for w in weights.values())
    if not 0.0 <= target <= 1.0 or target * total > reachable + 1e-9:
        raise EdgevlaError(f"a global target of {target} cannot be met with at most {max_sparsity} per unit")
    curves = {}
    for c in result.curves:
        grid = np.array([0.0] + [s for s in c.sparsities if 0.0 < s <= max_sparsity], dtype=np.float64)
        damage = c.damage(metric, result.base_success)
        damage = np.concatenate([[0.0], [d for s, d in zip(c.sparsities, damage) if 0.0 < s <= max_sparsity]])
        if grid[-1] < max_sparsity:  # beyond the measured grid: extrapolate flat from the last point
            grid = np.append(grid, max_sparsity)
            damage = np.append(damage, damage[-1])
        curves[c.unit] = (grid, damage)
    level = {u: 0 for u in curves}
    need = target * total
    removed = 0.0
    sparsity = {u: 0.0 for u in curves}
    while removed < need - 1e-9:
        best, best_slope = None, np.inf
        for u, (grid, damage) in curves.items():
            i = level[u]
            if i + 1 >= len(grid) or weights[u] == 0:
                continue
            slope = (damage[i + 1] - damage[i]) / ((grid[i + 1] - grid[i]) * weights[u])
            if slope < best_slope:
                best, best_slope = u, slope
        if best is None:
            break
        grid = curves[best][0]
        i = level[best]
        gain = (grid[i + 1] - grid[i]) * weights[best]
        if removed + gain >= need:
            sparsity[best] = grid[i] + (need - removed) / weights[best]
            removed = need
            break
        level[best] = i + 1
        sparsity[best] = grid[i + 1]
        removed += gain
    by_count = sum(int(round(sparsity[c.unit] * c.params)) * (weights[c.unit] / c.params if c.params else 0)
                   for c in result.curves)
    return Allocation(cost, float(target), {u: float(v) for u, v in sparsity.items()}, int(round(by_count)), total)


def _cost(curve: SensitivityCurve, cost: str) -> int:
    """A unit's weight in the allocation: parameters, FLOPs, or latency in whole nanoseconds."""
    if cost == "latency":
        return int(round(curve.latency_us * 1000))
    return curve.params if cost == "params" else curve.flops


def apply_allocation(policy: nn.Module, result: SensitivityResult, allocation: Allocation, criterion="magnitude",
                     calibration=None) -> None:
    """Mask ``policy`` in place with the allocated per-layer sparsities (exact counts, ranked by ``criterion``)."""
    crit = make_criterion(criterion, policy, calibration)
    masks = {}
    for layer, s in allocation.layer_sparsity(result).items():
        if s > 0:
            masks.update(exact_unstructured_masks(policy, min(1.0, s), crit, "layer", [layer]))
    apply_masks(policy, masks)


def plot_sensitivity(result: SensitivityResult, path: str | Path, metric: str = "both") -> Path:
    """Write the curves (success and/or action error against sparsity) as an image; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in ("both", *METRICS):
        raise EdgevlaError(f"plot metric must be both, success or action_error, got {metric!r}")
    shown = list(METRICS[::-1]) if metric == "both" else [metric]
    fig = Figure(figsize=(5.0 * len(shown), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for k, m in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), k + 1)
        for i, c in enumerate(result.curves):
            values = c.success if m == "success" else c.action_error
            ax.plot([0.0, *c.sparsities], [result.base_success if m == "success" else 0.0, *values],
                    marker="o", markersize=3, label=c.unit, linestyle=("-", "--", ":")[i // 10 % 3])  # 10 colours
        ax.set_xlabel(f"{result.structure} sparsity of the unit")
        ax.set_ylabel("closed-loop success" if m == "success" else "action MSE vs unpruned")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6, ncol=2 if len(result.curves) > 8 else 1)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise EdgevlaError(f"cannot write the sensitivity plot {path}: {e.strerror or e}") from None
    return path
