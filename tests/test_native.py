"""edgevla.native / edgevla._C against NumPy references.

int8 GEMM results must match an int64 NumPy reference exactly (tolerance 0).
The float32 epilogue is compared with float64 NumPy within four float32
roundings (see `_f32_tolerance`). Every output buffer is poisoned before the
call and surrounded by guard values checked afterwards, so an unwritten
element or a write past the end fails a test. Bad arguments must raise
TypeError / ValueError, never crash the interpreter.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathlib import Path

from edgevla import _C, native
from edgevla.errors import EdgevlaError

REPO = Path(__file__).resolve().parents[1]

INT32_POISON = np.int32(0x7F7F7F7F)
FLOAT_POISON_BITS = np.uint32(0x7FC0DEAD)  # a quiet NaN with a recognisable payload
GUARD = 37  # extra elements after every output


pytestmark = pytest.mark.usefixtures("split_small_gemms")


# ----------------------------------------------------------------- helpers ---

def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform over the whole int8 range, -128 included."""
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def reference_acc(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a @ w.T in int64: exact, the ground truth for the int32 kernels."""
    return a.astype(np.int64) @ w.astype(np.int64).T


def reference_f32(acc, w_scale, a_scale, bias) -> np.ndarray:
    """The dequantization epilogue in float64 (inputs are the same float32 values)."""
    a_col = np.asarray(a_scale, np.float64).reshape(-1, 1)
    out = acc.astype(np.float64) * (a_col * w_scale.astype(np.float64)[None, :])
    if bias is not None:
        out = out + bias.astype(np.float64)[None, :]
    return out


def _f32_tolerance(acc, w_scale, a_scale, bias) -> np.ndarray:
    """Error bound of the float32 epilogue, per element.

    float32(acc), a_scale * w_scale, the product, and the bias add are four
    roundings, each at most 2**-24 relative to the magnitude it rounds, which
    is at most |acc * a_scale * w_scale| + |bias| (the bias add can cancel, so
    the bound is on the terms, not the result).
    """
    terms = np.abs(reference_f32(acc, w_scale, np.abs(np.asarray(a_scale)), None))
    if bias is not None:
        terms = terms + np.abs(bias.astype(np.float64))[None, :]
    return 4 * 2.0**-24 * terms


def assert_f32_close(got, acc, w_scale, a_scale, bias):
    expected = reference_f32(acc, w_scale, a_scale, bias)
    error = np.abs(got.astype(np.float64) - expected)
    bound = _f32_tolerance(acc, w_scale, a_scale, bias)
    assert not np.isnan(got).any(), "output has NaN (an element left unwritten?)"
    assert (error <= bound).all(), f"max error {error.max()} over bound at {np.unravel_index(np.argmax(error - bound), error.shape)}"


def guarded_out(m: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """An (m, n) view at the start of a poisoned, larger buffer: (out, whole buffer)."""
    buffer = np.empty(m * n + GUARD, dtype)
    if dtype == np.int32:
        buffer[:] = INT32_POISON
    else:
        buffer.view(np.uint32)[:] = FLOAT_POISON_BITS
    return buffer[: m * n].reshape(m, n), buffer


def assert_guard_intact(buffer: np.ndarray, m: int, n: int) -> None:
    tail = buffer[m * n :].view(np.uint32)
    poison = np.uint32(INT32_POISON) if buffer.dtype == np.int32 else FLOAT_POISON_BITS
    assert (tail == poison).all(), "the kernel wrote past the end of out"


def scales(rng, m: int, n: int, per_token: bool, with_bias: bool):
    w_scale = rng.uniform(1e-4, 1e-2, size=n).astype(np.float32)
    a_scale = rng.uniform(1e-3, 1e-1, size=m if per_token else 1).astype(np.float32)
    bias = rng.normal(0.0, 1.0, size=n).astype(np.float32) if with_bias else None
    return w_scale, a_scale, bias


def check_both_gemms(a, w, rng, per_token: bool, with_bias: bool) -> None:
    """Both reference GEMMs on (a, w), into guarded outputs, against NumPy."""
    m, n = a.shape[0], w.shape[0]
    acc = reference_acc(a, w)

    out, buffer = guarded_out(m, n, np.int32)
    result = native.gemm_s8s8_s32_ref(a, w, out=out)
    assert result is out
    np.testing.assert_array_equal(out, acc)
    assert_guard_intact(buffer, m, n)

    w_scale, a_scale, bias = scales(rng, m, n, per_token, with_bias)
    out, buffer = guarded_out(m, n, np.float32)
    result = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, out=out)
    assert result is out
    assert_f32_close(out, acc, w_scale, a_scale, bias)
    assert_guard_intact(buffer, m, n)


# ------------------------------------------------------- int8 GEMM: values ---

@pytest.mark.parametrize(
    "m,n,k",
    [(1, 1, 1), (1, 16, 257), (3, 17, 513), (7, 33, 1), (5, 31, 64), (1, 100, 513), (16, 15, 2049)],
)
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemms_match_numpy_on_edge_shapes(m, n, k, per_token, with_bias):
    rng = np.random.default_rng([m, n, k, per_token, with_bias])
    check_both_gemms(random_int8(rng, (m, k)), random_int8(rng, (n, k)), rng, per_token, with_bias)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 40),
    k=st.one_of(st.integers(1, 700), st.sampled_from([15, 16, 17, 63, 64, 65, 257, 513])),
    seed=st.integers(0, 2**32 - 1),
    per_token=st.booleans(),
    with_bias=st.booleans(),
)
def test_gemms_match_numpy_on_random_shapes(m, n, k, seed, per_token, with_bias):
    rng = np.random.default_rng(seed)
    check_both_gemms(random_int8(rng, (m, k)), random_int8(rng, (n, k)), rng, per_token, with_bias)


@pytest.mark.parametrize("a_value,w_value", [(127, 127), (-128, -128), (-128, 127), (127, -127), (-127, -128)])
def test_saturated_inputs_at_the_largest_k_are_exact(a_value, w_value):
    k = native.GEMM_S8S8_MAX_K  # (-128)**2 * k is the largest sum that fits int32
    a = np.full((2, k), a_value, np.int8)
    w = np.full((3, k), w_value, np.int8)
    expected = np.full((2, 3), a_value * w_value * k, np.int64)
    assert np.abs(expected).max() <= np.iinfo(np.int32).max
    np.testing.assert_array_equal(native.gemm_s8s8_s32_ref(a, w), expected)


def test_mixed_extreme_values_are_exact():
    rng = np.random.default_rng(7)
    extremes = np.array([-128, -127, 127], np.int8)
    a = rng.choice(extremes, size=(6, 4099))
    w = rng.choice(extremes, size=(19, 4099))
    check_both_gemms(a, w, rng, per_token=True, with_bias=True)


def test_largest_k_constant_is_the_int32_limit():
    assert _C.GEMM_S8S8_MAX_K == native.GEMM_S8S8_MAX_K == 131071
    assert 128 * 128 * native.GEMM_S8S8_MAX_K <= 2**31 - 1 < 128 * 128 * (native.GEMM_S8S8_MAX_K + 1)


@pytest.mark.parametrize("m,n,k", [(0, 5, 7), (4, 0, 7), (3, 5, 0)])
def test_empty_dimensions(m, n, k):
    rng = np.random.default_rng(3)
    a, w = random_int8(rng, (m, k)), random_int8(rng, (n, k))
    got = native.gemm_s8s8_s32_ref(a, w)
    assert got.shape == (m, n) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np.zeros((m, n)))
    w_scale, a_scale, bias = scales(rng, m, n, per_token=False, with_bias=True)
    got = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (m, n)))  # K = 0: only the bias remains


def test_new_outputs_are_c_contiguous_with_the_right_dtype():
    rng = np.random.default_rng(11)
    a, w = random_int8(rng, (3, 20)), random_int8(rng, (5, 20))
    s32 = native.gemm_s8s8_s32_ref(a, w)
    f32 = native.gemm_s8s8_f32_ref(a, w, np.ones(5, np.float32), np.float32(1.0))
    for got, dtype in [(s32, np.int32), (f32, np.float32)]:
        assert got.dtype == dtype and got.shape == (3, 5) and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(s32, reference_acc(a, w))
    np.testing.assert_array_equal(f32, reference_acc(a, w).astype(np.float32))  # scale 1: exact for |acc| < 2**24


@pytest.mark.parametrize("a_scale_shape", [(), (1,)])
def test_per_tensor_scale_may_be_0d_or_length_one(a_scale_shape):
    rng = np.random.default_rng(5)
    a, w = random_int8(rng, (4, 33)), random_int8(rng, (6, 33))
    w_scale, _, bias = scales(rng, 4, 6, per_token=False, with_bias=True)
    a_scale = np.full(a_scale_shape, 0.037, np.float32)
    got = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias)
    assert_f32_close(got, reference_acc(a, w), w_scale, np.float32(0.037), bias)


def test_per_token_scales_apply_to_their_own_rows():
    rng = np.random.default_rng(6)
    a, w = random_int8(rng, (5, 40)), random_int8(rng, (3, 40))
    w_scale = np.ones(3, np.float32)
    a_scale = np.array([1, 2, 4, 8, 16], np.float32)  # powers of two: every product exact
    got = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale)
    np.testing.assert_array_equal(got, reference_acc(a, w) * a_scale[:, None].astype(np.int64))


# ------------------------------------------------------ layouts, buffers -----

def test_row_strided_inputs_and_output_are_used_in_place():
    """Slices of wider arrays (lda, ldw, ldc > K, N): no copy, padding untouched."""
    rng = np.random.default_rng(8)
    m, n, k = 5, 13, 97
    a_wide, w_wide = random_int8(rng, (m, k + 7)), random_int8(rng, (n, k + 3))
    a, w = a_wide[:, :k], w_wide[:, :k]
    for dtype, call in [
        (np.int32, lambda out: native.gemm_s8s8_s32_ref(a, w, out=out)),
        (np.float32, lambda out: native.gemm_s8s8_f32_ref(a, w, np.full(n, 0.5, np.float32), np.float32(0.25), out=out)),
    ]:
        wide = np.empty((m, n + 5), dtype)
        wide.view(np.uint32)[:] = FLOAT_POISON_BITS
        out = wide[:, :n]
        assert call(out) is out
        np.testing.assert_array_equal(out, reference_acc(a, w) * (1 if dtype == np.int32 else 0.125))
        assert (wide[:, n:].view(np.uint32) == FLOAT_POISON_BITS).all(), "padding between out's rows changed"


def test_a_row_slice_is_accepted():
    rng = np.random.default_rng(9)
    a_all, w = random_int8(rng, (9, 31)), random_int8(rng, (4, 31))
    a = a_all[2:7]
    np.testing.assert_array_equal(native.gemm_s8s8_s32_ref(a, w), reference_acc(a, w))


def test_any_buffer_protocol_object_is_accepted():
    rng = np.random.default_rng(10)
    a_np, w_np = random_int8(rng, (3, 11)), random_int8(rng, (4, 11))
    a = memoryview(bytearray(a_np.tobytes())).cast("b", [3, 11])
    w = memoryview(bytearray(w_np.tobytes())).cast("b", [4, 11])
    out = memoryview(bytearray(3 * 4 * 4)).cast("i", [3, 4])
    native.gemm_s8s8_s32_ref(a, w, out=out)
    np.testing.assert_array_equal(np.asarray(out), reference_acc(a_np, w_np))


def test_ndarrays_and_other_buffers_give_the_same_bits():
    """NumPy arrays are read from their own fields, other objects through the buffer protocol: same result."""
    rng = np.random.default_rng(11)
    a, w = random_int8(rng, (5, 40)), random_int8(rng, (24, 40))
    scale, a_scale = rng.uniform(0.01, 0.1, 24).astype(np.float32), np.array([0.05], np.float32)
    packed = native.pack_weight_s8(w, scale)
    as_buffer = memoryview(bytearray(a.tobytes())).cast("b", [5, 40])
    out = memoryview(bytearray(5 * 24 * 4)).cast("f", [5, 24])
    native.gemm_s8s8_f32(as_buffer, memoryview(packed), memoryview(a_scale), out=out)
    np.testing.assert_array_equal(np.asarray(out), native.gemm_s8s8_f32(a, packed, a_scale))
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    kw = dict(epsilon=1e-5, channels_last=True)
    np.testing.assert_array_equal(native.group_norm_f32(memoryview(x), 2, ones, zeros, **kw),
                                  native.group_norm_f32(x, 2, ones, zeros, **kw))


@pytest.mark.parametrize("case", ["byte-swapped", "read-only out", "float64"])
def test_ndarrays_the_fast_path_refuses_get_the_buffer_protocol_errors(case):
    rng = np.random.default_rng(13)
    a, w = random_int8(rng, (3, 8)), random_int8(rng, (16, 8))
    packed = native.pack_weight_s8(w, np.full(16, 0.1, np.float32))
    scale, out = np.array([0.5], np.float32), np.empty((3, 16), np.float32)
    if case == "byte-swapped":
        scale, error, message = scale.astype(">f4"), TypeError, "a_scale must have dtype float32, got byte-swapped float32"
    elif case == "read-only out":
        out.setflags(write=False)
        error, message = ValueError, "out must be writable"
    else:
        scale, error, message = scale.astype(np.float64), TypeError, "a_scale must have dtype float32, got float64"
    with pytest.raises(error, match=message):
        native.gemm_s8s8_f32(a, packed, scale, out=out)


def test_read_only_inputs_are_fine():
    rng = np.random.default_rng(12)
    a, w = random_int8(rng, (2, 9)), random_int8(rng, (3, 9))
    a.setflags(write=False)
    w.setflags(write=False)
    np.testing.assert_array_equal(native.gemm_s8s8_s32_ref(a, w), reference_acc(a, w))


def test_kernels_release_the_gil():
    """Another Python thread keeps running while a long GEMM computes."""
    rng = np.random.default_rng(13)
    w = random_int8(rng, (128, 8192))
    probe = random_int8(rng, (16, 8192))
    start = time.perf_counter()
    native.gemm_s8s8_s32_ref(probe, w)
    rows = min(int(16 * 0.06 / max(time.perf_counter() - start, 1e-6)) + 1, 4096)
    while True:
        a = random_int8(rng, (rows, 8192))
        window: list[float] = []

        def worker():
            start = time.perf_counter()
            native.gemm_s8s8_s32_ref(a, w)
            window.extend([start, time.perf_counter()])

        thread = threading.Thread(target=worker)
        ticks = []
        thread.start()
        while thread.is_alive():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)
        thread.join()
        start, end = window
        # A probe timed while the machine was busy can size a GEMM too short to tell: longer, and again.
        if end - start > 0.02 or rows >= 4096:
            break
        rows = min(rows * 4, 4096)
    inside = sum(start < t < end for t in ticks)
    # Holding the GIL, the worker would let this thread run at most once
    # (between reading the clock and entering the kernel).
    assert end - start > 0.02, "the GEMM was too quick to tell"
    assert inside >= 5, f"only {inside} ticks of the main thread during a {end - start:.3f} s GEMM"


# ------------------------------------------------------------- bad input -----

def _ok_args(rng=None):
    rng = rng or np.random.default_rng(14)
    a, w = random_int8(rng, (3, 8)), random_int8(rng, (5, 8))
    return a, w, np.ones(5, np.float32), np.ones(1, np.float32), np.zeros(5, np.float32)


def _read_only(array):
    array.setflags(write=False)
    return array


def _misaligned_int32(shape):
    raw = np.zeros(int(np.prod(shape)) * 4 + 1, np.uint8)
    return raw[1:].view(np.int32).reshape(shape)


S32_BAD_CASES = {
    "a float32": (TypeError, "a must have dtype int8, got float32", lambda a, w: dict(a=a.astype(np.float32), w=w)),
    "a uint8": (TypeError, "got uint8", lambda a, w: dict(a=a.view(np.uint8), w=w)),
    "w int16": (TypeError, "w must have dtype int8, got int16", lambda a, w: dict(a=a, w=w.astype(np.int16))),
    "a list": (TypeError, "got list", lambda a, w: dict(a=a.tolist(), w=w)),
    "w None": (TypeError, "got NoneType", lambda a, w: dict(a=a, w=None)),
    "a bytes": (TypeError, "got uint8", lambda a, w: dict(a=a.tobytes(), w=w)),
    "a 3-D": (ValueError, "a must be a 2-D array (M, K), got a 3-D", lambda a, w: dict(a=a.reshape(1, 3, 8), w=w)),
    "w 1-D": (ValueError, "w must be a 2-D array (N, K), got a 1-D", lambda a, w: dict(a=a, w=w.ravel())),
    "a column stride": (ValueError, "contiguous rows", lambda a, w: dict(a=np.repeat(a, 2, axis=1)[:, ::2], w=w)),
    "a Fortran order": (ValueError, "contiguous rows", lambda a, w: dict(a=np.asfortranarray(a), w=w)),
    "w reversed rows": (ValueError, "contiguous rows", lambda a, w: dict(a=a, w=w[::-1])),
    "w broadcast rows": (ValueError, "contiguous rows", lambda a, w: dict(a=a, w=np.broadcast_to(w[:1], (5, 8)))),
    "K mismatch": (ValueError, "a has K = 8, w has K = 7", lambda a, w: dict(a=a, w=w[:, :7])),
    "K too large": (ValueError, "K = 131072 is too large",
                    lambda a, w: dict(a=np.ones((1, 131072), np.int8), w=np.ones((1, 131072), np.int8))),
    "out wrong shape": (ValueError, "out must have shape (M, N) = (3, 5), got (5, 3)",
                        lambda a, w: dict(a=a, w=w, out=np.zeros((5, 3), np.int32))),
    "out wrong dtype": (TypeError, "out must have dtype int32, got int64",
                        lambda a, w: dict(a=a, w=w, out=np.zeros((3, 5), np.int64))),
    "out byte-swapped": (TypeError, "byte-swapped int32", lambda a, w: dict(a=a, w=w, out=np.zeros((3, 5), ">i4"))),
    "out read-only": (ValueError, "out must be writable",
                      lambda a, w: dict(a=a, w=w, out=_read_only(np.zeros((3, 5), np.int32)))),
    "out column stride": (ValueError, "contiguous rows",
                          lambda a, w: dict(a=a, w=w, out=np.zeros((3, 10), np.int32)[:, ::2])),
    "out 1-D": (ValueError, "out must be a 2-D array", lambda a, w: dict(a=a, w=w, out=np.zeros(15, np.int32))),
    "out misaligned": (ValueError, "aligned", lambda a, w: dict(a=a, w=w, out=_misaligned_int32((3, 5)))),
    "out a list": (TypeError, "got list", lambda a, w: dict(a=a, w=w, out=[[0] * 5] * 3)),
}


@pytest.mark.parametrize("case", list(S32_BAD_CASES))
def test_bad_arguments_raise_for_the_int32_gemm(case):
    error, message, make = S32_BAD_CASES[case]
    a, w, *_ = _ok_args()
    with pytest.raises(error) as info:
        native.gemm_s8s8_s32_ref(**make(a, w))
    assert message in str(info.value)


F32_BAD_CASES = {
    "w_scale wrong length": (ValueError, "w_scale must hold one value per output channel (N = 5, the rows of w), got 4",
                             lambda a, w, ws, s, b: dict(w_scale=ws[:4])),
    "w_scale float64": (TypeError, "w_scale must have dtype float32, got float64",
                        lambda a, w, ws, s, b: dict(w_scale=ws.astype(np.float64))),
    "w_scale 2-D": (ValueError, "w_scale must be a 1-D array", lambda a, w, ws, s, b: dict(w_scale=ws.reshape(1, 5))),
    "w_scale strided": (ValueError, "w_scale must be contiguous",
                        lambda a, w, ws, s, b: dict(w_scale=np.ones(10, np.float32)[::2])),
    "a_scale wrong length": (ValueError, "a_scale must hold 1 value (per-tensor) or one per row of a (per-token, M = 3), got 2",
                             lambda a, w, ws, s, b: dict(a_scale=np.ones(2, np.float32))),
    "a_scale 2-D": (ValueError, "a_scale must be a 1-D array or a 0-D",
                    lambda a, w, ws, s, b: dict(a_scale=np.ones((3, 1), np.float32))),
    "a_scale python float": (TypeError, "got float", lambda a, w, ws, s, b: dict(a_scale=0.5)),
    "bias wrong length": (ValueError, "bias must hold one value per output channel (N = 5), got 6",
                          lambda a, w, ws, s, b: dict(bias=np.zeros(6, np.float32))),
    "bias int8": (TypeError, "bias must have dtype float32, got int8", lambda a, w, ws, s, b: dict(bias=b.astype(np.int8))),
    "out int32": (TypeError, "out must have dtype float32, got int32",
                  lambda a, w, ws, s, b: dict(out=np.zeros((3, 5), np.int32))),
    "out over w_scale": (ValueError, "out must not share memory with the input w_scale",
                         lambda a, w, ws, s, b: dict(w_scale=_shared[:5], out=_shared[:15].reshape(3, 5))),
    "a 3-D": (ValueError, "got a 3-D", lambda a, w, ws, s, b: dict(a=a.reshape(3, 2, 4))),
}
_shared = np.ones(32, np.float32)


@pytest.mark.parametrize("case", list(F32_BAD_CASES))
def test_bad_arguments_raise_for_the_float_gemm(case):
    error, message, change = F32_BAD_CASES[case]
    a, w, w_scale, a_scale, bias = _ok_args()
    args = dict(a=a, w=w, w_scale=w_scale, a_scale=a_scale, bias=bias)
    args.update(change(a, w, w_scale, a_scale, bias))
    out = args.pop("out", None)
    with pytest.raises(error) as info:
        native.gemm_s8s8_f32_ref(**args, out=out)
    assert message in str(info.value)


def test_out_sharing_memory_with_an_input_is_refused():
    memory = np.zeros(64, np.int8)
    a = memory[:24].reshape(3, 8)
    out = memory[:60].view(np.int32).reshape(3, 5)
    w = np.ones((5, 8), np.int8)
    with pytest.raises(ValueError, match="out must not share memory with the input a"):
        native.gemm_s8s8_s32_ref(a, w, out=out)
    assert not memory.any(), "memory was written before the check"


def test_failed_calls_leave_out_untouched():
    a, w, *_ = _ok_args()
    out = np.full((3, 5), INT32_POISON, np.int32)
    with pytest.raises(ValueError):
        native.gemm_s8s8_s32_ref(a, w[:, :7], out=out)
    assert (out == INT32_POISON).all()


# --------------------------------------------------- machine, build, cuda ----

X86_KEYS = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"}
ARM_KEYS = {"asimd", "asimddp", "i8mm", "sve"}


def _proc_cpuinfo_flags() -> set[str] | None:
    """The first CPU's flags ('flags' on x86, 'Features' on ARM), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def test_cpu_arch_is_the_machine():
    expected = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
    assert native.cpu_arch() == expected.get(platform.machine().lower(), platform.machine())


def test_cpu_features_have_every_key_and_match_proc_cpuinfo():
    features = native.cpu_features()
    assert set(features) == X86_KEYS | ARM_KEYS
    assert all(isinstance(v, bool) for v in features.values())
    own, other = (X86_KEYS, ARM_KEYS) if native.cpu_arch() == "x86_64" else (ARM_KEYS, X86_KEYS)
    assert not any(features[key] for key in other)
    flags = _proc_cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    # Linux clears the AVX flags it does not save registers for, which is
    # exactly what the xgetbv check in the detector mirrors.
    # AMX also needs the kernel's per-process permission (arch_prctl), which a sandbox may
    # refuse: detected implies listed, not the converse.
    exact = own - {"amx_tile", "amx_int8"}
    assert {key: features[key] for key in exact} == {key: key in flags for key in exact}
    assert all(key in flags for key in own - exact if features[key])
    if "avx512_vnni" in flags:
        assert features["avx512_vnni"] is True
    if native.cpu_arch() == "aarch64":
        assert features["asimd"], "every ARMv8-A Linux CPU has NEON"


def test_build_info_describes_this_build():
    info = native.build_info()
    assert info["version"] == importlib.metadata.version("edgevla"), "stale build: rebuild with pip install"
    assert info["build_type"] and info["compiler"] and "-Wall" in info["cxx_flags"]
    assert info["system_processor"].lower() in {"x86_64", "amd64", "aarch64", "arm64"}
    assert isinstance(info["sanitizers"], list)
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_runtime"] == "static"
        assert info["cuda_compiler"].startswith("NVIDIA ")
    else:
        assert info["cuda_archs"] == [] and info["cuda_compiler"] is None and info["cuda_runtime"] is None


def _cuda_driver_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or ctypes.util.find_library("cuda") is not None


def test_cuda_devices_is_empty_without_cuda_or_driver():
    devices = native.cuda_devices()
    assert isinstance(devices, list)
    if not native.build_info()["cuda"] or not _cuda_driver_present():
        assert devices == []
    for index, device in enumerate(devices):
        assert device["index"] == index and device["name"]
        major, minor = device["compute_capability"]
        assert major >= 5 and minor >= 0
        assert device["total_memory_bytes"] > 2**28 and device["multiprocessor_count"] > 0


def test_compiled_module_links_neither_torch_nor_a_shared_cudart():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    dynamic = subprocess.run([readelf, "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed, "readelf found no dependencies at all"
    assert not [line for line in needed if any(lib in line for lib in ("libtorch", "libc10", "libcudart", "libcuda."))]


def test_loading_the_binary_does_not_import_torch(tmp_path):
    """The .so alone, loaded by path in a fresh interpreter (not via edgevla/__init__)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_C', {_C.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.cpu_arch() and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_native_layer_without_the_compiled_module_raises_edgevla_error(monkeypatch):
    assert native.available()
    monkeypatch.setattr(native, "_C", None)
    monkeypatch.setattr(native, "_IMPORT_ERROR", "ImportError: simulated")
    assert not native.available()
    with pytest.raises(EdgevlaError, match="edgevla._C is not available .ImportError: simulated"):
        native.cpu_features()


# ------------------------------------------------------------ fork safety ---

def _wait_for(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (after killing it) when it is still running at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_children_forked_after_the_pool_started_run_kernels():
    """fork() copies only the calling thread: without the pool's pthread_atfork handlers a child
    would wait forever for workers it does not have. Forks happen while another thread keeps the
    pool busy, so some land in the middle of a run."""
    rng = np.random.default_rng(0)
    a, w = rng.integers(-128, 128, (64, 512), dtype=np.int8), rng.integers(-128, 128, (256, 512), dtype=np.int8)
    packed = native.pack_weight_s8(w, np.ones(256, np.float32))
    native.set_num_threads(3)  # workers exist whatever the core count
    expected = native.gemm_s8s8_f32(a, packed, np.float32(1))  # big enough to be split over the threads
    stop = threading.Event()

    def keep_busy():
        while not stop.is_set():
            native.gemm_s8s8_f32(a, packed, np.float32(1))

    busy = threading.Thread(target=keep_busy)
    busy.start()
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # the child: two runs (the second reuses the restarted workers), then exit
                ok = all(np.array_equal(native.gemm_s8s8_f32(a, packed, np.float32(1)), expected) for _ in range(2))
                os._exit(0 if ok and native.get_num_threads() == 3 else 1)
            assert _wait_for(pid, timeout=60) == 0, "the forked child hung or computed a wrong result"
    finally:
        stop.set()
        busy.join()
        native.set_num_threads(os.cpu_count() or 1)
    np.testing.assert_array_equal(native.gemm_s8s8_f32(a, packed, np.float32(1)), expected)  # the parent too


# ----------------------------------------------------- build consistency ----

def test_the_native_test_scripts_compile_what_cmake_compiles():
    """tests/native/kernel_sources.sh (used by run_aarch64.sh and run_sanitizers.sh) lists the
    kernel sources of CMakeLists.txt, and gives each ISA file the same flags."""
    cmake = (REPO / "CMakeLists.txt").read_text()
    script = (REPO / "tests/native/kernel_sources.sh").read_text()

    def sources(text: str, start: str) -> list[str]:
        """The .cpp paths (relative to csrc/) in the parenthesised list that follows `start`."""
        block = text[text.index(start) + len(start):]
        block = block[: block.index(")")]
        return [token.removeprefix("csrc/") for token in block.split() if token.endswith(".cpp")]

    library = sources(cmake, "add_library(edgevla_native STATIC")
    expected = {path.replace("${edgevla_arch}", arch) for path in library for arch in ("x86_64", "aarch64")}
    listed = set(sources(script, "KERNEL_SOURCES=(")) | set(sources(script, "KERNEL_SOURCES_x86_64=(")) | set(
        sources(script, "KERNEL_SOURCES_aarch64=("))
    for cmake_name, script_name, flags in [("avx2", "AVX2", "-mavx2 -mfma"),
                                           ("avx_vnni", "AVX_VNNI", "-mavx2 -mfma -mavxvnni"),
                                           ("avx512", "AVX512", "-mavx512f -mavx512bw -mavx512vl -mavx512vnni"),
                                           ("amx", "AMX",
                                            "-mavx512f -mavx512bw -mavx512vl -mavx512vnni -mamx-tile -mamx-int8"),
                                           ("neon_dot", "NEON_DOT", "-march=armv8.2-a+dotprod")]:
        isa_files = sources(cmake, f"set(edgevla_{cmake_name}_sources")
        assert sources(script, f"{script_name}_SOURCES=(") == isa_files, cmake_name
        assert f"{script_name}_FLAGS=({flags})" in script
        assert f'set_source_files_properties(${{edgevla_{cmake_name}_sources}}' in cmake
        expected |= set(isa_files)
        listed |= set(isa_files)
    assert listed == expected
    assert all((REPO / "csrc" / path).is_file() for path in listed)
    no_trapping = sources(cmake, "set(edgevla_no_trapping_math_sources")
    assert sources(script, "NO_TRAPPING_MATH_SOURCES=(") == no_trapping and set(no_trapping) <= listed
    assert 'set_property(SOURCE ${edgevla_no_trapping_math_sources} APPEND PROPERTY COMPILE_OPTIONS ' \
           '"-fno-trapping-math")' in cmake
    attention = sources(cmake, "set(edgevla_attention_sources")
    assert sources(script, "ATTENTION_SOURCES=(") == attention and set(attention) <= listed
    assert "ATTENTION_FLAGS=(-ffp-contract=fast -O3 -fno-trapping-math)" in script
    assert ('set_property(SOURCE ${edgevla_attention_sources} APPEND PROPERTY COMPILE_OPTIONS\n'
            '  "-ffp-contract=fast;-O3;-fno-trapping-math")') in cmake
    assert '"-mavx2;-mfma"' in cmake


def test_raw_functions_take_the_wrappers_arguments_by_position():
    """The runtime's per-step calls (native.raw): every name resolves, arguments in the wrappers' order."""
    assert all(callable(native.raw(name)) for name in native.RAW_FUNCTIONS)
    with pytest.raises(EdgevlaError, match="no raw per-step function 'pack_weight_s8'"):
        native.raw("pack_weight_s8")
    rng = np.random.default_rng(21)
    a, w = random_int8(rng, (3, 20)), random_int8(rng, (16, 20))
    packed, a_scale = native.pack_weight_s8(w, np.full(16, 0.02, np.float32)), np.array([0.1], np.float32)
    bias, skip = rng.standard_normal(16).astype(np.float32), rng.standard_normal((3, 16)).astype(np.float32)
    out, codes = np.empty((3, 16), np.float32), np.empty((3, 16), np.int8)
    native.raw("gemm_s8s8_f32")(a, packed, a_scale, bias, "relu", out, skip, True, codes, 0.05, None)
    want_codes = np.empty((3, 16), np.int8)
    want = native.gemm_s8s8_f32(a, packed, a_scale, bias, act="relu", residual=skip, relu_after=True,
                                codes=want_codes, codes_scale=0.05)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(codes, want_codes)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    ones, zeros, y = np.ones(8, np.float32), np.zeros(8, np.float32), np.empty((2, 5, 8), np.float32)
    native.raw("group_norm_f32")(x, 2, ones, zeros, 1e-5, True, "mish", y, None, None, None, False, None, None)
    np.testing.assert_array_equal(y, native.group_norm_f32(x, 2, ones, zeros, epsilon=1e-5, channels_last=True,
                                                           activation="mish"))
