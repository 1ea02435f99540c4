"""Weight masks: unstructured (per-layer or global threshold) and N:M semi-structured.

A mask is a 0/1 tensor shaped like a layer's weight; pruning is ``W' = W * M``.
:func:`apply_masks` attaches each mask with ``torch.nn.utils.parametrize``,
so ``layer.weight`` is *computed* as ``original * mask`` on every access:
the zeros survive fine-tuning (an optimizer step updates the original, the
mask is re-applied on the next forward) and the masked weights get zero
gradient. :func:`remove_masks` bakes the zeros into plain parameters, which is
what export and checkpoints want.

N:M sparsity keeps the N largest of every M consecutive weights along a
Linear's *input* dimension, per output row — the layout sparse tensor cores
(2:4 on Ampere and later) execute at twice the dense rate.

Convolutions (``nn.Conv1d/2d/3d``) are masked too. Their N:M groups run along
the input channels, for each output channel and kernel position: the layout
TensorRT's sparse convolutions take, and the rows of the ``(out, kernel x
channels)`` matrix the native runtime multiplies (:func:`nm_rows`), where
they are a Linear's groups. That needs the channels of a group (``in /
groups``) to divide by M, so depthwise convolutions take only unstructured
masks; transposed convolutions are not masked.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import EdgevlaError
from .importance import MagnitudeImportance


class WeightMask(nn.Module):
    """A parametrization ``weight -> weight * mask``; the mask is a buffer, saved with the model."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def threshold_mask(scores: torch.Tensor, theta: float) -> torch.Tensor:
    """``Mask(|score| > theta)``: 1 where the score's magnitude exceeds the threshold."""
    return (scores.abs() > theta).to(torch.float32)


def sparsity_threshold(scores: Iterable[torch.Tensor], sparsity: float) -> float:
    """The threshold below or at which ``sparsity`` of all given scores fall."""
    _check_fraction(sparsity, "sparsity")
    flat = torch.cat([s.detach().abs().reshape(-1).float() for s in scores])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return float("-inf")
    return float(flat.kthvalue(k).values)


#: The layers masks are for: fully connected and (not transposed) convolutions.
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def nm_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as rows whose consecutive entries form the N:M groups: a Linear's ``(out, in)`` itself; a
    convolution's ``(out, in / groups, *kernel)`` as ``(out, kernel x in / groups)``, channels fastest."""
    if weight.ndim < 2:
        raise EdgevlaError(f"N:M groups need a weight of 2 or more dimensions, got shape {tuple(weight.shape)}")
    return weight if weight.ndim == 2 else weight.movedim(1, -1).reshape(weight.shape[0], -1)


