"""GPTQ int4 rounding: the blocked implementation against the column-by-column definition, its output error
against round-to-nearest's, and quantize_policy's int4_rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.quant.apply import quantize_policy
from edgevla.quant.fakequant import Int4WeightLinear
from edgevla.quant.gptq import gptq_int4, gptq_int4_reference, input_hessians, output_error
from edgevla.quant.primitives import Int4GroupedWeight
from edgevla.spec import PolicySpec, TensorSpec


def _correlated_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Inputs whose features are mixtures of a few factors plus noise, as a layer's inputs are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g) @ torch.randn(6, k, generator=g) + 0.1 * torch.randn(n, k, generator=g)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("out, k, group, scale_dtype", [(24, 384, 128, "fp32"), (7, 96, 32, "fp16"), (1, 64, 64, "fp32")])
def test_gptq_blocked_matches_the_column_by_column_definition(out, k, group, scale_dtype, act_order):
    """Blocks of 128 columns, groups that span blocks in activation order: the reference's codes and scales."""
    torch.manual_seed(0)
    w = torch.randn(out, k) * torch.rand(1, k) * 2
    x = _correlated_inputs(512, k, 1) * torch.rand(1, k) * 3  # uneven input energies: a real reordering
    h = (x.double().T @ x.double()) / x.shape[0]
    fast = gptq_int4(w, h, group, scale_dtype, act_order=act_order)
    ref = gptq_int4_reference(w, h, group, scale_dtype, act_order=act_order)
    assert fast.shape == ref.shape == (out, k) and fast.scale.shape == (out, k // group)
    mismatched = (fast.codes() != ref.codes()).float().mean().item()
    assert mismatched < 2e-3  # summation order only: a rare rounding tie
    torch.testing.assert_close(fast.scale, ref.scale, rtol=1e-5, atol=0)
    assert output_error(w, fast.dequantize(), h) == pytest.approx(output_error(w, ref.dequantize(), h), rel=2e-2)


def test_gptq_cuts_the_layer_output_error_of_round_to_nearest():
    """On correlated inputs, ‖X(W − Q)ᵀ‖² of GPTQ's codes is well below round-to-nearest's, on held-out inputs
    too; a column no calibration input reaches keeps its nearest codes (it may be reached at run time)."""
    torch.manual_seed(1)
    w = torch.randn(32, 128)
    x = _correlated_inputs(1024, 128, 2)
    x[:, 5] = 0.0  # a dead input
    h = (x.double().T @ x.double()) / x.shape[0]
    rtn, gptq = Int4GroupedWeight.from_hp(w, 32), gptq_int4(w, h, 32)
    held = _correlated_inputs(1024, 128, 2)[:, :]  # same factors: the layer's input distribution
    held[:, 5] = 0.0
    h_held = (held.double().T @ held.double()) / held.shape[0]
    assert output_error(w, gptq.dequantize(), h) < 0.5 * output_error(w, rtn.dequantize(), h)
    assert output_error(w, gptq.dequantize(), h_held) < 0.5 * output_error(w, rtn.dequantize(), h_held)
    assert torch.equal(gptq.codes()[:, 5], rtn.codes()[:, 5]) and gptq.codes()[:, 5].abs().sum() > 0
    assert gptq.codes().min() >= -8 and gptq.codes().max() <= 7


def test_gptq_refuses_what_it_cannot_round():
    w, h = torch.randn(4, 64), torch.eye(64, dtype=torch.float64)
    with pytest.raises(EdgevlaError, match="group size 48"):
        gptq_int4(w, h, 48)
    with pytest.raises(EdgevlaError, match=r"Hessian must be \(64, 64\)"):
        gptq_int4(w, torch.eye(32), 64)
    with pytest.raises(EdgevlaError, match="inf or NaN"):
        gptq_int4(w, h * float("nan"), 64)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (10, 64)),), action=TensorSpec("y", (10, 16)))
        self.mix = nn.Linear(64, 64)
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.tanh(self.mix(x)))))


def test_quantize_policy_rounds_int4_by_gptq_on_the_calibration_inputs():
    """int4_rounding gptq: the int4 layers' codes are GPTQ's from each layer's float inputs (the float weights
    stay), the export format unchanged, and the output is closer to the float policy's."""
    torch.manual_seed(3)
    policy = MLP().eval()
    mixing = torch.randn(64, 64) * 0.3 * (torch.rand(64, 1) < 0.2)  # inputs of a few directions
    batches = [(torch.randn(16, 10, 64) @ mixing + 0.05 * torch.randn(16, 10, 64),) for _ in range(4)]
    nearest = quantize_policy(policy, "w4a16", batches=batches, group_size=32)
    gptq = quantize_policy(policy, "w4a16", batches=batches, group_size=32, int4_rounding="gptq")
    layer = gptq.model.fc1
    assert isinstance(layer, Int4WeightLinear) and torch.equal(layer.weight, policy.fc1.weight)
    h = input_hessians(policy, ["fc1"], batches)["fc1"]
    expected = gptq_int4(policy.fc1.weight.detach(), h, 32)
    assert torch.equal(layer.weight_qdata, expected.qdata) and torch.equal(layer.weight_scale, expected.scale)
    test = torch.randn(64, 10, 64) @ mixing + 0.05 * torch.randn(64, 10, 64)
    with torch.no_grad():
        want = policy(test)
        errors = [float((r.model(test) - want).square().mean()) for r in (nearest, gptq)]
    assert errors[1] < 0.7 * errors[0]
    with pytest.raises(EdgevlaError, match="unknown int4 rounding 'awq'"):
        quantize_policy(policy, "w4a16", batches=batches, int4_rounding="awq")
