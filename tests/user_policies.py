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


class ConvPolicy(nn.Module):
    """A user's visuomotor policy: a small ResNet stem (Conv + BatchNorm + ReLU, MaxPool), a residual block
    with GroupNorm (as Diffusion Policy uses), global average pooling, state concatenated, a Linear head."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("rgb", (3, 24, 24), low=0, high=1),
                                             TensorSpec("state", (5,), low=-1, high=1)),
                               action=TensorSpec("a", (4, 5)))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.GroupNorm(4, 16), nn.SiLU(),
                                   nn.Conv2d(16, 16, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(16 + 5, 64), nn.ReLU(), nn.Linear(64, 20))
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            self.stem[1].running_mean.uniform_(-0.2, 0.2)
            self.stem[1].running_var.uniform_(0.5, 2.0)

    def forward(self, rgb, state):
        x = self.stem(rgb)
        x = torch.relu(x + self.block(x))
        features = torch.cat([self.pool(x).flatten(1), state], dim=1)
        return self.head(features).reshape(-1, 4, 5)


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d's function (DETR's, and the ResNet backbone of LeRobot's ACT): the
    statistics and affine as buffers, applied with element-wise ops."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", torch.rand(n) + 0.5), ("bias", torch.randn(n) * 0.1),
                            ("running_mean", torch.rand(n) * 0.4 - 0.2), ("running_var", torch.rand(n) + 0.5)):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        return x * scale + (self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)

    def module(self) -> nn.BatchNorm2d:
        """The nn.BatchNorm2d (eval) computing the same."""
        bn = nn.BatchNorm2d(self.weight.numel(), eps=self.eps).eval()
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).data.copy_(getattr(self, name))
        return bn


class FrozenConvPolicy(ConvPolicy):
    """ConvPolicy with its stem's BatchNorm frozen, as DETR's and ACT's ResNet backbones have it."""

    def __init__(self):
        super().__init__()
        self.stem[1] = FrozenBatchNorm2d(16)


class RecurrentPolicy(nn.Module):
    """A user's BC-RNN-style policy: a history of observations through a 2-layer LSTM (or a bidirectional
    GRU), the last step to a Linear head."""

    def __init__(self, cell: str = "lstm"):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("history", (6, 10), low=-1, high=1),),
                               action=TensorSpec("a", (2, 4)))
        self.embed = nn.Linear(10, 32)
        self.rnn = (nn.LSTM(32, 32, num_layers=2, batch_first=True) if cell == "lstm"
                    else nn.GRU(32, 16, batch_first=True, bidirectional=True))
        self.head = nn.Linear(32, 8)

    def forward(self, history):
        y, _ = self.rnn(torch.relu(self.embed(history)))
        return self.head(y[:, -1]).reshape(-1, 2, 4)


class PaddedHistory(nn.Module):
    """Octo-style: steps of tokens under a block-causal mask, the oldest steps padded per sample
    (``src_key_padding_mask`` from an observation). A padded step's tokens see only padded keys."""

    def __init__(self, steps: int = 3, per: int = 2, width: int = 16):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (steps * per, 8), low=-1, high=1),
                                             TensorSpec("valid", (1,), dtype="int64", low=1, high=steps)),
                               action=TensorSpec("a", (1, 4)))
        step = torch.arange(steps * per) // per
        self.register_buffer("step", step)
        self.register_buffer("mask", step[None, :] > step[:, None])  # True: not allowed
        self.embed = nn.Linear(8, width)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True),
                                             2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 4)
        self.steps = steps

    def forward(self, x, valid):
        padded = self.step[None, :] < self.steps - valid
        return self.head(self.encoder(self.embed(x), mask=self.mask, src_key_padding_mask=padded)[:, -1:])


def make_padded_history() -> PaddedHistory:
    torch.manual_seed(4)
    return PaddedHistory().eval()


def onnx_parity(model: nn.Module, path, obs: dict[str, np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime's run of ``path`` and ``model`` on the same observations."""
    y = reference_session(path).run(None, obs)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in obs.values())).numpy()
    return float(np.abs(y - ref).max())
