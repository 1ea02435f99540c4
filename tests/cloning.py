"""Behaviour cloning for the tests' user policies: a policy regressed onto an expert's action chunks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def clone(policy: nn.Module, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
          lr: float = 3e-3) -> nn.Module:
    """``policy`` trained for ``steps`` Adam steps (cosine-annealed ``lr``) on the MSE between its output and the
    targets of ``batch()`` (a fresh (inputs, targets) pair each step); returned in eval mode."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        inputs, targets = batch()
        loss = nn.functional.mse_loss(policy(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval()
