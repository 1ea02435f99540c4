from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.backends import BACKENDS, OnnxRuntimeRunner, Runner, TorchRunner, make_runner
from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.spec import PolicySpec, TensorSpec


class StatePolicy(nn.Module):
    """Proprioception + a token id: an MLP with LayerNorm and a softmax-weighted mix."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(
            observations=(TensorSpec("state", (6,), "float32", -2.0, 2.0),
                          TensorSpec("task", (1,), "int64", 0, 3)),
            action=TensorSpec("action", (3, 2)))
        self.task = nn.Embedding(4, 12)
        self.inp = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.mix = nn.Linear(12, 3)
        self.out = nn.Linear(12, 6)
        self.dropout = nn.Dropout(0.5)  # makes train vs eval mode observable

    def forward(self, state, task):
        h = self.norm(self.inp(state) + self.task(task)[:, 0])
        h = self.dropout(h)
        weights = torch.softmax(self.mix(h), dim=-1)  # (B, 3)
        return (weights[:, :, None] * self.out(h).reshape(-1, 3, 2)) * 3.0


@pytest.fixture(scope="module")
def policy_and_onnx(tmp_path_factory):
    torch.manual_seed(1)
    policy = StatePolicy()
    return policy, export_onnx(policy, tmp_path_factory.mktemp("backends") / "state.onnx")


def _reference(policy, obs):
    policy.eval()
    with torch.no_grad():
        return policy(torch.from_numpy(obs["state"]), torch.from_numpy(obs["task"])).numpy()


@pytest.mark.parametrize("batch", [1, 5])
def test_torch_and_onnxruntime_agree_with_the_reference(policy_and_onnx, batch):
    policy, path = policy_and_onnx
    obs = policy.spec.example(batch=batch, seed=batch)
    want = _reference(policy, obs)
    with make_runner("torch", policy=policy, threads=1) as t, \
            make_runner("onnxruntime", onnx_path=path, policy=policy, threads=1) as o:
        got_torch, got_ort = t(obs), o(obs)
    for got in (got_torch, got_ort):
        assert got.shape == (batch, 3, 2) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5
    assert np.abs(want).std() > 1e-3


def test_runners_follow_the_protocol(policy_and_onnx):
    policy, path = policy_and_onnx
    for runner in (TorchRunner(policy), OnnxRuntimeRunner(path, policy.spec)):
        assert isinstance(runner, Runner)
        assert runner.name in BACKENDS and runner.spec == policy.spec
        runner.close()
        with pytest.raises(EdgevlaError, match="closed"):
            runner(policy.spec.example())


def test_inputs_are_cast_to_the_declared_dtypes(policy_and_onnx):
    policy, path = policy_and_onnx
    obs = policy.spec.example(batch=3, seed=4)
    loose = {"state": obs["state"].astype(np.float64), "task": obs["task"].astype(np.int32)}
    with OnnxRuntimeRunner(path, policy.spec) as o:
        np.testing.assert_allclose(o(loose), _reference(policy, obs), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_bad_observations_raise_edgevla_errors(policy_and_onnx, backend):
    policy, path = policy_and_onnx
    obs = policy.spec.example(batch=2)
    bad = {
        "shape": {**obs, "state": obs["state"][:, :5]},
        "missing": {"state": obs["state"]},
        "batch": {**obs, "task": obs["task"][:1]},
        "dtype": {**obs, "task": obs["task"].astype(np.float32)},
    }
    with make_runner(backend, policy=policy, onnx_path=path) as runner:
        for case, observation in bad.items():
            with pytest.raises(EdgevlaError) as err:
                runner(observation)
            assert "\n" not in str(err.value), case


def test_torch_runner_pins_threads_and_restores_state(policy_and_onnx):
    policy, _ = policy_and_onnx
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a known value different from the runner's
    policy.train()
    runner = TorchRunner(policy, threads=1)
    obs = policy.spec.example(batch=4, seed=9)
    first = runner(obs)
    np.testing.assert_array_equal(first, runner(obs))  # eval mode: dropout is off, output repeatable
    assert torch.get_num_threads() == 1
    runner.close()
    assert torch.get_num_threads() == 2 and policy.training
    policy.eval()
    torch.set_num_threads(before)


def test_unknown_and_unavailable_backends():
    assert BACKENDS == ("torch", "onnxruntime", "native", "tensorrt")
    with pytest.raises(EdgevlaError, match="known backends: torch, onnxruntime, native, tensorrt"):
        make_runner("tflite")
    with pytest.raises(EdgevlaError, match="TensorRT and an NVIDIA GPU.*this build"):
        make_runner("tensorrt", policy=StatePolicy())


def test_make_runner_requires_what_each_backend_needs(policy_and_onnx):
    policy, path = policy_and_onnx
    with pytest.raises(EdgevlaError, match="needs the PyTorch policy"):
        make_runner("torch", onnx_path=path)
    with pytest.raises(EdgevlaError, match="path of an exported ONNX model"):
        make_runner("onnxruntime", policy=policy)
    with pytest.raises(EdgevlaError, match="path of an exported ONNX model"):
        make_runner("native", policy=policy)
    with pytest.raises(EdgevlaError, match="policy spec"):
        make_runner("onnxruntime", onnx_path=path)
    with pytest.raises(EdgevlaError, match="threads"):
        make_runner("torch", policy=policy, threads=0)


def test_onnxruntime_runner_refuses_a_model_that_does_not_fit_the_spec(policy_and_onnx, tmp_path):
    policy, path = policy_and_onnx
    other = PolicySpec(observations=(TensorSpec("joints", (6,)), TensorSpec("task", (1,), "int64")),
                       action=TensorSpec("action", (3, 2)))
    with pytest.raises(EdgevlaError, match="takes inputs"):
        OnnxRuntimeRunner(path, other)
    retyped = PolicySpec(observations=(TensorSpec("state", (6,)), TensorSpec("task", (1,), "int32")),
                         action=TensorSpec("action", (3, 2)))
    with pytest.raises(EdgevlaError, match="'task' is int64, the spec declares int32"):
        OnnxRuntimeRunner(path, retyped)
    with pytest.raises(EdgevlaError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx", policy.spec)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(EdgevlaError, match="cannot load"):
        OnnxRuntimeRunner(garbage, policy.spec)


def test_a_bundled_model_runs_from_its_manifest_alone(policy_and_onnx, tmp_path):
    from edgevla.bundle import load_bundle, make_manifest, weights_bytes, write_bundle

    policy, path = policy_and_onnx
    manifest = make_manifest(policy.spec, policy_name="state-policy", target="x86-64-avx512")
    root = write_bundle(tmp_path / "bundle", {"model.onnx": path, "weights.safetensors": weights_bytes(policy)},
                        manifest)
    bundle = load_bundle(root)
    obs = policy.spec.example(batch=3, seed=12)
    with make_runner("onnxruntime", onnx_path=bundle.file("model.onnx"), spec=bundle.spec) as runner:
        np.testing.assert_allclose(runner(obs), _reference(policy, obs), atol=1e-5)
