"""``edgevla build`` end to end: the bundle, its proof, and the gates."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevla import native
from edgevla.backends import make_runner
from edgevla.bundle import inspect_bundle, load_bundle
from edgevla.errors import EdgevlaError, GateFailed
from edgevla.models.zoo import load_policy
from edgevla.pipeline import BuildRequest, accuracy_gate, build, heldout_observations, task_for
from edgevla.recipe import prune_shorthand
from edgevla.runtime import NativeModel



def test_bundle_layout_and_hashes(tiny_bundle):
    root = tiny_bundle.bundle
    names = {p.name for p in root.iterdir()}
    assert {"manifest.json", "model.onnx", "weights.safetensors", "report.json", "report.md",
            "latency.png"} <= names
    ins = inspect_bundle(root)
    assert ins.ok, ins.problems
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["target"]["name"] == "jetson-agx-orin"
    assert manifest["policy"]["name"] == "tiny-vla"
    assert manifest["chunk_size"] == 8 and manifest["control_rate_hz"] == 30
    assert [i["name"] for i in manifest["inputs"]] == ["image", "instruction", "state"]
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert all(layer["precision"] == "fp32" and layer["pattern"] == "dense" for layer in manifest["layers"])
    assert manifest["recipe"]["evaluate"]["episodes"] == 60
    for key in ("edgevla", "torch", "onnx", "onnxruntime"):
        assert manifest["versions"][key]


def test_exported_model_passes_full_check_and_matches_torch(tiny_bundle):
    root = tiny_bundle.bundle
    onnx.checker.check_model(str(root / "model.onnx"), full_check=True)
    bundle = load_bundle(root)
    policy = load_policy("tiny-vla").policy
    obs = heldout_observations(bundle.spec, 64, seed=7)  # not the build's own verification set
    with make_runner("onnxruntime", onnx_path=root / "model.onnx", spec=bundle.spec) as ort, \
            make_runner("torch", policy=policy) as pt:
        err = np.abs(ort(obs) - pt(obs)).max()
    assert err <= 1e-4


def test_report_holds_every_metric(tiny_bundle):
    report = json.loads((tiny_bundle.bundle / "report.json").read_text())
    assert report == json.loads(json.dumps(tiny_bundle.report))
    for label in ("original", "built"):
        m = report["models"][label]
        assert m["params"]["total"] > 0 and m["params"]["nonzero"] > 0
        assert m["flops"]["total"] > 0 and len(m["flops"]["per_layer"]) > 10
        assert m["size_bytes"] > 0
        assert m["memory"]["peak_mb"] > 0
        for backend in ("torch", "onnxruntime"):
            lat = m["latency"][backend]
            assert lat["runs"] == 8 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert set(m["throughput"][backend]) == {"1", "2"}
            assert m["deadline"][backend]["period_ms"] == pytest.approx(1000 / 30)
        assert 0.0 <= m["success_rate"] <= 1.0
    for metric in ("params_total", "gflops", "size_bytes", "peak_memory_mb", "latency_p50_ms", "success_rate",
                   "efficiency_E"):
        assert "reduction_pct" in report["comparison"][metric]
    assert report["efficiency"]["built"]["E"] > 0
    assert report["roofline"]["built"]["floor_ms"] > 0
    assert report["roofline"]["label"].startswith("estimate for jetson-agx-orin")
    assert set(report["stage_timings_s"]) >= {"load", "analyze", "compress", "export", "verify", "evaluate",
                                              "profile"}
    assert report["extra"]["verify"]["passed"] and report["extra"]["verify"]["max_abs_error"] <= 1e-4
    by_index = report["extra"]["action_error_by_index"]
    assert by_index["backend"] == "onnxruntime" and set(by_index) == {"backend", "held-out", "episode starts"}
    assert len(by_index["held-out"]) == len(by_index["episode starts"]) == 8  # tiny-vla's chunk
    # each index averages as many values: their mean is the whole action error
    assert np.mean(by_index["held-out"]) == pytest.approx(report["extra"]["action_error_by_backend"]["onnxruntime"])
    assert report["extra"]["latency_tolerance"] == "not measured (evaluate.tolerance.max_ticks: 0)"
    md = (tiny_bundle.bundle / "report.md").read_text()
    assert "Latency at batch 1" in md and "E(M)" in md and "estimate for jetson-agx-orin" in md
    assert "## Action error by chunk index" in md and "Latency tolerance" not in md


def test_closed_loop_success_of_export_matches_pytorch(tiny_bundle):
    report = tiny_bundle.report
    before = report["models"]["original"]["success_rate"]
    after = report["models"]["built"]["success_rate"]
    assert before >= 0.9
    assert abs(before - after) <= 0.02


def test_bad_verify_tolerance_fails_without_bundle(tmp_path, fast):
    out = tmp_path / "never"
    with pytest.raises(GateFailed, match="verify"):
        build(BuildRequest(target="jetson-orin", output=str(out),
                           overrides={**fast, "verify.atol": 1e-12, "verify.min_cosine": 1.0}))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()]  # no temp directory left behind either


def test_accuracy_gate():
    accuracy_gate(0.95, 0.94, 0.02)
    accuracy_gate(0.95, 0.93, 0.02)
    with pytest.raises(GateFailed, match="accuracy gate"):
        accuracy_gate(0.95, 0.90, 0.02)
    assert 0.985 - 0.965 > 0.02  # a loss of exactly the budget, rounded past it in floating point...
    accuracy_gate(0.985, 0.965, 0.02)  # ...passes, as the report's budget check and the recovery say too
    with pytest.raises(GateFailed, match="from 98.5% to 96.4%, more than the 2.0% the recipe/target allows$"):
        accuracy_gate(0.985, 0.964, 0.02)
    with pytest.raises(GateFailed, match="allows \\(95 % interval of the loss: 1.0% to 9.0%; more episodes, "
                                         "evaluate.episodes, would tell whether it is really over\\)$"):
        accuracy_gate(0.95, 0.90, 0.02, (0.01, 0.09))
    with pytest.raises(GateFailed, match="allows \\(95 % interval of the loss: 3.0% to 9.0%\\)$"):
        accuracy_gate(0.95, 0.90, 0.02, (0.03, 0.09))


def test_a_confident_gate_also_needs_the_losss_interval_within_the_budget():
    accuracy_gate(0.95, 0.94, 0.02, (-0.01, 0.019), confident=True)
    accuracy_gate(0.95, 0.94, 0.02, (-0.01, 0.04))  # the estimate gate reads the measured loss only
    with pytest.raises(GateFailed, match="^accuracy gate \\(confident\\): success went from 95.0% to 94.0%, "
                       "but the loss's 95 % interval \\(-1.0% to 4.0%\\) reaches past the 2.0% the "
                       "recipe/target allows"):
        accuracy_gate(0.95, 0.94, 0.02, (-0.01, 0.04), confident=True)
    with pytest.raises(GateFailed, match="^accuracy gate: success fell"):  # over on the estimate: said as before
        accuracy_gate(0.95, 0.90, 0.02, (0.01, 0.09), confident=True)


def test_output_path_that_is_a_file_is_refused_before_work(tmp_path, fast):
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(EdgevlaError, match="is a file"):
        build(BuildRequest(target="jetson-orin", output=str(f), overrides=fast))
    assert f.read_text() == "not a directory"


USER_POLICY = textwrap.dedent("""
    import torch
    from edgevla.spec import PolicySpec, TensorSpec

    class ArmPolicy(torch.nn.Module):
        '''A user's policy with its own observation layout (not the tabletop task's).'''
        def __init__(self):
            super().__init__()
            self.cam = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 64), torch.nn.GELU())
            self.joints = torch.nn.Linear(7, 64)
            self.trunk = torch.nn.TransformerEncoder(
                torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), num_layers=2)
            self.head = torch.nn.Linear(64, 4 * 7)
            self.spec = PolicySpec(
                observations=(TensorSpec("wrist_rgb", (3, 16, 16)), TensorSpec("joints", (7,), low=-1.0, high=1.0)),
                action=TensorSpec("joint_deltas", (4, 7)), control_rate_hz=50.0)

        def forward(self, wrist_rgb, joints):
            x = torch.stack([self.cam(wrist_rgb), self.joints(joints)], dim=1)
            return self.head(self.trunk(x).mean(dim=1)).view(-1, 4, 7)

    def make():
        torch.manual_seed(0)
        return ArmPolicy()

    class Liar(ArmPolicy):
        '''Declares 9 joints but its layers take 7: the spec does not match the model.'''
        def __init__(self):
            super().__init__()
            self.spec = PolicySpec(
                observations=(TensorSpec("wrist_rgb", (3, 16, 16)), TensorSpec("joints", (9,))),
                action=TensorSpec("joint_deltas", (4, 7)))

    def make_liar():
        return Liar()

    def make_bf16():
        return make().to(torch.bfloat16)

    class Tokens(ArmPolicy):
        '''One action a query, each joint's chosen among 256 bins by argmax (an OpenVLA-style action head).'''
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(64, 7 * 256)
            self.register_buffer("centres", torch.linspace(-1, 1, 256))
            self.spec = PolicySpec(observations=self.spec.observations, action=TensorSpec("joint_deltas", (1, 7)))

        def forward(self, wrist_rgb, joints):
            x = torch.stack([self.cam(wrist_rgb), self.joints(joints)], dim=1)
            return self.centres[self.head(self.trunk(x).mean(dim=1)).view(-1, 1, 7, 256).argmax(-1)]

    def make_tokens():
        torch.manual_seed(0)
        return Tokens()
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_arm_policy.py").write_text(USER_POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the memory probe's fresh process imports it too
    yield "user_arm_policy"


