"""The precision ladder: which forms sit above each layer's, quantizing a layer in a form of its own, and
mixed precision raising a sensitive layer to the first rung that meets the floor — a finer int4 group for
weights whose groups mix scales, int8 weights with a float input for an input int8 cannot hold — in PyTorch,
ONNX Runtime and the native kernels alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.export.lint import lint_qdq
from edgevla.export.qdq import export_qdq
from edgevla.quant import (fallback_by_success, form_of, layer_sqnr, model_sqnr, parse_form, quantize_policy,
                           quantized_layers, raise_by_sqnr, rungs_above, wearing)
from edgevla.quant.mixed import noise_sum_db
from edgevla.runtime.model import NativeModel
from edgevla.spec import PolicySpec, TensorSpec

from test_quant_mixed import Outlier
from user_policies import onnx_parity, reference_session

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class MixedScales(nn.Module):
    """``a``'s first 32 input columns carry weights 64x larger than the rest (their inputs 64x smaller, so
    every column adds alike to the output): one int4 scale over 128 or 64 columns rounds the small weights
    away, a group of 32 holds each scale on its own."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (128,), low=-1, high=1),), action=TensorSpec("a", (1, 8)))
        self.a, self.b = nn.Linear(128, 64), nn.Linear(64, 8)
        gain = torch.full((128,), 8.0)
        gain[:32] = 1 / 8
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.a.weight.div_(gain)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x * self.gain))).reshape(-1, 1, 8)


class WithConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("img", (3, 8, 8), low=0, high=1),), action=TensorSpec("a", (1, 4)))
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8 * 36, 4)

    def forward(self, img):
        return self.head(torch.relu(self.conv(img)).flatten(1)).reshape(-1, 1, 4)


def _batches(policy, n=16):
    return [tuple(torch.from_numpy(v) for v in policy.spec.example(n, seed=3).values())]


@pytest.fixture
def outlier_w8a8():
    """Outlier under w8a8: its calibration batches, the fake-quant result and each layer's solo SQNR."""
    torch.manual_seed(0)
    policy = Outlier().eval()
    batches = _batches(policy, 64)
    r = quantize_policy(policy, "w8a8", batches=batches)
    return batches, r, layer_sqnr(r.model, batches)


@pytest.fixture
def mixed_scales_w4():
    """MixedScales under w4a16 in groups of 128: the policy, its batches, the result and the solo SQNRs."""
    torch.manual_seed(0)
    policy = MixedScales().eval()
    batches = _batches(policy)
    r = quantize_policy(policy, "w4a16", group_size=128)
    return policy, batches, r, layer_sqnr(r.model, batches)


def test_each_format_has_its_rungs_least_precise_first():
    torch.manual_seed(0)
    w4 = quantize_policy(MixedScales().eval(), "w4a16", group_size=128)
    assert w4.group_sizes == {"a": 128, "b": 64}
    assert rungs_above(w4.model.a) == ["w4a16/g64", "w4a16/g32", "w8a16", "float"]
    assert rungs_above(w4.model.b) == ["w4a16/g32", "w8a16", "float"]
    assert [form_of(w4.model.a), form_of(w4.model.b)] == ["w4a16/g128", "w4a16/g64"]
    policy = WithConv().eval()
    w8 = quantize_policy(policy, "w8a8", batches=_batches(policy))
    assert rungs_above(w8.model.conv) == rungs_above(w8.model.head) == ["w8a16", "float"]
    w4conv = quantize_policy(policy, "w4a16", group_size=32)
    assert form_of(w4conv.model.conv) == "w8a16" and rungs_above(w4conv.model.conv) == ["float"]  # int8 is its top
    w4conv.model.head.float_mode = True
    assert form_of(w4conv.model.head) == "float" and rungs_above(w4conv.model.head) == []


@pytest.mark.parametrize("form", ["w4a16/g48", "int3", "w4a16", "w8a8"])
def test_an_unknown_form_is_refused_in_one_line(form):
    with pytest.raises(EdgevlaError, match=f"unknown layer form {form!r}"):
        parse_form(form)


def test_a_layer_quantized_in_a_form_of_its_own():
    torch.manual_seed(0)
    policy = WithConv().eval()
    batches = _batches(policy)
    r = quantize_policy(policy, "w8a8", batches=batches, forms={"conv": "w8a16", "head": "float"})
    assert r.formats == {"conv": "w8a16", "head": "float"} and r.activation_amax == {}
    r = quantize_policy(MixedScales().eval(), "w4a16", forms={"a": "w4a16/g32", "b": "w8a16"})
    assert r.formats == {"a": "w4a16", "b": "w8a16"} and r.group_sizes == {"a": 32}
    for forms, message in [({"conv": "w4a16/g32"}, "conv: w4a16/g32 is a Linear form"),
                           ({"nope": "w8a16"}, "per-layer forms name no nn.Linear or convolution: nope")]:
        with pytest.raises(EdgevlaError, match=message):
            quantize_policy(policy, "w8a8", batches=batches, forms=forms)
    with pytest.raises(EdgevlaError, match="fp16 quantizes no layer"):
        quantize_policy(policy, "fp16", forms={"head": "w8a16"})
    odd = nn.Sequential(nn.Linear(96, 8))
    odd.spec = PolicySpec(observations=(TensorSpec("x", (96,)),), action=TensorSpec("a", (1, 8)))
    with pytest.raises(EdgevlaError, match="0: int4 groups of 64 do not divide its 96 input channels"):
        quantize_policy(odd, "w4a16", forms={"0": "w4a16/g64"})


