"""The native runtime's RMSNorm fusion, its LayerNorm / RMSNorm + static int8 quantization fusion, and the
merging of equal QuantizeLinears.

A W8A8 export writes one Q/DQ pair per consuming linear, so q, k and v each
quantize the same LayerNorm output with the same scale: the runtime merges
them into one QuantizeLinear and fuses it with the LayerNorm into one
``edgevla.LayerNormS8`` step. Tolerance against ONNX Runtime: the codes are
the graph's up to summation order, and a LayerNorm output within float32
noise of a rounding tie can take the neighbouring code: a difference of at
most one code times the weight scale per input, asserted below.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgevla.export import export_onnx
from edgevla.export.qdq import ort_qdq_entries
from edgevla.runtime import NativeModel
from edgevla.spec import PolicySpec, TensorSpec

RNG = np.random.default_rng(11)
K, N = 48, 32


def _rms_norm_nodes(x: str, gamma: str, out: str, inits: dict, last_axis: int = -1) -> list:
    """RMSNorm as the exporter spells ``nn.RMSNorm``: Pow, ReduceMean (last axis), Add, Sqrt, Reciprocal, Mul, Mul."""
    inits.update({"two": np.float32(2.0), "last": np.array([last_axis], np.int64), "eps": np.float32(1e-6)})
    return [helper.make_node("Pow", [x, "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
            helper.make_node("Add", ["ms", "eps"], ["ms_eps"]), helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
            helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", [x, "inv"], ["unit"]),
            helper.make_node("Mul", ["unit", gamma], [out])]


def _w8a8_qkv_model(scales=(0.03, 0.03, 0.03), norm_is_output=False, norm="layer"):
    """x -> LayerNormalization (or RMSNorm's seven nodes) -> three Q/DQ pairs (one per linear) -> three
    int8-weight MatMuls."""
    inits = {"gamma": RNG.normal(1, 0.2, K).astype(np.float32), "beta": RNG.normal(0, 0.2, K).astype(np.float32),
             "zero": np.array(0, np.int8)}
    nodes = ([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5)]
             if norm == "layer" else _rms_norm_nodes("x", "gamma", "ln", inits, 2 if norm == "rms-axis-2" else -1))
    outputs = []
    for i, name in enumerate("qkv"):
        codes = RNG.integers(-127, 128, (K, N), dtype=np.int8)
        inits.update({f"{name}_s": np.float32(scales[i]), f"{name}.w": codes,
                      f"{name}.ws": RNG.uniform(0.002, 0.01, N).astype(np.float32)})
        nodes += [helper.make_node("QuantizeLinear", ["ln", f"{name}_s", "zero"], [f"{name}_q"]),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", "zero"], [f"{name}_dq"]),
                  helper.make_node("DequantizeLinear", [f"{name}.w", f"{name}.ws"], [f"{name}.wf"], axis=1),
                  helper.make_node("MatMul", [f"{name}_dq", f"{name}.wf"], [name])]
        outputs.append(name)
    if norm_is_output:
        outputs.append("ln")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 7, K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), inits


def _session(model):
    """ONNX Runtime's default session, its QDQ fusions off where its uint8 kernels would saturate."""
    options = ort.SessionOptions()
    for key, value in ort_qdq_entries().items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _check_against_onnxruntime(model, inits, x, names="qkv"):
    expected = _session(model).run(
        list(names), {"x": x})
    got = NativeModel(model).run({"x": x})
    for name, want in zip(names, expected):
        one_code = np.float32(inits[f"{name}_s"]) * np.abs(inits[f"{name}.w"].astype(np.float32)) * inits[f"{name}.ws"]
        assert np.all(np.abs(got[name] - want) <= one_code.max(axis=0) * 1.01 + 1e-4)
        assert np.mean(np.abs(got[name] - want) > 1e-4) < 0.05  # nearly everything identical up to float sums


@pytest.mark.parametrize("norm", ["layer", "rms", "rms-axis-2"])  # axis 2: the last one by shape inference
def test_layer_norm_and_shared_quantization_fuse_into_one_step(norm):
    model, inits = _w8a8_qkv_model(norm=norm)
    native_model = NativeModel(model)
    # q, k and v read the same codes: one LayerNorm + int8 step, one stacked GEMM, three column views
    assert native_model.op_count() == {"edgevla.LayerNormS8": 1, "edgevla.Linear": 1, "edgevla.Columns": 3}
    assert all(c.mode == "int8-static" for c in native_model.plan())
    _check_against_onnxruntime(model, inits, RNG.normal(0.2, 1.5, (2, 7, K)).astype(np.float32))
    _check_against_onnxruntime(model, inits, RNG.normal(0, 1, (1, 7, K)).astype(np.float32))  # batch 1


def test_different_scales_stay_separate_and_unfused():
    model, inits = _w8a8_qkv_model(scales=(0.03, 0.03, 0.05))
    counts = NativeModel(model).op_count()
    # q and k merge (and stack); v keeps its own scale, so the LayerNorm output has two readers and stays float.
    assert counts == {"LayerNormalization": 1, "QuantizeLinear": 2, "edgevla.Linear": 2, "edgevla.Columns": 2}
    _check_against_onnxruntime(model, inits, RNG.normal(0, 1, (2, 7, K)).astype(np.float32))


def test_a_layer_norm_output_the_graph_returns_is_not_fused():
    model, inits = _w8a8_qkv_model(norm_is_output=True)
    native_model = NativeModel(model)
    assert native_model.op_count() == {"LayerNormalization": 1, "QuantizeLinear": 1, "edgevla.Linear": 1,
                                       "edgevla.Columns": 3}
    x = RNG.normal(0, 1, (2, 7, K)).astype(np.float32)
    _check_against_onnxruntime(model, inits, x)
    want = _session(model).run(["ln"], {"x": x})
    np.testing.assert_allclose(native_model.run({"x": x})["ln"], want[0], rtol=0, atol=1e-5)


class RMSNormed(nn.Module):
    """A linear layer reading an RMSNorm, spelled as policies spell it."""

    def __init__(self, form: str):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 24)),), action=TensorSpec("a", (6, 16)))
        self.form = form
        self.norm = nn.RMSNorm(24, eps=1e-6)
        self.w = nn.Parameter(torch.rand(24) + 0.5)
        self.fc = nn.Linear(24, 16)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        if self.form == "module":
            h = self.norm(x)
        elif self.form == "llama":
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w
        elif self.form == "divide":
            h = self.w * (x / torch.sqrt((x * x).mean(dim=2, keepdim=True) + 1e-5))
        else:  # no weight
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        return self.fc(h)