def test_user_policy_builds(user_module, tmp_path, fast):
    out = tmp_path / "arm"
    result = build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make", output=str(out),
                                overrides={**fast, "evaluate.tolerance.max_ticks": 2}))
    bundle = load_bundle(out)
    assert bundle.spec.input_names == ["wrist_rgb", "joints"]
    assert task_for(bundle.spec) is None
    report = result.report
    assert report["models"]["built"]["success_rate"] is None  # no task speaks this spec: not invented
    assert "not measured" in report["extra"]["evaluate"]
    assert report["extra"]["verify"]["passed"]
    assert report["models"]["built"]["latency"]["onnxruntime"]["runs"] == 8
    assert set(report["extra"]["action_error_by_index"]) == {"backend", "held-out"}  # no task: no episodes
    assert report["extra"]["latency_tolerance"] == "not measured: no closed-loop task speaks this policy's observations"


def test_user_transformer_policy_prunes_heads_and_quantizes(user_module, tmp_path, fast):
    """nn.TransformerEncoder's attention is rewritten as Linear layers, so heads go and every projection is int8."""
    out = tmp_path / "arm-heads-w8a8"
    overrides = {**fast, **prune_shorthand("structured:0.2:heads"), "quantize.format": "w8a8"}
    result = build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make", output=str(out),
                                overrides=overrides))
    rewritten = result.report["extra"]["explicit_attention"]["rewritten"]
    assert rewritten == ["trunk", "trunk.layers.0", "trunk.layers.0.self_attn", "trunk.layers.1",
                         "trunk.layers.1.self_attn"]
    layers = {layer["name"]: layer for layer in load_bundle(out).manifest["layers"]}
    for i in (0, 1):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert layers[f"trunk.layers.{i}.self_attn.{proj}"]["format"] == "w8a8"
        assert layers[f"trunk.layers.{i}.self_attn.q_proj"]["shape"][0] < 64  # heads removed
    assert all(layer["format"] == "w8a8" for layer in layers.values())
    assert result.report["extra"]["verify"]["passed"]
    ops = NativeModel(out / "model.onnx").op_count()  # the rewritten attention exports in the form it fuses
    assert ops["edgevla.Attention"] == 2 and "Softmax" not in ops and "Transpose" not in ops



