"""Int4 weight-only group-wise GEMM (W4_N16K8), every ISA against the reference.

The int4 codes are those of edgevla.quant.primitives: two per byte, element
``2i`` in the low nibble of byte ``i`` and ``2i + 1`` in the high nibble, 4-bit
two's complement in [-8, 7], zero point 0, ``w = code * scale[n, k // group]``.

The kernels sum in float32 (per group, then scaled); they must agree with
``gemm_w4_f32_ref`` (each dot product summed in double, rounded once) within

    |got - ref| <= 1.2 * (K + 8) * 2**-24 * (sum_k |w x| + |bias|)   (x 1.2 for GELU)
                   + 16 * 2**-24 * |ref|

Outputs are poisoned before each call and followed by guard values checked
afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevla import native
from edgevla.quant.primitives import Int4GroupedWeight, pack_int4

POISON_BITS = np.uint32(0x7FC0DEAD)
GUARD = 29
ISAS = native.available_isas()
ACTS = ["none", "relu", "gelu_tanh", "gelu_erf"]
GROUPS = [32, 64, 128]
U = 2.0**-24


pytestmark = pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")


def codes_of(qdata: np.ndarray, k: int) -> np.ndarray:
    """The int4 codes of a primitives-layout qdata, as int8 (N, K)."""
    nibbles = np.stack([qdata & 0xF, qdata >> 4], axis=-1).reshape(qdata.shape[0], -1)[:, :k].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def dense_weight(qdata, scale, group, k) -> np.ndarray:
    """code * scale in float64, (N, K)."""
    return codes_of(qdata, k) * np.repeat(scale.astype(np.float64), group, axis=1)[:, :k]


def random_weight(rng, n, k, group, mode="uniform"):
    """qdata with every nibble value (-8 and 7 included), scales, and the dense weight."""
    if mode == "extremes":  # every code -8 or 7
        nibbles = rng.choice(np.array([8, 7], np.uint8), size=(n, 2 * ((k + 1) // 2)))
        qdata = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    else:
        qdata = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
    scale = rng.uniform(1e-3, 1e-1, (n, -(-k // group))).astype(np.float32)
    return qdata, scale


def guarded(m, n):
    buffer = np.empty(m * n + GUARD, np.float32)
    buffer.view(np.uint32)[:] = POISON_BITS
    return buffer[: m * n].reshape(m, n), buffer


def assert_within_tolerance(got, ref, x, w, bias, act):
    assert not np.isnan(got).any(), "NaN in the output: an element left unwritten?"
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w).T
    if bias is not None:
        magnitude += np.abs(bias.astype(np.float64))
    slope = 1.2 if act in ("gelu_tanh", "gelu_erf") else 1.0  # GELU slopes stay under 1.13
    bound = slope * 1.2 * (x.shape[1] + 8) * U * magnitude + 16 * U * np.abs(ref.astype(np.float64)) + 1e-30
    error = np.abs(got.astype(np.float64) - ref)
    assert (error <= bound).all(), f"max error/bound {np.max(error / bound):.3g}"


def run_w4(isa, x, packed, n, bias, act):
    native.set_isa(isa)
    out, buffer = guarded(x.shape[0], n)
    assert native.gemm_w4_f32(x, packed, bias, act=act, out=out) is out
    assert (buffer[out.size :].view(np.uint32) == POISON_BITS).all(), "the kernel wrote past the end of out"
    return out


def check(isa, rng, m, n, k, group, with_bias, act, mode="uniform"):
    qdata, scale = random_weight(rng, n, k, group, mode)
    x = rng.normal(size=(m, k)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32) if with_bias else None
    ref = native.gemm_w4_f32_ref(x, qdata, scale, group, bias, act=act)
    got = run_w4(isa, x, native.pack_w4(qdata, scale, group, k=k), n, bias, act)
    assert_within_tolerance(got, ref, x, dense_weight(qdata, scale, group, k), bias, act)


# ------------------------------------------------ the primitives' convention --

def test_nibble_order_and_sign_follow_the_primitives():
    """Element 2i in the low nibble, 2i + 1 in the high nibble, two's complement, zero point 0."""
    codes = torch.tensor([[1, -2, -8, 7] + [0] * 28], dtype=torch.int8)
    qdata = pack_int4(codes).numpy()
    assert qdata[0, :2].tolist() == [0xE1, 0x78]
    scale = np.array([[0.5]], np.float32)
    x = np.eye(32, dtype=np.float32)[:4]  # picks the weights of columns 0..3
    for isa in ISAS:
        got = run_w4(isa, x, native.pack_w4(qdata, scale, 32), 1, None, "none")
        np.testing.assert_array_equal(got[:, 0], [0.5, -1.0, -4.0, 3.5])


