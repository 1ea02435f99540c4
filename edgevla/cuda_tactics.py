"""Kernel tactics: which variant of a layer's CUDA kernel runs, chosen by timing them on the GPU at hand.

Our CUDA kernels come in variants (``cuda_kernels.TILED_VARIANTS``,
``SPARSE_VARIANTS``) whose speed depends on the GPU and the shape: what wins
on an H200 at M = 256 need not win on a Jetson Orin's 16 SMs. ``auto`` picks
by rules measured on one GPU; a :class:`TacticTable` instead times every
candidate on this GPU, at each layer's own (M, N, K), the first time the
shape runs, and keeps the fastest (TensorRT calls these tactics and the file
a timing cache). A table is saved as JSON and reloaded on the same GPU model,
so a robot tunes once and every later start runs the choices without timing.

Before a variant is first timed on a GPU it runs once in a child process
(:mod:`edgevla.cuda_preflight`), since a kernel that faults would leave this
process's CUDA context unusable (on a robot: the policy's process). A variant
whose probe crashes, hangs or loses its context is never tried here, and the
table keeps the verdict per probe, so a later start asks no child again.

A candidate is only eligible if its output on the tuning input agrees with
``auto``'s: bit for bit for the int8 kernels (their epilogues are the same
float32 operations), within 1e-5 relative L2 error for float16 (the variants
sum in different orders). A variant that disagrees or raises is recorded as
rejected, with the reason, and never chosen.

Timing: CUDA events around each call on the current stream, after a warm-up,
median of ``runs`` calls. Inputs stay in L2 between calls here (unlike the
benchmark's cold-cache rows): the policy's layers run back to back, and what
is compared is variants on the same footing.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgevlaError, describe

FORMAT = "edgevla-kernel-tactics/1"


@dataclass
class Tactic:
    """The choice for one (kernel, M, N, K): the variant and every candidate's time (``None``: rejected)."""

    variant: str
    timings_us: dict[str, float | None]
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "timings_us": self.timings_us, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tactic:
        return cls(str(data["variant"]), {str(k): (None if v is None else float(v))
                                          for k, v in data["timings_us"].items()},
                   {str(k): str(v) for k, v in data.get("rejected", {}).items()})


def tactic_key(kernel: str, m: int, n: int, k: int) -> str:
    return f"{kernel} M={m} N={n} K={k}"


def choose(candidates: Sequence[str], run: Callable[[str], Any], *, timer: Callable[[Callable[[], Any]], float],
           agree: Callable[[Any, Any], str | None]) -> Tactic:
    """Times ``run(variant)`` for each candidate; the fastest that agrees with the first (the reference) wins.

    ``agree(reference_output, output)`` returns None when they agree, else why
    not (one line). ``timer(fn)`` returns microseconds per call. The first
    candidate must run: its failure is the layer's failure and propagates.
    """
    if not candidates:
        raise EdgevlaError("choose: no candidate variants")
    reference = run(candidates[0])
    timings: dict[str, float | None] = {}
    rejected: dict[str, str] = {}
    for variant in candidates:
        if variant != candidates[0]:
            try:
                why = agree(reference, run(variant))
            except (ValueError, RuntimeError, EdgevlaError) as e:  # a shape the variant refuses
                why = describe(e)
            if why is not None:
                timings[variant], rejected[variant] = None, why
                continue
        timings[variant] = float(timer(lambda v=variant: run(v)))
    best = min((v for v, us in timings.items() if us is not None), key=lambda v: (timings[v], candidates.index(v)))
    return Tactic(best, timings, rejected)


def cuda_event_timer(runs: int = 20, warmup: int = 3) -> Callable[[Callable[[], Any]], float]:
    """A timer for :func:`choose`: CUDA events on the current stream, median of ``runs`` calls, in microseconds."""
    import torch

    def timer(fn: Callable[[], Any]) -> float:
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3

    return timer


def exact_agreement(reference: Any, output: Any) -> str | None:
    """:func:`choose`'s ``agree`` for the int8 kernels: bit-identical outputs (NaN payloads included)."""
    import torch

    ref_bits, out_bits = (t.contiguous().view(torch.int32) for t in (reference, output))
    if torch.equal(ref_bits, out_bits):
        return None
    differing = int((ref_bits != out_bits).sum())
    return f"{differing} of {ref_bits.numel()} outputs differ from auto's"


