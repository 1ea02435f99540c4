"""The int8 GEMMs' output stage (cpu_ops.h: a ReLU after the residual, then the output's int8 codes), run on
each tile by the threads, against the reference GEMM followed by the same steps on the whole output."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla import native

from int8_kernels import INT8_KERNELS, operands, two_four

pytestmark = [pytest.mark.skipif(not native.available(), reason="edgevla._C is not built"),
              pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")]

ISAS = native.available_isas() if native.available() else []


KERNELS = INT8_KERNELS


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,per_token,residual,relu_after", [
    (1, 17, 36, False, False, False),  # M = 1, N past a block of 16
    (5, 33, 63, True, True, True),  # odd K, per-token scales
    (150, 48, 132, False, True, True),  # more rows than one slab (64), split by rows over the threads
    (70, 160, 40, True, False, False),  # split by output blocks
    (17, 16, 100, False, True, False),  # a residual, no ReLU after it
])
def test_stage_equals_the_steps_after_the_gemm(isa, kind, threads, m, n, k, per_token, residual, relu_after):
    rng = np.random.default_rng(m * 1000 + n + k)
    a, w, w_scale, a_scale, bias, packed, gemm = operands(rng, m, n, k, kind, per_token)
    skip = rng.normal(0, 2, (m, n + 5)).astype(np.float32)[:, :n] if residual else None  # a row-strided view
    scale = float(rng.uniform(0.01, 0.05))
    native.set_isa(isa)
    native.set_num_threads(threads)
    out = np.full((m, n + 3), np.nan, np.float32)  # poisoned, with 3 guard columns
    codes = np.full((m, n + 5), 99, np.int8)  # guard columns past the codes
    got = gemm(a, packed, a_scale, bias, act="relu" if not residual else "none", out=out[:, :n], residual=skip,
               relu_after=relu_after, codes=codes[:, :n], codes_scale=scale)
    expected = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act="relu" if not residual else "none",
                                        residual=skip)
    if relu_after:
        expected = np.maximum(expected, np.float32(0))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(codes[:, :n], native.quantize_s8_ref(expected, scale=scale))
    assert np.isnan(out[:, n:]).all() and (codes[:, n:] == 99).all()


@pytest.mark.parametrize("kind", list(KERNELS))
def test_relu_after_alone_and_codes_alone(kind):
    rng = np.random.default_rng(7)
    a, w, w_scale, a_scale, bias, packed, gemm = operands(rng, 40, 24, 48, kind, False)
    skip = rng.normal(0, 2, (40, 24)).astype(np.float32)
    plain = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, residual=skip)
    np.testing.assert_array_equal(gemm(a, packed, a_scale, bias, residual=skip, relu_after=True),
                                  np.maximum(plain, np.float32(0)))
    codes = np.empty((40, 24), np.int8)
    y = gemm(a, packed, a_scale, bias, residual=skip, codes=codes, codes_scale=0.02)
    np.testing.assert_array_equal(y, plain)  # the float output is the GEMM's, untouched
    np.testing.assert_array_equal(codes, native.quantize_s8_ref(plain, scale=0.02))
    assert codes.min() == -128 and codes.max() == 127  # both ends saturate at this scale


def test_bad_stages_raise_one_clear_error():
    rng = np.random.default_rng(0)
    a, w = rng.integers(-128, 128, (4, 32), dtype=np.int8), rng.integers(-128, 128, (16, 32), dtype=np.int8)
    packed = native.pack_weight_s8(w, np.ones(16, np.float32))
    scale, out, codes = np.float32(0.1), np.empty((4, 16), np.float32), np.empty((4, 16), np.int8)
    with pytest.raises(ValueError, match="codes and codes_scale come together"):
        native.gemm_s8s8_f32(a, packed, scale, codes=codes)
    with pytest.raises(ValueError, match="codes and codes_scale come together"):
        native.gemm_2to4_s8s8_f32(a, native.pack_2to4_s8(two_four(w), np.ones(16, np.float32)), scale,
                                  codes_scale=0.1)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e39):
        with pytest.raises(ValueError, match="codes_scale must be a positive finite float32"):
            native.gemm_s8s8_f32(a, packed, scale, codes=codes, codes_scale=bad)
    with pytest.raises(TypeError, match="codes_scale must be a number"):
        native.gemm_s8s8_f32(a, packed, scale, codes=codes, codes_scale="0.1")
    with pytest.raises(ValueError, match=r"codes must have shape \(M, N\) = \(4, 16\)"):
        native.gemm_s8s8_f32(a, packed, scale, codes=np.empty((4, 15), np.int8), codes_scale=0.1)
    with pytest.raises(TypeError, match="codes must have dtype int8"):
        native.gemm_s8s8_f32(a, packed, scale, codes=np.empty((4, 16), np.uint8), codes_scale=0.1)
    with pytest.raises(ValueError, match="codes must be writable"):
        frozen = np.empty((4, 16), np.int8)
        frozen.flags.writeable = False
        native.gemm_s8s8_f32(a, packed, scale, codes=frozen, codes_scale=0.1)
    with pytest.raises(ValueError, match="codes must not share memory with the input out"):
        native.gemm_s8s8_f32(a, packed, scale, out=out, codes=out.view(np.int8)[:, :16], codes_scale=0.1)
    square = np.ascontiguousarray(a[:, :16])  # (M, K) = (4, 16) = (M, N): the codes could be a itself
    with pytest.raises(ValueError, match="codes must not share memory with the input a"):
        native.gemm_sparse_s8s8_f32(square, native.pack_sparse_s8(np.ascontiguousarray(w[:, :16]),
                                                                  np.ones(16, np.float32)),
                                    scale, codes=square, codes_scale=0.1)
    with pytest.raises(TypeError, match="relu_after must be a bool"):
        native.gemm_s8s8_f32(a, packed, scale, relu_after=1)
