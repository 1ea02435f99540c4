"""Quantization-aware training: the straight-through gradient, codes re-derived after training, pruned zeros
kept, and a measurable gain on an int4 model that PTQ leaves noisy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.prune import nm_mask
from edgevla.quant import (Int4WeightOnlyConfig, Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig,
                           qat_mode, quantization_aware_training, quantize_, quantize_policy, settle, settled_copy,
                           zeros_held)
from edgevla.quant.primitives import cast_roundtrip
from edgevla.quant.primitives import Int4GroupedWeight
from edgevla.spec import PolicySpec, TensorSpec

pytestmark = pytest.mark.usefixtures("torch_one_thread")

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (64,), low=-1, high=1),), action=TensorSpec("a", (2, 4)))
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 8)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x))))).reshape(-1, 2, 4)


def _stream(teacher, spec, batch=32, seed=100):
    i = 0
    while True:
        x = torch.from_numpy(spec.example(batch, seed=seed + i)["x"])
        with torch.no_grad():
            y = teacher(x)
        yield [x], y
        i += 1


def test_straight_through_gradient_reaches_the_float_weight():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(8, 4))
    quantize_(lin, Int8WeightOnlyConfig())
    layer = lin[0]
    x = torch.randn(5, 8)
    g = torch.randn(5, 4)
    with qat_mode(lin):
        (lin(x) * g).sum().backward()
    assert torch.allclose(layer.weight.grad, g.T @ x, atol=1e-6)  # d(quantized w)/dw taken as the identity
    lin2 = nn.Sequential(nn.Linear(8, 4))
    quantize_(lin2, Int8StaticActivationInt8WeightConfig(activation_amax={"0": 1.0}))
    xr = torch.randn(5, 8, requires_grad=True)
    with qat_mode(lin2):
        (lin2(xr) * g).sum().backward()
    w_q = lin2[0].quantized_weight()
    assert torch.allclose(xr.grad, g @ w_q, atol=1e-6)  # the input's rounding is straight-through too


def test_leaving_qat_rederives_codes_from_the_trained_weight():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(64, 8))
    quantize_(lin, Int4WeightOnlyConfig(group_size=32))
    layer = lin[0]
    with qat_mode(lin):
        with torch.no_grad():
            layer.weight.mul_(1.7).add_(0.01)
    expected = Int4GroupedWeight.from_hp(layer.weight, 32)
    assert torch.equal(layer.weight_qdata, expected.qdata) and torch.equal(layer.weight_scale, expected.scale)
    assert not layer.qat


def test_qat_improves_int4_and_keeps_pruned_zeros():
    torch.manual_seed(0)
    teacher = MLP().eval()
    with torch.no_grad():  # 2:4 on fc2, as pruning leaves it: exact zeros in a plain weight
        teacher.fc2.weight.mul_(nm_mask(teacher.fc2.weight.abs(), 2, 4))
    zeros = teacher.fc2.weight == 0
    r = quantize_policy(teacher, "w4a16", group_size=32)
    held = [torch.from_numpy(teacher.spec.example(256, seed=7)["x"])]
    report = quantization_aware_training(r.model, teacher, _stream(teacher, teacher.spec), steps=80, heldout=held,
                                         w_task=0.0)
    assert report.sqnr_after_db > report.sqnr_before_db + 1.0, report
    assert report.kept_zeros == int(zeros.sum()) > 0
    assert (r.model.fc2.weight[zeros] == 0).all()
    assert (r.model.fc2.int4_weight.codes()[zeros] == 0).all()


def test_qat_needs_a_quantized_model_and_steps():
    teacher = MLP()
    with pytest.raises(EdgevlaError, match="no fake-quant layers"):
        quantization_aware_training(MLP(), teacher, _stream(teacher, teacher.spec), steps=5, heldout=[torch.zeros(1, 64)])
    r = quantize_policy(teacher, "w8a16")
    with pytest.raises(EdgevlaError, match="positive number of steps"):
        quantization_aware_training(r.model, teacher, _stream(teacher, teacher.spec), steps=0, heldout=[torch.zeros(1, 64)])


def test_qat_that_does_not_help_is_undone():
    torch.manual_seed(0)
    teacher = MLP().eval()
    r = quantize_policy(teacher, "w8a16")
    before = {k: v.clone() for k, v in r.model.state_dict().items()}
    held = [torch.from_numpy(teacher.spec.example(64, seed=7)["x"])]
    # A learning rate far too large wrecks the model; the PTQ weights must come back.
    report = quantization_aware_training(r.model, teacher, _stream(teacher, teacher.spec), steps=5, heldout=held,
                                         lr=1.0)
    assert report.kept == "ptq" and report.sqnr_trained_db < report.sqnr_before_db == report.sqnr_after_db
    assert all(torch.equal(before[k], v) for k, v in r.model.state_dict().items())


def _train(model: nn.Module, teacher: nn.Module, steps: int, lr: float = 1e-2) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for [x], y in (b for _, b in zip(range(steps), _stream(teacher, teacher.spec))):
        optimizer.zero_grad()
        F.mse_loss(model(x), y + 0.1).backward()  # a target off the teacher's: every weight has somewhere to go
        optimizer.step()


def test_zeros_held_keeps_pruned_zeros_exactly_and_trains_the_rest():
    torch.manual_seed(0)
    teacher = MLP().eval()
    with torch.no_grad():
        teacher.fc2.weight.mul_(nm_mask(teacher.fc2.weight.abs(), 2, 4))
    r = quantize_policy(teacher, "w8a8", batches=[(torch.from_numpy(teacher.spec.example(64, seed=3)["x"]),)])
    before = r.model.fc2.weight.detach().clone()
    with qat_mode(r.model), zeros_held(r.model) as masks:
        _train(r.model, teacher, 5)
    assert set(masks) == {"fc2"}  # only the layer with zeros
    zeros = before == 0
    assert (r.model.fc2.weight[zeros] == 0).all() and (r.model.fc2.int8_weight.qdata[zeros] == 0).all()
    assert (r.model.fc2.weight[~zeros] != before[~zeros]).float().mean() > 0.9  # the kept weights trained
    assert r.model.fc2.weight.grad is not None and (r.model.fc2.weight.grad[zeros] == 0).all()


def _out_of_qat(model: nn.Module) -> nn.Module:
    """A copy computing with its stored codes, as a fake-quant model does outside :func:`qat_mode`."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if hasattr(m, "qat"):
            m.qat = False
    return copied


