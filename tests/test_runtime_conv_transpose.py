"""``ConvTranspose`` rewritten as a convolution of one filter bank per phase and an interleaving reshape
(:mod:`edgevla.runtime.conv_transpose`): ONNX Runtime's numbers in both layouts, every stride, kernel, pad and
output padding it takes; the ones it leaves to the scattering op stay correct."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevla import native
from edgevla.errors import EdgevlaError
from edgevla.runtime import NativeModel, ops
from edgevla.runtime.conv import CONV_OP
from edgevla.runtime.conv_transpose import PHASES_TO_SPACE_LAST_OP, PHASES_TO_SPACE_OP

from test_runtime_ops import _ort

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")


def _model(x_shape, w, bias, attrs, *, between: bool):
    """A ConvTranspose alone (its output a graph output: ONNX order), or between two 1x1 convolutions (its input
    and output kept channels last)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(w, "up.weight")]
    ins = ["h", "up.weight"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "up.bias"))
        ins.append("up.bias")
    n, c_in, c_out = len(x_shape) - 2, w.shape[0], w.shape[1] * attrs.get("group", 1)
    nodes = [helper.make_node("ConvTranspose", ins, ["y" if not between else "u"], **attrs)]
    if between:
        one = [1] * n
        inits += [numpy_helper.from_array(rng.standard_normal((c_in, x_shape[1], *one)).astype(np.float32), "w0"),
                  numpy_helper.from_array(rng.standard_normal((3, c_out, *one)).astype(np.float32), "w1")]
        nodes = [helper.make_node("Conv", ["x", "w0"], ["h"])] + nodes + [helper.make_node("Conv", ["u", "w1"], ["y"])]
    else:
        nodes[0].input[0] = "x"
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


CASES = {  # x shape, (C_out, kernel), attributes
    "diffusion-policy": ((2, 8, 7), (6, (4,)), dict(strides=[2], pads=[1, 1])),
    "odd-kernel-output-padding": ((1, 8, 5), (6, (3,)), dict(strides=[2], pads=[1, 1], output_padding=[1])),
    "stride-3-uneven-pads": ((2, 5, 6), (4, (5,)), dict(strides=[3], pads=[0, 2])),
    "kernel-smaller-than-stride": ((1, 4, 5), (3, (2,)), dict(strides=[3])),
    "stride-1": ((1, 4, 9), (5, (3,)), dict(pads=[1, 1])),
    "one-position": ((3, 4, 1), (5, (4,)), dict(strides=[2], pads=[1, 1])),
    "valid": ((1, 4, 6), (5, (4,)), dict(strides=[2], auto_pad="VALID")),
    "2d": ((2, 4, 5, 6), (5, (4, 4)), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d-mixed": ((1, 3, 4, 5), (4, (3, 2)), dict(strides=[2, 1], pads=[1, 0, 0, 1], output_padding=[1, 0])),
    "3d": ((1, 2, 3, 4, 3), (3, (2, 3, 2)), dict(strides=[2, 1, 2])),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("between", [False, True], ids=["onnx-order", "channels-last"])
@pytest.mark.parametrize("case", list(CASES))
def test_rewritten_transposed_convolution_is_onnx_runtimes(case, between, bias):
    x_shape, (c_out, kernel), attrs = CASES[case]
    rng = np.random.default_rng(len(case))
    w = (rng.standard_normal((x_shape[1] if not between else 6, c_out, *kernel)) * 0.3).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if bias else None
    proto = _model(x_shape, w, b, attrs, between=between)
    model = NativeModel(proto, precision="fp32")
    counts = model.op_count()
    assert "ConvTranspose" not in counts and counts[CONV_OP] == 1 + 2 * between
    assert counts.get(PHASES_TO_SPACE_LAST_OP if between else PHASES_TO_SPACE_OP) == 1
    assert "up.phases" in [c.layer for c in model.plan()]
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    want = _ort(proto, feeds)[0]
    got = model.run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))
    # at the default precision the product runs on the int8 GEMM, quantized per position
    got8 = NativeModel(proto).run(feeds)["y"]
    assert np.abs(got8 - want).max() < 0.03 * np.abs(want).max()


@pytest.mark.parametrize("attrs", [dict(strides=[2], pads=[1, 1], group=2), dict(strides=[2], dilations=[2]),
                                   dict(strides=[2], auto_pad="SAME_UPPER"),
                                   dict(strides=[2], output_shape=[13])],
                         ids=["grouped", "dilated", "same-upper", "output-shape"])
