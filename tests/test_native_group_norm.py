"""``native.group_norm_f32`` (csrc/group_norm_f32.h) against a float64 GroupNorm, in place and not, and its
one-line refusals. (The runtime step that calls it: tests/test_runtime_group_norm.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevla import native

pytestmark = pytest.mark.skipif(not native.available(), reason="the native module is not built")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, groups", [((1, 64, 16), 8), ((2, 6, 5, 7), 3), ((1, 4, 3), 4), ((3, 2, 2, 3, 2), 1)])
def test_matches_float64_group_norm_with_per_channel_affine(shape, groups, channels_last):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4 + 20).astype(np.float32)
    scale = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    shift = rng.uniform(-1, 1, shape[1]).astype(np.float32)
    expected = F.group_norm(torch.from_numpy(x).double(), groups, torch.from_numpy(scale).double(),
                            torch.from_numpy(shift).double(), eps=1e-5)
    for activation, act in (("none", lambda t: t), ("relu", F.relu), ("mish", F.mish)):
        want = act(expected).numpy()
        source = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x.copy()
        out = native.group_norm_f32(source, groups, scale, shift, epsilon=1e-5, channels_last=channels_last,
                                    activation=activation)
        got = np.moveaxis(out, -1, 1) if channels_last else out
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        in_place = native.group_norm_f32(source, groups, scale, shift, epsilon=1e-5, channels_last=channels_last,
                                         activation=activation, out=source)
        assert in_place is source
        np.testing.assert_array_equal(source, out)  # in place: the same floats


@pytest.mark.parametrize("change, error, message", [
    (dict(groups=3), ValueError, "groups must be >= 1 and divide the 8 channels, got 3"),
    (dict(scale=np.ones(7, np.float32)), ValueError, r"scale must be float32 of shape \(8,\), got \(7,\)"),
    (dict(shift=np.ones(8, np.float64)), TypeError, "shift must be int8, uint8 or float32"),
    (dict(x=np.ones((2, 8, 3), np.int8)), TypeError, "x and out must be float32"),
    (dict(activation="gelu"), ValueError, "activation must be 'none', 'relu' or 'mish', got 'gelu'"),
    (dict(epsilon=float("nan")), ValueError, "epsilon must be finite and >= 0"),
    (dict(out=np.empty((2, 8, 4), np.float32)), ValueError, r"out must have the shape of x \(2, 8, 3\)"),
    (dict(residual=np.ones((2, 8, 4), np.float32)), ValueError, "residual must be float32 of the shape of x"),
    (dict(film_scale=np.ones((2, 8, 1), np.float32)), ValueError, r"film_scale must be float32 of shape \(2, 8\)"),
    (dict(film_shift=np.ones((3, 8), np.float32)), ValueError, r"or \(1, 8\), got \(3, 8\)"),
    (dict(codes=np.empty((2, 8, 3), np.int8)), ValueError, "codes and codes_scale come together"),
    (dict(codes=np.empty((2, 8, 3), np.uint8), codes_scale=0.1), ValueError, "codes must be int8 of the shape"),
    (dict(codes=np.empty((2, 8, 3), np.int8), codes_scale=0.0), ValueError, "codes_scale must be a positive finite"),
])
def test_bad_arguments_are_one_line_errors(change, error, message):
    args = dict(x=np.ones((2, 8, 3), np.float32), groups=2, scale=np.ones(8, np.float32),
                shift=np.zeros(8, np.float32), epsilon=1e-5, activation="none", out=None)
    args.update(change)
    with pytest.raises(error, match=message):
        native.group_norm_f32(args.pop("x"), args.pop("groups"), args.pop("scale"), args.pop("shift"),
                              channels_last=False, **args)


@pytest.mark.usefixtures("restore_dispatch")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu_after", [False, True])
def test_output_stage_equals_the_steps_after_it_on_any_thread_count(channels_last, relu_after):
    """+ residual, ReLU, int8 codes in the same pass: the same floats and codes as GroupNorm, then NumPy's add
    and maximum and quantize_s8; the sums in a fixed order, so 1 and 2 threads agree bit for bit."""
    rng = np.random.default_rng(4)
    shape = (2, 64, 30, 20)  # 600 positions: chunks of 64 positions split over 2 threads
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, 64).astype(np.float32), rng.uniform(-1, 1, 64).astype(np.float32)
    skip = rng.standard_normal(shape).astype(np.float32)
    if channels_last:
        x, skip = (np.ascontiguousarray(np.moveaxis(v, 1, -1)) for v in (x, skip))
    common = dict(epsilon=1e-5, channels_last=channels_last, activation="relu")
    results = []
    for threads in (1, 2):
        native.set_num_threads(threads)
        plain = native.group_norm_f32(x, 8, scale, shift, **common)
        codes = np.full(x.size + 16, 99, np.int8)
        got = native.group_norm_f32(x, 8, scale, shift, **common, residual=skip, relu_after=relu_after,
                                    codes=codes[:x.size].reshape(x.shape), codes_scale=0.05)
        want = plain + skip
        if relu_after:
            want = np.maximum(want, np.float32(0))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(codes[:x.size].reshape(x.shape), native.quantize_s8_ref(
            want.reshape(-1, x.shape[-1]), scale=0.05).reshape(x.shape))
        assert (codes[x.size:] == 99).all()
        results.append((plain, got))
    np.testing.assert_array_equal(results[0][0], results[1][0])


@pytest.mark.usefixtures("restore_dispatch")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("film", ["scale-and-shift", "scale", "shift"])
def test_film_is_numpys_multiply_then_add_per_sample_and_channel(channels_last, film):
    """FiLM in the same pass, after Mish and before the residual and the codes: NumPy's multiply by the (N, C)
    scale and add of the (1, C) shift (broadcast to every sample), bit for bit, on every ISA and thread count."""
    rng = np.random.default_rng(8)
    shape = (3, 32, 150)  # 150 positions: chunks split over 2 threads
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, 32).astype(np.float32), rng.uniform(-1, 1, 32).astype(np.float32)
    film_scale = rng.standard_normal((3, 32)).astype(np.float32) if film != "shift" else None
    film_shift = rng.standard_normal((1, 32)).astype(np.float32) if film != "scale" else None
    skip = rng.standard_normal(shape).astype(np.float32)
    per_channel = (lambda v: v[:, None, :]) if channels_last else (lambda v: v[:, :, None])
    if channels_last:
        x, skip = (np.ascontiguousarray(np.moveaxis(v, 1, -1)) for v in (x, skip))
    common = dict(epsilon=1e-5, channels_last=channels_last, activation="mish")
    for isa in native.available_isas():
        native.set_isa(isa)
        for threads in (1, 2):
            native.set_num_threads(threads)
            want = native.group_norm_f32(x, 4, scale, shift, **common)
            if film_scale is not None:
                want = want * per_channel(film_scale)
            if film_shift is not None:
                want = want + per_channel(film_shift)
            codes = np.empty(x.shape, np.int8)
            got = native.group_norm_f32(x, 4, scale, shift, **common, film_scale=film_scale, film_shift=film_shift,
                                        residual=skip, codes=codes, codes_scale=0.05)
            np.testing.assert_array_equal(got, want + skip, err_msg=f"{isa}, {threads} threads")
            np.testing.assert_array_equal(codes, native.quantize_s8_ref((want + skip).reshape(-1, x.shape[-1]),
                                                                        scale=0.05).reshape(x.shape))


@pytest.mark.usefixtures("restore_dispatch")
def test_mish_is_within_a_few_ulp_of_float64_over_its_whole_range():
    """Mish's exp is a polynomial (csrc/group_norm_rows.h), checked against float64 from -100 to 100 and at
    NaN and the infinities, on every ISA. Each value is its own group of one position, so the normalized value
    is 0 and the output is act(shift): the shift carries the values."""
    v = np.concatenate([np.linspace(-100, 100, 20001), [-40.0, -39.99, 20.0, 20.01, 0.0, np.nan, np.inf,
                                                         -np.inf]]).astype(np.float32)
    x = np.zeros((1, 1, v.size), np.float32)
    t = torch.from_numpy(v[:-3].astype(np.float64))
    want = (t * torch.tanh(F.softplus(t))).numpy()
    for isa in native.available_isas():
        native.set_isa(isa)
        got = native.group_norm_f32(x, v.size, np.ones(v.size, np.float32), v, epsilon=1.0, channels_last=True,
                                    activation="mish").reshape(-1)
        np.testing.assert_allclose(got[:-3], want, rtol=4e-7, atol=2e-16, err_msg=isa)
        assert np.isnan(got[-3]) and got[-2] == np.inf and np.isnan(got[-1]), isa  # as torch.nn.functional.mish


def test_output_stage_refuses_overlaps():
    x, skip = np.ones((1, 8, 5), np.float32), np.ones((1, 8, 5), np.float32)
    args = dict(epsilon=1e-5, channels_last=False, activation="none")
    out = np.empty((1, 8, 5), np.float32)
    with pytest.raises(ValueError, match="residual must not overlap out"):
        native.group_norm_f32(x, 2, np.ones(8, np.float32), np.zeros(8, np.float32), **args, out=skip, residual=skip)
    with pytest.raises(ValueError, match="codes must not overlap x, out or residual"):
        native.group_norm_f32(x, 2, np.ones(8, np.float32), np.zeros(8, np.float32), **args, out=out,
                              codes=out.reshape(-1).view(np.int8)[:40].reshape(1, 8, 5), codes_scale=0.1)


@pytest.mark.usefixtures("restore_dispatch")
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("channels", [3, 16, 40, 64])  # below, at and past a vector of channels
def test_every_isa_gives_the_same_bits(activation, channels):
    """The channels-last loops run on the active ISA's vectorized copy (csrc/group_norm_rows.h); each lane is one
    channel, so every ISA sums and scales in the same order: the same floats as the portable build."""
    rng = np.random.default_rng(channels)
    x = (rng.standard_normal((2, 70, channels)) * 3 + 1).astype(np.float32)  # 70 positions: two chunks
    scale, shift = rng.uniform(0.5, 2, channels).astype(np.float32), rng.uniform(-1, 1, channels).astype(np.float32)
    groups = 1 if channels == 3 else 4 if channels != 40 else 8
    results = {}
    for isa in native.available_isas():
        native.set_isa(isa)
        results[isa] = native.group_norm_f32(x, groups, scale, shift, epsilon=1e-5, channels_last=True,
                                             activation=activation)
    for isa, y in results.items():
        np.testing.assert_array_equal(y, results["generic"], err_msg=isa)
