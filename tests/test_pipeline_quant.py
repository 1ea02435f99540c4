"""``edgevla build`` with quantization, on a user's policy: every format builds, lints and matches its
fake-quant model in ONNX Runtime; the manifest records what each layer ships as; mixed precision keeps the
layer built to be sensitive in float; QAT improves the output; 2:4 zeros survive int8; fp8 is refused
where the target lacks it; a lint violation fails the build with one line."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edgevla.bundle import load_bundle, load_weights
from edgevla.cli import main
from edgevla.errors import EdgevlaError, GateFailed
from edgevla.pipeline import BuildRequest, build
from edgevla.recipe import prune_shorthand
from edgevla.runtime.graph import float_input_layers
from edgevla.runtime.model import NativeModel

pytestmark = pytest.mark.usefixtures("torch_one_thread")

USER_POLICY = '''
import torch
import torch.nn.functional as F
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


class ArmPolicy(nn.Module):
    """Feature tokens and joint angles in, a chunk of 4 two-dim actions out.

    ``gain`` multiplies channel 5 of ``sensitive``'s input by 1000 while its weight column for that
    channel is tiny: the float output barely sees the channel, but a per-tensor int8 scale sized for
    it rounds every other channel to zero. The layer is built to be sensitive.
    """

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("feats", (8, 32), "float32", -1.0, 1.0),
                                             TensorSpec("joints", (6,), "float32", -1.0, 1.0)),
                               action=TensorSpec("actions", (4, 2), "float32", -1.0, 1.0))
        self.table = nn.Parameter(torch.randn(1, 8, 32) * 0.5)
        self.ln = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.joint = nn.Linear(6, 32)
        self.sensitive = nn.Linear(32, 32)
        gain = torch.ones(32)
        gain[5] = 1000.0
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.sensitive.weight[:, 5] *= 1e-4
        self.head = nn.Linear(32, 8)

    def forward(self, feats, joints):
        h = self.ln(feats + self.table)
        h = feats + self.fc2(F.gelu(self.fc1(h)))
        h = h.mean(dim=1) + self.joint(joints)
        h = h + self.sensitive(h * self.gain)
        return self.head(h).reshape(-1, 4, 2)


def make():
    torch.manual_seed(0)
    return ArmPolicy().eval()
'''


@pytest.fixture(scope="module")
def policy_ref(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "quant_arm_policy.py").write_text(USER_POLICY)
    sys.path.insert(0, str(folder))
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(folder)  # the memory probe's fresh process imports it too
    yield "quant_arm_policy:make"
    sys.path.remove(str(folder))
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


def _build(tmp_path_factory, fast, memo, policy_ref, name, target="h100", **overrides):
    out = tmp_path_factory.mktemp("quant") / name
    return build(BuildRequest(target=target, policy=policy_ref, output=str(out), overrides={**fast, **overrides},
                              memo=memo))


def _layers(result) -> dict[str, dict]:
    return {row["name"]: row for row in load_bundle(result.bundle).manifest["layers"]}


def _initializers(result) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in onnx.load(str(result.bundle / "model.onnx")).graph.initializer}


# --------------------------------------------------------------------------- w8a8 + 2:4 + mixed precision


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory, fast, policy_ref, original_memo):
    """2:4 on every Linear that allows it, then W8A8 calibrated on the user's observation files, with layers
    under 20 dB raised up the precision ladder (h100: fp16 storage)."""
    calib = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(5)
    for i in range(2):  # two files of 150 observations: 300, of which 8 batches x 32 are used
        np.savez(calib / f"part{i}.npz", feats=rng.uniform(-1, 1, (150, 8, 32)).astype(np.float32),
                 joints=rng.uniform(-1, 1, (150, 6)).astype(np.float32))
    return _build(tmp_path_factory, fast, original_memo, policy_ref, "w8a8", **prune_shorthand("2:4"), **{
        "prune.scope": None, "quantize.format": "w8a8", "quantize.mixed_precision.enabled": True,
        "quantize.mixed_precision.min_sqnr_db": 20.0, "quantize.calibration.data": str(calib)})


def test_w8a8_build_verifies_against_its_fake_quant_model_and_lints(w8a8):
    q = w8a8.report["extra"]["quantize"]
    assert q["lint"] == "passed"
    parity = q["parity"]["reference_session"]
    assert parity["passed"] and parity["max_abs_error"] <= 0.05 and parity["cosine"] >= 0.999
    assert w8a8.report["extra"]["verify"] == {k: parity[k] for k in w8a8.report["extra"]["verify"]}
    assert q["calibration"]["activation_ranges"] and q["calibration"]["samples"] == 8 * 32
    assert q["calibration"]["source"].startswith("directory ")
    assert q["onnx_bytes"]["built"] < q["onnx_bytes"]["original"]
    assert q["tables_rounded"] == q["tables_int8"] == ["table"]  # the learned table ships int8 + DequantizeLinear
    graph = onnx.load(str(w8a8.bundle / "model.onnx")).graph
    zero_points = [i for i in graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(z.data_type == TensorProto.INT8 for z in zero_points)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 4  # fc1, fc2, joint, head inputs


def test_mixed_precision_raises_the_sensitive_layer_to_a_float_input(w8a8):
    q = w8a8.report["extra"]["quantize"]
    solo = q["layer_sqnr_db"]
    assert q["layer_sqnr_samples"] == 8  # quantize.mixed_precision.sensitivity_samples, of a 32-sample batch
    assert solo["sensitive"] < 20.0 < min(v for k, v in solo.items() if k != "sensitive")
    # Its input's outlier channel is what per-tensor int8 cannot hold: int8 weights with a float input can.
    mp = q["mixed_precision"]
    assert mp["raised"] == {"sensitive": "w8a16"} and mp["kept_float"] == [] and mp["ladder"]
    assert mp["rungs_tried_sqnr_db"]["sensitive"]["w8a16"] >= 20.0 and mp["climbed"] == []
    assert mp["model_sqnr_db"] >= mp["model_target_db"]  # the whole model: within one floor's noise of float
    assert q["layers"]["sensitive"] == {"format": "w8a16"}
    # Alone it costs the output everything (solo SQNR ~8 dB); raised, the whole model stays near 30 dB.
    assert q["model_sqnr_db"] > solo["sensitive"] + 15
    # The bundle's ONNX says so, and the native kernels keep that input float rather than quantize it per token.
    model = w8a8.bundle / "model.onnx"
    assert float_input_layers(onnx.load(str(model))) == {"sensitive"}
    modes = {row.layer: row.mode for row in NativeModel(model).plan()}
    assert modes["sensitive"] == "fp32" and modes["fc1"] == "int8-static"


def test_manifest_records_each_layers_shipped_precision(w8a8):
    layers = _layers(w8a8)
    for name in ("fc1", "fc2", "joint", "head"):
        assert (layers[name]["precision"], layers[name]["format"]) == ("int8", "w8a8"), name
    assert (layers["sensitive"]["precision"], layers["sensitive"]["format"]) == ("int8", "w8a16")
    assert layers["fc1"]["shape"] == [64, 32]
    # Sparsity is that of the shipped codes: a few small weights of the unpruned layer round to 0.
    assert layers["joint"]["sparsity"] < 0.05 and layers["joint"]["pattern"] != "2:4"
    md = (w8a8.bundle / "report.md").read_text()
    assert "## Quantization" in md and "| sensitive | w8a16 | int8 |" in md
    assert "Mixed precision (sqnr, sensitive layers raised up the precision ladder): 1 raised (sensitive w8a16)." in md


def test_2_4_zeros_stay_zeros_in_the_int8_codes(w8a8):
    weights, _ = load_weights(w8a8.bundle / "weights.safetensors")
    inits = _initializers(w8a8)
    for name in ("fc1", "fc2", "head"):
        codes = numpy_helper.to_array(inits[f"{name}.weight.T_quantized"]
                                      if f"{name}.weight.T_quantized" in inits else inits[f"{name}.weight_quantized"])
        float_weight = weights[f"{name}.weight"].numpy()
        codes = codes.T if codes.shape != float_weight.shape else codes
        assert ((float_weight == 0).reshape(float_weight.shape[0], -1, 4).sum(-1) == 2).all(), name
        assert (codes[float_weight == 0] == 0).all(), name  # pruned stays pruned
        assert _layers(w8a8)[name]["pattern"] == "2:4", name


# --------------------------------------------------------------------------- w4a16 + QAT


@pytest.fixture(scope="module")
def w4a16(tmp_path_factory, fast, policy_ref, original_memo):
    # Rounded to nearest: QAT trains on that grid, and 60 steps do not beat GPTQ's rounding (QAT would keep it).
    return _build(tmp_path_factory, fast, original_memo, policy_ref, "w4a16", **{
        "quantize.format": "w4a16", "quantize.group_size": 32, "quantize.int4_rounding": "nearest",
        "quantize.qat.enabled": True, "quantize.qat.steps": 60, "quantize.qat.lr": 1e-4})


def test_w4a16_ships_int4_groups_and_int8_where_no_group_divides(w4a16):
    layers = _layers(w4a16)
    for name in ("fc1", "fc2", "sensitive", "head"):
        assert (layers[name]["precision"], layers[name]["format"], layers[name]["group_size"]) == (
            "int4", "w4a16", 32), name
    assert (layers["joint"]["precision"], layers["joint"]["format"]) == ("int8", "w8a16")  # 6 inputs
    inits = _initializers(w4a16)
    assert inits["fc2.weight.T_quantized"].data_type == TensorProto.INT4
    assert inits["fc2.weight.T_scale"].data_type == TensorProto.FLOAT16  # fp16 storage: fp16 group scales
    assert list(inits["fc2.weight.T_scale"].dims) == [64 // 32, 32]
    ops = {n.op_type for n in onnx.load(str(w4a16.bundle / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops  # weight-only
    assert w4a16.report["extra"]["quantize"]["parity"]["reference_session"]["max_abs_error"] < 1e-4
    quantize = w4a16.report["extra"]["quantize"]
    assert (quantize["int4_rounding"], quantize["int4_scaling"]) == ("nearest", "awq")
    # Its one norm feeds fc1 alone, an int4 reader: AWQ searched that group, and its scale never adds error.
    assert list(quantize.get("awq", {})) == ["ln"] and quantize["awq"]["ln"]["error_ratio"] <= 1.0


def test_qat_improves_the_int4_model(w4a16):
    qat = w4a16.report["extra"]["quantize"]["qat"]
    assert qat["steps"] == 60
    assert qat["kept"] == "qat" and qat["sqnr_after_db"] == qat["sqnr_trained_db"] > qat["sqnr_before_db"] + 1.0
    assert qat["loss_last"] < qat["loss_first"]


# --------------------------------------------------------------------------- the other formats


@pytest.mark.parametrize("fmt, precision", [("w8a16", "int8"), ("fp16", "fp16"), ("fp8", "fp8")])
def test_every_format_builds_and_matches_its_fake_quant_model(tmp_path_factory, fast, policy_ref, fmt, precision,
                                                             original_memo):
    result = _build(tmp_path_factory, fast, original_memo, policy_ref, fmt, **{"quantize.format": fmt})
    q = result.report["extra"]["quantize"]
    assert q["parity"]["reference_session"]["passed"] and q["lint"] == "passed"
    layers = _layers(result)
    for name in ("fc1", "fc2", "joint", "sensitive", "head"):
        assert layers[name]["precision"] == precision, (fmt, name)
    graph = onnx.load(str(result.bundle / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert ("QuantizeLinear" in ops) == (fmt == "fp8") and ("DequantizeLinear" in ops) == (fmt != "fp16")
    io = [v.type.tensor_type.elem_type for v in [*graph.input, *graph.output] if v.name != "joints"]
    assert set(io) == {TensorProto.FLOAT}  # inputs and outputs stay fp32
    if fmt == "fp8":
        zp = [i for i in graph.initializer if i.name.endswith("_zero_point")]
        assert zp and all(z.data_type == TensorProto.FLOAT8E4M3FN for z in zp)


# --------------------------------------------------------------------------- failures


def test_a_lint_violation_fails_the_build_with_one_line(tmp_path, fast, policy_ref, monkeypatch):
    import edgevla.export.qdq as qdq

    real = qdq.insert_qdq

    def asymmetric(proto, layers, refs):  # what a wrong exporter would write: zero point 3
        real(proto, layers, refs)
        zp = next(i for i in proto.graph.initializer if i.name.endswith("_zero_point"))
        zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))

    monkeypatch.setattr(qdq, "insert_qdq", asymmetric)
    out = tmp_path / "bad"
    with pytest.raises(GateFailed) as e:
        build(BuildRequest(target="h100", policy=policy_ref, output=str(out),
                           overrides={**fast, "quantize.format": "w8a8"}))
    assert str(e.value).startswith("Q/DQ lint: the exported model breaks TensorRT's rules: [zero-point]")
    assert "\n" not in str(e.value) and not out.exists()


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_fp8_is_refused_for_jetson_orin_before_any_work(capsys, tmp_path):
    code = main(["build", "--target", "jetson-orin", "--quantize", "fp8", "-o", str(tmp_path / "b")])
    assert code == 2 and _last_line(capsys) == ("edgevla: error: target jetson-agx-orin cannot run fp8: it supports "
                                                "fp32, tf32, fp16, bf16, int8")
    assert not (tmp_path / "b").exists()
    code = main(["build", "--target", "x86-64-cpu", "--quantize", "int8", "-o", str(tmp_path / "b")])
    assert code == 2 and _last_line(capsys) == (
        "edgevla: error: --quantize: expected one of none, w8a8, w8a16, w4a16, fp16, fp8, got 'int8'")
    code = main(["build", "--target", "x86-64-cpu", "--quantize", "w4a16", "-o", str(tmp_path / "b")])
    assert code == 2 and _last_line(capsys) == ("edgevla: error: target x86-64-cpu cannot run w4a16: it supports "
                                                "fp32, int8")


def test_a_success_budget_needs_a_task(tmp_path, fast, policy_ref):
    with pytest.raises(EdgevlaError, match="mixed_precision.metric success needs closed-loop episodes"):
        build(BuildRequest(target="h100", policy=policy_ref, output=str(tmp_path / "b"), overrides={
            **fast, "quantize.format": "w8a8", "quantize.mixed_precision.enabled": True,
            "quantize.mixed_precision.metric": "success"}))
    assert not (tmp_path / "b").exists()


def test_smoothquant_alpha_auto_keeps_the_best_candidate_and_says_so(policy_ref):
    """``quantize.smoothquant.alpha: auto`` quantizes the policy at every candidate and with SmoothQuant off,
    keeps the best held-out output SQNR, and the report says what each gave."""
    import importlib

    from edgevla.pipeline import smoothquant_alpha, smoothquant_said
    from edgevla.quant.alpha_search import ALPHAS
    from edgevla.recipe import load_recipe

    policy = importlib.import_module(policy_ref.split(":")[0]).make()
    with torch.no_grad():
        policy.ln.weight[3] = 25.0  # an outlier channel into fc1
    cfg = load_recipe(None, None, {"quantize.format": "w8a8", "quantize.smoothquant.enabled": True,
                                   "quantize.smoothquant.alpha": "auto"}).quantize
    batches = [tuple(torch.from_numpy(a) for a in policy.spec.example(batch=32, seed=i).values()) for i in range(2)]
    alpha, search = smoothquant_alpha(policy, policy.spec, None, cfg, batches, "fp32")
    assert list(search.sqnr_db) == ["off"] + [f"{a:g}" for a in ALPHAS]
    best = max(search.sqnr_db, key=search.sqnr_db.get)
    assert alpha == (None if best == "off" else float(best)) and alpha is not None
    said = smoothquant_said({"enabled": True, "alpha": alpha,
                             "alpha_search": {"chosen": alpha, "sqnr_db": search.sqnr_db}})
    assert said.startswith(f"SmoothQuant α={alpha:g}, the best held-out output SQNR") and "off: " in said
    fixed = load_recipe(None, None, {"quantize.format": "w8a8", "quantize.smoothquant.enabled": True}).quantize
    assert smoothquant_alpha(policy, policy.spec, None, fixed, batches, "fp32") == (0.5, None)
