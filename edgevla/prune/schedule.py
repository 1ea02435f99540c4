"""Pruning schedules: one-shot, or gradual with fine-tuning between steps.

Zhu & Gupta (2017, "To prune, or not to prune") raise the sparsity along a
cubic curve over ``n`` pruning steps ``Δt`` apart, starting at ``t0``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt))^3

The curve prunes fast while many redundant weights remain and slowly near the
end, when every further weight hurts, leaving fine-tuning time to heal each
cut. One-shot pruning is the one-step special case.

:func:`gradual_prune` runs a schedule for three kinds of pruning:

* ``"unstructured"``: at every step the weights are re-scored (a criterion
  name is rebuilt on the current model, so Taylor and Wanda see the
  fine-tuned weights) and the lowest-scoring are masked until *exactly*
  ``round(s_t * n)`` of each layer's weights (or of all, ``scope="global"``)
  are pruned; weights pruned earlier stay pruned.
* ``"n:m"`` (``"2:4"``, ``"4:8"``): the N:M pattern is re-chosen from the
  current scores each step and the lowest fraction ``s_t / s_f`` of the
  weights it would drop are masked; the last step leaves the exact pattern.
* a structure of :func:`prune_structured` (``"neurons"``, ``"heads"``,
  ``"width"``, ``"blocks"``): every step removes a fraction of the *remaining*
  units, chosen so the cumulative removed fraction follows the curve. With a
  fraction per group, each group follows the curve scaled to its own fraction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import EdgevlaError
from .importance import Batches, MagnitudeImportance, TaylorImportance, WandaImportance
from .masks import WeightMask, apply_masks, from_nm_rows, nm_rows, prunable_layers, takes_nm
from .structured import (STRUCTURES, Amount, _example_inputs, check_amount, groups_of, kept_units, no_groups,
                         prune_structured, residual_blocks)

CRITERIA = ("magnitude", "taylor", "wanda")


def cubic_sparsity(t: float, final: float, initial: float = 0.0, t0: float = 0.0, n: int = 1,
                   dt: float = 1.0) -> float:
    """Zhu & Gupta's sparsity at time ``t``: ``initial`` before ``t0``, ``final`` after ``t0 + n*dt``."""
    if n < 1 or dt <= 0:
        raise EdgevlaError(f"the cubic schedule needs n >= 1 steps and dt > 0, got n={n}, dt={dt}")
    progress = min(1.0, max(0.0, (t - t0) / (n * dt)))
    return final + (initial - final) * (1.0 - progress) ** 3


def schedule_sparsities(final: float, steps: int, initial: float = 0.0, kind: str = "cubic") -> list[float]:
    """The target sparsity after each of ``steps`` pruning steps (the last is exactly ``final``)."""
    if not isinstance(steps, int) or steps < 1:
        raise EdgevlaError(f"a pruning schedule needs at least one step, got {steps!r}")
    if not 0.0 <= initial <= final <= 1.0:
        raise EdgevlaError(f"sparsities must satisfy 0 <= initial <= final <= 1, got {initial} and {final}")
    if kind == "oneshot":
        return [final]
    if kind != "cubic":
        raise EdgevlaError(f"schedule must be 'oneshot' or 'cubic', got {kind!r}")
    values = [cubic_sparsity(i, final, initial, 0, steps, 1) for i in range(1, steps + 1)]
    values[-1] = final  # exact, whatever the float arithmetic did
    return values


@dataclass
class ScheduleStep:
    step: int
    target: float  # scheduled fraction pruned (weights, or units for structures)
    achieved: float  # measured fraction pruned after the step
    params: int  # parameters of the model after the step
    prune_seconds: float
    finetune_seconds: float


@dataclass
class ScheduleResult:
    method: str
    final: float
    steps: list[ScheduleStep] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.steps[-1].achieved if self.steps else 0.0

    def table(self) -> list[dict]:
        return [vars(s).copy() for s in self.steps]


def _parse_method(method: str) -> tuple[str, tuple[int, int] | None]:
    if method == "unstructured" or method in STRUCTURES:
        return method, None
    n, sep, m = str(method).partition(":")
    if sep and n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
        return "nm", (int(n), int(m))
    raise EdgevlaError(f"pruning method must be unstructured, N:M (like 2:4) or one of {', '.join(STRUCTURES)}; "
                       f"got {method!r}")


