"""Policies that are not from the zoo, shared by the export, quantization and runtime tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgevla.export.qdq import reference_session
from edgevla.spec import PolicySpec, TensorSpec


class SmallPolicy(nn.Module):
    """A user's policy: LayerNorm, a ReLU MLP with a residual (3-D Linear: MatMul), mean pooling,
    a 2-D Linear head (Gemm)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 32), low=-1, high=1),),
                               action=TensorSpec("a", (2, 3)))
        self.ln = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 6)

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(self.ln(x))))
        return self.head(h.mean(dim=1)).reshape(-1, 2, 3)


def onnx_parity(model: nn.Module, path, obs: dict[str, np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime's run of ``path`` and ``model`` on the same observations."""
    y = reference_session(path).run(None, obs)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in obs.values())).numpy()
    return float(np.abs(y - ref).max())
