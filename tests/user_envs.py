"""A user's simulator with Gymnasium's API, and a policy trained for it: the tests of ``evaluate.env``.

``PointReach`` is a point robot on the unit square, moved by position deltas
(at most ``MAX_STEP`` per axis per step), that must come within ``RADIUS`` of
a goal it observes: observation ``{"state": [x, y, goal_x, goal_y]}``,
``info["is_success"]``, truncated after ``LIMIT`` steps. It needs no
``gymnasium``; :func:`make_gym_env` is the same task as a ``gymnasium.Env``
under Gymnasium's own ``TimeLimit`` wrapper.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from cloning import clone
from edgevla.spec import PolicySpec, TensorSpec

MAX_STEP, RADIUS, LIMIT, CHUNK = 0.1, 0.05, 60, 4


class PointReach:
    """Gymnasium's API, duck-typed."""

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self.action_space = SimpleNamespace(low=np.full(2, -MAX_STEP, np.float32),
                                            high=np.full(2, MAX_STEP, np.float32), dtype=np.float32)
        self.received: list[np.ndarray] = []  # every action step() was given, for the tests

    def reset(self, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.pos, self.goal = rng.uniform(0.05, 0.95, 2), rng.uniform(0.05, 0.95, 2)
        while np.linalg.norm(self.goal - self.pos) < 0.3:
            self.goal = rng.uniform(0.05, 0.95, 2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action)
        self.received.append(action.copy())
        self.pos = np.clip(self.pos + np.clip(action, -MAX_STEP, MAX_STEP), 0.0, 1.0)
        self.t += 1
        reached = bool(np.linalg.norm(self.goal - self.pos) <= RADIUS)
        return self._obs(), -float(np.linalg.norm(self.goal - self.pos)), reached, self.t >= self.limit, \
            {"is_success": reached}

    def _obs(self):
        return {"state": np.concatenate([self.pos, self.goal]).astype(np.float32)}


def make_reach_env() -> PointReach:
    return PointReach()


def expert_chunks(states: np.ndarray) -> np.ndarray:
    """Straight at the goal, at most MAX_STEP per axis, for CHUNK steps open loop: (B, CHUNK, 2)."""
    pos, goal = states[:, :2].astype(np.float64), states[:, 2:].astype(np.float64)
    out = np.empty((len(states), CHUNK, 2))
    for h in range(CHUNK):
        out[:, h] = np.clip(goal - pos, -MAX_STEP, MAX_STEP)
        pos = pos + out[:, h]
    return out.astype(np.float32)


class ReachPolicy(nn.Module):
    """A small MLP over the state, a chunk of CHUNK actions out (normalized: real = 0.1 * output)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (4,), low=0, high=1),),
                               action=TensorSpec("actions", (CHUNK, 2)), action_mean=(0.0, 0.0),
                               action_std=(MAX_STEP, MAX_STEP), control_rate_hz=20.0)
        self.trunk = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, CHUNK * 2)

    def forward(self, state):
        return self.head(self.trunk(state)).reshape(-1, CHUNK, 2)


_TRAINED: dict[str, ReachPolicy] = {}


def make_reach_policy() -> ReachPolicy:
    """A ReachPolicy regressed onto the expert (seeded; trained once per process, ~2 s)."""
    if "policy" not in _TRAINED:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)

        def batch():
            states = rng.uniform(0.0, 1.0, (256, 4)).astype(np.float32)
            return torch.from_numpy(states), torch.from_numpy(expert_chunks(states) / MAX_STEP)

        _TRAINED["policy"] = clone(ReachPolicy(), batch, steps=1500)
    return copy.deepcopy(_TRAINED["policy"])


def make_gym_env():
    """PointReach as a ``gymnasium.Env`` (Box spaces, Dict observations) under ``gymnasium.wrappers.TimeLimit``,
    with a ``hold_action`` that Gymnasium's wrappers do not forward as attributes."""
    import gymnasium as gym

    class GymPointReach(gym.Env):
        def __init__(self):
            self.inner = PointReach(limit=10**9)  # the TimeLimit wrapper truncates
            self.action_space = gym.spaces.Box(-MAX_STEP, MAX_STEP, (2,), np.float32)
            self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(0.0, 1.0, (4,), np.float32)})
            self.holds = 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.inner.reset(seed=seed)

        def step(self, action):
            return self.inner.step(action)

        def hold_action(self):
            self.holds += 1
            return np.zeros(2, np.float32)

    return gym.wrappers.TimeLimit(GymPointReach(), max_episode_steps=LIMIT)


class _Crashing(PointReach):
    def step(self, action):
        if self.t == 2:
            raise RuntimeError("the simulator crashed")
        return super().step(action)


class _Dying(PointReach):
    def step(self, action):
        if self.t == 2:
            import os

            os._exit(3)  # a simulator that takes its process down
        return super().step(action)


def make_crashing_env() -> PointReach:
    return _Crashing()


def make_dying_env() -> PointReach:
    return _Dying()


def make_no_env() -> dict:
    return {"reset": "not callable"}


class SlowPointReach(PointReach):
    """PointReach whose every step also costs ``EDGEVLA_TEST_STEP_MS`` milliseconds of CPU (a physics step, a
    rendered frame): for timing simulators stepped in worker processes."""

    def __init__(self):
        super().__init__()
        import os

        self.cost_s = float(os.environ.get("EDGEVLA_TEST_STEP_MS", "5")) / 1000.0

    def step(self, action):
        import time

        end = time.thread_time() + self.cost_s  # this thread's CPU time: a busy step, not a sleep
        x = np.ones(64)
        while time.thread_time() < end:
            x = np.sqrt(x + 1.0)
        return super().step(action)


def make_slow_reach_env() -> PointReach:
    return SlowPointReach()


class CameraReach(PointReach):
    """PointReach seen by a camera, for a visuomotor policy (``user_policies.ConvPolicy``: ``rgb`` (3, 24, 24) in
    [0, 1], ``state`` (5,), actions (4, 5) of which the first two move the point): the goal drawn red, the
    point green, channels first as the policy's spec says."""

    SIZE = 24

    def __init__(self):
        super().__init__()
        self.action_space = SimpleNamespace(low=np.full(5, -MAX_STEP, np.float32),
                                            high=np.full(5, MAX_STEP, np.float32), dtype=np.float32)

    def step(self, action):
        return super().step(np.asarray(action)[:2])

    def _obs(self):
        rgb = np.zeros((3, self.SIZE, self.SIZE), np.float32)
        for channel, (x, y) in ((0, self.goal), (1, self.pos)):
            rgb[channel, min(int(y * self.SIZE), self.SIZE - 1), min(int(x * self.SIZE), self.SIZE - 1)] = 1.0
        return {"rgb": rgb, "state": np.concatenate([self.pos, self.goal, [self.t / LIMIT]]).astype(np.float32)}


def make_camera_env() -> PointReach:
    return CameraReach()


def make_fragile_reach_policy() -> ReachPolicy:
    """The trained ReachPolicy with one hidden channel of the head's input held at 500 and its head weights 0:
    the float policy loses one channel of 128 and still reaches (tested), but a per-tensor int8 scale for the
    head's input, sized for 500, rounds the other channels (a few units at most) to a level or two."""
    policy = make_reach_policy()
    with torch.no_grad():
        policy.trunk[2].weight[FRAGILE_CHANNEL] = 0.0
        policy.trunk[2].bias[FRAGILE_CHANNEL] = 500.0
        policy.head.weight[:, FRAGILE_CHANNEL] = 0.0
    return policy


FRAGILE_CHANNEL = 7
