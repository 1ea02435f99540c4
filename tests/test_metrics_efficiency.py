"""E(M), reductions and the roofline floor against the seed's example and hand computations."""

from __future__ import annotations

import pytest
import torch

from edgevla.errors import EdgevlaError
from edgevla.metrics.efficiency import (EfficiencyScore, efficiency_improvement, efficiency_score,
                                        reduction_pct, roofline_estimate)
from edgevla.metrics.flops import flop_report


def test_seed_worked_example():
    # efficient-vla seed, section 4.2.4, example 1 (alpha, beta, gamma = 0.4, 0.3, 0.3).
    m0 = efficiency_score(P=0.95, C_gflops=1000, M_gb=4, T_ms=1000, alpha=0.4, beta=0.3, gamma=0.3)
    m1 = efficiency_score(P=0.92, C_gflops=400, M_gb=2, T_ms=400, alpha=0.4, beta=0.3, gamma=0.3)
    assert (m0.E_c, m0.E_m, m0.E_i) == pytest.approx((0.00095, 0.2375, 0.00095))
    assert (m1.E_c, m1.E_m, m1.E_i) == pytest.approx((0.0023, 0.46, 0.0023))
    # The full formula, by hand: 0.4*0.00095 + 0.3*0.2375 + 0.3*0.00095.
    assert m0.E == pytest.approx(0.071915)
    assert m1.E == pytest.approx(0.13961)
    # The seed prints 0.0716 and 0.1389: the sums without the gamma * E_i term.
    assert round(m0.E - m0.gamma * m0.E_i, 4) == 0.0716
    assert round(m1.E - m1.gamma * m1.E_i, 4) == 0.1389
    assert round(efficiency_improvement(m0, m1), 2) == 0.94
    assert EfficiencyScore.from_dict(m1.to_dict()) == m1


@pytest.mark.parametrize("kwargs", [
    dict(P=1.2, C_gflops=1, M_gb=1, T_ms=1),
    dict(P=0.5, C_gflops=0, M_gb=1, T_ms=1),
    dict(P=0.5, C_gflops=1, M_gb=-1, T_ms=1),
    dict(P=0.5, C_gflops=1, M_gb=1, T_ms=float("inf")),
    dict(P=0.5, C_gflops=1, M_gb=1, T_ms=1, alpha=0.5, beta=0.5, gamma=0.5),
    dict(P=0.5, C_gflops=1, M_gb=1, T_ms=1, alpha=1.2, beta=-0.2, gamma=0.0),
])
def test_invalid_efficiency_inputs_are_user_errors(kwargs):
    with pytest.raises(EdgevlaError):
        efficiency_score(**kwargs)


def test_improvement_needs_a_positive_start():
    with pytest.raises(EdgevlaError):
        efficiency_improvement(0.0, 0.5)


@pytest.mark.parametrize("before, after, expected", [
    (100, 40, 60.0), (4.0, 2.0, 50.0), (8, 10, -25.0), (0, 0, 0.0), (0, 3, None), (None, 3, None), (5, None, None),
])
def test_reduction_pct(before, after, expected):
    assert reduction_pct(before, after) == (pytest.approx(expected) if expected is not None else None)


def test_roofline_floor_by_hand():
    peak, bandwidth = 1e12, 1e11
    layers = [(2e9, 1e6),   # 2 ms of arithmetic vs 0.01 ms of weights: compute-bound
              (2e6, 4e8),   # 0.002 ms vs 4 ms: memory-bound
              (0, 0)]       # neither (e.g. a layer with no weights and no counted FLOPs)
    est = roofline_estimate(layers, peak, bandwidth)
    assert est.floor_ms == pytest.approx(6.0)
    assert (est.compute_bound_layers, est.memory_bound_layers) == (1, 1)
    assert (est.flops, est.weight_bytes) == (int(2e9 + 2e6), int(1e6 + 4e8))


@pytest.mark.parametrize("tokens, memory_bound", [(200, True), (220, False)])
def test_roofline_agrees_with_the_arithmetic_intensity_rule(tokens, memory_bound):
    # HARDWARE.md: a linear layer over M tokens with b bytes per weight is memory-bound
    # when M < (peak / bandwidth) * b / 2; AGX Orin fp16: 42.5e12 / 204.8e9 * 2 / 2 = 207.5.
    peak, bandwidth, dim = 42.5e12, 204.8e9, 512
    layer = torch.nn.Linear(dim, dim, bias=False).half()
    report = flop_report(layer, torch.randn(1, tokens, dim).half())
    est = roofline_estimate([(r.flops, r.weight_bytes) for r in report.per_layer], peak, bandwidth)
    assert est.memory_bound_layers == int(memory_bound) and est.compute_bound_layers == int(not memory_bound)
    assert est.floor_ms == pytest.approx(1e3 * max(2 * dim * dim / bandwidth, 2 * tokens * dim * dim / peak))


def test_roofline_rejects_bad_figures():
    with pytest.raises(EdgevlaError):
        roofline_estimate([(1.0, 1.0)], 0, 1e9)
    with pytest.raises(EdgevlaError):
        roofline_estimate([(-1.0, 1.0)], 1e12, 1e9)
