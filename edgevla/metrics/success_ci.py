"""How sure a closed-loop success rate is, and the loss between two policies run on the same episodes.

A gate that allows a 2 % loss judged on 200 episodes decides on a difference
of a few episodes: success on a fixed number of episodes is a binomial count,
and the same policy reads a few points apart on two sets of episodes. The
report therefore says the 95 % interval of each rate (Wilson's score
interval, which stays inside [0, 1] and is sound at 0 % and 100 %, where the
normal approximation collapses to a point) and of the loss, original minus
built. The two policies run the *same* seeded episodes, so the loss is a
paired difference: episodes both solve or both fail say nothing about it,
and its interval is Newcombe's hybrid score interval for paired proportions
(Newcombe 1998, "Improved confidence intervals for the difference between
binomial proportions based on paired data", method 10), built from the two
Wilson intervals and the correlation of the outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``successes`` of ``n`` (two-sided, ``z`` standard errors)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> tuple[float, float, float]:
    """``(d, low, high)``: the difference of success rates ``first - second`` over the same episodes and its
    interval (Newcombe's method 10)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_difference: need two equally long, non-empty outcome lists, got {len(first)} "
                         f"and {len(second)}")
    n = len(first)
    both = sum(1 for x, y in zip(first, second) if x and y)
    only_first = sum(1 for x, y in zip(first, second) if x and not y)
    only_second = sum(1 for x, y in zip(first, second) if y and not x)
    neither = n - both - only_first - only_second
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson(both + only_first, n, z)
    l2, u2 = wilson(both + only_second, n, z)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = 0.0 if margins == 0 else (both * neither - only_first * only_second) / math.sqrt(margins)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return d, max(-1.0, low), min(1.0, high)


def loss_verdict(low: float, high: float, budget: float) -> str:
    """What the loss's interval says of the budget: ``within`` (all of it at or under the budget), ``over`` (all
    of it above) or ``undecided`` (the budget inside it: more episodes would tell)."""
    if high <= budget:
        return "within"
    if low > budget:
        return "over"
    return "undecided"


def success_uncertainty(original: Sequence[bool], built: Sequence[bool], budget: float | None) -> dict[str, Any]:
    """The report's section: both rates and the loss (original − built) with their 95 % intervals, and the
    loss's verdict on ``budget`` (None without one)."""
    d, low, high = paired_difference(original, built)
    n = len(original)
    return {
        "episodes": n,
        "original": {"rate": sum(original) / n, "ci95": list(wilson(sum(original), n))},
        "built": {"rate": sum(built) / n, "ci95": list(wilson(sum(built), n))},
        "loss": d, "loss_ci95": [low, high], "budget": budget,
        "verdict": None if budget is None else loss_verdict(low, high, budget),
        "method": "Wilson score intervals; the loss: Newcombe's hybrid score interval for paired proportions "
                  "(method 10), both policies on the same episodes",
    }


def uncertainty_said(u: dict[str, Any]) -> str:
    """One sentence of the section for report.md and the console."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    o, b = u["original"], u["built"]
    text = (f"over {u['episodes']} episodes, 95 % intervals: original {pct(o['rate'])} % ({pct(o['ci95'][0])}–"
            f"{pct(o['ci95'][1])}), built {pct(b['rate'])} % ({pct(b['ci95'][0])}–{pct(b['ci95'][1])}); loss "
            f"{pct(u['loss'])} pt ({pct(u['loss_ci95'][0])} to {pct(u['loss_ci95'][1])})")
    if u["verdict"] == "within":
        return text + f": within the {pct(u['budget'])} pt budget with 95 % confidence"
    if u["verdict"] == "over":
        return text + f": over the {pct(u['budget'])} pt budget with 95 % confidence"
    if u["verdict"] == "undecided":
        return text + (f": the {pct(u['budget'])} pt budget lies inside the interval, so these episodes cannot "
                       "tell; more (evaluate.episodes) narrow it")
    return text
