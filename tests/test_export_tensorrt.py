"""TensorRT export: the plan per target, the exact trtexec command, build_engine.sh, the layer-precision
check, and the TensorRT runner. Engine builds run only where ``tensorrt`` imports and a GPU exists."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevla.backends import TensorRTRunner, make_runner
from edgevla.bundle import inspect_bundle
from edgevla.cli import main
from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.export.lint import lint_qdq
from edgevla.export.qdq import export_qdq
from edgevla.export.tensorrt import (
    ENGINE_DIR_VAR,
    EnginePlan,
    EngineLayer,
    bundle_tensorrt,
    check_layer_precisions,
    check_onnx_for_plan,
    device_compute_capability,
    engine_dir_for,
    expected_node_precisions,
    parse_engine_layers,
    plan_engine,
    supported_formats,
    tensor_precision,
    tensorrt_precision,
    trtexec_command,
    write_engine_script,
)
from edgevla.export.tensorrt import main as tensorrt_main
from edgevla.quant import quantize_policy
from edgevla.spec import PolicySpec, TensorSpec
from edgevla.targets import list_targets, load_target

from user_policies import SmallPolicy

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None

VLA_SPEC = PolicySpec(observations=(TensorSpec("image", (2, 3, 32, 32)), TensorSpec("instruction", (6,), "int64", 0, 99),
                                    TensorSpec("state", (2,), low=-1, high=1)),
                      action=TensorSpec("actions", (8, 2)))
SHAPES_1_1_4 = ["--minShapes=image:1x2x3x32x32,instruction:1x6,state:1x2",
                "--optShapes=image:1x2x3x32x32,instruction:1x6,state:1x2",
                "--maxShapes=image:4x2x3x32x32,instruction:4x6,state:4x2"]
# A quarter of each target's budgets.memory_budget_mb, worked out by hand from targets/*.yaml.
WORKSPACE_MIB = {"jetson-agx-orin": 4096, "jetson-orin-nx": 1536, "jetson-orin-nano": 768, "jetson-thor": 8192,
                 "rtx-4090": 4096, "h100": 10240}
ORIN_FORMATS = ("fp32", "fp16", "bf16", "w8a8", "w8a16", "w4a16")  # Ampere sm_87: no fp8


def tail(folder: str, workspace: int) -> list[str]:
    return [f"--memPoolSize=workspace:{workspace}M", f"--timingCacheFile={folder}/timing.cache",
            "--profilingVerbosity=detailed", f"--exportLayerInfo={folder}/layers.json", "--skipInference"]


# --------------------------------------------------------------------------- commands per target


def test_every_gpu_target_has_a_hand_computed_workspace():
    assert set(WORKSPACE_MIB) == {t.name for t in list_targets() if t.kind == "gpu"}


@pytest.mark.parametrize("target", [t.name for t in list_targets()])
def test_fp32_command_for_each_target(target):
    t = load_target(target)
    if t.kind == "cpu":
        with pytest.raises(EdgevlaError, match=f"^target {target} has no NVIDIA GPU: TensorRT engines need a GPU target$"):
            plan_engine(t, VLA_SPEC)
        return
    plan = plan_engine(t, VLA_SPEC, batch_sizes=(1, 4))
    assert trtexec_command(plan, "model.onnx", "out/model.engine") == [
        "trtexec", "--onnx=model.onnx", "--saveEngine=out/model.engine", "--stronglyTyped", *SHAPES_1_1_4,
        *tail("out", WORKSPACE_MIB[target])]
    assert plan.compute_capability == t.facts.compute_capability and plan.tensorrt == t.facts.tensorrt


@pytest.mark.parametrize("precision, flags", [
    ("fp16", ["--fp16"]),  # an fp32 ONNX model on TensorRT 10: weakly typed, FP16 allowed
    ("bf16", ["--bf16"]),
    ("w8a8", ["--stronglyTyped"]),  # Q/DQ: strongly typed, no precision flag
    ("w8a16", ["--stronglyTyped"]),
    ("w4a16", ["--stronglyTyped"]),
])
def test_precision_flags_on_orin(precision, flags):
    plan = plan_engine(load_target("jetson-orin"), VLA_SPEC, precision=precision, batch_sizes=(4, 1))
    assert trtexec_command(plan, "m.onnx", "e/model.engine") == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=e/model.engine", *flags, *SHAPES_1_1_4, *tail("e", 4096)]


@pytest.mark.parametrize("target", ["jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano"])
def test_fp8_refused_on_orin_with_one_line(target):
    with pytest.raises(EdgevlaError) as e:
        plan_engine(load_target(target), VLA_SPEC, precision="fp8")
    message = str(e.value)
    assert message == (f"target {target} cannot run fp8: it has no fp8 tensor cores; TensorRT precisions it "
                       "supports: fp32, fp16, bf16, w8a8, w8a16, w4a16")
    assert "\n" not in message
    assert supported_formats(load_target(target)) == ORIN_FORMATS


@pytest.mark.parametrize("target", ["jetson-thor", "h100", "rtx-4090"])
def test_fp8_is_strongly_typed_where_it_runs(target):
    plan = plan_engine(load_target(target), VLA_SPEC, precision="fp8", batch_sizes=(1, 4))
    argv = trtexec_command(plan, "model.onnx", "out/model.engine")
    assert argv[3] == "--stronglyTyped" and not {"--fp8", "--int8", "--fp16"} & set(argv)
    assert plan.builder_flags == () and plan.compute_precision == "fp8"


def test_dla_flags_only_when_asked():
    orin = load_target("jetson-orin")
    default = trtexec_command(plan_engine(orin, VLA_SPEC, precision="fp16"), "model.onnx", "model.engine")
    assert not [a for a in default if "DLA" in a or "GPUFallback" in a]
    plan = plan_engine(orin, VLA_SPEC, precision="fp16", dla_core=1, batch=(1, 1, 1))
    one = "image:1x2x3x32x32,instruction:1x6,state:1x2"
    assert trtexec_command(plan, "model.onnx", "model.engine") == [
        "trtexec", "--onnx=model.onnx", "--saveEngine=model.engine", "--fp16", "--useDLACore=1", "--allowGPUFallback",
        f"--minShapes={one}", f"--optShapes={one}", f"--maxShapes={one}", "--memPoolSize=workspace:4096M",
        "--timingCacheFile=timing.cache", "--profilingVerbosity=detailed", "--exportLayerInfo=layers.json",
        "--skipInference"]
    assert plan.builder_flags == ("FP16", "GPU_FALLBACK")
    # int8 on the DLA: TensorRT 10's --int8 flow, fp16 allowed for the layers Q/DQ leave in float.
    nx = plan_engine(load_target("orin-nx"), VLA_SPEC, precision="w8a8", dla_core=0, batch=(4, 4, 4), sparse=True)
    argv = trtexec_command(nx, "model.onnx", "model.engine")
    assert argv[3:8] == ["--int8", "--fp16", "--sparsity=enable", "--useDLACore=0", "--allowGPUFallback"]
    assert "--stronglyTyped" not in argv and nx.builder_flags == ("INT8", "FP16", "SPARSE_WEIGHTS", "GPU_FALLBACK")


@pytest.mark.parametrize("target, kwargs, message", [
    ("jetson-orin-nano", {"precision": "fp16", "dla_core": 0, "batch": (1, 1, 1)}, "target jetson-orin-nano has no DLA"),
    ("jetson-thor", {"precision": "fp16", "dla_core": 0, "batch": (1, 1, 1)}, "target jetson-thor has no DLA"),
    ("jetson-orin", {"precision": "fp16", "dla_core": 2, "batch": (1, 1, 1)},
     "DLA core 2 does not exist on jetson-agx-orin: it has cores 0, 1"),
    ("jetson-orin", {"precision": "fp32", "dla_core": 0, "batch": (1, 1, 1)}, "DLA runs only fp16 and w8a8, not fp32"),
    ("jetson-orin", {"precision": "w4a16", "dla_core": 0, "batch": (1, 1, 1)}, "DLA runs only fp16 and w8a8, not w4a16"),
    ("jetson-orin", {"precision": "fp16", "dla_core": 0, "batch": (1, 1, 4)}, "DLA does not support dynamic shapes"),
    ("jetson-orin", {"precision": "int8"}, "unknown TensorRT precision 'int8'"),
    ("jetson-orin", {"batch": (2, 1, 4)}, "must satisfy min <= opt <= max"),
    ("jetson-orin", {"workspace_mib": 16385}, "between 1 MiB and the target's memory budget (16384 MB)"),
    ("jetson-orin", {"workspace_mib": 0}, "at least 1 MiB"),
    ("jetson-orin", {"precision": "w4a16", "strongly_typed": False}, "must be built as a strongly typed network"),
    ("jetson-orin", {"precision": "fp16", "tensorrt_version": "11.0"}, "builds strongly typed networks only"),
    ("jetson-orin", {"tensorrt_version": "8.6"}, "TensorRT 8.6 is too old"),
    ("jetson-orin", {"precision": "fp32", "graph_float": "fp16"}, "an fp32 engine needs an fp32 ONNX model"),
])
def test_plan_validation(target, kwargs, message):
    with pytest.raises(EdgevlaError) as e:
        plan_engine(load_target(target), VLA_SPEC, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tensorrt_11_and_forced_weak_typing():
    orin = load_target("jetson-orin")
    # TensorRT 11 has no precision flags: an fp16 ONNX model builds strongly typed; Q/DQ as always.
    for precision, graph in (("fp16", "fp16"), ("w8a8", "fp32"), ("fp32", "fp32")):
        plan = plan_engine(orin, VLA_SPEC, precision=precision, graph_float=graph, tensorrt_version="11.0")
        argv = trtexec_command(plan, "model.onnx", "model.engine")
        assert plan.strongly_typed and "--stronglyTyped" in argv and not {"--fp16", "--int8"} & set(argv)
    # TensorRT 10, Q/DQ built weakly typed on request: the int8 flag, only there.
    weak = plan_engine(orin, VLA_SPEC, precision="w8a8", strongly_typed=False)
    argv = trtexec_command(weak, "model.onnx", "model.engine")
    assert argv[3] == "--int8" and "--stronglyTyped" not in argv and weak.float_precisions == ("fp32",)


def test_sparse_needs_sparse_tensor_cores():
    orin = load_target("jetson-orin")
    argv = trtexec_command(plan_engine(orin, VLA_SPEC, sparse=True), "model.onnx", "model.engine")
    assert argv[3:5] == ["--stronglyTyped", "--sparsity=enable"]
    dense_gpu = dataclasses.replace(orin, name="dense-gpu",
                                    facts=dataclasses.replace(orin.facts, sparse_tensor_cores=False))
    with pytest.raises(EdgevlaError, match="^target dense-gpu has no sparse tensor cores"):
        plan_engine(dense_gpu, VLA_SPEC, sparse=True)


def test_plan_round_trips_and_refuses_a_tampered_one():
    plan = plan_engine(load_target("orin-nx"), VLA_SPEC, precision="w8a8", sparse=True, batch_sizes=(1, 8))
    data = json.loads(json.dumps(plan.to_dict()))
    assert EnginePlan.from_dict(data) == plan
    assert data["builder_flags"] == ["SPARSE_WEIGHTS"] and data["inputs"][0]["max"] == [8, 2, 3, 32, 32]
    with pytest.raises(EdgevlaError, match="DLA does not support dynamic shapes"):
        EnginePlan.from_dict({**data, "dla_core": 0, "strongly_typed": False})
    with pytest.raises(EdgevlaError, match="TensorRT plan is malformed: KeyError"):
        EnginePlan.from_dict({k: v for k, v in data.items() if k != "inputs"})
    assert tensorrt_precision("none") == "fp32" and tensorrt_precision("w4a16") == "w4a16"
    with pytest.raises(EdgevlaError, match="quantize format 'int3' has no TensorRT format"):
        tensorrt_precision("int3")


# --------------------------------------------------------------------------- the ONNX model TensorRT takes


@pytest.fixture(scope="module")
def models(tmp_path_factory, torch_one_thread):
    """The float and the w8a8 Q/DQ ONNX models of SmallPolicy: two MatMuls (3-D input), a Gemm head and a
    LayerNorm, what TensorRT sees of a transformer."""
    folder = tmp_path_factory.mktemp("trt-models")
    torch.manual_seed(0)
    policy = SmallPolicy().eval()
    calib = folder / "calib"
    calib.mkdir()
    np.savez(calib / "c.npz", **policy.spec.example(32, seed=1))
    quantized = quantize_policy(policy, "w8a8", calibration=calib)
    return {"policy": policy, "float": export_onnx(policy, folder / "float.onnx"),
            "w8a8": export_qdq(quantized.model, folder / "w8a8.onnx")}


def test_qdq_model_passes_the_lint_and_the_plan_check(models):
    orin = load_target("jetson-orin")
    spec = models["policy"].spec
    w8a8 = plan_engine(orin, spec, precision="w8a8")
    assert lint_qdq(models["w8a8"]) == []
    check_onnx_for_plan(models["w8a8"], w8a8)
    check_onnx_for_plan(models["float"], plan_engine(orin, spec))
    with pytest.raises(EdgevlaError, match="float.onnx has no Q/DQ nodes, so TensorRT would build it in fp32, not w8a8"):
        check_onnx_for_plan(models["float"], w8a8)
    with pytest.raises(EdgevlaError, match="w8a8.onnx holds Q/DQ nodes, but the TensorRT plan is fp16"):
        check_onnx_for_plan(models["w8a8"], plan_engine(orin, spec, precision="fp16"))
    # Every MatMul/Gemm of the three quantized Linears runs in int8; weight-only ones would run in fp32.
    model = onnx.load(str(models["w8a8"]))
    compute = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert len(compute) == 3
    assert expected_node_precisions(model, w8a8) == {name: "int8" for name in compute}
    assert expected_node_precisions(onnx.load(str(models["float"])), plan_engine(orin, spec, precision="fp16")) == {
        n.name: "fp16" for n in onnx.load(str(models["float"])).graph.node if n.op_type in ("MatMul", "Gemm")}


def test_a_model_breaking_the_qdq_rules_is_refused(models, tmp_path):
    model = onnx.load(str(models["w8a8"]))
    zp = next(i for i in model.graph.initializer if i.name.endswith("_zero_point") and i.dims == [])
    zp.CopyFrom(onnx.numpy_helper.from_array(np.array(3, np.int8), zp.name))  # asymmetric activation
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    plan = plan_engine(load_target("jetson-orin"), models["policy"].spec, precision="w8a8")
    with pytest.raises(EdgevlaError, match=r"broken.onnx breaks TensorRT's Q/DQ rules: \[zero-point\]"):
        check_onnx_for_plan(broken, plan)


# --------------------------------------------------------------------------- layer precisions


def _region(dtype_text: str, trt11: bool = False) -> dict:
    key = "DataType" if trt11 else "Format/Datatype"
    return {"Name": "t", "Location": "Device", "Dimensions": [1, 6, 32], key: dtype_text}


def _layer(name, kind, impl, inputs, outputs, trt11=False, **extra) -> dict:
    return {"Name": name, "ParameterType": kind, "LayerType": impl,
            "Inputs": [_region(i, trt11) for i in inputs], "Outputs": [_region(o, trt11) for o in outputs], **extra}


def _engine_json(layers) -> str:
    return json.dumps({"Layers": layers, "Bindings": ["x", "a"]})


def test_tensor_descriptions_name_their_type():
    for text, expected in [("Row major linear FP32", "fp32"), ("Row major linear FP16 format", "fp16"),
                           ("Channel major FP16 format where channel % 8 == 0", "fp16"),
                           ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
                           ("Row major linear BFloat16 format", "bf16"), ("Row major linear FP8 format", "fp8"),
                           ("Row major linear Int64 format", "int64"), ("Row major linear BOOL", "bool"),
                           ("Half", "fp16"), ("Float", "fp32"), ("Int4", "int4"), ("Unknown format", "unknown")]:
        assert tensor_precision(text) == expected, text


def test_int8_engine_passes_and_a_silent_fp32_fallback_fails(models):
    plan = plan_engine(load_target("jetson-orin"), models["policy"].spec, precision="w8a8")
    expected = expected_node_precisions(onnx.load(str(models["w8a8"])), plan)
    names = sorted(expected)
    quantize = _layer("layer_norm_0_QuantizeLinear", "Quantize", "Reformat", ["Row major linear FP32"],
                      ["Row major Int8 format"])
    norm = _layer("node_LayerNormalization_0", "Normalization", "kgen", ["Row major linear FP32"],
                  ["Row major linear FP32"])
    gemms = [_layer(f"{n}_DequantizeLinear + {n}", "MatrixMultiply", "CaskGemmMatrixMultiply",
                    ["Row major Int8 format"], ["Row major linear FP32"],
                    Weights={"Type": "Int8", "Count": 2048}) for n in names]
    report = check_layer_precisions(parse_engine_layers(_engine_json([quantize, norm, *gemms])), plan, expected)
    assert report.verified and report.counts() == {"int8": 3} and report.opaque == ()
    assert report.to_dict()["compute_layers"] == {"int8": 3}

    gemms[1]["Inputs"] = [_region("Row major linear FP32")]  # TensorRT kept one GEMM in float
    with pytest.raises(EdgevlaError) as e:
        check_layer_precisions(parse_engine_layers(_engine_json([quantize, norm, *gemms])), plan, expected)
    assert str(e.value) == (f"TensorRT engine for jetson-agx-orin does not run w8a8 as planned, a silent fallback: "
                            f"layer '{names[1]}_DequantizeLinear + {names[1]}' runs in fp32, the plan asks int8")


def test_fp8_asked_but_fp16_built_fails():
    plan = plan_engine(load_target("jetson-thor"), VLA_SPEC, precision="fp8")
    layers = [_layer("/fc1/MatMul", "MatrixMultiply", "gemm", ["Row major linear FP16 format"],
                     ["Row major linear FP16 format"])]
    with pytest.raises(EdgevlaError, match="does not run fp8 as planned, a silent fallback: layer '/fc1/MatMul' runs "
                                           r"in fp16, the plan asks fp32/fp8 \(and 2 more\)$"):
        check_layer_precisions(parse_engine_layers(_engine_json(layers)), plan)
    fine = [_layer("/fc1/MatMul", "MatrixMultiply", "gemm", ["Row major linear FP8 format"], ["Row major linear FP32"])]
    assert check_layer_precisions(parse_engine_layers(_engine_json(fine)), plan).counts() == {"fp8": 1}


def test_tensorrt_11_inspector_format_and_opaque_myelin_nodes():
    plan = plan_engine(load_target("jetson-thor"), VLA_SPEC, precision="fp16", graph_float="fp16",
                       tensorrt_version="11.0")
    layers = parse_engine_layers(json.dumps({"Layers": [
        _layer("/fc1/MatMul", "MatrixMultiply", "gemm", ["Half"], ["Half"], trt11=True),
        _layer("{ForeignNode[/ln/LayerNormalization.../head/Gemm]}", "Myelin", "Myelin", ["Half"], ["Half"], trt11=True)],
        "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Half"}]}))
    report = check_layer_precisions(layers, plan)
    assert report.verified and report.counts() == {"fp16": 1}
    assert report.opaque == ("{ForeignNode[/ln/LayerNormalization.../head/Gemm]}",)
    # All compute fused into Myelin: nothing to compare, and the report says so rather than claiming a match.
    only_myelin = check_layer_precisions([layers[1]], plan)
    assert not only_myelin.verified and only_myelin.counts() == {}


def test_layer_information_without_details_is_refused():
    with pytest.raises(EdgevlaError, match="lists names only: build the engine with profiling verbosity DETAILED"):
        parse_engine_layers(json.dumps({"Layers": ["a", "b"], "Bindings": ["x"]}))
    with pytest.raises(EdgevlaError, match="not JSON"):
        parse_engine_layers("{")
    assert EngineLayer("n", "Shuffle", "Shuffle", ("fp32",), ("fp32",)).computes is False


# --------------------------------------------------------------------------- build_engine.sh


def _sh(script: Path, *args: str, path: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(script), *args], cwd=cwd, env={"PATH": path, "HOME": str(cwd)},
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def script_bundle(models, tmp_path):
    bundle = tmp_path / "policy-orin"
    bundle.mkdir()
    shutil.copy(models["w8a8"], bundle / "model.onnx")
    plan = plan_engine(load_target("jetson-orin"), models["policy"].spec, precision="w8a8", batch_sizes=(1, 4))
    script, document = write_engine_script(bundle, plan)
    return bundle, script, json.loads(document.read_text())


def test_script_is_posix_sh_and_fails_clearly_without_trtexec(script_bundle, tmp_path):
    bundle, script, document = script_bundle
    assert subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", str(script)], capture_output=True).returncode == 0
    no_trtexec = os.pathsep.join(d for d in ("/usr/bin", "/bin") if not os.path.exists(os.path.join(d, "trtexec")))
    result = _sh(script, path=no_trtexec, cwd=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip() == ("build_engine.sh: trtexec not found: install TensorRT (JetPack has it in "
                                     "/usr/src/tensorrt/bin) or set TRTEXEC=/path/to/trtexec")
    assert document["plan"]["precision"] == "w8a8" and document["onnx"] == "model.onnx"
    assert not engine_dir_for(bundle).exists()


def test_script_runs_the_recorded_command_from_the_bundle(script_bundle, tmp_path):
    """A stand-in trtexec records its argv and working directory, then fails as a real one can."""
    bundle, script, document = script_bundle
    tools = tmp_path / "tools"
    tools.mkdir()
    record = tmp_path / "argv.txt"
    (tools / "trtexec").write_text(f'#!/bin/sh\npwd > "{record}"\nfor a in "$@"; do echo "$a"; done >> "{record}"\n'
                                   "exit 3\n")
    (tools / "trtexec").chmod(0o755)
    engines = tmp_path / "engines"
    result = _sh(script, str(engines), path=f"{tools}:/usr/bin:/bin", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "build_engine.sh: trtexec failed (exit 3)"
    cwd, *argv = record.read_text().splitlines()
    assert Path(cwd).resolve() == bundle.resolve()
    assert argv == [a.replace("${" + ENGINE_DIR_VAR + "}", str(engines)) for a in document["command"][1:]]
    assert argv[:3] == ["--onnx=model.onnx", f"--saveEngine={engines}/model.engine", "--stronglyTyped"]
    # The default engine directory is the bundle's sibling <bundle>.trt.
    record.unlink()
    _sh(script, path=f"{tools}:/usr/bin:/bin", cwd=tmp_path)
    assert record.read_text().splitlines()[2] == f"--saveEngine={engine_dir_for(bundle)}/model.engine"


def test_script_refuses_a_modified_model(script_bundle, tmp_path):
    bundle, script, document = script_bundle
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "trtexec").write_text("#!/bin/sh\nexit 0\n")
    (tools / "trtexec").chmod(0o755)
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = _sh(script, path=f"{tools}:/usr/bin:/bin", cwd=tmp_path)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("build_engine.sh: model.onnx sha256 is ") and line.endswith(
        f", the bundle recorded {document['onnx_sha256']}: the model was modified")


def test_check_layers_command(script_bundle, models, tmp_path, capsys):
    bundle, _, _ = script_bundle
    plan = plan_engine(load_target("jetson-orin"), models["policy"].spec, precision="w8a8")
    expected = expected_node_precisions(onnx.load(str(models["w8a8"])), plan)
    layers = tmp_path / "layers.json"
    good = [_layer(n, "MatrixMultiply", "gemm", ["Row major Int8 format"], ["Row major linear FP32"]) for n in expected]
    layers.write_text(_engine_json(good))
    argv = ["check-layers", str(layers), "--plan", str(bundle / "tensorrt.json"), "--onnx", str(bundle / "model.onnx")]
    assert tensorrt_main(argv) == 0
    assert capsys.readouterr().out.startswith("layer precisions match the w8a8 plan: compute layers 3 int8; 0 opaque")
    good[0]["Inputs"] = [_region("Row major linear FP16 format")]
    layers.write_text(_engine_json(good))
    assert tensorrt_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgevla: error: TensorRT engine for jetson-agx-orin does not run w8a8") and err.count("\n") == 1


# --------------------------------------------------------------------------- bundles, runner, CLI


def test_gpu_bundles_carry_the_script_and_plan(tiny_bundle):
    root = tiny_bundle.bundle
    inspection = inspect_bundle(root)
    assert inspection.ok, inspection.problems
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"build_engine.sh", "tensorrt.json"} <= set(manifest["files"])
    entry = manifest["tensorrt"]
    document = json.loads((root / "tensorrt.json").read_text())
    assert entry["command"] == document["command"] and entry["plan"] == document["plan"]
    assert entry["plan"]["target"] == "jetson-agx-orin" and entry["plan"]["precision"] == "fp32"
    assert entry["command"][:4] == ["trtexec", "--onnx=model.onnx", "--saveEngine=${ENGINE_DIR}/model.engine",
                                    "--stronglyTyped"]
    assert subprocess.run(["/bin/sh", "-n", str(root / "build_engine.sh")]).returncode == 0
    if not HAVE_TENSORRT:
        assert entry["engine"] == {"built": False, "reason": "TensorRT is not installed on the build host"}


def test_bundle_files_for_a_quantized_model(models, tmp_path):
    orin = load_target("jetson-orin")
    files, entry = bundle_tensorrt(orin, models["policy"].spec, models["w8a8"], tmp_path, precision="w8a8",
                                   sparse=True, batch_sizes=(1, 2, 8))
    assert set(files) == {"build_engine.sh", "tensorrt.json"} and all(p.parent == tmp_path for p in files.values())
    assert entry["plan"]["precision"] == "w8a8" and entry["plan"]["strongly_typed"] and entry["plan"]["sparse"]
    assert entry["command"][3:5] == ["--stronglyTyped", "--sparsity=enable"]
    assert entry["command"][5] == "--minShapes=x:1x6x32" and entry["command"][7] == "--maxShapes=x:8x6x32"
    document = json.loads(files["tensorrt.json"].read_text())
    assert document["command"] == entry["command"]
    assert document["onnx_sha256"] == hashlib.sha256(Path(models["w8a8"]).read_bytes()).hexdigest()
    if not HAVE_TENSORRT:
        assert entry["engine"]["built"] is False
    # 2:4 weights on a GPU without sparse tensor cores build as dense weights; a float model cannot be w8a8.
    dense_gpu = dataclasses.replace(orin, facts=dataclasses.replace(orin.facts, sparse_tensor_cores=False))
    _, dense = bundle_tensorrt(dense_gpu, models["policy"].spec, models["w8a8"], tmp_path / "d", precision="w8a8",
                               sparse=True)
    assert dense["plan"]["sparse"] is False and "--sparsity=enable" not in dense["command"]
    with pytest.raises(EdgevlaError, match="has no Q/DQ nodes"):
        bundle_tensorrt(orin, models["policy"].spec, models["float"], tmp_path / "f", precision="w8a8")


def test_cpu_targets_get_no_tensorrt_files(models, tmp_path):
    assert bundle_tensorrt(load_target("x86-64-cpu"), models["policy"].spec, models["float"], tmp_path) == ({}, None)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message where TensorRT is missing")
def test_runner_and_cli_say_tensorrt_is_missing(models, tiny_bundle, capsys):
    with pytest.raises(EdgevlaError) as e:
        make_runner("tensorrt", onnx_path=models["float"], spec=models["policy"].spec)
    assert "needs TensorRT and an NVIDIA GPU" in str(e.value) and "\n" not in str(e.value)
    code = main(["profile", str(tiny_bundle.bundle), "--backend", "tensorrt", "--runs", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and err[-1].startswith("edgevla: error: backend 'tensorrt' needs TensorRT")
    assert not any("Traceback" in line for line in err)


# --------------------------------------------------------------------------- engines (TensorRT + GPU only)


def _device_plan(spec: PolicySpec, precision: str) -> EnginePlan:
    """A plan for the GPU here: a target profile of the same compute capability, else orin's retargeted."""
    capability = device_compute_capability()
    if capability is None:
        pytest.skip("no CUDA GPU")
    for target in list_targets():
        if target.facts.compute_capability == capability and precision in supported_formats(target):
            return plan_engine(target, spec, precision=precision, batch_sizes=(1, 4))
    plan = plan_engine(load_target("jetson-orin"), spec, precision=precision, batch_sizes=(1, 4))
    return dataclasses.replace(plan, target=f"gpu-{capability}", compute_capability=capability)


