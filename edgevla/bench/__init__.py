"""Benchmarks behind ``edgevla bench NAME``: each module has ``run(args) -> int``.

Speed is never asserted in tests; it is measured here, printed as a table and
written as JSON, with the peers (PyTorch, ONNX Runtime, ...) timed in the same
run so the figures are read as ratios on a noisy machine.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..errors import EdgevlaError


def write_json(result: Any, path: str | Path) -> Path:
    """Writes a benchmark's result as JSON, whole or not at all (a temporary file renamed in place).

    Parent folders are made; a path that cannot be written is a one-line :class:`EdgevlaError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EdgevlaError(f"cannot write {path}: {e.strerror or e}") from None
    return path