def make_criterion(criterion, model: nn.Module, calibration: Batches | None):
    """A criterion object: ``criterion`` itself, or built by name on the model as it is now."""
    if not isinstance(criterion, str):
        return criterion if criterion is not None else MagnitudeImportance()
    if criterion == "magnitude":
        return MagnitudeImportance()
    if criterion not in CRITERIA:
        raise EdgevlaError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if calibration is None:
        raise EdgevlaError(f"the {criterion} criterion needs calibration batches")
    return (TaylorImportance if criterion == "taylor" else WandaImportance)(model, calibration)


def current_mask(layer: nn.Module) -> torch.Tensor | None:
    """The mask attached to ``layer.weight`` by :func:`apply_masks`, or None."""
    if parametrize.is_parametrized(layer, "weight"):
        for p in layer.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p.mask
    return None


def layer_scores(criterion, name: str, layer: nn.Module) -> torch.Tensor:
    """Element scores of ``layer.weight``, looked up by name so parametrized (masked) layers work too.

    A criterion built from gradients keys a masked layer's scores by its
    underlying ``parametrizations.weight.original``; activation criteria by
    the layer's name. Weights already masked score ``-inf``: they stay pruned.
    """
    weight = layer.weight.detach()
    scores = None
    for key in (f"{name}.weight", f"{name}.parametrizations.weight.original"):
        scores = criterion.tensor_scores(key, weight)
        if scores is not None:
            break
    if scores is None:
        scores = criterion(layer)
    scores = scores.detach().float().abs().clone()
    mask = current_mask(layer)
    if mask is not None:
        scores[mask == 0] = float("-inf")
    return scores


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (into the flattened tensor) of the ``count`` lowest scores, ties broken by position."""
    return torch.argsort(scores.reshape(-1), stable=True)[:count]


def exact_unstructured_masks(model: nn.Module, sparsity: float, criterion=None, scope: str = "layer",
                             layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks pruning exactly ``round(sparsity * n)`` weights per layer (or of all, ``scope="global"``).

    Unlike a threshold, ranking never over-prunes on ties, and ``sparsity=1``
    is allowed (the layer is removed entirely — what a sensitivity sweep asks).
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise EdgevlaError(f"sparsity must be a fraction in [0, 1], got {sparsity!r}")
    if scope not in ("layer", "global"):
        raise EdgevlaError(f"threshold scope must be 'layer' or 'global', got {scope!r}")
    criterion = criterion or MagnitudeImportance()
    chosen = prunable_layers(model, layers)
    scores = {n: layer_scores(criterion, n, m) for n, m in chosen.items()}
    masks = {n: torch.ones_like(s) for n, s in scores.items()}
    if scope == "layer":
        for n, s in scores.items():
            masks[n].view(-1)[_lowest(s, int(round(sparsity * s.numel())))] = 0.0
        return masks
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    drop = _lowest(flat, int(round(sparsity * flat.numel())))
    offsets = torch.tensor([0] + [scores[n].numel() for n in names]).cumsum(0)
    for i, n in enumerate(names):
        local = drop[(drop >= offsets[i]) & (drop < offsets[i + 1])] - offsets[i]
        masks[n].view(-1)[local] = 0.0
    return masks


def partial_nm_masks(model: nn.Module, n: int, m: int, fraction: float, criterion=None,
                     layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks on the way to N:M: of the weights the N:M pattern drops, the lowest ``fraction`` go.

    Weights masked before score ``-inf``, so the re-chosen pattern contains
    them and no group ever holds more than ``m - n`` pruned weights;
    ``fraction=1`` is the exact N:M pattern.
    """
    criterion = criterion or MagnitudeImportance()
    chosen = prunable_layers(model, layers)
    if layers is None:
        chosen = {k: v for k, v in chosen.items() if takes_nm(v, m)}
    masks = {}
    for name, layer in chosen.items():
        scores = layer_scores(criterion, name, layer)
        if not takes_nm(layer, m):
            raise EdgevlaError(f"N:M {n}:{m} needs {name}'s input width to divide by {m}, "
                               f"got shape {tuple(scores.shape)}")
        rows = nm_rows(scores)  # a convolution's groups run along its input channels
        groups = rows.reshape(rows.shape[0], -1, m)
        drop_in_group = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]
        candidates = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, drop_in_group, True).reshape(-1)
        index = candidates.nonzero().squeeze(1)
        count = int(round(fraction * index.numel()))
        order = torch.argsort(rows.reshape(-1)[index], stable=True)[:count]
        mask = torch.ones(rows.numel())
        mask[index[order]] = 0.0
        masks[name] = from_nm_rows(mask.reshape(rows.shape), scores.shape).contiguous()
    return masks


