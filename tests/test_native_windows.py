"""``native.gather_windows`` and ``native.to_channels_last`` (csrc/windows.h) against NumPy references:
the strided window view of a zero-padded copy, and ``moveaxis``. Exact (they copy), every geometry the
convolutions of the native runtime meet (1-3 spatial dims, strides, dilations, asymmetric and
oversized pads, windows past the end), int8 and float32, outputs poisoned and followed by guard
bytes; bad arguments are one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from edgevla import native

pytestmark = pytest.mark.skipif(not native.available(), reason="the native module is not built")

GUARD = 64  # elements after each output, which must stay untouched


def reference_windows(x, kernel, strides, dilations, begin, out):
    """(N * prod(out), prod(kernel) * C): x zero-padded (enough at the end for every window), viewed as windows."""
    n = len(kernel)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out, strides, kernel, dilations)]
    after = [max(0, nd - (i + b)) for nd, i, b in zip(need, x.shape[1:-1], begin)]
    padded = np.pad(x, [(0, 0), *zip(begin, after), (0, 0)])
    st = padded.strides
    view = as_strided(padded, (x.shape[0], *out, *kernel, x.shape[-1]),
                      (st[0], *(st[1 + i] * strides[i] for i in range(n)),
                       *(st[1 + i] * dilations[i] for i in range(n)), st[-1]))
    return view.reshape(x.shape[0] * math.prod(out), -1)


def guarded(shape, dtype, poison):
    """A C-contiguous array of `shape` filled with `poison`, followed by GUARD poisoned elements."""
    buffer = np.full(math.prod(shape) + GUARD, poison, dtype)
    return buffer[:math.prod(shape)].reshape(shape), buffer[math.prod(shape):]


CASES = [
    # spatial, channels, kernel, strides, dilations, pads_begin, pads_end
    ((96, 96), 3, (7, 7), (2, 2), (1, 1), (3, 3), (3, 3)),  # a ResNet stem
    ((24, 24), 64, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ((12, 12), 8, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ((7, 5), 3, (1, 1), (2, 2), (1, 1), (0, 0), (0, 0)),  # a strided 1x1 shortcut
    ((6, 9), 5, (3, 2), (1, 3), (2, 1), (2, 0), (1, 4)),  # dilated, asymmetric pads, windows past the end
    ((5, 5), 2, (3, 3), (1, 1), (1, 1), (4, 4), (4, 4)),  # pads larger than the kernel: all-zero windows
    ((17,), 7, (5,), (1,), (1,), (2,), (2,)),  # a Conv1d
    ((16,), 4, (3,), (2,), (3,), (0,), (5,)),  # strided and dilated 1-d
    ((1,), 1, (1,), (1,), (1,), (0,), (0,)),
    ((4, 6, 5), 3, (3, 3, 3), (1, 2, 1), (1, 1, 2), (1, 1, 2), (1, 0, 2)),  # Conv3d
    ((3, 4, 4), 1, (2, 1, 3), (2, 1, 1), (1, 1, 1), (0, 0, 1), (1, 0, 1)),
]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-k{c[2]}-s{c[3]}-d{c[4]}")
@pytest.mark.parametrize("batch", [1, 2])
def test_windows_match_the_padded_window_view(case, dtype, batch):
    spatial, channels, kernel, strides, dilations, begin, end = case
    rng = np.random.default_rng(hash(case) % 2**32)
    if dtype == np.float32:
        x = rng.standard_normal((batch, *spatial, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (batch, *spatial, channels), dtype=dtype)
        x[x == 0] = 1  # so a zero in the rows can only be padding
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = [(i + b + e - x_) // s + 1 for i, b, e, x_, s in zip(spatial, begin, end, extent, strides)]
    expected = reference_windows(x, kernel, strides, dilations, begin, out)
    rows, guard = guarded(expected.shape, dtype, 77)
    native.gather_windows(x, rows, kernel=kernel, strides=strides, dilations=dilations, pads_begin=begin, out=out)
    np.testing.assert_array_equal(rows, expected)
    assert np.all(guard == 77)


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
@pytest.mark.parametrize("shape", [(1, 3, 96, 96), (2, 5, 7), (1, 64, 3, 4, 5), (3, 1, 1, 1), (1, 130, 67)])
def test_to_channels_last_is_moveaxis(shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(dtype) if dtype == np.float32 else rng.integers(-128, 128, shape, dtype)
    expected = np.moveaxis(x, 1, -1)
    y, guard = guarded(expected.shape, dtype, 55)
    assert native.to_channels_last(x, y) is y
    np.testing.assert_array_equal(y, expected)
    assert np.all(guard == 55)
    np.testing.assert_array_equal(native.to_channels_last(x), expected)


def _geometry(**changes):
    args = dict(kernel=[3, 3], strides=[1, 1], dilations=[1, 1], pads_begin=[1, 1], out=[4, 4])
    args.update(changes)
    return args


@pytest.mark.parametrize("x, rows, geometry, error, message", [
    (np.zeros((1, 4, 4, 2), np.float64), np.zeros((16, 18), np.float64), _geometry(), TypeError,
     "x must be int8, uint8 or float32"),
    ([[1, 2]], np.zeros((16, 18), np.int8), _geometry(), TypeError, "x must be an int8, uint8 or float32 array"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 18), np.float32), _geometry(), TypeError,
     "rows must have the dtype of x"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 17), np.int8), _geometry(), ValueError,
     r"rows must have shape \(16, 18\) for these windows, got \(16, 17\)"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 18), np.int8), _geometry(kernel=[3]), ValueError,
     "kernel must have 2 values"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 18), np.int8), _geometry(strides=[0, 1]), ValueError,
     "strides must be >= 1, got 0"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 18), np.int8), _geometry(pads_begin=[-1, 0]), ValueError,
     "pads_begin must be >= 0, got -1"),
    (np.zeros((4, 2), np.int8), np.zeros((16, 18), np.int8), _geometry(), ValueError,
     "1 to 3 spatial dimensions"),
    (np.zeros((1, 4, 8, 2), np.int8)[:, :, ::2], np.zeros((16, 18), np.int8), _geometry(), ValueError,
     "x must be C-contiguous"),
    (np.zeros((1, 4, 4, 2), np.int8), np.zeros((16, 18), np.int8).T.copy().T, _geometry(), ValueError,
     "rows must be C-contiguous"),
])
def test_bad_arguments_are_one_line_errors(x, rows, geometry, error, message):
    with pytest.raises(error, match=message):
        native.gather_windows(x, rows, **geometry)


def test_rows_must_be_writable_and_apart_from_x():
    x = np.zeros((1, 4, 4, 2), np.int8)
    rows = np.zeros((16, 18), np.int8)
    rows.flags.writeable = False
    with pytest.raises(ValueError, match="rows must be a writable array"):
        native.gather_windows(x, rows, **_geometry())
    shared = np.zeros(16 * 18, np.int8)
    with pytest.raises(ValueError, match="rows must not overlap x"):
        native.gather_windows(shared[:32].reshape(1, 4, 4, 2), shared.reshape(16, 18), **_geometry())
    with pytest.raises(ValueError, match=r"y must have shape \(1, 4, 2\), got \(1, 2, 4\)"):
        native.to_channels_last(np.zeros((1, 2, 4), np.int8), np.zeros((1, 2, 4), np.int8))


def reference_max_pool(x, kernel, strides, dilations, begin, out):
    """ONNX MaxPool on channels-last x: the lowest value as padding, maximum over each window's view."""
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    n = len(kernel)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out, strides, kernel, dilations)]
    after = [max(0, nd - (i + b)) for nd, i, b in zip(need, x.shape[1:-1], begin)]
    padded = np.pad(x, [(0, 0), *zip(begin, after), (0, 0)], constant_values=lowest)
    st = padded.strides
    view = as_strided(padded, (x.shape[0], *out, *kernel, x.shape[-1]),
                      (st[0], *(st[1 + i] * strides[i] for i in range(n)),
                       *(st[1 + i] * dilations[i] for i in range(n)), st[-1]))
    return view.max(axis=tuple(range(1 + n, 1 + 2 * n)))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-k{c[2]}-s{c[3]}-d{c[4]}")