def test_what_is_not_rewritten_still_scatters_correctly(attrs):
    rng = np.random.default_rng(2)
    groups = attrs.get("group", 1)
    w = (rng.standard_normal((8, 6 // groups, 4)) * 0.3).astype(np.float32)
    proto = _model((2, 8, 7), w, rng.standard_normal(6).astype(np.float32), attrs, between=False)
    model = NativeModel(proto, precision="fp32")
    assert model.op_count().get("ConvTranspose") == 1
    feeds = {"x": rng.standard_normal((2, 8, 7)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feeds)["y"], _ort(proto, feeds)[0], rtol=0, atol=1e-5)


def test_a_weight_computed_at_run_time_is_not_rewritten():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Neg", ["w"], ["nw"]),
             helper.make_node("ConvTranspose", ["x", "nw"], ["y"], strides=[2], pads=[1, 1])]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    model = NativeModel(proto, precision="fp32")
    assert model.op_count().get("ConvTranspose") == 1
    feeds = {"x": rng.standard_normal((1, 4, 5)).astype(np.float32), "w": w}
    np.testing.assert_allclose(model.run(feeds)["y"], _ort(proto, feeds)[0], rtol=0, atol=1e-5)


def test_phases_that_do_not_fit_are_one_line_errors():
    to_space = ops.compile_op(PHASES_TO_SPACE_LAST_OP, {"strides": [2], "begin": [1], "end": [1]}, [None], 18, 1,
                              "to space").fn
    np.testing.assert_array_equal(to_space(np.arange(12, dtype=np.float32).reshape(1, 3, 4)),
                                  np.arange(12, dtype=np.float32).reshape(1, 6, 2)[:, 1:5])
    for shape in [(1, 3, 5), (1, 3, 2, 4), (1, 1, 4)]:  # odd channels, a 2-d value, all cropped away
        with pytest.raises(EdgevlaError) as e:
            to_space(np.zeros(shape, np.float32))
        assert "\n" not in str(e.value)


def test_one_weight_read_by_two_transposed_convolutions():
    """A weight two ConvTranspose nodes read with different strides: each gets its own phase weight."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 3, 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "up.weight"], ["a"], strides=[2], pads=[1, 1]),
             helper.make_node("ConvTranspose", ["x", "up.weight"], ["b"], strides=[1])]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5])],
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "ab"],
                              [numpy_helper.from_array(w, "up.weight")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    model = NativeModel(proto, precision="fp32")
    assert sorted(c.layer for c in model.plan()) == ["up.phases", "up.phases.ConvTranspose_1"]
    feeds = {"x": rng.standard_normal((1, 4, 5)).astype(np.float32)}
    got, want = model.run(feeds), _ort(proto, feeds)
    for name, expected in zip("ab", want):
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-5)


def _qdq_model(x_shape, codes, w_scale, x_scale, bias, attrs):
    """x -> QuantizeLinear -> DequantizeLinear -> ConvTranspose, its weight DequantizeLinear(codes) per output
    channel (axis 1) or per tensor: the form a w8a8 bundle's up-sampling takes."""
    per_channel = np.ndim(w_scale) == 1
    inits = [numpy_helper.from_array(codes, "up.weight_quantized"),
             numpy_helper.from_array(np.asarray(w_scale, np.float32), "up.weight_scale"),
             numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["up.weight_quantized", "up.weight_scale"],
                              ["up.weight_DequantizeLinear"], **({"axis": 1} if per_channel else {}))]
    ins = ["xd", "up.weight_DequantizeLinear"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "up.bias"))
        ins.append("up.bias")
    nodes.append(helper.make_node("ConvTranspose", ins, ["y"], **attrs))
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("case", ["diffusion-policy", "odd-kernel-output-padding", "stride-3-uneven-pads", "2d-mixed",
                                  "3d"])
def test_a_quantized_weight_keeps_its_codes_and_the_input_its_static_scale(case, per_channel):
    """A w8a8 bundle's ConvTranspose: the phase convolution runs int8-static on the exporter's codes and the
    input's Q/DQ scale (exact integer sums), ONNX Runtime's float arithmetic on the same values within 1e-5."""
    x_shape, (c_out, kernel), attrs = CASES[case]
    rng = np.random.default_rng(len(case) + per_channel)
    codes = rng.integers(-127, 128, (x_shape[1], c_out, *kernel), dtype=np.int8)
    w_scale = rng.uniform(1e-3, 4e-3, c_out).astype(np.float32) if per_channel else np.float32(2.5e-3)
    proto = _qdq_model(x_shape, codes, w_scale, 0.02, rng.standard_normal(c_out).astype(np.float32), attrs)
    model = NativeModel(proto)
    (choice,) = [c for c in model.plan() if c.layer == "up.phases"]
    assert (choice.weight, choice.mode) == ("int8", "int8-static")
    assert "ConvTranspose" not in model.op_count()
    feeds = {"x": rng.uniform(-2, 2, x_shape).astype(np.float32)}
    want = _ort(proto, feeds)[0]
    got = model.run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_codes_on_another_axis_are_not_taken_as_output_channels():
    """Scales along axis 0 (the input channels) are no per-output-channel codes: the float weight runs."""
    x_shape, (c_out, kernel), attrs = CASES["diffusion-policy"]
    rng = np.random.default_rng(9)
    codes = rng.integers(-127, 128, (x_shape[1], c_out, *kernel), dtype=np.int8)
    proto = _qdq_model(x_shape, codes, rng.uniform(1e-3, 4e-3, c_out).astype(np.float32), 0.02, None, attrs)
    dq = proto.graph.node[2]
    dq.attribute[0].i = 0
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(rng.uniform(1e-3, 4e-3, x_shape[1]).astype(
        np.float32), "up.weight_scale"))
    model = NativeModel(proto)
    (choice,) = [c for c in model.plan() if c.layer == "up.phases"]
    assert choice.weight == "fp32"
    feeds = {"x": rng.uniform(-2, 2, x_shape).astype(np.float32)}
    want = _ort(proto, feeds)[0]
    assert np.abs(model.run(feeds)["y"] - want).max() < 0.03 * np.abs(want).max()
