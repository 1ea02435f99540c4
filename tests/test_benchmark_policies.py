"""The policies under ``benchmarks/cpu/policies`` (what ``bench e2e`` figures of conv encoders, diffusion heads and
a Llama-style trunk, an ACT transformer are measured on) export, and the native runtime runs them as ONNX Runtime does, with the fusions the figures
rely on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.attention import ATTENTION_OP
from edgevla.runtime.conv import CONV_OP
from edgevla.runtime.gated import GATED_OP
from edgevla.runtime.rotary import ROTARY_OP
from edgevla.runtime.group_norm import GROUP_NORM_OP

from test_runtime_ops import _ort

POLICIES = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu" / "policies"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, POLICIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, factory, fused", [
    ("resnet18_policy", "gn", {CONV_OP: 20, GROUP_NORM_OP: 20}),
    # every GroupNorm with its ReLU or Mish; the two ConvTranspose up-samplings as convolutions
    ("dp_unet_policy", "make", {CONV_OP: 26, GROUP_NORM_OP: 14, "ConvTranspose": None}),
    # every RMSNorm one step, every causal grouped-query attention (its mask in the kernel), every SwiGLU, every
    # rotary embedding
    ("llama_policy", "make", {"RMSNormalization": 9, ATTENTION_OP: 4, GATED_OP: 4, ROTARY_OP: 8,
                              "ReduceMean": None, "Sigmoid": None, "Softmax": None, "Neg": None}),
    # the same written as Hugging Face writes it: hand-written norms, repeat_kv, eager attention with its mask
    ("hf_llama_policy", "make", {"RMSNormalization": 9, ATTENTION_OP: 4, GATED_OP: 4, ROTARY_OP: 8,
                                 "ReduceMean": None, "Sigmoid": None, "Softmax": None, "Neg": None, "Mul": None}),
    ("hf_llama_policy", "make_gemma", {"RMSNormalization": 9, ATTENTION_OP: 4, GATED_OP: 4, ROTARY_OP: 8,
                                       "ReduceMean": None, "Gelu": None, "Softmax": None, "Neg": None, "Mul": None}),
    # ACT as LeRobot writes it: sequence-first nn.MultiheadAttention (self and cross), the BatchNorms folded
    ("act_policy", "make", {ATTENTION_OP: 6, CONV_OP: 4, "Softmax": None, "BatchNormalization": None}),
])
def test_benchmark_policy_runs_natively_as_onnxruntime_does(tmp_path, name, factory, fused):
    policy = getattr(_load(name), factory)()
    path = export_onnx(policy, tmp_path / "p.onnx")
    model = NativeModel(path, precision="fp32")
    counts = model.op_count()
    assert {op: counts.get(op) for op in fused} == fused
    assert "InstanceNormalization" not in counts and counts.get("Mish", 0) <= 2  # the two FiLM Mish stay
    obs = policy.spec.example(1, seed=5)
    expected = _ort(onnx.load(str(path)), obs)[0]
    np.testing.assert_allclose(model.run(obs)[policy.spec.action.name], expected, rtol=0, atol=1e-4)
