"""Mixed precision: per-layer SQNR finds the layer built to be sensitive; an SQNR floor or a success
budget keeps it (and only it) in floating point; per-layer configs and float storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.quant import (PerLayerConfig, Int8WeightOnlyConfig, fallback_by_sqnr, fallback_by_success, layer_sqnr,
                           model_sqnr, quantize_, quantize_policy, quantized_layers, round_float_storage)
from edgevla.spec import PolicySpec, TensorSpec

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Outlier(nn.Module):
    """``b`` reads a channel scaled 1000x (with a tiny weight on it): per-tensor int8 destroys the rest."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (16,), low=-1, high=1),), action=TensorSpec("a", (1, 4)))
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        gain = torch.ones(32)
        gain[3] = 1000.0
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.b.weight[:, 3] *= 1e-4

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = h + self.b(h * self.gain)
        return self.c(h).reshape(-1, 1, 4)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    policy = Outlier().eval()
    obs = policy.spec.example(64, seed=3)
    batches = [(torch.from_numpy(obs["x"]),)]
    return policy, batches


def test_layer_sqnr_finds_the_sensitive_layer(setup):
    policy, batches = setup
    r = quantize_policy(policy, "w8a8", batches=batches)
    solo = layer_sqnr(r.model, batches)
    assert set(solo) == {"a", "b", "c"}
    assert solo["b"] < 15.0 and min(solo["a"], solo["c"]) > 30.0
    assert fallback_by_sqnr(solo, 25.0) == ["b"]
    # The whole model is as bad as its worst layer; with b float it is as good as the rest.
    kept = quantize_policy(policy, "w8a8", batches=batches, skip=["b"])
    assert model_sqnr(r.model, batches) < 15.0 < 30.0 < model_sqnr(kept.model, batches)
    assert kept.formats == {"a": "w8a8", "b": "float", "c": "w8a8"}
    # Probing leaves every layer quantized again.
    assert all(not m.float_mode for m in quantized_layers(r.model).values())


def test_success_budget_bisects_to_the_fewest_float_layers(setup):
    policy, batches = setup
    r = quantize_policy(policy, "w8a8", batches=batches)
    solo = layer_sqnr(r.model, batches)
    calls = []

    def success(model):  # a stand-in closed loop: success follows the output error
        calls.append(1)
        return 1.0 if model_sqnr(model, batches) > 25.0 else 0.4

    search = fallback_by_success(r.model, solo, success, required=0.98)
    assert search.met and search.fallback == ["b"]
    assert [k for k, _ in search.probes][:2] == [0, 3] and len(calls) <= 4
    impossible = fallback_by_success(r.model, solo, lambda m: 0.0, required=0.5)
    assert not impossible.met and impossible.fallback == sorted(solo, key=solo.get)


def test_per_layer_config_and_its_errors():
    torch.manual_seed(1)
    m = Outlier()
    formats = quantize_(m, PerLayerConfig(layers={"a": Int8WeightOnlyConfig()}))
    assert formats == {"a": "w8a16", "b": "float", "c": "float"}
    with pytest.raises(EdgevlaError, match="per-layer config names no nn.Linear or convolution: z"):
        quantize_(Outlier(), PerLayerConfig(layers={"z": Int8WeightOnlyConfig()}))
    with pytest.raises(EdgevlaError, match="plain quantization config"):
        PerLayerConfig(layers={"a": PerLayerConfig()})


def test_w4a16_group_falls_back_by_input_width():
    class Widths(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = PolicySpec(observations=(TensorSpec("x", (96,), low=-1, high=1),), action=TensorSpec("a", (1, 2)))
            self.wide, self.odd, self.head = nn.Linear(96, 256), nn.Linear(256, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.relu(self.odd(torch.relu(self.wide(x))))).reshape(-1, 1, 2)

    r = quantize_policy(Widths(), "w4a16", group_size=128)
    # 96 inputs: 128 and 64 do not divide, 32 does; 256: 128; 6: none, so int8 weights.
    assert r.group_sizes == {"wide": 32, "odd": 128}
    assert r.formats == {"wide": "w4a16", "odd": "w4a16", "head": "w8a16"}


def test_float_storage_rounds_what_stays_float_and_spares_the_codes_source(setup):
    policy, batches = setup
    r = quantize_policy(policy, "w8a8", batches=batches, skip=["b"])
    weight_a = r.model.a.weight.detach().clone()
    names = round_float_storage(r.model, "fp16")
    assert "b.weight" in names and "a.bias" in names and "a.weight" not in names and "a.input_scale" not in names
    assert torch.equal(r.model.b.weight, r.model.b.weight.half().float())
    assert torch.equal(r.model.a.weight, weight_a)  # the int8 codes' source is not rounded
    assert round_float_storage(r.model, "fp32") == []


def test_float_storage_follows_the_target():
    from edgevla.quant import storage_dtype
    from edgevla.targets import load_target

    assert storage_dtype(load_target("jetson-orin")) == "fp16"
    assert storage_dtype(load_target("x86-64-cpu")) == "fp32"
    assert storage_dtype(load_target("h100"), "bf16") == "bf16"
    with pytest.raises(EdgevlaError, match="float storage fp16: target x86-64-cpu does not run it"):
        storage_dtype(load_target("x86-64-cpu"), "fp16")
