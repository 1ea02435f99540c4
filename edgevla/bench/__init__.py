"""Benchmarks behind ``edgevla bench NAME``: each module has ``run(args) -> int``.

Speed is never asserted in tests; it is measured here, printed as a table and
written as JSON, with the peers (PyTorch, ONNX Runtime, ...) timed in the same
run so the figures are read as ratios on a noisy machine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import EdgevlaError


def recipe_settings(pairs: Iterable[str], env: str | None = None) -> dict[str, Any]:
    """Recipe overrides from a benchmark's ``--set KEY=VALUE`` (values read as YAML), with ``evaluate.env``
    from ``--env`` when given; a pair without ``=`` is a one-line :class:`EdgevlaError`."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise EdgevlaError(f"--set takes KEY=VALUE, got {pair!r}")
        settings[key] = yaml.safe_load(value)
    if env:
        settings["evaluate.env"] = env
    return settings


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
