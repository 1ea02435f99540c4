from __future__ import annotations

import torch
from torch import nn

from edgevla.quant.smoothquant import find_smooth_groups, smooth_quant


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.ln3 = nn.LayerNorm(d)  # also feeds the residual: refused
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.ln(x)
        x = x + self.q(h) * self.k(h) + self.v(h)
        x = x + self.fc(self.ln2(x))
        y = self.ln3(x)
        return self.head(y) + y[..., :4]


def test_smoothquant_folds_exactly_and_refuses_others():
    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():  # non-trivial affine params and an outlier channel
        for ln in (m.ln, m.ln2, m.ln3):
            ln.weight.uniform_(0.5, 2.0)
            ln.bias.uniform_(-0.5, 0.5)
        m.ln.weight[3] = 30.0
    xs = [(torch.randn(8, 5, 16),) for _ in range(2)]
    groups, refused = find_smooth_groups(m, xs[0])
    assert {(g.norm, g.linears) for g in groups} == {("ln", ("q", "k", "v")), ("ln2", ("fc",))}
    assert [r.norm for r in refused] == ["ln3"]
    with torch.no_grad():
        before = m(*xs[0])
        act_before = m.ln(xs[0][0]).abs().amax(dim=(0, 1))
    result = smooth_quant(m, xs, alpha=0.5)
    with torch.no_grad():
        after = m(*xs[0])
        act_after = m.ln(xs[0][0]).abs().amax(dim=(0, 1))
    assert torch.allclose(before, after, atol=1e-5)
    # The outlier channel's range shrank relative to the others.
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median()
    assert set(result["scales"]) == {"ln", "ln2"}