def test_a_settled_copy_is_the_model_as_it_would_ship_and_the_original_keeps_training():
    torch.manual_seed(0)
    teacher = MLP().eval()
    batches = [(torch.from_numpy(teacher.spec.example(64, seed=3)["x"]),)]
    r = quantize_policy(teacher, "w8a8", batches=batches, float_dtype="fp16")
    x = torch.from_numpy(teacher.spec.example(32, seed=9)["x"])
    with qat_mode(r.model):
        with torch.no_grad():
            ptq = settled_copy(r.model, "fp16", tables=True)(x)
            assert torch.equal(ptq, _out_of_qat(r.model)(x))  # untrained, the copy is the PTQ model bit for bit
        _train(r.model, teacher, 5)
        shipped = settled_copy(r.model, "fp16", tables=True)
        assert r.model.fc1.qat and not shipped.fc1.qat
        bias = r.model.fc1.bias.detach()
        assert not torch.equal(bias, cast_roundtrip(bias, "fp16"))  # the trained model keeps its fp32 masters
        assert torch.equal(shipped.fc1.bias, cast_roundtrip(bias, "fp16"))  # what ships stores fp16
        with torch.no_grad():
            judged = shipped(x)
    settle(r.model, "fp16", tables=True)  # leaving QAT re-derived the codes; settling rounds the rest
    with torch.no_grad():
        assert torch.equal(judged, r.model(x)) and not torch.equal(judged, ptq)