def relative_agreement(tolerance: float = 1e-5) -> Callable[[Any, Any], str | None]:
    """:func:`choose`'s ``agree`` for float kernels: relative L2 error against the reference at most ``tolerance``."""
    def agree(reference: Any, output: Any) -> str | None:
        ref, out = reference.double(), output.double()
        scale = float(ref.norm())
        error = float((out - ref).norm())
        if math.isfinite(error) and error <= tolerance * max(scale, 1e-30):
            return None
        return f"relative error {error / max(scale, 1e-30):.3g} against auto's output exceeds {tolerance:g}"
    return agree


class TacticTable:
    """The tactics of one GPU model: ``key -> Tactic``, tuned on demand, saved and loaded as JSON.

    ``device`` names the GPU (``torch.cuda.get_device_name`` and compute
    capability); a table loaded for another device is refused, since its
    timings say nothing about this one.
    """

    def __init__(self, device: str, tactics: dict[str, Tactic] | None = None,
                 timer: Callable[[Callable[[], Any]], float] | None = None,
                 preflight: dict[str, str | None] | None = None,
                 probe: Callable[[list[str]], tuple[dict[str, str], dict[str, str]]] | None = None):
        self.device = device
        self.tactics: dict[str, Tactic] = dict(tactics or {})
        self.tuned: list[str] = []  # keys timed in this process (not loaded)
        #: cuda_preflight probe key -> None (its probe ran clean on this GPU, or could not run) or why it was left out
        self.preflight: dict[str, str | None] = dict(preflight or {})
        self._timer = timer
        self._probe = probe  # (keys) -> (left out, not probed); default: cuda_preflight.unsafe_variants

    def variant(self, key: str, candidates: Sequence[str], run: Callable[[str], Any],
                agree: Callable[[Any, Any], str | None], kernel: str | None = None) -> str:
        """The variant for ``key``: the table's, or (first time) the fastest of ``candidates`` on this GPU.

        A stored choice that is not among today's candidates (a table from
        another edgevla version) is timed again. ``kernel`` (a policy layer's,
        ``LayerChoice.kernel``) names the preflight probes of its variants:
        those whose probe failed on this GPU are rejected without a call.
        """
        tactic = self.tactics.get(key)
        if tactic is None or tactic.variant not in candidates:
            timer = self._timer or cuda_event_timer()
            unsafe = self._left_out(kernel, candidates[1:]) if kernel is not None else {}
            tactic = choose([c for c in candidates if c not in unsafe], run, timer=timer, agree=agree)
            for variant, why in unsafe.items():
                tactic.timings_us[variant], tactic.rejected[variant] = None, f"preflight: {why}"
            self.tactics[key] = tactic
            self.tuned.append(key)
        return tactic.variant

    def _left_out(self, kernel: str, variants: Sequence[str]) -> dict[str, str]:
        """variant -> why, for those of ``variants`` whose preflight probe failed (probing the unknown ones now)."""
        from .cuda_preflight import probe_key, unsafe_variants

        keys = {variant: probe_key(kernel, variant) for variant in variants}
        unknown = sorted({k for k in keys.values() if k is not None and k not in self.preflight})
        if unknown:
            left_out, _ = (self._probe or unsafe_variants)(unknown)
            self.preflight.update({k: left_out.get(k) for k in unknown})
        return {variant: str(self.preflight[k]) for variant, k in keys.items()
                if k is not None and self.preflight.get(k) is not None}

    # ------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "preflight": dict(sorted(self.preflight.items())),
                "tactics": {key: t.to_dict() for key, t in sorted(self.tactics.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: str) -> TacticTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdgevlaError(f"not a kernel tactics table (expected format {FORMAT!r})")
        if data.get("device") != device:
            raise EdgevlaError(f"the kernel tactics were timed on {data.get('device')!r}, this GPU is {device!r}: "
                               "use another file (or delete it) to tune for this one")
        try:
            return cls(device, {str(k): Tactic.from_dict(v) for k, v in data["tactics"].items()},
                       preflight={str(k): (None if v is None else str(v))
                                  for k, v in data.get("preflight", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EdgevlaError(f"a malformed kernel tactics table ({type(e).__name__}: {e})") from None

    @classmethod
    def load_or_new(cls, path: str | os.PathLike, device: str) -> TacticTable:
        """The table in ``path`` (which must be for ``device``), or an empty one when the file does not exist."""
        path = Path(path)
        if not path.exists():
            return cls(device)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgevlaError(f"cannot read the kernel tactics {path}: {e}") from None
        return cls.from_dict(data, device)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table to ``path`` atomically (a temporary file renamed over it)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as e:
            raise EdgevlaError(f"cannot write the kernel tactics {path}: {e}") from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise EdgevlaError(f"cannot write the kernel tactics {path}: {e}") from None
            raise


def this_device() -> str:
    """The current GPU as a table's ``device``: its name and compute capability."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
