"""Unstructured sparse and 2:4 GEMMs, float32 and int8, every ISA against the references.

Exactness: the int8 kernels accumulate exactly in int32 and share the W8A8
epilogue of gemm_s8s8.h, so their output must be *bit-identical* to
``gemm_s8s8_f32_ref`` on the dense weight (compared as uint32 bit patterns).
The float32 kernels sum in float32 in their own order; they must agree with
``gemm_f32_ref`` (each dot product summed in double, rounded once) within

    |got - ref| <= 1.2 * (K + 8) * 2**-24 * (sum_k |w x| + |bias|)   (x 1.2 for GELU)
                   + 16 * 2**-24 * |ref|

the worst-case error of any float32 summation order plus the rounding of the
epilogue. Outputs are poisoned before each call and followed by guard values
checked afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from int8_kernels import symmetric_activations

from edgevla import native

POISON_BITS = np.uint32(0x7FC0DEAD)
GUARD = 29
ISAS = native.available_isas()
ACTS = ["none", "relu", "gelu_tanh", "gelu_erf"]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]
U = 2.0**-24


pytestmark = pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")


# ----------------------------------------------------------------- helpers ---

def random_int8(rng, shape, mode="uniform"):
    if mode == "extremes":
        return rng.choice(np.array([-128, -127, 127], np.int8), size=shape)
    if mode == "min":
        return np.full(shape, -128, np.int8)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def unstructured(rng, w, sparsity):
    """w with a random `sparsity` fraction of its entries zeroed."""
    w = w.copy()
    w[rng.random(w.shape) < sparsity] = 0
    return w


def two_to_four(rng, w):
    """w with 2 random entries of every group of 4 consecutive columns zeroed (2:4)."""
    n, k = w.shape
    w = w.copy()
    for start in range(0, k, 4):
        width = min(4, k - start)
        drop = np.argsort(rng.random((n, 4)), axis=1)[:, :2]
        for column in range(2):
            rows = np.arange(n)[drop[:, column] < width]
            w[rows, start + drop[rows, column]] = 0
    return w


def guarded(m, n):
    buffer = np.empty(m * n + GUARD, np.float32)
    buffer.view(np.uint32)[:] = POISON_BITS
    return buffer[: m * n].reshape(m, n), buffer


def assert_guard_intact(buffer, m, n):
    assert (buffer[m * n :].view(np.uint32) == POISON_BITS).all(), "the kernel wrote past the end of out"


def assert_bits_equal(got, expected):
    mismatched = got.view(np.uint32) != expected.view(np.uint32)
    assert not mismatched.any(), f"{mismatched.sum()} elements differ, first at {np.argwhere(mismatched)[0]}"


def assert_within_tolerance(got, ref, x, w_abs, bias, act):
    """The float32 bound of the module docstring; w_abs is |W| (N, K) in float64."""
    assert not np.isnan(got).any(), "NaN in the output: an element left unwritten?"
    k = x.shape[1]
    magnitude = np.abs(x.astype(np.float64)) @ w_abs.T
    if bias is not None:
        magnitude += np.abs(bias.astype(np.float64))
    slope = 1.2 if act in ("gelu_tanh", "gelu_erf") else 1.0  # GELU slopes stay under 1.13
    bound = slope * 1.2 * (k + 8) * U * magnitude + 16 * U * np.abs(ref.astype(np.float64)) + 1e-30
    error = np.abs(got.astype(np.float64) - ref)
    assert (error <= bound).all(), f"max error/bound {np.max(error / bound):.3g}"


# Each kernel family as (pack, run): run(isa, x_or_a, packed, ...) into a guarded out.

def run_f32(gemm, isa, x, packed, n, bias, act):
    native.set_isa(isa)
    out, buffer = guarded(x.shape[0], n)
    assert gemm(x, packed, bias, act=act, out=out) is out
    assert_guard_intact(buffer, x.shape[0], n)
    return out


def run_s8(gemm, isa, a, packed, n, a_scale, bias, act):
    native.set_isa(isa)
    out, buffer = guarded(a.shape[0], n)
    assert gemm(a, packed, a_scale, bias, act=act, out=out) is out
    assert_guard_intact(buffer, a.shape[0], n)
    return out


FLOAT_KINDS = {
    "sparse": (native.pack_sparse_f32, native.gemm_sparse_f32),
    "2to4": (native.pack_2to4_f32, native.gemm_2to4_f32),
}
INT8_KINDS = {
    "sparse": (native.pack_sparse_s8, native.gemm_sparse_s8s8_f32),
    "2to4": (native.pack_2to4_s8, native.gemm_2to4_s8s8_f32),
}


def sparsify(rng, w, kind, sparsity):
    return two_to_four(rng, w) if kind == "2to4" else unstructured(rng, w, sparsity)


def check_f32(kind, isa, rng, m, n, k, sparsity, with_bias, act, x=None):
    pack, gemm = FLOAT_KINDS[kind]
    x = rng.normal(size=(m, k)).astype(np.float32) if x is None else x
    w = sparsify(rng, rng.normal(size=(n, k)).astype(np.float32), kind, sparsity)
    bias = rng.normal(size=n).astype(np.float32) if with_bias else None
    ref = native.gemm_f32_ref(x, w, bias, act=act)
    got = run_f32(gemm, isa, x, pack(w), n, bias, act)
    assert_within_tolerance(got, ref, x, np.abs(w.astype(np.float64)), bias, act)


def check_s8(kind, isa, rng, m, n, k, sparsity, mode, per_token, with_bias, act):
    pack, gemm = INT8_KINDS[kind]
    if mode.startswith("symmetric"):
        a, w = symmetric_activations(rng, (m, k), (n, k), mode)
    else:
        a, w = random_int8(rng, (m, k), mode), random_int8(rng, (n, k), mode)
    w = sparsify(rng, w, kind, sparsity)
    w_scale = rng.uniform(1e-4, 1e-2, size=n).astype(np.float32)
    a_scale = rng.uniform(1e-3, 1e-1, size=m if per_token else 1).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32) if with_bias else None
    expected = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act)
    assert_bits_equal(run_s8(gemm, isa, a, pack(w, w_scale), n, a_scale, bias, act), expected)


# ------------------------------------------------ kernels vs references -------

SHAPES = dict(
    m=st.sampled_from([1, 1, 2, 3, 4, 5, 7, 9]),
    n=st.one_of(st.sampled_from([1, 15, 16, 17, 31, 33, 48]), st.integers(1, 70)),
    k=st.one_of(st.sampled_from([1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 257]), st.integers(1, 300)),
)


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**SHAPES, sparsity=st.sampled_from(SPARSITIES), with_bias=st.booleans(), act=st.sampled_from(ACTS),
       seed=st.integers(0, 2**32 - 1))
def test_float_kernels_match_the_reference(kind, isa, m, n, k, sparsity, with_bias, act, seed):
    check_f32(kind, isa, np.random.default_rng(seed), m, n, k, sparsity, with_bias, act)


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**SHAPES, sparsity=st.sampled_from(SPARSITIES),
       mode=st.sampled_from(["uniform", "uniform", "extremes", "min", "symmetric", "symmetric-extremes"]),
       per_token=st.booleans(), with_bias=st.booleans(), act=st.sampled_from(ACTS), seed=st.integers(0, 2**32 - 1))
def test_int8_kernels_are_bit_identical_to_the_reference(kind, isa, m, n, k, sparsity, mode, per_token, with_bias,
                                                         act, seed):
    check_s8(kind, isa, np.random.default_rng(seed), m, n, k, sparsity, mode, per_token, with_bias, act)


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
def test_reference_shapes_on_every_isa(kind, isa):
    """A base-vla MLP shape at M = 16, large enough to be split over threads."""
    rng = np.random.default_rng(1)
    check_f32(kind, isa, rng, 16, 192, 768, 0.9, True, "gelu_tanh")
    check_s8(kind, isa, rng, 16, 192, 768, 0.5, "uniform", True, True, "gelu_tanh")


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [300, 50_000])
def test_row_chunks_and_tile_tails(kind, isa, k):
    """M = 11: at K = 300 one chunk of two 4-row tiles and 3 rows left (AVX-VNNI's 2:4 kernel decodes each
    block's indices once for all of them); at K = 50000 the kernels that stage activations take 4 rows a
    chunk (256 KiB): two chunks of one tile and one of 3 rows, each restaged."""
    check_s8(kind, isa, np.random.default_rng(12), 11, 20, k, 0.5, "uniform", True, True, "relu")


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
def test_rows_with_and_without_minus_128_in_one_call(kind, isa):
    """M = 7 at the extremes: rows 2-3 (one tile of two) hold a -128 and take the AVX2 2:4 kernel's widening
    path, the others its signed one; every ISA gives the reference's bits."""
    rng = np.random.default_rng(5)
    pack, gemm = INT8_KINDS[kind]
    a, w = symmetric_activations(rng, (7, 181), (29, 181), "symmetric-extremes")
    a[3, 100] = -128
    w = sparsify(rng, w, kind, 0.5)
    w_scale, a_scale = rng.uniform(1e-4, 1e-2, 29).astype(np.float32), rng.uniform(1e-3, 1e-1, 7).astype(np.float32)
    expected = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, None, act="relu")
    assert_bits_equal(run_s8(gemm, isa, a, pack(w, w_scale), 29, a_scale, None, "relu"), expected)


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
def test_int32_accumulators_are_exact_at_saturation(kind, isa):
    """Unit scales, no bias: out == float32(acc). Half of K = 120000 products of -128 * -128 reach 9.8e8."""
    k = 120_000
    a = np.stack([np.full(k, -128, np.int8), np.full(k, 127, np.int8), random_int8(np.random.default_rng(2), k)])
    w = np.stack([np.full(k, -128, np.int8), np.full(k, 127, np.int8), np.full(k, -127, np.int8)])
    w = sparsify(np.random.default_rng(3), w, kind, 0.5)
    acc = a.astype(np.int64) @ w.astype(np.int64).T
    pack, gemm = INT8_KINDS[kind]
    out = run_s8(gemm, isa, a, pack(w, np.ones(3, np.float32)), 3, np.float32(1), None, "none")
    np.testing.assert_array_equal(out, acc.astype(np.float32))
    assert np.abs(acc).max() > 2**29


