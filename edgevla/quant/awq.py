"""AWQ: scale the input channels that carry the most activation before their weights round to int4.

A weight column that multiplies large inputs contributes most to a Linear's output error when it rounds. AWQ
(Lin et al., 2023) multiplies those columns by ``s > 1`` before rounding (their relative rounding error
shrinks) and divides the inputs by ``s`` where that is free: in the norm (γ, β) or the value Linear's rows that
produce them, the same exact folds SmoothQuant uses (:class:`~.smoothquant.SmoothGroup`,
:func:`~.smoothquant.fold_smoothing`). The scale is ``s = a^α`` with ``a`` each channel's activation magnitude,
normalized so that ``max(s) · min(s) = 1``; ``α`` is searched on a grid from 0 (no scaling) to 0.95 for the
one that keeps the group's outputs closest to float once rounded as they will be: to the nearest code, or by
GPTQ on the scaled inputs (which already weighs columns by their input energy, and often wants no scale; its
tries walk up the grid while the error falls).

edgevla's differences from the paper, by choice: the magnitude is each channel's RMS over the calibration
inputs (``sqrt(H_jj)``) rather than its mean ``|x|``; the error is each Linear's own output error,
``trace((W − Ŵ) H (W − Ŵ)ᵀ)`` with ``Ŵ = Q(W·s)/s`` and ``H = XᵀX / n`` (exact on the calibration inputs, and
the same measure GPTQ minimizes, :func:`~.gptq.output_error`), summed over the group's readers, rather than the
block's output; and there is no clipping search. A channel no calibration input reaches keeps ``s = 1``. Since
``α = 0`` is on the grid, the calibration error never rises. A group is scaled only when every Linear reading
it stores int4 weights: the scale is meant for int4 rounding, and activations of a w4a16 layer stay float.

The rounding that follows (nearest, or :mod:`.gptq`) sees the scaled weights; GPTQ measures its Hessians after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdgevlaError
from .gptq import gptq_int4, input_hessians
from .primitives import Int4GroupedWeight
from .smoothquant import SmoothGroup, find_smooth_groups, fold_smoothing

ALPHAS = tuple(i / 20 for i in range(20))  # 0 (no scaling) .. 0.95


@dataclass(frozen=True)
class AwqScale:
    """One group's search: the chosen ``alpha`` and the summed output error of its readers without scaling
    (``alpha`` 0) and with the chosen scale."""

    norm: str
    alpha: float
    error_before: float
    error_after: float


def channel_magnitudes(hessian: torch.Tensor) -> torch.Tensor:
    """Each input channel's RMS over the inputs ``H = XᵀX / n`` was measured on: ``sqrt(H_jj)``."""
    return torch.diagonal(hessian).clamp(min=0).sqrt().float()


