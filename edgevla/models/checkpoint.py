"""Policy checkpoints: safetensors, with the config in the metadata.

safetensors holds tensors and a string map, nothing executable, so loading a
checkpoint from a colleague or the internet cannot run code. Pickle
checkpoints (``torch.save``) can, and are refused unless the caller opts in.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..errors import EdgevlaError
from ..spec import spec_of
from .vla import VLAConfig, VLAPolicy

FORMAT = "edgevla-vla"
FORMAT_VERSION = "1"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def save_checkpoint(policy: VLAPolicy, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write ``policy`` as safetensors atomically (temp file, then rename).

    A structurally pruned policy also records how it differs from its config's
    architecture (:func:`edgevla.prune.architecture.architecture_delta`), so
    :func:`load_checkpoint` rebuilds the pruned shapes.
    """
    from ..prune.architecture import architecture_delta, is_identity

    path = Path(path)
    delta = architecture_delta(policy, VLAPolicy(policy.config, name=policy.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": policy.name,
        "config": json.dumps(policy.config.to_dict()),
        **({} if is_identity(delta) else {"architecture": json.dumps(delta)}),
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgevlaError(f"{path}: not a readable safetensors checkpoint ({e})") from None


def looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with a little-endian u64 header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size


def is_pickle(path: Path) -> bool:
    """True for torch.save files (a zip holding data.pkl, or a raw pickle stream)."""
    if looks_like_safetensors(path):
        return False
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80" or zipfile.is_zipfile(path) or path.suffix.lower() in _PICKLE_SUFFIXES


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> torch.nn.Module:
    """A policy from a safetensors checkpoint (or, opted in, a pickle)."""
    path = Path(path)
    if not path.is_file():
        raise EdgevlaError(f"checkpoint {path} does not exist")
    if is_pickle(path):
        if not allow_pickle:
            raise EdgevlaError(
                f"{path} is a pickle checkpoint, which can run arbitrary code when loaded; "
                "convert it to safetensors or pass --allow-pickle if you trust it")
        return _load_pickle(path)
    meta = checkpoint_metadata(path)
    if meta.get("format") != FORMAT:
        raise EdgevlaError(f"{path}: safetensors file without edgevla policy metadata (format={meta.get('format')!r})")
    try:
        cfg = VLAConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise EdgevlaError(f"{path}: bad policy config in metadata ({e})") from None
    policy = VLAPolicy(cfg, name=meta.get("name", path.stem))
    try:
        tensors = load_file(str(path))
        if "architecture" in meta:
            from ..prune.architecture import rebuild

            return rebuild(policy, json.loads(meta["architecture"]), tensors).eval()
        policy.load_state_dict(tensors)
    except (RuntimeError, SafetensorError, ValueError) as e:
        raise EdgevlaError(f"{path}: weights do not fit the policy config ({str(e).splitlines()[0]})") from None
    return policy.eval()


def _load_pickle(path: Path) -> torch.nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a pickle can fail in any way; report it on one line
        raise EdgevlaError(f"{path}: could not unpickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "config" in obj and "state_dict" in obj:
        policy = VLAPolicy(VLAConfig.from_dict(dict(obj["config"])), name=path.stem)
        policy.load_state_dict(obj["state_dict"])
        obj = policy
    if not isinstance(obj, torch.nn.Module):
        raise EdgevlaError(f"{path}: the pickle holds a {type(obj).__name__}, not a policy nn.Module")
    spec_of(obj)
    return obj.eval()
