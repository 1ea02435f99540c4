"""The float32 attention kernel (csrc/attention_f32.h) against its scalar reference and float64 NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla import native

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")

ISAS = native.available_isas() if native.available() else []
RNG = np.random.default_rng(5)


def stacked_heads(b, t, s, h, d, rng, magnitude=1.5):
    """q, k, v as column views of one (B, max(T, S), 3 H D + 5) array, as the runtime's stacked GEMM gives them."""
    tokens = max(t, s)
    y = (rng.standard_normal((b, tokens, 3 * h * d + 5)) * magnitude).astype(np.float32)
    q = y[:, :t, : h * d].reshape(b, t, h, d)
    k = y[:, :s, h * d: 2 * h * d].reshape(b, s, h, d)
    v = y[:, :s, 2 * h * d: 3 * h * d].reshape(b, s, h, d)
    return q, k, v


def exact(q, k, v, scale=None, divide=False, bias=None):
    """float64 softmax(scale(q k^T) + bias) v per head (k and v's heads repeated for grouped queries)."""
    group = q.shape[2] // k.shape[2]
    q64, k64, v64 = (a.astype(np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))
    k64, v64 = np.repeat(k64, group, axis=1), np.repeat(v64, group, axis=1)
    scores = q64 @ k64.transpose(0, 1, 3, 2)
    if scale is not None:
        scores = scores / scale if divide else scores * scale
    if bias is not None:
        scores = scores + bias
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v64).transpose(0, 2, 1, 3), np.abs(scores[np.isfinite(scores)]).max(initial=0.0)


def bound(v, score_max):
    """4e-6 (1 + max |scaled score|) max |v|: float32 summation order and the polynomial exp."""
    return 4e-6 * (1.0 + score_max) * max(float(np.abs(v).max(initial=0.0)), 1.0)


SHAPES = [(1, 1, 1, 1, 1), (1, 6, 6, 6, 64), (2, 5, 7, 3, 67), (1, 32, 32, 6, 64), (1, 17, 33, 2, 16),
          (1, 3, 40, 1, 100), (3, 4, 4, 5, 3), (1, 1, 50, 2, 64), (1, 80, 80, 4, 24), (1, 192, 150, 2, 24)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale,divide", [(None, False), (0.125, False), (8.0, True)])
def test_attention_matches_its_reference_and_float64(isa, shape, scale, divide, restore_dispatch):
    native.set_isa(isa)
    q, k, v = stacked_heads(*shape, RNG)
    want, score_max = exact(q, k, v, scale, divide)
    tol = bound(v, score_max)
    out = np.full(shape[:2] + shape[3:], np.nan, np.float32)  # poisoned
    got = native.attention_f32(q, k, v, scale, divide=divide, out=out)
    assert got is out
    ref = native.attention_f32_ref(q, k, v, scale, divide=divide)
    assert np.abs(got - ref).max() <= tol
    assert np.abs(got - want).max() <= tol and np.abs(ref - want).max() <= tol


def _masks(b, h, t, s, rng):
    """Additive biases as graphs bring them: a causal mask (T, S) over batch and heads, padded keys per batch,
    a bias per head and query (ALiBi-like), a sliding window (the kernel sums P @ V over its keys only)."""
    causal = np.where(np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t), 0.0, -np.inf).astype(np.float32)
    padded = np.zeros((b, 1, 1, s), np.float32)
    padded[:, :, :, s - 1 - np.arange(b) % s] = -np.inf  # a different hidden key per batch
    full = rng.normal(0, 2, (b, h, t, s)).astype(np.float32)
    # a sliding window of finfo.min (Hugging Face's fill): keys hidden before and after each query's
    near = np.abs(np.arange(s)[None, :] - np.arange(t)[:, None] - (s - t)) <= 2
    window = np.where(near, 0.0, np.finfo(np.float32).min).astype(np.float32)
    return {"causal": causal[None, None], "padded": padded, "full": full, "window": window[None, None]}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 16, 16, 8, 2, 32), (2, 5, 7, 4, 1, 24), (1, 1, 9, 6, 3, 16),
                                   (1, 33, 33, 4, 4, 8)])
@pytest.mark.parametrize("mask", ["causal", "padded", "full", "window"])
def test_grouped_heads_and_a_bias_match_the_reference_and_float64(isa, shape, mask, restore_dispatch):
    native.set_isa(isa)
    b, t, s, h, kv, d = shape
    q, k, v = stacked_heads(b, t, s, h, d, RNG)
    k, v = np.ascontiguousarray(k[:, :, :kv]), np.ascontiguousarray(v[:, :, :kv])
    bias = _masks(b, h, t, s, RNG)[mask]
    want, score_max = exact(q, k, v, 0.25, False, bias)
    tol = bound(v, score_max)
    got = native.attention_f32(q, k, v, 0.25, bias=bias)
    ref = native.attention_f32_ref(q, k, v, 0.25, bias=bias)
    assert np.abs(got - ref).max() <= tol
    assert np.abs(got - want).max() <= tol and np.abs(ref - want).max() <= tol


def test_a_query_with_every_key_hidden_is_nan_or_zeros():
    q, k, v = stacked_heads(1, 4, 6, 2, 8, RNG)
    bias = np.zeros((1, 1, 4, 6), np.float32)
    bias[0, 0, 2] = -np.inf
    for fn in (native.attention_f32, native.attention_f32_ref):
        nan_row = fn(q, k, v, bias=bias)
        # the kernel sums P @ V for 4 queries at once: the NaN stays in its own row
        assert np.isnan(nan_row[0, 2]).all() and np.isfinite(np.delete(nan_row, 2, axis=1)).all()
        zeroed = fn(q, k, v, bias=bias, zero_nan_rows=True)
        assert (zeroed[0, 2] == 0).all() and np.isfinite(zeroed).all()
        np.testing.assert_allclose(np.delete(zeroed, 2, axis=1), np.delete(fn(q, k, v), 2, axis=1), atol=1e-5)


