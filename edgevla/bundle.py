"""The deployable bundle: one directory holding a compressed policy and its proof.

Layout::

    <bundle>/
      manifest.json        what this is, for which target, and a hash of every other file
      model.onnx           the exported graph (dynamic batch axis)
      weights.safetensors  the compressed PyTorch state_dict (see save_weights)
      report.json          accuracy, latency and memory figures, machine-readable
      report.md            the same for people
      plots/*.png          figures referenced by report.md
      (later: engines/ for TensorRT plans, run scripts)

A bundle is written all at once or not at all (:func:`write_bundle`): files go
into a temporary directory beside the destination (same filesystem, so the
final rename is atomic), each is fsynced and hashed, ``manifest.json`` is
written last, and the directory is renamed into place. An interrupted build
leaves the previous bundle, or nothing, never half of one. A directory that is
not an edgevla bundle is never replaced.

Manifest schema, version ``MANIFEST_SCHEMA_VERSION = 1`` (JSON object)::

    format            "edgevla-bundle" (identifies our manifest among other manifest.json files)
    schema_version    1
    created           UTC time, ISO 8601 ("2025-01-31T12:00:00+00:00")
    versions          {"edgevla", "torch", "onnx", "onnxruntime"}: package versions that built it
    policy            {"name": str, "reference": str | null, "config": object | null,
                       "architecture": object | null (structured pruning's shape changes)}
                      reference: where the policy came from (module path, checkpoint, hub id)
    target            {"name": str, ...}: the hardware profile the bundle was proven on
    inputs            [{"name", "shape": ["batch", d1, ...], "dtype", "low", "high"}]
                      in the order the graph takes them; "batch" marks the dynamic axis
    outputs           [{"name", "shape": ["batch", chunk_size, action_dim], "dtype"}]
    action_normalization  {"mean": [float] * action_dim, "std": [float] * action_dim}
                      real action = normalized * std + mean
    chunk_size        int: actions per inference
    control_rate_hz   float | null: the robot's control loop rate
    spec_extra        object: PolicySpec.extra
    layers            [{"name", "precision", "sparsity", "pattern"}]: per-layer compression
                      (precision e.g. "fp32"/"fp16"/"int8"; sparsity in [0, 1];
                      pattern e.g. "dense", "2:4", "unstructured")
    recipe            object | null: the compression recipe as given
    files             {relative path: {"sha256": hex, "bytes": int}} for every file but manifest.json

:func:`make_manifest` fills everything but ``files`` from a
:class:`~edgevla.spec.PolicySpec`; :func:`write_bundle` adds ``files``.
:func:`inspect_bundle` reports missing, extra and modified files;
:func:`load_bundle` refuses a bundle with any of them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from .errors import EdgevlaError
from .spec import PolicySpec, TensorSpec

MANIFEST_SCHEMA_VERSION = 1
BUNDLE_FORMAT = "edgevla-bundle"
MANIFEST_NAME = "manifest.json"
BATCH_AXIS = "batch"

_REQUIRED_KEYS = ("format", "schema_version", "created", "versions", "policy", "target", "inputs", "outputs",
                  "action_normalization", "chunk_size", "control_rate_hz", "layers", "recipe")
_CHUNK = 1 << 20


class BundleFile(NamedTuple):
    path: str  # relative, POSIX separators
    bytes: int | None  # size on disk; None when missing
    sha256_ok: bool


@dataclass(frozen=True)
class BundleInspection:
    root: Path
    manifest: dict[str, Any]
    files: list[BundleFile]  # every file the manifest lists
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # on disk, not in the manifest
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LoadedBundle:
    manifest: dict[str, Any]
    spec: PolicySpec
    root: Path

    def file(self, relpath: str) -> Path:
        """Path of a file the manifest lists (and whose hash was checked on load)."""
        if relpath not in self.manifest["files"]:
            raise EdgevlaError(f"bundle {self.root} has no file {relpath!r}")
        return self.root / relpath


# --------------------------------------------------------------------------- manifest


def make_manifest(spec: PolicySpec, *, policy_name: str, target: Mapping[str, Any] | str | Any,
                  policy_reference: str | None = None, policy_config: Any = None,
                  layers: Sequence[Mapping[str, Any]] = (), recipe: Mapping[str, Any] | None = None,
                  created: _dt.datetime | None = None,
                  policy_architecture: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a bundle for ``spec``, all but its ``files``.

    ``policy_config`` and ``target`` may be mappings or objects with ``to_dict()``
    (``target`` may also be just a name). ``policy_architecture`` is how a
    structurally pruned policy differs from its config's architecture
    (:func:`edgevla.prune.architecture.architecture_delta`), so the weights
    reload into the pruned shapes.
    """
    if not isinstance(spec, PolicySpec):
        raise EdgevlaError(f"make_manifest needs a PolicySpec, got {type(spec).__name__}")
    if not isinstance(policy_name, str) or not policy_name:
        raise EdgevlaError("a bundle needs a policy name")
    if isinstance(target, str):
        target_entry: dict[str, Any] = {"name": target}
    elif callable(getattr(target, "to_dict", None)):
        target_entry = dict(target.to_dict())
    elif isinstance(target, Mapping):
        target_entry = dict(target)
    else:
        raise EdgevlaError(f"a bundle's target must be a name or a mapping, got {type(target).__name__}")
    if not isinstance(target_entry.get("name"), str) or not target_entry["name"]:
        raise EdgevlaError("a bundle's target needs a name")
    if policy_config is not None and callable(getattr(policy_config, "to_dict", None)):
        policy_config = policy_config.to_dict()
    for what, value in (("policy config", policy_config), ("recipe", recipe)):
        if value is not None and not isinstance(value, Mapping):
            raise EdgevlaError(f"the {what} must be a mapping, got {type(value).__name__}")
    created = created or _dt.datetime.now(_dt.timezone.utc)
    if created.tzinfo is None:
        raise EdgevlaError("the bundle creation time must be timezone-aware (UTC)")
    return {
        "format": BUNDLE_FORMAT,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": created.astimezone(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "policy": {"name": policy_name, "reference": policy_reference,
                   "config": dict(policy_config) if policy_config is not None else None,
                   "architecture": dict(policy_architecture) if policy_architecture else None},
        "target": target_entry,
        "inputs": [_tensor_entry(o, with_range=True) for o in spec.observations],
        "outputs": [_tensor_entry(spec.action, with_range=False)],
        "action_normalization": {"mean": list(spec.action_mean), "std": list(spec.action_std)},
        "chunk_size": spec.chunk_size,
        "control_rate_hz": spec.control_rate_hz,
        "spec_extra": dict(spec.extra),
        "layers": [_layer_entry(layer) for layer in layers],
        "recipe": dict(recipe) if recipe is not None else None,
    }


