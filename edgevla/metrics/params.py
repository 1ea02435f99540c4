"""How big a model is: parameter counts and bytes on disk.

Pruning keeps tensors dense and zeroes entries, so a parameter count alone
hides what pruning did; :func:`count_parameters` reports the non-zero count
beside the total. :func:`file_size` is what a built artifact costs to ship.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import EdgevlaError


@dataclass(frozen=True)
class ParamCount:
    """Parameter elements of a module. Tied (shared) parameters count once."""

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of parameter elements that are exactly zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"total": int(self.total), "nonzero": int(self.nonzero)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParamCount":
        return cls(total=int(d["total"]), nonzero=int(d["nonzero"]))


def count_parameters(module: torch.nn.Module) -> ParamCount:
    """Total and non-zero parameter elements of ``module`` (recursively)."""
    if not isinstance(module, torch.nn.Module):
        raise EdgevlaError(f"count_parameters needs a torch.nn.Module, got {type(module).__name__}")
    total = nonzero = 0
    with torch.no_grad():
        for p in module.parameters():  # parameters() yields a tied tensor once
            total += p.numel()
            nonzero += int(torch.count_nonzero(p).item())
    return ParamCount(total=total, nonzero=nonzero)


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file, or of every file below a directory (an artifact bundle)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise EdgevlaError(f"cannot measure size of {str(p)!r}: no such file or directory")