@pytest.mark.parametrize("form", ["module", "llama", "divide", "unweighted"])
def test_an_exported_rms_norm_runs_as_one_step(tmp_path, form):
    torch.manual_seed(4)
    block = RMSNormed(form).eval()
    native_model = NativeModel(export_onnx(block, tmp_path / "rms.onnx"), precision="fp32")
    ops = native_model.op_count()
    assert ops.get("RMSNormalization") == 1 and not {"ReduceMean", "Pow", "Sqrt", "Reciprocal", "Div"} & set(ops), ops
    x = RNG.normal(0.3, 2.0, (3, 6, 24)).astype(np.float32)
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    for _ in range(2):  # traced, then on planned buffers
        np.testing.assert_allclose(native_model.run({"x": x})["a"], want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("case", ["mean square read elsewhere", "a middle axis"])
def test_an_rms_norm_the_step_would_change_stays_as_written(case):
    inits: dict = {"gamma": RNG.normal(1, 0.2, K).astype(np.float32)}
    nodes = _rms_norm_nodes("x", "gamma", "y", inits, last_axis=1 if case == "a middle axis" else -1)
    outputs = ("y", "ms") if case == "mean square read elsewhere" else ("y",)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 7, K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if case == "a middle axis":
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(RNG.normal(1, 0.2, (7, 1)).astype(np.float32),
                                                                    "gamma"))
    native_model = NativeModel(model, precision="fp32")
    assert "RMSNormalization" not in native_model.op_count() and native_model.op_count()["ReduceMean"] == 1
    x = RNG.normal(0, 1, (2, 7, K)).astype(np.float32)
    want = _session(model).run(None, {"x": x})
    got = native_model.run({"x": x})
    for name, expected in zip(outputs, want):
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-5)


def test_opset_23_rms_normalization_matches_onnxruntime_and_a_row_with_nan_stays_nan():
    scale = RNG.uniform(0.5, 1.5, K).astype(np.float32)
    graph = helper.make_graph([helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-6)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    x = RNG.normal(0, 3, (2, 5, K)).astype(np.float32)
    x[1, 2, 7] = np.nan
    want = _session(model).run(None, {"x": x})[0]
    got = NativeModel(model, precision="fp32").run({"x": x})["y"]
    assert np.isnan(got[1, 2]).all() and np.isnan(want[1, 2]).all()
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=2e-6 * float(np.abs(want[finite]).max()))
