"""The native runtime's linear layers, fusions, kernel rule table and buffer planning, on small graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevla import native
from edgevla.errors import EdgevlaError
from edgevla.runtime import NativeModel, linear
from edgevla.runtime.linear import RULES, KernelEntry, is_two_four, quantize_per_channel

RNG = np.random.default_rng(7)
SQRT2 = np.float32(np.sqrt(2.0))


def _model(nodes, inputs, outputs, inits, opset=18):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _mlp(w1, b1, w2, extra_output=False):
    """x -> MatMul -> Add bias -> erf-GELU (five nodes, as the exporter writes it) -> MatMul."""
    nodes = [helper.make_node("MatMul", ["x", "fc1.weight.T"], ["mm"]),
             helper.make_node("Add", ["mm", "fc1.bias"], ["h"]),
             helper.make_node("Div", ["h", "sqrt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["half", "e1"], ["g0"]),
             helper.make_node("Mul", ["h", "g0"], ["g"]),
             helper.make_node("MatMul", ["g", "fc2.weight.T"], ["y"])]
    inits = {"fc1.weight.T": w1, "fc1.bias": b1, "fc2.weight.T": w2, "sqrt2": SQRT2,
             "one": np.float32(1.0), "half": np.float32(0.5)}
    return _model(nodes, [("x", ["batch", 5, w1.shape[0]])], ["y", "h"] if extra_output else ["y"], inits)


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _gelu(x):
    import math

    return x * 0.5 * (1 + np.vectorize(math.erf)(x.astype(np.float64) / np.sqrt(2)))


W1, B1, W2 = RNG.normal(0, 0.2, (32, 64)).astype(np.float32), RNG.normal(0, 0.1, 64).astype(np.float32), \
    RNG.normal(0, 0.2, (64, 24)).astype(np.float32)
X = RNG.normal(0, 1, (3, 5, 32)).astype(np.float32)


def test_fp32_mlp_fuses_and_matches_onnxruntime():
    model = _mlp(W1, B1, W2)
    native_model = NativeModel(model, precision="fp32")
    assert native_model.op_count() == {"edgevla.Linear": 2}  # bias, GELU chain and both MatMuls folded
    plan = {c.layer: c for c in native_model.plan()}
    assert plan["fc1"].epilogue == "bias+gelu_erf" and plan["fc1"].kernel == "f32-dense"
    assert plan["fc2"].epilogue == "-" and (plan["fc2"].k, plan["fc2"].n) == (64, 24)
    y = native_model.run({"x": X})["y"]
    np.testing.assert_allclose(y, _ort(model, {"x": X})[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(y, _gelu(X @ W1 + B1) @ W2, rtol=0, atol=1e-5)


def test_int8_dynamic_layer_is_the_reference_kernel_exactly():
    """Per-channel weight codes at load, per-token activation codes per call: the scalar reference, bit for bit."""
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"]),
                    helper.make_node("Relu", ["y"], ["r"])], [("x", ["batch", 32])], ["r"],
                   {"w": W1, "b": B1})
    native_model = NativeModel(model)  # default precision: int8
    (choice,) = native_model.plan()
    assert (choice.mode, choice.kernel, choice.epilogue) == ("int8-dynamic", "s8-dense", "bias+relu")
    x = X[0]
    codes, scale = quantize_per_channel(np.ascontiguousarray(W1.T))
    q, s = native.quantize_per_token(x)
    expected = native.gemm_s8s8_f32_ref(q, codes, scale, s, B1, act="relu")
    np.testing.assert_array_equal(native_model.run({"x": x})["r"], expected)
    np.testing.assert_allclose(expected, np.maximum(x @ W1 + B1, 0), atol=0.05)  # and int8 is close to float


def test_quantize_per_channel_keeps_zeros_and_rows():
    w = RNG.normal(0, 1, (6, 10)).astype(np.float32)
    w[1] = 0
    w[2, ::2] = 0
    codes, scale = quantize_per_channel(w)
    assert scale[1] == 1 and not codes[1].any() and not codes[2, ::2].any()
    assert np.abs(codes).max(axis=1)[[0, 2, 3]].tolist() == [127, 127, 127]
    np.testing.assert_allclose(codes * scale[:, None], w, atol=scale.max() / 2 + 1e-7)


def test_fusion_leaves_values_other_nodes_read():
    """h is a graph output: the bias Add stays visible, so only the MatMul pair around it fuses."""
    model = _mlp(W1, B1, W2, extra_output=True)
    native_model = NativeModel(model, precision="fp32")
    counts = native_model.op_count()
    assert counts["edgevla.Linear"] == 2 and counts["Gelu"] == 1 and "Erf" not in counts
    out = native_model.run({"x": X})
    ref = _ort(model, {"x": X})
    np.testing.assert_allclose(out["y"], ref[0], atol=1e-5)
    np.testing.assert_allclose(out["h"], ref[1], atol=1e-5)


def test_gemm_alpha_beta_trans_b():
    w = RNG.normal(0, 0.3, (24, 32)).astype(np.float32)  # (N, K): transB=1
    c = RNG.normal(0, 0.3, 24).astype(np.float32)
    model = _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                   [("x", ["batch", 32])], ["y"], {"w": w, "c": c})
    native_model = NativeModel(model, precision="fp32")
    assert native_model.op_count() == {"edgevla.Linear": 1}
    np.testing.assert_allclose(native_model.run({"x": X[0]})["y"], 0.5 * X[0] @ w.T + 2 * c, atol=1e-5)


def test_two_four_detection():
    w = RNG.normal(0, 1, (8, 16)).astype(np.float32)
    keep = np.argsort(-np.abs(w.reshape(8, 4, 4)), axis=2)[..., :2]
    mask = np.zeros((8, 4, 4), bool)
    np.put_along_axis(mask, keep, True, axis=2)
    sparse = (w.reshape(8, 4, 4) * mask).reshape(8, 16)
    assert is_two_four(sparse) and not is_two_four(w)
    assert not is_two_four(sparse[:, :14])  # K not a multiple of 4
    broken = sparse.copy()
    broken[3, 1:4] = 1.0  # three nonzeros in one group
    assert not is_two_four(broken)


def _sparse_model(w):
    return _model([helper.make_node("MatMul", ["x", "layer.weight.T"], ["y"])], [("x", ["batch", w.shape[1]])],
                  ["y"], {"layer.weight.T": np.ascontiguousarray(w.T)})


def _two_four(n, k):
    w = RNG.normal(0, 1, (n, k)).astype(np.float32)
    w.reshape(n, k // 4, 4)[..., 1::2] = 0
    return w


def _expected_rule(mode, info):
    return next(r for r in RULES if r.matches(mode, info, native.get_isa()) and linear.kernel_available(r.kernel))


# The int8 sparse kernels run where the dense int8 GEMM is AVX-512 VNNI (or NEON, or scalar); on AMX and on
# the AVX2-class tables the dense one is faster and wins (and there NumPy's dense matmul beats the float ones),
# but for AVX-VNNI's 2:4 kernel, which runs its 2:4 weights.
DENSE_WINS = ("avx512_amx", "avx_vnni", "avx2")
DENSE_WINS_OVER_2TO4 = ("avx512_amx", "avx2")
SPARSE_S8_ISAS = [isa for isa in native.available_isas() if isa not in DENSE_WINS]
ON_AMX = ["avx512_amx"] if "avx512_amx" in native.available_isas() else []
ON_AVX2_CLASS = [isa for isa in ("avx_vnni", "avx2") if isa in native.available_isas()]


@pytest.fixture
def isa(request, restore_dispatch):
    native.set_isa(request.param)
    return request.param


@pytest.mark.parametrize("isa", SPARSE_S8_ISAS[:1] + ON_AMX + ON_AVX2_CLASS, indirect=True)
def test_two_four_int8_runs_its_kernel_bit_exact(isa):
    w = _two_four(32, 64)
    model = NativeModel(_sparse_model(w))
    (choice,) = model.plan()
    assert (choice.pattern, choice.sparsity, choice.weight, choice.mode) == ("2:4", 0.5, "fp32", "int8-dynamic")
    rule = _expected_rule("int8-dynamic", linear.WeightInfo("fp32", 32, 64, 0.5, "2:4"))
    expected = "s8-dense" if isa in DENSE_WINS_OVER_2TO4 else "s8-2:4"
    assert (choice.kernel, choice.rule) == (rule.kernel, rule.why) == (expected, rule.why)
    x = RNG.normal(0, 1, (3, 64)).astype(np.float32)
    codes, scale = quantize_per_channel(w)
    q, s = native.quantize_per_token(x)
    np.testing.assert_array_equal(model.run({"x": x})["y"], native.gemm_s8s8_f32_ref(q, codes, scale, s))


@pytest.mark.parametrize("isa", SPARSE_S8_ISAS[:1], indirect=True)
@pytest.mark.parametrize("sparsity, precision, kernel", [
    (0.8, "fp32", "f32-sparse"),  # float sparse beats NumPy dense from 50 % zeros
    (0.8, "int8", "s8-dense"),  # int8 dense is faster until ~95 % zeros
    (0.97, "int8", "s8-sparse"),
    (0.3, "fp32", "f32-dense"),
])
def test_unstructured_sparsity_thresholds(sparsity, precision, kernel, isa):
    w = RNG.normal(0, 1, (48, 64)).astype(np.float32) * (RNG.random((48, 64)) >= sparsity)
    w[0, :3] = 1.0  # three nonzeros in one group: not 2:4, however sparse
    model = NativeModel(_sparse_model(w), precision=precision)
    (choice,) = model.plan()
    assert choice.kernel == kernel and abs(choice.sparsity - sparsity) < 0.05
    assert choice.pattern == ("unstructured" if sparsity >= 0.5 else "dense")
    x = RNG.normal(0, 1, (5, 64)).astype(np.float32)
    y = model.run({"x": x})["y"]
    if precision == "fp32":
        np.testing.assert_allclose(y, x @ w.T, rtol=0, atol=1e-5)
    else:
        codes, scale = quantize_per_channel(w)
        q, s = native.quantize_per_token(x)
        np.testing.assert_array_equal(y, native.gemm_s8s8_f32_ref(q, codes, scale, s))


@pytest.mark.parametrize("isa", ON_AMX, indirect=True)
def test_on_amx_very_sparse_int8_weights_still_run_dense(isa):
    w = RNG.normal(0, 1, (48, 64)).astype(np.float32) * (RNG.random((48, 64)) >= 0.97)
    w[0, :3] = 1.0
    (choice,) = NativeModel(_sparse_model(w), precision="int8").plan()
    assert choice.pattern == "unstructured" and choice.kernel == "s8-dense"


@pytest.mark.parametrize("isa", ON_AVX2_CLASS, indirect=True)
@pytest.mark.parametrize("two_four", [True, False])
def test_on_avx2_class_tables_float_sparse_weights_run_dense(isa, two_four):
    """2:4 or 80 % sparse float weights: NumPy's dense matmul at fp32, the dense int8 GEMM at int8 (but for
    2:4 weights on AVX-VNNI, which has a vpdpbusd 2:4 kernel)."""
    if two_four:
        w = _two_four(48, 64)
    else:
        w = RNG.normal(0, 1, (48, 64)).astype(np.float32) * (RNG.random((48, 64)) >= 0.8)
        w[0, :3] = 1.0
    int8_kernel = "s8-2:4" if two_four and isa == "avx_vnni" else "s8-dense"
    for precision, kernel in (("fp32", "f32-dense"), ("int8", int8_kernel)):
        (choice,) = NativeModel(_sparse_model(w), precision=precision).plan()
        assert choice.pattern == ("2:4" if two_four else "unstructured") and choice.kernel == kernel


@pytest.mark.parametrize("isa", SPARSE_S8_ISAS[:1], indirect=True)  # a table whose float rules take 2:4 weights
def test_the_table_falls_through_to_what_the_build_has(monkeypatch, isa):
    """Dispatch is by pattern and availability: swap in a recording 2:4 kernel and take the sparse one away."""
    calls = []

    def build(layer):
        dense = linear._build_f32_dense(layer)

        def run(x, y):
            calls.append(x.shape)
            dense(x, y)
        return run
    monkeypatch.setitem(linear.KERNELS, "f32-2:4", KernelEntry(lambda: True, build))
    monkeypatch.setitem(linear.KERNELS, "f32-sparse", KernelEntry(lambda: False, build))
    w = _two_four(32, 64)
    model = NativeModel(_sparse_model(w), precision="fp32")
    assert model.plan()[0].kernel == "f32-2:4"
    x = RNG.normal(0, 1, (3, 64)).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], x @ w.T, atol=1e-5)
    assert calls == [(3, 64)]
    dense = RNG.normal(0, 1, (32, 64)).astype(np.float32)
    assert NativeModel(_sparse_model(dense), precision="fp32").plan()[0].kernel == "f32-dense"


def test_narrow_layers_stay_float():
    for shape in ((2, 64), (64, 2)):  # (N, K): two inputs, or two outputs
        w = RNG.normal(0, 1, shape).astype(np.float32)
        (choice,) = NativeModel(_sparse_model(w)).plan()
        assert (choice.mode, choice.kernel) == ("fp32", "f32-dense")


def test_bad_precision_is_refused():
    with pytest.raises(EdgevlaError, match="unknown native precision 'int4'"):
        NativeModel(_sparse_model(W1.T.copy()), precision="int4")


def test_buffers_are_planned_reused_and_outputs_owned():
    model = _mlp(W1, B1, W2)
    native_model = NativeModel(model, precision="fp32")
    first = native_model.run({"x": X})["y"]
    keep = first.copy()
    second = native_model.run({"x": X[:1]})["y"]  # another signature
    third = native_model.run({"x": X})["y"]  # bound steps over planned buffers
    fourth = native_model.run({"x": X * 2})["y"]
    np.testing.assert_array_equal(first, keep)  # outputs are copies: later calls do not touch them
    np.testing.assert_array_equal(third, first)
    np.testing.assert_allclose(second, first[:1], atol=1e-6)
    assert not np.array_equal(fourth, third)
    bound = native_model._program._bound
    assert len(bound) == 2 and all(b.bytes > 0 for b in bound.values())


def test_plan_table_and_op_profile():
    from edgevla.runtime import format_plan

    model = NativeModel(_mlp(W1, B1, W2))
    table = format_plan(model.plan()).splitlines()
    assert table[0].split() == ["layer", "K", "N", "weight", "sparsity", "pattern", "mode", "kernel", "epilogue"]
    assert table[1].split() == ["fc1", "32", "64", "fp32", "0.00", "dense", "int8-dynamic", "s8-dense",
                                "bias+gelu_erf"]
    rows = model.profile_ops({"x": X}, runs=3)
    assert [(r.op_type, r.count) for r in rows] == [("edgevla.Linear", 2)] and rows[0].seconds > 0
    with pytest.raises(EdgevlaError, match="runs >= 1"):
        model.profile_ops({"x": X}, runs=0)


def test_layers_reading_one_activation_share_its_token_quantization():
    """q and k read x and are stacked into one GEMM; v (with a ReLU) reads x too: x is quantized once, and
    each layer still equals the scalar reference bit for bit."""
    ws = [RNG.normal(0, 0.2, (32, n)).astype(np.float32) for n in (24, 24, 40)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"]), helper.make_node("MatMul", ["x", "w1"], ["y1"]),
             helper.make_node("MatMul", ["x", "w2"], ["p2"]), helper.make_node("Relu", ["p2"], ["y2"])]
    nodes.append(helper.make_node("MatMul", ["y0", "w3"], ["z"]))  # reads y0 alone: quantizes for itself
    inits = {f"w{i}": w for i, w in enumerate(ws)} | {"w3": RNG.normal(0, 0.2, (24, 16)).astype(np.float32)}
    model = _model(nodes, [("x", ["batch", 32])], ["y0", "y1", "y2", "z"], inits)
    native_model = NativeModel(model)
    assert native_model.op_count() == {"edgevla.QuantizePerToken": 1, "edgevla.Linear": 3, "edgevla.Columns": 2}
    assert [c.layer for c in native_model.plan()] == ["w0", "w1", "w2", "w3"]
    assert NativeModel(model, precision="fp32").op_count() == {"edgevla.Linear": 4}  # float: never stacked
    x = X[0]
    q, s = native.quantize_per_token(x)
    for batch in (x, x[:1], x):  # trace, another signature, then the planned buffers again
        out = native_model.run({"x": batch})
        q, s = native.quantize_per_token(batch)
        for i, w in enumerate(ws):
            codes, scale = quantize_per_channel(np.ascontiguousarray(w.T))
            act = "relu" if i == 2 else "none"
            np.testing.assert_array_equal(out[f"y{i}"], native.gemm_s8s8_f32_ref(q, codes, scale, s, act=act))
        q0, s0 = native.quantize_per_token(out["y0"])
        codes, scale = quantize_per_channel(np.ascontiguousarray(inits["w3"].T))
        np.testing.assert_array_equal(out["z"], native.gemm_s8s8_f32_ref(q0, codes, scale, s0))


def _residual_block():
    """y = relu(x @ W + b) + x, and z = x @ V + r for a (1, 32) input r (it broadcasts over the rows)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["h"]),
             helper.make_node("Relu", ["h"], ["a"]), helper.make_node("Add", ["a", "x"], ["y"]),
             helper.make_node("MatMul", ["x", "v"], ["p"]), helper.make_node("Add", ["r", "p"], ["z"])]
    inits = {"w": RNG.normal(0, 0.2, (32, 32)).astype(np.float32), "b": RNG.normal(0, 0.1, 32).astype(np.float32),
             "v": RNG.normal(0, 0.2, (32, 32)).astype(np.float32)}
    return _model(nodes, [("x", ["batch", 5, 32]), ("r", [1, 32])], ["y", "z"], inits), inits


