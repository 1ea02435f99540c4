"""How much latency a policy tolerates in closed loop.

A query's chunk reaches the robot some control ticks after its observation
(:func:`edgevla.control.latency_ticks`); how much that costs depends on the
policy and on the schedule that runs it (``sync`` holds, ``async`` executes
the previous chunk meanwhile, ``ensemble`` averages every chunk's prediction).
A compressed policy can keep its success at zero latency and lose it at two
ticks, asynchronous: that schedule executes the far end of each chunk, which
a zero-latency loop never does. :func:`latency_tolerance` measures a success
curve over 0..``max_ticks`` ticks of latency for each schedule, on the same
seeded episodes at every point, and the most ticks a policy tolerates: the
largest ``k`` with success at or above the floor at every latency up to ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .evaluate import ActionFn, ClosedLoopTask, EvalResult, evaluate, meets

SCHEDULES = ("sync", "async", "ensemble")


@dataclass(frozen=True)
class ToleranceCurve:
    """One schedule's success at 0, 1, ... ticks of latency, and the ticks tolerated."""

    schedule: str
    success: tuple[float, ...]
    mean_steps: tuple[float, ...]
    floor: float

    @property
    def tolerated(self) -> int | None:
        """The most ticks ``k`` with success >= floor at every latency up to ``k``; None: not even at 0."""
        return tolerated_ticks(self.success, self.floor)

    @property
    def probed_to_the_end(self) -> bool:
        """Success held over every latency probed: the policy may tolerate more than the curve shows."""
        return self.tolerated == len(self.success) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"success": list(self.success), "mean_steps": list(self.mean_steps), "tolerated": self.tolerated,
                "at_least": self.probed_to_the_end}


def tolerated_ticks(success: Iterable[float], floor: float) -> int | None:
    """The largest index ``k`` with ``success[j] >= floor`` for every ``j <= k``; None when ``success[0]`` is
    below the floor."""
    tolerated = None
    for ticks, rate in enumerate(success):
        if not meets(rate, floor):
            break
        tolerated = ticks
    return tolerated


def tolerated_said(tolerated: int | None, at_least: bool) -> str:
    """Ticks tolerated as reports and commands say them: ``none``, ``2``, or ``≥ 4`` where success held to the
    end of the probe."""
    return "none" if tolerated is None else f"{'≥ ' if at_least else ''}{tolerated}"


def loop_of(schedule: str, ticks: int, execute: int, ensemble_m: float) -> dict[str, Any]:
    """The evaluator's arguments for ``schedule`` with each chunk ``ticks`` late."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return {"execute": execute, "latency_ticks": ticks, "asynchronous": schedule == "async",
            "ensemble": ensemble_m if schedule == "ensemble" else None}


def same_loop(schedule: str, ticks: int) -> tuple[str, int]:
    """A key equal for loops that run identically: asynchronous with no latency starts no query early, so it
    is the synchronous loop."""
    return ("sync" if schedule == "async" and ticks == 0 else schedule), ticks


def latency_tolerance(policy: ActionFn, task: ClosedLoopTask, *, max_ticks: int, floor: float,
                      schedules: Iterable[str] = SCHEDULES, episodes: int = 200, seed: int = 10_000,
                      execute: int = 4, ensemble_m: float = 0.01,
                      known: Mapping[tuple[str, int], EvalResult] | None = None,
                      progress: Callable[[int], None] | None = None) -> dict[str, ToleranceCurve]:
    """Each schedule's :class:`ToleranceCurve` over 0..``max_ticks`` ticks of latency.

    Every point runs the same ``episodes`` seeded episodes. ``known`` holds results already measured on them
    with these settings, keyed ``(schedule, ticks)`` (the build's gate, say): they are not run again.
    ``progress`` is advanced by the episodes of each point.
    """
    if max_ticks < 0:
        raise ValueError(f"max_ticks must be >= 0, got {max_ticks}")
    results = {same_loop(*key): result for key, result in (known or {}).items()}
    curves = {}
    for schedule in schedules:
        points = []
        for ticks in range(max_ticks + 1):
            key = same_loop(schedule, ticks)
            if key not in results:
                results[key] = evaluate(policy, task, episodes=episodes, seed=seed,
                                        **loop_of(schedule, ticks, execute, ensemble_m))
            if progress is not None:
                progress(episodes)
            points.append(results[key])
        curves[schedule] = ToleranceCurve(schedule, tuple(r.success_rate for r in points),
                                          tuple(r.mean_steps for r in points), floor)
    return curves
