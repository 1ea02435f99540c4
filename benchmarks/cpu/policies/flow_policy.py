"""A pi0-style flow-matching policy, for `edgevla bench e2e` of action experts run as an integrator.

A ViT prefix (patch convolution, a class token, learned positions; `nn.TransformerEncoder`) and a normalized state
token; an action expert of two adaLN-conditioned blocks (`F.scaled_dot_product_attention` over the prefix and the
action tokens, a tanh-GELU MLP) integrates a learned velocity field from fixed noise for five Euler steps, so every
expert layer runs five times. Its many small steps make it an overhead-bound case of the native runtime.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy flow_policy:make
--set prune.scope=null [--quantize w8a8 --prune 2:4] -o flow`. Random init: for latency and agreement with
ONNX Runtime, not for closed-loop success.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


def sinusoid(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)
        self.heads = heads
        self.ada = nn.Linear(d, 2 * d)   # adaLN from the time embedding

    def forward(self, x, cond, prefix):
        B, T, D = x.shape
        scale, shift = self.ada(cond).chunk(2, dim=-1)
        h = self.n1(x) * (1 + scale[:, None]) + shift[:, None]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        kp = prefix
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        k = torch.cat([kp, k], dim=1).view(B, -1, self.heads, D // self.heads).transpose(1, 2)
        v = torch.cat([kp, v], dim=1).view(B, -1, self.heads, D // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.down(F.gelu(self.up(self.n2(x)), approximate="tanh"))


class FlowPolicy(nn.Module):
    """pi0-like: a ViT prefix (patch conv, cls, pos), an action expert run for `steps` Euler steps of a learned
    velocity field from fixed noise, adaLN time conditioning, state normalization buffers."""
    def __init__(self, d=64, chunk=10, adim=7, steps=5):
        super().__init__()
        self.spec = PolicySpec(observations=(
            TensorSpec("image", (3, 32, 32), low=0, high=1),
            TensorSpec("state", (14,), low=-3, high=3)),
            action=TensorSpec("actions", (chunk, adim), low=-1, high=1))
        self.patch = nn.Conv2d(3, d, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.vit = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True,
                                                                     norm_first=True, activation="gelu"), 2,
                                         enable_nested_tensor=False)
        self.register_buffer("s_mean", torch.linspace(-0.5, 0.5, 14))
        self.register_buffer("s_std", torch.linspace(0.5, 1.5, 14))
        self.state = nn.Linear(14, d)
        self.a_in = nn.Linear(adim, d)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList([Block(d, 4) for _ in range(2)])
        self.out = nn.Linear(d, adim)
        self.register_buffer("noise", torch.randn(1, chunk, adim, generator=torch.Generator().manual_seed(1)))
        self.steps, self.d = steps, d

    def forward(self, image, state):
        B = image.shape[0]
        p = self.patch(image).flatten(2).transpose(1, 2)
        p = torch.cat([self.cls.expand(B, -1, -1), p], dim=1) + self.pos
        s = self.state((state - self.s_mean) / self.s_std)[:, None]
        prefix = torch.cat([self.vit(p), s], dim=1)
        x = self.noise.expand(B, -1, -1)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((B,), i * dt, dtype=image.dtype, device=image.device)
            cond = self.t_mlp(sinusoid(t, self.d))
            h = self.a_in(x)
            for blk in self.blocks:
                h = blk(h, cond, prefix)
            x = x + dt * self.out(h)
        return torch.tanh(x)


def make():
    torch.manual_seed(0)
    return FlowPolicy().eval()
