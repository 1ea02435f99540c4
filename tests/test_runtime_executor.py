"""The executor: values fixed by the input shapes are computed once per signature, the rest every call."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgevla.runtime import NativeModel


def _causal_attention_model():
    """y = softmax(x x^T + causal mask) x, flattened per batch row; the mask and the flattening's shape are built
    from Shape(x) as exporters write them, so they depend on the input's shape only."""
    const = {"one": np.array([1], np.int64), "zero": np.array(0, np.int64), "minus_one": np.array([-1], np.int64),
             "masked": np.array(-1e4, np.float32), "open": np.array(0, np.float32),
             "fill": np.array([1], np.float32)}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["s"], axis=0),
        helper.make_node("Concat", ["s", "s"], ["ss"], axis=0),
        helper.make_node("ConstantOfShape", ["ss"], ["ones"], value=numpy_helper.from_array(const["fill"])),
        helper.make_node("Trilu", ["ones"], ["lower"], upper=0),
        helper.make_node("Equal", ["lower", "open"], ["above"]),
        helper.make_node("Where", ["above", "masked", "open"], ["mask"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Add", ["scores", "mask"], ["masked_scores"]),
        helper.make_node("Softmax", ["masked_scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "x"], ["attended"]),
        helper.make_node("Gather", ["shape", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "zero_axis"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus_one"], ["flat"], axis=0),
        helper.make_node("Reshape", ["attended", "flat"], ["y"]),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in const.items() if k != "fill"]
    initializers.append(numpy_helper.from_array(np.array([0], np.int64), "zero_axis"))
    graph = helper.make_graph(nodes, "causal", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", None])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_values_of_the_input_shapes_are_computed_once_per_signature_and_the_rest_every_call():
    model = _causal_attention_model()
    native = NativeModel(model)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    # traced, another signature, the first again (its fixed values, new data), the second again
    for batch, seq in ((2, 5), (1, 3), (2, 5), (1, 3)):
        x = rng.standard_normal((batch, seq, 4)).astype(np.float32)
        y = native.run({"x": x})["y"]
        np.testing.assert_allclose(y, reference.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    bounds = native._program._bound
    assert len(bounds) == 2
    for signature, bound in bounds.items():
        run = sorted(step.node.op_type for step in bound.steps)
        assert run == ["Add", "MatMul", "MatMul", "Reshape", "Softmax", "Transpose"]  # what reads x's values
        seq = signature[0][0][1]
        masks = [v for v in bound.template if isinstance(v, np.ndarray) and v.shape == (seq, seq)
                 and v.dtype == np.float32]
        expected = np.triu(np.full((seq, seq), -1e4, np.float32), 1)
        assert any(np.array_equal(v, expected) for v in masks)  # ones, Trilu's, the mask: kept read-only
        assert not any(v.flags.writeable for v in masks)


def test_a_value_only_fixed_steps_read_is_computed_once_per_signature():
    """``Sigmoid(x)`` feeds only a ``Shape`` (fixed by the input shapes): later calls do not compute it."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Shape", ["s"], ["shape"]),
             helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Reshape", ["t", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    native = NativeModel(model)
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(native.run({"x": x})["y"], np.tanh(x), rtol=1e-6)
    (bound,) = native._program._bound.values()
    assert [step.node.op_type for step in bound.steps] == ["Tanh", "Reshape"]
