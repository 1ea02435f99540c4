"""Int4 x int8 GEMM (W4A8) on the W4_N16K8 weights, every ISA against the reference.

``gemm_w4a8_f32`` takes the same packed int4 weight as ``gemm_w4_f32`` and
float32 activations, quantizes each row of ``x`` to int8 per weight group
(symmetric, ``max |x| / 127``, the per-token rule of ``quantize_per_token``
applied to each group), takes exact int32 dot products of the codes and
sums them scaled, in float32, in group order. That arithmetic is the scalar
``gemm_w4a8_f32_ref`` (csrc/gemm_ref.h), and every ISA must reproduce it bit
for bit. The price of the int8 activations against ``gemm_w4_f32_ref``
(float32 activations, sums in double) is measured as a signal-to-noise ratio
on Gaussian activations: 43.3 to 45.9 dB measured (g32 about 45 dB, g128
about 44 dB), asserted >= ``SQNR_FLOOR_DB`` = 42 dB.

Outputs are poisoned before each call and followed by guard values checked
afterwards. The helpers are those of test_kernels_int4.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernels_int4 import ACTS, GROUPS, ISAS, POISON_BITS, codes_of, guarded, random_weight

from edgevla import native

SQNR_FLOOR_DB = 42.0
X_MODES = ["normal", "saturating", "zero_groups", "tiny", "huge"]

pytestmark = pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")


def activations(rng, m, k, group, mode):
    """float32 (m, k): Gaussian, or with a twist that reaches a corner of the quantization."""
    x = rng.normal(size=(m, k)).astype(np.float32)
    if mode == "saturating":  # every group holds +-amax (codes +-127) and values rounding to +-126.5
        x = rng.choice(np.array([-3.0, 3.0, -3.0 * 126.5 / 127, 1.5], np.float32), size=(m, k))
    elif mode == "zero_groups":  # whole groups of zeros (scale 0, codes 0), one row all zero
        for begin in range(0, k, 2 * group):
            x[:, begin : begin + group] = 0
        x[-1] = 0
    elif mode == "tiny":  # amax below 2**-100: codes 0 whatever the values
        x *= np.float32(2.0**-110)
    elif mode == "huge":
        x *= np.float32(1e30)
    return x


def run_w4a8(isa, x, packed, n, bias, act):
    native.set_isa(isa)
    out, buffer = guarded(x.shape[0], n)
    assert native.gemm_w4a8_f32(x, packed, bias, act=act, out=out) is out
    assert (buffer[out.size :].view(np.uint32) == POISON_BITS).all(), "the kernel wrote past the end of out"
    return out


def assert_same_bits(got, ref):
    """Bit-identical, NaN for NaN (the payload is not part of the contract)."""
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


def check(isa, rng, m, n, k, group, with_bias, act, mode="uniform", x_mode="normal"):
    qdata, scale = random_weight(rng, n, k, group, mode)
    x = activations(rng, m, k, group, x_mode)
    bias = rng.normal(size=n).astype(np.float32) if with_bias else None
    ref = native.gemm_w4a8_f32_ref(x, qdata, scale, group, bias, act=act)
    got = run_w4a8(isa, x, native.pack_w4(qdata, scale, group, k=k), n, bias, act)
    assert not np.isnan(got).any(), "NaN in the output: an element left unwritten?"
    assert_same_bits(got, ref)


# ------------------------------------------------------------ the contract --

def reference_in_numpy(x, qdata, scale, group):
    """The documented arithmetic of gemm_w4a8_f32_ref, in NumPy: per group quantize_per_token, exact
    integer dots, then acc = acc + float32(dot) * (x_scale * w_scale) in float32, group by group."""
    m, k = x.shape
    codes = codes_of(qdata, k).astype(np.int64)
    acc = np.zeros((m, qdata.shape[0]), np.float32)
    for g, begin in enumerate(range(0, k, group)):
        q, x_scale = native.quantize_per_token(np.ascontiguousarray(x[:, begin : begin + group]))
        dot = q.astype(np.int64) @ codes[:, begin : begin + group].T
        step = dot.astype(np.float32) * (x_scale[:, None] * scale[None, :, g])
        acc = (acc + step).astype(np.float32)
    return acc


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("k", [1, 40, 77, 256, 300])
def test_the_reference_is_the_documented_arithmetic(group, k):
    rng = np.random.default_rng(k + group)
    qdata, scale = random_weight(rng, 21, k, group)
    x = rng.normal(size=(3, k)).astype(np.float32)
    expected = reference_in_numpy(x, qdata, scale, group)
    assert_same_bits(native.gemm_w4a8_f32_ref(x, qdata, scale, group), expected)


@pytest.mark.parametrize("group", GROUPS)
def test_int8_activations_cost_little_accuracy(group):
    """SQNR against the float-activation reference on Gaussian activations (the weights are the same)."""
    rng = np.random.default_rng(group)
    for n, k in [(256, 768), (128, 3072), (512, 384)]:
        qdata, scale = random_weight(rng, n, k, group)
        x = rng.normal(size=(8, k)).astype(np.float32)
        ref = native.gemm_w4_f32_ref(x, qdata, scale, group).astype(np.float64)
        got = native.gemm_w4a8_f32(x, native.pack_w4(qdata, scale, group, k=k))
        sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2))
        assert sqnr >= SQNR_FLOOR_DB, f"SQNR {sqnr:.2f} dB at N={n}, K={k}, group {group}"


# ------------------------------------------------ kernels vs reference -------

@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.sampled_from([1, 1, 2, 3, 4, 5, 7, 9]),
       n=st.one_of(st.sampled_from([1, 15, 16, 17, 31, 33, 48]), st.integers(1, 70)),
       k=st.one_of(st.sampled_from([1, 2, 7, 8, 9, 31, 32, 33, 64, 127, 128, 129, 257]), st.integers(1, 400)),
       group=st.sampled_from(GROUPS), with_bias=st.booleans(), act=st.sampled_from(ACTS),
       mode=st.sampled_from(["uniform", "uniform", "extremes"]), x_mode=st.sampled_from(X_MODES),
       seed=st.integers(0, 2**32 - 1))
def test_every_isa_matches_the_reference_bit_for_bit(isa, m, n, k, group, with_bias, act, mode, x_mode, seed):
    """Odd K, K not a multiple of 8 or of the group (a partial last group), saturating and zero groups."""
    check(isa, np.random.default_rng(seed), m, n, k, group, with_bias, act, mode, x_mode)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n, k", [(1, 3072, 768), (16, 96, 3072), (64, 48, 384), (5, 40, 1000)])
def test_reference_shapes_on_every_isa(isa, m, n, k):
    rng = np.random.default_rng(m + n + k)
    check(isa, rng, m, n, k, 32, True, "gelu_tanh")
    check(isa, rng, m, n, k, 128, False, "none", "extremes", "saturating")
    check(isa, rng, m, n, k, 64, True, "gelu_erf", "uniform", "zero_groups")


@pytest.mark.parametrize("isa", ISAS)
def test_a_row_that_is_not_finite_gives_nan_and_leaves_the_others_alone(isa):
    rng = np.random.default_rng(3)
    qdata, scale = random_weight(rng, 20, 100, 32)
    x = rng.normal(size=(4, 100)).astype(np.float32)
    x[1, 50], x[3, 99] = np.nan, -np.inf
    got = run_w4a8(isa, x, native.pack_w4(qdata, scale, 32, k=100), 20, None, "none")
    assert np.isnan(got[[1, 3]]).all()
    assert_same_bits(got, native.gemm_w4a8_f32_ref(x, qdata, scale, 32))
    finite = native.gemm_w4a8_f32_ref(x[[0, 2]], qdata, scale, 32)
    assert_same_bits(got[[0, 2]], finite)


def test_row_strided_input_and_output_are_used_in_place():
    rng = np.random.default_rng(6)
    qdata, scale = random_weight(rng, 19, 77, 32)
    x = rng.normal(size=(5, 90)).astype(np.float32)[:, :77]
    wide = np.empty((5, 24), np.float32)
    wide.view(np.uint32)[:] = POISON_BITS
    native.gemm_w4a8_f32(x, native.pack_w4(qdata, scale, 32, k=77), out=wide[:, :19])
    assert_same_bits(wide[:, :19], native.gemm_w4a8_f32_ref(x, qdata, scale, 32))
    assert (wide[:, 19:].view(np.uint32) == POISON_BITS).all()


def test_a_large_batch_is_quantized_in_chunks():
    """More rows than one quantization chunk (about 1 MiB of codes) at a time."""
    rng = np.random.default_rng(7)
    qdata, scale = random_weight(rng, 17, 40000, 128)
    x = rng.normal(size=(30, 40000)).astype(np.float32)
    got = native.gemm_w4a8_f32(x, native.pack_w4(qdata, scale, 128))
    assert_same_bits(got, native.gemm_w4a8_f32_ref(x, qdata, scale, 128))


# --------------------------------------------------------- bad inputs -------

def test_bad_arguments_raise():
    rng = np.random.default_rng(8)
    qdata, scale = random_weight(rng, 4, 64, 32)
    packed = native.pack_w4(qdata, scale, 32)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="so their K must match: x has K = 63"):
        native.gemm_w4a8_f32(np.ones((2, 63), np.float32), packed)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        native.gemm_w4a8_f32(x.astype(np.float64), packed)
    with pytest.raises(ValueError, match="out must not share memory with the input packed"):
        native.gemm_w4a8_f32(x, packed, out=packed[64:96].view(np.float32).reshape(2, 4))
    with pytest.raises(ValueError, match="bias must hold one value per output channel"):
        native.gemm_w4a8_f32(x, packed, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="act"):
        native.gemm_w4a8_f32(x, packed, act="swish")
    with pytest.raises(ValueError, match="truncated or padded"):
        native.gemm_w4a8_f32(x, packed[:-4].copy())
    for index in (0, 4, 16, 56):
        corrupt = packed.copy()
        corrupt[index] ^= 0x5A
        with pytest.raises(ValueError, match="^packed "):
            native.gemm_w4a8_f32(x, corrupt)
    with pytest.raises(ValueError, match=r"^packed .*not 6"):
        native.gemm_w4a8_f32(x, native.pack_sparse_f32(np.ones((4, 64), np.float32)))
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128, got 16"):
        native.gemm_w4a8_f32_ref(x, qdata, scale, 16)
    with pytest.raises(ValueError, match=r"scale must be \(N, ceil\(K / group_size\)\) = \(4, 1\), got \(4, 2\)"):
        native.gemm_w4a8_f32_ref(x, qdata, scale, 64)
    with pytest.raises(ValueError, match=r"qdata must be \(N, ceil\(K / 2\)\) = \(4, 16\) for K = 32"):
        native.gemm_w4a8_f32_ref(x[:, :32].copy(), qdata, scale, 32)
