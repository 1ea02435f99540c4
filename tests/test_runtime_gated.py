"""Gated MLPs and lone SiLUs as exported run as one ``edgevla.Gated`` step, against PyTorch; a SiLU something
else also reads is not gated (its product stays a step of its own)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.gated import GATED_OP
from edgevla.spec import PolicySpec, TensorSpec

RNG = np.random.default_rng(13)


class GatedMLP(nn.Module):
    """The MLP forms of Llama- and Gemma-style trunks and of action experts."""

    def __init__(self, form: str):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (5, 16)),), action=TensorSpec("a", (5, 16)))
        self.form = form
        self.gate, self.up, self.down = nn.Linear(16, 40), nn.Linear(16, 40), nn.Linear(40, 16)
        self.w12 = nn.Linear(16, 80)

    def forward(self, x):
        if self.form == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.form == "fused-swiglu":
            a, b = self.w12(x).chunk(2, dim=-1)
            h = F.silu(a) * b
        elif self.form == "geglu":  # Gemma's: the GELU's layer leaves it to the gated step
            h = F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        elif self.form == "fused-geglu":
            a, b = self.w12(x).chunk(2, dim=-1)
            h = a * F.gelu(b, approximate="tanh")
        elif self.form == "silu":
            h = F.silu(self.gate(x))
        else:  # the SiLU also read by something else: one step alone, its product another
            s = F.silu(self.gate(x))
            h = s * self.up(x) + s
        return self.down(h)


@pytest.mark.parametrize("form, products", [("swiglu", 0), ("fused-swiglu", 0), ("geglu", 0), ("fused-geglu", 0),
                                           ("silu", 0), ("silu-read-twice", 1)])
def test_gated_mlps_run_as_one_step(tmp_path, form, products):
    torch.manual_seed(7)
    mlp = GatedMLP(form).eval()
    model = NativeModel(export_onnx(mlp, tmp_path / "mlp.onnx"), precision="fp32")
    ops = model.op_count()
    assert ops.get(GATED_OP) == 1 and ops.get("Mul", 0) == products and not {"Sigmoid", "Gelu"} & set(
        ops), ops
    x = RNG.normal(0, 2, (3, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = mlp(torch.from_numpy(x)).numpy()
    for _ in range(2):  # traced, then on planned buffers
        np.testing.assert_allclose(model.run({"x": x})["a"], want, rtol=0, atol=2e-5)


def test_a_value_that_broadcasts_and_strided_columns_take_the_numpy_path():
    from edgevla.runtime.gated import Gated

    gate = RNG.normal(0, 2, (2, 3, 4)).astype(np.float32)
    value = RNG.normal(0, 1, (1, 1, 4)).astype(np.float32)
    want = gate / (1 + np.exp(-gate.astype(np.float64))) * value
    np.testing.assert_allclose(Gated("silu")(gate, value), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(Gated("silu")(gate, np.broadcast_to(value, gate.shape).copy()), want, rtol=0,
                               atol=1e-6)
    every_other = RNG.normal(0, 2, (2, 3, 8)).astype(np.float32)[..., ::2]  # columns a stride apart: NumPy's
    np.testing.assert_allclose(Gated("silu")(every_other), every_other / (1 + np.exp(-every_other.astype(
        np.float64))), rtol=0, atol=1e-6)
