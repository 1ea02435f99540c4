"""Quantize / dequantize primitives: the arithmetic every other quant module builds on.

Conventions (the ones TensorRT's explicit quantization and ONNX's
``QuantizeLinear`` use, so a fake-quant PyTorch model and its Q/DQ ONNX graph
compute the same numbers):

* **Symmetric**: the zero point is always 0, ``q = clamp(round(x / scale), qmin, qmax)``
  and ``x̂ = q * scale``. Rounding is round-half-to-even (``torch.round``,
  ONNX ``QuantizeLinear``); the clamp uses the full signed range
  (``[-128, 127]`` for int8, ``[-8, 7]`` for int4) as ONNX does, while scales are
  chosen from ``amax / 127`` (``amax / 7``) so in-range values never reach the
  asymmetric end.
* **Weights** are quantized per output channel (row ``i`` of a ``Linear``
  weight ``(out, in)``, or filter ``i`` of a convolution weight
  ``(out, in / groups, *kernel)``, has its own scale); int4 per group of
  ``group_size`` consecutive input channels within a row (Linear only).
* **Activations** use one static per-tensor scale from calibration.

Containers follow torchao's vocabulary — ``qdata`` / ``scale`` /
``zero_point``, built by ``from_hp`` (from high precision) and undone by
``dequantize`` — but are plain dataclasses rather than tensor subclasses, so
they serialize and export without special dispatch.

int4 packing: two values per byte, element ``2k`` in the low nibble (bits
0-3) and element ``2k+1`` in the high nibble (bits 4-7), each in 4-bit two's
complement. This is ONNX's ``int4`` layout (first element in the least
significant bits), so packed bytes go into an ONNX initializer unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import EdgevlaError

INT8_MIN, INT8_MAX = -128, 127
INT4_MIN, INT4_MAX = -8, 7
FP8_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
GROUP_SIZES = (32, 64, 128)


# --------------------------------------------------------------------------- scalar arithmetic


def scale_from_amax(amax: torch.Tensor | float, qmax: int = INT8_MAX) -> torch.Tensor:
    """``amax / qmax``; an all-zero channel gets scale 1 (its codes are 0 anyway).

    A zero or non-finite scale would make ``x / scale`` undefined and break
    TensorRT's and the lint's "scales positive and finite" rule.
    """
    amax = torch.as_tensor(amax, dtype=torch.float32)
    if not torch.isfinite(amax).all():
        raise EdgevlaError("cannot quantize a tensor holding inf or NaN")
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize(x: torch.Tensor, scale: torch.Tensor | float, qmin: int = INT8_MIN, qmax: int = INT8_MAX,
             dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Symmetric quantization: ``clamp(round_half_even(x / scale), qmin, qmax)`` as ``dtype``."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return torch.clamp(torch.round(x.float() / scale), qmin, qmax).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``q * scale`` in float32 (zero point 0)."""
    return q.float() * torch.as_tensor(scale, dtype=torch.float32, device=q.device)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, qmin: int = INT8_MIN,
                  qmax: int = INT8_MAX) -> torch.Tensor:
    """``dequantize(quantize(x))`` kept in x's float dtype, computed without an integer tensor."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return (torch.clamp(torch.round(x.float() / scale), qmin, qmax) * scale).to(x.dtype)


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor | float, qmin: int = INT8_MIN,
                      qmax: int = INT8_MAX) -> torch.Tensor:
    """Fake quantization whose gradient is the identity (straight-through estimator)."""
    return x + (fake_quantize(x, scale, qmin, qmax) - x).detach()


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``20·log10(‖x‖ / ‖x − y‖)`` in dB; inf when equal."""
    x, y = x.detach().double(), y.detach().double()
    if x.shape != y.shape:
        raise EdgevlaError(f"sqnr_db needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    noise = torch.linalg.vector_norm(x - y).item()
    signal = torch.linalg.vector_norm(x).item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


# --------------------------------------------------------------------------- int8 weights / activations


def channel_amax(weight: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """``max |w|`` of each output channel of a weight of any rank >= 2, shape ``(out,)``: along axis 0
    (a Linear's or a convolution's), or 1 (a transposed convolution's ``(in, out, *kernel)``)."""
    return weight.abs().movedim(axis, 0).flatten(1).amax(dim=1)


def per_channel(scale: torch.Tensor, ndim: int, axis: int = 0) -> torch.Tensor:
    """``(out,)`` scales shaped to broadcast over a weight of rank ``ndim`` along ``axis``."""
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


@dataclass(frozen=True)
class Int8Weight:
    """A symmetric int8 weight, one scale per output channel: axis 0 of a Linear's ``(out, in)``
    or of a convolution's ``(out, in / groups, *kernel)``, axis 1 of a transposed convolution's
    ``(in, out, *kernel)``."""

    qdata: torch.Tensor  # int8, same shape as the weight
    scale: torch.Tensor  # float32, (out,)
    axis: int = 0  # the output channels' axis of qdata

    @property
    def zero_point(self) -> torch.Tensor:
        return torch.zeros_like(self.scale, dtype=torch.int8)

    @classmethod
    def from_hp(cls, weight: torch.Tensor, axis: int = 0) -> "Int8Weight":
        w = _check_weight(weight, any_rank=True)
        scale = scale_from_amax(channel_amax(w, axis), INT8_MAX)
        return cls(quantize(w, per_channel(scale, w.ndim, axis)), scale, axis)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.qdata, per_channel(self.scale, self.qdata.ndim, self.axis))

    @property
    def nbytes(self) -> int:
        return self.qdata.numel() + 4 * self.scale.numel()


def activation_scale(amax: float) -> float:
    """The static per-tensor int8 scale for an activation whose clip range is ``[-amax, amax]``."""
    if not (math.isfinite(amax) and amax >= 0):
        raise EdgevlaError(f"activation clip range must be finite and non-negative, got {amax}")
    return float(scale_from_amax(amax, INT8_MAX))


# --------------------------------------------------------------------------- int4 weights


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes (values in [-8, 7], even count along the last axis) two per byte.

    Element ``2k`` goes to the low nibble, ``2k+1`` to the high nibble (ONNX order).
    """
    if q.shape[-1] % 2:
        raise EdgevlaError(f"int4 packing needs an even last dimension, got {tuple(q.shape)}")
    if q.numel() and (q.min() < INT4_MIN or q.max() > INT4_MAX):
        raise EdgevlaError("int4 codes must lie in [-8, 7]")
    nib = q.to(torch.int16) & 0xF  # 4-bit two's complement
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 codes, last axis twice as long."""
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    codes = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return torch.where(codes > 7, codes - 16, codes).to(torch.int8)


SCALE_DTYPES = ("fp32", "fp16")
FP16_MIN_NORMAL = float(torch.finfo(torch.float16).tiny)  # 2**-14


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to fp16 (kept as float32), never below fp16's smallest normal, never zero."""
    return scale.clamp(min=FP16_MIN_NORMAL).to(torch.float16).float()


@dataclass(frozen=True)
class Int4GroupedWeight:
    """A symmetric int4 weight with one scale per (output channel, group of input channels).

    ``qdata`` is packed (see :func:`pack_int4`), shape ``(out, in // 2)``;
    ``scale`` is ``(out, in // group_size)``. With ``scale_dtype="fp16"`` the
    scales are fp16 values and the dequantized weight is rounded to fp16 —
    what a ``DequantizeLinear`` with fp16 scales outputs — which halves the
    scales' share of an int4 model (a quarter of the codes at group 32).
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    group_size: int
    shape: tuple[int, int]
    scale_dtype: str = "fp32"

    @property
    def zero_point(self) -> torch.Tensor:
        return torch.zeros_like(self.scale, dtype=torch.int8)

    @classmethod
    def from_hp(cls, weight: torch.Tensor, group_size: int = 128, scale_dtype: str = "fp32") -> "Int4GroupedWeight":
        w = _check_weight(weight)
        out, inp = w.shape
        if group_size not in GROUP_SIZES:
            raise EdgevlaError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
        if inp % group_size:
            raise EdgevlaError(f"int4 group size {group_size} does not divide the {inp} input channels")
        if scale_dtype not in SCALE_DTYPES:
            raise EdgevlaError(f"int4 scale type must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
        groups = w.reshape(out, inp // group_size, group_size)
        scale = scale_from_amax(groups.abs().amax(dim=2), INT4_MAX)
        if scale_dtype == "fp16":
            scale = fp16_scale(scale)
        q = quantize(groups, scale[..., None], INT4_MIN, INT4_MAX).reshape(out, inp)
        return cls(pack_int4(q), scale, group_size, (out, inp), scale_dtype)

    def codes(self) -> torch.Tensor:
        """Unpacked int4 codes as int8, shape ``(out, in)``."""
        return unpack_int4(self.qdata)

    def dequantize(self) -> torch.Tensor:
        out, inp = self.shape
        q = self.codes().reshape(out, inp // self.group_size, self.group_size)
        w = dequantize(q, self.scale[..., None]).reshape(out, inp)
        return w.half().float() if self.scale_dtype == "fp16" else w

    @property
    def nbytes(self) -> int:
        return self.qdata.numel() + (2 if self.scale_dtype == "fp16" else 4) * self.scale.numel()


# --------------------------------------------------------------------------- tables


def pow2_int8_scale(amax: float) -> float:
    """The power-of-two int8 scale for a tensor whose largest magnitude is ``amax``: ``2^ceil(log2(amax/127))``.

    A power of two makes ``code * scale`` exact in any float type, and it can
    be recovered from the rounded tensor alone: its largest code lies in
    (63.5, 127], so the same formula on the rounded ``amax`` gives the same scale.
    """
    if not (math.isfinite(amax) and amax >= 0):
        raise EdgevlaError(f"a table's range must be finite, got {amax}")
    if amax == 0:
        return 1.0
    return math.ldexp(1.0, math.ceil(math.log2(amax / INT8_MAX)))


def int8_table_fits(t: torch.Tensor) -> bool:
    """Whether :func:`int8_table` can hold ``t``: finite, and its largest grid point a float32 too (a
    tensor reaching ``finfo(float32).max`` has a grid reaching ``2^128``, which is not)."""
    amax = float(t.detach().abs().max()) if t.numel() else 0.0
    return math.isfinite(amax) and INT8_MAX * pow2_int8_scale(amax) <= torch.finfo(torch.float32).max


def int8_table(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(codes, scale)`` of a table (an embedding, a position table) on its power-of-two int8 grid."""
    t = t.detach().float()
    if not torch.isfinite(t).all():
        raise EdgevlaError("cannot quantize a table holding inf or NaN")
    scale = pow2_int8_scale(float(t.abs().max()) if t.numel() else 0.0)
    return quantize(t, scale, -INT8_MAX, INT8_MAX), scale


# --------------------------------------------------------------------------- floating-point formats


_FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def cast_roundtrip(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` rounded to ``fmt`` (fp16 / bf16, round-to-nearest-even) and back to x's dtype."""
    if fmt not in _FLOAT_DTYPES:
        raise EdgevlaError(f"unknown float format {fmt!r}; expected one of {', '.join(_FLOAT_DTYPES)}")
    return x.to(_FLOAT_DTYPES[fmt]).to(x.dtype)


def fp8_scale(amax: torch.Tensor | float) -> torch.Tensor:
    """Per-tensor (or per-channel) E4M3 scale mapping ``amax`` to the largest finite E4M3 value (448)."""
    return scale_from_amax(amax, 1) / FP8_E4M3_MAX


def fake_quantize_fp8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """E4M3 fake quantization: ``fp8(clamp(x / scale, ±448)) * scale``.

    The clamp makes the cast saturating: ``float8_e4m3fn`` has no infinity
    and an out-of-range cast would otherwise produce NaN.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    y = torch.clamp(x.float() / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (y.float() * scale).to(x.dtype)


def _check_weight(weight: torch.Tensor, any_rank: bool = False) -> torch.Tensor:
    """``weight`` as float32: 2-D ``(out, in)``, or with ``any_rank`` a convolution's ``(out, in, *kernel)`` too."""
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or (weight.ndim != 2 and not any_rank):
        what = "an (out, in, ...)" if any_rank else "a 2-D (out, in)"
        raise EdgevlaError(f"expected {what} weight, got {getattr(weight, 'shape', type(weight).__name__)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise EdgevlaError("cannot quantize a weight holding inf or NaN")
    return w
