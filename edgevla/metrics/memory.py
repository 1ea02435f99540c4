"""Memory a model needs: measured peak in a fresh process, and weight bytes on paper.

:func:`measure_peak_memory` runs :mod:`edgevla.metrics.memory_probe` in a
subprocess (see there for the phases and the ``/proc`` counters) so nothing
the caller has loaded inflates the figure. :func:`model_weight_bytes` is the
analytical lower bound: the bytes of the stored weights alone.

Sizes are MiB (2^20 bytes) and named ``*_mb``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import EdgevlaError
from .memory_probe import KIND_CHOICES


@dataclass(frozen=True)
class MemoryStats:
    """Resident memory (MiB) of a process that loads and runs one model."""

    baseline_mb: float    # interpreter + runtime libraries + inputs, before the model is loaded
    after_load_mb: float  # after loading and warm-up: the steady state the model keeps
    peak_mb: float        # highest resident memory while running the timed inferences
    inference_mb: float   # peak_mb - after_load_mb: what an inference adds on top of the steady state
    load_peak_mb: float   # highest resident memory up to the end of warm-up (includes load spikes)
    hwm_reset: bool       # True when the peak was reset before inference, so peak_mb excludes loading
    runs: int             # inferences run while the peak was tracked

    @property
    def model_mb(self) -> float:
        """What the model costs on top of the runtime: ``peak_mb - baseline_mb``."""
        return self.peak_mb - self.baseline_mb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_mb": self.model_mb}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemoryStats":
        return cls(baseline_mb=float(d["baseline_mb"]), after_load_mb=float(d["after_load_mb"]),
                   peak_mb=float(d["peak_mb"]), inference_mb=float(d["inference_mb"]),
                   load_peak_mb=float(d["load_peak_mb"]), hwm_reset=bool(d["hwm_reset"]), runs=int(d["runs"]))


def measure_peak_memory(kind: str, model: str | os.PathLike[str],
                        inputs: str | os.PathLike[str] | Mapping[str, np.ndarray], *,
                        runs: int = 20, warmup: int = 3, threads: int | None = None,
                        pythonpath: Sequence[str] = (), timeout_s: float = 600.0,
                        session_entries: Mapping[str, str] | None = None) -> MemoryStats:
    """Load and run ``model`` in a fresh Python process and report its memory.

    ``kind`` is ``"onnx"`` (``model`` is an .onnx path) or ``"torch"``
    (``model`` is a policy reference). ``inputs`` is an .npz path or a
    mapping of arrays named like the model's inputs (written to a temporary
    .npz). ``pythonpath`` entries are prepended to the child's ``PYTHONPATH``
    (for a ``module:factory`` reference outside the installed packages).
    ``session_entries`` are ONNX Runtime session config entries for an onnx
    model (:func:`edgevla.export.qdq.ort_qdq_entries`'s, say).
    """
    if kind not in KIND_CHOICES:
        raise EdgevlaError(f"memory probe: model kind {kind!r} is not one of {', '.join(KIND_CHOICES)}")
    with tempfile.TemporaryDirectory(prefix="edgevla-mem-") as tmp:
        if isinstance(inputs, Mapping):
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, **{k: np.asarray(v) for k, v in inputs.items()})
        else:
            npz = Path(inputs)
            if not npz.is_file():
                raise EdgevlaError(f"inputs file {str(npz)!r} does not exist")
        # The child runs in the scratch directory: `python -m` puts its working
        # directory first on sys.path, and a source checkout there would shadow
        # the installed package. Paths are made absolute for that reason.
        model_arg = str(Path(model).resolve()) if kind == "onnx" or Path(model).exists() else str(model)
        cmd = [sys.executable, "-m", "edgevla.metrics.memory_probe", "--kind", str(kind), "--model", model_arg,
               "--inputs", str(npz.resolve()), "--runs", str(runs), "--warmup", str(warmup)]
        if threads:
            cmd += ["--threads", str(threads)]
        for key, value in (session_entries or {}).items():
            cmd += ["--session-entry", f"{key}={value}"]
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise EdgevlaError(f"memory probe of {model} did not finish within {timeout_s:g} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise EdgevlaError(f"memory probe of {model} failed: {tail[0]}")
    if "error" in result:
        raise EdgevlaError(f"memory probe of {model}: {result['error']}")
    return MemoryStats.from_dict(result)


# Bits per element of ONNX tensor types numpy cannot size exactly.
_ONNX_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4}


def _onnx_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import TensorProto, helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others
        raise EdgevlaError(f"cannot read ONNX model {str(path)!r}: {e}") from None

    def tensor_bytes(t: onnx.TensorProto) -> int:
        bits = _ONNX_SUB_BYTE_BITS.get(TensorProto.DataType.Name(t.data_type))
        if bits is None:
            bits = 8 * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        return math.ceil(math.prod(t.dims) * bits / 8)

    tensors = list(proto.graph.initializer)
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sum(tensor_bytes(t) for t in tensors)


def model_weight_bytes(model: Any) -> int:
    """Bytes of a model's stored weights: the least memory it can run in.

    A ``torch.nn.Module``: its parameters and buffers (each tied tensor once),
    at their stored dtype. A path to an ``.onnx`` file: its initializers and
    ``Constant`` tensors, sized from their declared shape and type (external
    data files are not read).
    """
    import torch

    if isinstance(model, torch.nn.Module):
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix != ".onnx" or not path.is_file():
            raise EdgevlaError(f"model_weight_bytes needs a torch module or an existing .onnx file, got {str(path)!r}")
        return _onnx_weight_bytes(path)
    raise EdgevlaError(f"model_weight_bytes needs a torch module or an .onnx path, got {type(model).__name__}")