def test_wearing_swaps_forms_in_and_puts_every_layer_back(outlier_w8a8):
    batches, r, _ = outlier_w8a8
    before = dict(quantized_layers(r.model))
    x = batches[0][0]
    with torch.no_grad():
        y = r.model(x)
        with wearing(r.model, {"b": "w8a16", "c": "float"}):
            assert form_of(r.model.b) == "w8a16" and form_of(r.model.c) == "float"
            assert r.model.b is not before["b"] and not torch.equal(r.model(x), y)
        assert quantized_layers(r.model) == before and not r.model.c.float_mode
        assert torch.equal(r.model(x), y)
    with pytest.raises(EdgevlaError, match="no fake-quant layer named z"):
        with wearing(r.model, {"z": "float"}):
            pass


def test_sqnr_raises_mixed_scale_weights_to_groups_of_32(mixed_scales_w4):
    policy, batches, r, solo = mixed_scales_w4
    assert solo["a"] < 5.0 < 20.0 < solo["b"]  # 128 columns under one scale lose the small weights
    choice = raise_by_sqnr(r.model, solo, 20.0, batches)
    # 64 columns still mix the two scales; 32 separate them: the first rung over the floor, the cheapest.
    assert choice.forms == {"a": "w4a16/g32"} and list(choice.tried["a"]) == ["w4a16/g64", "w4a16/g32"]
    assert choice.tried["a"]["w4a16/g64"] < 20.0 <= choice.tried["a"]["w4a16/g32"]
    assert choice.kept_float == [] and quantized_layers(r.model)["a"].group_size == 128  # probed, not changed
    raised = quantize_policy(policy, "w4a16", group_size=128, forms=choice.forms)
    assert raised.group_sizes == {"a": 32, "b": 64}
    assert model_sqnr(raised.model, batches) > 20.0 > model_sqnr(r.model, batches) + 10


def test_noise_powers_add():
    assert noise_sum_db(30.0, 30.0) == pytest.approx(30.0 - 10 * np.log10(2))
    assert noise_sum_db(float("inf"), 25.0) == 25.0 and noise_sum_db(float("inf")) == float("inf")


def test_rungs_that_each_meet_the_floor_climb_on_until_the_whole_model_does(mixed_scales_w4):
    policy, batches, r, solo = mixed_scales_w4
    assert 23.0 < solo["b"] < 24.0  # b meets a 23 dB floor alone; a, at 32-column groups, too (24.5 dB)
    choice = raise_by_sqnr(r.model, solo, 23.0, batches)
    assert choice.tried["a"]["w4a16/g32"] > 23.0
    # With a float the model is b's 23.3 dB; a raised may add one 23 dB layer's noise to that: 20.1 dB.
    with_a_float = model_sqnr(quantize_policy(policy, "w4a16", forms={"a": "float"}).model, batches)
    assert choice.target_db == pytest.approx(noise_sum_db(with_a_float, 23.0), abs=1e-3)
    # a at 32-column groups misses that beside b: it climbs — int8 per row is worse than int4 per 32
    # columns on its mixed scales (13 dB) — on to float.
    assert choice.climbed == ["a", "a"] and choice.tried["a"]["w8a16"] < 23.0
    assert choice.forms == {"a": "float"} and choice.model_sqnr_db >= choice.target_db


def test_sqnr_raises_an_outlier_input_to_int8_weights_and_a_floor_no_rung_meets_to_float(outlier_w8a8):
    batches, r, solo = outlier_w8a8
    choice = raise_by_sqnr(r.model, solo, 25.0, batches)
    assert choice.forms == {"b": "w8a16"} and choice.tried["b"]["w8a16"] >= 25.0 and choice.climbed == []
    impossible = raise_by_sqnr(r.model, solo, 200.0, batches)  # no int8 layer reaches 200 dB
    assert impossible.forms == {n: "float" for n in sorted(solo, key=solo.get)}
    assert all(list(tried) == ["w8a16"] for tried in impossible.tried.values())


