"""A user's simulator as the closed-loop task: Gymnasium's API, one environment per episode of a batch.

``evaluate.env: mypkg.sim:make_env`` names a callable that returns an
environment with Gymnasium's API (``gymnasium`` itself is not needed)::

    reset(seed=int) -> (observation, info)
    step(action)    -> (observation, reward, terminated, truncated, info)

* observations: a dict with an array for each of the policy's inputs (the
  shape of its :class:`~edgevla.spec.TensorSpec`, no batch axis; other keys
  are ignored), or one array for a policy with one input;
* actions: one action ``(action_dim,)`` in real units, clipped to the
  environment's ``action_space`` bounds where it has them (as a robot's
  limits would);
* success: ``info["is_success"]`` (Gymnasium-Robotics, LeRobot's gym
  environments) or ``info["success"]`` at any step; an episode that ends
  saying neither is an error, since nothing else tells success apart;
* an episode ends when the environment says terminated or truncated, or after
  ``max_steps`` steps (then failed, unless it had succeeded);
* while the robot waits for a chunk it holds: the environment's
  ``hold_action()`` where it has one, else the last action sent (zeros
  before the first).

Where the tabletop task has a scripted expert (calibration and held-out
observations, distillation batches), a simulator has only the original
policy: its ``demonstrator`` rolls out seeded episodes (disjoint from the
evaluation's seeds, one stream per split) and the observations it meets, with
the actions it takes, are the data. Those actions are its own, so they teach
nothing a gradient could see (:attr:`EnvTask.expert` is False: Taylor pruning
needs a task's expert). With ``noise`` > 0 the training split's rollouts
execute the demonstrator's actions plus Gaussian noise of that many action
standard deviations (DART: the labels stay the clean actions), so that
distillation also sees states off the original's path, where a compressed
student drifts; calibration and held-out rollouts are always clean. It is a
trade (``benchmarks/closed_loop/env-noise-2026-12-06.md``): off-path states
help success without latency and cost precision at the far end of the chunk,
which an asynchronous loop executes, so the default is 0.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from ..errors import EdgevlaError
from ..spec import PolicySpec
from ..user_code import import_callable
from .dataset import Batch
from .env_workers import LocalEnvs, WorkerEnvs

# The first env seed of each split's rollouts: far from evaluate.seed's episodes (10_000 + i by default).
SPLIT_SEEDS = {"train": 1 << 24, "calibration": 2 << 24, "heldout": 3 << 24}
ROLLOUT_BATCH = 16  # episodes rolled out side by side for demonstrations
STREAM_POOL = 4096  # samples of the train split that the distillation stream cycles through

ActionFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class EnvTask:
    """The closed-loop task of a user's environment factory ``ref`` for a policy of ``spec``."""

    expert = False  # demonstrations are the original policy's own actions

    def __init__(self, ref: str, spec: PolicySpec, *, max_steps: int = 1000, execute: int = 4, noise: float = 0.0,
                 workers: int = 0):
        if max_steps < 1:
            raise EdgevlaError(f"evaluate.env_max_steps must be >= 1, got {max_steps}")
        if not noise >= 0:
            raise EdgevlaError(f"evaluate.env_noise must be >= 0, got {noise}")
        if workers < 0:
            raise EdgevlaError(f"evaluate.env_workers must be >= 0, got {workers}")
        self.ref, self.spec, self.max_steps, self.noise, self.workers = ref, spec, max_steps, noise, workers
        self.execute = max(1, min(execute, spec.chunk_size))
        self.what = f"evaluate.env {ref!r}"
        import_callable(ref, self.what)  # a bad reference fails here, in one line
        self._calls: LocalEnvs | WorkerEnvs | None = None
        self._splits: dict[tuple[str, int, int], Batch] = {}
        self.demonstrator: ActionFn | None = None  # real action chunks of the original policy

    @property
    def name(self) -> str:
        return self.ref

    @property
    def key(self) -> tuple:
        return ("env", self.ref, self.max_steps)

    @property
    def chunk_size(self) -> int:
        return self.spec.chunk_size

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    def batch_env(self, n: int, seed: int) -> "EnvBatch":
        """``n`` episodes stepped together, episode ``i`` reset with seed ``seed + i``; its environments in
        this process, or in ``workers`` processes (started at the first batch, kept until :meth:`close`)."""
        if self._calls is None:
            self._calls = (LocalEnvs(self.ref, self.what) if self.workers == 0
                           else WorkerEnvs(self.ref, self.what, self.workers))
        return EnvBatch(self, self._calls, n, seed)

    def keep_demonstrations_in(self, store: dict) -> None:
        """Keep the splits' rollouts in ``store``, shared with other tasks of the same environment, original policy
        and settings (the builds of a search: :class:`~edgevla.original_memo.OriginalMemo`)."""
        store.update(self._splits)
        self._splits = store

    def close(self) -> None:
        calls, self._calls = self._calls, None
        if calls is not None:
            calls.close()

    # demonstrations ---------------------------------------------------------------
    def split(self, name: str, n: int, seed: int = 0) -> Batch:
        """``n`` (observation, action chunk) pairs from the original policy's rollouts of split ``name``."""
        if name not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLIT_SEEDS)}")
        key = (name, n, seed)
        if key not in self._splits:
            self._splits[key] = self.rollouts(n, SPLIT_SEEDS[name] + seed * 100_003,
                                              noise=self.noise if name == "train" else 0.0)
        return self._splits[key]

    def stream(self, batch: int, seed: int = 0) -> Iterator[Batch]:
        """Endless shuffled batches from a pool of the train split's rollouts."""
        pool = self.split("train", max(STREAM_POOL, 4 * batch), seed)
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(pool.actions))
            for start in range(0, len(order) - batch + 1, batch):
                idx = order[start:start + batch]
                yield Batch({k: v[idx] for k, v in pool.observations.items()}, pool.actions[idx])

    def rollouts(self, n: int, seed: int, noise: float = 0.0) -> Batch:
        """The first ``n`` queries of the demonstrator rolling out episodes ``seed, seed + 1, ...``:
        each query's observation and the chunk it answered, the first ``execute`` actions executed (plus
        Gaussian noise of ``noise`` action standard deviations, seeded by ``seed``)."""
        if self.demonstrator is None:
            raise EdgevlaError(f"{self.what}: demonstrations need the original policy to roll out")
        rng = np.random.default_rng(seed)
        sigma = noise * np.asarray(self.spec.action_std, dtype=np.float64)
        observations: list[dict[str, np.ndarray]] = []
        actions: list[np.ndarray] = []
        have, episode = 0, 0
        while have < n:
            env = self.batch_env(ROLLOUT_BATCH, seed + episode)
            episode += ROLLOUT_BATCH
            while have < n and not env.done.all():
                obs = env.observe()
                chunk = np.asarray(self.demonstrator(obs), dtype=np.float32)
                live = ~env.done
                observations.append({k: v[live] for k, v in obs.items()})
                actions.append(chunk[live])
                have += int(live.sum())
                for i in range(self.execute):
                    action = chunk[:, i] if noise == 0 else chunk[:, i] + rng.normal(0.0, sigma, chunk[:, i].shape)
                    env.step(env.limit(action))
                    if env.done.all():
                        break
        return Batch({k: np.concatenate([o[k] for o in observations])[:n] for k in observations[0]},
                     np.concatenate(actions)[:n])


