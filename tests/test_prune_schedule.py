"""Pruning schedules: the cubic curve by hand, exact gradual sparsity, N:M patterns and structured steps
that survive fine-tuning between steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevla.errors import EdgevlaError
from edgevla.prune import (DependencyGraph, cubic_sparsity, exact_unstructured_masks, follows_nm, gradual_prune,
                           groups_of, kept_units, schedule_sparsities)
from edgevla.models.explicit_attention import ExplicitMultiheadAttention
from edgevla.prune.schedule import current_mask
from edgevla.spec import PolicySpec, TensorSpec


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class ResidualMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.down(F.relu(self.up(self.norm(x))))


class TokenPolicy(nn.Module):
    """A user's policy: 6 tokens of 4 features, two residual MLP blocks, a 3-step chunk of 2-D actions."""

    def __init__(self, width: int = 16, hidden: int = 32):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("tokens", (6, 4)),),
                               action=TensorSpec("actions", (3, 2), "float32", -1.0, 1.0))
        self.embed = nn.Linear(4, width)
        self.blocks = nn.Sequential(ResidualMLP(width, hidden), ResidualMLP(width, hidden))
        self.head = nn.Linear(width, 6)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)).mean(dim=1)).view(-1, 3, 2)


def _data(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(8, 6, 4, generator=g),), torch.randn(8, 3, 2, generator=g)) for _ in range(n)]


def _sgd_finetune(steps: int = 3, lr: float = 0.05):
    """A fine-tuner that really moves every weight (so a lost mask would show)."""
    data = _data(99)

    def finetune(model: nn.Module, _step: int) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for (x,), y in data[:steps]:
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return finetune