@pytest.mark.parametrize("isa", ISAS)
def test_float_reference_is_the_double_product(isa):
    rng = np.random.default_rng(4)
    x, w, bias = rng.normal(size=(3, 70)).astype(np.float32), rng.normal(size=(9, 70)).astype(np.float32), None
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_array_equal(native.gemm_f32_ref(x, w, bias), exact.astype(np.float32))


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
def test_all_zero_weights_leave_the_activated_bias(kind, isa):
    """Full sparsity (-0.0 counts as zero): out = act(bias) exactly, every row."""
    rng = np.random.default_rng(5)
    bias = rng.normal(size=21).astype(np.float32)
    w = np.zeros((21, 37), np.float32)
    w[::2] = -0.0
    x = rng.normal(size=(4, 37)).astype(np.float32)
    pack, gemm = FLOAT_KINDS[kind]
    packed = pack(w)
    if kind == "sparse":
        assert native.packed_info(packed)["nonzeros"] == 0 and native.packed_info(packed)["slots"] == 0
    got = run_f32(gemm, isa, x, packed, 21, bias, "relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0), (4, 21)))


@pytest.mark.parametrize("isa", ISAS)
def test_nan_weights_are_not_sparsity(isa):
    """A NaN weight is stored (NaN != 0), so its channel's outputs are NaN, as in a dense GEMM."""
    w = np.zeros((18, 40), np.float32)
    w[17, 33] = np.nan
    w[2, 5] = 1.0
    x = np.ones((2, 40), np.float32)
    got = run_f32(native.gemm_sparse_f32, isa, x, native.pack_sparse_f32(w), 18, None, "none")
    assert np.isnan(got[:, 17]).all() and (got[:, 2] == 1).all()
    assert not np.isnan(np.delete(got, 17, axis=1)).any()


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n, k", [(0, 5, 8), (3, 0, 8), (3, 5, 0), (0, 0, 0)])
def test_empty_shapes(kind, isa, m, n, k):
    native.set_isa(isa)
    bias = np.linspace(-1, 1, n, dtype=np.float32)
    pack, gemm = FLOAT_KINDS[kind]
    got = gemm(np.ones((m, k), np.float32), pack(np.ones((n, k), np.float32) * (kind == "sparse")), bias, act="relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0), (m, n)))
    pack, gemm = INT8_KINDS[kind]
    got = gemm(np.ones((m, k), np.int8), pack(np.zeros((n, k), np.int8), np.ones(n, np.float32)), np.float32(1), bias)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (m, n)))


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(kind, threads):
    rng = np.random.default_rng(6)
    a, w = random_int8(rng, (37, 520)), sparsify(rng, random_int8(rng, (70, 520)), kind, 0.5)
    w_scale, a_scale = rng.uniform(1e-3, 1e-2, 70).astype(np.float32), rng.uniform(1e-2, 1e-1, 37).astype(np.float32)
    expected = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, act="gelu_tanh")
    x = rng.normal(size=(37, 520)).astype(np.float32)
    wf = sparsify(rng, rng.normal(size=(70, 520)).astype(np.float32), kind, 0.5)
    native.set_num_threads(1)
    pack_f, gemm_f = FLOAT_KINDS[kind]
    single = gemm_f(x, pack_f(wf))
    native.set_num_threads(threads)
    pack, gemm = INT8_KINDS[kind]
    packed = pack(w, w_scale)
    for rows in (slice(None), slice(0, 2)):  # split over N blocks, and over rows
        out, buffer = guarded(a[rows].shape[0], 70)
        gemm(a[rows], packed, a_scale[rows], act="gelu_tanh", out=out)
        assert_bits_equal(out, expected[rows])
        assert_guard_intact(buffer, a[rows].shape[0], 70)
    assert_bits_equal(gemm_f(x, pack_f(wf)), single)  # each output's float sum is one thread's


