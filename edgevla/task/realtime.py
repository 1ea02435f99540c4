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

from dataclasses import dataclass
from typing import Any, Callable

from ..control import ChunkController, ControlStats, PacedLoop, TemporalEnsemble, ThreadedInference, run_paced
from .evaluate import ActionFn, ClosedLoopTask, EvalResult, Tally


@dataclass
class RealtimeResult:
    """Success over the episodes, and what the loop saw over all of them (:class:`~edgevla.control.PacedLoop`:
    ticks held, chunk delays, command times, overruns)."""

    result: EvalResult
    schedule: dict[str, Any]  # {"schedule": sync|async|ensemble, "execute", "lead"} or {"ensemble_m"}
    loop: PacedLoop

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), **self.schedule, **self.loop.to_dict(),
                "held_per_episode": self.loop.stats.held / self.result.episodes}


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
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    execute = max(1, min(execute, task.chunk_size))
    schedule = ({"schedule": "ensemble", "ensemble_m": ensemble} if ensemble is not None else
                {"schedule": "async" if lead else "sync", "execute": execute, "lead": lead})
    warm = task.batch_env(1, seed).observe()
    for _ in range(warmup):
        policy(warm)
    loops = PacedLoop(rate_hz, ControlStats(), [])
    tally = Tally()
    for i in range(episodes):
        env = task.batch_env(1, seed + i)
        controller = (TemporalEnsemble(policy, m=ensemble, inference=ThreadedInference()) if ensemble is not None
                      else ChunkController(policy, execute=execute, lead=lead, inference=ThreadedInference()))
        tally.start(env)
        with controller:
            loop = run_paced(controller, env.observe, rate_hz, max_ticks, command=tally.command)
        tally.end()
        loops.add(loop)
        if progress is not None:
            progress(1)
    return RealtimeResult(tally.result(), schedule, loops)