def test_success_raises_to_int8_weights_before_keeping_float(outlier_w8a8):
    batches, r, solo = outlier_w8a8

    def by_output(model):  # a stand-in closed loop: success follows the output error
        return 1.0 if model_sqnr(model, batches) > 25.0 else 0.4

    search = fallback_by_success(r.model, solo, by_output, required=0.98, ladder=True)
    assert search.met and search.forms == {"b": "w8a16"} and search.fallback == []
    assert search.probes == [(0, 0.4)] and [k for k, _ in search.raised_probes] == [3, 1]
    # A closed loop that only a float b satisfies: raising every layer misses, so it falls back to float.
    needs_float = fallback_by_success(r.model, solo, lambda m: float(form_of(m.b) == "float"), 0.5, ladder=True)
    assert needs_float.met and needs_float.forms == {"b": "float"}
    assert needs_float.raised_probes == [(3, 0.0)] and needs_float.probes[0] == (0, 0.0)
    plain = fallback_by_success(r.model, solo, by_output, required=0.98)
    assert plain.forms == {"b": "float"} and plain.raised_probes == []
    assert {n: form_of(m) for n, m in quantized_layers(r.model).items()} == {"a": "w8a8", "b": "w8a8", "c": "w8a8"}


@pytest.mark.parametrize("fmt, forms, storage", [("w8a8", {"b": "w8a16", "c": "float"}, "fp32"),
                                                 ("w8a8", {"b": "float"}, "fp16"),
                                                 ("w4a16", {"a": "w8a16", "b": "w4a16/g32"}, "fp32")])
def test_a_mixed_model_exports_and_runs_natively_as_its_fake_quant_model(tmp_path, fmt, forms, storage):
    """The layers raised keep their input float in the native kernels too: the file's metadata names them,
    so the int8 precision does not quantize their input per token (b's outlier channel would break) — a
    float layer stored fp16 (read through a Cast) included."""
    torch.manual_seed(0)
    policy = Outlier().eval()
    batches = _batches(policy, 64)
    r = quantize_policy(policy, fmt, batches=batches, forms=forms, group_size=32, float_dtype=storage)
    path = export_qdq(r.model, tmp_path / "mixed.onnx", float_inputs=forms, float_dtype=storage)
    assert lint_qdq(path) == []
    obs = policy.spec.example(4, seed=2)
    assert onnx_parity(r.model, path, obs) < 1e-4
    native = NativeModel(path)  # precision int8, the default
    plan = {row.layer: row for row in native.plan()}
    assert {n: (plan[n].weight, plan[n].mode) for n in forms} == {
        n: {"w8a16": ("int8", "fp32"), "float": ("fp32", "fp32")}.get(f, ("int4", "int4")) for n, f in forms.items()}
    assert all(("input kept float" in row.rule) == (row.layer in forms) for row in plan.values())
    expected = reference_session(path).run(None, obs)[0]
    # w8a8: a reads the graph's own int8 input, b and c float: ONNX Runtime's numbers. w4a16: c, not raised,
    # runs W4A8 (its input quantized per weight group, ~43 dB).
    bound = 1e-4 if fmt == "w8a8" else 0.02 * np.abs(expected).max()
    assert np.abs(next(iter(native.run(obs).values())) - expected).max() < bound
    if fmt == "w8a8":  # without the metadata, b's input is quantized per token: the outlier ruins it
        plain = NativeModel(export_qdq(r.model, tmp_path / "plain.onnx", float_dtype=storage))
        assert {row.layer: row.mode for row in plain.plan()}["b"] == "int8-dynamic"
        assert np.abs(next(iter(plain.run(obs).values())) - expected).max() > 0.1 * np.abs(expected).max()


def test_float_input_layers_are_checked_where_written_and_read(tmp_path):
    torch.manual_seed(0)
    policy = Outlier().eval()
    r = quantize_policy(policy, "w8a8", batches=_batches(policy, 64))
    with pytest.raises(EdgevlaError, match="float-input layers name no nn.Linear or convolution: z"):
        export_qdq(r.model, tmp_path / "bad.onnx", float_inputs=["z"])
    assert not (tmp_path / "bad.onnx").exists()
    import onnx

    from edgevla.runtime.graph import FLOAT_INPUTS_KEY

    proto = onnx.load(str(export_qdq(r.model, tmp_path / "m.onnx", float_inputs=["b"])))
    assert {p.key: p.value for p in proto.metadata_props} == {FLOAT_INPUTS_KEY: '["b"]'}
    onnx.helper.set_model_props(proto, {FLOAT_INPUTS_KEY: "b, c"})
    with pytest.raises(EdgevlaError, match=f"model metadata {FLOAT_INPUTS_KEY} must be a JSON list of layer names"):
        NativeModel(proto)


def test_the_gpu_plan_keeps_float_inputs_float():
    from edgevla.cuda_policy import swap_linears

    torch.manual_seed(0)
    policy = Outlier().eval()
    r = quantize_policy(policy, "w8a8", batches=_batches(policy, 64), forms={"b": "w8a16"})
    plan = {c.layer: c.mode for c in swap_linears(r.model, device="cpu", float_inputs=["b"])}
    assert plan == {"a": "int8-static", "b": "fp32", "c": "int8-static"}
