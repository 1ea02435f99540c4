"""How many units each group gives up so that a structured pass removes a given share of parameters.

A build asks for parameters (``prune.amount``: a fraction of the scope's), a
structured pass removes units (neurons, heads, channels), and the kept
channels are rounded up to a multiple of the target's tensor-core width. One
fraction of every group's units reaches the goal only as closely as that
rounding allows: a CNN whose groups are 32 channels kept in multiples of 16
can give up 0 or 50 % of every group, so 30 % of the parameters became 42 %.

:func:`amount_for_parameters` first finds, by bisection on the dependency
analysis's prediction of removed parameters, the smallest uniform fraction
that reaches the goal. If that overshoots by more than ``slack``, the groups
give up steps of ``round_to`` channels instead, each group's cheapest step
first by its share of the group's importance per parameter it frees, until
the goal is reached; the last step taken is the one that overshoots least.
No group loses more than the uniform fraction would take from it, or than its
first step where that is coarser. The units themselves are still chosen by
the build's criterion when the pass runs; the allocation only sets how many
per group.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import EdgevlaError
from .graph import DependencyGraph, Group
from .importance import GroupImportance, MagnitudeImportance
from .structured import Amount, groups_of, kept_units, plan

#: Overshoot of the goal, as a share of the scope's parameters, that keeps one fraction for every group.
UNIFORM_SLACK = 0.01


def amount_for_parameters(graph: DependencyGraph, structure: str, goal: float, total: int, scope: str | None,
                          round_to: int, slack: float = UNIFORM_SLACK) -> Amount:
    """The structured ``amount`` that removes at least ``goal`` of the ``total`` parameters under ``scope``
    (raises when even the most a structure can remove falls short)."""
    scorer = _ScoredOnce()

    def removed(amount: Amount) -> int:
        return plan(graph, structure, amount, scorer, round_to, scope)[2]

    wanted = goal * total
    most = removed(0.999)
    if most < wanted:
        where = f"under prune.scope {scope!r}" if scope else "in the whole policy"
        raise EdgevlaError(f"structured pruning of {structure} {where} can remove at most {most / total:.0%} of the "
                           f"parameters, asked for {goal:.0%}: choose another prune.structure or a smaller amount")
    low, high = 0.0, 0.999
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if removed(mid) >= wanted else (mid, high)
    overshoot = removed(high) - wanted
    if overshoot <= slack * total:
        return high
    per_group = _per_group(graph, structure, high, wanted, slack * total, removed, scorer, round_to, scope)
    reached = removed(per_group)
    return per_group if wanted <= reached < wanted + overshoot else high


class _ScoredOnce(GroupImportance):
    """Magnitude scores of each group, computed once: the search plans the same unchanged model many times."""

    def __init__(self):
        super().__init__(MagnitudeImportance())
        self._scores: dict[str, torch.Tensor] = {}

    def __call__(self, group: Group) -> torch.Tensor:
        if group.name not in self._scores:
            self._scores[group.name] = super().__call__(group)
        return self._scores[group.name]


def _levels(group: Group, round_to: int) -> list[int]:
    """The unit counts a group can keep, from all of them down: kept channels a multiple of ``round_to``."""
    return [group.units] + [k for k in range(group.units - 1, 0, -1) if (k * group.unit_width) % round_to == 0]


def _per_group(graph: DependencyGraph, structure: str, uniform: float, wanted: float, slack: float, removed,
               scorer: GroupImportance, round_to: int, scope: str | None) -> dict[str, float]:
    """Steps of ``round_to`` channels taken from the groups, least importance per freed parameter first, until
    ``wanted`` parameters go (within ``slack`` parameters where the steps allow); no group loses more than
    ``uniform`` takes from it, or than its first step where that is coarser."""
    steps: dict[str, list[tuple[int, int, float]]] = {}  # group -> its steps: (kept after, parameters, cost)
    units: dict[str, int] = {}
    for g in groups_of(graph, structure, scope):
        levels = _levels(g, round_to)
        floor = min(kept_units(g.units, uniform, g.unit_width, round_to), levels[min(1, len(levels) - 1)])
        levels = [k for k in levels if k >= floor]
        if len(levels) < 2:
            continue
        scores = scorer(g)
        ranked = torch.argsort(scores, stable=True)
        scores = scores[ranked]
        whole = float(scores.sum()) or 1.0
        units[g.name] = g.units
        gone = [0] + [g.removed_parameters(ranked[:g.units - k].tolist()) for k in levels[1:]]  # at each level
        steps[g.name] = []
        for j, (before, after) in enumerate(zip(levels, levels[1:])):
            freed = gone[j + 1] - gone[j]
            share = float(scores[g.units - before:g.units - after].sum()) / whole
            steps[g.name].append((after, freed, share / max(freed, 1)))
    amount: dict[str, float] = {}
    reached = 0

    def take(name: str) -> None:
        nonlocal reached
        after = steps[name].pop(0)[0]
        if not steps[name]:
            del steps[name]
        amount[name] = (units[name] - after) / units[name]
        reached = removed(amount)

    # Cheapest first, passing over a step that would overshoot by more than the slack (and that group's
    # later steps); then, if still short, the step that reaches the goal with the least overshoot.
    passed: set[str] = set()
    while reached < wanted:
        open_steps = [n for n in steps if n not in passed]
        if not open_steps:
            break
        name = min(open_steps, key=lambda n: (steps[n][0][2], n))
        if reached + steps[name][0][1] <= wanted + slack:
            take(name)
        else:
            passed.add(name)
    while reached < wanted and steps:
        needed = wanted - reached
        reaching = [n for n in steps if steps[n][0][1] >= needed]
        take(min(reaching, key=lambda n: (steps[n][0][1], steps[n][0][2], n)) if reaching
             else max(steps, key=lambda n: (steps[n][0][1], -steps[n][0][2])))
    return amount


def amount_said(amount: Amount) -> str:
    """``"25% of each group's units"``, or how the fractions spread over the groups (a group the mapping does not
    name keeps its units)."""
    if not isinstance(amount, Mapping):
        return f"{amount:.0%} of each group's units"
    counts: dict[float, int] = {}
    for fraction in amount.values():
        counts[round(fraction, 4)] = counts.get(round(fraction, 4), 0) + 1
    spread = ", ".join(f"{n} group{'s' if n > 1 else ''} {f:.0%}" for f, n in sorted(counts.items(), reverse=True))
    return f"a fraction of the units per group: {spread}"
