"""The precision ladder: the forms a layer can take that are more precise than its build's format.

Mixed precision used to have two rungs, quantized or float. A layer that
rounds badly as int4 in groups of 128 often rounds well in groups of 32 or as
int8 weights, at a quarter or half of an fp16 layer's bytes; a layer whose
*input* per-tensor int8 cannot hold (an outlier channel) is often fine with
int8 weights and its input in float. So each layer climbs, least precise
first:

========  =============================================================
format    rungs above it
========  =============================================================
w4a16     w4a16/g64, w4a16/g32 (finer groups that divide its inputs), w8a16, float
w8a8      w8a16 (int8 weights, float input), float
fp8       w8a16, float
w8a16     float
========  =============================================================

The rungs are ordered by the bytes they ship, not by their error: int8 with
one scale per row rounds a row of mixed scales worse than int4 with one per
32 columns can, so mixed precision measures each rung it tries rather than
assume it better. A form is written ``w8a16``, ``w4a16/g32`` or ``float``. A
convolution takes int8 weights only, so under w4a16 its ladder is float
alone. Every rung ships through the same Q/DQ export and kernels as a build of
that format would.
"""

from __future__ import annotations

from torch import nn

from ..errors import EdgevlaError
from .fakequant import (
    FakeQuantLayer,
    Int4WeightLinear,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    QuantConfig,
    _fake_quant_for,
    is_any_convolution,
)
from .primitives import GROUP_SIZES

FLOAT = "float"
WEIGHT_ONLY_INT8 = "w8a16"


def int4_form(group_size: int) -> str:
    return f"w4a16/g{group_size}"


def parse_form(form: str) -> tuple[str, int | None]:
    """``"w4a16/g32"`` → ``("w4a16", 32)``; ``"w8a16"`` → ``("w8a16", None)``; ``"float"`` likewise."""
    if form in (FLOAT, WEIGHT_ONLY_INT8):
        return form, None
    head, _, group = form.partition("/g")
    if head == "w4a16" and group.isdigit() and int(group) in GROUP_SIZES:
        return head, int(group)
    raise EdgevlaError(f"unknown layer form {form!r}: expected float, w8a16 or w4a16/g<N> with N one of "
                       f"{', '.join(map(str, GROUP_SIZES))}")


def form_config(form: str, layer: nn.Module, name: str, scale_dtype: str = "fp32") -> QuantConfig | None:
    """The quantization config of ``form`` for ``layer`` (None for float), checked against the layer."""
    fmt, group = parse_form(form)
    if fmt == FLOAT:
        return None
    if fmt == WEIGHT_ONLY_INT8:
        return Int8WeightOnlyConfig()
    if is_any_convolution(layer):
        raise EdgevlaError(f"{name}: {form} is a Linear form; a convolution takes w8a16 or float")
    if layer.in_features % group:
        raise EdgevlaError(f"{name}: int4 groups of {group} do not divide its {layer.in_features} input channels")
    return Int4WeightOnlyConfig(group_size=group, scale_dtype=scale_dtype)


def form_of(layer: nn.Module) -> str:
    """The form a layer computes in now (``float`` for a plain layer or one in float mode)."""
    if not isinstance(layer, FakeQuantLayer) or layer.float_mode:
        return FLOAT
    if isinstance(layer, Int4WeightLinear):
        return int4_form(layer.group_size)
    return layer.format_name


def rungs_above(layer: nn.Module) -> list[str]:
    """The forms above ``layer``'s current one, least precise first, ``float`` last (empty for a float layer)."""
    if not isinstance(layer, FakeQuantLayer) or layer.float_mode:
        return []
    if isinstance(layer, Int4WeightLinear):
        finer = [int4_form(g) for g in sorted(GROUP_SIZES, reverse=True)
                 if g < layer.group_size and layer.in_features % g == 0]
        return finer + [WEIGHT_ONLY_INT8, FLOAT]
    if layer.format_name == WEIGHT_ONLY_INT8:
        return [FLOAT]
    return [WEIGHT_ONLY_INT8, FLOAT]  # w8a8 and fp8: drop the input's quantization first


def raised_layer(layer: FakeQuantLayer, form: str, name: str) -> FakeQuantLayer:
    """A new fake-quant layer computing ``layer``'s float weight and bias in ``form`` (a quantized one;
    for ``float`` a layer goes into float mode instead). ``layer`` is left as it was."""
    config = form_config(form, layer, name, getattr(layer, "scale_dtype", "fp32"))
    if config is None:
        raise EdgevlaError(f"{name}: float is not a quantized form; put the layer in float mode")
    return _fake_quant_for(layer, config, name)
