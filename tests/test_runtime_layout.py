"""Channels-last values between convolutions: where the native runtime keeps them, and that nothing changes."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime import conv, ops
from edgevla.runtime.conv import CHANNELS_LAST_POOLS, CONV_OP, CONV_TRANSPOSE_LAST_OP
from edgevla.runtime.group_norm import GROUP_NORM_OP
from edgevla.runtime.layout import BROADCAST_LAST_OP, SPATIAL_MEAN_OP, TO_CHANNELS_FIRST_OP
from edgevla.spec import PolicySpec, TensorSpec

from test_runtime_ops import CASES, _ort
from user_policies import ConvPolicy


@pytest.fixture(params=["native", "numpy"])
def windows(request, monkeypatch):
    """Windows gathered and max-pooled by the native module, or by the NumPy path a build without it takes."""
    if request.param == "numpy":
        monkeypatch.setattr(conv, "_native_gather", lambda dtype: False)
    return request.param


@pytest.mark.parametrize("case", [c for c in CASES if c.op in CHANNELS_LAST_POOLS], ids=lambda c: c.id)
def test_channels_last_pools_match_their_onnx_op(case, windows):
    x = case.inputs["x"]
    args = (case.op, case.attrs, [None], 18, 1, case.op)
    first = ops.compile_op(*args).fn(x)
    last = ops.compile_op(CHANNELS_LAST_POOLS[case.op], *args[1:]).fn(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    assert last.flags.c_contiguous and last.dtype == first.dtype
    np.testing.assert_array_equal(last, np.moveaxis(first, 1, -1))
    back = ops.compile_op(TO_CHANNELS_FIRST_OP, {}, [None], 18, 1, "to first").fn(last)
    assert back.flags.c_contiguous and np.array_equal(back, first)


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "ConvTranspose"], ids=lambda c: c.id)
def test_channels_last_conv_transpose_matches_the_onnx_op(case):
    """The same values channels last, in and out; twice, so that the second call runs on the kept plan."""
    values = {**case.inputs, **case.consts}
    x, w, b = (values.get(name) for name in (case.order + ["", ""])[:3])
    consts = [None, *(case.consts.get(name) for name in case.order[1:])]
    first = ops.compile_op("ConvTranspose", case.attrs, consts, 18, 1, "ct").fn
    last = ops.compile_op(CONV_TRANSPOSE_LAST_OP, case.attrs, consts, 18, 1, "ct").fn
    args = [a for a in (w, b) if a is not None]
    expected = first(x, *args)
    for _ in range(2):
        got = last(np.ascontiguousarray(np.moveaxis(x, 1, -1)), *args)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, np.moveaxis(expected, 1, -1))


def test_the_channels_last_max_pool_keeps_buffers_per_shape_and_returns_its_own_arrays(windows):
    pool = ops.compile_op(CHANNELS_LAST_POOLS["MaxPool"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4},
                          [None], 18, 1, "pool").fn
    reference = ops.compile_op("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4},
                               [None], 18, 1, "pool").fn
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in [(1, 9, 8, 5), (2, 6, 7, 3), (1, 9, 8, 5)]]
    inputs.append(rng.integers(-128, 128, (1, 9, 8, 5), dtype=np.int8))  # int8 codes pad with -128
    results = [pool(x) for x in inputs]
    for x, y in zip(inputs, results):  # every result still its own after the later calls
        np.testing.assert_array_equal(y, np.moveaxis(reference(np.moveaxis(x, -1, 1)), 1, -1))


class Encoder(nn.Module):
    """Every layout boundary: a padded and a strided convolution, a 1x1 one (no copy), MaxPool with ceil mode,
    a skip connection, SiLU (Mul of a value and its Sigmoid), AveragePool, a convolution read both by an
    element-wise op and a Reshape, a scalar Mul, GroupNorm, and a convolution that is a graph output."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("img", (3, 17, 15)),),
                               action=TensorSpec("y", (8, 9)))
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.norm = nn.GroupNorm(4, 16)
        self.d = nn.Conv2d(16, 8, 1)
        self.shift = nn.Parameter(torch.randn(1, 16, 1, 1))

    def forward(self, img):
        x = self.pool(torch.relu(self.a(img)))
        x = x + self.c(nn.functional.silu(self.b(x)))
        x = self.avg(x) * 0.5
        tapped = self.c(x)
        x = torch.relu(tapped) + tapped.reshape(tapped.shape).flip(-1) + self.shift  # flip: a layout-bound reader
        return self.d(self.norm(x)).flatten(2)


