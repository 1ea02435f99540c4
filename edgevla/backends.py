"""One calling convention for every way edgevla runs a policy.

A :class:`Runner` takes a batch of observations as NumPy arrays keyed by the
names in the policy's spec and returns *normalized* actions of shape
``(batch, chunk_size, action_dim)`` as float32. Inputs are validated and cast
by :meth:`PolicySpec.cast`, so every backend rejects a bad observation with the
same one-line :class:`EdgevlaError`, and verification, benchmarks and the
rollout loop can swap backends without knowing which one they hold.

``native`` runs the exported ONNX model on edgevla's own CPU kernels
(:mod:`edgevla.runtime`). ``tensorrt`` runs an engine where TensorRT and an
NVIDIA GPU exist, and says which is missing elsewhere.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .errors import EdgevlaError
from .spec import PolicySpec, spec_of

if TYPE_CHECKING:  # torch is imported on use: an ONNX Runtime deployment need not load it
    import torch

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "native", "tensorrt")

_NOT_IN_THIS_BUILD: dict[str, str] = {}

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
    measure the same thing. On an x86-64 CPU without VNNI ONNX Runtime's QDQ
    fusions are off (:func:`~edgevla.export.qdq.ort_qdq_entries`: its uint8
    integer kernels there saturate).
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
        from .export.qdq import ORT_DISABLED_OPTIMIZERS

        model, ops = _ort_model(self.onnx_path)
        try:
            self.session = ort.InferenceSession(model, sess_options=self._options(ort, ops),
                                                providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise EdgevlaError(f"ONNX Runtime cannot load {self.onnx_path}: {_first_line(e)}") from e
        self._check_signature()

    def _options(self, ort, ops: set[str]):
        from .export.qdq import ort_qdq_entries

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
        entries = ort_qdq_entries()
        if "DequantizeLinear" in ops and "QuantizeLinear" not in ops:
            # DequantizeLinear on constant weights only: with ONNX Runtime's QDQ
            # fusions off the weights are dequantized once, at load, instead of
            # on every call (MatMulNBits re-quantizes activations on the fly,
            # which is slower here and not the model's arithmetic).
            entries["session.disable_quant_qdq"] = "1"
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
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


class NativeRunner(_RunnerBase):
    """An exported ONNX model on edgevla's own CPU kernels (:mod:`edgevla.runtime`).

    Every linear layer with a constant weight runs on the native kernels the
    runtime's rule table picks (``plan()`` lists them), everything else in
    NumPy. ``precision`` says how float weights run: ``"int8"`` (default,
    dynamic per-token W8A8) or ``"fp32"`` (ONNX Runtime's numbers to ~1e-5);
    weights the graph quantized run on their own codes either way.

    While the runner is open, ``threads`` sets the kernels' thread pool and
    OpenBLAS (NumPy's float matmuls) runs on one thread, whose workers would
    otherwise fight the pool for the cores; both come back on :meth:`close`.
    """

    name = "native"

    def __init__(self, onnx_path: str | os.PathLike, spec: PolicySpec, threads: int | None = None,
                 precision: str | None = None):
        from . import native
        from .runtime import DEFAULT_PRECISION, NativeModel
        from .runtime.blas import set_blas_threads

        if not isinstance(spec, PolicySpec):
            raise EdgevlaError(f"the native backend needs a PolicySpec, got {type(spec).__name__}")
        self.spec = spec
        self.onnx_path = Path(onnx_path)
        self.threads = _check_threads(threads)
        self.model = NativeModel(self.onnx_path, precision=precision or DEFAULT_PRECISION)
        self._check_signature()
        self._native = native
        self._threads_before = native.get_num_threads() if native.available() else None
        if self.threads is not None and native.available():
            native.set_num_threads(self.threads)
        self._blas_before = set_blas_threads(1)

    def _check_signature(self) -> None:
        inputs = {v.name: v for v in self.model.inputs}
        if set(inputs) != set(self.spec.input_names):
            raise EdgevlaError(f"ONNX model {self.onnx_path.name} takes inputs {sorted(inputs)}, "
                               f"the spec declares {self.spec.input_names}")
        if self.spec.action.name not in self.model.outputs:
            raise EdgevlaError(f"ONNX model {self.onnx_path.name} has outputs {self.model.outputs}, "
                               f"none named {self.spec.action.name!r} as the spec declares")
        for o in self.spec.observations:
            if inputs[o.name].dtype != np.dtype(o.dtype):
                raise EdgevlaError(f"ONNX model input {o.name!r} is {inputs[o.name].dtype}, "
                                   f"the spec declares {o.dtype}")

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self._inputs(obs)
        out = self.model.run(arrays)[self.spec.action.name]
        return self._actions(out, len(next(iter(arrays.values()))))

    def plan(self):
        """What runs each linear layer (a list of :class:`edgevla.runtime.LayerChoice`)."""
        return self.model.plan()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        from .runtime.blas import set_blas_threads

        if self._blas_before is not None:
            set_blas_threads(self._blas_before)
        if self.threads is not None and self._threads_before is not None:
            self._native.set_num_threads(self._threads_before)


class CudaNativeRunner(TorchRunner):
    """The native backend on a GPU: a PyTorch policy whose linear layers run edgevla's CUDA kernels.

    :func:`edgevla.cuda_policy.cuda_policy` swaps the layers (the policy is
    changed in place and moved to the GPU). Calls copy the observations to
    the GPU, replay the forward as a CUDA graph (:class:`edgevla.cuda_policy.GraphedForward`,
    one capture per input shape) and copy the actions back. A forward that
    cannot be captured runs eagerly instead, and :attr:`graph_error` says why
    (``cuda_graphs=False`` asks for eager from the start). ``plan()`` lists
    the kernel of each linear layer, as on the CPU. ``tactics_path`` (a JSON
    file, :mod:`edgevla.cuda_tactics`) has each layer run the kernel variant
    timed fastest on this GPU for its shape; :meth:`close` saves new timings.
    ``float_inputs``: the layers the build kept on a float input (a bundle's
    ONNX metadata, :func:`edgevla.runtime.graph.float_input_layers`).
    """

    name = "native"

    def __init__(self, policy, precision: str | None = None, cuda_graphs: bool = True, tactics_path=None,
                 float_inputs: Iterable[str] = ()):
        from .cuda_policy import DEFAULT_PRECISION, GraphedForward, cuda_policy, use_tactics
        from .cuda_tactics import TacticTable, this_device

        # refuses where no GPU; a deployed policy keeps no host copies for CPU references
        policy, self._plan = cuda_policy(policy, precision=precision or DEFAULT_PRECISION, keep_reference=False,
                                         float_inputs=float_inputs)
        self.tactics_path = tactics_path
        self.tactics = None if tactics_path is None else TacticTable.load_or_new(tactics_path, this_device())
        use_tactics(policy, self.tactics)
        super().__init__(policy)
        self._graphed = GraphedForward(policy) if cuda_graphs else None
        self.graph_error: str | None = None

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self._inputs(obs)
        torch = self._torch
        inputs = [torch.from_numpy(a) for a in arrays.values()]
        out = None
        if self._graphed is not None:
            try:
                out = self._graphed(inputs)
            except EdgevlaError as e:  # capture refused: eager from now on
                self._graphed, self.graph_error = None, str(e)
        if out is None:
            with torch.inference_mode():
                out = self.policy(*[t.to(self._device) for t in inputs])
        return self._actions(out.detach().to("cpu", torch.float32).numpy(), len(next(iter(arrays.values()))))

    def close(self) -> None:
        """Saves the kernel tactics when some were timed in this run (``tactics_path``), then closes."""
        if not self._closed and self.tactics is not None and self.tactics.tuned:
            self.tactics.save(self.tactics_path)
        super().close()

    def tactics_summary(self) -> dict | None:
        """The kernel tactics used: file, GPU, how many shapes were timed now, and the chosen variants."""
        if self.tactics is None:
            return None
        return {"file": str(self.tactics_path), "device": self.tactics.device, "timed_now": len(self.tactics.tuned),
                "variants": {key: t.variant for key, t in sorted(self.tactics.tactics.items())}}

    def reset_peak_memory(self) -> None:
        """Starts the allocator's peak (:meth:`memory_mb`) afresh, after setup, before the calls to measure."""
        self._torch.cuda.synchronize()
        self._torch.cuda.reset_peak_memory_stats()

    def memory_mb(self) -> dict[str, float]:
        """Memory in MiB: the policy's weights as the kernels hold them (packed, on the GPU), PyTorch's allocator's
        peak since :meth:`reset_peak_memory` (weights, activations, graph pools) and what it holds, and the host
        copies of weights its layers keep (none, unless CUTLASS's 2:4 copy may still be made from them)."""
        from .cuda_policy import CudaLinear, weight_bytes

        cuda = self._torch.cuda
        host = sum(m.host_bytes() for m in self.policy.modules() if isinstance(m, CudaLinear))
        return {"weights": weight_bytes(self.policy) / 2**20, "peak_allocated": cuda.max_memory_allocated() / 2**20,
                "reserved": cuda.memory_reserved() / 2**20, "host_copies": host / 2**20}

    @property
    def graphed(self) -> bool:
        """Whether calls replay CUDA graphs (False: eager, by request or because capture failed)."""
        return self._graphed is not None

    def plan(self):
        """What runs each linear layer (a list of :class:`edgevla.runtime.LayerChoice`)."""
        return list(self._plan)


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def native_device(device: str, gpu_target: bool) -> str:
    """Where ``--backend native`` runs: ``"cpu"`` or ``"cuda"``.

    ``auto`` is the GPU when the bundle is built for one (``gpu_target``) and
    the CUDA kernels can run here, else the CPU; ``cuda`` insists, with the
    one-line reason when it cannot.
    """
    if device not in DEVICES:
        raise EdgevlaError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    from . import cuda_kernels

    reason = cuda_kernels.unavailable_reason()
    if device == "cuda" and reason:
        raise EdgevlaError(f"--device cuda: the native backend cannot run on a GPU here: {reason}")
    return "cuda" if device == "cuda" or (gpu_target and not reason) else "cpu"


class TensorRTRunner(_RunnerBase):
    """A TensorRT engine on an NVIDIA GPU (needs the ``tensorrt`` package and a CUDA device).

    The engine is, first found: ``engine_path``; ``model.engine`` beside the ONNX model (a bundle
    built on its device ships one); ``model.engine`` in the bundle's engine directory
    ``<bundle>.trt`` (where the bundle's build_engine.sh writes it). With none, it is built from the
    ONNX model with the plan in the bundle's ``tensorrt.json`` and saved in that directory.
    Device buffers are torch CUDA tensors where torch sees the GPU, else cuda-python allocations.
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str | os.PathLike | None, spec: PolicySpec | None, *,
                 engine_path: str | os.PathLike | None = None):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise EdgevlaError("backend 'tensorrt' needs TensorRT and an NVIDIA GPU, and the tensorrt Python package "
                               "is not installed in this build's environment (on the device: pip install tensorrt, "
                               "or run the bundle's build_engine.sh)") from e
        if not isinstance(spec, PolicySpec):
            raise EdgevlaError("backend 'tensorrt' needs the policy spec (or the policy)")
        self.spec = spec
        self._cuda = _cuda_memory()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine_path, data = _tensorrt_engine(onnx_path, engine_path)
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise EdgevlaError(f"TensorRT cannot load engine {self.engine_path}: it was built by another TensorRT "
                                   "version or for another GPU (engines are tied to both); rebuild it on this device")
            self._context = self._engine.create_execution_context()
            self._bind(trt)
        except BaseException:
            self._cuda.close()
            raise

    def _bind(self, trt) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if set(inputs) != set(self.spec.input_names):
            raise EdgevlaError(f"TensorRT engine {self.engine_path.name} takes inputs {sorted(inputs)}, "
                               f"the spec declares {self.spec.input_names}")
        if self.spec.action.name not in self._outputs:
            raise EdgevlaError(f"TensorRT engine {self.engine_path.name} has outputs {self._outputs}, "
                               f"none named {self.spec.action.name!r} as the spec declares")
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        profiles = [engine.get_tensor_profile_shape(n, 0) for n in inputs]  # (min, opt, max) of profile 0
        self.batch_range = (max(p[0][0] for p in profiles), min(p[2][0] for p in profiles))

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self._inputs(obs)
        batch = len(next(iter(arrays.values())))
        low, high = self.batch_range
        if not low <= batch <= high:
            raise EdgevlaError(f"the TensorRT engine takes batches of {low} to {high}, got {batch}")
        buffers = []
        try:
            for name, array in arrays.items():
                buffers.append(self._cuda.upload(np.ascontiguousarray(array, dtype=self._dtypes[name])))
                if not self._context.set_input_shape(name, array.shape):
                    raise EdgevlaError(f"TensorRT refused input {name!r} of shape {array.shape}")
                self._context.set_tensor_address(name, buffers[-1].pointer)
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                outputs[name] = self._cuda.empty(shape, self._dtypes[name])
                buffers.append(outputs[name])
                self._context.set_tensor_address(name, outputs[name].pointer)
            if not self._context.execute_async_v3(self._cuda.stream_handle):
                raise EdgevlaError(f"TensorRT failed to run engine {self.engine_path.name}")
            out = self._cuda.download(outputs[self.spec.action.name])  # waits for the stream
        finally:
            self._cuda.release(buffers)
        return self._actions(out.astype(np.float32), batch)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._context = self._engine = self._runtime = None
        self._cuda.close()


def _tensorrt_engine(onnx_path, engine_path) -> tuple[Path, bytes]:
    """(path, serialized engine) as :class:`TensorRTRunner` looks for it, building it when none exists."""
    from .export.tensorrt import ENGINE_NAME, PLAN_NAME, build_engine, engine_dir_for, load_plan_document

    if engine_path is not None:
        candidates = [Path(engine_path)]
        if not candidates[0].is_file():
            raise EdgevlaError(f"TensorRT engine {engine_path} does not exist")
    elif onnx_path is None:
        raise EdgevlaError("backend 'tensorrt' needs a TensorRT engine or the path of an exported ONNX model")
    else:
        folder = Path(onnx_path).parent
        candidates = [folder / ENGINE_NAME, engine_dir_for(folder) / ENGINE_NAME]
    for path in candidates:
        if path.is_file():
            return path, path.read_bytes()
    onnx_path = Path(onnx_path)
    plan_file = onnx_path.parent / PLAN_NAME
    if not plan_file.is_file():
        raise EdgevlaError(f"no TensorRT engine for {onnx_path} and no {PLAN_NAME} beside it to plan one: build the "
                           "bundle for a GPU target")
    built = build_engine(load_plan_document(plan_file)["plan"], onnx_path, candidates[-1])
    return built.engine_path, built.engine_path.read_bytes()


class _DeviceBuffer:
    """One device allocation: its address, and what keeps it (and its host source) alive."""

    def __init__(self, pointer: int, nbytes: int, owner=None, host: np.ndarray | None = None):
        self.pointer, self.nbytes, self.owner, self.host = int(pointer), nbytes, owner, host


class _TorchCudaMemory:
    """Device buffers as torch CUDA tensors, copied on one stream that the engine also runs on."""

    _DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32", "int8": "int8",
               "uint8": "uint8", "bool": "bool"}

    def __init__(self, torch):
        self._torch = torch
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self._device)
        self.stream_handle = self._stream.cuda_stream

    def upload(self, array: np.ndarray) -> _DeviceBuffer:
        with self._torch.cuda.stream(self._stream):
            tensor = self._torch.from_numpy(array).to(self._device)
        return _DeviceBuffer(tensor.data_ptr(), array.nbytes, tensor)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> _DeviceBuffer:
        torch_dtype = getattr(self._torch, self._DTYPES[np.dtype(dtype).name])
        with self._torch.cuda.stream(self._stream):
            tensor = self._torch.empty(shape, dtype=torch_dtype, device=self._device)
        return _DeviceBuffer(tensor.data_ptr(), tensor.numel() * tensor.element_size(), tensor)

    def download(self, buffer: _DeviceBuffer) -> np.ndarray:
        self._stream.synchronize()
        return buffer.owner.cpu().numpy()

    def release(self, buffers) -> None:
        self._stream.synchronize()  # nothing in flight may still use them
        for b in buffers:
            b.owner = None

    def close(self) -> None:
        self._stream.synchronize()


class _CudaPythonMemory:
    """Device buffers from cuda-python's runtime API, for a host whose torch has no CUDA."""

    def __init__(self, cudart):
        self._rt = cudart
        self._stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self._stream)

    def _check(self, result, what: str):
        err, *value = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EdgevlaError(f"CUDA {what} failed: {self._rt.cudaGetErrorString(err)[1]!r}")
        return value[0] if value else None

    def _malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def upload(self, array: np.ndarray) -> _DeviceBuffer:
        buffer = _DeviceBuffer(self._malloc(array.nbytes), array.nbytes, host=array)
        self._check(self._rt.cudaMemcpyAsync(buffer.pointer, array.ctypes.data, array.nbytes,
                                             self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                    "cudaMemcpyAsync")
        return buffer

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> _DeviceBuffer:
        host = np.empty(shape, dtype=dtype)
        return _DeviceBuffer(self._malloc(host.nbytes), host.nbytes, host=host)

    def download(self, buffer: _DeviceBuffer) -> np.ndarray:
        self._check(self._rt.cudaMemcpyAsync(buffer.host.ctypes.data, buffer.pointer, buffer.nbytes,
                                             self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                    "cudaMemcpyAsync")
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return buffer.host

    def release(self, buffers) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for b in buffers:
            self._check(self._rt.cudaFree(b.pointer), "cudaFree")

    def close(self) -> None:
        self._check(self._rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")


def _cuda_memory():
    """Torch's CUDA when it sees a GPU, else cuda-python's; a one-line error without either."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _TorchCudaMemory(torch)
    from .export.tensorrt import _cudart

    cudart = _cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            return _CudaPythonMemory(cudart)
    raise EdgevlaError("backend 'tensorrt' needs an NVIDIA GPU, and no CUDA device is visible here "
                       "(neither torch nor cuda-python finds one)")


def _ort_model(onnx_path: Path) -> tuple[str | bytes, set[str]]:
    """What ONNX Runtime loads — the file, or, when Q/DQ convolutions are in it, the model with their weights
    dequantized once (:func:`~edgevla.export.qdq.dequantize_conv_weights`: ONNX Runtime would otherwise
    dequantize them on every call; same values, same arithmetic) — and the graph's op types."""
    import onnx

    from .export.qdq import dequantize_conv_weights

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - ONNX Runtime reports an unreadable model itself
        return str(onnx_path), set()
    ops = {n.op_type for n in proto.graph.node}
    external = any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
    if external or not ops & {"Conv", "ConvTranspose"} or not dequantize_conv_weights(proto):
        return str(onnx_path), ops
    return proto.SerializeToString(), {n.op_type for n in proto.graph.node}


def make_runner(backend: str, *, policy=None, onnx_path: str | os.PathLike | None = None,
                spec: PolicySpec | None = None, threads: int | None = None) -> Runner:
    """Build the runner for ``backend``, one of :data:`BACKENDS`.

    ``torch`` needs ``policy``; ``onnxruntime`` and ``native`` need ``onnx_path``
    and a spec (given, or taken from ``policy``); so does ``tensorrt``, which finds
    or builds the engine of that model (see :class:`TensorRTRunner`).
    """
    if backend not in BACKENDS:
        raise EdgevlaError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend in _NOT_IN_THIS_BUILD:
        raise EdgevlaError(_NOT_IN_THIS_BUILD[backend])
    if backend == "torch":
        if policy is None:
            raise EdgevlaError("backend 'torch' needs the PyTorch policy")
        return TorchRunner(policy, threads=threads)
    if backend == "native":
        if onnx_path is None:
            raise EdgevlaError("backend 'native' needs the path of an exported ONNX model")
        if spec is None and policy is None:
            raise EdgevlaError("backend 'native' needs the policy spec (or the policy)")
        return NativeRunner(onnx_path, spec if spec is not None else spec_of(policy), threads=threads)
    if backend == "tensorrt":  # threads do not apply: the engine runs on the GPU
        return TensorRTRunner(onnx_path, spec if spec is not None or policy is None else spec_of(policy))
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
