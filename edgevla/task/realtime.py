"""Closed-loop success in real time: the policy at its own speed on this computer, the task stepped at
the policy's control rate.

The evaluator (:func:`~edgevla.task.evaluate`) models a query's latency in
control ticks, fixed or drawn from measured samples, and steps 50 episodes in
lockstep. Here nothing is modelled: each episode runs alone (batch 1, as on
the robot) in a loop paced at the control rate
(:func:`~edgevla.control.run_paced`), the policy in a worker thread
(:class:`~edgevla.control.ThreadedInference`), so whatever a query takes on
this machine (its kernels, threads, the other processes, the Python between)
is what the robot gets, jitter and all. The task's step is the robot's side of
each tick: a simulator slower than the period makes ticks overrun, and those
are counted (their episodes did not run in real time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .evaluate import ActionFn, ClosedLoopTask, EvalResult, Tally


@dataclass
class RealtimeResult:
    """Success over the episodes, and what the loop saw: ticks held, chunk delays, command times, overruns."""

    result: EvalResult
    rate_hz: float
    schedule: dict[str, Any]  # {"schedule": sync|async|ensemble, "execute", "lead"} or {"ensemble_m"}
    ticks: int = 0
    held: int = 0  # ticks without an action (the first chunk not in yet, or the next one late)
    chunks: int = 0  # chunks that arrived and were used
    delay_ticks_sum: int = 0
    max_delay_ticks: int = 0
    overran: int = 0
    command_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = np.asarray(self.command_ms)
        return {**self.result.to_dict(), "rate_hz": self.rate_hz, **self.schedule, "ticks": self.ticks,
                "held": self.held, "held_per_episode": self.held / self.result.episodes, "chunks": self.chunks,
                "mean_delay_ticks": self.delay_ticks_sum / max(self.chunks, 1),
                "max_delay_ticks": self.max_delay_ticks, "overran": self.overran,
                "command_ms": {"p50": float(np.percentile(out, 50)), "p99": float(np.percentile(out, 99)),
                               "max": float(out.max())}}


def evaluate_realtime(policy: ActionFn, task: ClosedLoopTask, rate_hz: float, *, episodes: int = 50,
                      seed: int = 10_000, execute: int = 4, lead: int = 0, ensemble: float | None = None,
                      warmup: int = 3, max_ticks: int = 100_000,
                      progress: Callable[[int], None] | None = None) -> RealtimeResult:
    """``episodes`` seeded episodes, one at a time in real time at ``rate_hz``: episode ``i`` is the task's batch
    of one seeded ``seed + i``, as :func:`~edgevla.task.evaluate` with ``batch=1`` runs them (simulated latency,
    the same episodes).

    The policy answers ``warmup`` queries first, so that the first episode does not pay for a cold start.
    ``lead`` > 0 is the asynchronous schedule (the next query that many ticks before the chunk is spent),
    ``ensemble`` = m temporal ensembling (``execute`` and ``lead`` do not apply).
    """
    from ..control import ChunkController, TemporalEnsemble, ThreadedInference, run_paced

    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    execute = max(1, min(execute, task.chunk_size))
    schedule = ({"schedule": "ensemble", "ensemble_m": ensemble} if ensemble is not None else
                {"schedule": "async" if lead else "sync", "execute": execute, "lead": lead})
    warm = task.batch_env(1, seed).observe()
    for _ in range(warmup):
        policy(warm)
    out = RealtimeResult(EvalResult(0, 0.0, 0.0, 0.0, []), rate_hz, schedule)
    tally = Tally()
    for i in range(episodes):
        env = task.batch_env(1, seed + i)
        controller = (TemporalEnsemble(policy, m=ensemble, inference=ThreadedInference()) if ensemble is not None
                      else ChunkController(policy, execute=execute, lead=lead, inference=ThreadedInference()))
        tally.start(env)
        with controller:
            loop = run_paced(controller, env.observe, rate_hz, max_ticks, command=tally.command)
        tally.end()
        stats = loop.stats
        out.ticks += stats.ticks
        out.held += stats.held
        out.chunks += stats.chunks
        out.delay_ticks_sum += stats.delay_ticks_sum
        out.max_delay_ticks = max(out.max_delay_ticks, stats.max_delay_ticks)
        out.overran += loop.overran
        out.command_ms += loop.command_ms
        if progress is not None:
            progress(1)
    out.result = tally.result()
    return out