def test_threads_split_heads_without_changing_a_bit(restore_dispatch):
    q, k, v = stacked_heads(2, 32, 32, 6, 64, RNG)
    native.set_num_threads(1)
    one = native.attention_f32(q, k, v, 0.125)
    native.set_num_threads(2)
    np.testing.assert_array_equal(native.attention_f32(q, k, v, 0.125), one)


def test_strided_output_and_guards_around_it():
    q, k, v = stacked_heads(1, 9, 9, 3, 20, RNG)
    big = np.full((1, 9, 3, 20 + 7), -7.0, np.float32)  # 7 guard values after every head's 20 features
    out = big[..., :20]
    native.attention_f32(q, k, v, 0.5, out=out)
    assert (big[..., 20:] == -7.0).all()
    np.testing.assert_allclose(out, native.attention_f32_ref(q, k, v, 0.5), rtol=0, atol=1e-5)


def test_new_output_is_c_contiguous_float32():
    q, k, v = stacked_heads(1, 4, 6, 2, 8, RNG)
    out = native.attention_f32(q, k, v)
    assert out.dtype == np.float32 and out.shape == (1, 4, 2, 8) and out.flags.c_contiguous


def test_nan_in_a_query_stays_in_its_row():
    q, k, v = (np.ascontiguousarray(a) for a in stacked_heads(1, 4, 4, 2, 8, RNG))
    q[0, 1, 0, 3] = np.nan
    out = native.attention_f32(q, k, v, 0.5)
    assert np.isnan(out[0, 1, 0]).all()
    assert np.isfinite(np.delete(out.reshape(8, 8), 2, axis=0)).all()


def _bad_cases():
    q, k, v = (np.ascontiguousarray(a) for a in stacked_heads(1, 4, 5, 2, 8, np.random.default_rng(0)))
    transposed_d = np.ascontiguousarray(q.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    read_only = np.empty_like(q)
    read_only.flags.writeable = False
    return [
        ((q.astype(np.float64), k, v), {}, TypeError, "q must be float32"),
        ((q[0], k, v), {}, ValueError, "q must be 4-D"),
        ((q, k[:, :, :1], v), {}, ValueError, "k and v must have shape"),
        ((q, k, v[:, :4]), {}, ValueError, "k and v must have shape"),
        ((q, k[:, :0], v[:, :0]), {}, ValueError, "at least one key"),
        ((transposed_d, k, v), {}, ValueError, "contiguous along its last axis"),
        ((q[:, ::-1], k, v), {}, ValueError, "non-negative strides"),
        ((q, k, v), {"out": q}, ValueError, "must not share memory"),
        ((q, k, v), {"out": np.empty((1, 4, 2, 7), np.float32)}, ValueError, "out must have shape"),
        ((q, k, v), {"out": read_only}, ValueError, "writable"),
        ((q, k, v, 0.0), {"divide": True}, ValueError, "finite in float32 and nonzero"),
        ((q, k, v, float("inf")), {}, ValueError, "finite"),
        ((q, k, v), {"divide": True}, ValueError, "needs a scale"),
        (([1.0], k, v), {}, TypeError, "q must be a float32 array"),
        ((q, np.ascontiguousarray(k[:, :, :1].repeat(3, 2)), v), {}, ValueError, "one Hkv dividing H"),
        ((q, k, v), {"bias": np.zeros((1, 2, 4, 4), np.float32)}, ValueError, "bias must be float32 \\(B or 1"),
        ((q, k, v), {"bias": np.zeros((1, 2, 4, 5))}, TypeError, "bias must be float32"),
        ((q, k, v), {"bias": np.zeros((1, 2, 5, 4), np.float32).transpose(0, 1, 3, 2)}, ValueError,
         "contiguous along its last axis"),
        ((q, k, v), {"bias": np.zeros((2, 4, 5), np.float32)}, ValueError, "bias must be float32 \\(B or 1"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
def test_bad_arguments_raise_one_clear_error(index):
    args, kwargs, error, message = _bad_cases()[index]
    with pytest.raises(error, match=message):
        native.attention_f32(*args, **kwargs)
    with pytest.raises(error, match=message):
        native.attention_f32_ref(*args, **kwargs)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k", [(1, 1), (3, 7), (8, 1024), (5, 33), (2, 16)])
def test_row_softmax_matches_its_reference_and_float64(isa, m, k, restore_dispatch):
    native.set_isa(isa)
    x = (RNG.standard_normal((m, k + 3)) * 4).astype(np.float32)[:, :k]  # row-strided
    want = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    buffer = np.full(m * k + 11, np.nan, np.float32)
    out = native.softmax_f32(x, out=buffer[: m * k].reshape(m, k))
    assert np.isnan(buffer[m * k:]).all()
    # relative: the reference sums K terms in order (relative error up to ~K ulp, ~sqrt(K) ulp typically)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(native.softmax_f32_ref(x), want, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=2e-6)


def test_row_softmax_refuses_bad_input():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="at least one column"):
        native.softmax_f32(x[:, :0])
    with pytest.raises(ValueError, match="must not share memory"):
        native.softmax_f32(x, out=x)
    with pytest.raises(TypeError, match="float32"):
        native.softmax_f32(x.astype(np.float64))
