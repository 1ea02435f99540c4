"""Mixed precision: find the layers quantization hurts, give them more precision.

Sensitivity is measured on the fully quantized fake-quant model by switching
layers between their quantized and float forms (:attr:`FakeQuantLinear.float_mode`),
so no re-quantization or re-calibration is needed per probe:

* :func:`layer_sqnr` — the SQNR of the policy's output with *only* that layer
  quantized, against the model with every layer float. A layer with a low
  SQNR is one whose rounding the output cannot absorb.
* :func:`fallback_by_sqnr` — every layer under an SQNR floor stays float.
* :func:`raise_by_sqnr` — every layer under the floor climbs its precision
  ladder (:mod:`.ladder`: finer int4 groups, int8 weights, float) to the
  first rung whose solo SQNR meets the floor.
* :func:`fallback_by_success` — an accuracy budget instead: layers are ranked
  by SQNR (worst first) and the fewest of the worst are kept float so that
  closed-loop success stays within the budget; found by bisection on that
  count, a few closed-loop evaluations in all. With ``ladder`` the worst are
  first raised to int8 weights with a float input (w8a16, the ladder's last
  quantized rung), and kept float only if that cannot meet the budget.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import EdgevlaError
from ..task.evaluate import meets
from .fakequant import _set_submodule, float_mode, quantized_layers
from .ladder import FLOAT, raised_layer, rungs_above
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


@contextlib.contextmanager
def wearing(model: nn.Module, forms: Mapping[str, str]) -> Iterator[nn.Module]:
    """Inside the block each named fake-quant layer computes in its form (:mod:`.ladder`): ``float`` puts
    it in float mode, a quantized form swaps in a new layer made from its float weight. Restored on leaving."""
    layers = quantized_layers(model)
    unknown = [n for n in forms if n not in layers]
    if unknown:
        raise EdgevlaError(f"no fake-quant layer named {unknown[0]}")
    swapped: dict[str, nn.Module] = {}
    floated: dict[str, bool] = {}
    try:
        for name, form in forms.items():
            if form == FLOAT:
                floated[name] = layers[name].float_mode
                layers[name].float_mode = True
            else:
                _set_submodule(model, name, raised_layer(layers[name], form, name))
                swapped[name] = layers[name]
        yield model
    finally:
        for name, layer in swapped.items():
            _set_submodule(model, name, layer)
        for name, previous in floated.items():
            layers[name].float_mode = previous


def noise_sum_db(*sqnrs_db: float) -> float:
    """The SQNR of a signal carrying the independent noises of each given SQNR (their powers add)."""
    power = sum(10.0 ** (-s / 10.0) for s in sqnrs_db)
    return math.inf if power == 0.0 else -10.0 * math.log10(power)


@dataclass
class RaisedBySqnr:
    """What :func:`raise_by_sqnr` chose: the form each layer under the floor climbed to, the solo SQNR of
    every rung it tried (a layer kept float tried them all and met the floor with none), and the whole
    model's output SQNR: ``target_db`` it had to reach, ``model_sqnr_db`` with these forms, and the layers
    ``climbed`` further for it (in order, one rung each)."""

    forms: dict[str, str]
    tried: dict[str, dict[str, float]]
    target_db: float | None = None
    model_sqnr_db: float | None = None
    climbed: list[str] = field(default_factory=list)

    @property
    def kept_float(self) -> list[str]:
        return [n for n, f in self.forms.items() if f == FLOAT]


@torch.no_grad()
def raise_by_sqnr(model: nn.Module, sensitivity: Mapping[str, float], min_sqnr_db: float,
                  batches: Batches) -> RaisedBySqnr:
    """Each layer whose solo SQNR (``sensitivity``) is under ``min_sqnr_db``, worst first, climbs its ladder
    to the first quantized rung whose solo SQNR meets the floor, or to float when none does.

    Rungs just over the floor add up: several layers at 25 dB each make a model well under 25 dB, where
    keeping them float left it far above. So the raised layers together may add to the model's output no
    more noise than one layer at the floor would, over what keeping them float leaves (``target_db``:
    the noise powers of the two summed); while the model misses that, the raised layer with the lowest
    solo SQNR climbs one more rung. One forward pass per rung tried and per climb, over ``batches``.
    """
    weak = fallback_by_sqnr(sensitivity, min_sqnr_db)
    layers = quantized_layers(model)
    was_training = model.training
    model.eval()
    choice = RaisedBySqnr({}, {})
    try:
        with float_mode(model):
            reference = _outputs(model, batches)

        def output_sqnr(forms: Mapping[str, str]) -> float:
            with wearing(model, forms):
                return sqnr_db(reference, _outputs(model, batches))

        solo: dict[str, float] = {}
        for name in weak:
            tried: dict[str, float] = {}
            form = FLOAT
            for rung in rungs_above(layers[name])[:-1]:
                tried[rung] = output_sqnr({**{n: FLOAT for n in layers if n != name}, name: rung})
                if tried[rung] >= min_sqnr_db:
                    form = rung
                    break
            choice.forms[name] = form
            choice.tried[name] = {k: round(v, 3) for k, v in tried.items()}
            solo[name] = tried.get(form, math.inf)
        if weak:
            choice.target_db = round(noise_sum_db(output_sqnr({n: FLOAT for n in weak}), min_sqnr_db), 3)
            current = output_sqnr(choice.forms)
            while current < choice.target_db:
                climbing = [n for n in weak if choice.forms[n] != FLOAT]
                if not climbing:
                    break
                name = min(climbing, key=solo.__getitem__)
                rungs = rungs_above(layers[name])
                form = rungs[rungs.index(choice.forms[name]) + 1]
                choice.forms[name] = form
                choice.climbed.append(name)
                if form != FLOAT:
                    solo[name] = output_sqnr({**{n: FLOAT for n in layers if n != name}, name: form})
                    choice.tried[name][form] = round(solo[name], 3)
                else:
                    solo[name] = math.inf
                current = output_sqnr(choice.forms)
            choice.model_sqnr_db = round(current, 3)
    finally:
        model.train(was_training)
    return choice


@dataclass
class SuccessSearch:
    """What :func:`fallback_by_success` tried: (k worst layers raised, success) per probe — kept float in
    ``probes``, raised to their last quantized rung in ``raised_probes`` — and what it chose: ``forms``, the
    form of each layer raised (``fallback``: those kept float)."""

    required: float
    forms: dict[str, str] = field(default_factory=dict)
    probes: list[tuple[int, float]] = field(default_factory=list)
    raised_probes: list[tuple[int, float]] = field(default_factory=list)
    met: bool = False

    @property
    def fallback(self) -> list[str]:
        return [n for n, f in self.forms.items() if f == FLOAT]

    def to_dict(self) -> dict:
        return {**asdict(self), "fallback": self.fallback}


def last_quantized_rung(layer: nn.Module) -> str:
    """The most precise quantized form on ``layer``'s ladder (w8a16), or float when it has none."""
    rungs = rungs_above(layer)
    return rungs[-2] if len(rungs) > 1 else FLOAT


