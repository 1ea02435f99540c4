"""A Diffusion-Policy-style 1-d conv U-Net denoiser as a policy, for `edgevla bench e2e` of diffusion heads.

A small conv image encoder (GroupNorm) gives an observation embedding; the action chunk (horizon 16, 7-d) is
denoised by a 1-d U-Net of FiLM-conditioned residual blocks (Conv1d, GroupNorm, Mish), down-sampled by a
stride-2 Conv1d and up-sampled by a ConvTranspose1d, with two denoising steps unrolled (every block's
convolutions run twice). Its many small steps make it the overhead-bound case of the native runtime.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy dp_unet_policy:make
--quantize w8a8 -o dp_w8a8` (and `--quantize none` for the float bundle). Random init: for latency and
agreement with ONNX Runtime, not for closed-loop success.
"""

import torch
import torch.nn as nn

from edgevla.spec import PolicySpec, TensorSpec


class Block(nn.Module):
    """A FiLM-conditioned residual block: conv, GroupNorm, Mish; scale and shift from the condition; conv, GroupNorm,
    Mish; plus the (1x1-projected) input."""

    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(cin, cout, 5, padding=2), nn.GroupNorm(8, cout), nn.Mish())
        self.c2 = nn.Sequential(nn.Conv1d(cout, cout, 5, padding=2), nn.GroupNorm(8, cout), nn.Mish())
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond, 2 * cout))
        self.res = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        h = self.c1(x)
        scale, bias = self.film(c).unsqueeze(-1).chunk(2, dim=1)
        h = self.c2(h * scale + bias)
        return h + self.res(x)


class UNetPolicy(nn.Module):
    def __init__(self, act: int = 7, horizon: int = 16, cond: int = 64, dims: tuple[int, int] = (64, 128)):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("rgb", (3, 64, 64), low=0, high=1),
                                             TensorSpec("state", (7,), low=-1, high=1)),
                               action=TensorSpec("actions", (horizon, act)))
        self.horizon, self.act = horizon, act
        self.enc = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.GroupNorm(4, 32), nn.ReLU(),
                                 nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(8, 64), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.obs = nn.Linear(64 + 7, cond)
        self.step = nn.Embedding(4, cond)
        self.down1 = Block(act, dims[0], cond)
        self.down = nn.Conv1d(dims[0], dims[0], 3, 2, 1)
        self.mid = Block(dims[0], dims[1], cond)
        self.up = nn.ConvTranspose1d(dims[1], dims[1], 4, 2, 1)
        self.up1 = Block(dims[1] + dims[0], dims[0], cond)
        self.out = nn.Conv1d(dims[0], act, 1)

    def forward(self, rgb, state):
        c0 = self.obs(torch.cat([self.enc(rgb), state], 1))
        x = torch.zeros(rgb.shape[0], self.act, self.horizon) + 0.1
        for k in range(2):  # two denoising steps, unrolled
            c = c0 + self.step.weight[k]
            h1 = self.down1(x, c)
            h = self.mid(self.down(h1), c)
            h = self.up1(torch.cat([self.up(h), h1], 1), c)
            x = x - 0.5 * self.out(h)
        return x.transpose(1, 2)


def make() -> UNetPolicy:
    torch.manual_seed(0)
    return UNetPolicy().eval()
