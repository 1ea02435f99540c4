"""Linear layers reading one value, stacked into one GEMM (edgevla/runtime/siblings.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevla import native
from edgevla.runtime import NativeModel
from edgevla.runtime.linear import quantize_per_channel

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")

RNG = np.random.default_rng(11)
K = 40


def _siblings_model(weights, biases, activations=None):
    """x (b, t, K) -> one MatMul (+ bias Add) (+ activation) per weight, every result a graph output."""
    nodes, inits, outputs = [], {}, []
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits[f"w{i}"] = w
        last = f"m{i}"
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [last]))
        if b is not None:
            inits[f"b{i}"] = b
            nodes.append(helper.make_node("Add", [last, f"b{i}"], [f"a{i}"]))
            last = f"a{i}"
        act = (activations or {}).get(i)
        if act:
            nodes.append(helper.make_node(act, [last], [f"r{i}"]))
            last = f"r{i}"
        outputs.append(last)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), outputs


def _reference(x, w, b, act="none"):
    """The layer alone: per-token int8 activations, per-channel int8 weights, the scalar reference kernel."""
    q, s = native.quantize_per_token(np.ascontiguousarray(x.reshape(-1, K)))
    codes, scale = quantize_per_channel(np.ascontiguousarray(w.T))
    return native.gemm_s8s8_f32_ref(q, codes, scale, s, b, act=act).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("widths", [(24, 24, 24), (16, 33, 7 + 16)])
def test_stacked_layers_equal_each_layer_alone_bit_for_bit(widths):
    weights = [RNG.normal(0, 0.2, (K, n)).astype(np.float32) for n in widths]
    biases = [RNG.normal(0, 0.1, n).astype(np.float32) for n in widths]
    model, outputs = _siblings_model(weights, biases)
    native_model = NativeModel(model)
    assert native_model.op_count() == {"edgevla.Linear": 1, "edgevla.Columns": 3}
    plan = native_model.plan()
    assert [(c.layer, c.k, c.n, c.kernel) for c in plan] == [(f"w{i}", K, n, "s8-dense") for i, n in enumerate(widths)]
    assert all("one GEMM with" in c.rule for c in plan)
    for x in (RNG.normal(0, 1, (2, 5, K)), RNG.normal(0, 1, (1, 1, K)), RNG.normal(0, 1, (2, 5, K))):
        x = x.astype(np.float32)
        got = native_model.run({"x": x})
        for name, w, b in zip(outputs, weights, biases):
            assert got[name].flags.c_contiguous  # graph outputs are copied out of the stacked buffer
            np.testing.assert_array_equal(got[name], _reference(x, w, b))


def test_layers_that_differ_in_epilogue_or_bias_are_not_stacked_together():
    weights = [RNG.normal(0, 0.2, (K, 16)).astype(np.float32) for _ in range(4)]
    biases = [RNG.normal(0, 0.1, 16).astype(np.float32), None, RNG.normal(0, 0.1, 16).astype(np.float32), None]
    model, outputs = _siblings_model(weights, biases, activations={2: "Relu"})
    native_model = NativeModel(model)
    # w0 alone (bias, no activation), w2 alone (bias + relu), w1 and w3 stacked (no bias)
    assert native_model.op_count() == {"edgevla.QuantizePerToken": 1, "edgevla.Linear": 3, "edgevla.Columns": 2}
    x = RNG.normal(0, 1, (3, 4, K)).astype(np.float32)
    got = native_model.run({"x": x})
    for i, (name, w, b) in enumerate(zip(outputs, weights, biases)):
        np.testing.assert_array_equal(got[name], _reference(x, w, b, "relu" if i == 2 else "none"))


def test_float_layers_are_never_stacked():
    weights = [RNG.normal(0, 0.2, (K, 16)).astype(np.float32) for _ in range(3)]
    model, _ = _siblings_model(weights, [None] * 3)
    assert NativeModel(model, precision="fp32").op_count() == {"edgevla.Linear": 3}


def test_a_2to4_layer_and_a_dense_one_stack_only_where_they_share_a_kernel(restore_dispatch):
    dense = RNG.normal(0, 0.2, (K, 16)).astype(np.float32)
    two_four = RNG.normal(0, 0.2, (K, 16)).astype(np.float32)
    two_four.reshape(K // 4, 4, 16)[:, :2, :] = 0  # two zeros in every group of 4 inputs
    model, outputs = _siblings_model([dense, two_four], [None, None])
    x = RNG.normal(0, 1, (2, 3, K)).astype(np.float32)
    for isa in native.available_isas():
        native.set_isa(isa)
        native_model = NativeModel(model)
        kernels = [c.kernel for c in native_model.plan()]
        stacked = len(set(kernels)) == 1
        assert native_model.op_count().get("edgevla.Columns", 0) == (2 if stacked else 0)
        assert stacked == (kernels == ["s8-dense", "s8-dense"]), (isa, kernels)
        # the 2:4 kernel gives way to AMX tiles and to the AVX2 table's dense GEMM only
        assert stacked == (isa in ("avx512_amx", "avx2")), (isa, kernels)
        got = native_model.run({"x": x})
        for name, w in zip(outputs, (dense, two_four)):
            np.testing.assert_array_equal(got[name], _reference(x, w, None))
