"""One call from a float policy to a fake-quant one, and the target precision checks.

:func:`quantize_policy` strings the pieces together for a policy (any
``nn.Module`` with a spec): calibration data → optional SmoothQuant →
calibration of every Linear input → :func:`quantize_` → rounding of what stays
in floating point to its storage type. It quantizes a copy; the float policy
stays usable as the reference.

Formats (``FORMATS``):

* ``w8a8``  — int8 per-channel weights, static per-tensor int8 activations.
* ``w8a16`` — int8 per-channel weights, float activations.
* ``w4a16`` — int4 weights in groups of ``group_size`` input channels. A Linear
  whose input width that size does not divide takes the largest of 32 / 64 /
  128 below it that does; a layer no group size divides (a 2-wide state
  embedding, say) keeps int8 weights. The chosen group of every layer is in
  :attr:`QuantizeResult.group_sizes`.
* ``fp8``   — E4M3 weights (per channel) and activations (per tensor), for
  targets with fp8 tensor cores.
* ``fp16``  — every weight stored in fp16; no integer layers.

The quantized layers are the ``nn.Linear`` and the forward convolutions
(``nn.Conv1d/2d/3d``). A convolution gets int8 weights, one scale per filter,
under w8a8 (and a static int8 input), w8a16 and w4a16 (int4 is a Linear
format); under fp8 it stays float. A ``BatchNorm`` after a convolution is
folded into it first (:func:`edgevla.quant.fold.fold_batch_norms`), so the
scales fit the filter that ships.

Tables — embeddings, position and query tables: float tensors of two or more
dimensions that are not a layer's weights (Linear, Conv, recurrent, fused
attention) — are stored int8 with a
power-of-two per-tensor scale (:func:`round_tables`) unless ``tables=False``.
Whatever else is not quantized (biases, norms, small tensors, and layers
skipped by mixed precision) is stored as ``float_dtype`` — fp16, bf16 or fp32.
Both roundings are applied to the fake-quant model itself, so the PyTorch
model computes with exactly the values the ONNX file stores and the two can
be compared bit for bit.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import EdgevlaError
from ..spec import spec_of
from .awq import AwqScale, awq_
from .calibrate import METHODS, calibrate, calibration_observations, iter_batches
from .fakequant import (
    FakeQuantLayer,
    Float8StaticActivationFloat8WeightConfig,
    Int4WeightOnlyConfig,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    PerLayerConfig,
    QuantConfig,
    float_mode,
    is_any_convolution,
    is_convolution,
    quantizable_layers,
    quantize_,
)
from .fold import FoldedNorm, fold_batch_norms
from .ladder import FLOAT, form_config, parse_form
from .primitives import GROUP_SIZES, cast_roundtrip, dequantize, int8_table, int8_table_fits
from .smoothquant import smooth_quant

FORMATS = ("w8a8", "w8a16", "w4a16", "fp16", "fp8")
FLOAT_DTYPES = ("fp16", "bf16", "fp32")
MIN_TABLE_ELEMENTS = 256  # smaller tensors are not worth a DequantizeLinear
# What each format needs the target to run natively (names as in a target's facts.precisions).
_NEEDS = {"w8a8": "int8", "w8a16": "int8", "w4a16": "int4", "fp8": "fp8", "fp16": "fp16", "bf16": "bf16",
          "fp32": "fp32"}
_ACTIVATION_FORMATS = ("w8a8", "fp8")
INT4_ROUNDINGS = ("nearest", "gptq")  # how int4 weights round: to the nearest code, or by GPTQ (.gptq)
INT4_SCALINGS = ("none", "awq")  # whether int4 readers' input channels are scaled first by AWQ (.awq)


def check_precision_supported(target, fmt: str) -> None:
    """Raise :class:`EdgevlaError` when ``target`` cannot run ``fmt`` (fp8 on Orin, for instance).

    Weight-only int4 and int8 run as integer weights dequantized in fp16
    kernels, so they also pass with fp16; the others need their own precision.
    """
    if fmt not in _NEEDS:
        raise EdgevlaError(f"unknown quantization format {fmt!r}; expected one of {', '.join(_NEEDS)}")
    precisions = tuple(target.facts.precisions)
    need = _NEEDS[fmt]
    ok = need in precisions or (fmt in ("w4a16", "w8a16") and "fp16" in precisions)
    if not ok:
        raise EdgevlaError(f"target {target.name} cannot run {fmt}: it supports {', '.join(precisions)}")


def storage_dtype(target, requested: str = "auto") -> str:
    """The float type for tensors that stay in floating point: ``requested``, or with ``auto`` the
    narrowest the target runs (fp16, then bf16, else fp32). A type the target does not list is refused."""
    if requested == "auto":
        precisions = tuple(target.facts.precisions)
        return next((p for p in ("fp16", "bf16") if p in precisions), "fp32")
    if requested not in FLOAT_DTYPES:
        raise EdgevlaError(f"unknown float storage type {requested!r}; expected auto or one of {', '.join(FLOAT_DTYPES)}")
    if requested not in target.facts.precisions:
        raise EdgevlaError(f"float storage {requested}: target {target.name} does not run it (it supports "
                           f"{', '.join(target.facts.precisions)}); use auto or one of those")
    return requested


@dataclass
class QuantizeResult:
    model: nn.Module
    formats: dict[str, str]  # layer name (Linear or convolution) -> format ("float" when skipped)
    activation_amax: dict[str, float] = field(default_factory=dict)
    smoothed: list[str] = field(default_factory=list)  # what SmoothQuant folded into: norms, value (up / v) Linears
    group_sizes: dict[str, int] = field(default_factory=dict)  # int4 layers -> their group size
    float_dtype: str = "fp32"
    rounded: list[str] = field(default_factory=list)  # float tensors rounded to float_dtype
    tables: list[str] = field(default_factory=list)  # tensors put on their int8 grid
    folded_norms: list[str] = field(default_factory=list)  # "norm -> conv": BatchNorms folded before quantizing
    notes: list[str] = field(default_factory=list)  # layers left float, and why
    awq: list[AwqScale] = field(default_factory=list)  # groups whose int4 readers AWQ scaled (.awq)


def layer_group_size(in_features: int, group_size: int) -> int | None:
    """The largest int4 group size <= ``group_size`` that divides ``in_features`` (None when none does)."""
    if group_size not in GROUP_SIZES:
        raise EdgevlaError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
    return next((g for g in sorted(GROUP_SIZES, reverse=True) if g <= group_size and in_features % g == 0), None)


def quantize_policy(policy: nn.Module, fmt: str, *, calibration: str | os.PathLike | None = None,
                    batches: Sequence[tuple[torch.Tensor, ...]] | None = None, samples: int = 256,
                    method: str = "minmax", smoothquant_alpha: float | None = None, group_size: int = 128,
                    skip: Iterable[str] = (), forms: Mapping[str, str] | None = None, batch_size: int = 32,
                    float_dtype: str = "fp32", tables: bool = True, smoothquant_reuse: dict | None = None,
                    int4_rounding: str = "nearest", int4_scaling: str = "none",
                    **calibrator_options) -> QuantizeResult:
    """A fake-quant copy of ``policy`` in ``fmt`` (see :data:`FORMATS`).

    Calibration data is ``batches`` (positional tensor tuples in the spec's
    input order) when given, else ``samples`` observations from the
    ``calibration`` directory or the task's calibration split. Layers named in
    ``skip`` (or under a prefix ending in ``.``) stay float; ``forms`` gives
    layers a form of their own instead of ``fmt``'s (:mod:`.ladder`: ``float``,
    ``w8a16``, ``w4a16/g32``; what mixed precision raises them to). Convolutions take
    int8 weights under every integer format (w8a8 quantizes their input too);
    a BatchNorm after one is folded into it first (:mod:`.fold`). ``int4_rounding`` ``gptq`` rounds
    int4 weights by :mod:`.gptq` on the calibration inputs instead of to the nearest code; ``int4_scaling``
    ``awq`` first scales the input channels of int4 Linears that read a norm or a value Linear by :mod:`.awq`
    (:attr:`QuantizeResult.awq`). ``smoothquant_reuse`` is
    :func:`~.smoothquant.smooth_quant`'s ``reuse``: calls with the same policy and batches that differ in
    ``smoothquant_alpha`` alone share one SmoothQuant analysis.
    """
    if fmt not in FORMATS:
        raise EdgevlaError(f"unknown quantization format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if method not in METHODS:
        raise EdgevlaError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    if int4_rounding not in INT4_ROUNDINGS:
        raise EdgevlaError(f"unknown int4 rounding {int4_rounding!r}; expected one of {', '.join(INT4_ROUNDINGS)}")
    if int4_scaling not in INT4_SCALINGS:
        raise EdgevlaError(f"unknown int4 scaling {int4_scaling!r}; expected one of {', '.join(INT4_SCALINGS)}")
    if float_dtype not in FLOAT_DTYPES:
        raise EdgevlaError(f"unknown float storage type {float_dtype!r}; expected one of {', '.join(FLOAT_DTYPES)}")
    spec = spec_of(policy)
    model = copy.deepcopy(policy).eval()
    layers = quantizable_layers(model)
    if any(isinstance(m, FakeQuantLayer) for m in layers.values()):
        raise EdgevlaError(f"{type(policy).__name__} is already quantized; quantize the float model")
    forms = dict(forms or {})
    strangers = [n for n in forms if n not in layers]
    if strangers:
        raise EdgevlaError(f"per-layer forms name no nn.Linear or convolution: {', '.join(strangers[:5])}")
    if fmt == "fp16":
        if forms:
            raise EdgevlaError("fp16 quantizes no layer: there is no per-layer form to give")
        rounded = round_float_storage(model, "fp16")
        return QuantizeResult(model, {n: "fp16" for n in layers}, float_dtype="fp16", rounded=rounded)

    probe = QuantConfig(skip=tuple(skip) + tuple(n for n, f in forms.items() if parse_form(f)[0] == FLOAT))
    unknown = [s for s in probe.skip if not any(n == s or (s.endswith(".") and n.startswith(s)) for n in layers)]
    if unknown:
        raise EdgevlaError(f"skip list names no nn.Linear or convolution: {', '.join(unknown)}")
    chosen = [n for n, m in layers.items() if not probe.skips(n) and (fmt != "fp8" or not is_any_convolution(m))]
    notes = ["fp8 is a Linear format: the convolutions stay float"] if fmt == "fp8" and any(
        is_any_convolution(m) for m in layers.values()) else []
    table_names = round_tables(model) if tables else []  # before calibration: activations see the shipped tables
    folded: list[FoldedNorm] = []
    if any(is_convolution(layers[n]) for n in chosen):
        example = tuple(batches[0]) if batches else tuple(
            torch.from_numpy(a) for a in spec.example(batch=2, seed=0).values())
        try:
            folded = fold_batch_norms(model, example)
        except EdgevlaError as e:  # untraceable: a BatchNorm could not be found, so no convolution is quantized
            chosen = [n for n in chosen if not is_convolution(layers[n])]
            notes.append(f"convolutions stay float: {e}")
        layers = quantizable_layers(model)
    # Group scales follow fp16 storage; int8 and fp8 scales stay fp32 (one per channel, and TensorRT wants them so).
    int4_scales = "fp16" if float_dtype == "fp16" else "fp32"
    configs: dict[str, QuantConfig] = {}
    for name in chosen:  # the weight-only forms; w8a8 / fp8 layers wait for their activation ranges
        if name in forms:
            configs[name] = form_config(forms[name], layers[name], name, int4_scales)
        elif fmt == "w8a16" or (fmt == "w4a16" and is_any_convolution(layers[name])):
            configs[name] = Int8WeightOnlyConfig()  # w4a16 too: int4 is a Linear format
        elif fmt == "w4a16":
            g = layer_group_size(layers[name].in_features, group_size)
            # no group size divides the input width: int8 weights, still weight-only
            configs[name] = (Int8WeightOnlyConfig() if g is None
                             else Int4WeightOnlyConfig(group_size=g, scale_dtype=int4_scales))
    groups = {n: c.group_size for n, c in configs.items() if isinstance(c, Int4WeightOnlyConfig)}
    smoothed: list[str] = []
    scaled: list[AwqScale] = []
    amax: dict[str, float] = {}
    needs_activations = fmt in _ACTIVATION_FORMATS
    if needs_activations or smoothquant_alpha is not None or (groups and (int4_rounding == "gptq"
                                                                         or int4_scaling == "awq")):
        if batches is None:
            obs = calibration_observations(spec, calibration, samples)
            batches = list(iter_batches(spec, obs, batch_size))
        batches = [tuple(b) for b in batches]
        if not batches:
            raise EdgevlaError("calibration needs at least one batch")
        if smoothquant_alpha is not None:
            smoothed = [g.norm for g in smooth_quant(model, batches, smoothquant_alpha,
                                                     reuse=smoothquant_reuse)["groups"]]
        if groups and int4_scaling == "awq":
            scaled = awq_(model, groups, batches, int4_scales, int4_rounding)
        static = [n for n in chosen if n not in forms]  # a raised form keeps its input float
        if needs_activations and static:
            amax = calibrate(model, batches, method, layers=static, **calibrator_options)
    for name in chosen:
        if name in configs:
            continue
        if fmt == "w8a8":
            configs[name] = Int8StaticActivationInt8WeightConfig(activation_amax={name: amax[name]})
        else:
            configs[name] = Float8StaticActivationFloat8WeightConfig(activation_amax={name: amax[name]})
    formats = quantize_(model, PerLayerConfig(layers=configs))
    if groups and int4_rounding == "gptq":
        _round_int4_by_gptq(model, list(groups), batches)
    rounded = round_float_storage(model, float_dtype)
    return QuantizeResult(model, formats, amax, smoothed, groups, float_dtype, rounded, table_names,
                          [f"{p.norm} -> {p.conv}" for p in folded], notes, scaled)


def _round_int4_by_gptq(model: nn.Module, layers: list[str], batches, budget_bytes: int = 1 << 30) -> None:
    """GPTQ's codes for the int4 ``layers`` (:mod:`.gptq`), their Hessians measured on the float model (the
    fake-quant layers in float mode) a few layers at a time, at most ``budget_bytes`` of them at once."""
    from .gptq import gptq_layers, input_hessians

    modules = dict(model.named_modules())
    chunk: list[str] = []
    for i, name in enumerate(layers):
        chunk.append(name)
        size = sum(modules[n].in_features ** 2 * 8 for n in chunk)
        if i + 1 == len(layers) or size + modules[layers[i + 1]].in_features ** 2 * 8 > budget_bytes:
            with float_mode(model):
                hessians = input_hessians(model, chunk, batches)
            gptq_layers(model, hessians)
            chunk = []


# Modules that multiply by their 2-D parameters: those are weights (their rows want scales of their own), not
# tables looked up or added. PyTorch's recurrent layers and a fused nn.MultiheadAttention keep theirs float.
_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.Bilinear)


def table_tensors(model: nn.Module, min_elements: int = MIN_TABLE_ELEMENTS) -> dict[str, torch.Tensor]:
    """Float32 parameters and buffers of >= 2 dimensions and ``min_elements`` that are not a layer's
    weights (:data:`_WEIGHT_LAYERS`: Linear, Conv, LSTM/GRU/RNN, a fused MultiheadAttention, Bilinear):
    embeddings, position tables, learned queries. What :func:`round_tables` rounds.

    A tensor the int8 grid cannot hold is not a table: an attention mask of ``-inf`` (or of
    ``finfo(float32).min``, whose power-of-two grid point overflows to ``-inf``) stays float and exact.

    The exporter stores them int8 unless the graph reads one as a MatMul / Gemm / Conv weight (it
    would need per-channel scales); such a table ships in the float storage type, on its int8 grid.
    """
    owned_by_layers = {f"{n}.{leaf}" if n else leaf for n, m in model.named_modules()
                       if isinstance(m, _WEIGHT_LAYERS)
                       for leaf, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))}
    found: dict[str, torch.Tensor] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if (name not in owned_by_layers and t.dtype == torch.float32 and t.ndim >= 2
                and t.numel() >= min_elements and int8_table_fits(t)):
            found[name] = t
    return found


@torch.no_grad()
def round_tables(model: nn.Module, min_elements: int = MIN_TABLE_ELEMENTS) -> list[str]:
    """Put every table (:func:`table_tensors`) on its power-of-two int8 grid, in place; returns their names."""
    done: set[int] = set()
    for name, t in table_tensors(model, min_elements).items():
        if id(t) not in done:
            codes, scale = int8_table(t)
            t.copy_(dequantize(codes, scale))
            done.add(id(t))
    return list(table_tensors(model, min_elements))


@torch.no_grad()
def round_float_storage(model: nn.Module, dtype: str) -> list[str]:
    """Round, in place, every float parameter and buffer that stays in floating point to ``dtype``.

    The float weight a fake-quant layer keeps (the source of its codes) and
    its quantization buffers are left alone: what ships for those is the
    integer codes and fp32 scales. Returns the names of the tensors rounded.
    """
    if dtype not in FLOAT_DTYPES:
        raise EdgevlaError(f"unknown float storage type {dtype!r}; expected one of {', '.join(FLOAT_DTYPES)}")
    if dtype == "fp32":
        return []
    quantized = {n for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}
    rounded = []
    seen: set[int] = set()
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)),
                        ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, t in named:
            owner, _, leaf = name.rpartition(".")
            if owner in quantized and (kind == "buffer" or leaf == "weight"):
                continue
            if not t.is_floating_point() or t.dtype != torch.float32:
                continue
            if id(t) not in seen:
                t.copy_(cast_roundtrip(t, dtype))
                seen.add(id(t))
            rounded.append(name)
    return rounded
