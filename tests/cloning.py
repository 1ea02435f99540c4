"""Behaviour cloning for the tests' user policies: a policy regressed onto an expert's action chunks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def clone(policy: nn.Module, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
          lr: float = 3e-3) -> nn.Module:
    """``policy`` trained for ``steps`` Adam steps (cosine-annealed ``lr``) on the MSE between its output and the
    targets of ``batch()`` (a fresh (inputs, targets) pair each step); returned in eval mode.

    On one thread: a multi-threaded BLAS may split its sums differently from one process to the next (fewer
    threads on a busy machine), and a policy in a chaotic simulator then succeeds on other episodes: every
    process, and every CI run, must get the same weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(policy.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            inputs, targets = batch()
            loss = nn.functional.mse_loss(policy(inputs), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return policy.eval()
