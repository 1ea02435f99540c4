"""The native runtime's LayerNorm + static int8 quantization fusion, and the merging of equal QuantizeLinears.

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
from onnx import TensorProto, helper, numpy_helper

from edgevla.runtime import NativeModel

RNG = np.random.default_rng(11)
K, N = 48, 32


def _w8a8_qkv_model(scales=(0.03, 0.03, 0.03), norm_is_output=False):
    """x -> LayerNormalization -> three Q/DQ pairs (one per linear) -> three int8-weight MatMuls."""
    inits = {"gamma": RNG.normal(1, 0.2, K).astype(np.float32), "beta": RNG.normal(0, 0.2, K).astype(np.float32),
             "zero": np.array(0, np.int8)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5)]
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


def _check_against_onnxruntime(model, inits, x, names="qkv"):
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        list(names), {"x": x})
    got = NativeModel(model).run({"x": x})
    for name, want in zip(names, expected):
        one_code = np.float32(inits[f"{name}_s"]) * np.abs(inits[f"{name}.w"].astype(np.float32)) * inits[f"{name}.ws"]
        assert np.all(np.abs(got[name] - want) <= one_code.max(axis=0) * 1.01 + 1e-4)
        assert np.mean(np.abs(got[name] - want) > 1e-4) < 0.05  # nearly everything identical up to float sums


def test_layer_norm_and_shared_quantization_fuse_into_one_step():
    model, inits = _w8a8_qkv_model()
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
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["ln"], {"x": x})
    np.testing.assert_allclose(native_model.run({"x": x})["ln"], want[0], rtol=0, atol=1e-5)
