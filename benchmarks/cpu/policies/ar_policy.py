"""An OpenVLA-style autoregressive policy, for `edgevla bench e2e` of token decoding.

Image patches and instruction tokens are a prefix; seven action tokens are decoded greedily, one by one (a causal
trunk over the growing sequence with `F.scaled_dot_product_attention(is_causal=True)`, argmax over 256 bins fed back
through the embedding) and de-tokenized to bin centres: one action per query (`evaluate.execute` 1). Its argmax
output is often unchanged by quantizing one layer (solo SQNR infinite, stored as null in report.json).

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy ar_policy:make
--set prune.scope=null [--quantize w8a8] -o ar`. Random init: latency and agreement, not success.
"""

import torch
import torch.nn.functional as F
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.h = heads

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class ARPolicy(nn.Module):
    """OpenVLA-like: image patches + instruction tokens as a prefix; 7 action tokens decoded greedily, one by
    one (argmax over 256 bins, fed back through the embedding), de-tokenized to bin centres."""
    def __init__(self, d=96, bins=256, adim=7, vocab=512, layers=3):
        super().__init__()
        self.spec = PolicySpec(observations=(
            TensorSpec("image", (3, 32, 32), low=0, high=1),
            TensorSpec("instruction", (8,), dtype="int64", low=0, high=vocab - 1)),
            action=TensorSpec("actions", (1, adim), low=-1, high=1))
        self.patch = nn.Conv2d(3, d, 8, 8)
        self.tok = nn.Embedding(vocab + bins, d)
        self.pos = nn.Parameter(torch.randn(1, 16 + 8 + adim, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, 4) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, bins, bias=False)
        self.register_buffer("centres", torch.linspace(-1, 1, bins))
        self.vocab, self.adim = vocab, adim

    def forward(self, image, instruction):
        x = torch.cat([self.patch(image).flatten(2).transpose(1, 2), self.tok(instruction)], 1)
        acts = []
        for i in range(self.adim):
            h = x + self.pos[:, : x.shape[1]]
            for b in self.blocks:
                h = b(h)
            logits = self.lm_head(self.norm(h[:, -1]))
            idx = logits.argmax(-1)
            acts.append(self.centres[idx])
            x = torch.cat([x, self.tok(idx + self.vocab)[:, None]], 1)
        return torch.stack(acts, -1)[:, None]


def make():
    torch.manual_seed(0)
    return ARPolicy().eval()
