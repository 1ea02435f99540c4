"""AWQ's activation-aware int4 scales: the scale's shape, the search's error against the data's, the folds kept
exact, and quantize_policy's int4_scaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.quant.apply import quantize_policy
from edgevla.quant.awq import awq_, awq_scale, gptq_scaled_int4, scaled_int4, search_scale
from edgevla.quant.primitives import Int4GroupedWeight
from edgevla.spec import PolicySpec, TensorSpec


def _outlier_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Inputs with a few channels far larger than the rest, as a norm's outputs in a transformer are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g) * (0.5 + torch.rand(k, generator=g))
    x[:, [3, 17, 40]] *= 25.0
    return x


def test_the_scale_is_a_power_of_the_magnitude_centred_on_one():
    a = torch.tensor([0.5, 2.0, 8.0, 0.0, 1.0])
    s = awq_scale(a, 0.5)
    live = a > 0
    assert s[3] == 1.0  # never reached: left alone
    assert float(s[live].max() * s[live].min()) == pytest.approx(1.0)
    torch.testing.assert_close(s[live] / s[live][0], (a[live] / a[0]).pow(0.5))
    assert torch.equal(awq_scale(a, 0.0), torch.ones(5))


def test_the_search_measures_the_output_error_on_the_calibration_inputs():
    """The error the search reports is ‖X Wᵀ − X Ŵᵀ‖² / n of the scaled-and-rounded weights on the inputs, the
    chosen alpha's never above alpha 0's (plain rounding), and on outlier channels well below it."""
    torch.manual_seed(0)
    x = _outlier_inputs(2048, 128, 1)
    w1, w2 = torch.randn(48, 128), torch.randn(32, 128)
    h = x.double().T @ x.double() / x.shape[0]
    s, alpha, before, after = search_scale([w1, w2], h, [32, 64])

    def data_error(columns):
        return sum(float(((x @ w.T - x @ scaled_int4(w, columns, g, "fp32").T) ** 2).sum()) / x.shape[0]
                   for w, g in ((w1, 32), (w2, 64)))

    assert before == pytest.approx(data_error(torch.ones(128)), rel=1e-3)
    assert after == pytest.approx(data_error(s), rel=1e-3)
    assert before == pytest.approx(sum(float(((x @ w.T - x @ Int4GroupedWeight.from_hp(w, g).dequantize().T) ** 2)
                                             .sum()) / x.shape[0] for w, g in ((w1, 32), (w2, 64))), rel=1e-3)
    assert alpha > 0 and after < 0.6 * before
    held = _outlier_inputs(2048, 128, 2)  # same channel statistics, other samples: the gain holds
    held_error = [sum(float(((held @ w.T - held @ scaled_int4(w, c, g, "fp32").T) ** 2).sum())
                      for w, g in ((w1, 32), (w2, 64))) for c in (torch.ones(128), s)]
    assert held_error[1] < 0.7 * held_error[0]


def test_under_gptq_the_search_measures_gptq_rounding_of_the_scaled_weights():
    """With rounding gptq each try is GPTQ on ``W·s`` and ``S⁻¹HS⁻¹``: the reported errors are those of that
    rounding, on the data, and the scale still pays on outlier channels."""
    torch.manual_seed(4)
    x = _outlier_inputs(2048, 128, 5)
    w = torch.randn(40, 128)
    h = x.double().T @ x.double() / x.shape[0]
    s, alpha, before, after = search_scale([w], h, [32], rounding="gptq")
    for columns, error in ((torch.ones(128), before), (s, after)):
        q = gptq_scaled_int4(w, columns, 32, "fp32", h)
        assert error == pytest.approx(float(((x @ w.T - x @ q.T) ** 2).sum()) / x.shape[0], rel=1e-3)
    assert alpha > 0 and after < before
    with pytest.raises(EdgevlaError, match="unknown rounding 'stochastic'"):
        search_scale([w], h, [32], rounding="stochastic")


def test_rows_carried_to_several_channels_share_one_scale():
    """A value row read by two query heads' channels (grouped-query attention) gets one scale, from the RMS
    over both channels."""
    torch.manual_seed(1)
    x = _outlier_inputs(1024, 64, 3)
    x[:, 32:] = x[:, :32] * 0.5  # channel j + 32 carries row j too
    h = x.double().T @ x.double() / x.shape[0]
    channels = tuple(range(32)) * 2
    s, alpha, before, after = search_scale([torch.randn(16, 64)], h, [32], channels=channels, rows=32)
    assert s.shape == (32,) and alpha > 0 and after < before
    rms = torch.diagonal(h).float().sqrt()
    expected = awq_scale(((rms[:32] ** 2 + rms[32:] ** 2) / 2).sqrt(), alpha)
    torch.testing.assert_close(s, expected)


class Block(nn.Module):
    """A norm read by two Linears, a gated MLP (up -> down) and a norm whose reader stays out of int4."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (8, 64)),), action=TensorSpec("y", (8, 64)))
        self.norm = nn.LayerNorm(64)
        self.q, self.k = nn.Linear(64, 64), nn.Linear(64, 64)
        self.gate, self.up, self.down = nn.Linear(64, 128), nn.Linear(64, 128), nn.Linear(128, 64)
        self.norm2, self.head = nn.LayerNorm(64), nn.Linear(64, 64)
        with torch.no_grad():
            for ln in (self.norm, self.norm2):  # outlier channels, as trained norms grow them
                ln.weight.copy_(1.0 + torch.rand(64))
                ln.weight[[5, 9, 30]] = 20.0
                ln.bias.copy_(0.1 * torch.randn(64))
            self.up.weight[[2, 70]] *= 15.0

    def forward(self, x):
        h = self.norm(x)
        h = torch.tanh(self.q(h)) * self.k(h)
        m = self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(self.norm2(m))


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, 64, generator=g),) for _ in range(n)]