def test_a_skip_connection_joins_the_int8_epilogue():
    model, inits = _residual_block()
    native_model = NativeModel(model)
    assert native_model.op_count() == {"edgevla.Linear": 2}  # both Adds absorbed, bias and skip alike
    assert [c.epilogue for c in native_model.plan()] == ["bias+relu+residual", "residual"]
    for batch in (2, 1, 2):
        x = RNG.normal(0, 1, (batch, 5, 32)).astype(np.float32)
        r = RNG.normal(0, 1, (1, 32)).astype(np.float32)
        out = native_model.run({"x": x, "r": r})
        q, s = native.quantize_per_token(x.reshape(-1, 32))
        codes, scale = quantize_per_channel(np.ascontiguousarray(inits["w"].T))
        want = native.gemm_s8s8_f32_ref(q, codes, scale, s, inits["b"], act="relu") + x.reshape(-1, 32)
        np.testing.assert_array_equal(out["y"], want.reshape(x.shape))  # added in the kernel, bit for bit
        codes, scale = quantize_per_channel(np.ascontiguousarray(inits["v"].T))
        want = native.gemm_s8s8_f32_ref(q, codes, scale, s) + r  # r broadcasts: NumPy adds it afterwards
        np.testing.assert_array_equal(out["z"], want.reshape(x.shape))