@pytest.mark.parametrize("group", GROUPS)
def test_packing_an_int4_grouped_weight_computes_its_dequantized_linear(group):
    torch.manual_seed(group)
    weight = torch.randn(40, 256)
    q = Int4GroupedWeight.from_hp(weight, group)
    x = np.random.default_rng(group).normal(size=(3, 256)).astype(np.float32)
    qdata, scale = q.qdata.numpy(), q.scale.numpy()
    dense = dense_weight(qdata, scale, group, 256)  # code * scale, exact in float64
    np.testing.assert_allclose(q.dequantize().numpy(), dense, rtol=2**-24, atol=0)  # float32 rounding only
    ref = native.gemm_w4_f32_ref(x, qdata, scale, group)
    np.testing.assert_array_equal(ref, (x.astype(np.float64) @ dense.T).astype(np.float32))
    got = native.gemm_w4_f32(x, native.pack_w4(qdata, scale, q.group_size))
    assert_within_tolerance(got, ref, x, dense, None, "none")
    torch_out = (torch.from_numpy(x).double() @ q.dequantize().double().T).numpy()
    np.testing.assert_allclose(got, torch_out, rtol=1e-5, atol=1e-5 * np.abs(torch_out).max())


# ------------------------------------------------ kernels vs reference -------

@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.sampled_from([1, 1, 2, 3, 4, 5, 7, 9]),
       n=st.one_of(st.sampled_from([1, 15, 16, 17, 31, 33, 48]), st.integers(1, 70)),
       k=st.one_of(st.sampled_from([1, 2, 7, 8, 9, 31, 32, 33, 64, 127, 128, 129, 257]), st.integers(1, 400)),
       group=st.sampled_from(GROUPS), with_bias=st.booleans(), act=st.sampled_from(ACTS),
       mode=st.sampled_from(["uniform", "uniform", "extremes"]), seed=st.integers(0, 2**32 - 1))
def test_every_isa_matches_the_reference(isa, m, n, k, group, with_bias, act, mode, seed):
    """Odd K, K not a multiple of 8 or of the group (a partial last group) included."""
    check(isa, np.random.default_rng(seed), m, n, k, group, with_bias, act, mode)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n, k", [(1, 3072, 768), (16, 96, 3072), (64, 48, 384)])
def test_reference_shapes_on_every_isa(isa, m, n, k):
    rng = np.random.default_rng(m + n + k)
    check(isa, rng, m, n, k, 32, True, "gelu_tanh")
    check(isa, rng, m, n, k, 128, False, "none", "extremes")


