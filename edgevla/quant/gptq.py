"""GPTQ: int4 weights rounded to keep each layer's output, not each weight, close.

Rounding every weight to its nearest int4 code (RTN) minimizes the weight error; what matters is the layer's
output on the inputs it sees, ``‖X Wᵀ − X Qᵀ‖²``. GPTQ (Frantar et al., 2022, after Optimal Brain Surgeon)
quantizes one input column at a time and moves its rounding error onto the columns not yet quantized, in the
direction the inputs' second moment ``H = XᵀX / n`` says costs least: with ``U`` the upper Cholesky factor of
``H⁻¹``, column ``j``'s error ``e = (w_j − q_j) / U_jj`` updates ``w_k −= e · U_jk`` for ``k > j``. The
columns go in order of decreasing input energy ``H_jj`` (the paper's "act order"): the ones that matter most
are rounded first, while there are still many columns left to take up their error.

:func:`gptq_int4_reference` does exactly that, column by column. :func:`gptq_int4` gives the same result with
the updates to later columns batched per block of 128 columns (one matrix product per block instead of one
rank-1 update per column). Both keep edgevla's int4 format: symmetric codes, one scale per output channel and
group of (consecutive) input channels, the scale taken from the group's weights as they stand when the first
of its columns comes up (the errors of the columns before included), in fp16 when ``scale_dtype`` says so.
``H`` gets ``damp`` times its mean diagonal added, as in the paper; a column no calibration input reaches
keeps its nearest code.

:func:`input_hessians` measures ``H`` for many layers in one pass over calibration batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import EdgevlaError
from .primitives import GROUP_SIZES, INT4_MAX, INT4_MIN, Int4GroupedWeight, fp16_scale, pack_int4, scale_from_amax

BLOCK = 128  # columns per batched update


@torch.no_grad()
def input_hessians(model: nn.Module, layers: Sequence[str], batches: Iterable[tuple[torch.Tensor, ...]]
                   ) -> dict[str, torch.Tensor]:
    """``{layer: XᵀX / n}`` (float64, ``(in, in)``) of each named ``nn.Linear``'s inputs over ``batches``."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layers]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(*batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in sums]
    if missing:
        raise EdgevlaError(f"GPTQ: the calibration batches never reach {missing[0]}")
    return {n: sums[n] / counts[n] for n in layers}


def _check(weight: torch.Tensor, hessian: torch.Tensor, group_size: int) -> tuple[int, int]:
    if weight.ndim != 2:
        raise EdgevlaError(f"GPTQ needs a 2-D weight, got shape {tuple(weight.shape)}")
    out, inp = weight.shape
    if group_size not in GROUP_SIZES or inp % group_size:
        raise EdgevlaError(f"GPTQ: group size {group_size} must be one of {GROUP_SIZES} and divide {inp}")
    if tuple(hessian.shape) != (inp, inp):
        raise EdgevlaError(f"GPTQ: the Hessian must be ({inp}, {inp}), got {tuple(hessian.shape)}")
    if not torch.isfinite(weight).all() or not torch.isfinite(hessian).all():
        raise EdgevlaError("GPTQ: the weight or the Hessian holds inf or NaN")
    return out, inp


def _inverse_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """``U``, the upper Cholesky factor of the damped ``H⁻¹``. A column no calibration input reaches gets a
    diagonal of 1 and no coupling: it rounds to nearest and passes its error to no other column (the paper
    zeroes such weights; an input the calibration never excited may still come at run time)."""
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except RuntimeError as e:  # torch.linalg.LinAlgError: not positive definite even damped
        raise EdgevlaError(f"GPTQ: the damped Hessian is not positive definite ({e}); raise damp") from None