def test_a_bfloat16_policy_is_built_as_float32(user_module, tmp_path, fast):
    """Weights saved in bfloat16 (as policies are trained): the build runs a float32 copy, which holds every value
    exactly (ONNX has no bfloat16 Gemm or Conv, and calibration wants float32), and says so."""
    out = tmp_path / "arm-bf16"
    result = build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make_bf16", output=str(out),
                                overrides={**fast, "quantize.format": "w8a8"}))
    assert result.report["extra"]["policy"]["loaded_dtypes"] == ["bfloat16"]
    assert result.report["extra"]["verify"]["passed"]
    model = onnx.load(str(out / "model.onnx"))
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16]

def test_a_single_step_token_policy_builds_with_the_default_loop(user_module, tmp_path, fast):
    """Chunks of one action: the default loop (4 actions a query) executes the one there is, rather than refusing
    the recipe. Its argmax output often does not move when one layer is quantized: that layer's solo SQNR is
    infinite, stored as null (JSON has no infinity)."""
    out = tmp_path / "tokens"
    result = build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make_tokens", output=str(out),
                                overrides={**fast, "quantize.format": "w8a8"}))
    assert result.report["extra"]["robot_loop"]["execute"] == 1
    solo = json.loads((out / "report.json").read_text())["extra"]["quantize"]["layer_sqnr_db"]
    assert None in solo.values() and all(v is None or math.isfinite(v) for v in solo.values())
    with pytest.raises(EdgevlaError, match=r"evaluate.execute = 2 actions of the policy's chunks of 1"):
        build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make_tokens", output=str(tmp_path / "t2"),
                           overrides={**fast, "evaluate.execute": 2}))