def test_a_skip_connection_on_the_float_path_matches_onnxruntime():
    model, _ = _residual_block()
    native_model = NativeModel(model, precision="fp32")
    assert native_model.op_count() == {"edgevla.Linear": 2}
    feeds = {"x": RNG.normal(0, 1, (3, 5, 32)).astype(np.float32), "r": RNG.normal(0, 1, (1, 32)).astype(np.float32)}
    for got, want in zip(native_model.run(feeds).values(), _ort(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_tanh_gelu_as_exported_fuses_into_the_layer(tmp_path):
    """Before opset 20 the exporter spells ``F.gelu(approximate="tanh")`` as eight nodes around a Tanh
    (a cube by Pow, 0.044715, sqrt(2/pi), ...): one epilogue of the layer before it."""
    import torch
    from torch import nn

    from edgevla.export import export_onnx
    from edgevla.spec import PolicySpec, TensorSpec

    class TanhMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = PolicySpec(observations=(TensorSpec("x", (5, 32)),), action=TensorSpec("y", (5, 24)))
            self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 24)

        def forward(self, x):
            return self.down(nn.functional.gelu(self.up(x), approximate="tanh"))

    torch.manual_seed(3)
    policy = TanhMLP().eval()
    path = export_onnx(policy, tmp_path / "tanh.onnx")
    native_model = NativeModel(path, precision="fp32")
    assert native_model.op_count() == {"edgevla.Linear": 2}
    assert {c.layer: c.epilogue for c in native_model.plan()}["up"] == "bias+gelu_tanh"
    with torch.no_grad():
        expected = policy(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(native_model.run({"x": X})["y"], expected, rtol=0, atol=1e-5)