def awq_scale(magnitude: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a^α`` normalized so that the largest and smallest scales multiply to 1; a channel whose magnitude is 0
    keeps 1."""
    live = magnitude > 0
    if not live.any() or alpha == 0:
        return torch.ones_like(magnitude)
    s = magnitude.clamp(min=magnitude[live].min()).pow(alpha)
    s = s / (s[live].max() * s[live].min()).sqrt()
    return torch.where(live, s, torch.ones_like(s))


def scaled_int4(weight: torch.Tensor, columns: torch.Tensor, group_size: int, scale_dtype: str) -> torch.Tensor:
    """``Q(W·s)/s``: the weight as it computes once its columns are multiplied by ``columns`` and rounded to
    the nearest int4 code."""
    q = Int4GroupedWeight.from_hp(weight.float() * columns[None, :], group_size, scale_dtype).dequantize()
    return q / columns[None, :]


def gptq_scaled_int4(weight: torch.Tensor, columns: torch.Tensor, group_size: int, scale_dtype: str,
                     hessian: torch.Tensor) -> torch.Tensor:
    """``Q(W·s)/s`` with ``Q`` GPTQ's rounding on the scaled inputs' second moment ``S⁻¹ H S⁻¹``."""
    s = columns.double()
    q = gptq_int4(weight.float() * columns[None, :], hessian.double() / s[:, None] / s[None, :], group_size,
                  scale_dtype).dequantize()
    return q / columns[None, :]


def _output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    d = weight.float() - quantized
    return float(((d @ hessian) * d).sum())


def search_scale(weights: Sequence[torch.Tensor], hessian: torch.Tensor, group_sizes: Sequence[int],
                 scale_dtype: str = "fp32", channels: Sequence[int] | None = None, rows: int = 0,
                 rounding: str = "nearest", alphas: Iterable[float] | None = None
                 ) -> tuple[torch.Tensor, float, float, float]:
    """The scale over ``alphas`` with the least summed output error of ``weights`` (the Linears reading one
    input, whose inputs' second moment is ``hessian``) once rounded by ``rounding`` (``nearest`` or ``gptq``), as
    ``(scale, alpha, error at alpha 0, error)``. ``alphas`` defaults to :data:`ALPHAS`; under GPTQ, whose tries
    cost more, to every other one, walked up only while the error falls. With ``channels`` the scale is one per source row of ``rows`` (each input
    channel takes its row's; a row's magnitude is the RMS over the channels carrying it)."""
    if rounding not in ("nearest", "gptq"):
        raise EdgevlaError(f"AWQ: unknown rounding {rounding!r}; expected nearest or gptq")
    if alphas is None:
        alphas = ALPHAS if rounding == "nearest" else ALPHAS[::2]
    magnitude = channel_magnitudes(hessian)
    if channels is not None:
        index = torch.tensor(list(channels))
        magnitude = torch.zeros(rows).scatter_reduce(0, index, magnitude.square(), "mean",
                                                     include_self=False).sqrt()
    h = hessian.float()
    best: tuple[torch.Tensor, float, float] | None = None
    baseline = float("nan")
    for alpha in alphas:
        s = awq_scale(magnitude, alpha)
        columns = s if channels is None else s[index]
        error = sum(_output_error(w, scaled_int4(w, columns, g, scale_dtype) if rounding == "nearest"
                                  else gptq_scaled_int4(w, columns, g, scale_dtype, hessian), h)
                    for w, g in zip(weights, group_sizes, strict=True))
        if alpha == 0:
            baseline = error
        if best is None or error < best[2]:
            best = (s, alpha, error)
        elif rounding == "gptq":  # each try is a GPTQ run: walk up the grid only while the error falls
            break
    if best is None:
        raise EdgevlaError("AWQ needs at least one alpha to try")
    return best[0], best[1], baseline, best[2]


@torch.no_grad()
def awq_(model: nn.Module, group_sizes: Mapping[str, int], batches: Sequence[tuple[torch.Tensor, ...]],
         scale_dtype: str = "fp32", rounding: str = "nearest", groups: Sequence[SmoothGroup] | None = None
         ) -> list[AwqScale]:
    """Scale, in place, every foldable group of the float ``model`` whose readers are all in ``group_sizes``
    (``{Linear: int4 group size}``), by the scale :func:`search_scale` finds for ``rounding`` on the calibration
    ``batches``;
    ``groups`` defaults to :func:`~.smoothquant.find_smooth_groups` on the first batch. Returns one
    :class:`AwqScale` per group scaled."""
    if not batches:
        raise EdgevlaError("AWQ needs at least one calibration batch")
    if groups is None:
        groups, _ = find_smooth_groups(model, tuple(batches[0]))
    groups = [g for g in groups if all(n in group_sizes for n in g.linears)]
    if not groups:
        return []
    # Every fold is exact in float, so the Hessians measured before any of them hold for each group in turn.
    hessians = input_hessians(model, [g.linears[0] for g in groups], batches)
    modules = dict(model.named_modules())
    done = []
    for g in groups:
        rows = model.get_parameter(g.weight).shape[0] if g.channels is not None else 0
        s, alpha, before, after = search_scale([modules[n].weight for n in g.linears], hessians[g.linears[0]],
                                               [group_sizes[n] for n in g.linears], scale_dtype, g.channels, rows,
                                               rounding)
        if alpha > 0:
            fold_smoothing(model, g, s)
        done.append(AwqScale(g.norm, alpha, before, after))
    return done


__all__ = ["ALPHAS", "AwqScale", "awq_", "awq_scale", "channel_magnitudes", "gptq_scaled_int4", "scaled_int4",
           "search_scale"]
