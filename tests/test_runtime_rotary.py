"""Rotary embeddings as exported run as one ``edgevla.Rotary`` step per rotated value, against PyTorch; tables that
do not repeat over the leading axes take the graph's own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.rotary import ROTARY_OP, Rotary
from edgevla.spec import PolicySpec, TensorSpec

RNG = np.random.default_rng(15)


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


class Rotated(nn.Module):
    """q and k of 4 heads of 8 rotated, heads first (Llama's SDPA layout) or last, tables sliced to the length."""

    def __init__(self, heads_first: bool):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 32)),), action=TensorSpec("a", (6, 64)))
        self.q, self.k = nn.Linear(32, 32), nn.Linear(32, 32)
        angles = torch.outer(torch.arange(16).float(), 1.0 / (100.0 ** (torch.arange(0, 8, 2).float() / 8)))
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.heads_first = heads_first

    def forward(self, x):
        b, t, _ = x.shape
        q, k = self.q(x).view(b, t, 4, 8), self.k(x).view(b, t, 4, 8)
        cos, sin = self.cos[:t], self.sin[:t]
        if self.heads_first:
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        else:
            cos, sin = cos[:, None], sin[:, None]  # (t, 1, 8): over the heads axis
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        return torch.cat((q.reshape(b, -1), k.reshape(b, -1)), dim=-1).view(b, 6, 64)


@pytest.mark.parametrize("heads_first", [True, False])
def test_rotary_embeddings_run_as_one_step_each(tmp_path, heads_first):
    torch.manual_seed(8)
    block = Rotated(heads_first).eval()
    model = NativeModel(export_onnx(block, tmp_path / "rope.onnx"), precision="fp32")
    ops = model.op_count()
    assert ops.get(ROTARY_OP) == 2 and "Neg" not in ops, ops
    x = RNG.normal(0, 1, (3, 6, 32)).astype(np.float32)
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    for _ in range(2):
        np.testing.assert_allclose(model.run({"x": x})["a"], want, rtol=0, atol=2e-6)


def test_tables_that_vary_over_the_batch_take_the_graphs_arithmetic():
    x = RNG.normal(0, 1, (2, 4, 5, 8)).astype(np.float32)
    cos, sin = (RNG.uniform(-1, 1, (2, 1, 5, 8)).astype(np.float32) for _ in range(2))  # per batch: no repeat
    want = x * cos + np.concatenate([-x[..., 4:], x[..., :4]], axis=-1) * sin
    np.testing.assert_array_equal(Rotary(4)(x, cos, sin), want)
    shared = cos[:1, :1]  # (1, 1, 5, 8): the kernel's tables
    np.testing.assert_array_equal(Rotary(4)(x, shared, sin[:1, :1]),
                                  x * shared + np.concatenate([-x[..., 4:], x[..., :4]], axis=-1) * sin[:1, :1])
