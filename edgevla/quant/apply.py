"""One call from a float policy to a fake-quant one, and the target precision check.

:func:`quantize_policy` strings the pieces together for a policy (any
``nn.Module`` with a spec): calibration data → optional SmoothQuant →
calibration of every Linear input → :func:`quantize_`. It quantizes a copy;
the float policy stays usable as the reference.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from ..errors import EdgevlaError
from ..spec import spec_of
from .calibrate import METHODS, calibrate, calibration_observations, iter_batches
from .fakequant import (
    Float8StaticActivationFloat8WeightConfig,
    Int4WeightOnlyConfig,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)
from .smoothquant import smooth_quant

FORMATS = ("w8a8", "w8a16", "w4a16", "fp8")
# What each format needs the target to run natively (names as in a target's facts.precisions).
_NEEDS = {"w8a8": "int8", "w8a16": "int8", "w4a16": "int4", "fp8": "fp8", "fp16": "fp16", "bf16": "bf16"}


def check_precision_supported(target, fmt: str) -> None:
    """Raise :class:`EdgevlaError` when ``target`` cannot run ``fmt`` (fp8 on Orin, for instance).

    Weight-only int4 runs as int4 weights dequantized in fp16 kernels, so it
    needs fp16 or an int4 entry; the others need their own precision.
    """
    if fmt not in _NEEDS:
        raise EdgevlaError(f"unknown quantization format {fmt!r}; expected one of {', '.join(_NEEDS)}")
    precisions = tuple(target.facts.precisions)
    need = _NEEDS[fmt]
    ok = need in precisions or (fmt == "w4a16" and "fp16" in precisions) or (fmt == "w8a16" and "fp16" in precisions)
    if not ok:
        raise EdgevlaError(f"target {target.name} cannot run {fmt}: it supports {', '.join(precisions)}")


@dataclass
class QuantizeResult:
    model: nn.Module
    formats: dict[str, str]  # linear name -> format ("float" when skipped)
    activation_amax: dict[str, float] = field(default_factory=dict)
    smoothed: list[str] = field(default_factory=list)  # LayerNorms SmoothQuant folded into


def quantize_policy(policy: nn.Module, fmt: str, *, calibration: str | os.PathLike | None = None,
                    samples: int = 256, method: str = "minmax", smoothquant_alpha: float | None = None,
                    group_size: int = 128, skip: Iterable[str] = (), batch_size: int = 32,
                    **calibrator_options) -> QuantizeResult:
    """A fake-quant copy of ``policy`` in ``fmt`` (w8a8, w8a16, w4a16, fp8)."""
    if fmt not in FORMATS:
        raise EdgevlaError(f"unknown quantization format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if method not in METHODS:
        raise EdgevlaError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    spec = spec_of(policy)
    model = copy.deepcopy(policy).eval()
    skip = tuple(skip)
    smoothed: list[str] = []
    amax: dict[str, float] = {}
    needs_activations = fmt in ("w8a8", "fp8")
    if needs_activations or smoothquant_alpha is not None:
        obs = calibration_observations(spec, calibration, samples)
        batches = list(iter_batches(spec, obs, batch_size))
        if smoothquant_alpha is not None:
            smoothed = [g.norm for g in smooth_quant(model, batches, smoothquant_alpha)["groups"]]
        if needs_activations:
            amax = calibrate(model, batches, method, **calibrator_options)
    if fmt == "w8a8":
        config = Int8StaticActivationInt8WeightConfig(skip=skip, activation_amax=amax)
    elif fmt == "fp8":
        config = Float8StaticActivationFloat8WeightConfig(skip=skip, activation_amax=amax)
    elif fmt == "w8a16":
        config = Int8WeightOnlyConfig(skip=skip)
    else:
        # Layers whose input width the group size does not divide stay in float.
        skip += tuple(n for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and m.in_features % group_size and n not in skip)
        config = Int4WeightOnlyConfig(skip=skip, group_size=group_size)
    formats = quantize_(model, config)
    return QuantizeResult(model, formats, amax, smoothed)