def test_row_strided_input_and_output_are_used_in_place():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 90)).astype(np.float32)[:, :77]
    w = unstructured(rng, rng.normal(size=(19, 77)).astype(np.float32), 0.7)
    wide = np.empty((5, 24), np.float32)
    wide.view(np.uint32)[:] = POISON_BITS
    native.gemm_sparse_f32(x, native.pack_sparse_f32(w), out=wide[:, :19])
    assert_within_tolerance(wide[:, :19], native.gemm_f32_ref(x, w), x, np.abs(w.astype(np.float64)), None, "none")
    assert (wide[:, 19:].view(np.uint32) == POISON_BITS).all()


def test_linear_runs_every_format_on_float_activations():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    w = two_to_four(rng, rng.normal(size=(20, 64)).astype(np.float32))
    bias = rng.normal(size=20).astype(np.float32)
    for pack, gemm in FLOAT_KINDS.values():
        packed = pack(w)
        assert native.packed_info(packed)["activation_dtype"] == "float32"
        assert_bits_equal(native.linear(x, packed, bias, act="relu"), gemm(x, packed, bias, act="relu"))
    w_scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    q, a_scale = native.quantize_per_token(x)
    for pack, gemm in [(native.pack_weight_s8, native.gemm_s8s8_f32), *INT8_KINDS.values()]:
        packed = pack(w_q, w_scale)
        assert native.packed_info(packed)["activation_dtype"] == "int8"
        assert_bits_equal(native.linear(x, packed, bias), gemm(q, packed, a_scale, bias))
    assert np.abs(native.linear(x, packed, bias) - (x @ w.T + bias)).max() < 0.05 * np.abs(x @ w.T).max()


