"""The int8 GEMMs over a convolution's windows (``windows=``: each thread gathers the rows it multiplies),
against gather_windows into the whole im2col matrix, then the GEMM on it: bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgevla import native

from int8_kernels import INT8_KERNELS

pytestmark = [pytest.mark.skipif(not native.available(), reason="edgevla._C is not built"),
              pytest.mark.usefixtures("split_small_gemms", "restore_dispatch")]

ISAS = native.available_isas() if native.available() else []


KERNELS = INT8_KERNELS

#: (batch, spatial, channels, kernel, strides, dilations, pads_begin, out, filters): 1-3 spatial dims, strides,
#: dilations, padding, windows past the end (out larger than the input gives), more rows than a slab (64).
GEOMETRIES = [
    (1, (24, 24), 16, (3, 3), (1, 1), (1, 1), (1, 1), (24, 24), 32),  # a ResNet 3x3, 576 rows
    (2, (9, 7), 3, (7, 7), (2, 2), (1, 1), (3, 3), (5, 4), 20),  # a stem: 3 channels, batch 2
    (1, (12, 12), 8, (1, 1), (2, 2), (1, 1), (0, 0), (6, 6), 17),  # a 1x1 stride-2 downsample
    (1, (11,), 5, (3,), (1,), (2,), (2,), (12,), 33),  # 1-d, dilated, a window past the end
    (1, (4, 5, 6), 3, (3, 2, 3), (1, 2, 1), (1, 1, 2), (1, 0, 2), (4, 3, 6), 16),  # 3-d
]


def _case(rng, batch, spatial, channels, kernel, strides, dilations, pads, out, filters, kind, per_token):
    pack, gemm, shape_weight = KERNELS[kind]
    x = rng.integers(-128, 128, (batch, *spatial, channels), dtype=np.int8)
    geometry = dict(kernel=list(kernel), strides=list(strides), dilations=list(dilations), pads_begin=list(pads),
                    out=list(out))
    m, k = batch * math.prod(out), channels * math.prod(kernel)
    rows = np.empty((m, k), np.int8)
    native.gather_windows(x, rows, **geometry)
    w = shape_weight(rng.integers(-128, 128, (filters, k), dtype=np.int8))
    w_scale = rng.uniform(1e-3, 1e-2, filters).astype(np.float32)
    a_scale = rng.uniform(1e-2, 1e-1, m if per_token else 1).astype(np.float32)
    bias = rng.normal(0, 1, filters).astype(np.float32)
    return x, rows, native.window_spec(**geometry), pack(w, w_scale), gemm, a_scale, bias


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{len(g[1])}d-k{g[3][0]}-s{g[4][0]}")
def test_windows_equal_the_gathered_rows(isa, kind, threads, geometry):
    rng = np.random.default_rng(sum(geometry[1]) * 7 + geometry[2])
    x, rows, spec, packed, gemm, a_scale, bias = _case(rng, *geometry, kind, per_token=False)
    native.set_isa(isa)
    native.set_num_threads(threads)
    m, n = rows.shape[0], geometry[-1]
    out = np.full((m, n + 3), np.nan, np.float32)
    got = gemm(x, packed, a_scale, bias, act="relu", out=out[:, :n], windows=spec)
    np.testing.assert_array_equal(got, gemm(rows, packed, a_scale, bias, act="relu"))
    assert np.isnan(out[:, n:]).all()


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("threads", [1, 2])
def test_windows_with_per_token_scales_residual_and_stage(kind, threads):
    """Each slab reads its own rows' scales and residual, and writes its own rows' codes."""
    rng = np.random.default_rng(11)
    geometry = GEOMETRIES[0]
    x, rows, spec, packed, gemm, a_scale, bias = _case(rng, *geometry, kind, per_token=True)
    native.set_num_threads(threads)
    m, n = rows.shape[0], geometry[-1]
    skip = rng.normal(0, 2, (m, n)).astype(np.float32)
    codes, want_codes = np.empty((m, n), np.int8), np.empty((m, n), np.int8)
    got = gemm(x, packed, a_scale, bias, residual=skip, relu_after=True, codes=codes, codes_scale=0.03, windows=spec)
    want = gemm(rows, packed, a_scale, bias, residual=skip, relu_after=True, codes=want_codes, codes_scale=0.03)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(codes, want_codes)


def test_window_spec_and_bad_windows_raise_one_clear_error():
    rng = np.random.default_rng(0)
    spec = native.window_spec(kernel=[3, 3], strides=[1, 1], dilations=[1, 1], pads_begin=[1, 1], out=[4, 4])
    assert spec.kernel == [3, 3] and spec.out == [4, 4]
    x = rng.integers(-128, 128, (1, 4, 4, 8), dtype=np.int8)
    packed = native.pack_weight_s8(rng.integers(-128, 128, (16, 72), dtype=np.int8), np.ones(16, np.float32))
    scale = np.float32(0.1)
    assert native.gemm_s8s8_f32(x, packed, scale, windows=spec).shape == (16, 16)
    with pytest.raises(ValueError, match="kernel must have 1 to 3 values"):
        native.window_spec(kernel=[], strides=[], dilations=[], pads_begin=[], out=[])
    with pytest.raises(ValueError, match="strides must have 2 values"):
        native.window_spec(kernel=[3, 3], strides=[1], dilations=[1, 1], pads_begin=[1, 1], out=[4, 4])
    with pytest.raises(ValueError, match="out must be >= 1"):
        native.window_spec(kernel=[3, 3], strides=[1, 1], dilations=[1, 1], pads_begin=[1, 1], out=[0, 4])
    with pytest.raises(TypeError, match="windows must be a native.WindowSpec"):
        native.gemm_s8s8_f32(x, packed, scale, windows=[3, 3])
    with pytest.raises(ValueError, match=r"a must be the \(N, spatial..., C\) input of 2-D windows"):
        native.gemm_s8s8_f32(x[0], packed, scale, windows=spec)
    with pytest.raises(ValueError, match="a must be C-contiguous under windows="):
        native.gemm_s8s8_f32(np.zeros((1, 4, 8, 8), np.int8)[:, :, ::2], packed, scale, windows=spec)
    with pytest.raises(TypeError, match="a must have dtype int8"):
        native.gemm_s8s8_f32(x.astype(np.float32), packed, scale, windows=spec)
    with pytest.raises(ValueError, match="the windows have K = 54"):
        native.gemm_2to4_s8s8_f32(x[..., :6].copy(), native.pack_2to4_s8(np.zeros((16, 72), np.int8),
                                                                          np.ones(16, np.float32)), scale, windows=spec)
    with pytest.raises(ValueError, match=r"out must have shape \(M, N\) = \(16, 16\)"):
        native.gemm_s8s8_f32(x, packed, scale, windows=spec, out=np.empty((4, 16), np.float32))
    with pytest.raises(ValueError, match="out must not share memory with the input a"):
        memory = np.zeros(1024, np.int8)  # x is its first 128 bytes, the float32 (16, 16) output all of it
        native.gemm_s8s8_f32(memory[:128].reshape(1, 4, 4, 8), packed, scale, windows=spec,
                             out=memory.view(np.float32).reshape(16, 16))