def _mask_fraction(model: nn.Module, names: Iterable[str]) -> float:
    modules = dict(model.named_modules())
    zeros = total = 0
    for n in names:
        mask = current_mask(modules[n])
        total += modules[n].weight.numel()
        zeros += int((mask == 0).sum()) if mask is not None else 0
    return zeros / total if total else 0.0


def _structure_units(model: nn.Module, structure: str, scope: str | None, inputs,
                     pruned: bool = False) -> tuple[int, int, int]:
    """(units, unit width, groups) of the first group of ``structure``: it sets the schedule's pace.

    Once ``pruned``, finding no group means every group is down to its last unit (a single head
    is no longer a reshape into heads): (1, 0, 0).
    """
    if structure == "blocks":
        blocks = residual_blocks(model, inputs)
        blocks = [b for b in blocks if scope is None or b == scope or b.startswith(scope + ".")]
        return len(blocks), 1, 1
    from .graph import DependencyGraph

    graph = DependencyGraph(model, inputs)
    groups = groups_of(graph, structure, scope)
    if not groups and pruned:
        return 1, 0, 0
    if not groups:
        raise no_groups(graph, structure, scope)
    return groups[0].units, groups[0].unit_width, len(groups)


def _finish_step(result: ScheduleResult, model: nn.Module, i: int, target: float, achieved: float, start: float,
                 finetune: Callable[[nn.Module, int], None] | None) -> None:
    """Fine-tune after pruning step ``i`` (begun at ``start``) and record it."""
    pruned_at = time.perf_counter()
    if finetune is not None:
        finetune(model, i)
    result.steps.append(ScheduleStep(i, target, achieved, sum(p.numel() for p in model.parameters()),
                                     pruned_at - start, time.perf_counter() - pruned_at))


def _gradual_per_group(model: nn.Module, structure: str, final: Mapping[str, float], steps: int, schedule: str,
                       criterion, calibration: Batches | None, scope: str | None, round_to: int, inputs,
                       finetune: Callable[[nn.Module, int], None] | None) -> ScheduleResult:
    """gradual_prune with a fraction per group: at each step every group is brought to its own fraction times the
    schedule's progress, its kept units counted, and rounded, from its original size."""
    from .graph import DependencyGraph

    def units_now() -> dict[str, tuple[int, int]]:
        return {g.name: (g.units, g.unit_width) for g in groups_of(DependencyGraph(model, inputs), structure, scope)}

    original = now = units_now()
    missing = sorted(set(final) - set(original))
    if missing:
        raise EdgevlaError(f"no {structure} group named {', '.join(map(repr, missing))}"
                           f"{' under ' + repr(scope) if scope else ''}")
    peak = max(final.values(), default=0.0)
    total = sum(original[name][0] for name in final) or 1
    result = ScheduleResult(structure, 0.0)
    for i, target in enumerate(schedule_sparsities(peak, 1 if schedule == "oneshot" else steps, kind=schedule),
                               start=1):
        start = time.perf_counter()
        progress = target / peak if peak else 1.0
        keep = {name: kept_units(original[name][0], fraction * progress, original[name][1], round_to)
                for name, fraction in final.items()}
        amounts = {name: (now[name][0] - k) / now[name][0] for name, k in keep.items()
                   if name in now and now[name][0] > k}
        if amounts:
            prune_structured(model, structure, amounts, make_criterion(criterion, model, calibration),
                             round_to=round_to, scope=scope, example_inputs=inputs, calibration=calibration)
            now = units_now()  # after this step, and before the next
        planned = 1.0 - sum(keep.values()) / total
        achieved = 1.0 - sum(now[name][0] if name in now else 1 for name in final) / total
        result.final = planned
        _finish_step(result, model, i, planned, achieved, start, finetune)
    return result


