"""Seeded demonstrations of the tabletop task: (observation, expert action chunk).

The expert is memoryless (its action depends only on where the end-effector
and the target are), so a label is correct at *any* end-effector position.
States are drawn the way a noisy closed loop visits them: mostly anywhere on
the table, partly close around the target where the final approach happens.
This covers the states a learned policy drifts into, the role DAgger-style
noise injection plays for real robots.

Splits draw from disjoint seed streams, so no held-out scene is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .tabletop import Scenes, TaskConfig, expert_chunk, render, sample_scenes

SPLIT_SEEDS = {"train": 0, "calibration": 1, "heldout": 2}


@dataclass
class Batch:
    observations: dict[str, np.ndarray]  # image, instruction, state
    actions: np.ndarray  # (B, H, 2) real (unnormalized) expert actions
    # (B, 2) where the named object is, in table coordinates (camera 0's pixel
    # frame). Privileged: a policy never sees it; training may use it as an
    # auxiliary target.
    target_xy: np.ndarray | None = None


def _states(cfg: TaskConfig, scenes: Scenes, rng: np.random.Generator, near_fraction: float) -> np.ndarray:
    batch = len(scenes.target)
    eff = rng.uniform(0.0, 1.0, size=(batch, 2))
    near = rng.random(batch) < near_fraction
    eff[near] = scenes.target_xy[near] + rng.normal(0.0, 0.08, size=(near.sum(), 2))
    return np.clip(eff, 0.0, 1.0)


def make_batch(cfg: TaskConfig, batch: int, rng: np.random.Generator, near_fraction: float = 0.3,
               blank: str | None = None) -> Batch:
    """One batch of demonstrations.

    ``blank`` ("image" or "instruction") zeroes that input: the ablations that
    show the task needs every input.
    """
    scenes = sample_scenes(cfg, batch, rng)
    eff = _states(cfg, scenes, rng, near_fraction)
    obs = {
        "image": np.stack([render(cfg, scenes, eff, c) for c in range(cfg.n_cameras)], axis=1),
        "instruction": scenes.instruction,
        "state": eff.astype(np.float32),
    }
    if blank == "image":
        obs["image"] = np.zeros_like(obs["image"])
    elif blank == "instruction":
        obs["instruction"] = np.zeros_like(obs["instruction"])
    elif blank is not None:
        raise ValueError(f"blank must be 'image' or 'instruction', got {blank!r}")
    return Batch(obs, expert_chunk(cfg, eff, scenes.target_xy), scenes.target_xy.astype(np.float32))


def split_rng(split: str, seed: int = 0) -> np.random.Generator:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_SEEDS)}")
    return np.random.default_rng([SPLIT_SEEDS[split], seed])


def stream(cfg: TaskConfig, batch: int, seed: int = 0, blank: str | None = None) -> Iterator[Batch]:
    """An endless, seeded stream of training batches."""
    rng = split_rng("train", seed)
    while True:
        yield make_batch(cfg, batch, rng, blank=blank)


def fixed_split(cfg: TaskConfig, split: str, n: int, seed: int = 0) -> Batch:
    """A fixed set of ``n`` samples (calibration or held-out observations)."""
    return make_batch(cfg, n, split_rng(split, seed))


def action_statistics(cfg: TaskConfig, n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of expert actions, for normalization."""
    acts = make_batch(cfg, n, split_rng("train", 10_000 + seed)).actions.reshape(-1, cfg.action_dim)
    return acts.mean(0), acts.std(0) + 1e-6
