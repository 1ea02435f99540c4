"""Frozen BatchNorms (statistics as buffers, applied element-wise) become BatchNorms that fold and stay frozen."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgevla.models.frozen_batch_norm import InferenceBatchNorm2d, thaw_frozen_batch_norms
from edgevla.quant.fold import fold_batch_norms

from user_policies import FrozenBatchNorm2d


class NotABatchNorm(FrozenBatchNorm2d):
    """The same buffers, another function: left alone."""

    def forward(self, x):
        return x * self.weight.reshape(1, -1, 1, 1) + self.running_var.reshape(1, -1, 1, 1)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8, eps=1e-3)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), NotABatchNorm(8)
        self.layers = nn.Sequential(nn.Conv2d(8, 8, 1), FrozenBatchNorm2d(8))

    def forward(self, x):
        return self.layers(torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))))


def test_frozen_batch_norms_become_inference_batch_norms_that_fold_and_stay_frozen():
    torch.manual_seed(0)
    model = Backbone().eval()
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        want = model(x)
    state = copy.deepcopy(model.state_dict())
    params = sum(p.numel() for p in model.parameters())
    assert thaw_frozen_batch_norms(model) == ["bn1", "layers.1"]
    assert isinstance(model.bn1, InferenceBatchNorm2d) and model.bn1.eps == 1e-3
    assert isinstance(model.bn2, NotABatchNorm)
    assert model.state_dict().keys() >= state.keys() and all(torch.equal(model.state_dict()[k], v)
                                                             for k, v in state.items())
    assert sum(p.numel() for p in model.parameters()) == params  # the affine stays buffers
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    model.train()  # pruning recovery's mode: the statistics are still the running ones, and stay so
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    assert not model.bn1.training and torch.equal(model.bn1.running_mean, state["bn1.running_mean"])
    model.eval()
    assert [(f.conv, f.norm) for f in fold_batch_norms(model, (x,))] == [("conv1", "bn1"), ("layers.0", "layers.1")]
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
