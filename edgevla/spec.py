"""What a policy takes and gives: the contract every edgevla stage relies on.

A policy is any ``torch.nn.Module`` with an attribute ``spec`` holding a
:class:`PolicySpec`. Its ``forward`` takes the observations as positional
tensors in ``spec.observations`` order, each with a leading batch dimension,
and returns *normalized* actions of shape ``(batch, *spec.action.shape)``.
Real actions are ``normalized * action_std + action_mean`` (per action
dimension); :meth:`PolicySpec.denormalize` does that for every backend, so an
exported model, an engine and the PyTorch module all agree on one convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import EdgevlaError

_DTYPES = ("float32", "float16", "int64", "int32", "uint8")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor, shape given without the batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # Inclusive value range, used to make example inputs (token ids, pixels).
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise EdgevlaError(f"tensor name {self.name!r} is not an identifier")
        if self.dtype not in _DTYPES:
            raise EdgevlaError(f"tensor {self.name!r}: dtype {self.dtype!r} not one of {', '.join(_DTYPES)}")
        if any((not isinstance(d, int)) or d <= 0 for d in self.shape):
            raise EdgevlaError(f"tensor {self.name!r}: shape {self.shape} must be positive integers")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                   low=float(d.get("low", 0.0)), high=float(d.get("high", 1.0)))

    def example(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """Random data inside the declared range (never zeros)."""
        shape = (batch, *self.shape)
        if self.dtype.startswith("int") or self.dtype == "uint8":
            return rng.integers(int(self.low), int(self.high) + 1, size=shape).astype(self.dtype)
        return rng.uniform(self.low, self.high, size=shape).astype(self.dtype)


@dataclass(frozen=True)
class PolicySpec:
    """Observations in, a chunk of future actions out."""

    observations: tuple[TensorSpec, ...]
    action: TensorSpec  # shape (chunk_size, action_dim)
    action_mean: tuple[float, ...] = ()
    action_std: tuple[float, ...] = ()
    control_rate_hz: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.observations:
            raise EdgevlaError("a policy spec needs at least one observation")
        names = [o.name for o in self.observations]
        if len(set(names)) != len(names) or self.action.name in names:
            raise EdgevlaError(f"observation and action names must be unique, got {names + [self.action.name]}")
        if len(self.action.shape) != 2:
            raise EdgevlaError(f"action shape must be (chunk_size, action_dim), got {self.action.shape}")
        adim = self.action_dim
        mean = tuple(float(x) for x in self.action_mean) or (0.0,) * adim
        std = tuple(float(x) for x in self.action_std) or (1.0,) * adim
        if len(mean) != adim or len(std) != adim:
            raise EdgevlaError(f"action_mean/action_std need {adim} values each")
        if any(s <= 0 for s in std):
            raise EdgevlaError("action_std must be positive")
        object.__setattr__(self, "action_mean", mean)
        object.__setattr__(self, "action_std", std)

    @property
    def chunk_size(self) -> int:
        return self.action.shape[0]

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    @property
    def input_names(self) -> list[str]:
        return [o.name for o in self.observations]

    def validate(self, obs: Mapping[str, np.ndarray]) -> int:
        """Check names, shapes and dtypes of a batch; return its batch size."""
        missing = [o.name for o in self.observations if o.name not in obs]
        if missing:
            raise EdgevlaError(f"observation is missing {', '.join(missing)}; the policy takes {', '.join(self.input_names)}")
        batch = None
        for o in self.observations:
            a = np.asarray(obs[o.name])
            if a.ndim != len(o.shape) + 1 or tuple(a.shape[1:]) != o.shape:
                raise EdgevlaError(
                    f"observation {o.name!r} has shape {tuple(a.shape)}, the policy expects (batch, {', '.join(map(str, o.shape))})")
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise EdgevlaError(f"observation {o.name!r} has batch {a.shape[0]}, others have {batch}")
            kind_ok = (np.issubdtype(a.dtype, np.integer) if o.dtype.startswith("int") or o.dtype == "uint8"
                       else np.issubdtype(a.dtype, np.floating))
            if not kind_ok:
                raise EdgevlaError(f"observation {o.name!r} has dtype {a.dtype}, the policy expects {o.dtype}")
        assert batch is not None
        return batch

    def cast(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated, contiguous arrays in the declared dtypes, in spec order."""
        self.validate(obs)
        return {o.name: np.ascontiguousarray(obs[o.name], dtype=o.dtype) for o in self.observations}

    def example(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {o.name: o.example(batch, rng) for o in self.observations}

    def denormalize(self, actions: np.ndarray) -> np.ndarray:
        return actions * np.asarray(self.action_std, np.float32) + np.asarray(self.action_mean, np.float32)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        return (actions - np.asarray(self.action_mean, np.float32)) / np.asarray(self.action_std, np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observations": [o.to_dict() for o in self.observations],
            "action": self.action.to_dict(),
            "action_mean": list(self.action_mean),
            "action_std": list(self.action_std),
            "control_rate_hz": self.control_rate_hz,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicySpec":
        return cls(
            observations=tuple(TensorSpec.from_dict(o) for o in d["observations"]),
            action=TensorSpec.from_dict(d["action"]),
            action_mean=tuple(d.get("action_mean", ())),
            action_std=tuple(d.get("action_std", ())),
            control_rate_hz=d.get("control_rate_hz"),
            extra=dict(d.get("extra", {})),
        )


def spec_of(module: Any) -> PolicySpec:
    """The spec a policy declares, or a clear error naming what is missing."""
    spec = getattr(module, "spec", None)
    if callable(spec) and not isinstance(spec, PolicySpec):
        spec = spec()
    if not isinstance(spec, PolicySpec):
        raise EdgevlaError(
            f"{type(module).__name__} declares no edgevla.PolicySpec: set module.spec = PolicySpec(...) "
            "naming its observations and action")
    return spec