def spec_from_manifest(manifest: Mapping[str, Any]) -> PolicySpec:
    """Rebuild the policy's :class:`PolicySpec` from a manifest."""
    try:
        inputs = [_tensor_spec(entry) for entry in manifest["inputs"]]
        (action,) = [_tensor_spec(entry) for entry in manifest["outputs"]]
        norm = manifest["action_normalization"]
        spec = PolicySpec(observations=tuple(inputs), action=action, action_mean=tuple(norm["mean"]),
                          action_std=tuple(norm["std"]), control_rate_hz=manifest["control_rate_hz"],
                          extra=dict(manifest.get("spec_extra") or {}))
        chunk_size = manifest["chunk_size"]
    except EdgevlaError as e:
        raise EdgevlaError(f"bundle manifest describes an invalid policy: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise EdgevlaError(f"bundle manifest is malformed: {type(e).__name__} {e}") from e
    if chunk_size != spec.chunk_size:
        raise EdgevlaError(f"bundle manifest is malformed: chunk_size {chunk_size} "
                           f"but the output has {spec.chunk_size} actions")
    return spec


def _tensor_entry(t: TensorSpec, *, with_range: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": t.name, "shape": [BATCH_AXIS, *t.shape], "dtype": t.dtype}
    if with_range:
        entry.update(low=t.low, high=t.high)
    return entry


def _tensor_spec(entry: Mapping[str, Any]) -> TensorSpec:
    shape = list(entry["shape"])
    if not shape or shape[0] != BATCH_AXIS:
        raise ValueError(f"tensor {entry.get('name')!r} shape {shape} must start with {BATCH_AXIS!r}")
    return TensorSpec(name=entry["name"], shape=tuple(shape[1:]), dtype=entry.get("dtype", "float32"),
                      low=float(entry.get("low", 0.0)), high=float(entry.get("high", 1.0)))


def _layer_entry(layer: Mapping[str, Any]) -> dict[str, Any]:
    try:
        name, precision, sparsity, pattern = (layer["name"], layer["precision"], layer["sparsity"],
                                              layer["pattern"])
    except (KeyError, TypeError) as e:
        raise EdgevlaError(f"a layer entry needs name, precision, sparsity and pattern, got {layer!r}") from e
    if not isinstance(name, str) or not isinstance(precision, str) or not isinstance(pattern, str):
        raise EdgevlaError(f"layer {name!r}: name, precision and pattern must be strings")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise EdgevlaError(f"layer {name!r}: sparsity must be a fraction in [0, 1], got {sparsity!r}")
    return {**layer, "name": name, "precision": precision, "sparsity": float(sparsity), "pattern": pattern}


def _versions() -> dict[str, str]:
    from importlib import import_module, metadata

    found = {}
    for package in ("edgevla", "torch", "onnx", "onnxruntime"):
        try:
            found[package] = str(import_module(package).__version__)
        except (ImportError, AttributeError):
            try:
                found[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                found[package] = "unknown"
    return found


def _checked_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-clean copy of ``manifest`` that :func:`load_bundle` will accept."""
    if not isinstance(manifest, Mapping):
        raise EdgevlaError(f"a bundle manifest must be a mapping, got {type(manifest).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise EdgevlaError(f"bundle manifest lacks {', '.join(missing)}; build it with make_manifest()")
    if manifest["format"] != BUNDLE_FORMAT or manifest["schema_version"] != MANIFEST_SCHEMA_VERSION:
        raise EdgevlaError(f"this edgevla writes {BUNDLE_FORMAT} schema {MANIFEST_SCHEMA_VERSION}, "
                           f"the manifest says {manifest['format']!r} schema {manifest['schema_version']!r}")
    try:
        text = json.dumps({k: v for k, v in manifest.items() if k != "files"}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EdgevlaError(f"bundle manifest is not plain JSON: {e}") from e
    copy = json.loads(text)
    spec_from_manifest(copy)
    return copy


# --------------------------------------------------------------------------- writing


def write_bundle(out_dir: str | os.PathLike, files: Mapping[str, bytes | os.PathLike],
                 manifest: Mapping[str, Any]) -> Path:
    """Write a complete bundle at ``out_dir``, atomically, and return its path.

    ``files`` maps relative POSIX paths (``"model.onnx"``, ``"plots/latency.png"``)
    to their content: bytes, or a path to copy. ``manifest`` comes from
    :func:`make_manifest`; its ``files`` entry is computed here. An existing
    bundle at ``out_dir`` is replaced; anything else there is refused.
    """
    out = Path(out_dir).absolute()
    content = _checked_manifest(manifest)
    entries = _checked_sources(files)
    replacing = _existing_bundle(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgevlaError(f"cannot create {parent}: {e.strerror or e}") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgevlaError(f"cannot write bundle {out}: {parent} is not writable")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise EdgevlaError(f"cannot write bundle {out}: {e.strerror or e}") from e

    placed = False
    aside: Path | None = None
    try:
        records = {rel: _write_file(tmp / rel, source, rel) for rel, source in entries}
        content["files"] = dict(sorted(records.items()))
        text = json.dumps(content, indent=2, allow_nan=False) + "\n"
        _write_file(tmp / MANIFEST_NAME, text.encode(), MANIFEST_NAME)
        _fsync_directories(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private; a bundle is an ordinary output
        if replacing:
            # Reserve a unique empty name, then move the old bundle onto it (rename may replace an empty dir).
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, aside)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(aside, out)
                aside = None
                raise
        else:
            os.replace(tmp, out)  # also atomically replaces an empty directory
        placed = True
        _fsync_directory(parent)
    except OSError as e:
        raise EdgevlaError(f"cannot write bundle {out}: {e.strerror or e}") from e
    finally:
        if not placed:
            shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return out


def _checked_sources(files: Mapping[str, Any]) -> list[tuple[str, bytes | Path]]:
    if not isinstance(files, Mapping):
        raise EdgevlaError(f"bundle files must be a mapping of relative path to content, got {type(files).__name__}")
    entries = []
    for rel, source in files.items():
        if not _is_safe_relpath(rel) or rel == MANIFEST_NAME:
            raise EdgevlaError(f"bundle file name {rel!r} must be a plain relative path (not {MANIFEST_NAME})")
        if isinstance(source, (bytes, bytearray, memoryview)):
            entries.append((rel, bytes(source)))
        elif isinstance(source, os.PathLike):
            path = source if isinstance(source, Path) else Path(source)
            if not path.is_file():
                raise EdgevlaError(f"bundle file {rel}: source {path} is not a file")
            entries.append((rel, path))
        else:
            raise EdgevlaError(f"bundle file {rel}: give bytes or a pathlib.Path, got {type(source).__name__}")
    return entries


def _is_safe_relpath(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and p.as_posix() == rel and all(part not in ("", ".", "..") for part in p.parts)


def _existing_bundle(out: Path) -> bool:
    """True when ``out`` is a bundle to replace; False when absent or empty; refuse anything else."""
    if out.is_symlink():
        raise EdgevlaError(f"bundle output {out} is a symbolic link; give the real directory")
    if not out.exists():
        return False
    if not out.is_dir():
        raise EdgevlaError(f"bundle output {out} exists and is not a directory")
    if not any(out.iterdir()):
        return False
    if _read_manifest_or_none(out) is None:
        raise EdgevlaError(f"bundle output {out} is a non-empty directory that is not an edgevla bundle; "
                           "refusing to replace it")
    return True


def _write_file(dst: Path, source: bytes | Path, rel: str) -> dict[str, Any]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(dst, "xb") as out:
        if isinstance(source, bytes):
            out.write(source)
            digest.update(source)
            size = len(source)
        else:
            try:
                src = source.open("rb")
            except OSError as e:
                raise EdgevlaError(f"bundle file {rel}: cannot read {source}: {e.strerror or e}") from e
            with src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _fsync_directories(root: Path) -> None:
    for dirpath, _, _ in os.walk(root):
        _fsync_directory(Path(dirpath))


def _fsync_directory(path: Path) -> None:
    """Make renames and new entries durable; best effort, as some filesystems cannot sync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- reading


def inspect_bundle(path: str | os.PathLike) -> BundleInspection:
    """Recompute every hash and report what does not match the manifest."""
    root = Path(path)
    manifest = _read_manifest_or_none(root)
    if manifest is None:
        raise EdgevlaError(f"{root} is not an edgevla bundle (no {MANIFEST_NAME} of format {BUNDLE_FORMAT!r})")
    problems: list[str] = []
    if manifest["schema_version"] > MANIFEST_SCHEMA_VERSION:
        problems.append(f"manifest schema {manifest['schema_version']} is newer than this edgevla reads "
                        f"({MANIFEST_SCHEMA_VERSION})")
    files, missing, modified = [], [], []
    for rel, record in manifest["files"].items():
        if not _is_safe_relpath(rel) or not isinstance(record, Mapping):
            files.append(BundleFile(str(rel), None, False))
            problems.append(f"manifest lists an invalid file entry {rel!r}")
            continue
        target = root / rel
        if not target.is_file():
            files.append(BundleFile(rel, None, False))
            missing.append(rel)
            problems.append(f"missing file {rel}")
            continue
        digest, size = _sha256(target)
        ok = digest == record.get("sha256") and size == record.get("bytes")
        files.append(BundleFile(rel, size, ok))
        if not ok:
            modified.append(rel)
            problems.append(f"modified file {rel} (sha256 or size differs from the manifest)")
    extra = sorted(set(_files_on_disk(root)) - set(manifest["files"]) - {MANIFEST_NAME})
    problems.extend(f"extra file {rel} (not in the manifest)" for rel in extra)
    return BundleInspection(root=root, manifest=manifest, files=files, missing=missing, modified=modified,
                            extra=extra, problems=problems)


def load_bundle(path: str | os.PathLike) -> LoadedBundle:
    """Open a bundle for use; refuse one whose files do not match its manifest."""
    inspection = inspect_bundle(path)
    if not inspection.ok:
        shown = "; ".join(inspection.problems[:3])
        more = len(inspection.problems) - 3
        raise EdgevlaError(f"bundle {inspection.root} failed its integrity check: {shown}"
                           + (f" (and {more} more)" if more > 0 else ""))
    manifest = inspection.manifest
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise EdgevlaError(f"bundle manifest {inspection.root / MANIFEST_NAME} lacks {', '.join(missing)}")
    return LoadedBundle(manifest=manifest, spec=spec_from_manifest(manifest), root=inspection.root)


def _read_manifest_or_none(root: Path) -> dict[str, Any] | None:
    """The manifest if ``root`` holds an edgevla one, else None (any other directory)."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT
            or isinstance(manifest.get("schema_version"), bool)
            or not isinstance(manifest.get("schema_version"), int)
            or not isinstance(manifest.get("files"), dict)):
        return None
    return manifest


def _files_on_disk(root: Path) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- weights


def weights_bytes(policy) -> bytes:
    """The policy's state_dict as safetensors, with its spec and config in the metadata."""
    from safetensors.torch import save

    return save(_state_tensors(policy), metadata=_weights_metadata(policy))


def save_weights(policy, path: str | os.PathLike) -> Path:
    """Write :func:`weights_bytes` to ``path`` atomically (temp file beside it, then rename)."""
    path = Path(path)
    data = weights_bytes(policy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise EdgevlaError(f"cannot write weights to {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except OSError as e:
        raise EdgevlaError(f"cannot write weights to {path}: {e.strerror or e}") from e
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """``(state_dict, metadata)`` from a file written by :func:`save_weights`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError) as e:
        raise EdgevlaError(f"cannot read weights {path}: {e}") from e
    return tensors, metadata


def _state_tensors(policy) -> dict[str, Any]:
    import torch

    if not isinstance(policy, torch.nn.Module):
        raise EdgevlaError(f"weights can only be saved from a torch.nn.Module, got {type(policy).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in policy.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:  # tied weights: safetensors stores no aliases, so give each name its own copy
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors


def _weights_metadata(policy) -> dict[str, str]:
    metadata = {"format": "pt", "edgevla.policy": f"{type(policy).__module__}.{type(policy).__qualname__}"}
    spec = getattr(policy, "spec", None)
    if isinstance(spec, PolicySpec):
        metadata["edgevla.spec"] = _json(spec.to_dict(), "the policy spec")
    config = getattr(policy, "config", None)
    if config is not None and callable(getattr(config, "to_dict", None)):
        metadata["edgevla.config"] = _json(config.to_dict(), "the policy config")
    return metadata


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EdgevlaError(f"{what} is not plain JSON: {e}") from e