def gradual_prune(model: nn.Module, method: str, final: Amount | None, steps: int = 1, *, schedule: str = "cubic",
                  criterion="magnitude", calibration: Batches | None = None, scope: str = "layer",
                  layers: Iterable[str] | None = None, structure_scope: str | None = None, round_to: int = 1,
                  example_inputs=None,
                  finetune: Callable[[nn.Module, int], None] | None = None) -> ScheduleResult:
    """Prune ``model`` in place to ``final`` along a schedule, calling ``finetune(model, step)`` after each step.

    ``final`` is the fraction of weights pruned (unstructured), of units
    removed (structures: one for every group, or a mapping of group names to
    their own); N:M takes None (its sparsity is ``1 - N/M``).
    ``steps=1`` or ``schedule="oneshot"`` is one-shot pruning. ``criterion``
    is a name (``magnitude``, ``taylor``, ``wanda``: rebuilt each step on
    ``calibration``) or a criterion object used as is. ``finetune`` gets the
    model after every step, including the last (recovery is the caller's
    choice); a structured step changes parameter shapes, so it must build its
    optimizer afresh — :func:`edgevla.prune.recovery.distill` does.
    """
    kind, nm = _parse_method(method)
    if isinstance(final, Mapping):
        if kind not in STRUCTURES or kind == "blocks":
            raise EdgevlaError(f"a fraction per group is for the neurons, heads and width structures, not {method!r}")
        check_amount(final)
        return _gradual_per_group(model, kind, final, steps, schedule, criterion, calibration, structure_scope,
                                  round_to, _example_inputs(model, example_inputs), finetune)
    if kind == "nm":
        final = 1.0 - nm[0] / nm[1]
    elif not isinstance(final, (int, float)) or not 0.0 <= float(final) < 1.0:
        raise EdgevlaError(f"the final pruned fraction must be in [0, 1), got {final!r}")
    targets = schedule_sparsities(float(final), 1 if schedule == "oneshot" else steps, kind=schedule)
    result = ScheduleResult(method, float(final))
    layers = list(layers) if layers is not None else None
    inputs = _example_inputs(model, example_inputs) if kind in STRUCTURES else None
    units0 = width = 0
    if kind in STRUCTURES:
        units0, width, _ = _structure_units(model, kind, structure_scope, inputs)
    for i, target in enumerate(targets, start=1):
        start = time.perf_counter()
        if kind in ("unstructured", "nm"):
            crit = make_criterion(criterion, model, calibration)
            if kind == "unstructured":
                masks = exact_unstructured_masks(model, target, crit, scope, layers)
            else:
                masks = partial_nm_masks(model, nm[0], nm[1], target / final if final else 1.0, crit, layers)
            apply_masks(model, masks)
            achieved = _mask_fraction(model, masks)
        else:
            if i == 1 and kind != "blocks":
                # Nothing pruned yet: the target itself, as the build's plan predicted it, group by group. Through
                # the first group's rounding a coarser group (a GroupNorm's, 8 channels a unit) would under-prune
                # the rest.
                amount = target
            else:  # later steps: the share of what is left that brings the first group to the target
                units_now, _, _ = _structure_units(model, kind, structure_scope, inputs, pruned=i > 1)
                if kind == "blocks":
                    keep = max(1, units0 - int(math.floor(target * units0 + 1e-9)))
                else:
                    keep = kept_units(units0, target, width, round_to)
                amount = (units_now - keep) / units_now if units_now else 0.0
            if amount > 0:
                crit = make_criterion(criterion, model, calibration)
                prune_structured(model, kind, amount, crit, round_to=round_to, scope=structure_scope,
                                 example_inputs=inputs, calibration=calibration)
            achieved = 1.0 - _structure_units(model, kind, structure_scope, inputs, pruned=True)[0] / units0
        _finish_step(result, model, i, target, achieved, start, finetune)
    return result
