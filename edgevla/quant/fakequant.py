"""Fake-quant Linear and convolution layers and the ``quantize_(model, config)`` API.

A fake-quant layer computes in float what the deployed integer kernel
computes: its weight is the dequantized int8 / int4 weight, and under W8A8
its input is rounded to the static int8 grid first. That makes the accuracy
of the quantized model measurable in PyTorch, and gives the exact reference
the Q/DQ ONNX model (:mod:`edgevla.export.qdq`) must reproduce.

Configs follow torchao's ``<Activation><Weight>Config`` naming:

* :class:`Int8StaticActivationInt8WeightConfig` — W8A8: int8 per-channel
  weights, a static per-tensor int8 scale on each layer's input.
* :class:`Int8WeightOnlyConfig` — W8A16: int8 per-channel weights, float activations.
* :class:`Int4WeightOnlyConfig` — W4A16: int4 weights in groups of 32/64/128.
* :class:`Float8StaticActivationFloat8WeightConfig` — FP8 E4M3 weights
  (per channel) and activations (static per tensor), for targets with fp8.

The layers are ``nn.Linear``, the forward convolutions ``nn.Conv1d/2d/3d``
(any groups, stride, dilation or padding mode), whose per-channel scales are
one per filter, and the transposed convolutions ``nn.ConvTranspose1d/2d/3d``
of one group (a U-Net's up-sampling), whose ``(in, out, *kernel)`` weight is
scaled per output channel along axis 1 (with groups, the output channels are
spread over the groups and no single axis holds them: such a layer stays
float). The two int8 configs take them all; int4 and fp8 take Linears only
(TensorRT runs no int4 convolution, and edgevla does not export fp8 ones), so
under them a convolution stays float.

Every config takes ``skip``: layer names (exact, or a prefix ending in
``.``) that stay in floating point (fp16 on the device).
:class:`PerLayerConfig` gives each named layer its own config (mixed
precision, or int4 group sizes that differ by layer).

Quantization-aware training: in :func:`qat_mode` every fake-quant layer
quantizes its *current* float weight (scales recomputed from it) and its
input with a straight-through estimator, so gradients reach the float
weights; :func:`refresh_quantized` then re-derives the stored codes and scales
from the trained weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevlaError
from .primitives import (
    FP8_E4M3_MAX,
    GROUP_SIZES,
    channel_amax,
    per_channel,
    Int4GroupedWeight,
    Int8Weight,
    activation_scale,
    INT4_MAX,
    INT4_MIN,
    INT8_MAX,
    SCALE_DTYPES,
    fake_quantize,
    fake_quantize_fp8,
    fake_quantize_ste,
    fp16_scale,
    fp8_scale,
    scale_from_amax,
)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class QuantConfig:
    skip: tuple[str, ...] = ()

    def skips(self, name: str) -> bool:
        return any(name == s or (s.endswith(".") and name.startswith(s)) for s in self.skip)


@dataclass(frozen=True)
class Int8StaticActivationInt8WeightConfig(QuantConfig):
    """W8A8; ``activation_amax`` maps each quantized Linear to its calibrated input clip value."""

    activation_amax: Mapping[str, float] = field(default_factory=dict)
    format_name = "w8a8"


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantConfig):
    format_name = "w8a16"


@dataclass(frozen=True)
class Int4WeightOnlyConfig(QuantConfig):
    """W4A16; ``scale_dtype`` fp16 stores the group scales (and the dequantized weight) in fp16."""

    group_size: int = 128
    scale_dtype: str = "fp32"
    format_name = "w4a16"

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise EdgevlaError(f"int4 group size must be one of {GROUP_SIZES}, got {self.group_size}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise EdgevlaError(f"int4 scale type must be one of {SCALE_DTYPES}, got {self.scale_dtype!r}")


@dataclass(frozen=True)
class Float8StaticActivationFloat8WeightConfig(QuantConfig):
    activation_amax: Mapping[str, float] = field(default_factory=dict)
    format_name = "fp8"


@dataclass(frozen=True)
class PerLayerConfig(QuantConfig):
    """One config per Linear, by exact name; Linears not named (or skipped) stay float."""

    layers: Mapping[str, QuantConfig] = field(default_factory=dict)
    format_name = "mixed"

    def __post_init__(self) -> None:
        nested = [n for n, c in self.layers.items() if not isinstance(c, QuantConfig) or isinstance(c, PerLayerConfig)]
        if nested:
            raise EdgevlaError(f"PerLayerConfig needs a plain quantization config per layer ({nested[0]})")

    def for_layer(self, name: str) -> QuantConfig | None:
        return None if self.skips(name) else self.layers.get(name)


# --------------------------------------------------------------------------- modules


class FakeQuantLayer(nn.Module):
    """Base: a layer that keeps its float weight and computes with a quantized one.

    The float ``weight`` stays a parameter so the module still exports (in
    :func:`float_mode`) as the plain float graph whose initializers
    :mod:`edgevla.export.qdq` replaces by the quantized ones. Subclasses
    give the operation (:meth:`_compute`: a Linear's or a convolution's) and
    the format (what the weight and the input become).
    """

    format_name = "float"
    float_mode: bool
    qat: bool
    weight_axis = 0  # the output channels' axis of the weight

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantized_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def training_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The current float weight fake-quantized with a straight-through gradient (QAT)."""
        raise NotImplementedError

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as :meth:`quantize_input` sees it, with a straight-through gradient (QAT)."""
        return x

    @torch.no_grad()
    def refresh(self) -> None:  # pragma: no cover - abstract
        """Re-derive the stored codes and weight scales from the float weight (after QAT)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, **call) -> torch.Tensor:
        """``call``: what the replaced module's forward takes besides its input (a transposed convolution's
        ``output_size``)."""
        if self.float_mode:
            return self._compute(x, self.weight, **call)
        if self.qat:
            return self._compute(self.training_input(x), self.training_weight().to(x.dtype), **call)
        return self._compute(self.quantize_input(x), self.quantized_weight().to(x.dtype), **call)

    def shipped_bytes(self) -> int:
        """Bytes the exported layer stores: quantized weight, scales and bias.

        Not the float ``weight``, which the module keeps only for export and QAT;
        what metrics count for memory traffic (the roofline's weight bytes).
        """
        tensors = list(self.buffers(recurse=False)) + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors) + self._unbuffered_weight_bytes()

    def _unbuffered_weight_bytes(self) -> int:
        """Bytes of a stored weight that no buffer holds (computed at export, as fp8's codes are)."""
        return 0

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.format_name}"


