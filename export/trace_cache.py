"""Exported graphs kept by the structure they were traced from, re-used for a policy that differs in weights only.

A build exports the original policy and then the compressed one; a search exports one policy per candidate.
Pruning that zeroes weights (unstructured, N:M), recovery training and weight-only changes leave the policy
computing the same function of its tensors as a graph already traced: tracing it again (torch.export, its
decompositions and onnxscript's passes; ~25 s for tiny-vla on 2 cores, minutes for a large VLA) only to write
other initializers is wasted. A :class:`TraceCache` keeps each traced graph under its module's structure key
and writes a later policy of the same structure by putting that policy's parameters into the kept graph.

:func:`structure_key` covers what a forward reads besides its parameters: each module's class and plain
attributes (sizes, flags, eps, an activation's name, a fake-quant layer's mode), the parameters' names, shapes,
dtypes and ties, the buffers' values, the spec and the export settings. A module with forward hooks, or with an
attribute the key cannot describe, is traced every time.

A kept graph is re-used only when it can be written exactly:

- every parameter an initializer holds as it is, or transposed (a ``Linear`` folded into ``MatMul``), or in
  slices along one axis (a learned embedding's rows taken apart, a position table cut to the sequence), gets
  its new value there;
- a parameter the passes folded into something else, or one whose value another initializer also holds (a
  second copy, or a constant that happens to be equal), must have the value it had when traced;
- the re-weighted graph, run by ONNX Runtime on two example batches, must give the policy's actions to
  :data:`~edgevla.models.explicit_attention.EQUIVALENCE_TOLERANCE`.

Otherwise the policy is traced and its graph kept in place of the old one. The cache lives in one process
(keys hold object identities) and keeps its files in a temporary folder that :meth:`TraceCache.close` removes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import shutil
import tempfile
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..models.explicit_attention import EQUIVALENCE_TOLERANCE
from ..spec import PolicySpec
from .onnx_export import InitializerRef, _as_numpy, _digest, match_initializers, serialized

#: The attributes every ``nn.Module`` has (its tensors, children, hooks and mode): not a forward's settings.
_MODULE_MACHINERY = frozenset(torch.nn.Module().__dict__)
#: Dtypes written back as they are (NumPy has no bfloat16: such a policy is traced).
_WRITABLE = (torch.float32, torch.float16, torch.float64)


class _Undescribable(Exception):
    pass


def structure_key(module: torch.nn.Module, spec: PolicySpec, settings: tuple) -> str | None:
    """A digest of what ``module``'s traced graph depends on besides its parameters' values, or ``None`` where
    that cannot be told (forward hooks, an attribute of a kind not described)."""
    if _global_forward_hooks():
        return None
    h = hashlib.sha256(json.dumps([spec.to_dict(), repr(settings)], sort_keys=True).encode())
    try:
        for name, m in module.named_modules(remove_duplicate=False):
            if m._forward_hooks or m._forward_pre_hooks:
                return None
            cls = type(m)
            h.update(f"\0module {name} {cls.__module__}.{cls.__qualname__}@{id(cls)}".encode())
            for attr in sorted(set(m.__dict__) - _MODULE_MACHINERY):
                h.update(f"\0{attr}={_describe(m.__dict__[attr])}".encode())
    except _Undescribable:
        return None
    # By name: a module reads its tensors by name, and pruning that re-registers a weight moves it after the bias.
    params = sorted(module.named_parameters(remove_duplicate=False), key=lambda item: item[0])
    first_alias: dict[int, str] = {}
    for name, p in params:
        alias = first_alias.setdefault(id(p), name)
        h.update(f"\0param {name} {p.dtype} {tuple(p.shape)} {alias}".encode())
    for name, b in sorted(module.named_buffers(remove_duplicate=False), key=lambda item: item[0]):
        h.update(f"\0buffer {name} {_describe(b)}".encode())
    return h.hexdigest()


def _global_forward_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return bool(getattr(torch_module, "_global_forward_hooks", None)
                or getattr(torch_module, "_global_forward_pre_hooks", None))


def _describe(value, depth: int = 0) -> str:
    """A plain attribute's value as text; objects of other kinds raise :class:`_Undescribable`."""
    if depth > 8:
        raise _Undescribable("nested too deep")
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.dtype, torch.device, torch.Size, enum.Enum)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({','.join(_describe(v, depth + 1) for v in value)})"
    if isinstance(value, (set, frozenset)):
        return f"set({','.join(sorted(_describe(v, depth + 1) for v in value))})"
    if isinstance(value, dict):
        items = sorted(f"{_describe(k, depth + 1)}:{_describe(v, depth + 1)}" for k, v in value.items())
        return f"dict({','.join(items)})"
    if isinstance(value, torch.Tensor):
        return f"tensor({value.dtype},{tuple(value.shape)},{_digest(_as_numpy(value))})"
    if isinstance(value, np.ndarray):
        return f"ndarray({value.dtype},{value.shape},{_digest(value)})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(f"{f.name}={_describe(getattr(value, f.name), depth + 1)}"
                          for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}@{id(type(value))}({fields})"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}@{id(value)}"
    if isinstance(value, functools.partial):
        return f"partial({_describe(value.func, depth + 1)},{_describe(value.args, depth + 1)}," \
               f"{_describe(value.keywords, depth + 1)})"
    raise _Undescribable(type(value).__name__)


