"""Sensitivity analysis: curves on the trained tiny-vla, greedy allocation under a global target, the plot."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgevla.errors import EdgevlaError
from edgevla.models.zoo import load_policy
from edgevla.prune import (SensitivityCurve, SensitivityResult, allocate_sparsity, apply_allocation,
                           layer_sensitivity, plot_sensitivity)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-vla").policy.eval()


@pytest.fixture(scope="module")
def curves(tiny):
    return layer_sensitivity(tiny, (0.1, 0.5, 1.0), units=["trunk.0.mlp.fc1", "trunk.0.attn.q"], episodes=30)


def test_removing_a_trunk_layer_hurts_more_than_trimming_it(tiny, curves):
    # Measured on tiny-vla: the first trunk attention carries the task (q fully pruned: success 1.0 -> ~0.04);
    # a trunk MLP does not change success but its action error grows by orders of magnitude with sparsity.
    fc1, q = curves.curve("trunk.0.mlp.fc1"), curves.curve("trunk.0.attn.q")
    assert fc1.sparsities == q.sparsities == [0.1, 0.5, 1.0]
    assert fc1.action_error[2] > fc1.action_error[1] > fc1.action_error[0] >= 0.0
    assert fc1.action_error[2] > 100 * fc1.action_error[0]
    assert q.success[0] == curves.base_success == 1.0
    assert q.success[2] < 0.5 and q.action_error[2] > 10 * fc1.action_error[2]
    assert fc1.params == tiny.trunk[0].mlp.fc1.weight.numel()
    # Each of the readout's 1 + tokens rows: 2 * in * out FLOPs per row, at least one row.
    assert fc1.flops >= 2 * fc1.params and fc1.flops % (2 * fc1.params) == 0
    assert tiny.trunk[0].mlp.fc1.weight.count_nonzero() == fc1.params  # the policy itself is untouched
    assert fc1.latency_us > 0.0 and q.latency_us > 0.0  # measured on this host: only its sign is a fact
    rows = curves.table()
    assert len(rows) == 6 and rows[0] == {"unit": "trunk.0.mlp.fc1", "params": fc1.params, "flops": fc1.flops,
                                          "latency_us": fc1.latency_us, "sparsity": 0.1,
                                          "success": fc1.success[0], "action_error": fc1.action_error[0]}
    assert SensitivityResult.from_dict(curves.to_dict()) == curves


def _result(units: dict[str, tuple[int, list[float]]]) -> SensitivityResult:
    grid = [0.25, 0.5, 0.75, 1.0]
    return SensitivityResult("unstructured", 1.0, [
        SensitivityCurve(u, [u], params, 3 * params, grid, [1.0 - e for e in errors], errors, params / 8)
        for u, (params, errors) in units.items()])


def test_allocation_prunes_the_flattest_curve_first_and_meets_the_target_exactly():
    result = _result({"flat": (100, [0.0, 0.01, 0.02, 0.5]), "steep": (300, [0.2, 0.4, 0.8, 1.6]),
                      "middle": (200, [0.01, 0.05, 0.1, 0.3])})
    alloc = allocate_sparsity(result, 0.3)
    # Greedy by damage added per weight removed, 180 of 600 weights to go:
    #   flat 0->.25 (slope 0, 25 w), middle 0->.25 (.01/50, 75 w), flat ->.5 (.01/25, 100 w),
    #   flat ->.75 (.01/25, 125 w), middle ->.5 (.04/50, 175 w); then middle's next step (.05/50) beats
    #   flat's (.48/25) and steep's (.2/75) and is cut short at the 5 weights left: .5 + 5/200 = .525.
    assert alloc.sparsity == pytest.approx({"flat": 0.75, "middle": 0.525, "steep": 0.0})
    assert alloc.removed == 180 and alloc.total == 600 and alloc.achieved == pytest.approx(0.3)
    by_success = allocate_sparsity(result, 0.3, metric="success")
    assert by_success.sparsity == pytest.approx(alloc.sparsity)


@pytest.mark.parametrize("target", [0.05, 0.37, 0.5, 0.81])
def test_allocation_removes_the_target_share_of_parameters_and_flops(target):
    result = _result({"a": (96, [0.01, 0.03, 0.2, 0.9]), "b": (384, [0.0, 0.02, 0.05, 0.7]),
                      "c": (1000, [0.05, 0.1, 0.3, 1.0])})
    # Latency here is params / 8 microseconds: proportional to params, as FLOPs are.
    for cost, unit in (("params", 1), ("flops", 3), ("latency", 1000 / 8)):
        alloc = allocate_sparsity(result, target, cost=cost)
        removed = sum(alloc.sparsity[c.unit] * c.params for c in result.curves)
        assert removed == pytest.approx(target * 1480, abs=1e-6)
        assert alloc.total == round(1480 * unit)
        assert abs(alloc.removed - target * alloc.total) <= 3 * unit
        assert all(0.0 <= s <= 1.0 for s in alloc.sparsity.values())
    capped = allocate_sparsity(result, 0.5, max_sparsity=0.6)
    assert max(capped.sparsity.values()) <= 0.6 + 1e-12
    with pytest.raises(EdgevlaError, match="cannot be met"):
        allocate_sparsity(result, 0.7, max_sparsity=0.6)
    with pytest.raises(EdgevlaError, match="cost"):
        allocate_sparsity(result, 0.5, cost="watts")


def test_latency_allocation_cuts_where_time_is_cheapest_to_remove():
    # Equal damage curves and parameters; "slow" takes 9x the time: a latency target is met by pruning it
    # first, a parameter target cannot tell the two apart.
    curves = [SensitivityCurve(u, [u], 100, 300, [0.5, 1.0], [1.0, 1.0], [0.1, 0.2], us)
              for u, us in (("fast", 10.0), ("slow", 90.0))]
    result = SensitivityResult("unstructured", 1.0, curves)
    alloc = allocate_sparsity(result, 0.45, cost="latency")
    assert alloc.sparsity == pytest.approx({"fast": 0.0, "slow": 0.5})
    assert (alloc.removed, alloc.total) == (45_000, 100_000)


def test_applied_allocation_masks_exact_counts(tiny):
    layers = ["trunk.0.mlp.fc1", "trunk.1.mlp.fc2", "trunk.2.attn.v"]
    sizes = [tiny.get_submodule(n).weight.numel() for n in layers]
    result = SensitivityResult("unstructured", 1.0, [
        SensitivityCurve(n, [n], size, 0, [0.5, 1.0], [1.0, 0.0], [0.1 * (i + 1), 1.0])
        for i, (n, size) in enumerate(zip(layers, sizes))])
    alloc = allocate_sparsity(result, 0.4)
    model = copy.deepcopy(tiny)
    apply_allocation(model, result, alloc)
    zeros = {n: int((model.get_submodule(n).weight == 0).sum()) for n in layers}
    assert zeros == {n: round(alloc.sparsity[n] * s) for n, s in zip(layers, sizes)}
    assert abs(sum(zeros.values()) - 0.4 * sum(sizes)) <= len(layers)


def test_plot_writes_a_png(curves, tmp_path):
    path = plot_sensitivity(curves, tmp_path / "plots" / "sensitivity.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(EdgevlaError, match="plot metric"):
        plot_sensitivity(curves, tmp_path / "x.png", metric="latency")


def test_bad_sensitivity_requests_are_one_line_errors(tiny):
    with pytest.raises(EdgevlaError, match="no nn.Linear named"):
        layer_sensitivity(tiny, units=["trunk.9.mlp.fc1"])
    with pytest.raises(EdgevlaError, match="fractions"):
        layer_sensitivity(tiny, (0.5, 1.5), units=["trunk.0.mlp.fc1"])
    with pytest.raises(EdgevlaError, match="structure"):
        layer_sensitivity(tiny, structure="rows", units=["trunk.0.mlp.fc1"])
    with pytest.raises(EdgevlaError, match="no nn.Linear layers"):
        layer_sensitivity(nn.Sequential(nn.ReLU()), scope="trunk", heldout=((torch.zeros(1, 2),), torch.zeros(1)))