def test_awq_folds_exactly_and_only_where_every_reader_is_int4():
    torch.manual_seed(2)
    model, batches = Block().eval(), _batches(4, 0)
    reference = [model(*b) for b in batches]
    norm2_before = model.norm2.weight.detach().clone()
    sizes = {"q": 32, "k": 32, "gate": 64, "up": 64, "down": 128}  # head is not int4: norm2 stays
    done = awq_(model, sizes, batches)
    assert {d.norm for d in done} == {"norm", "k", "up"}  # k: the value of q's gate, read by gate and up
    assert all(d.error_after <= d.error_before for d in done)
    assert any(d.alpha > 0 and d.error_after < 0.8 * d.error_before for d in done)
    assert torch.equal(model.norm2.weight, norm2_before)
    with torch.no_grad():
        for b, r in zip(batches, reference, strict=True):
            torch.testing.assert_close(model(*b), r, rtol=1e-4, atol=1e-4)


def test_quantize_policy_scales_int4_readers_by_awq():
    """int4_scaling awq: held-out outputs closer to float than without, under either rounding (the scale searched
    against the rounding that follows); the groups scaled are reported; the float policy is untouched."""
    torch.manual_seed(3)
    policy, calib, held = Block().eval(), _batches(8, 1), _batches(4, 2)
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        reference = torch.cat([policy(*b) for b in held])

    def error(scaling, rounding):
        result = quantize_policy(policy, "w4a16", batches=calib, group_size=32, int4_scaling=scaling,
                                 int4_rounding=rounding)
        with torch.no_grad():
            out = torch.cat([result.model(*b) for b in held])
        return float(((out - reference) ** 2).mean()), result

    for rounding, gain in (("nearest", 0.9), ("gptq", 0.75)):  # measured: 0.81 and 0.62
        plain, plain_result = error("none", rounding)
        scaled, result = error("awq", rounding)
        assert plain_result.awq == [] and {d.norm for d in result.awq} == {"norm", "k", "up", "norm2"}
        assert scaled < gain * plain, rounding
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(EdgevlaError, match="unknown int4 scaling 'smooth'"):
        quantize_policy(policy, "w4a16", batches=calib, int4_scaling="smooth")
