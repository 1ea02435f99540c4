"""Closed-loop evaluation: the policy drives the end-effector, the task judges.

Tensor error says how close two models' outputs are; only closed-loop success
says whether the robot still does its job. The evaluator runs seeded batches of
episodes, queries the policy for an action chunk, executes the first
``execute`` actions of it (receding horizon, as ACT-style policies run on
robots), and re-queries until every episode has ended: the schedule of
:class:`edgevla.control.ChunkController`, which a robot's loop runs too, with
the query's latency in control ticks simulated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Hashable, Iterator, Protocol, Sequence

import numpy as np

from ..metrics.success_ci import wilson
from .tabletop import TaskConfig

# obs dict -> real actions (B, H, action_dim)
ActionFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class BatchEnv(Protocol):
    """Episodes stepped together: the tabletop's, or a user's simulator's (:mod:`edgevla.task.user_env`)."""

    done: np.ndarray
    success: np.ndarray
    steps: np.ndarray

    def observe(self) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> None: ...

    def hold(self) -> np.ndarray: ...

    def limit(self, action: np.ndarray) -> np.ndarray: ...


class ClosedLoopTask(Protocol):
    """What the evaluator needs of a task: its chunk and action sizes, and seeded batches of episodes; and what
    a build needs: its name (reports), a key that tells it from others (results kept), demonstrations
    (``split``, ``stream``; ``expert``: whether their actions are an expert's), ``close``."""

    chunk_size: int
    action_dim: int
    expert: bool

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> Hashable: ...

    def batch_env(self, n: int, seed: int) -> BatchEnv: ...

    def split(self, name: str, n: int, seed: int = 0) -> Any: ...

    def stream(self, batch: int, seed: int = 0) -> Iterator[Any]: ...

    def close(self) -> None: ...


#: Success rates are fractions k/n, and a floor such as ``before - budget`` may round a hair past a rate that meets
#: it exactly (0.985 - 0.965 > 0.02 in floating point): every comparison of a rate with a floor allows this much.
RATE_SLACK = 1e-9


def meets(rate: float, floor: float) -> bool:
    """Whether success ``rate`` reaches ``floor`` (fractions), up to rounding: the one test for every gate,
    budget and tolerance."""
    return rate >= floor - RATE_SLACK


@dataclass
class EvalResult:
    episodes: int
    success_rate: float
    mean_steps: float  # control steps per episode (successes end early)
    smoothness: float  # mean |a_t - a_{t-1}| of executed actions; lower is smoother
    successes: list[bool]

    @property
    def success_ci95(self) -> tuple[float, float]:
        """The success rate's 95 % interval (Wilson's score interval over these episodes)."""
        return wilson(sum(self.successes), self.episodes)

    def to_dict(self, with_episodes: bool = False) -> dict:
        d = asdict(self)
        d["success_ci95"] = list(self.success_ci95)
        if not with_episodes:
            d.pop("successes")
        return d


def evaluate(policy: ActionFn, task: ClosedLoopTask, episodes: int = 200, seed: int = 10_000,
             execute: int = 4, batch: int = 50, blank: str | None = None,
             progress: Callable[[int], None] | None = None, latency_ticks: int = 0,
             asynchronous: bool = False, ensemble: float | None = None,
             latency_draws: Sequence[int] | None = None) -> EvalResult:
    """Success rate of ``policy`` over ``episodes`` seeded episodes.

    The same ``seed`` gives the same scenes and start states to every policy,
    so two models are compared on identical episodes. ``latency_ticks``: each
    query's chunk reaches the robot that many control ticks after its
    observation (:class:`~edgevla.control.SimulatedLatency`); meanwhile the
    robot holds (no motion, steps still counted), or with ``asynchronous``
    executes the previous chunk, the next query starting ``latency_ticks``
    before it is spent (:class:`~edgevla.control.ChunkController`). With
    ``ensemble`` = m the chunks are not executed in turn but temporally
    ensembled, a query as soon as the last is in (:class:`~edgevla.control.TemporalEnsemble`;
    ``execute`` and ``asynchronous`` do not apply). With ``latency_draws`` each
    query's latency is drawn from these ticks instead (measured latencies: their
    jitter too; :class:`~edgevla.control.SampledLatency`, seeded per batch of
    episodes, one draw a query, which the batch's episodes share),
    ``latency_ticks`` still being the lead of an asynchronous schedule.
    """
    from ..control import ChunkController, SampledLatency, SimulatedLatency, TemporalEnsemble

    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    execute = max(1, min(execute, task.chunk_size))

    def as_float64(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(policy(obs), dtype=np.float64)

    tally = Tally()
    for start in range(0, episodes, batch):
        n = min(batch, episodes - start)
        env = task.batch_env(n, seed + start)
        inference = (SimulatedLatency(latency_ticks) if latency_draws is None
                     else SampledLatency(latency_draws, seed=seed + start))
        controller = (TemporalEnsemble(as_float64, m=ensemble, inference=inference) if ensemble is not None else
                      ChunkController(as_float64, execute=execute, lead=latency_ticks if asynchronous else 0,
                                      inference=inference))

        def observe() -> dict[str, np.ndarray]:
            obs = env.observe()
            if blank is not None:
                obs[blank] = np.zeros_like(obs[blank])
            return obs

        tally.start(env)
        while not env.done.all():
            tally.command(controller.step(observe))
        tally.end()
        if progress is not None:
            progress(n)
    return tally.result()


class Tally:
    """Episodes' outcomes as the robot's commands go out: success, steps, and the smoothness of the actions."""

    def __init__(self) -> None:
        self.successes: list[bool] = []
        self.steps: list[int] = []
        self.jerk_sum, self.jerk_n = 0.0, 0

    def start(self, env: BatchEnv) -> None:
        self.env, self.prev = env, None

    def command(self, action: np.ndarray | None) -> bool:
        """One tick's action (``None``: hold) to the episodes still running; True when all have ended."""
        env = self.env
        live = ~env.done
        a = env.hold() if action is None else env.limit(action)
        if self.prev is not None:
            self.jerk_sum += float(np.linalg.norm(a[live] - self.prev[live], axis=-1).sum())
            self.jerk_n += int(live.sum())
        env.step(a)
        self.prev = a
        return bool(env.done.all())

    def end(self) -> None:
        self.successes += self.env.success.tolist()
        self.steps += self.env.steps.tolist()

    def result(self) -> EvalResult:
        return EvalResult(episodes=len(self.successes), success_rate=float(np.mean(self.successes)),
                          mean_steps=float(np.mean(self.steps)), smoothness=self.jerk_sum / max(self.jerk_n, 1),
                          successes=self.successes)


def random_policy(cfg: TaskConfig, seed: int = 0) -> ActionFn:
    """Uniformly random action chunks: the floor every policy must beat."""
    rng = np.random.default_rng(seed)

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        b = len(obs["state"])
        return rng.uniform(-cfg.max_step, cfg.max_step, size=(b, cfg.chunk_size, 2))

    return act

