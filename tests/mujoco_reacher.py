"""A physics simulator as the closed-loop task: MuJoCo's two-joint reacher (Gymnasium's ``Reacher-v5``), and a policy
trained for it by behaviour cloning, the way a team wires its own simulator into ``evaluate.env``.

The arm is torque-controlled at 50 Hz (two motors, ``[-1, 1]`` each, gear 200; joints with armature and damping),
its fingertip must reach a target drawn anywhere within 0.2 m of the base. ``Reacher-v5`` has no notion of success;
:class:`ReacherTask` adds one, as a user's factory would: the fingertip within 1 cm of the target with both joints
slower than 1 rad/s, which ends the episode (``terminated``, ``info["is_success"]``); Gymnasium's ``TimeLimit``
still ends it after 50 steps (1 s). While a chunk is late the robot holds with zero torque (``hold_action``): the
joints' damping brings the arm to rest, where repeating the last torque would keep accelerating it.

:func:`expert` is an analytic controller (inverse kinematics to the nearer elbow solution, then PD on the joint
errors, critically damped); :func:`make_reacher_policy` regresses an MLP onto its chunks over states of noisy expert
rollouts (labels: the clean expert's next ``CHUNK`` actions from each state, simulated from a copy of the state).
Needs ``mujoco`` (the test extra) and Gymnasium's MuJoCo environments.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from cloning import clone
from edgevla.spec import PolicySpec, TensorSpec

CHUNK = 4
LIMIT = 50  # Reacher-v5's TimeLimit: 50 steps of 20 ms
LINKS = (0.1, 0.11)  # base to elbow, elbow to fingertip (reacher.xml)
GEAR = 200.0
OMEGA = 15.0  # the expert's joint-space natural frequency (rad/s)
REACHED, AT_REST = 0.01, 1.0  # metres to the target, rad/s per joint
# Observation layout of Reacher-v5: cos q (2), sin q (2), target xy (2), joint velocities (2), fingertip - target xy.
QVEL = slice(6, 8)
TO_TARGET = slice(8, 10)


def make_reacher_gym_env():
    import gymnasium as gym

    return gym.make("Reacher-v5")


class ReacherTask:
    """``Reacher-v5`` with a success: Gymnasium's API, reached-and-at-rest as ``info["is_success"]``."""

    def __init__(self):
        self.env = make_reacher_gym_env()
        self.action_space = self.env.action_space

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reached = bool(np.linalg.norm(obs[TO_TARGET]) < REACHED and np.abs(obs[QVEL]).max() < AT_REST)
        return obs, reward, terminated or reached, truncated, {**info, "is_success": reached}

    def hold_action(self):
        return np.zeros(2, np.float32)


def make_reacher_env() -> ReacherTask:
    return ReacherTask()


def expert(obs: np.ndarray, omega: float = OMEGA) -> np.ndarray:
    """Torques for observations ``(..., 10)``: inverse kinematics to the joint angles of the elbow solution nearer
    the arm's, then ``(omega² e - (2 omega - 1) q̇) / gear`` (the joints' unit damping already supplies 1 of the
    2 omega), clipped to the motors' range."""
    q = np.arctan2(obs[..., 2:4], obs[..., 0:2])
    goal, qvel = obs[..., 4:6], obs[..., QVEL]
    l1, l2 = LINKS
    r2 = np.clip((goal ** 2).sum(-1), (l2 - l1) ** 2 + 1e-9, (l1 + l2) ** 2 - 1e-9)
    elbow = np.arccos(np.clip((r2 - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0))
    errors = []
    for q1 in (elbow, -elbow):
        q0 = np.arctan2(goal[..., 1], goal[..., 0]) - np.arctan2(l2 * np.sin(q1), l1 + l2 * np.cos(q1))
        e = np.stack([q0, q1], -1) - q
        e[..., 0] = (e[..., 0] + np.pi) % (2 * np.pi) - np.pi  # the shoulder turns freely: the short way round
        errors.append(e)
    nearer = (np.abs(errors[0]).sum(-1) <= np.abs(errors[1]).sum(-1))[..., None]
    e = np.where(nearer, errors[0], errors[1])
    return np.clip((omega * omega * e - (2 * omega - 1) * qvel) / GEAR, -1.0, 1.0).astype(np.float32)


def expert_demonstrations(n: int, seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (observation, expert chunk) pairs from expert rollouts executing noisy actions (per-episode noise
    scale drawn from ``[0, noise]``), each label the clean expert's next ``CHUNK`` actions from that state."""
    sim = make_reacher_gym_env().unwrapped  # no wrappers: the rollouts set states directly
    rng = np.random.default_rng(seed)
    observations, chunks = [], []
    episode = 0
    while len(observations) < n:
        obs, _ = sim.reset(seed=seed * 1_000_003 + episode)
        episode += 1
        sigma = rng.uniform(0.0, noise)
        for _ in range(LIMIT):
            qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
            chunk, ahead = [], obs
            for _ in range(CHUNK):
                chunk.append(expert(ahead))
                ahead = sim.step(chunk[-1])[0]
            sim.set_state(qpos, qvel)
            observations.append(obs)
            chunks.append(np.stack(chunk))
            obs = sim.step(np.clip(chunk[0] + rng.normal(0.0, sigma, 2), -1.0, 1.0))[0]
    return np.asarray(observations[:n], np.float32), np.asarray(chunks[:n], np.float32)


class ReacherPolicy(nn.Module):
    """An MLP over the 10 observations (joint velocities scaled to ~unit range inside), a chunk of CHUNK torques."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (10,), low=-1.0, high=1.0),),
                               action=TensorSpec("torques", (CHUNK, 2)), action_mean=(0.0, 0.0),
                               action_std=(1.0, 1.0), control_rate_hz=50.0)
        scale = torch.ones(10)
        scale[QVEL] = 0.1
        scale[4:6] = scale[TO_TARGET] = 5.0
        self.register_buffer("scale", scale)
        self.trunk = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.head = nn.Linear(256, CHUNK * 2)

    def forward(self, state):
        return self.head(self.trunk(state * self.scale)).reshape(-1, CHUNK, 2)


_TRAINED: dict[str, ReacherPolicy] = {}


def make_reacher_policy() -> ReacherPolicy:
    """A ReacherPolicy cloned from the expert (seeded; trained once per process, ~10 s on 2 cores)."""
    if "policy" not in _TRAINED:
        states, chunks = expert_demonstrations(20_000, seed=1)
        x, y = torch.from_numpy(states), torch.from_numpy(chunks)
        torch.manual_seed(0)

        def batch():
            idx = torch.randint(0, len(x), (256,))
            return x[idx], y[idx]

        _TRAINED["policy"] = clone(ReacherPolicy(), batch, steps=3000)
    return copy.deepcopy(_TRAINED["policy"])
