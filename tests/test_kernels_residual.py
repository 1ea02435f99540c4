"""The W8A8 epilogue's residual (gemm_s8s8.h: v = act(...) + residual[m][n]) on every int8 kernel and ISA."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla import native

from int8_kernels import INT8_KERNELS, operands

pytestmark = [pytest.mark.skipif(not native.available(), reason="edgevla._C is not built"),
              pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")]

ISAS = native.available_isas() if native.available() else []
ACTS = ["none", "relu", "gelu_tanh", "gelu_erf"]


KERNELS = INT8_KERNELS


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("m,n,k,per_token", [(1, 17, 36, False), (5, 33, 64, True), (32, 48, 132, False),
                                              (17, 16, 100, True)])
def test_residual_is_added_last_bit_for_bit(isa, kind, act, m, n, k, per_token):
    rng = np.random.default_rng(m * 1000 + n + k)
    a, w, w_scale, a_scale, bias, packed, gemm = operands(rng, m, n, k, kind, per_token)
    wide = rng.normal(0, 2, (m, n + 5)).astype(np.float32)
    residual = wide[:, :n]  # a row-strided view: read in place
    native.set_isa(isa)
    out = np.full((m, n + 3), np.nan, np.float32)  # poisoned, with 3 guard columns
    got = gemm(a, packed, a_scale, bias, act=act, out=out[:, :n], residual=residual)
    without = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act)
    np.testing.assert_array_equal(got, without + residual)  # one float32 add, after the activation
    np.testing.assert_array_equal(got, native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act,
                                                                residual=residual))
    assert np.isnan(out[:, n:]).all()


def test_bad_residuals_raise_one_clear_error():
    rng = np.random.default_rng(0)
    a, w = rng.integers(-128, 128, (4, 32), dtype=np.int8), rng.integers(-128, 128, (16, 32), dtype=np.int8)
    packed = native.pack_weight_s8(w, np.ones(16, np.float32))
    scale = np.float32(0.1)
    out = np.empty((4, 16), np.float32)
    with pytest.raises(ValueError, match=r"residual must be \(M, N\) = \(4, 16\)"):
        native.gemm_s8s8_f32(a, packed, scale, residual=np.zeros((4, 15), np.float32))
    with pytest.raises(TypeError, match="residual"):
        native.gemm_s8s8_f32(a, packed, scale, residual=np.zeros((4, 16), np.float64))
    with pytest.raises(ValueError, match="must not share memory with the input residual"):
        native.gemm_s8s8_f32(a, packed, scale, out=out, residual=out)
    with pytest.raises(ValueError, match="residual"):
        native.gemm_s8s8_f32_ref(a, w, np.ones(16, np.float32), scale, residual=np.zeros((3, 16), np.float32))