def test_prune_scope_that_the_policy_lacks_names_its_modules(user_module, tmp_path, fast):
    overrides = {**fast, **prune_shorthand("2:4"), "prune.scope": "backbone"}
    with pytest.raises(EdgevlaError) as e:
        build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make", output=str(tmp_path / "b"),
                           overrides=overrides))
    assert "prune.scope 'backbone' is not a module of ArmPolicy (its modules: cam, joints, trunk, head)" in str(e.value)
    assert "--set prune.scope=null" in str(e.value) and not (tmp_path / "b").exists()


def test_policy_whose_spec_lies_fails_cleanly(user_module, tmp_path, fast):
    out = tmp_path / "liar"
    with pytest.raises(EdgevlaError) as e:
        build(BuildRequest(target="x86-64-cpu", policy=f"{user_module}:make_liar", output=str(out), overrides=fast))
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_user_conv_policy_prunes_and_quantizes_its_convolutions(tmp_path, monkeypatch, fast):
    """A ResNet-style policy at 2:4 + w8a8: convolutions pruned 2:4 along their input channels where a group's
    channels divide by 4, BatchNorm folded, every convolution int8 (filters and input) in the bundle, the Q/DQ
    Conv verified against the fake-quant model, and the native runtime on int8-static, 2:4 kernels included."""
    from pathlib import Path

    tests = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests)
    monkeypatch.setenv("PYTHONPATH", tests)  # the memory probe's fresh process imports the policy too
    out = tmp_path / "conv-w8a8"
    result = build(BuildRequest(target="x86-64-cpu", policy="user_policies:ConvPolicy", output=str(out),
                                overrides={**fast, "quantize.format": "w8a8", "prune.method": "nm",
                                           "prune.scope": None}))
    assert result.report["extra"]["quantize"]["batch_norms_folded"] == ["stem.1 -> stem.0"]
    assert result.report["extra"]["prune"]["layers"] == ["block.0", "block.3", "head.2"]  # 3 and 21 inputs: no
    assert "**2:4 on 3 layers (2 convolutions), 50.0% of their weights zero** in the whole policy" in (
        out / "report.md").read_text()
    layers = {layer["name"]: layer for layer in load_bundle(out).manifest["layers"]}
    for conv in ("stem.0", "block.0", "block.3"):
        assert layers[conv]["format"] == "w8a8" and layers[conv]["precision"] == "int8"
    assert all(layers[n]["pattern"] == "2:4" and layers[n]["sparsity"] == 0.5 for n in ("block.0", "block.3"))
    assert all(layers[n]["sparsity"] < 0.1 for n in ("stem.0", "head.0"))  # unpruned: codes rounded to 0 only
    assert result.report["extra"]["verify"]["passed"]
    plan = NativeModel(out / "model.onnx").plan()
    assert [c.layer for c in plan] == ["stem.0", "block.3", "head.0", "head.2"]  # block.0 (grouped): NumPy
    assert {c.mode for c in plan} == {"int8-static"}
    # A 1x1 convolution's rows are its channels: 2:4 weights, run by the 2:4 kernel where the table has one that
    # beats its dense GEMM (not on AMX or plain AVX2: tests/test_runtime_linear.py).
    two_four = "s8-dense" if native.get_isa() in ("avx512_amx", "avx2") else "s8-2:4"
    assert {c.layer: c.kernel for c in plan}["block.3"] == two_four