class FakeQuantLinear(FakeQuantLayer, nn.Linear):
    """An ``nn.Linear`` computing with its quantized weight (the format comes from a subclass)."""

    def __init__(self, linear: nn.Linear):
        nn.Linear.__init__(self, linear.in_features, linear.out_features, bias=linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
        _copy_parameters(self, linear)

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


#: ``F.convNd`` by number of spatial dimensions: what a fake-quant convolution calls.
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


#: ``F.conv_transposeNd`` by number of spatial dimensions.
_CONV_TRANSPOSE_FUNCTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def is_convolution(module: nn.Module) -> bool:
    """A forward convolution of 1-3 spatial dims (``nn.Conv1d/2d/3d``, or a fake-quant one); not a transposed one."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and len(module.kernel_size) in (1, 2, 3)


def is_transposed_convolution(module: nn.Module) -> bool:
    """A transposed convolution of 1-3 spatial dims and one group (``nn.ConvTranspose1d/2d/3d``, or a fake-quant
    one): the kind the int8 formats quantize, per output channel along its weight's axis 1."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.transposed and module.groups == 1
            and len(module.kernel_size) in (1, 2, 3))


def is_any_convolution(module: nn.Module) -> bool:
    """A forward or a transposed convolution the int8 formats quantize (not a Linear)."""
    return is_convolution(module) or is_transposed_convolution(module)


