"""Quantized ONNX export beyond int8: fp8 Q/DQ, fp16 / bf16 storage of what stays float, int8 tables,
int4 with fp16 scales — each matching its fake-quant model in ONNX Runtime and passing the lint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgevla.export.lint import lint_qdq
from edgevla.export.qdq import export_qdq
from edgevla.quant import quantize_policy

from user_policies import SmallPolicy, onnx_parity

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class TablePolicy(SmallPolicy):
    """SmallPolicy plus a learned position table (6 x 64 = 384 values): stored int8 when quantized."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 6, 64) * 0.3)
        self.fc1b = nn.Linear(32, 64)

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(self.ln(x)) + self.pos + self.fc1b(x)))
        return self.head(h.mean(dim=1)).reshape(-1, 2, 3)


def _table_policy():
    torch.manual_seed(3)
    return TablePolicy().eval()


@pytest.mark.parametrize("fmt, storage", [("fp8", "fp16"), ("w4a16", "fp16"), ("w8a8", "bf16"), ("w8a16", "fp32")])
def test_formats_with_float_storage_match_fake_quant(tmp_path, fmt, storage):
    policy = _table_policy()
    obs = policy.spec.example(32, seed=1)
    r = quantize_policy(policy, fmt, batches=[(torch.from_numpy(obs["x"]),)], group_size=32, float_dtype=storage)
    path = export_qdq(r.model, tmp_path / f"{fmt}.onnx", float_dtype=storage)
    assert lint_qdq(path) == []
    assert onnx_parity(r.model, path, policy.spec.example(4, seed=2)) < 1e-4
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    assert r.tables == ["pos"] and inits["pos_quantized"].data_type == TensorProto.INT8  # the table: int8 + DQ
    assert "pos" not in inits and any(n.op_type == "DequantizeLinear" and n.output[0] == "pos" for n in model.graph.node)
    stored = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16, "fp32": TensorProto.FLOAT}[storage]
    assert inits["fc1.bias"].data_type == stored and inits["ln.weight"].data_type == stored
    weight = inits["fc1.weight.T_quantized"]
    assert weight.data_type == {"fp8": TensorProto.FLOAT8E4M3FN, "w4a16": TensorProto.INT4}.get(fmt, TensorProto.INT8)
    if fmt == "w4a16":  # fp16 group scales: the DQ outputs fp16, a Cast feeds the fp32 MatMul
        assert inits["fc1.weight.T_scale"].data_type == TensorProto.FLOAT16
    assert all(not n.metadata_props for n in model.graph.node) and not model.graph.value_info
    for v in [*model.graph.input, *model.graph.output]:
        assert v.type.tensor_type.elem_type == TensorProto.FLOAT


def test_fp8_relu_model_matches_in_the_reference_session(tmp_path):
    """ONNX Runtime's Relu->QuantizeLinear rewrite is wrong for fp8; the reference session turns it off."""
    torch.manual_seed(0)
    policy = SmallPolicy().eval()
    r = quantize_policy(policy, "fp8", batches=[(torch.from_numpy(policy.spec.example(32, seed=1)["x"]),)])
    path = export_qdq(r.model, tmp_path / "fp8.onnx")
    assert onnx_parity(r.model, path, policy.spec.example(4, seed=2)) < 1e-4


def test_fp8_quantizes_activations_with_e4m3_zero_points(tmp_path):
    policy = _table_policy()
    r = quantize_policy(policy, "fp8", batches=[(torch.from_numpy(policy.spec.example(32, seed=1)["x"]),)])
    model = onnx.load(str(export_qdq(r.model, tmp_path / "fp8.onnx")))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: i for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q) >= 3 and all(inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN for n in q)


def test_store_floats_as_converts_only_exact_values():
    from edgevla.export.qdq import store_floats_as

    exact = np.linspace(-2, 2, 32, dtype=np.float32).astype(np.float16).astype(np.float32)  # fp16 values
    inexact = exact.copy()
    inexact[3] += 1e-6
    nodes = [helper.make_node("Add", ["x", "e"], ["y0"]), helper.make_node("Add", ["y0", "i"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32])],
                              [numpy_helper.from_array(exact, "e"), numpy_helper.from_array(inexact, "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert store_floats_as(model, "fp16") == ["e"]
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["e"].data_type == TensorProto.FLOAT16 and inits["i"].data_type == TensorProto.FLOAT
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(y, (x + exact) + inexact)  # storage changed nothing


def test_lint_looks_through_the_cast_of_fp16_scales():
    """DQ (fp16 scales) -> Cast -> MatMul: the weight is still checked, here blocked along the wrong axis."""
    w = helper.make_tensor("w_q", TensorProto.INT4, [4, 3], bytes(6), raw=True)
    scale = numpy_helper.from_array(np.full((4, 1), 0.1, np.float16), "w_s")  # blocked along the output axis
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w16"], axis=1, block_size=3, name="w_dq"),
             helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w, scale])
    issues = lint_qdq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert [i.rule for i in issues] == ["weight-axis"] and issues[0].node == "w_dq"
