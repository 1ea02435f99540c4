"""Layers that take over what follows them (:func:`edgevla.runtime.fusion._fuse_output_stages`): a convolution
absorbs its block's skip ``Add``, the ``Relu`` after it and the ``QuantizeLinear`` of the result, and writes the
next layer's int8 codes itself; its GEMM gathers its windows on its own threads. Nothing changes: the same
bits as the graph run step by step, and ONNX Runtime's numbers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
import pytest
import torch
from torch import nn

from edgevla import native
from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.export.qdq import export_qdq, reference_session
from edgevla.quant import quantize_policy
from edgevla.runtime import NativeModel, conv, fusion, linear
from edgevla.runtime.conv import CONV_OP
from edgevla.runtime.group_norm import GROUP_NORM_OP
from edgevla.spec import PolicySpec, TensorSpec

from test_runtime_ops import _ort

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.GroupNorm(4, channels)


class Block(nn.Module):
    """A ResNet basic block: conv-norm-ReLU, conv-norm, the skip (a strided 1x1 conv where the shape changes),
    ReLU; the norm BatchNorm (folded into the convolutions) or GroupNorm (Diffusion Policy's)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "bn"):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), _norm(norm, c_out), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), _norm(norm, c_out))
        self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return torch.relu(self.c2(self.c1(x)) + skip)


class TinyResNet(nn.Module):
    """A stem, an identity block, a downsampling block, a FiLM-like broadcast skip (a conv plus a per-channel
    value computed from the state), pooled, a ReLU MLP head with a residual."""

    def __init__(self, norm: str = "bn"):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("rgb", (3, 20, 20), low=0, high=1),
                                             TensorSpec("state", (4,), low=-1, high=1)),
                               action=TensorSpec("a", (2, 3)))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), _norm(norm, 16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, 16, 1, norm), Block(16, 32, 2, norm))
        self.film = nn.Linear(4, 32)
        self.mix = nn.Conv2d(32, 32, 3, 1, 1)
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 6)

    def forward(self, rgb, state):
        x = self.blocks(self.stem(rgb))
        x = torch.relu(self.mix(x) + self.film(state)[:, :, None, None])  # a skip that broadcasts
        h = x.mean(dim=(2, 3))
        h = torch.relu(h + self.fc(h))  # a linear layer's residual, then ReLU
        return self.head(h).reshape(-1, 2, 3)


@pytest.fixture(scope="module", params=["bn", "gn"])
def exports(tmp_path_factory, request):
    torch.manual_seed(0)
    policy = TinyResNet(request.param).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in policy.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    root = tmp_path_factory.mktemp("stage")
    batches = [tuple(torch.from_numpy(v) for v in policy.spec.example(8, seed=s).values()) for s in range(4)]
    quantized = quantize_policy(policy, "w8a8", batches=batches)
    return policy.spec, {"w8a8": export_qdq(quantized.model, root / "w8a8.onnx"),
                         "fp32": export_onnx(policy, root / "fp32.onnx"), "norm": request.param}


@pytest.fixture(params=["native", "numpy"])
def windows(request, monkeypatch):
    """Windows gathered by the GEMM's threads (the native module), or by the NumPy path a build without it takes."""
    if request.param == "numpy":
        monkeypatch.setattr(conv, "_native_gather", lambda dtype: False)
    return request.param


def _step_by_step(path, precision, monkeypatch):
    """The model with no output stages and no skip connection absorbed by a convolution or linear layer."""
    with monkeypatch.context() as m:
        m.setattr(fusion, "_fuse_output_stages", lambda graph: None)
        m.setattr(fusion, "_skip_input", lambda view, reader, out, op="Add": None)
        return NativeModel(path, precision=precision)