class FakeQuantConv(FakeQuantLayer, nn.modules.conv._ConvNd):
    """An ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` computing with its quantized weight: per output
    channel scales (a filter's, axis 0; a transposed convolution's, axis 1).

    The same attributes, parameter names and ``F.convNd`` / ``F.conv_transposeNd``
    call as the module it replaces (a transposed one takes ``output_size`` as
    ``nn.ConvTranspose*d`` does), so its float-mode export is the float model's
    ``Conv`` or ``ConvTranspose`` node.
    """

    def __init__(self, conv: nn.modules.conv._ConvNd):
        if not is_any_convolution(conv):
            raise EdgevlaError(f"{type(conv).__name__} is not a 1-3 d forward convolution or a 1-3 d transposed "
                               "one of one group")
        nn.modules.conv._ConvNd.__init__(
            self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.transposed, conv.output_padding, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype)
        _copy_parameters(self, conv)

    @property
    def weight_axis(self) -> int:
        return 1 if self.transposed else 0

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.transposed:
            n = len(self.kernel_size)
            output_padding = nn.modules.conv._ConvTransposeNd._output_padding(
                self, x, output_size, self.stride, self.padding, self.kernel_size, n, self.dilation)
            return _CONV_TRANSPOSE_FUNCTIONS[n](x, weight, self.bias, self.stride, self.padding, output_padding,
                                                self.groups, self.dilation)
        if output_size is not None:
            raise EdgevlaError("output_size is an argument of transposed convolutions only")
        conv = _CONV_FUNCTIONS[len(self.kernel_size)]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _copy_parameters(new: nn.Module, old: nn.Module) -> None:
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.float_mode = False
    new.qat = False


class Int8Weights:
    """Format mixin, W8A16: int8 weights, one scale per output channel (a Linear's row, a convolution's filter)."""

    format_name = "w8a16"

    def _quantize_weight(self) -> None:
        q = Int8Weight.from_hp(self.weight, self.weight_axis)
        self.register_buffer("weight_qdata", q.qdata)
        self.register_buffer("weight_scale", q.scale)

    @property
    def int8_weight(self) -> Int8Weight:
        return Int8Weight(self.weight_qdata, self.weight_scale, self.weight_axis)

    def quantized_weight(self) -> torch.Tensor:
        return self.int8_weight.dequantize()

    def training_weight(self) -> torch.Tensor:
        scale = scale_from_amax(channel_amax(self.weight.detach(), self.weight_axis), INT8_MAX)
        return fake_quantize_ste(self.weight, per_channel(scale, self.weight.ndim, self.weight_axis))

    @torch.no_grad()
    def refresh(self) -> None:
        q = Int8Weight.from_hp(self.weight, self.weight_axis)
        self.weight_qdata.copy_(q.qdata)
        self.weight_scale.copy_(q.scale)


class StaticInt8Input:
    """Format mixin, the A8 of W8A8: the input rounded to a static per-tensor int8 grid."""

    format_name = "w8a8"

    def _set_input_scale(self, input_amax: float) -> None:
        self.register_buffer("input_scale", torch.tensor(activation_scale(float(input_amax)), dtype=torch.float32))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.input_scale)

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_ste(x, self.input_scale)