@dataclass(frozen=True)
class SliceRef:
    """An initializer holding ``param[..., start:start + length, ...]`` along ``axis``, its size-1 axes kept or
    dropped (a folded slice or select: a learned embedding's rows taken apart, a position table cut to the
    sequence)."""

    name: str
    axis: int
    start: int
    length: int


@dataclass(frozen=True)
class KeptGraph:
    """A traced graph's file, where its parameters sit, and the values those it cannot rewrite must keep."""

    path: Path
    refs: dict[str, InitializerRef]  # parameter -> the initializer holding it (as it is or transposed)
    slices: dict[str, tuple[SliceRef, ...]]  # parameter -> initializers holding slices of it
    pinned: dict[str, str]  # parameter -> digest of its value when traced


class TraceCache:
    """Traced graphs by :func:`structure_key`, for :func:`~edgevla.export.export_onnx`'s ``cache``."""

    def __init__(self) -> None:
        self._kept: dict[str, KeptGraph] = {}
        self._dir: Path | None = None
        self.reused = 0  # graphs written by re-weighting
        self.traced = 0  # graphs traced and kept

    @property
    def graphs(self) -> tuple[KeptGraph, ...]:
        return tuple(self._kept.values())

    def reweighted(self, key: str | None, module: torch.nn.Module, spec: PolicySpec,
                   examples: Sequence[tuple[torch.Tensor, ...]]) -> bytes | None:
        """The graph kept under ``key`` holding ``module``'s parameters, serialized, checked on ``examples``
        (whose actions ``module`` computes here); ``None`` where there is none or it cannot be written exactly."""
        kept = self._kept.get(key) if key is not None else None
        proto = _write_parameters(kept, module) if kept is not None else None
        if proto is None:
            return None
        data = serialized(proto)
        try:
            if not _reproduces(data, module, spec, examples):
                return None
        except Exception:  # noqa: BLE001 - ONNX Runtime refusing the graph (or the forward failing) means a trace
            return None
        self.reused += 1
        return data

    def keep(self, key: str | None, path: Path, module: torch.nn.Module) -> None:
        """Keep the checked graph at ``path``, traced from ``module``, under ``key`` (none: nothing kept)."""
        if key is None:
            return
        proto = onnx.load(str(path))
        refs = match_initializers(proto, module)
        params = dict(module.named_parameters(remove_duplicate=False))
        held = {ref.name for ref in refs.values()}
        others = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name not in held}
        slices, ambiguous = _folded_slices({n: _as_numpy(p) for n, p in params.items() if p.dtype in _WRITABLE},
                                           others)
        sliced = {ref.name for found in slices.values() for ref in found}
        copies = {_digest(a) for n, a in others.items() if n not in sliced}
        pinned = {}
        for name, p in params.items():
            value = _as_numpy(p)
            digest = _digest(value)
            if (name not in refs and name not in slices) or p.dtype not in _WRITABLE or name in ambiguous \
                    or digest in copies or (value.ndim == 2 and _digest(value.T) in copies):
                pinned[name] = digest
        try:  # a cache that cannot keep a copy (a full temp disk) leaves the export as it is: not kept
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="edgevla-traces-"))
            copy = self._dir / f"{self.traced}.onnx"
            shutil.copyfile(path, copy)
        except OSError:
            return
        old = self._kept.get(key)
        if old is not None:
            old.path.unlink(missing_ok=True)
        self._kept[key] = KeptGraph(copy, {n: r for n, r in refs.items() if n not in pinned},
                                    {n: found for n, found in slices.items() if n not in pinned}, pinned)
        self.traced += 1

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._kept.clear()

    def __enter__(self) -> "TraceCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _folded_slices(params: dict[str, np.ndarray], others: dict[str, np.ndarray]
                   ) -> tuple[dict[str, tuple[SliceRef, ...]], set[str]]:
    """Initializers among ``others`` that are a slice of one parameter along one axis, by parameter; and the
    parameters a slice matched together with another place (those cannot be told apart: pinned). A slice whose
    values are all equal matches nothing: zeros or ones could as well be a constant of the graph's own."""
    matches: dict[str, list[tuple[str, SliceRef]]] = {}
    for init_name, init in others.items():
        if init.size < 2 or not np.ptp(init) > 0:
            continue
        for name, value in params.items():
            if value.dtype != init.dtype or value.size == 0 or init.size > value.size:
                continue
            for axis in range(value.ndim):
                length, rest = divmod(init.size * value.shape[axis], value.size)
                if rest or not 0 < length <= value.shape[axis]:
                    continue
                block = (*value.shape[:axis], length, *value.shape[axis + 1:])
                if _squeezed(block) != _squeezed(init.shape):  # a select drops the axes it took one index of
                    continue
                for start in range(value.shape[axis] - length + 1):
                    part = np.take(value, range(start, start + length), axis=axis)
                    if np.array_equal(part.reshape(init.shape), init):
                        matches.setdefault(init_name, []).append((name, SliceRef(init_name, axis, start, length)))
    slices: dict[str, list[SliceRef]] = {}
    ambiguous: set[str] = set()
    for found in matches.values():
        if len(found) == 1:
            slices.setdefault(found[0][0], []).append(found[0][1])
        else:
            ambiguous.update(name for name, _ in found)
    return {name: tuple(refs) for name, refs in slices.items()}, ambiguous


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _write_parameters(kept: KeptGraph, module: torch.nn.Module) -> onnx.ModelProto | None:
    params = dict(module.named_parameters(remove_duplicate=False))
    if set(params) != set(kept.refs) | set(kept.slices) | set(kept.pinned):
        return None
    if any(_digest(_as_numpy(params[name])) != digest for name, digest in kept.pinned.items()):
        return None
    proto = onnx.load(str(kept.path))
    initializers = {i.name: i for i in proto.graph.initializer}
    for name, ref in kept.refs.items():
        value = _as_numpy(params[name])
        value = np.ascontiguousarray(value.T if ref.transposed else value)
        init = initializers[ref.name]
        if tuple(init.dims) != value.shape or init.data_type != onnx.helper.np_dtype_to_tensor_dtype(value.dtype):
            return None
        init.CopyFrom(numpy_helper.from_array(value, ref.name))
    for name, found in kept.slices.items():
        value = _as_numpy(params[name])
        for ref in found:
            part = np.take(value, range(ref.start, ref.start + ref.length), axis=ref.axis)
            init = initializers[ref.name]
            if part.size != int(np.prod(init.dims)) or \
                    init.data_type != onnx.helper.np_dtype_to_tensor_dtype(part.dtype):
                return None
            part = np.ascontiguousarray(part.reshape(tuple(init.dims)))
            init.CopyFrom(numpy_helper.from_array(part, ref.name))
    return proto


def _reproduces(data: bytes, module: torch.nn.Module, spec: PolicySpec,
                examples: Sequence[tuple[torch.Tensor, ...]]) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    for example in examples:
        want = module(*example).detach().cpu().double().numpy()
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(spec.input_names, example, strict=True)}
        got = session.run([spec.action.name], feeds)[0].astype(np.float64)
        if got.shape != want.shape:
            return False
        diff = float(np.max(np.abs(got - want), initial=0.0))
        if not diff <= EQUIVALENCE_TOLERANCE * max(1.0, float(np.max(np.abs(want), initial=0.0))):
            return False
    return True


__all__ = ["KeptGraph", "SliceRef", "TraceCache", "structure_key"]
