"""Mixed precision: find the layers quantization hurts, keep them in floating point.

Sensitivity is measured on the fully quantized fake-quant model by switching
layers between their quantized and float forms (:attr:`FakeQuantLinear.float_mode`),
so no re-quantization or re-calibration is needed per probe:

* :func:`layer_sqnr` — the SQNR of the policy's output with *only* that layer
  quantized, against the model with every layer float. A layer with a low
  SQNR is one whose rounding the output cannot absorb.
* :func:`fallback_by_sqnr` — every layer under an SQNR floor stays float.
* :func:`fallback_by_success` — an accuracy budget instead: layers are ranked
  by SQNR (worst first) and the fewest of the worst are kept float so that
  closed-loop success stays within the budget; found by bisection on that
  count, a few closed-loop evaluations in all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import EdgevlaError
from ..task.evaluate import meets
from .fakequant import float_mode, quantized_layers
from .primitives import sqnr_db

Batches = Sequence[tuple[torch.Tensor, ...]]


@torch.no_grad()
def _outputs(model: nn.Module, batches: Batches) -> torch.Tensor:
    return torch.cat([model(*b).float().reshape(len(b[0]), -1) for b in batches])


@torch.no_grad()
def model_sqnr(model: nn.Module, batches: Batches) -> float:
    """SQNR (dB) of the whole fake-quant model's output against its float form."""
    was_training = model.training
    model.eval()
    try:
        with float_mode(model):
            reference = _outputs(model, batches)
        return sqnr_db(reference, _outputs(model, batches))
    finally:
        model.train(was_training)


@torch.no_grad()
def layer_sqnr(model: nn.Module, batches: Batches) -> dict[str, float]:
    """``{layer: output SQNR in dB with only that layer quantized}`` for every fake-quant layer."""
    layers = quantized_layers(model)
    if not layers:
        raise EdgevlaError(f"{type(model).__name__} has no fake-quant layers: run quantize_ first")
    if not batches:
        raise EdgevlaError("sensitivity analysis needs at least one batch")
    was_training = model.training
    model.eval()
    result: dict[str, float] = {}
    try:
        with float_mode(model):
            reference = _outputs(model, batches)
            for name, layer in layers.items():
                layer.float_mode = False
                try:
                    result[name] = sqnr_db(reference, _outputs(model, batches))
                finally:
                    layer.float_mode = True
    finally:
        model.train(was_training)
    return result


def fallback_by_sqnr(sensitivity: Mapping[str, float], min_sqnr_db: float) -> list[str]:
    """The layers whose solo SQNR is under ``min_sqnr_db``, worst first."""
    return [n for n, v in sorted(sensitivity.items(), key=lambda kv: kv[1]) if v < min_sqnr_db]


@dataclass
class SuccessSearch:
    """What :func:`fallback_by_success` tried: (layers kept float, success) per probe."""

    required: float
    fallback: list[str] = field(default_factory=list)
    probes: list[tuple[int, float]] = field(default_factory=list)
    met: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def fallback_by_success(model: nn.Module, sensitivity: Mapping[str, float],
                        success_fn: Callable[[nn.Module], float], required: float) -> SuccessSearch:
    """The fewest worst-SQNR layers to keep float so that ``success_fn(model) >= required``.

    ``success_fn`` runs the fake-quant model (closed loop); the layers are put
    back to quantized when the search ends. Assumes success does not drop when
    one more layer is kept float, which holds up to evaluation noise; if even
    the all-float model misses ``required``, every layer is kept float and
    ``met`` is false.
    """
    layers = quantized_layers(model)
    order = [n for n, _ in sorted(sensitivity.items(), key=lambda kv: kv[1]) if n in layers]
    search = SuccessSearch(required=required)

    def success_with(k: int) -> float:
        for i, name in enumerate(order):
            layers[name].float_mode = i < k
        try:
            value = float(success_fn(model))
        finally:
            for name in order:
                layers[name].float_mode = False
        search.probes.append((k, value))
        return value

    if meets(success_with(0), required):
        search.met = True
        return search
    if not meets(success_with(len(order)), required):
        search.fallback = list(order)
        return search
    low, high = 0, len(order)  # success(low) misses, success(high) meets
    while high - low > 1:
        mid = (low + high) // 2
        if meets(success_with(mid), required):
            high = mid
        else:
            low = mid
    search.fallback = order[:high]
    search.met = True
    return search
