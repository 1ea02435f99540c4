"""What a build measures of the original policy, kept for the next build of the same policy.

A search builds one policy several ways (``edgevla search``); each build also
exports the original to ONNX and runs it in the closed loop (the gate's
reference, the latency tolerance probe, a simulator's rollouts), which is the
same work every time. :class:`OriginalMemo` keeps those results for the
builds that share it. Each key carries a digest of the original's weights
and spec (:func:`fingerprint`) and every setting the measurement depends on,
so a build of another policy, or with other settings, measures afresh.
Latency is not kept: each build times the original beside its own model, in
the same run. The memo also holds the builds' traced ONNX graphs
(:class:`~edgevla.export.trace_cache.TraceCache`): a candidate that changed
weights only is written into a graph an earlier build traced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

from .spec import spec_of


def fingerprint(policy: torch.nn.Module) -> str:
    """sha256 over the policy's class, spec and every tensor of its state (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(type(policy).__qualname__.encode())
    h.update(json.dumps(spec_of(policy).to_dict(), sort_keys=True).encode())
    for name, tensor in policy.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class OriginalMemo:
    """Results of the original policy, by key, shared by the builds of a search; files in a folder of its own
    (:meth:`close` removes it)."""

    def __init__(self) -> None:
        from .export.trace_cache import TraceCache

        self._values: dict[Hashable, Any] = {}
        self._dir: Path | None = None
        self.traces = TraceCache()  # ONNX graphs by the structure they were traced from, for any policy

    def value(self, key: Hashable, make: Callable[[], Any]) -> tuple[Any, bool]:
        """``(make()'s result, False)`` the first time ``key`` is asked for, ``(the kept result, True)`` after."""
        if key in self._values:
            return self._values[key], True
        self._values[key] = value = make()
        return value, False

    def file(self, key: Hashable, path: Path, make: Callable[[Path], Path]) -> tuple[Path, bool]:
        """``path`` holding what ``make(path)`` writes there, made once for ``key`` and copied after."""
        kept = self._values.get(key)
        if kept is not None:
            shutil.copyfile(kept, path)
            return path, True
        made = make(path)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgevla-original-"))
        kept = self._dir / f"{len(self._values)}{path.suffix}"
        shutil.copyfile(made, kept)
        self._values[key] = kept
        return made, False

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._values.clear()
        self.traces.close()

    def __enter__(self) -> "OriginalMemo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