def fallback_by_success(model: nn.Module, sensitivity: Mapping[str, float],
                        success_fn: Callable[[nn.Module], float], required: float, *,
                        ladder: bool = False) -> SuccessSearch:
    """The fewest worst-SQNR layers to keep float so that ``success_fn(model) >= required``.

    ``success_fn`` runs the fake-quant model (closed loop); the layers are put
    back as they were when the search ends. Assumes success does not drop when
    one more layer is raised, which holds up to evaluation noise; if even the
    all-float model misses ``required``, every layer is kept float and ``met``
    is false. With ``ladder``, the fewest worst layers raised to their last
    quantized rung (:func:`last_quantized_rung`) are searched first; float
    only when raising them all misses.
    """
    layers = quantized_layers(model)
    order = [n for n, _ in sorted(sensitivity.items(), key=lambda kv: kv[1]) if n in layers]
    top = {n: last_quantized_rung(layers[n]) for n in order}
    search = SuccessSearch(required=required)

    def forms(k: int, climb: bool) -> dict[str, str]:
        return {n: top[n] if climb else FLOAT for n in order[:k]}

    def success_with(k: int, climb: bool) -> float:
        with wearing(model, forms(k, climb)):
            value = float(success_fn(model))
        (search.raised_probes if climb else search.probes).append((k, value))
        return value

    def fewest(climb: bool) -> int | None:
        """The smallest k that meets (success with none raised is known to miss); None if all miss."""
        if not meets(success_with(len(order), climb), required):
            return None
        low, high = 0, len(order)  # success(low) misses, success(high) meets
        while high - low > 1:
            mid = (low + high) // 2
            if meets(success_with(mid, climb), required):
                high = mid
            else:
                low = mid
        return high

    if meets(success_with(0, False), required):
        search.met = True
        return search
    for climb in ((True, False) if ladder and any(f != FLOAT for f in top.values()) else (False,)):
        k = fewest(climb)
        if k is not None:
            search.forms, search.met = forms(k, climb), True
            return search
    search.forms = forms(len(order), False)
    return search