class Temporal(nn.Module):
    """A 1-d convolutional action head (Diffusion Policy's U-Net style): Conv1d, GroupNorm, Mish, a skip
    connection, down-sampling by a strided Conv1d and up-sampling by a ConvTranspose1d, and a last
    convolution whose output is the action itself (a graph output)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("traj", (6, 12)),), action=TensorSpec("a", (4, 12)))
        self.a = nn.Conv1d(6, 32, 5, padding=2)
        self.b = nn.Conv1d(32, 32, 3, padding=1, dilation=1)
        self.norm = nn.GroupNorm(8, 32)
        self.down = nn.Conv1d(32, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose1d(32, 32, 4, stride=2, padding=1)
        self.out = nn.Conv1d(32, 4, 1)

    def forward(self, traj):
        h = torch.relu(self.a(traj))
        h = h + nn.functional.mish(self.norm(self.b(h)))
        h = h + self.up(torch.relu(self.down(h)))
        return self.out(torch.relu(self.b(h)))  # self.b twice: one weight, two Conv nodes


@pytest.mark.parametrize("make, reads_last", [(Encoder, True), (Temporal, True), (ConvPolicy, False)],
                         ids=["boundaries", "temporal", "conv-policy"])
def test_channels_last_run_matches_onnxruntime(tmp_path, make, reads_last, windows):
    torch.manual_seed(0)
    policy = make().eval()
    path = export_onnx(policy, tmp_path / "p.onnx")
    obs = policy.spec.example(3, seed=1)
    expected = _ort(onnx.load(str(path)), obs)[0]
    model = NativeModel(path, precision="fp32")
    for _ in range(2):  # the tracing run, then the bound one
        np.testing.assert_allclose(model.run(obs)[policy.spec.action.name], expected, rtol=0, atol=2e-5)
    convs = [s.node.attrs["conv"] for s in model._program.steps if s.node.op_type == CONV_OP]
    assert any(c.output_last for c in convs) and any(c.input_last for c in convs) == reads_last
    outputs = [c for s, c in zip([s for s in model._program.steps if s.node.op_type == CONV_OP], convs)
               if s.node.outputs[0] in model._program.graph.outputs]
    assert all(not c.output_last for c in outputs)  # a graph output leaves in ONNX order


def test_where_the_encoder_converts_back(tmp_path):
    torch.manual_seed(0)
    model = NativeModel(export_onnx(Encoder().eval(), tmp_path / "p.onnx"), precision="fp32")
    counts = model.op_count()
    assert counts[CHANNELS_LAST_POOLS["MaxPool"]] == 1 and counts[CHANNELS_LAST_POOLS["AveragePool"]] == 1
    # Back to ONNX order only where a reader needs it: the flip (a Slice) and the final flatten. The Add where
    # the ReLU meets the flipped value, and the one of the constant shift (1, C, 1, 1), stay channels last: the
    # other operand follows (a view). The GroupNorm between them is fused and runs channels last.
    assert counts[TO_CHANNELS_FIRST_OP] == 2 and counts[BROADCAST_LAST_OP] == 2 and counts[GROUP_NORM_OP] == 1


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 6, 4, 3), (2, 3, 2, 3, 4)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("op, attrs", [
    ("GlobalAveragePool", {}),
    ("ReduceMean", {"axes": "spatial", "keepdims": 1}),
    ("ReduceMean", {"axes": "spatial", "keepdims": 0}),
    ("ReduceMean", {"axes": "negative", "keepdims": 1}),
    ("ReduceMean", {"axes": [1], "keepdims": 1}),  # not the spatial axes: the channels-first fallback
    ("ReduceMean", {"axes": [0, 2], "keepdims": 0}),
], ids=["global", "spatial", "spatial-flat", "negative", "channels", "mixed"])
def test_the_spatial_mean_of_a_channels_last_value_is_the_onnx_mean(shape, op, attrs):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32) + 3
    rank = len(shape)
    axes = attrs.get("axes")
    if isinstance(axes, str):
        axes = list(range(2, rank)) if axes == "spatial" else list(range(-rank + 2, 0))
    onnx_attrs = {} if op == "GlobalAveragePool" else {"axes": axes, "keepdims": attrs["keepdims"]}
    expected = ops.compile_op(op, onnx_attrs, [None], 13, 1, op).fn(x)
    mean = ops.compile_op(SPATIAL_MEAN_OP, {"axes": None if op == "GlobalAveragePool" else axes,
                                            "keepdims": onnx_attrs.get("keepdims", 1)}, [None], 13, 1, "mean").fn
    got = mean(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_a_conv_encoders_last_pool_reads_channels_last(tmp_path):
    """AdaptiveAvgPool2d(1) exports a ReduceMean over the spatial axes: it reads the channels-last value itself
    (no conversion back) and writes ONNX order for the flatten after it."""
    torch.manual_seed(0)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = PolicySpec(observations=(TensorSpec("img", (3, 12, 10)),), action=TensorSpec("y", (1, 8)))
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, img):
            return self.pool(torch.relu(self.conv(img))).flatten(1).unsqueeze(1)

    policy = Pooled().eval()
    path = export_onnx(policy, tmp_path / "p.onnx")
    model = NativeModel(path, precision="fp32")
    counts = model.op_count()
    assert counts[SPATIAL_MEAN_OP] == 1 and TO_CHANNELS_FIRST_OP not in counts
    obs = policy.spec.example(2, seed=6)
    expected = _ort(onnx.load(str(path)), obs)[0]
    for _ in range(2):
        np.testing.assert_allclose(model.run(obs)["y"], expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("other_shape", ["per-channel", "full", "trailing", "scalar-like"])
def test_an_operand_laid_out_channels_last_broadcasts_as_in_onnx_order(rank, other_shape):
    """``edgevla.BroadcastChannelsLast``: x op v in ONNX order equals (x channels last) op (v laid out), moved
    back, for a FiLM-like (N, C, 1...) operand, a full one, a lower-rank one (ONNX aligns trailing axes) and a
    (1,) one; and the laid-out operand is a view."""
    rng = np.random.default_rng(rank)
    shape = (2, 3, *range(4, 4 + rank - 2))
    x = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal({"per-channel": (2, 3, *([1] * (rank - 2))), "full": shape,
                             "trailing": shape[2:], "scalar-like": (1,)}[other_shape]).astype(np.float32)
    last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    laid = ops.compile_op(BROADCAST_LAST_OP, {}, [None, None], 18, 1, "laid out").fn(v, last)
    assert np.shares_memory(laid, v)
    for op in (np.add, np.multiply, np.subtract):
        np.testing.assert_array_equal(np.moveaxis(op(last, laid), -1, 1), op(x, v))
