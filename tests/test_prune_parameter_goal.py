"""A share of parameters from structured pruning whose groups can only lose coarse steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgevla.errors import EdgevlaError
from edgevla.prune import DependencyGraph, gradual_prune, plan, prune_structured
from edgevla.prune.parameter_goal import amount_for_parameters, amount_said
from edgevla.prune.structured import _example_inputs
from edgevla.spec import PolicySpec, TensorSpec


class Tower(nn.Module):
    """Six residual MLP blocks of 32 hidden neurons: kept in multiples of 16, each can lose 0 or half of them."""

    def __init__(self, quiet_blocks: tuple[int, ...] = (), hidden: int = 32):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (20,), low=-1, high=1),),
                               action=TensorSpec("a", (1, 8)))
        self.inp = nn.Linear(20, 64)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 64)) for _ in range(6))
        self.out = nn.Linear(64, 8)
        with torch.no_grad():
            for i in quiet_blocks:  # blocks whose neurons matter least
                self.blocks[i][0].weight.mul_(0.01)
                self.blocks[i][2].weight.mul_(0.01)

    def forward(self, state):
        x = self.inp(state)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x).reshape(-1, 1, 8)


def _tower(quiet_blocks=(), hidden=32):
    torch.manual_seed(0)
    model = Tower(quiet_blocks, hidden)
    inputs = _example_inputs(model, None)
    return model, inputs, DependencyGraph(model, inputs), sum(p.numel() for p in model.parameters())


def test_coarse_groups_each_take_their_own_fraction_and_land_near_the_goal():
    model, inputs, graph, total = _tower()
    one_block = 64 * 16 + 16 + 16 * 64  # half of one block's hidden neurons: its coarsest step
    uniform = plan(graph, "neurons", 0.5, None, 16, None)[2]  # the one uniform fraction reaching 30 %: half of all
    amount = amount_for_parameters(graph, "neurons", 0.3, total, None, 16)
    assert isinstance(amount, dict) and 0 < len(amount) < 7
    predicted = plan(graph, "neurons", amount, None, 16, None)[2]
    assert 0.3 * total <= predicted < 0.3 * total + one_block < uniform
    result = prune_structured(model, "neurons", amount, round_to=16, example_inputs=inputs)
    assert result.removed == predicted
    widths = [block[0].out_features for block in model.blocks] + [model.inp.out_features]
    assert all(w % 16 == 0 for w in widths) and set(widths[:6]) <= {16, 32}
    assert model(*inputs).shape == (2, 1, 8)


def test_the_groups_that_matter_least_give_their_units_first():
    _, _, graph, total = _tower(quiet_blocks=(1, 4))
    amount = amount_for_parameters(graph, "neurons", 0.1, total, None, 16)
    assert amount == {"blocks.1.0": 0.5, "blocks.4.0": 0.5}


def test_fine_groups_keep_one_fraction_for_every_group():
    # 256 neurons a block, one at a time: one fraction for all comes within 0.4 % of the blocks' parameters
    model, _, graph, _ = _tower(hidden=256)
    total = sum(p.numel() for p in model.blocks.parameters())
    amount = amount_for_parameters(graph, "neurons", 0.3, total, "blocks", 1)
    assert isinstance(amount, float)
    assert 0.3 * total <= plan(graph, "neurons", amount, None, 1, "blocks")[2] <= 0.31 * total


def test_more_than_the_structure_can_remove_is_refused():
    _, _, graph, total = _tower()
    with pytest.raises(EdgevlaError, match=r"can remove at most \d+% of the parameters, asked for 99%"):
        amount_for_parameters(graph, "neurons", 0.99, total, None, 16)


def test_a_gradual_schedule_brings_every_group_to_its_own_fraction():
    amount = {"blocks.1.0": 0.5, "inp": 0.25}
    oneshot, inputs, _, _ = _tower()
    prune_structured(oneshot, "neurons", amount, round_to=16, example_inputs=inputs)
    model, inputs, _, total = _tower()
    result = gradual_prune(model, "neurons", amount, 3, schedule="cubic", round_to=16, example_inputs=inputs)
    achieved = [step.achieved for step in result.steps]
    assert achieved == sorted(achieved) and achieved[0] < achieved[-1] == result.steps[-1].target
    assert [p.shape for p in model.parameters()] == [p.shape for p in oneshot.parameters()]
    assert model.blocks[1][0].out_features == 16 and model.inp.out_features == 48
    assert result.steps[-1].params == sum(p.numel() for p in oneshot.parameters()) < total


@pytest.mark.parametrize("call, message", [
    (lambda m, x: gradual_prune(m, "neurons", {"blocks.9.0": 0.5}, 2, example_inputs=x), "no neurons group named"),
    (lambda m, x: gradual_prune(m, "blocks", {"blocks.1.0": 0.5}, 1, example_inputs=x), "a fraction per group"),
    (lambda m, x: prune_structured(m, "blocks", {"blocks.1": 0.5}, example_inputs=x), "not per group"),
    (lambda m, x: prune_structured(m, "neurons", {"inp": 1.0}, example_inputs=x), r"must be in \[0, 1\)"),
])
def test_per_group_amounts_that_cannot_apply_are_refused(call, message):
    model, inputs, _, _ = _tower()
    with pytest.raises(EdgevlaError, match=message):
        call(model, inputs)


def test_the_amount_is_said_as_the_report_prints_it():
    assert amount_said(0.25) == "25% of each group's units"
    assert amount_said({"a": 0.5, "b": 0.25, "c": 0.5}) == "a fraction of the units per group: 2 groups 50%, 1 group 25%"