# ------------------------------------------------------------ packing --------

def test_sparse_layout_matches_the_documented_format():
    """Rebuild W from the bytes, reading them as csrc/packed_formats.h says."""
    rng = np.random.default_rng(9)
    n, k = 35, 70
    w = unstructured(rng, rng.normal(size=(n, k)).astype(np.float32), 0.8)
    w_int8 = np.clip(np.rint(w * 40), -128, 127).astype(np.int8)
    for dtype, packed, value_dtype in [
        ("f32", native.pack_sparse_f32(w), np.float32),
        ("s8", native.pack_sparse_s8(w_int8, np.arange(n, dtype=np.float32)), np.int8),
    ]:
        header = packed[:64]
        assert header[:4].tobytes() == b"EVLA"
        fmt, version, block_n, block_k = header[4:12].view("<u2")
        assert (fmt, version, block_n, block_k) == ((2 if dtype == "f32" else 3), 1, 16, 32)
        got_n, got_k, slots, nonzeros, total = header[16:56].view("<i8")
        assert (got_n, got_k, total) == (n, k, packed.size)
        n_slices, n_windows = 3, 3
        slice_slots = packed[64 : 64 + 4 * (n_slices + 1)].view("<u4")
        assert slice_slots[0] == 0 and slice_slots[-1] == slots
        window_offset = 128  # 64 + 16 bytes, rounded up to 64
        window_slots = packed[window_offset : window_offset + n_slices * n_windows].reshape(n_slices, n_windows)
        slot_offset = 192
        slot_bytes = 16 * (1 + np.dtype(value_dtype).itemsize)
        rebuilt = np.zeros((n_slices * 16, k), np.float64)
        slot = 0
        for s in range(n_slices):
            assert slice_slots[s] == slot
            for win in range(n_windows):
                for _ in range(window_slots[s, win]):
                    raw = packed[slot_offset + slot * slot_bytes : slot_offset + (slot + 1) * slot_bytes]
                    positions, values = raw[:16], raw[16:].view(value_dtype)
                    for lane in range(16):
                        if values[lane] != 0:
                            rebuilt[16 * s + lane, 32 * win + positions[lane]] = values[lane]
                    slot += 1
        assert slot == slots
        dense = w if dtype == "f32" else w_int8
        np.testing.assert_array_equal(rebuilt[:n], dense)
        assert nonzeros == np.count_nonzero(dense)
        if dtype == "s8":
            scale_offset = -(-(slot_offset + slots * slot_bytes) // 64) * 64
            np.testing.assert_array_equal(packed[scale_offset : scale_offset + 4 * n].view("<f4"), np.arange(n))


def test_2to4_layout_matches_the_documented_format():
    rng = np.random.default_rng(10)
    n, k = 20, 37
    w = two_to_four(rng, rng.integers(-128, 128, (n, k)).astype(np.float32))
    n_blocks, k_blocks = 2, 3
    for dtype in ("f32", "s8"):
        if dtype == "f32":
            packed, cell_bytes = native.pack_2to4_f32(w), 544
        else:
            packed, cell_bytes = native.pack_2to4_s8(w.astype(np.int8), np.ones(n, np.float32)), 160
        assert packed[4:6].view("<u2")[0] == (4 if dtype == "f32" else 5)
        rebuilt = np.zeros((16 * n_blocks, 16 * k_blocks))
        for b in range(n_blocks):
            for kb in range(k_blocks):
                cell = packed[64 + (b * k_blocks + kb) * cell_bytes : 64 + (b * k_blocks + kb + 1) * cell_bytes]
                meta = cell[-32:].view("<u2")
                if dtype == "f32":
                    values = cell[:512].view("<f4").reshape(8, 16)  # [j][channel]
                else:  # [vector][channel][4] with vector 0 = v0 v4 v1 v5, vector 1 = v2 v6 v3 v7
                    raw = cell[:128].view(np.int8).reshape(2, 16, 4)
                    order = {0: (0, 0), 4: (0, 1), 1: (0, 2), 5: (0, 3), 2: (1, 0), 6: (1, 1), 3: (1, 2), 7: (1, 3)}
                    values = np.stack([raw[order[j][0], :, order[j][1]] for j in range(8)])
                for c in range(16):
                    for j in range(8):
                        position = 16 * kb + 4 * (j // 2) + ((int(meta[c]) >> (2 * j)) & 3)
                        rebuilt[16 * b + c, position] += values[j, c]
        np.testing.assert_array_equal(rebuilt[:n, :k], w)
        assert not rebuilt[n:].any() and not rebuilt[:, k:].any()
        if dtype == "s8":
            compensation = packed[-128:].view("<i4")[:n]
            np.testing.assert_array_equal(compensation, 128 * w.sum(axis=1))


def test_2to4_packing_rejects_dense_groups_and_accepts_partial_ones():
    w = np.zeros((3, 10), np.float32)
    w[1, 4:7] = 1.0  # three non-zeros in columns 4..7
    with pytest.raises(ValueError, match=r"w is not 2:4 sparse: row 1 has 3 non-zeros in columns 4\.\.7"):
        native.pack_2to4_f32(w)
    with pytest.raises(ValueError, match="row 1 has 3 non-zeros"):
        native.pack_2to4_s8(w.astype(np.int8), np.ones(3, np.float32))
    w[1, 5] = 0
    w[2, 8:10] = 2.0  # the last, partial group: 2 of 2
    native.pack_2to4_f32(w)


def test_packed_info_describes_each_format():
    rng = np.random.default_rng(11)
    w = two_to_four(rng, rng.normal(size=(5, 40)).astype(np.float32))
    info = native.packed_info(native.pack_sparse_f32(w))
    assert info["format"] == "sparse_f32_n16w32" and (info["n"], info["k"]) == (5, 40)
    assert info["nonzeros"] == np.count_nonzero(w) and info["weight_dtype"] == "float32"
    info = native.packed_info(native.pack_2to4_s8(np.sign(w).astype(np.int8), np.ones(5, np.float32)))
    assert info["format"] == "2to4_s8_n16k16" and info["activation_dtype"] == "int8"
    assert (info["block_n"], info["block_k"], info["version"]) == (16, 16, 1)


# ------------------------------------------------------ bad arguments --------

def _packed(kind="sparse"):
    rng = np.random.default_rng(12)
    w = two_to_four(rng, rng.normal(size=(5, 20)).astype(np.float32))
    return rng.normal(size=(3, 20)).astype(np.float32), FLOAT_KINDS[kind][0](w)


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
def test_every_corrupted_header_byte_is_caught(kind):
    x, packed = _packed(kind)
    gemm = FLOAT_KINDS[kind][1]
    for index in range(64):
        corrupt = packed.copy()
        corrupt[index] ^= 0x5A
        with pytest.raises(ValueError, match="^packed "):
            gemm(x, corrupt)


def test_a_packed_weight_of_another_format_is_refused_by_name():
    x, packed = _packed("sparse")
    with pytest.raises(ValueError, match=r"packed has packed format 2 \(unstructured sparse float32, made by "
                                         r"pack_sparse_f32\), not 4 \(2:4 sparse float32, made by pack_2to4_f32\)"):
        native.gemm_2to4_f32(x, packed)
    with pytest.raises(ValueError, match=r"not 3 \(unstructured sparse int8"):
        native.gemm_sparse_s8s8_f32(x.astype(np.int8), packed, np.float32(1))
    with pytest.raises(ValueError, match=r"not 1 \(int8 N16K4"):
        native.gemm_s8s8_f32(x.astype(np.int8), packed, np.float32(1))


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
def test_truncated_or_padded_buffers_are_refused(kind):
    x, packed = _packed(kind)
    gemm = FLOAT_KINDS[kind][1]
    for bad in (packed[:-1].copy(), np.concatenate([packed, np.zeros(64, np.uint8)]), packed[:63].copy()):
        with pytest.raises(ValueError, match="truncated or padded|shorter than the 64-byte header"):
            gemm(x, bad)


_FUZZ = textwrap.dedent("""
    import numpy as np
    from edgevla import native
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 70)).astype(np.float32)
    a = rng.integers(-128, 128, (3, 70), dtype=np.int8)
    w = rng.normal(size=(40, 70)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    w24 = w.copy()
    w24.reshape(40, -1, 2)[:, :, 1] = 0
    cases = [
        (native.pack_sparse_f32(w), lambda p: native.gemm_sparse_f32(x, p)),
        (native.pack_sparse_s8(np.sign(w).astype(np.int8), np.ones(40, np.float32)),
         lambda p: native.gemm_sparse_s8s8_f32(a, p, np.float32(1))),
        (native.pack_2to4_f32(w24), lambda p: native.gemm_2to4_f32(x, p)),
        (native.pack_2to4_s8(np.sign(w24).astype(np.int8), np.ones(40, np.float32)),
         lambda p: native.gemm_2to4_s8s8_f32(a, p, np.float32(1))),
    ]
    for isa in native.available_isas():
        native.set_isa(isa)
        for packed, run in cases:
            for trial in range(40):
                body = packed.copy()
                garbage = rng.integers(0, 256, packed.size - 64, dtype=np.uint8)
                keep = rng.random(packed.size - 64) < [0.0, 0.5, 0.9, 0.99][trial % 4]
                body[64:] = np.where(keep, body[64:], garbage)
                assert run(body).shape == (3, 40)
    print("survived")
""")


def test_garbage_bodies_behind_a_valid_header_never_crash(tmp_path):
    """Offsets, counts and positions in the body are clamped or masked by every kernel.

    Run in a child process, so a crash fails this test instead of the session; outside
    the checkout, whose source tree would shadow the installed package.
    """
    result = subprocess.run([sys.executable, "-c", _FUZZ], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "survived"


BAD_ARGS = {
    "K mismatch": (ValueError, "so their K must match: x has K = 19", lambda x, p: dict(x=x[:, :19])),
    "x int8": (TypeError, "x must have dtype float32, got int8", lambda x, p: dict(x=x.astype(np.int8))),
    "bias length": (ValueError, "bias must hold one value per output channel (N = 5), got 4",
                    lambda x, p: dict(bias=np.ones(4, np.float32))),
    "unknown act": (ValueError, "act must be 'none', 'relu', 'gelu_tanh' or 'gelu_erf'", lambda x, p: dict(act="silu")),
    "out shape": (ValueError, "out must have shape (M, N) = (3, 5)",
                  lambda x, p: dict(out=np.zeros((5, 3), np.float32))),
    "out over packed": (ValueError, "out must not share memory with the input packed",
                        lambda x, p: dict(out=p[64 : 64 + 60].view(np.float32).reshape(3, 5))),
    "packed int8": (TypeError, "packed must have dtype uint8", lambda x, p: dict(packed=p.view(np.int8))),
    "packed 2-D": (ValueError, "packed must be a 1-D array", lambda x, p: dict(packed=p.reshape(-1, 4))),
    "a list": (TypeError, "got list", lambda x, p: dict(packed=p.tolist())),
}


@pytest.mark.parametrize("kind", ["sparse", "2to4"])
@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_gemm_arguments_raise(kind, case):
    x, packed = _packed(kind)
    error, message, change = BAD_ARGS[case]
    args = dict(x=x, packed=packed, bias=None, act="none", out=None)
    args.update(change(x, packed))
    before = packed.copy()
    with pytest.raises(error) as info:
        FLOAT_KINDS[kind][1](args.pop("x"), args.pop("packed"), args.pop("bias"), **args)
    assert message in str(info.value)
    np.testing.assert_array_equal(packed, before)


def test_bad_pack_arguments_raise():
    with pytest.raises(TypeError, match="w must have dtype float32, got float64"):
        native.pack_sparse_f32(np.ones((4, 8)))
    with pytest.raises(TypeError, match="w must have dtype int8, got float32"):
        native.pack_sparse_s8(np.ones((4, 8), np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"w_scale must hold one value per output channel \(N = 4, the rows of w\)"):
        native.pack_2to4_s8(np.zeros((4, 8), np.int8), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="K = 131072 is too large"):
        native.pack_sparse_s8(np.zeros((1, 131072), np.int8), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="w must have contiguous rows"):
        native.pack_sparse_f32(np.ones((4, 8), np.float32).T)