def _group_scale(columns: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    scale = scale_from_amax(columns.abs().amax(dim=1).float(), INT4_MAX)
    return fp16_scale(scale) if scale_dtype == "fp16" else scale


def _round_column(column: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The column's codes, as :func:`~.primitives.quantize` rounds them, and their value (float64)."""
    codes = torch.clamp(torch.round(column.float() / scale), INT4_MIN, INT4_MAX)
    return codes, (codes * scale).double()


def _packed(codes: torch.Tensor, scales: torch.Tensor, group_size: int, scale_dtype: str) -> Int4GroupedWeight:
    return Int4GroupedWeight(pack_int4(codes.to(torch.int8)), scales, group_size, tuple(codes.shape), scale_dtype)


def _order(hessian: torch.Tensor, act_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns in the order they are quantized (by decreasing ``H_jj``, the inputs' energy, with
    ``act_order``; else as they are) and each column's position in it."""
    order = (torch.argsort(torch.diagonal(hessian), descending=True, stable=True) if act_order
             else torch.arange(hessian.shape[0]))
    return order, torch.argsort(order)


@torch.no_grad()
def gptq_int4_reference(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 128,
                        scale_dtype: str = "fp32", damp: float = 0.01, act_order: bool = True) -> Int4GroupedWeight:
    """GPTQ one column at a time: every later column updated after each (the definition; slow)."""
    out, inp = _check(weight, hessian, group_size)
    order, position = _order(hessian, act_order)
    u = _inverse_factor(hessian.double()[order][:, order], damp)
    w = weight.double()[:, order].clone()  # column j is the weight's column order[j]
    codes, scales = torch.zeros(out, inp), torch.zeros(out, inp // group_size)
    scaled = torch.zeros(inp // group_size, dtype=torch.bool)
    for j in range(inp):
        group = int(order[j]) // group_size
        if not scaled[group]:  # the group's first column: its members all lie at j or later
            members = position[group * group_size:(group + 1) * group_size]
            scales[:, group], scaled[group] = _group_scale(w[:, members], scale_dtype), True
        codes[:, order[j]], value = _round_column(w[:, j], scales[:, group])
        error = (w[:, j] - value) / u[j, j]
        w[:, j:] -= error[:, None] * u[j, j:][None, :]
    return _packed(codes, scales, group_size, scale_dtype)


@torch.no_grad()
def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, scale_dtype: str = "fp32",
              damp: float = 0.01, act_order: bool = True) -> Int4GroupedWeight:
    """GPTQ with the later blocks' updates batched (module docstring); the reference's result. A group's scale
    reads its members as the reference sees them then: those in this block as updated so far, those in later
    blocks with this block's errors so far applied."""
    out, inp = _check(weight, hessian, group_size)
    order, position = _order(hessian, act_order)
    u = _inverse_factor(hessian.double()[order][:, order], damp)
    w = weight.double()[:, order].clone()
    codes, scales = torch.zeros(out, inp), torch.zeros(out, inp // group_size)
    scaled = torch.zeros(inp // group_size, dtype=torch.bool)
    for b0 in range(0, inp, BLOCK):
        b1 = min(b0 + BLOCK, inp)
        block, errors, ub = w[:, b0:b1].clone(), torch.zeros(out, b1 - b0, dtype=torch.float64), u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            group = int(order[b0 + i]) // group_size
            if not scaled[group]:
                members = position[group * group_size:(group + 1) * group_size]
                here, later = members[members < b1], members[members >= b1]
                current = torch.cat([block[:, here - b0], w[:, later] - errors[:, :i] @ u[b0:b0 + i, later]], 1)
                scales[:, group], scaled[group] = _group_scale(current, scale_dtype), True
            codes[:, order[b0 + i]], value = _round_column(block[:, i], scales[:, group])
            errors[:, i] = (block[:, i] - value) / ub[i, i]
            block[:, i:] -= errors[:, i:i + 1] * ub[i:i + 1, i:]
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return _packed(codes, scales, group_size, scale_dtype)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """``trace((W − Q) H (W − Q)ᵀ)``: the mean squared output error over the inputs ``H`` was measured on."""
    d = (weight.double() - quantized.double())
    return float(torch.einsum("oi,ij,oj->", d, hessian.double(), d))


def gptq_layers(model: nn.Module, hessians: Mapping[str, torch.Tensor], damp: float = 0.01) -> list[str]:
    """Replace, in place, the codes and scales of each named int4 fake-quant layer by GPTQ's from its Hessian
    (its float weight is kept); returns the layers done."""
    from .fakequant import Int4WeightLinear

    modules = dict(model.named_modules())
    done = []
    for name, hessian in hessians.items():
        layer = modules.get(name)
        if not isinstance(layer, Int4WeightLinear):
            raise EdgevlaError(f"GPTQ: {name} is not an int4 layer")
        q = gptq_int4(layer.weight.detach(), hessian, layer.group_size, layer.scale_dtype, damp)
        layer.weight_qdata.copy_(q.qdata)
        layer.weight_scale.copy_(q.scale)
        done.append(name)
    return done


__all__ = ["BLOCK", "gptq_int4", "gptq_int4_reference", "gptq_layers", "input_hessians", "output_error"]