# The float-activation and the W4A8 kernels take the same packed weight and the same arguments.
GEMMS = ["gemm_w4_f32", "gemm_w4a8_f32"]


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n, k", [(0, 5, 64), (3, 0, 64), (3, 5, 0), (0, 0, 0)])
def test_empty_shapes(gemm, isa, m, n, k):
    native.set_isa(isa)
    bias = np.linspace(-1, 1, n, dtype=np.float32)
    qdata, scale = np.full((n, (k + 1) // 2), 0x77, np.uint8), np.ones((n, -(-k // 32)), np.float32)
    got = getattr(native, gemm)(np.ones((m, k), np.float32), native.pack_w4(qdata, scale, 32, k=k), bias, act="relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0), (m, n)))


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count_or_the_batch(gemm, threads):
    """Every row is summed in the same order whatever the tiling: threads and batch size change no bit."""
    rng = np.random.default_rng(5)
    qdata, scale = random_weight(rng, 70, 520, 64)
    packed = native.pack_w4(qdata, scale, 64)
    x = rng.normal(size=(37, 520)).astype(np.float32)
    run = getattr(native, gemm)
    native.set_num_threads(1)
    single = run(x, packed, act="gelu_tanh")
    native.set_num_threads(threads)
    for rows in (slice(None), slice(0, 2), slice(5, 6), slice(3, 8)):  # split over N blocks, and over rows
        out, _ = guarded(x[rows].shape[0], 70)
        run(x[rows], packed, act="gelu_tanh", out=out)
        np.testing.assert_array_equal(out, single[rows])


def test_row_strided_input_and_output_are_used_in_place():
    rng = np.random.default_rng(6)
    qdata, scale = random_weight(rng, 19, 77, 32)
    x = rng.normal(size=(5, 90)).astype(np.float32)[:, :77]
    wide = np.empty((5, 24), np.float32)
    wide.view(np.uint32)[:] = POISON_BITS
    native.gemm_w4_f32(x, native.pack_w4(qdata, scale, 32, k=77), out=wide[:, :19])
    ref = native.gemm_w4_f32_ref(x, qdata, scale, 32)
    assert_within_tolerance(wide[:, :19], ref, x, dense_weight(qdata, scale, 32, 77), None, "none")
    assert (wide[:, 19:].view(np.uint32) == POISON_BITS).all()


# ------------------------------------------------------------ packing --------

def test_layout_matches_the_documented_format():
    rng = np.random.default_rng(7)
    n, k, group = 20, 83, 32
    qdata, scale = random_weight(rng, n, k, group)
    packed = native.pack_w4(qdata, scale, group, k=k)
    assert packed[:4].tobytes() == b"EVLA"
    fmt, version, block_n, block_k = packed[4:12].view("<u2")
    assert (fmt, version, block_n, block_k) == (6, 1, 16, group)
    got_n, got_k, param0, param1, total = packed[16:56].view("<i8")
    assert (got_n, got_k, param0, param1, total) == (n, k, 0, 0, packed.size)
    n_blocks, k_cells, k_groups = 2, 11, 3
    words = packed[64 : 64 + 4 * 16 * n_blocks * k_cells].view("<u4").reshape(n_blocks, k_cells, 16)
    codes = np.zeros((16 * n_blocks, 8 * k_cells), np.int8)
    for i in range(8):
        nibble = ((words >> (4 * i)) & 0xF).astype(np.int8)
        signed = np.where(nibble > 7, nibble - 16, nibble)  # (n_blocks, k_cells, 16)
        codes.reshape(n_blocks, 16, k_cells, 8)[:, :, :, i] = signed.transpose(0, 2, 1)
    np.testing.assert_array_equal(codes[:n, :k], codes_of(qdata, k))
    assert not codes[n:].any() and not codes[:, k:].any()
    scales_offset = -(-(64 + 4 * 16 * n_blocks * k_cells) // 64) * 64
    scales = packed[scales_offset : scales_offset + 4 * 16 * n_blocks * k_groups].view("<f4")
    np.testing.assert_array_equal(scales.reshape(n_blocks, k_groups, 16).transpose(0, 2, 1).reshape(-1, k_groups)[:n],
                                  scale)
    info = native.packed_info(packed)
    assert (info["format"], info["group_size"], info["weight_dtype"]) == ("w4_n16k8", group, "int4")


def test_odd_k_ignores_the_last_high_nibble():
    rng = np.random.default_rng(8)
    qdata, scale = random_weight(rng, 4, 33, 32)
    x = rng.normal(size=(2, 33)).astype(np.float32)
    flipped = qdata.copy()
    flipped[:, -1] ^= 0xF0
    a = native.gemm_w4_f32(x, native.pack_w4(qdata, scale, 32, k=33))
    np.testing.assert_array_equal(a, native.gemm_w4_f32(x, native.pack_w4(flipped, scale, 32, k=33)))


def test_every_corrupted_header_byte_is_caught():
    rng = np.random.default_rng(9)
    packed = native.pack_w4(*random_weight(rng, 5, 64, 32), 32)
    x = rng.normal(size=(2, 64)).astype(np.float32)
    for index in range(64):
        corrupt = packed.copy()
        corrupt[index] ^= 0x5A
        with pytest.raises(ValueError, match="^packed "):
            native.gemm_w4_f32(x, corrupt)
    with pytest.raises(ValueError, match="truncated or padded"):
        native.gemm_w4_f32(x, packed[:-4].copy())
    with pytest.raises(ValueError, match=r"has packed format 6 \(int4 group-wise, made by pack_w4\), not 2"):
        native.gemm_sparse_f32(x, packed)


def test_bad_arguments_raise():
    qdata, scale = np.zeros((4, 32), np.uint8), np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128, got 16"):
        native.pack_w4(qdata, scale, 16)
    with pytest.raises(TypeError, match="group_size must be an int"):
        native.pack_w4(qdata, scale, 32.0)
    np.testing.assert_array_equal(native.pack_w4(qdata, scale, np.int64(32), k=np.int32(64)),
                                  native.pack_w4(qdata, scale, 32))  # NumPy integers are integers
    with pytest.raises(ValueError, match=r"scale must be \(N, ceil\(K / group_size\)\) = \(4, 1\), got \(4, 2\)"):
        native.pack_w4(qdata, scale, 64)
    with pytest.raises(ValueError, match=r"qdata must be \(N, ceil\(K / 2\)\) = \(4, 17\) for K = 33, got 32 columns"):
        native.pack_w4(qdata, scale, 32, k=33)
    with pytest.raises(TypeError, match="qdata must have dtype uint8, got int8"):
        native.pack_w4(qdata.view(np.int8), scale, 32)
    with pytest.raises(ValueError, match="k must be None or a non-negative int"):
        native.pack_w4(qdata, scale, 32, k=-1)
    packed = native.pack_w4(qdata, scale, 32)
    with pytest.raises(ValueError, match="so their K must match: x has K = 63"):
        native.gemm_w4_f32(np.ones((2, 63), np.float32), packed)
    with pytest.raises(ValueError, match="out must not share memory with the input packed"):
        native.gemm_w4_f32(np.ones((2, 64), np.float32), packed, out=packed[64:96].view(np.float32).reshape(2, 4))
