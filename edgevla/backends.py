"""One calling convention for every way edgevla runs a policy.

A :class:`Runner` takes a batch of observations as NumPy arrays keyed by the
names in the policy's spec and returns *normalized* actions of shape
``(batch, chunk_size, action_dim)`` as float32. Inputs are validated and cast
by :meth:`PolicySpec.cast`, so every backend rejects a bad observation with the
same one-line :class:`EdgevlaError`, and verification, benchmarks and the
rollout loop can swap backends without knowing which one they hold.

``native`` (edgevla's own CPU kernels) and ``tensorrt`` are known names so
that a recipe or command line naming them fails with a message saying what is
missing, rather than "unknown backend"; this build does not provide them yet.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .errors import EdgevlaError
from .spec import PolicySpec, spec_of

if TYPE_CHECKING:  # torch is imported on use: an ONNX Runtime deployment need not load it
    import torch

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "native", "tensorrt")

_NOT_IN_THIS_BUILD = {
    "native": "backend 'native' needs edgevla's native CPU kernels, which this build does not provide yet",
    "tensorrt": "backend 'tensorrt' needs TensorRT and an NVIDIA GPU, which this build does not support yet",
}

# ONNX Runtime's names for the tensor types a spec can declare.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(uint8)": "uint8"}


@runtime_checkable
class Runner(Protocol):
    """Observations in, normalized actions out, on one backend."""

    name: str
    spec: PolicySpec

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def close(self) -> None: ...


class _RunnerBase:
    name: str
    spec: PolicySpec
    _closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _inputs(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise EdgevlaError(f"the {self.name} runner is closed")
        return self.spec.cast(obs)

    def _actions(self, out: object, batch: int) -> np.ndarray:
        expected = (batch, *self.spec.action.shape)
        shape = tuple(getattr(out, "shape", ()))
        if shape != expected:
            raise EdgevlaError(f"{self.name} backend returned actions of shape {shape}, the spec declares {expected}")
        return np.asarray(out, dtype=np.float32)


class TorchRunner(_RunnerBase):
    """The PyTorch module itself: the reference every other backend is held to.

    The module is put in eval mode while the runner is open (its previous mode
    comes back on :meth:`close`). ``threads`` fixes torch's intra-op thread
    count for each call, so timings do not depend on what ran before.
    """

    name = "torch"

    def __init__(self, policy, threads: int | None = None):
        import torch

        if not isinstance(policy, torch.nn.Module):
            raise EdgevlaError(f"the torch backend needs a torch.nn.Module, got {type(policy).__name__}")
        self.spec = spec_of(policy)
        self.policy = policy
        self.threads = _check_threads(threads)
        self._torch = torch
        self._threads_before = torch.get_num_threads()
        self._was_training = policy.training
        self._device = policy_device(policy)
        policy.eval()

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self._inputs(obs)
        torch = self._torch
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        tensors = [torch.from_numpy(a).to(self._device) for a in arrays.values()]
        with torch.inference_mode():
            out = self.policy(*tensors)
        if isinstance(out, torch.Tensor):
            out = out.detach().to("cpu", torch.float32).numpy()
        return self._actions(out, len(next(iter(arrays.values()))))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.policy.train(self._was_training)
        if self.threads is not None:
            self._torch.set_num_threads(self._threads_before)


class OnnxRuntimeRunner(_RunnerBase):
    """An exported ONNX model on ONNX Runtime's CPU execution provider.

    Session options are pinned (sequential execution, one inter-op thread,
    ``threads`` intra-op threads, all graph optimizations, deterministic
    compute, memory arena and patterns on) so that two runs of a benchmark
    measure the same thing.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, spec: PolicySpec, threads: int | None = None):
        import onnxruntime as ort

        if not isinstance(spec, PolicySpec):
            raise EdgevlaError(f"the onnxruntime backend needs a PolicySpec, got {type(spec).__name__}")
        self.spec = spec
        self.onnx_path = Path(onnx_path)
        self.threads = _check_threads(threads)
        if not self.onnx_path.is_file():
            raise EdgevlaError(f"ONNX model {self.onnx_path} does not exist")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=self._options(ort),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise EdgevlaError(f"ONNX Runtime cannot load {self.onnx_path}: {_first_line(e)}") from e
        self._check_signature()

    def _options(self, ort):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0  # 0: ONNX Runtime picks the physical core count
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.use_deterministic_compute = True
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = True
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return options

    def _check_signature(self) -> None:
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(self.spec.input_names):
            raise EdgevlaError(f"ONNX model {self.onnx_path.name} takes inputs {sorted(inputs)}, "
                               f"the spec declares {self.spec.input_names}")
        if self.spec.action.name not in outputs:
            raise EdgevlaError(f"ONNX model {self.onnx_path.name} has outputs {outputs}, "
                               f"none named {self.spec.action.name!r} as the spec declares")
        for o in self.spec.observations:
            declared = _ORT_TYPES.get(inputs[o.name], inputs[o.name])
            if declared != o.dtype:
                raise EdgevlaError(f"ONNX model input {o.name!r} is {declared}, the spec declares {o.dtype}")

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self._inputs(obs)
        try:
            (out,) = self.session.run([self.spec.action.name], arrays)
        except Exception as e:
            raise EdgevlaError(f"ONNX Runtime failed on {self.onnx_path.name}: {_first_line(e)}") from e
        return self._actions(out, len(next(iter(arrays.values()))))

    def close(self) -> None:
        self._closed = True
        self.session = None


def make_runner(backend: str, *, policy=None, onnx_path: str | os.PathLike | None = None,
                spec: PolicySpec | None = None, threads: int | None = None) -> Runner:
    """Build the runner for ``backend``, one of :data:`BACKENDS`.

    ``torch`` needs ``policy``; ``onnxruntime`` needs ``onnx_path`` and a spec
    (given, or taken from ``policy``).
    """
    if backend not in BACKENDS:
        raise EdgevlaError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend in _NOT_IN_THIS_BUILD:
        raise EdgevlaError(_NOT_IN_THIS_BUILD[backend])
    if backend == "torch":
        if policy is None:
            raise EdgevlaError("backend 'torch' needs the PyTorch policy")
        return TorchRunner(policy, threads=threads)
    if onnx_path is None:
        raise EdgevlaError("backend 'onnxruntime' needs the path of an exported ONNX model")
    if spec is None:
        if policy is None:
            raise EdgevlaError("backend 'onnxruntime' needs the policy spec (or the policy)")
        spec = spec_of(policy)
    return OnnxRuntimeRunner(onnx_path, spec, threads=threads)


def policy_device(policy) -> torch.device:
    """The device holding the policy's first parameter or buffer (CPU for a stateless module)."""
    import torch

    for tensor in itertools.chain(policy.parameters(), policy.buffers()):
        return tensor.device
    return torch.device("cpu")


def _check_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EdgevlaError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
