"""Where policies come from: the zoo, a user's factory, or a checkpoint file.

A policy reference is one of

* a zoo name: ``tiny-vla`` (trained, ships in the package), ``small-vla``
  (trained on demand by ``edgevla zoo train small-vla``, kept in the user
  cache), ``base-vla`` (random init, for latency and memory);
* ``package.module:factory``: a callable returning the user's ``nn.Module``,
  which declares its observations and action with a :class:`PolicySpec`;
* a path to a checkpoint: safetensors (pickle only with ``allow_pickle``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import EdgevlaError
from ..spec import spec_of
from ..user_code import call_user, import_callable
from .checkpoint import load_checkpoint
from .vla import CONFIGS, VLAPolicy

SHIPPED = {"tiny-vla": "tiny-vla.safetensors"}
TRAINED_ON_DEMAND = {"small-vla"}
RANDOM_INIT = {"base-vla"}
ZOO_NAMES = tuple(CONFIGS)


@dataclass(frozen=True)
class LoadedPolicy:
    policy: torch.nn.Module
    name: str
    reference: str
    kind: str  # zoo | factory | checkpoint
    source: str  # where the weights came from


def cache_dir() -> Path:
    """The user cache for on-demand checkpoints (``EDGEVLA_CACHE`` overrides)."""
    env = os.environ.get("EDGEVLA_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgevla"))


def shipped_checkpoint(name: str) -> Path:
    return Path(str(resources.files("edgevla") / "checkpoints" / SHIPPED[name]))


def zoo_checkpoint(name: str) -> Path:
    """Where the zoo policy ``name``'s trained weights live (may not exist yet)."""
    if name in SHIPPED:
        return shipped_checkpoint(name)
    return cache_dir() / "zoo" / f"{name}.safetensors"


def load_policy(ref: str, allow_pickle: bool = False, seed: int = 0) -> LoadedPolicy:
    """Resolve a policy reference (see the module docstring)."""
    ref = str(ref).strip()
    if not ref:
        raise EdgevlaError("empty policy reference")
    if ref in CONFIGS:
        return _load_zoo(ref, seed)
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir():
            raise EdgevlaError(f"policy {ref!r} is a directory; give a checkpoint file, a zoo name or module:factory")
        policy = load_checkpoint(path, allow_pickle=allow_pickle)
        return LoadedPolicy(policy, getattr(policy, "name", path.stem), ref, "checkpoint", str(path))
    if ":" in ref:
        return _load_factory(ref)
    raise EdgevlaError(
        f"unknown policy {ref!r}: not a zoo name ({', '.join(ZOO_NAMES)}), not an existing checkpoint file, "
        "not module:factory")


def _load_zoo(name: str, seed: int) -> LoadedPolicy:
    if name in RANDOM_INIT:
        torch.manual_seed(seed)
        return LoadedPolicy(VLAPolicy(CONFIGS[name], name=name).eval(), name, name, "zoo", f"random init (seed {seed})")
    path = zoo_checkpoint(name)
    if not path.is_file():
        hint = f"train it first: edgevla zoo train {name}" if name in TRAINED_ON_DEMAND else "the package is incomplete"
        raise EdgevlaError(f"no checkpoint for {name} at {path}; {hint}")
    policy = load_checkpoint(path)
    return LoadedPolicy(policy, name, name, "zoo", str(path))


def _load_factory(ref: str) -> LoadedPolicy:
    what = f"policy {ref!r}"
    policy = call_user(import_callable(ref, what), f"{what}: factory")
    if not isinstance(policy, torch.nn.Module):
        raise EdgevlaError(f"policy {ref!r}: factory returned {type(policy).__name__}, not a torch.nn.Module")
    spec_of(policy)
    return LoadedPolicy(policy.eval(), getattr(policy, "name", ref.partition(":")[2]), ref, "factory", ref)
