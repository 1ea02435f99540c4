from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgevla.errors import EdgevlaError
from edgevla.export.lint import lint_qdq
from edgevla.export.qdq import export_qdq
from edgevla.quant import check_precision_supported, quantize_policy
from edgevla.targets import load_target

from user_policies import SmallPolicy, onnx_parity


# Tolerance: the integer codes and scales are identical; what differs is float summation order
# (~1e-6 relative) and, for W8A8, an activation exactly on a rounding tie can round the other way
# (x/scale computed by different instructions), which moves one output by ~scale*|w| (< 1e-3 here).
@pytest.mark.parametrize("fmt", ["w8a8", "w8a16", "w4a16"])
def test_small_policy_ort_matches_fake_quant(tmp_path, fmt):
    torch.manual_seed(0)
    policy = SmallPolicy().eval()
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "c.npz", **policy.spec.example(32, seed=1))
    r = quantize_policy(policy, fmt, calibration=calib, group_size=32, smoothquant_alpha=0.5)
    path = export_qdq(r.model, tmp_path / f"{fmt}.onnx")
    assert lint_qdq(path) == []
    assert onnx_parity(r.model, path, policy.spec.example(4, seed=2)) < 1e-3
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "DequantizeLinear" in ops and (("QuantizeLinear" in ops) == (fmt == "w8a8"))


def test_tiny_vla_w8a8_ortonnx_parity(tmp_path):
    from edgevla.models.zoo import load_policy

    policy = load_policy("tiny-vla").policy
    r = quantize_policy(policy, "w8a8", samples=32, skip=("action_head",))
    path = export_qdq(r.model, tmp_path / "tiny.onnx")
    assert lint_qdq(path) == []
    assert r.formats["action_head"] == "float"
    # Through 12+ quantized layers one activation on a rounding tie that ORT and PyTorch round apart
    # (different division instructions) moves later codes too: measured ~9e-3 in normalized
    # actions (action_std ~0.04, so ~4e-4 in real units); without W8A8 ties the codes agree exactly.
    assert onnx_parity(r.model, path, policy.spec.example(4, seed=5)) < 2e-2
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    # MatMul holds W^T (in, out): per-channel axis 1; Gemm transB=1 holds W: axis 0.
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in dq:
            w = dq[node.input[1]]
            axis = next(a.i for a in w.attribute if a.name == "axis")
            assert inits[w.input[0]].data_type == TensorProto.INT8
            assert axis == (1 if node.op_type == "MatMul" else 0)


def test_fp8_refused_on_orin():
    with pytest.raises(EdgevlaError, match="fp8"):
        check_precision_supported(load_target("jetson-orin"), "fp8")
    check_precision_supported(load_target("h100"), "fp8")
    check_precision_supported(load_target("jetson-orin"), "w8a8")


# --------------------------------------------------------------------------- lint rules