class EnvBatch:
    """``n`` episodes of a user's environments (indices ``0..n-1`` of the task's ``calls``), with the tabletop
    batch's interface (``observe``, ``step``, ``hold``, ``limit``; ``done``, ``success``, ``steps``)."""

    def __init__(self, task: EnvTask, calls: LocalEnvs | WorkerEnvs, n: int, seed: int):
        self.task, self.calls = task, calls
        self.done = np.zeros(n, dtype=bool)
        self.success = np.zeros(n, dtype=bool)
        self.steps = np.zeros(n, dtype=np.int64)
        self._last = np.zeros((n, task.action_dim))
        self._obs = [self._observation(obs) for obs in calls.reset([seed + i for i in range(n)])]
        low, high, dtype = calls.space()
        self._bounds = None if low is None else (low, high)
        self._dtype = np.dtype(dtype)

    def observe(self) -> dict[str, np.ndarray]:
        return {name: np.stack([o[name] for o in self._obs]) for name in self.task.spec.input_names}

    def hold(self) -> np.ndarray:
        """Each episode's action while no chunk is in: its environment's hold_action(), else its last."""
        out = self._last.copy()
        live = np.flatnonzero(~self.done).tolist()
        for i, action in zip(live, self.calls.hold(live)):
            if action is not None:
                out[i] = action
        return out

    def limit(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        return actions if self._bounds is None else np.clip(actions, *self._bounds)

    def step(self, actions: np.ndarray) -> None:
        """One action per episode still running; the ended ones ignore theirs."""
        live = np.flatnonzero(~self.done).tolist()
        sent = [(i, np.asarray(actions[i], dtype=self._dtype)) for i in live]
        for (i, action), (obs, terminated, truncated, said) in zip(sent, self.calls.step(sent)):
            self._obs[i] = self._observation(obs)
            self._last[i] = action
            self.steps[i] += 1
            self.success[i] |= bool(said)
            ended = terminated or truncated
            if ended and said is None:
                raise EdgevlaError(f"{self.task.what}: an episode ended and its info says neither 'is_success' nor "
                                   "'success': edgevla needs one of them to tell success from failure")
            self.done[i] = ended or self.steps[i] >= self.task.max_steps

    def _observation(self, obs: Any) -> dict[str, np.ndarray]:
        """The policy's inputs out of one observation, cast to their dtypes, shapes checked."""
        spec, what = self.task.spec, self.task.what
        if not isinstance(obs, dict):
            if len(spec.observations) != 1:
                raise EdgevlaError(f"{what}: observations must be a dict with the policy's inputs "
                                   f"({', '.join(spec.input_names)}), got {type(obs).__name__}")
            obs = {spec.observations[0].name: obs}
        out = {}
        for t in spec.observations:
            if t.name not in obs:
                raise EdgevlaError(f"{what}: the observation has no {t.name!r} (it has {', '.join(map(str, obs))}); "
                                   f"the policy takes {', '.join(spec.input_names)}")
            value = np.asarray(obs[t.name], dtype=t.dtype)
            if value.shape != t.shape:
                raise EdgevlaError(f"{what}: observation {t.name!r} has shape {value.shape}, the policy's spec "
                                   f"declares {t.shape}")
            out[t.name] = value
        return out
