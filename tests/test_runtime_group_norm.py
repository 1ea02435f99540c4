"""``nn.GroupNorm`` as one native step: the float64 reference in both layouts, and the exported pattern it fuses."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.group_norm import GROUP_NORM_OP, GroupNorm
from edgevla.spec import PolicySpec, TensorSpec

from test_runtime_ops import _ort


@pytest.mark.parametrize("shape", [(2, 12, 7), (1, 32, 9, 5), (2, 8, 3, 4, 5)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("offset", [0.0, 50.0])  # a mean far from 0: the variance is taken of centered values
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("where", ["native", "numpy"])
def test_group_norm_matches_float64_reference_in_both_layouts(shape, offset, activation, where):
    rng = np.random.default_rng(7)
    groups = 4
    x = (rng.standard_normal(shape) * 3 + offset).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.uniform(-1, 1, shape[1])
    expected = F.group_norm(torch.from_numpy(x).double(), groups, torch.from_numpy(gamma), torch.from_numpy(beta),
                            eps=1e-5)
    expected = {"none": expected, "relu": F.relu(expected), "mish": F.mish(expected)}[activation].numpy()
    step = GroupNorm(groups, gamma, beta, 1e-5, len(shape), activation=activation)
    step.native = step.native and where == "native"
    if where == "native" and not step.native:
        pytest.skip("the native module has no group_norm_f32")
    first = step(x)
    step.channels_last = True
    last = step(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    assert first.dtype == last.dtype == np.float32
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.moveaxis(last, -1, 1), expected, rtol=0, atol=1e-5)


def test_group_norm_refuses_an_input_of_another_rank():
    with pytest.raises(EdgevlaError, match=r"GroupNorm of 8 float32 channels \(affine constants for rank 4\)"):
        GroupNorm(2, np.ones(8), np.zeros(8), 1e-5, 4)(np.zeros((1, 8, 5), np.float32))


class Norms(nn.Module):
    """An affine GroupNorm then ReLU (fused, ReLU included), and one without affine parameters (PyTorch exports
    its Mul and Add of ones and zeros all the same: fused too)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (16, 10)),), action=TensorSpec("a", (16, 10)))
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.affine = nn.GroupNorm(4, 16)
        self.plain = nn.GroupNorm(2, 16, affine=False)
        with torch.no_grad():
            self.affine.weight.uniform_(0.5, 1.5)
            self.affine.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.plain(torch.relu(self.affine(self.conv(x))) + x)


class MishBlock(nn.Module):
    """Diffusion Policy's conv block: Conv1d, GroupNorm, Mish (fused into the GroupNorm step)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (16, 12)),), action=TensorSpec("a", (32, 12)))
        self.block = nn.Sequential(nn.Conv1d(16, 32, 5, padding=2), nn.GroupNorm(8, 32), nn.Mish())

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("make, fused, absorbed", [(Norms, 2, "Relu"), (MishBlock, 1, "Mish")],
                         ids=["relu-and-plain", "mish"])
def test_exported_group_norm_fuses_and_matches_onnxruntime(tmp_path, make, fused, absorbed):
    torch.manual_seed(0)
    policy = make().eval()
    path = export_onnx(policy, tmp_path / "norms.onnx")
    model = NativeModel(path, precision="fp32")
    counts = model.op_count()
    assert counts[GROUP_NORM_OP] == fused and "InstanceNormalization" not in counts and absorbed not in counts
    obs = policy.spec.example(3, seed=2)
    expected = _ort(onnx.load(str(path)), obs)[0]
    for _ in range(2):
        np.testing.assert_allclose(model.run(obs)["a"], expected, rtol=0, atol=2e-5)


def test_group_norm_without_its_affine_nodes_is_left_as_it_is():
    """Without the per-channel Mul the channel count is unknown until run time: the six nodes stay, and run."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["x", "groups_shape"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "s", "b"], ["n"], epsilon=1e-5),
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Reshape", ["n", "x_shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0, 2, -1], np.int64), "groups_shape"),
             numpy_helper.from_array(np.array([1.5, 0.5], np.float32), "s"),
             numpy_helper.from_array(np.array([0.1, -0.2], np.float32), "b")]
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 5])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = NativeModel(proto, precision="fp32")
    assert GROUP_NORM_OP not in model.op_count() and model.op_count()["InstanceNormalization"] == 1
    x = np.random.default_rng(3).standard_normal((2, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], _ort(proto, {"x": x})[0], rtol=0, atol=1e-5)
