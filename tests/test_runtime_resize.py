"""Resize as PyTorch exports it (``F.interpolate``), run by the native runtime against PyTorch itself.

The op-by-op cases against ONNX Runtime, every mode included, are in ``test_runtime_ops.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.resize import nearest_indices, source_coordinates
from edgevla.spec import PolicySpec, TensorSpec


class Upsampler(nn.Module):
    """A U-Net decoder's upsampling: ``F.interpolate`` between two convolutions, 2-d or 1-d."""

    def __init__(self, dims: int, **interpolate):
        super().__init__()
        shape = (4, 6, 5) if dims == 2 else (4, 9)
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.inp, self.out = conv(4, 8, 3, padding=1), conv(8, 4, 1)
        self.interpolate = interpolate
        with torch.no_grad():
            action = tuple(self(torch.zeros(1, *shape)).shape[1:])
        self.spec = PolicySpec(observations=(TensorSpec("x", shape),), action=TensorSpec("a", action))

    def forward(self, x):
        y = self.out(F.interpolate(torch.relu(self.inp(x)), **self.interpolate))
        return y.flatten(2)


@pytest.mark.parametrize("dims, interpolate", [
    (2, {"scale_factor": 2, "mode": "nearest"}),
    (2, {"scale_factor": 2, "mode": "bilinear", "align_corners": False}),
    (2, {"size": (9, 13), "mode": "bilinear", "align_corners": True}),
    (2, {"scale_factor": 0.5, "mode": "nearest"}),
    (1, {"scale_factor": 2, "mode": "linear", "align_corners": False}),
    (1, {"size": 20, "mode": "nearest-exact"}),
], ids=["nearest-2x", "bilinear", "bilinear-corners-sizes", "nearest-down", "linear-1d", "nearest-exact-1d"])
def test_interpolate_exported_runs_natively_as_torch_computes_it(tmp_path, dims, interpolate):
    torch.manual_seed(2)
    policy = Upsampler(dims, **interpolate).eval()
    x = torch.randn(3, *policy.spec.observations[0].shape)
    with torch.no_grad():
        expected = policy(x)
    path = export_onnx(policy, tmp_path / "up.onnx")
    got = NativeModel(path, precision="fp32").run({"x": x.numpy()})["a"]
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2e-5)


def test_coordinates_by_hand():
    # 4 -> 8, half_pixel: (o + 0.5) / 2 - 0.5
    assert np.allclose(source_coordinates(8, 4, 2.0, "half_pixel"), [-0.25, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25])
    assert np.allclose(source_coordinates(3, 5, 0.6, "align_corners"), [0, 2, 4])
    assert np.allclose(source_coordinates(1, 5, 0.2, "pytorch_half_pixel"), [0])
    assert np.allclose(source_coordinates(4, 2, 2.0, "asymmetric"), [0, 0.5, 1, 1.5])
    # ties: round_prefer_floor takes 1 for 1.5, round_prefer_ceil 2; out-of-range clamps
    halves = np.array([-0.6, 0.5, 1.5, 9.0])
    assert nearest_indices(halves, 4, "round_prefer_floor").tolist() == [0, 0, 1, 3]
    assert nearest_indices(halves, 4, "round_prefer_ceil").tolist() == [0, 1, 2, 3]
    assert nearest_indices(halves, 4, "floor").tolist() == [0, 0, 1, 3]
    assert nearest_indices(halves, 4, "ceil").tolist() == [0, 1, 2, 3]
