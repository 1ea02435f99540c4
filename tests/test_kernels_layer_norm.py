"""LayerNorm (and RMSNorm: ``rms=True``) fused with static int8 quantization (csrc/layer_norm_s8.h).

Exactness: the fast kernel and the scalar reference run the same float32
operations in the same order, so their int8 codes must be identical. Against
the meaning (float64 LayerNorm, then round(y / scale) clamped to int8) codes
may differ by one where y / scale lies within float32 noise of a rounding
tie: asserted at most 1 everywhere, and on at most 0.5 % of the codes.
Outputs are followed by guard bytes checked after each call.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgevla import native

GUARD = 37
GUARD_BYTE = np.int8(0x5A)
RNG = np.random.default_rng(2026)


def guarded(m, k):
    buffer = np.full(m * k + GUARD, GUARD_BYTE, np.int8)
    return buffer[: m * k].reshape(m, k), buffer


def data(m, k, seed, magnitude=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.3, magnitude, (m, k))).astype(np.float32)
    gamma, beta = rng.normal(1, 0.5, k).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)
    return x, gamma, beta


def float_meaning(x, gamma, beta, epsilon, rms=False):
    """LayerNorm (RMSNorm: no mean, the mean square for the variance) in float64."""
    x64 = x.astype(np.float64)
    mean = 0.0 if rms else x64.mean(axis=1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + epsilon) * gamma + (0 if beta is None else beta)


def meaning(x, gamma, beta, epsilon, scale, rms=False):
    y = float_meaning(x, gamma, beta, epsilon, rms)
    return np.clip(np.rint(y / np.float32(scale)), -128, 127).astype(np.int8)


@pytest.mark.parametrize("m, k", [(1, 1), (1, 17), (3, 16), (2, 15), (5, 33), (32, 384), (7, 1000), (0, 8)])
@pytest.mark.parametrize("with_beta", [True, False])
@pytest.mark.parametrize("scale", [0.004, 0.03, 1.5])  # saturating most codes, typical, few codes
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_fast_kernel_is_the_reference_exactly(m, k, with_beta, scale, rms):
    x, gamma, beta = data(m, k, seed=m * 1000 + k)
    beta = beta if with_beta else None
    out, buffer = guarded(m, k)
    assert native.layer_norm_s8(x, gamma, beta, epsilon=1e-5, scale=scale, out=out, rms=rms) is out
    assert (buffer[m * k:] == GUARD_BYTE).all(), "wrote past the end"
    expected = native.layer_norm_s8_ref(x, gamma, beta, epsilon=1e-5, scale=scale, rms=rms)
    assert expected.dtype == np.int8 and expected.shape == (m, k)
    np.testing.assert_array_equal(out, expected)
    if m and k > 1:
        diff = np.abs(expected.astype(np.int16) - meaning(x, gamma, beta, 1e-5, scale, rms))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.005


def test_codes_saturate_and_tie_to_even():
    x = np.array([[-1.0, 1.0]], np.float32)  # normalizes to exactly -1, +1 (epsilon 0)
    gamma = np.array([2.5, 3.5], np.float32)  # y = -2.5, 3.5: ties at scale 1
    q = native.layer_norm_s8(x, gamma, None, epsilon=0.0, scale=1.0)
    np.testing.assert_array_equal(q, [[-2, 4]])
    np.testing.assert_array_equal(native.layer_norm_s8(x, gamma, None, epsilon=0.0, scale=1e-3), [[-128, 127]])


def test_row_strided_input_and_large_values():
    x, gamma, beta = data(6, 100, seed=5, magnitude=1e4)
    wide = np.zeros((6, 130), np.float32)
    wide[:, :100] = x
    got = native.layer_norm_s8(wide[:, :100], gamma, beta, epsilon=1e-5, scale=0.05)
    np.testing.assert_array_equal(got, native.layer_norm_s8_ref(x, gamma, beta, epsilon=1e-5, scale=0.05))


BAD = {
    "x float64": (TypeError, "x must have dtype float32", lambda x, g, b: dict(x=x.astype(np.float64))),
    "K = 0": (ValueError, "x must have at least one column", lambda x, g, b: dict(x=x[:, :0], gamma=g[:0], beta=None)),
    "gamma length": (ValueError, "gamma must hold one value per column of x (K = 8), got 7",
                     lambda x, g, b: dict(gamma=g[:7])),
    "beta length": (ValueError, "beta must hold one value per column of x (K = 8), got 9",
                    lambda x, g, b: dict(beta=np.ones(9, np.float32))),
    "scale zero": (ValueError, "scale must be finite and > 0", lambda x, g, b: dict(scale=0.0)),
    "scale underflows": (ValueError, "scale must be finite and > 0", lambda x, g, b: dict(scale=1e-50)),
    "epsilon negative": (ValueError, "epsilon must be finite and >= 0", lambda x, g, b: dict(epsilon=-1.0)),
    "out float32": (TypeError, "out must have dtype int8", lambda x, g, b: dict(out=np.zeros((3, 8), np.float32))),
    "out shape": (ValueError, "out must have shape (M, N) = (3, 8)",
                  lambda x, g, b: dict(out=np.zeros((8, 3), np.int8))),
    "out over x": (ValueError, "out must not share memory with the input x",
                   lambda x, g, b: dict(out=x.view(np.int8)[:, :8])),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
@pytest.mark.parametrize("fn", ["layer_norm_s8", "layer_norm_s8_ref"])
def test_bad_arguments_raise_one_line_errors(case, fn):
    error, message, change = BAD[case]
    x, gamma, beta = data(3, 8, seed=1)
    kwargs = dict(x=x, gamma=gamma, beta=beta, epsilon=1e-5, scale=0.1, out=None)
    kwargs.update(change(x, gamma, beta))
    with pytest.raises(error) as raised:
        getattr(native, fn)(kwargs.pop("x"), kwargs.pop("gamma"), kwargs.pop("beta"), **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_reported(bad):
    x, gamma, beta = data(4, 19, seed=9)
    x[2, 5] = bad
    for fn, rms in itertools.product((native.layer_norm_s8, native.layer_norm_s8_ref), (False, True)):
        with pytest.raises(ValueError, match="the statistics of row 2 are not"):
            fn(x, gamma, beta, epsilon=1e-5, scale=0.1, rms=rms)
    x[2, 5] = 1e30  # finite, but its square is not: an RMSNorm row whose mean square overflows
    with pytest.raises(ValueError, match="the statistics of row 2 are not"):
        native.layer_norm_s8(x, gamma, beta, epsilon=1e-5, scale=0.1, rms=True)


ISAS = native.available_isas()


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_gives_the_reference_codes(isa, restore_dispatch):
    native.set_isa(isa)
    for (m, k), rms in itertools.product([(1, 1), (3, 17), (32, 384), (4, 1000)], (False, True)):
        x, gamma, beta = data(m, k, seed=k)
        out, buffer = guarded(m, k)
        native.layer_norm_s8(x, gamma, beta, epsilon=1e-5, scale=0.03, out=out, rms=rms)
        assert (buffer[m * k:] == GUARD_BYTE).all()
        np.testing.assert_array_equal(out, native.layer_norm_s8_ref(x, gamma, beta, epsilon=1e-5, scale=0.03,
                                                                    rms=rms))
        codes, buffer = guarded(m, k)
        native.quantize_s8(x, scale=0.02, out=codes)
        assert (buffer[m * k:] == GUARD_BYTE).all()
        np.testing.assert_array_equal(codes, native.quantize_s8_ref(x, scale=0.02))


def test_quantize_s8_is_quantize_linear():
    """Division by the scale, ties to even, saturation to [-128, 127], as ONNX QuantizeLinear (zero point 0)."""
    x = np.concatenate([np.arange(-301, 301, dtype=np.float32) * np.float32(0.125),
                        RNG.normal(0, 3, 401).astype(np.float32)]).reshape(1, -1)
    expected = np.clip(np.rint(x / np.float32(0.25)), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(native.quantize_s8(x, scale=0.25), expected)
    special = native.quantize_s8(np.array([[np.inf, -np.inf, np.nan, 1e38]], np.float32), scale=1e-3)
    np.testing.assert_array_equal(special, [[127, -128, -128, 127]])
    assert native.quantize_s8(np.zeros((0, 5), np.float32), scale=1.0).shape == (0, 5)


@pytest.mark.parametrize("fn", ["quantize_s8", "quantize_s8_ref"])
def test_quantize_s8_bad_arguments(fn):
    x = np.ones((2, 3), np.float32)
    for kwargs, error, message in [(dict(scale=0.0), ValueError, "scale must be finite and > 0"),
                                   (dict(scale=np.nan), ValueError, "scale must be finite and > 0"),
                                   (dict(scale=1.0, out=np.zeros((2, 3), np.uint8)), TypeError,
                                    "out must have dtype int8")]:
        with pytest.raises(error, match=message):
            getattr(native, fn)(x, **kwargs)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        getattr(native, fn)(x.astype(np.float16), scale=1.0)


# ---- LayerNorm alone, float32 out (layer_norm_f32) ----


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, k", [(1, 1), (1, 17), (3, 16), (5, 33), (32, 384), (7, 1000), (0, 8)])
@pytest.mark.parametrize("with_beta", [True, False])
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_float_layer_norm_is_the_reference_exactly(isa, m, k, with_beta, rms, restore_dispatch):
    native.set_isa(isa)
    x, gamma, beta = data(m, k, seed=m * 7 + k, magnitude=3.0)
    beta = beta if with_beta else None
    buffer = np.full(m * k + GUARD, np.nan, np.float32)  # poisoned, then guards
    out = buffer[: m * k].reshape(m, k)
    assert native.layer_norm_f32(x, gamma, beta, epsilon=1e-5, out=out, rms=rms) is out
    assert np.isnan(buffer[m * k:]).all(), "wrote past the end"
    np.testing.assert_array_equal(out, native.layer_norm_f32_ref(x, gamma, beta, epsilon=1e-5, rms=rms))
    if m and k > 1:  # float32 statistics in 16 lanes: within a few ulp of the float64 meaning
        want = float_meaning(x, gamma, beta, 1e-5, rms)
        assert np.abs(out - want).max() <= 2e-6 * max(1.0, float(np.abs(want).max()))


def test_float_layer_norm_reads_strided_rows_and_refuses_bad_input():
    x, gamma, beta = data(4, 40, seed=3)
    np.testing.assert_array_equal(native.layer_norm_f32(x[:, :20], gamma[:20], beta[:20], epsilon=1e-5),
                                  native.layer_norm_f32_ref(np.ascontiguousarray(x[:, :20]), gamma[:20], beta[:20],
                                                            epsilon=1e-5))
    with pytest.raises(ValueError, match="gamma must hold one value per column of x"):
        native.layer_norm_f32(x, gamma[:3], beta, epsilon=1e-5)
    with pytest.raises(ValueError, match="out must not share memory with the input x"):
        native.layer_norm_f32(x, gamma, beta, epsilon=1e-5, out=x)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        native.layer_norm_f32(x, gamma, beta, epsilon=1e-5, out=np.zeros((4, 40), np.int8))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="the statistics of row 1 are not"):
        native.layer_norm_f32(x, gamma, beta, epsilon=1e-5)
