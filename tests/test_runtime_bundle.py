"""The native backend end to end: a built bundle, Q/DQ exports, closed-loop success, the runner and the CLI.

Tolerances, against ONNX Runtime on the same file:

* float32 (``precision="fp32"``): the same arithmetic up to summation order
  and our erf approximation (< 5e-7): < 1e-4 in normalized actions
  (measured ~1e-5 on tiny-vla).
* dynamic int8 (the default): int8 rounding through ~40 layers. Measured on
  tiny-vla over 64 held-out observations: mean |error| ~0.006, max ~0.07 in
  normalized actions; asserted: mean < 0.02, max < 0.2, and below a quarter
  of the error of ONNX Runtime's own dynamic int8 quantization of the same
  model (per-tensor activation scales: mean ~0.15 measured).
* W8A8 Q/DQ: the graph's own integer codes and scales; only the order of
  float sums differs from ONNX Runtime's literal dequantize-then-MatMul, and
  a value that lands on a rounding tie at a QuantizeLinear can round the
  other way downstream: < 1e-4 on a small policy, < 5e-3 on tiny-vla
  (measured 6e-8, and 4e-4 on the 4 observations tested, 3e-3 worst of 64).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch

from edgevla import native
from edgevla.backends import NativeRunner, make_runner
from edgevla.bundle import load_bundle
from edgevla.cli import main
from edgevla.errors import EdgevlaError
from edgevla.export.qdq import export_qdq, reference_session
from edgevla.pipeline import action_fn, heldout_observations, task_for
from edgevla.quant import quantize_policy
from edgevla.runtime import NativeModel
from edgevla.runtime.blas import get_blas_threads
from edgevla.task import evaluate

from user_policies import ConvPolicy, RecurrentPolicy, SmallPolicy


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle.bundle)


@pytest.fixture(scope="module")
def heldout(bundle):
    return heldout_observations(bundle.spec, 64)


@pytest.fixture(scope="module")
def ort_actions(bundle, heldout):
    runner = make_runner("onnxruntime", onnx_path=bundle.file("model.onnx"), spec=bundle.spec, threads=1)
    with runner:
        return runner(heldout)


def test_tiny_bundle_fp32_matches_onnxruntime(bundle, heldout, ort_actions):
    model = NativeModel(bundle.file("model.onnx"), precision="fp32")
    assert all(c.mode == "fp32" for c in model.plan()) and len(model.plan()) == 40
    error = np.abs(model.run(heldout)["actions"] - ort_actions).max()
    assert error < 1e-4
    single = model.run({k: v[:1] for k, v in heldout.items()})["actions"]
    assert np.abs(single - ort_actions[:1]).max() < 1e-4


def test_tiny_bundle_int8_within_its_bound(bundle, heldout, ort_actions, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = NativeModel(bundle.file("model.onnx"))
    modes = [c.mode for c in model.plan()]
    assert modes.count("int8-dynamic") == 37 and modes.count("fp32") == 3  # 2-wide layers stay float
    error = np.abs(model.run(heldout)["actions"] - ort_actions)
    assert error.mean() < 0.02 and error.max() < 0.2
    quantize_dynamic(str(bundle.file("model.onnx")), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    runner = make_runner("onnxruntime", onnx_path=tmp_path / "dyn.onnx", spec=bundle.spec, threads=1)
    with runner:
        ort_int8_error = np.abs(runner(heldout) - ort_actions)
    assert error.mean() < 0.25 * ort_int8_error.mean()


def test_closed_loop_success_equals_onnxruntime(bundle):
    task = task_for(bundle.spec)
    results = {}
    for backend in ("onnxruntime", "native"):
        with make_runner(backend, onnx_path=bundle.file("model.onnx"), spec=bundle.spec, threads=1) as runner:
            results[backend] = evaluate(action_fn(runner), task, episodes=50, seed=10_000).success_rate
    assert results["native"] > 0.5 and abs(results["native"] - results["onnxruntime"]) <= 0.01, results


@pytest.fixture(scope="module")
def small_exports(tmp_path_factory):
    torch.manual_seed(0)
    policy = SmallPolicy().eval()
    root = tmp_path_factory.mktemp("qdq")
    (root / "calib").mkdir()
    np.savez(root / "calib" / "c.npz", **policy.spec.example(32, seed=1))
    paths = {}
    for fmt in ("w8a8", "w8a16", "w4a16"):
        r = quantize_policy(policy, fmt, calibration=root / "calib", group_size=32)
        paths[fmt] = export_qdq(r.model, root / f"{fmt}.onnx")
    return policy.spec, paths


def test_small_policy_w8a8_runs_static_int8_and_matches(small_exports):
    spec, paths = small_exports
    obs = spec.example(5, seed=2)
    model = NativeModel(paths["w8a8"])
    plan = model.plan()
    assert [c.layer for c in plan] == ["fc1", "fc2", "head"]
    assert all((c.weight, c.mode, c.kernel) == ("int8", "int8-static", "s8-dense") for c in plan)
    # fc1 writes fc2's int8 codes itself (its output stage); fc2 adds the skip connection
    assert [c.epilogue for c in plan] == ["bias+relu+int8", "bias+residual", "bias"]
    counts = model.op_count()
    # the first layer's input quantization is fused with the LayerNorm before it, the head's stays (after the mean)
    assert "DequantizeLinear" not in counts and counts["QuantizeLinear"] == 1 and counts["edgevla.LayerNormS8"] == 1
    expected = reference_session(paths["w8a8"]).run(None, obs)[0]
    assert np.abs(model.run(obs)["a"] - expected).max() < 1e-4


@pytest.mark.parametrize("fmt, precision, mode, kernel, bound", [
    ("w8a16", "fp32", "fp32", "f32-dense", 1e-5),  # dequantized codes, float matmul: ORT's arithmetic
    ("w8a16", "int8", "int8-dynamic", "s8-dense", 2e-2),  # the graph's weight codes, activations per token
    ("w4a16", "fp32", "int4", None, 1e-5),  # int4 kernel if this build has one, else dequantized at load
    ("w4a16", "int8", "int4-dynamic", "s4a8-groupwise", 1e-2),  # int4 codes, int8 activations per group (1.4e-3)
])
def test_small_policy_weight_only(small_exports, fmt, precision, mode, kernel, bound):
    spec, paths = small_exports
    obs = spec.example(5, seed=3)
    model = NativeModel(paths[fmt], precision=precision)
    assert all(c.mode == mode and (kernel is None or c.kernel == kernel) for c in model.plan())
    expected = reference_session(paths[fmt]).run(None, obs)[0]
    assert np.abs(model.run(obs)["a"] - expected).max() < bound


@pytest.mark.parametrize("fmt", ["fp32", "w8a8"])
def test_conv_policy_runs_natively_and_matches(tmp_path, fmt):
    """Convolutions as linear layers over their windows (the depthwise one, the pools and GroupNorm in NumPy),
    every layer on our kernels at the int8 precision; float32 NumPy at fp32 matches ONNX Runtime to ~1e-6.
    A w8a8 build's convolutions are Q/DQ: they run int8-static on the graph's codes and scales at either
    precision (windows gathered in int8), and match the Q/DQ graph run literally to float rounding."""
    from edgevla.export import export_onnx

    torch.manual_seed(0)
    policy = ConvPolicy().eval()
    if fmt == "fp32":
        path = export_onnx(policy, tmp_path / "conv.onnx")
    else:
        calibration = [tuple(torch.from_numpy(a) for a in policy.spec.example(16, seed=1).values())]
        path = export_qdq(quantize_policy(policy, fmt, batches=calibration).model, tmp_path / "conv.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "MaxPool", "InstanceNormalization"} <= ops
    obs = policy.spec.example(3, seed=2)
    expected = reference_session(path).run(None, obs)[0]
    for precision, bound in (("fp32", 1e-4), ("int8", 1e-4 if fmt == "w8a8" else 2e-2)):
        model = NativeModel(path, precision=precision)
        plan = model.plan()
        assert [c.layer for c in plan] == ["stem.0", "block.3", "head.0", "head.2"]  # block.0: depthwise
        assert [(c.k, c.n) for c in plan[:2]] == [(3 * 5 * 5, 16), (16, 16)] and plan[0].epilogue == "bias+relu"
        if fmt == "w8a8":
            assert {c.mode for c in plan} == {"int8-static"} and {c.weight for c in plan} == {"int8"}
        else:
            assert {c.mode for c in plan} == {"fp32" if precision == "fp32" else "int8-dynamic"}
        assert np.abs(model.run(obs)["a"] - expected).max() < bound, precision


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_policy_runs_natively_and_matches(tmp_path, cell):
    from edgevla.export import export_onnx

    torch.manual_seed(0)
    policy = RecurrentPolicy(cell).eval()
    path = export_onnx(policy, tmp_path / f"{cell}.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count(cell.upper()) == (2 if cell == "lstm" else 1)
    obs = policy.spec.example(3, seed=2)
    expected = reference_session(path).run(None, obs)[0]
    for precision, bound in (("fp32", 1e-5), ("int8", 2e-2)):
        model = NativeModel(path, precision=precision)
        assert [c.layer for c in model.plan()] == ["embed", "head"]
        assert np.abs(model.run(obs)["a"] - expected).max() < bound, precision


def test_tiny_vla_w8a8_qdq_matches_onnxruntime(tmp_path):
    from edgevla.models.zoo import load_policy

    policy = load_policy("tiny-vla").policy
    r = quantize_policy(policy, "w8a8", samples=8, skip=("action_head",))
    path = export_qdq(r.model, tmp_path / "tiny-w8a8.onnx")
    obs = policy.spec.example(4, seed=5)
    model = NativeModel(path, precision="fp32")  # the skipped head stays float, as in ONNX Runtime
    static = [c for c in model.plan() if c.mode == "int8-static"]
    assert len(static) == 38 and {c.layer for c in model.plan()} - {c.layer for c in static} == {
        "vision.keypoints.coords", "action_head"}
    graph = onnx.load(str(path)).graph
    scales = {i.name: numpy_helper.to_array(i).tobytes() for i in graph.initializer}
    scales.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t).tobytes() for n in graph.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    distinct = {(n.input[0], scales.get(n.input[1], n.input[1])) for n in graph.node if n.op_type == "QuantizeLinear"}
    counts = model.op_count()
    # q, k, v read one quantized activation; a LayerNorm and the quantization after it are one step, and so are
    # a layer and the quantization of its output (its output stage)
    staged = sum(c.epilogue.endswith("+int8") for c in model.plan())
    assert counts.get("QuantizeLinear", 0) + counts.get("edgevla.LayerNormS8", 0) + staged == len(distinct)
    assert counts.get("edgevla.LayerNormS8", 0) > 0 and staged > 0
    expected = reference_session(path).run(None, obs)[0]
    assert np.abs(model.run(obs)["actions"] - expected).max() < 5e-3


def test_native_runner_sets_and_restores_threads(bundle, heldout):
    kernel_threads, blas_threads = native.get_num_threads(), get_blas_threads()
    runner = make_runner("native", onnx_path=bundle.file("model.onnx"), spec=bundle.spec, threads=1)
    assert isinstance(runner, NativeRunner) and runner.name == "native"
    assert native.get_num_threads() == 1 and get_blas_threads() in (None, 1)
    actions = runner({k: v[:3] for k, v in heldout.items()})
    assert actions.shape == (3, 8, 2) and actions.dtype == np.float32
    assert len(runner.plan()) == 40
    with pytest.raises(EdgevlaError, match="instruction"):
        runner({"image": heldout["image"][:1], "state": heldout["state"][:1]})
    runner.close()
    assert native.get_num_threads() == kernel_threads and get_blas_threads() == blas_threads
    with pytest.raises(EdgevlaError, match="closed"):
        runner(heldout)


def test_native_runner_refuses_a_model_that_is_not_the_spec(bundle, small_exports):
    _, paths = small_exports
    with pytest.raises(EdgevlaError, match="takes inputs"):
        make_runner("native", onnx_path=paths["w8a8"], spec=bundle.spec)
    with pytest.raises(EdgevlaError, match="path of an exported ONNX model"):
        make_runner("native", spec=bundle.spec)
    with pytest.raises(EdgevlaError, match="does not exist"):
        make_runner("native", onnx_path=bundle.root / "missing.onnx", spec=bundle.spec)


def test_cli_eval_and_profile_on_native(capsys, tiny_bundle):
    code = main(["eval", str(tiny_bundle.bundle), "--backend", "native", "--episodes", "10", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["backend"] == "native" and data["episodes"] == 10 and data["success_rate"] > 0.5
    code = main(["profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "5", "--warmup", "1",
                 "--threads", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["latency_ms"]["p50_ms"] > 0
    assert len(data["native_plan"]) == 40 and data["native_plan"][0]["kernel"] == "s8-dense"
    code = main(["profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "3", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "kernel per linear layer" in out and "trunk.2.mlp.fc1" in out