def test_max_pool_matches_the_padded_window_maximum(case, dtype):
    spatial, channels, kernel, strides, dilations, begin, end = case
    rng = np.random.default_rng(hash(case) % 2**31)
    if dtype == np.float32:
        x = rng.standard_normal((2, *spatial, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (2, *spatial, channels), dtype=dtype)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = [(i + b + e - x_) // s + 1 for i, b, e, x_, s in zip(spatial, begin, end, extent, strides)]
    expected = reference_max_pool(x, kernel, strides, dilations, begin, out)
    y, guard = guarded(expected.shape, dtype, 33)
    native.max_pool_channels_last(x, y, kernel=kernel, strides=strides, dilations=dilations, pads_begin=begin,
                                  out=out)
    np.testing.assert_array_equal(y, expected)  # windows wholly in the padding: the lowest value, as ONNX
    assert np.all(guard == 33)


def test_max_pool_propagates_nan_and_refuses_bad_shapes():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 1, 2, 1] = np.nan
    y = np.empty((1, 2, 2, 2), np.float32)
    geometry = dict(kernel=[2, 2], strides=[2, 2], dilations=[1, 1], pads_begin=[0, 0], out=[2, 2])
    native.max_pool_channels_last(x, y, **geometry)
    assert np.isnan(y[0, 0, 1, 1]) and np.isnan(y).sum() == 1
    with pytest.raises(ValueError, match=r"y must have shape \(1, 2, 2, 2\), got \(1, 2, 2, 3\)"):
        native.max_pool_channels_last(x, np.empty((1, 2, 2, 3), np.float32), **geometry)
    with pytest.raises(TypeError, match="y must have the dtype of x"):
        native.max_pool_channels_last(x, np.empty((1, 2, 2, 2), np.int8), **geometry)


@pytest.mark.usefixtures("restore_dispatch")
@pytest.mark.parametrize("isa", native.available_isas() if native.available() else [])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [1, 16, 37, 64])  # below, at and past the 16-channel blocks
def test_float_max_pool_is_the_same_on_every_isa_and_thread_count(isa, threads, channels):
    """The float pool runs on the active ISA's kernel, split over the threads: every ISA, 1 or 2 threads, any
    channel count, NaN (and -inf) where they fall, the same values as the reference."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, 40, 37, channels)).astype(np.float32)  # from 16 channels, split over 2 threads
    x[0, 3, 4, channels // 2] = np.nan
    x[1, 39, 36, -1] = np.nan  # a corner, read by the last window only
    x[1, 0, 0, 0] = -np.inf
    geometry = dict(kernel=[3, 3], strides=[2, 2], dilations=[1, 1], pads_begin=[1, 1], out=[20, 19])
    expected = reference_max_pool(x, [3, 3], [2, 2], [1, 1], [1, 1], [20, 19])
    native.set_isa(isa)
    native.set_num_threads(threads)
    y, guard = guarded(expected.shape, np.float32, -7)
    native.max_pool_channels_last(x, y, **geometry)
    np.testing.assert_array_equal(y, expected)
    assert np.isnan(y).sum() == np.isnan(expected).sum() > 0 and np.all(guard == -7)
