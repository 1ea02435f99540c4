"""edgevla: compress, export and prove Vision-Language-Action policies for the robot's hardware.

The public API (imported lazily, so ``import edgevla`` stays light — the
memory probe counts whatever it loads):

* :func:`build` / :class:`BuildRequest` — the whole pipeline (``edgevla build``)
* :func:`load_policy` — a zoo name, ``module:factory`` or a checkpoint
* :func:`load_target`, :func:`list_targets` — hardware profiles
* :func:`load_recipe` — the build recipe
* :class:`PolicySpec`, :class:`TensorSpec` — what a policy declares
* :func:`export_onnx`, :func:`verify_onnx` — export and numerical verification
* :func:`inspect_bundle`, :func:`load_bundle`, :func:`make_runner` — using a bundle
* :class:`BundlePolicy`, :class:`ChunkController` — a bundle on the robot: real actions, one per control tick
* :class:`EdgevlaError`, :class:`GateFailed`
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

from .errors import EdgevlaError, GateFailed
from .spec import PolicySpec, TensorSpec

try:
    __version__ = metadata.version("edgevla")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "build": "pipeline", "BuildRequest": "pipeline", "BuildResult": "pipeline",
    "load_policy": "models.zoo", "load_target": "targets", "list_targets": "targets",
    "load_recipe": "recipe", "export_onnx": "export", "verify_onnx": "export",
    "inspect_bundle": "bundle", "load_bundle": "bundle", "make_runner": "backends",
    "BundlePolicy": "deploy", "ChunkController": "control",
}

__all__ = ["EdgevlaError", "GateFailed", "PolicySpec", "TensorSpec", "versions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgevla' has no attribute {name!r}")


def versions() -> dict[str, str | None]:
    """Versions of edgevla and the libraries a bundle depends on."""
    out: dict[str, str | None] = {"edgevla": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