def test_a_frozen_batch_norm_folds_into_its_convolution(tmp_path, monkeypatch, fast):
    """A BatchNorm kept as buffers and applied element-wise is taken as the nn.BatchNorm2d it computes: w8a8
    folds it into the stem convolution, and the shipped graph has no Mul or Add left of it (the stem: Conv, Relu,
    MaxPool)."""
    from pathlib import Path

    tests = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests)
    monkeypatch.setenv("PYTHONPATH", tests)
    out = tmp_path / "frozen-w8a8"
    result = build(BuildRequest(target="x86-64-cpu", policy="user_policies:FrozenConvPolicy", output=str(out),
                                overrides={**fast, "quantize.format": "w8a8", "prune.scope": None}))
    extra = result.report["extra"]
    assert extra["frozen_batch_norms"] == ["stem.1"]
    assert extra["quantize"]["batch_norms_folded"] == ["stem.1 -> stem.0"] and extra["verify"]["passed"]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    stem = ops.index("Conv")
    assert ops[stem:stem + 3] == ["Conv", "Relu", "MaxPool"] and "BatchNormalization" not in ops


def test_a_padded_history_policy_builds_finite_and_verified(tests_on_path, tmp_path, fast):
    """Octo-style padded history under a block-causal mask: on PyTorch's eval fast path the padded samples'
    actions are NaN; the build measures the reference path, exports the explicit form, and verifies it."""
    out = tmp_path / "padded"
    result = build(BuildRequest(target="x86-64-cpu", policy="user_policies:make_padded_history", output=str(out),
                                overrides=fast))
    assert result.report["extra"]["verify"]["passed"]
    assert math.isfinite(result.report["models"]["built"]["action_error"])


def test_a_hugging_face_written_policy_prunes_heads_smooths_and_runs_fused(tmp_path, fast, monkeypatch):
    """Gemma as Hugging Face writes it (benchmarks/cpu/policies/hf_llama_policy.py): its key/value head groups
    prune through repeat_kv, SmoothQuant folds into its hand-written (1 + w) norms and its GEGLUs' value rows,
    and the native runtime runs
    each block's norm, attention, rotary and GEGLU as single steps."""
    policies = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu" / "policies"
    monkeypatch.syspath_prepend(str(policies))
    monkeypatch.setenv("PYTHONPATH", str(policies))
    out = tmp_path / "gemma"
    overrides = {**fast, **prune_shorthand("structured:0.1:heads"), "prune.scope": "layers",
                 "quantize.format": "w8a8", "quantize.smoothquant.enabled": True}
    result = build(BuildRequest(target="x86-64-cpu", policy="hf_llama_policy:make_gemma", output=str(out),
                                overrides=overrides))
    extra = result.report["extra"]
    assert extra["quantize"]["smoothquant"]["folded_into"] == [
        f"layers.{i}.{norm}" for i in range(4) for norm in ("input_layernorm", "post_attention_layernorm")] + [
        f"layers.{i}.mlp.up_proj" for i in range(4)] + [  # the down projections' inputs, through the value rows
        f"layers.{i}.self_attn.v_proj" for i in range(4)]  # and the output projections'
    layers = {layer["name"]: layer for layer in load_bundle(out).manifest["layers"]}
    assert [layers[f"layers.{i}.self_attn.q_proj"]["shape"][0] for i in range(4)] == [128] * 4  # 1 of 2 groups
    assert [layers[f"layers.{i}.self_attn.k_proj"]["shape"][0] for i in range(4)] == [32] * 4
    assert extra["verify"]["passed"]
    ops = NativeModel(out / "model.onnx").op_count()
    assert (ops["edgevla.Attention"], ops["edgevla.Gated"], ops["edgevla.Rotary"]) == (4, 4, 8)
    assert not {"Softmax", "ReduceMean", "Gelu", "Neg"} & set(ops), ops
