"""Fold inference-mode BatchNorm into the convolution before it, so the folded filter is what gets quantized.

In eval mode ``BatchNorm(conv(x))`` is ``conv'(x)`` with, per output channel ``c``::

    f_c  = γ_c / sqrt(var_c + ε)
    W'_c = W_c · f_c
    b'_c = (b_c − mean_c) · f_c + β_c

The ONNX exporter makes the same fold on a float model, so the ``Conv`` it
writes holds ``W'``, not the parameter ``W``. A quantized convolution must
therefore be folded first: its per-filter int8 scales are then chosen for the
weight that ships, and the Q/DQ export finds ``W'`` under the convolution's
own name. The fold is exact in real arithmetic; in float32 it changes outputs
by rounding only.

Pairs are found on the ``torch.export`` graph (as SmoothQuant's are): a
``BatchNorm1d/2d/3d`` with running statistics whose every call reads a call of
one convolution, every call of which feeds only that BatchNorm. Anything else
(a convolution whose output also feeds a residual, a BatchNorm in training
mode or without running statistics) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fakequant import is_convolution
from .smoothquant import _owner, module_calls, trace_program

_CONVOLUTION_OPS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution", "aten._convolution")
_BATCH_NORM_OPS = ("aten.batch_norm", "aten._native_batch_norm_legit_no_training", "aten.native_batch_norm")


@dataclass(frozen=True)
class FoldedNorm:
    """One BatchNorm folded into the convolution before it."""

    conv: str
    norm: str


def find_conv_batch_norms(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[FoldedNorm]:
    """The (convolution, BatchNorm) pairs of ``model`` whose fold is exact (see the module docstring)."""
    modules = dict(model.named_modules())
    program = trace_program(model, example, "BatchNorm folding")

    conv_calls = module_calls(program, modules, _CONVOLUTION_OPS, is_convolution)
    norm_calls = module_calls(program, modules, _BATCH_NORM_OPS,
                              lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm))

    pairs = []
    for norm, calls in norm_calls.items():
        bn = modules[norm]
        if bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics at inference too: nothing constant to fold
        sources = {_owner(call.args[0]) if isinstance(call.args[0], torch.fx.Node) else None for call in calls}
        if len(sources) != 1 or None in sources:
            continue
        conv = sources.pop()
        own = conv_calls.get(conv, [])
        if (not own or any(call.args[0] not in own for call in calls)
                or any(len(c.users) != 1 or next(iter(c.users)) not in calls for c in own)):
            continue  # the convolution's output is read by something else too: the fold would change it
        if modules[conv].out_channels != bn.num_features:
            continue
        pairs.append(FoldedNorm(conv, norm))
    return pairs


@torch.no_grad()
def fold_batch_norm(model: nn.Module, pair: FoldedNorm) -> None:
    """Fold ``pair.norm`` into ``pair.conv`` in place; the BatchNorm becomes ``nn.Identity``."""
    conv, bn = model.get_submodule(pair.conv), model.get_submodule(pair.norm)
    factor = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        factor = factor * bn.weight.double()
    shift = -bn.running_mean.double() * factor
    if conv.bias is not None:
        shift = shift + conv.bias.double() * factor
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * factor.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype))
    else:
        conv.bias.copy_(shift.to(conv.bias.dtype))
    parent, _, child = pair.norm.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def fold_batch_norms(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[FoldedNorm]:
    """Fold every foldable BatchNorm of ``model`` into its convolution, in place; returns the pairs folded."""
    pairs = find_conv_batch_norms(model, example)
    for pair in pairs:
        fold_batch_norm(model, pair)
    return pairs


__all__ = ["FoldedNorm", "find_conv_batch_norms", "fold_batch_norm", "fold_batch_norms"]