@pytest.mark.parametrize("precision", ["fp32", "w8a8"])
def test_engine_builds_checks_precisions_and_matches_onnxruntime(models, tmp_path, precision):
    pytest.importorskip("tensorrt")
    from edgevla.export.tensorrt import build_engine

    spec = models["policy"].spec
    plan = _device_plan(spec, precision)
    onnx_path = models["float" if precision == "fp32" else "w8a8"]
    built = build_engine(plan, onnx_path, tmp_path / "model.engine")
    assert built.engine_path.is_file() and built.compute_capability == plan.compute_capability
    assert (tmp_path / "timing.cache").is_file() and (tmp_path / "layers.json").is_file()
    if built.precisions.verified and precision == "w8a8":
        assert "int8" in built.precisions.counts()
    obs = spec.example(batch=3, seed=4)
    with make_runner("onnxruntime", onnx_path=onnx_path, spec=spec) as reference:
        expected = reference(obs)
    runner = TensorRTRunner(onnx_path, spec, engine_path=tmp_path / "model.engine")
    try:
        np.testing.assert_allclose(runner(obs), expected, atol=2e-2 if precision == "w8a8" else 5e-3)
        with pytest.raises(EdgevlaError, match="takes batches of 1 to 4, got 5"):
            runner(spec.example(batch=5))
    finally:
        runner.close()
