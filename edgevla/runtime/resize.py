"""ONNX ``Resize`` in nearest and linear modes: ``F.interpolate`` / ``nn.Upsample`` in U-Nets and FPNs.

Resizing is separable: each resized axis maps every output index ``o`` to a
source coordinate by the node's ``coordinate_transformation_mode``, then
takes the nearest source sample (rounded by ``nearest_mode``) or blends the
two around it (linear; the coordinate clamped to the input, as ONNX Runtime
does). Axes are resized one after another, so a bilinear upsample is two
1-d passes. PyTorch exports ``nearest`` as asymmetric / floor and
``bilinear`` as ``pytorch_half_pixel`` (``align_corners=True``:
``align_corners``).

Refused at load, with the node named: ``cubic``, ``antialias``,
``tf_crop_and_resize`` and a ``keep_aspect_ratio_policy`` other than
``stretch``.
"""

from __future__ import annotations

import math

import numpy as np

from .ops import OpContext, _fail, _ints, register

_COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinates(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    """Where each of ``out_len`` output samples reads the input axis of ``in_len``, in input samples."""
    o = np.arange(out_len, dtype=np.float64)
    if mode == "asymmetric":
        return o / scale
    if mode == "align_corners":
        return o * ((in_len - 1) / (out_len - 1)) if out_len > 1 else np.zeros(out_len)
    if mode == "pytorch_half_pixel" and out_len == 1:
        return np.zeros(1)
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (o + 0.5) / scale - 0.5
    return (o + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


def nearest_indices(coords: np.ndarray, in_len: int, rounding: str) -> np.ndarray:
    if rounding == "floor":
        idx = np.floor(coords)
    elif rounding == "ceil":
        idx = np.ceil(coords)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor: halves go down
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, in_len - 1).astype(np.intp)


def _resize_axis_linear(x: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    in_len = x.shape[axis]
    coords = np.clip(coords, 0, in_len - 1)
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, in_len - 1)
    shape = [1] * x.ndim
    shape[axis] = len(coords)
    w = (coords - lo).astype(x.dtype).reshape(shape)
    below = np.take(x, lo, axis=axis)
    return below + (np.take(x, hi, axis=axis) - below) * w


@register("Resize")
def _resize(c: OpContext):
    """ONNX Resize (opset 11+; 18: ``axes``, ``antialias``, ``keep_aspect_ratio_policy``; 19:
    ``half_pixel_symmetric``) for nearest and linear modes, any rank."""
    mode = c.text("mode", "nearest")
    coordinates = c.text("coordinate_transformation_mode", "half_pixel")
    rounding = c.text("nearest_mode", "round_prefer_floor")
    policy = c.text("keep_aspect_ratio_policy", "stretch")
    if mode not in ("nearest", "linear"):
        raise _fail(c, f"mode {mode!r} is not supported (nearest and linear are)")
    if c.attr("antialias", 0):
        raise _fail(c, "antialias is not supported")
    if coordinates not in _COORDINATES:
        raise _fail(c, f"coordinate_transformation_mode {coordinates!r} is not supported")
    if rounding not in _ROUNDING:
        raise _fail(c, f"unknown nearest_mode {rounding!r}")
    if policy != "stretch":
        raise _fail(c, f"keep_aspect_ratio_policy {policy!r} is not supported (stretch is)")
    if c.opset < 11:
        raise _fail(c, "opset < 11 (Upsample-style scales) is not supported")
    axes_attr = c.attr("axes")

    def resize(x, roi=None, scales=None, sizes=None):
        axes = list(range(x.ndim)) if axes_attr is None else [int(a) % x.ndim for a in axes_attr]
        if sizes is not None and sizes.size:
            out = _ints(sizes)
            if len(out) != len(axes):
                raise _fail(c, f"{len(out)} sizes for {len(axes)} axes")
            factors = [o / x.shape[a] for o, a in zip(out, axes, strict=True)]
        elif scales is not None and scales.size:
            factors = [float(s) for s in np.asarray(scales).reshape(-1)]
            if len(factors) != len(axes):
                raise _fail(c, f"{len(factors)} scales for {len(axes)} axes")
            out = [math.floor(x.shape[a] * s) for a, s in zip(axes, factors, strict=True)]
        else:
            raise _fail(c, "neither scales nor sizes is given")
        if mode == "linear" and not np.issubdtype(x.dtype, np.floating):
            raise _fail(c, f"linear resize of a {x.dtype} input is not supported")
        if any(s <= 0 for s in factors):
            raise _fail(c, f"scales must be positive, got {factors}")
        y = x
        for axis, out_len, scale in zip(axes, out, factors, strict=True):
            in_len = x.shape[axis]
            if out_len == in_len and scale == 1.0:
                continue
            coords = source_coordinates(out_len, in_len, scale, coordinates)
            if mode == "nearest":
                y = np.take(y, nearest_indices(coords, in_len, rounding), axis=axis)
            else:
                y = _resize_axis_linear(y, axis, coords)
        return np.ascontiguousarray(y)
    return resize