def test_w8a8_blocks_write_the_next_layers_codes(exports, windows, monkeypatch):
    spec, paths = exports
    model = NativeModel(paths["w8a8"])
    counts = model.op_count()
    plan = {c.layer: c.epilogue for c in model.plan()}
    if paths["norm"] == "bn":
        # the block ends: conv + skip + ReLU + the next block's QuantizeLinear, one step (in the downsampling
        # block the 1x1 convolution comes first in the graph and takes the sum: the Add is its only reader)
        assert plan["blocks.0.c2.0"] == plan["blocks.1.down.0"] == "bias+residual+relu+int8"
        assert plan["blocks.0.c1.0"] == plan["blocks.1.c1.0"] == plan["stem.0"] == "bias+relu+int8"
    else:  # the GroupNorm steps take the skip, the ReLU and the quantization
        norms = [n.attrs["norm"] for n in model._program.graph.nodes if n.op_type == GROUP_NORM_OP]
        assert counts[GROUP_NORM_OP] == 6 and sum(n.residual and n.relu_after for n in norms) == 2
        assert sum(n.codes_scale is not None for n in norms) == 5  # the stem, both c1 and both block ends
    assert plan["mix"] == "bias+residual+relu"  # the broadcast skip: added in NumPy, then the ReLU
    assert counts[CONV_OP] == 7 and "Relu" not in counts and "DequantizeLinear" not in counts
    # left: the input's quantization and those after the mean and the film linear (a float output's readers)
    assert counts.get("Add", 0) == 0 and counts.get("QuantizeLinear", 0) <= 3
    obs = spec.example(3, seed=1)
    got = model.run(obs)["a"]
    np.testing.assert_array_equal(got, _step_by_step(paths["w8a8"], "int8", monkeypatch).run(obs)["a"])
    expected = reference_session(paths["w8a8"]).run(None, obs)[0]
    assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())


def test_the_blocks_gather_their_windows_on_the_gemm_threads(exports, monkeypatch):
    spec, paths = exports
    model = NativeModel(paths["w8a8"])
    obs = spec.example(2, seed=4)
    got = model.run(obs)["a"]
    windowed = [n.attrs["conv"] for n in model._program.graph.nodes if n.op_type == CONV_OP]
    assert all(any(p.windows is not None for p in c._plans.values()) for c in windowed if c.kernel != [1, 1])
    with monkeypatch.context() as m:  # the same model gathering the whole im2col matrix first
        m.setattr(linear.LinearLayer, "takes_windows", property(lambda self: False))
        gathered = NativeModel(paths["w8a8"])
        np.testing.assert_array_equal(gathered.run(obs)["a"], got)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_float_graph_absorbs_the_skips_too(exports, windows, precision, monkeypatch):
    spec, paths = exports
    model = NativeModel(paths["fp32"], precision=precision)
    plan = {c.layer: c.epilogue for c in model.plan()}
    assert plan["fc"] == "bias+residual+relu"
    assert plan["blocks.0.c2.0"].endswith("residual+relu") or paths["norm"] == "gn"
    obs = spec.example(2, seed=2)
    got = model.run(obs)["a"]
    np.testing.assert_array_equal(got, _step_by_step(paths["fp32"], precision, monkeypatch).run(obs)["a"])
    expected = _ort(onnx.load(str(paths["fp32"])), obs)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 if precision == "fp32" else 0.05)


def test_a_skip_into_a_graph_output_and_channels_first_values():
    """A block whose sum is a graph output (kept in ONNX order) and whose skip is a channels-first value: the
    convolution reads and writes ONNX order, and the result is ONNX Runtime's."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Neg", ["x"], ["skip"]),  # element-wise, but of a graph input: channels first
             helper.make_node("Add", ["c", "skip"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    value = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2, 8, 6, 6])
    graph = helper.make_graph(nodes, "block", [value("x")], [value("y")], [w, b])
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = NativeModel(model_proto, precision="fp32")
    assert [c.epilogue for c in model.plan()] == ["bias+residual+relu"]
    feeds = {"x": rng.standard_normal((2, 8, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feeds)["y"], _ort(model_proto, feeds)[0], rtol=0, atol=1e-5)


def test_output_stage_refuses_what_it_cannot_do(exports):
    spec, paths = exports
    model = NativeModel(paths["fp32"])
    layer = next(layer for layer in model._layers if not layer.residual)
    with pytest.raises(EdgevlaError, match="a ReLU after the residual needs a residual"):
        layer.set_output_stage(True, None)
    with pytest.raises(EdgevlaError, match="output codes need a positive finite scale"):
        layer.set_output_stage(False, float("nan"))


def test_a_linear_layer_with_a_broadcast_skip_then_relu_and_codes(tmp_path):
    """A skip connection that broadcasts (a (1, K) value added to (N, K) rows) goes through NumPy, then the
    layer's ReLU and codes: what ONNX Runtime computes, and the next layer reads the codes."""
    rng = np.random.default_rng(9)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "skip"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "skip", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 8]),
                        helper.make_tensor_value_info("skip", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 4])], [w1, w2])
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = NativeModel(model_proto, precision="fp32")
    assert [c.epilogue for c in model.plan()] == ["residual+relu", "-"]
    feeds = {"x": rng.standard_normal((5, 8)).astype(np.float32), "skip": rng.standard_normal((1, 8)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feeds)["y"], _ort(model_proto, feeds)[0], rtol=0, atol=1e-5)


