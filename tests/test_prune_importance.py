"""Importance criteria against direct computations: |w|, Taylor |w * dL/dw|, Wanda |w| * ||x||, group norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgevla.errors import EdgevlaError
from edgevla.prune import (DependencyGraph, GroupImportance, MagnitudeImportance, TaylorImportance,
                           WandaImportance, task_batches)


def _batches(seed: int, n: int = 3, shape=(5, 4), out=3):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(*shape, generator=g),), torch.randn(shape[0], out, generator=g)) for _ in range(n)]


def test_magnitude_is_absolute_weight():
    layer = nn.Linear(4, 3)
    torch.testing.assert_close(MagnitudeImportance()(layer), layer.weight.detach().abs())


def test_taylor_matches_the_hand_derived_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    batches = _batches(1)
    scores = TaylorImportance(layer, batches)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected_w, expected_b = np.zeros_like(w), np.zeros_like(b)
    for (x,), y in batches:
        x, y = x.numpy(), y.numpy()
        residual = x @ w.T + b - y                       # L = mean(residual ** 2)
        grad_w = 2.0 / residual.size * residual.T @ x    # dL/dW
        grad_b = 2.0 / residual.size * residual.sum(0)
        expected_w += np.abs(w * grad_w) / len(batches)
        expected_b += np.abs(b * grad_b) / len(batches)
    np.testing.assert_allclose(scores(layer).numpy(), expected_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.tensor_scores("bias", layer.bias).numpy(), expected_b, rtol=1e-5, atol=1e-7)
    assert layer.weight.grad is None  # scoring leaves no gradients behind


def test_wanda_uses_input_channel_norms_over_every_token():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    batches = _batches(2, shape=(2, 5, 4))  # (batch, tokens, features)
    wanda = WandaImportance(model, batches)
    hidden = [torch.relu(model[0](x)).detach().numpy().reshape(-1, 6) for (x,), _ in batches]
    norm2 = np.sqrt(sum((h ** 2).sum(0) for h in hidden))
    norm0 = np.sqrt(sum((x.numpy().reshape(-1, 4) ** 2).sum(0) for (x,), _ in batches))
    np.testing.assert_allclose(wanda(model[2]).numpy(), np.abs(model[2].weight.detach().numpy()) * norm2, rtol=1e-5)
    np.testing.assert_allclose(wanda(model[0]).numpy(), np.abs(model[0].weight.detach().numpy()) * norm0, rtol=1e-5)
    assert wanda.tensor_scores("2.bias", model[2].bias) is None
    with pytest.raises(EdgevlaError, match="no input activations"):
        wanda(nn.Linear(6, 3))



def test_wanda_scores_a_convolution_by_its_input_channels_norm_at_every_kernel_position():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 4, 3, groups=2))
    batches = _batches(2, shape=(3, 8, 10))  # (batch, channels, length)
    wanda = WandaImportance(model, batches)
    xs = [x.numpy() for (x,), _ in batches]
    hidden = [torch.relu(model[0](x)).detach().numpy() for (x,), _ in batches]
    norm0 = np.sqrt(sum((x ** 2).sum(axis=(0, 2)) for x in xs))  # per input channel, over batch and length
    norm2 = np.sqrt(sum((h ** 2).sum(axis=(0, 2)) for h in hidden))
    w0, w2 = (model[i].weight.detach().numpy() for i in (0, 2))
    np.testing.assert_allclose(wanda(model[0]).numpy(), np.abs(w0) * norm0[None, :, None], rtol=1e-5)
    # groups of 3 input channels: output channels 0-1 read channels 0-2, outputs 2-3 read channels 3-5
    expected = np.abs(w2) * np.stack([norm2[:3], norm2[:3], norm2[3:], norm2[3:]])[:, :, None]
    np.testing.assert_allclose(wanda(model[2]).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(wanda.tensor_scores("2.weight", model[2].weight).numpy(), expected, rtol=1e-5)
    assert wanda.tensor_scores("2.weight", torch.zeros(4, 4, 3)) is None  # not the shape the norms were taken for

class _MLPPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        from edgevla.spec import PolicySpec, TensorSpec
        self.spec = PolicySpec(observations=(TensorSpec("state", (5, 4)),), action=TensorSpec("actions", (5, 2)))
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, state):
        return self.fc2(torch.nn.functional.gelu(self.fc1(state)))


@pytest.mark.parametrize("reduction", ["l1", "l2"])
def test_group_importance_sums_norms_over_the_coupled_tensors(reduction):
    torch.manual_seed(3)
    model = _MLPPolicy()
    (group,) = DependencyGraph(model).hidden_groups()
    scores = GroupImportance(MagnitudeImportance(), reduction)(group).numpy()
    w1, b1, w2 = (t.detach().numpy() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight))
    if reduction == "l1":
        expected = np.abs(w1).sum(1) + np.abs(b1) + np.abs(w2).sum(0)
    else:
        expected = np.linalg.norm(w1, axis=1) + np.abs(b1) + np.linalg.norm(w2, axis=0)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def _unit_by_unit(group, reduction: str) -> torch.Tensor:
    """The group score's definition, one unit and one coupled slice at a time."""
    tensors = dict(group.graph.model.named_parameters())
    scores = torch.zeros(group.units, dtype=torch.float64)
    for u in range(group.units):
        for c in group.unit_couplings(u):
            if c.tensor in tensors:
                part = tensors[c.tensor].detach().abs().index_select(c.dim, torch.tensor(c.indices)).double()
                scores[u] += part.sum() if reduction == "l1" else part.pow(2).sum().sqrt()
    return scores


@pytest.mark.parametrize("reduction", ["l1", "l2"])
def test_group_importance_of_heads_neurons_and_widths_matches_unit_by_unit(reduction):
    from edgevla.models.zoo import load_policy
    policy = load_policy("tiny-vla").policy
    graph = DependencyGraph(policy)
    groups = graph.head_groups() + graph.hidden_groups() + graph.width_groups()
    assert {g.kind for g in groups} == {"heads", "neurons", "width"} and max(g.unit_width for g in groups) > 1
    for group in groups:
        torch.testing.assert_close(GroupImportance(MagnitudeImportance(), reduction)(group),
                                   _unit_by_unit(group, reduction), rtol=1e-12, atol=0)


def test_taylor_on_the_task_scores_every_trunk_layer():
    from edgevla.models.zoo import load_policy
    policy = load_policy("tiny-vla").policy
    batches = task_batches(policy, n_batches=1, batch_size=8)
    (obs, target), = batches
    assert [tuple(o.shape[1:]) for o in obs] == [o.shape for o in policy.spec.observations]
    assert target.shape == (8, *policy.spec.action.shape)
    scores = TaylorImportance(policy, batches)
    s = scores(policy.trunk[0].mlp.fc1)
    assert s.shape == policy.trunk[0].mlp.fc1.weight.shape
    assert torch.isfinite(s).all() and (s >= 0).all() and s.sum() > 0