def _model(zp_dtype=np.int8, zp_value=0, w_axis=1, scale_value=0.1, weight_through_dq=True,
           bias_dq=False, with_zp=True) -> onnx.ModelProto:
    """x (B,4) -> Q/DQ -> Gemm(transB=0, W (4,3) int8 via DQ) with float or quantized bias."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "w_q")
    w_scale = numpy_helper.from_array(np.full((3,) if w_axis == 1 else (4,), 0.05, np.float32), "w_s")
    w_zp = numpy_helper.from_array(np.zeros((3,) if w_axis == 1 else (4,), np.int8), "w_zp")
    a_s = numpy_helper.from_array(np.array(scale_value, np.float32), "a_s")
    a_zp = numpy_helper.from_array(np.array(zp_value, zp_dtype), "a_zp")
    bias = numpy_helper.from_array(np.ones(3, np.float32), "b")
    b_q = numpy_helper.from_array(np.ones(3, np.int32), "b_q")
    b_s = numpy_helper.from_array(np.full(3, 0.01, np.float32), "b_s")
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"] if with_zp else ["x", "a_s"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "a_s", "a_zp"] if with_zp else ["xq", "a_s"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=w_axis, name="w_dq")]
    inits = [w, w_scale, w_zp, a_s, a_zp, bias]
    if bias_dq:
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["bd"], axis=0))
        inits += [b_q, b_s]
    b_in = "bd" if bias_dq else "b"
    nodes.append(helper.make_node("Gemm", ["xd", "w" if weight_through_dq else "w_q", b_in], ["y"], name="gemm"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lint_clean_model_passes_and_runs():
    import onnxruntime as ort

    model = _model()
    assert lint_qdq(model) == []
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kwargs, rule", [
    ({"zp_value": 3}, "zero-point"),
    ({"zp_dtype": np.uint8}, "zero-point"),
    ({"with_zp": False}, "zero-point"),
    ({"w_axis": 0}, "weight-axis"),
    ({"weight_through_dq": False}, "dq-input"),
    ({"bias_dq": True}, "quantized-bias"),
    ({"scale_value": 0.0}, "scale"),
    ({"scale_value": float("inf")}, "scale"),
])
def test_lint_catches_each_rule(kwargs, rule):
    issues = lint_qdq(_model(**kwargs))
    rules = {i.rule for i in issues}
    # A dequantized int32 bias has no int8 zero point either; every other case breaks one rule only.
    assert rule in rules and (rules == {rule} or rule == "quantized-bias"), issues


def test_remove_initializer_deletes_in_place_and_keeps_the_others_in_order():
    from edgevla.export.qdq import _remove_initializer

    graph = helper.make_graph([], "g", [], [], initializer=[
        numpy_helper.from_array(np.full(3, i, np.float32), f"w{i}") for i in range(4)])
    _remove_initializer(graph, "w1")
    _remove_initializer(graph, "absent")
    assert [i.name for i in graph.initializer] == ["w0", "w2", "w3"]
    assert [float(numpy_helper.to_array(i)[0]) for i in graph.initializer] == [0.0, 2.0, 3.0]


@pytest.mark.parametrize("features, machine, literal", [
    ({"avx2": True, "fma": True}, "x86_64", True),           # Zen 2/3, Skylake client: u8 kernels saturate
    ({"avx2": True, "avx_vnni": True}, "x86_64", False),     # Alder Lake and later
    ({"avx512f": True, "avx512_vnni": True}, "AMD64", False),
    ({"asimd": True, "asimddp": True}, "aarch64", False),    # int8 kernels as they are on Arm
])
def test_ort_runs_qdq_literally_where_its_uint8_kernels_would_saturate(features, machine, literal):
    from edgevla.export.qdq import ort_qdq_entries

    expected = {"session.disable_quant_qdq": "1"} if literal else {}
    assert ort_qdq_entries(features, machine) == expected


class _Saturating(torch.nn.Module):
    """One Linear whose int8 weights are all ±127 and whose input sits at the top of its range: every pair of
    u8 × s8 products a 16-bit multiply-add sums (255 · 127 · 2) overflows."""

    def __init__(self):
        super().__init__()
        from edgevla.spec import PolicySpec, TensorSpec

        self.spec = PolicySpec(observations=(TensorSpec("x", (4, 64)),), action=TensorSpec("y", (4, 16)))
        self.fc = torch.nn.Linear(64, 16, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.sign(torch.randn(16, 64)) * 0.01)

    def forward(self, x):
        return self.fc(x)


def test_the_onnxruntime_backend_computes_w8a8_without_saturating(tmp_path):
    """The onnxruntime backend computes the Q/DQ model's arithmetic (the reference session's) on this host;
    where the host is an x86 CPU without VNNI, ONNX Runtime's default session does not."""
    import onnxruntime as ort

    from edgevla.backends import OnnxRuntimeRunner
    from edgevla.export.qdq import ORT_DISABLED_OPTIMIZERS, ort_qdq_entries, reference_session

    torch.manual_seed(0)
    policy = _Saturating().eval()
    x = torch.rand(16, 4, 64) * 0.1 + 0.9  # codes near 127, 255 once shifted to uint8
    r = quantize_policy(policy, "w8a8", batches=[(x,)])
    path = export_qdq(r.model, tmp_path / "w8a8.onnx")
    literal = reference_session(path).run(None, {"x": x.numpy()})[0]
    with OnnxRuntimeRunner(path, policy.spec, threads=1) as runner:
        fused = runner({"x": x.numpy()})
    scale = np.abs(literal).max()
    assert np.abs(fused - literal).max() < 1e-3 * scale
    if ort_qdq_entries():  # this host's uint8 kernels saturate: the default session shows it
        default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        assert np.abs(default.run(None, {"x": x.numpy()})[0] - literal).max() > 0.05 * scale