def from_nm_rows(rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`nm_rows` for a weight of ``shape``."""
    if len(shape) == 2:
        return rows.reshape(shape)
    return rows.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def nm_width(shape: Sequence[int]) -> int:
    """How many consecutive weights a row of :func:`nm_rows` holds per kernel position: the input features, or
    a convolution group's input channels. N:M groups must not straddle kernel positions: M must divide it."""
    return int(shape[1])


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive input weights of each output row (of each
    output channel and kernel position, along the input channels, for a convolution's scores)."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise EdgevlaError(f"N:M sparsity needs integers 0 < N < M, got {n}:{m}")
    if scores.ndim < 2:
        raise EdgevlaError(f"N:M masks are for Linear and convolution weights, got shape {tuple(scores.shape)}")
    if nm_width(scores.shape) % m:
        what = "input dimension" if scores.ndim == 2 else "input channels per group"
        raise EdgevlaError(f"N:M {n}:{m} needs the {what} to divide by {m}, got {nm_width(scores.shape)}")
    rows = nm_rows(scores.detach().abs())
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.float32).scatter_(-1, keep, 1.0)
    return from_nm_rows(mask.reshape(rows.shape), scores.shape).contiguous()


def _check_fraction(x: float, what: str) -> None:
    if not isinstance(x, (int, float)) or not 0.0 <= float(x) < 1.0:
        raise EdgevlaError(f"{what} must be a fraction in [0, 1), got {x!r}")


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The named Linear and convolution layers to mask: all of them, or exactly those named."""
    return _named(model, PRUNABLE, "nn.Linear or convolution", layers)


def prunable_linears(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The named nn.Linear layers: all of them, or exactly those named (what sensitivity sweeps time)."""
    return _named(model, nn.Linear, "nn.Linear", layers)


def _named(model: nn.Module, kinds, what: str, layers: Iterable[str] | None) -> dict[str, nn.Module]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    if layers is None:
        return found
    chosen = {}
    for name in layers:
        if name not in found:
            raise EdgevlaError(f"no {what} named {name!r} in {type(model).__name__}")
        chosen[name] = found[name]
    return chosen


def takes_nm(layer: nn.Module, m: int) -> bool:
    """Whether N:M groups of ``m`` fit ``layer``'s weight (its input width per group divides by ``m``)."""
    return nm_width(layer.weight.shape) % m == 0


def unstructured_masks(model: nn.Module, sparsity: float, criterion=None, scope: str = "layer",
                       layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks that zero ``sparsity`` of the weights, ranked by ``criterion`` (default ``|w|``).

    ``scope="layer"`` prunes every layer to the same sparsity; ``"global"``
    ranks all chosen weights together under one threshold, so layers with many
    unimportant weights lose more (per-layer scores must be comparable: use a
    criterion whose scale means the same across layers).
    """
    if scope not in ("layer", "global"):
        raise EdgevlaError(f"threshold scope must be 'layer' or 'global', got {scope!r}")
    criterion = criterion or MagnitudeImportance()
    scores = {n: criterion(m) for n, m in prunable_layers(model, layers).items()}
    if scope == "global":
        theta = sparsity_threshold(scores.values(), sparsity)
        return {n: threshold_mask(s, theta) for n, s in scores.items()}
    return {n: threshold_mask(s, sparsity_threshold([s], sparsity)) for n, s in scores.items()}


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, criterion=None,
             layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """N:M masks for the named layers, or for every Linear and convolution whose input width divides by ``m``."""
    criterion = criterion or MagnitudeImportance()
    chosen = prunable_layers(model, layers)
    if layers is None:
        chosen = {k: v for k, v in chosen.items() if takes_nm(v, m)}
    return {name: nm_mask(criterion(layer), n, m) for name, layer in chosen.items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach each mask to its layer's weight; a layer already masked gets the product of both."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        layer = modules.get(name)
        if layer is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise EdgevlaError(f"no layer with a weight named {name!r} to mask")
        if tuple(mask.shape) != tuple(layer.weight.shape):
            raise EdgevlaError(f"mask for {name} has shape {tuple(mask.shape)}, weight is {tuple(layer.weight.shape)}")
        if parametrize.is_parametrized(layer, "weight"):
            for p in layer.parametrizations.weight:
                if isinstance(p, WeightMask):
                    p.mask.mul_(mask.to(p.mask.dtype))
                    break
            else:
                parametrize.register_parametrization(layer, "weight", WeightMask(mask))
        else:
            with torch.no_grad():  # start from exact zeros, not just masked reads
                layer.weight.mul_(mask.to(layer.weight.dtype))
            parametrize.register_parametrization(layer, "weight", WeightMask(mask))


def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every mask baked into a plain weight; ``model`` keeps its masks.

    Not ``remove_masks(copy.deepcopy(model))``: a deep copy shares the parametrized class torch made for
    each masked layer, and removing a parametrization deletes the property from that class, so the
    original's masked layers would lose their ``weight``. Here each copied layer gets its base class back.
    """
    out = copy.deepcopy(model)
    for module in out.modules():
        if not parametrize.is_parametrized(module):
            continue
        if set(module.parametrizations) != {"weight"} or not all(
                isinstance(p, WeightMask) for p in module.parametrizations.weight):
            raise EdgevlaError(f"{type(module).__name__} has parametrizations other than weight masks: "
                               "bake them before copying")
        with torch.no_grad():
            weight = module.weight.detach().clone()
        module.__class__ = module.__class__.__bases__[0]  # the copy's own class; the shared one is untouched
        del module._modules["parametrizations"]
        module.weight = nn.Parameter(weight)
    return out


def remove_masks(model: nn.Module) -> int:
    """Bake every mask into a plain weight (exact zeros); returns how many layers were unmasked."""
    count = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, WeightMask) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            count += 1
    return count


@dataclass(frozen=True)
class LayerSparsity:
    layer: str
    zeros: int
    total: int
    pattern: str  # "2:4", "4:8" when every group obeys it, else "unstructured" / "dense"

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


def follows_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input weights (a convolution's: input channels, per output
    channel and kernel position) holds at most ``n`` non-zeros."""
    if weight.ndim < 2 or nm_width(weight.shape) % m:
        return False
    rows = nm_rows(weight.detach())
    nonzero = (rows.reshape(rows.shape[0], -1, m) != 0).sum(dim=-1)
    return bool((nonzero <= n).all())


def sparsity_report(model: nn.Module) -> list[LayerSparsity]:
    """Zeros and pattern of every Linear and convolution weight (masked or baked)."""
    out = []
    for name, layer in prunable_layers(model).items():
        w = layer.weight.detach()
        zeros = int((w == 0).sum())
        if zeros == 0:
            pattern = "dense"
        else:
            pattern = next((f"{n}:{m}" for n, m in ((2, 4), (4, 8)) if follows_nm(w, n, m)), "unstructured")
        out.append(LayerSparsity(name, zeros, w.numel(), pattern))
    return out