class Int8WeightLinear(Int8Weights, FakeQuantLinear):
    """W8A16 Linear: int8 per-output-channel weights."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self._quantize_weight()


class Int8ActivationInt8WeightLinear(StaticInt8Input, Int8WeightLinear):
    """W8A8 Linear: int8 weights and a static per-tensor int8 scale on the input."""

    def __init__(self, linear: nn.Linear, input_amax: float):
        super().__init__(linear)
        self._set_input_scale(input_amax)


class Int8WeightConv(Int8Weights, FakeQuantConv):
    """W8A16 convolution (forward or transposed): int8 weights, one scale per output channel."""

    def __init__(self, conv: nn.modules.conv._ConvNd):
        super().__init__(conv)
        self._quantize_weight()


class Int8ActivationInt8WeightConv(StaticInt8Input, Int8WeightConv):
    """W8A8 convolution (forward or transposed): int8 weights and a static per-tensor int8 scale on the input."""

    def __init__(self, conv: nn.modules.conv._ConvNd, input_amax: float):
        super().__init__(conv)
        self._set_input_scale(input_amax)


class Int4WeightLinear(FakeQuantLinear):
    """W4A16: packed int4 weights with one scale per group of input channels."""

    format_name = "w4a16"

    def __init__(self, linear: nn.Linear, group_size: int, scale_dtype: str = "fp32"):
        super().__init__(linear)
        q = Int4GroupedWeight.from_hp(linear.weight, group_size, scale_dtype)
        self.group_size = group_size
        self.scale_dtype = scale_dtype
        self.register_buffer("weight_qdata", q.qdata)  # uint8, two codes per byte
        self.register_buffer("weight_scale", q.scale)  # float32 (fp16 values when scale_dtype is fp16)

    @property
    def int4_weight(self) -> Int4GroupedWeight:
        return Int4GroupedWeight(self.weight_qdata, self.weight_scale, self.group_size,
                                 (self.out_features, self.in_features), self.scale_dtype)

    def quantized_weight(self) -> torch.Tensor:
        return self.int4_weight.dequantize()

    def training_weight(self) -> torch.Tensor:
        out, inp = self.weight.shape
        groups = self.weight.reshape(out, inp // self.group_size, self.group_size)
        scale = scale_from_amax(groups.detach().abs().amax(dim=2), INT4_MAX)
        if self.scale_dtype == "fp16":
            scale = fp16_scale(scale)
        return fake_quantize_ste(groups, scale[..., None], INT4_MIN, INT4_MAX).reshape(out, inp)

    @torch.no_grad()
    def refresh(self) -> None:
        q = Int4GroupedWeight.from_hp(self.weight, self.group_size, self.scale_dtype)
        self.weight_qdata.copy_(q.qdata)
        self.weight_scale.copy_(q.scale)


class Float8Linear(FakeQuantLinear):
    """FP8 E4M3: per-output-channel weight scales, static per-tensor input scale."""

    format_name = "fp8"

    def __init__(self, linear: nn.Linear, input_amax: float):
        super().__init__(linear)
        w = linear.weight.detach().float()
        self.register_buffer("weight_scale", fp8_scale(w.abs().amax(dim=1)))
        self.register_buffer("input_scale", fp8_scale(torch.tensor(float(input_amax))))

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize_fp8(self.weight.detach().float(), self.weight_scale[:, None])

    def weight_codes(self) -> torch.Tensor:
        """The E4M3 weight as stored on the device: ``fp8(clamp(W / scale, ±448))``."""
        w = self.weight.detach().float() / self.weight_scale[:, None]
        return torch.clamp(w, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)

    def _unbuffered_weight_bytes(self) -> int:
        return self.weight.numel()  # one E4M3 byte per weight, made by weight_codes() at export

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_fp8(x, self.input_scale)

    def training_weight(self) -> torch.Tensor:
        scale = fp8_scale(self.weight.detach().float().abs().amax(dim=1))
        w = self.weight
        return w + (fake_quantize_fp8(w.detach(), scale[:, None]) - w).detach()

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        return x + (fake_quantize_fp8(x.detach(), self.input_scale) - x).detach()

    @torch.no_grad()
    def refresh(self) -> None:
        self.weight_scale.copy_(fp8_scale(self.weight.detach().float().abs().amax(dim=1)))


# --------------------------------------------------------------------------- API


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear``, forward convolution (``nn.Conv1d/2d/3d``) and one-group transposed convolution
    (``nn.ConvTranspose1d/2d/3d``) of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_any_convolution(m)}


def quantize_(model: nn.Module, config: QuantConfig) -> dict[str, str]:
    """Swap, in place, every ``nn.Linear`` and convolution of ``model`` for its fake-quant version.

    Returns ``{layer name: format}`` for every such layer, ``"float"`` for the
    skipped ones and for convolutions under a config they do not take (int4
    and fp8 are Linear formats: a convolution gets int8 weights or stays
    float). Activation configs need a clip value for every layer they
    quantize (from :func:`edgevla.quant.calibrate.calibrate`).
    """
    if not isinstance(model, nn.Module):
        raise EdgevlaError(f"quantize_ takes a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise EdgevlaError(f"quantize_ needs a quantization config, got {type(config).__name__}")
    layers = quantizable_layers(model)
    already = [n for n, m in layers.items() if isinstance(m, FakeQuantLayer)]
    if already:
        raise EdgevlaError(f"{type(model).__name__} is already quantized ({already[0]}); quantize the float model")
    unknown = [s for s in config.skip if not any(n == s or (s.endswith(".") and n.startswith(s)) for n in layers)]
    if unknown:
        raise EdgevlaError(f"skip list names no nn.Linear or convolution: {', '.join(unknown)}")
    if isinstance(config, PerLayerConfig):
        strangers = [n for n in config.layers if n not in layers]
        if strangers:
            raise EdgevlaError(f"per-layer config names no nn.Linear or convolution: {', '.join(strangers[:5])}")
        plan = {n: c for n in layers if (c := config.for_layer(n)) is not None}
        refused = [n for n, c in plan.items() if is_any_convolution(layers[n]) and not _takes_convolutions(c)]
        if refused:
            raise EdgevlaError(f"convolution {refused[0]}: {type(plan[refused[0]]).__name__} is a Linear format; "
                               "convolutions take int8 weights (w8a8 or w8a16) or stay float")
    else:
        plan = {n: config for n, m in layers.items() if not config.skips(n)
                and (not is_any_convolution(m) or _takes_convolutions(config))}
    missing = [n for n, c in plan.items() if getattr(c, "activation_amax", None) is not None
               and n not in c.activation_amax]
    if missing:
        raise EdgevlaError(f"no calibrated activation range for {', '.join(missing[:5])}"
                           f"{' and more' if len(missing) > 5 else ''}; calibrate the model first")
    formats = {n: "float" for n in layers}
    for name, layer_config in plan.items():
        new = _fake_quant_for(layers[name], layer_config, name)
        _set_submodule(model, name, new)
        formats[name] = new.format_name
    return formats


def _takes_convolutions(config: QuantConfig) -> bool:
    return isinstance(config, (Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig))


def _fake_quant_for(layer: nn.Module, config: QuantConfig, name: str) -> FakeQuantLayer:
    if is_any_convolution(layer):
        if isinstance(config, Int8StaticActivationInt8WeightConfig):
            return Int8ActivationInt8WeightConv(layer, config.activation_amax[name])
        return Int8WeightConv(layer)
    if isinstance(config, Int8StaticActivationInt8WeightConfig):
        return Int8ActivationInt8WeightLinear(layer, config.activation_amax[name])
    if isinstance(config, Int8WeightOnlyConfig):
        return Int8WeightLinear(layer)
    if isinstance(config, Int4WeightOnlyConfig):
        if layer.in_features % config.group_size:
            raise EdgevlaError(f"{name}: int4 group size {config.group_size} does not divide its "
                               f"{layer.in_features} input channels; skip the layer or pick another group size")
        return Int4WeightLinear(layer, config.group_size, config.scale_dtype)
    if isinstance(config, Float8StaticActivationFloat8WeightConfig):
        return Float8Linear(layer, config.activation_amax[name])
    raise EdgevlaError(f"unsupported quantization config {type(config).__name__}")


def restore_quantized(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Swap, in place, the layers whose saved state is a fake-quant layer's, so ``state_dict`` loads.

    The inverse of :func:`quantize_` for a saved model (a bundle's
    ``weights.safetensors``): each layer's format is read off the tensors it
    saved — int8 codes with an input scale (w8a8), int8 codes alone (w8a16),
    packed uint8 codes (w4a16, the group size from the scales' shape), an
    input scale without codes (fp8). Scales and codes are placeholders until
    ``model.load_state_dict(state_dict)``. Returns ``{name: format}`` of the
    swapped layers.
    """
    formats = {}
    for name, layer in [(n, m) for n, m in quantizable_layers(model).items() if not isinstance(m, FakeQuantLayer)]:
        codes, weight = state_dict.get(f"{name}.weight_qdata"), state_dict.get(f"{name}.weight")
        has_input_scale = f"{name}.input_scale" in state_dict
        if codes is None and not has_input_scale:
            continue
        if weight is None or f"{name}.weight_scale" not in state_dict:
            raise EdgevlaError(f"{name}: the saved quantized layer lacks its float weight or weight scale")
        if is_any_convolution(layer):
            if codes is None or codes.dtype != torch.int8 or tuple(codes.shape) != tuple(layer.weight.shape):
                raise EdgevlaError(f"{name}: the saved convolution is not int8 codes of its weight's shape "
                                   f"{tuple(layer.weight.shape)}")
            new: FakeQuantLayer = (Int8ActivationInt8WeightConv(layer, 1.0) if has_input_scale
                                   else Int8WeightConv(layer))
            _set_submodule(model, name, new)
            formats[name] = new.format_name
            continue
        layer = _shaped_like(layer, weight)
        if codes is None:
            new = Float8Linear(layer, 1.0)
        elif codes.dtype == torch.uint8:
            groups = state_dict[f"{name}.weight_scale"].shape[-1]
            if groups < 1 or weight.shape[1] % groups:
                raise EdgevlaError(f"{name}: {groups} int4 scale groups do not divide {weight.shape[1]} inputs")
            new = Int4WeightLinear(layer, weight.shape[1] // groups)
        elif has_input_scale:
            new = Int8ActivationInt8WeightLinear(layer, 1.0)
        else:
            new = Int8WeightLinear(layer)
        _set_submodule(model, name, new)
        formats[name] = new.format_name
    return formats


def _shaped_like(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """``linear`` itself, or a stand-in of the saved weight's shape (structured pruning shrank it)."""
    if tuple(linear.weight.shape) == tuple(weight.shape):
        return linear
    return nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantized_layers(model: nn.Module) -> dict[str, FakeQuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}


@contextlib.contextmanager
def qat_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block fake-quant layers train: straight-through fake quantization of the live float
    weights and inputs. On leaving, the stored codes and scales are re-derived from the trained weights."""
    layers = list(quantized_layers(model).values())
    if not layers:
        raise EdgevlaError(f"{type(model).__name__} has no fake-quant layers to train: run quantize_ first")
    try:
        for m in layers:
            m.qat = True
        yield model
    finally:
        for m in layers:
            m.qat = False
        refresh_quantized(model)


def refresh_quantized(model: nn.Module) -> None:
    """Re-derive every fake-quant layer's codes and weight scales from its float weight."""
    for m in quantized_layers(model).values():
        m.refresh()


@contextlib.contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every fake-quant layer computes in float with its original weight."""
    layers = list(quantized_layers(model).values())
    previous = [m.float_mode for m in layers]
    try:
        for m in layers:
            m.float_mode = True
        yield model
    finally:
        for m, p in zip(layers, previous, strict=True):
            m.float_mode = p


__all__ = [
    "FP8_E4M3_MAX", "FakeQuantConv", "FakeQuantLayer", "FakeQuantLinear", "Float8Linear",
    "Float8StaticActivationFloat8WeightConfig", "Int4WeightLinear", "Int4WeightOnlyConfig",
    "Int8ActivationInt8WeightConv", "Int8ActivationInt8WeightLinear", "Int8StaticActivationInt8WeightConfig",
    "Int8WeightConv", "Int8WeightLinear", "Int8WeightOnlyConfig", "Int8Weights", "PerLayerConfig", "QuantConfig",
    "StaticInt8Input", "float_mode", "is_any_convolution", "is_convolution", "is_transposed_convolution", "qat_mode",
    "quantizable_layers", "quantize_", "quantized_layers", "refresh_quantized", "restore_quantized",
]