def test_cubic_schedule_matches_the_formula_by_hand():
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with s_f = 0.8, s_i = 0, n = 4, dt = 1.
    assert schedule_sparsities(0.8, 4) == pytest.approx([0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3),
                                                          0.8 * (1 - 0.25 ** 3), 0.8])
    assert schedule_sparsities(0.8, 4) == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    # Endpoints, clamping outside [t0, t0 + n dt], a start offset and spacing.
    assert cubic_sparsity(0, 0.9, initial=0.1, n=3) == pytest.approx(0.1)
    assert cubic_sparsity(-5, 0.9, initial=0.1, n=3) == pytest.approx(0.1)
    assert cubic_sparsity(3, 0.9, initial=0.1, n=3) == pytest.approx(0.9)
    assert cubic_sparsity(99, 0.9, initial=0.1, n=3) == pytest.approx(0.9)
    assert cubic_sparsity(30, 0.5, t0=10, n=4, dt=10) == pytest.approx(0.5 * (1 - 0.5 ** 3))
    values = [cubic_sparsity(t, 0.9, initial=0.1, t0=2, n=10, dt=3) for t in range(0, 40)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    steps = [b - a for a, b in zip([0.0] + schedule_sparsities(0.9, 6), schedule_sparsities(0.9, 6))]
    assert all(b < a for a, b in zip(steps, steps[1:]))  # cubic: the cuts shrink
    assert schedule_sparsities(0.5, 7, kind="oneshot") == [0.5]


def test_bad_schedules_are_one_line_errors():
    with pytest.raises(EdgevlaError, match="at least one step"):
        schedule_sparsities(0.5, 0)
    with pytest.raises(EdgevlaError, match="oneshot"):
        schedule_sparsities(0.5, 3, kind="linear")
    with pytest.raises(EdgevlaError, match="N:M"):
        gradual_prune(TokenPolicy(), "3:2", 0.5)
    with pytest.raises(EdgevlaError, match=r"\[0, 1\)"):
        gradual_prune(TokenPolicy(), "unstructured", 1.5)
    with pytest.raises(EdgevlaError, match="calibration"):
        gradual_prune(TokenPolicy(), "unstructured", 0.5, criterion="wanda")


def test_exact_masks_prune_exactly_the_lowest_scores_even_at_full_sparsity():
    layer = nn.Sequential(nn.Linear(5, 3))
    torch.manual_seed(0)
    w = layer[0].weight.detach().abs().reshape(-1)
    mask = exact_unstructured_masks(layer, 0.4, layers=["0"])["0"].reshape(-1)
    assert int((mask == 0).sum()) == 6
    assert set(torch.nonzero(mask == 0).squeeze(1).tolist()) == set(torch.argsort(w)[:6].tolist())
    assert exact_unstructured_masks(layer, 1.0)["0"].sum() == 0


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_unstructured_reaches_the_exact_sparsity_and_keeps_earlier_cuts(scope):
    torch.manual_seed(1)
    model = TokenPolicy()
    seen: list[dict[str, torch.Tensor]] = []
    tune = _sgd_finetune()

    def finetune(m, step):
        tune(m, step)
        seen.append({n: current_mask(l).clone() for n, l in m.named_modules() if current_mask(l) is not None})

    result = gradual_prune(model, "unstructured", 0.8, steps=3, scope=scope, finetune=finetune)
    targets = schedule_sparsities(0.8, 3)
    linears = {n: l for n, l in model.named_modules() if isinstance(l, nn.Linear)}
    total = sum(l.weight.numel() for l in linears.values())
    for step, target in zip(result.steps, targets):
        assert step.target == pytest.approx(target)
        assert step.achieved == pytest.approx(round(target * total) / total, abs=len(linears) / total)
    assert result.achieved == pytest.approx(0.8, abs=len(linears) / total)
    for before, after in zip(seen, seen[1:]):  # a weight once pruned stays pruned
        for name in before:
            assert bool(((before[name] == 0) <= (after[name] == 0)).all())
    zeros = 0
    for name, layer in linears.items():  # fine-tuning moved the weights but not the zeros
        w = layer.weight.detach()
        assert bool((w[seen[-1][name] == 0] == 0).all())
        if scope == "layer":
            assert int((w == 0).sum()) == round(0.8 * w.numel())
        zeros += int((w == 0).sum())
    if scope == "global":
        assert zeros == round(0.8 * total)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_gradual_nm_ends_in_the_exact_pattern_through_fine_tuning(pattern):
    n, m = map(int, pattern.split(":"))
    torch.manual_seed(2)
    model = TokenPolicy()
    layers = ["blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down"]
    result = gradual_prune(model, pattern, None, steps=3, layers=layers, finetune=_sgd_finetune())
    final = 1 - n / m
    assert [s.target for s in result.steps] == pytest.approx(schedule_sparsities(final, 3))
    for s in result.steps:  # intermediate steps prune the scheduled share of the pattern's zeros
        assert s.achieved == pytest.approx(s.target, abs=0.02)
    for name in layers:
        w = model.get_submodule(name).weight.detach()
        assert follows_nm(w, n, m)
        groups = (current_mask(model.get_submodule(name)) == 0).reshape(w.shape[0], -1, m).sum(-1)
        assert bool((groups == m - n).all())  # exactly m - n pruned in every group
        assert w.abs().sum() > 0



def test_gradual_nm_on_convolutions_keeps_earlier_cuts_and_ends_in_the_pattern():
    from edgevla.prune import nm_rows

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Conv1d(16, 8, 3, groups=2))
    seen: list[dict[str, torch.Tensor]] = []

    def record(m: nn.Module, _step: int) -> None:
        seen.append({n: current_mask(m.get_submodule(n)).clone() for n in ("0", "2")})

    result = gradual_prune(model, "2:4", None, steps=3, finetune=record)
    assert [s.achieved for s in result.steps] == pytest.approx(schedule_sparsities(0.5, 3), abs=0.02)
    for before, after in zip(seen, seen[1:]):
        assert all(bool((after[n] <= before[n]).all()) for n in before)  # a weight once cut stays cut
    for name in ("0", "2"):
        w = model.get_submodule(name).weight.detach()
        assert follows_nm(w, 2, 4)
        pruned = (nm_rows(current_mask(model.get_submodule(name))) == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool((pruned == 2).all())

def test_gradual_structured_steps_remove_a_share_of_the_remaining_units():
    torch.manual_seed(3)
    model = TokenPolicy(hidden=40)
    x = torch.randn(2, 6, 4)
    params = []
    result = gradual_prune(model, "neurons", 0.75, steps=3, structure_scope="blocks", example_inputs=(x,),
                           finetune=lambda m, i: (params.append(sum(p.numel() for p in m.parameters())),
                                                  _sgd_finetune()(m, i)))
    targets = schedule_sparsities(0.75, 3)
    for step, target in zip(result.steps, targets):
        assert step.achieved == pytest.approx(1 - kept_units(40, target) / 40)
    assert params == sorted(params, reverse=True) and len(set(params)) == 3
    for group in groups_of(DependencyGraph(model, (x,)), "neurons", "blocks"):
        assert group.units == kept_units(40, 0.75) == 10
    assert model(x).shape == (2, 3, 2)


@pytest.mark.parametrize("criterion", ["taylor", "wanda"])
def test_data_aware_criteria_are_rebuilt_on_the_masked_model_each_step(criterion):
    torch.manual_seed(4)
    model = TokenPolicy()
    layers = ["blocks.0.up", "blocks.1.down"]
    result = gradual_prune(model, "unstructured", 0.6, steps=2, criterion=criterion, calibration=_data(5, 2),
                           layers=layers, finetune=_sgd_finetune(2))
    assert result.achieved == pytest.approx(0.6, abs=1 / 512)
    for name in layers:
        w = model.get_submodule(name).weight.detach()
        assert int((w == 0).sum()) == round(0.6 * w.numel())


class HeadPolicy(TokenPolicy):
    """Self-attention over the tokens before the MLP blocks (PyTorch's attention, as a user writes it)."""

    def __init__(self, heads: int = 4):
        super().__init__()
        self.attn = ExplicitMultiheadAttention.from_fused(nn.MultiheadAttention(16, heads, batch_first=True))

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.blocks(x).mean(dim=1)).view(-1, 3, 2)


@pytest.mark.parametrize("steps", [1, 2])
def test_heads_pruned_down_to_the_last_one(steps):
    """One head left is no longer a split into heads, so no group is found afterwards: that is the end, not an error."""
    torch.manual_seed(4)
    model = HeadPolicy(heads=4)
    x = torch.randn(2, 6, 4)
    result = gradual_prune(model, "heads", 0.75, steps=steps, structure_scope="attn", example_inputs=(x,))
    assert result.steps[-1].achieved == pytest.approx(0.75)
    assert model.attn.num_heads == 1 and model.attn.q_proj.out_features == 4
    assert groups_of(DependencyGraph(model, (x,)), "heads", "attn") == []
    assert model(x).shape == (2, 3, 2)