class ConditionalBlock(nn.Module):
    """Diffusion Policy's conditional residual block (1-d U-Net): conv-GroupNorm-Mish, FiLM by the condition
    (a linear layer's scale and bias per channel, or its bias alone), conv-GroupNorm-Mish, + a 1x1 conv of the
    input; then the head."""

    def __init__(self, predict_scale: bool):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 12), low=-1, high=1),
                                             TensorSpec("cond", (5,), low=-1, high=1)),
                               action=TensorSpec("a", (6, 12)))
        self.predict_scale = predict_scale
        block = lambda c_in: nn.Sequential(nn.Conv1d(c_in, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Mish())
        self.b1, self.b2 = block(6), block(16)
        self.cond = nn.Sequential(nn.Mish(), nn.Linear(5, 32 if predict_scale else 16))
        self.res, self.out = nn.Conv1d(6, 16, 1), nn.Conv1d(16, 6, 1)

    def forward(self, x, cond):
        h = self.b1(x)
        embed = self.cond(cond).unsqueeze(-1)
        if self.predict_scale:
            scale, bias = embed.reshape(embed.shape[0], 2, 16, 1)[:, 0], embed.reshape(embed.shape[0], 2, 16, 1)[:, 1]
            h = scale * h + bias
        else:
            h = h + embed
        return self.out(self.b2(h) + self.res(x))


@pytest.mark.parametrize("predict_scale", [True, False], ids=["scale-and-bias", "bias"])
@pytest.mark.parametrize("form", ["w8a8", "fp32"])
def test_group_norm_takes_film_scale_and_bias(predict_scale, form, tmp_path, monkeypatch):
    """The GroupNorm + Mish step multiplies by FiLM's scale and adds its bias ((N, C, 1) values computed from the
    condition) in its own pass, then quantizes for the next convolution: no Mul or Add left between, the same bits
    as the graph step by step, and ONNX Runtime's numbers."""
    torch.manual_seed(1)
    policy = ConditionalBlock(predict_scale).eval()
    batches = [tuple(torch.from_numpy(v) for v in policy.spec.example(8, seed=s).values()) for s in range(4)]
    path = (export_qdq(quantize_policy(policy, "w8a8", batches=batches).model, tmp_path / "q.onnx") if form == "w8a8"
            else export_onnx(policy, tmp_path / "f.onnx"))
    precision = "int8" if form == "w8a8" else "fp32"
    model = NativeModel(path, precision=precision)
    graph = model._program.graph
    filmed = [n.attrs["norm"] for n in graph.nodes if n.op_type == GROUP_NORM_OP and n.attrs["norm"].residual]
    assert len(filmed) == 1 and filmed[0].scaled == predict_scale and filmed[0].activation == "mish"
    assert (filmed[0].codes_scale is not None) == (form == "w8a8")  # the next convolution's int8 input
    assert "Mul" not in model.op_count() and model.op_count().get("Add", 0) == 0
    obs = policy.spec.example(3, seed=2)
    got = model.run(obs)["a"]
    np.testing.assert_array_equal(got, _step_by_step(path, precision, monkeypatch).run(obs)["a"])
    expected = (reference_session(path) if form == "w8a8" else None)
    expected = expected.run(None, obs)[0] if expected is not None else _ort(onnx.load(str(path)), obs)[0]
    assert np.abs(got - expected).max() < (2e-3 if form == "w8a8" else 1e-4) * max(1.0, np.abs(expected).max())
