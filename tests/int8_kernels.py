"""The packed int8 GEMMs the kernel tests run alike (dense, 2:4, unstructured sparse), each with its packer and a
weight of the pattern it takes; shared by the residual, output-stage and window tests."""

from __future__ import annotations

import numpy as np

from edgevla import native


def two_four(w: np.ndarray) -> np.ndarray:
    """``w`` with two zeros in every group of four inputs (and at most two non-zeros in a last, partial group)."""
    w = w.copy()
    n, k = w.shape
    w[:, : k // 4 * 4].reshape(n, k // 4, 4)[:, :, 1:3] = 0
    w[:, k // 4 * 4 + 2:] = 0
    return w


def sparse(w: np.ndarray) -> np.ndarray:
    """``w`` with about 90 % of its weights zero (fixed seed)."""
    return np.where(np.random.default_rng(3).random(w.shape) < 0.9, 0, w).astype(np.int8)


#: name -> (pack, gemm, shape the weight for it)
INT8_KERNELS = {
    "dense": (native.pack_weight_s8, native.gemm_s8s8_f32, lambda w: w),
    "2:4": (native.pack_2to4_s8, native.gemm_2to4_s8s8_f32, two_four),
    "sparse": (native.pack_sparse_s8, native.gemm_sparse_s8s8_f32, sparse),
}


def operands(rng: np.random.Generator, m: int, n: int, k: int, kind: str, per_token: bool):
    """Random int8 ``a`` (M, K) and weight (N, K) of the kernel's pattern, its scales, per-tensor or per-token
    activation scales, a bias; then the packed weight and the kernel: ``(a, w, w_scale, a_scale, bias, packed,
    gemm)``."""
    pack, gemm, shape_weight = INT8_KERNELS[kind]
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = shape_weight(rng.integers(-128, 128, (n, k), dtype=np.int8))
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    a_scale = rng.uniform(1e-2, 1e-1, m if per_token else 1).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    return a, w, w_scale, a_scale, bias, pack(w, w_scale), gemm


def symmetric_activations(rng: np.random.Generator, a_shape: tuple, w_shape: tuple, mode: str):
    """``(a, w)``: activations without -128, as this library's dynamic quantization makes them (the AVX2 kernels'
    signed path, gemm_avx2.cpp), and weights over the whole range: ``symmetric``, uniform; ``symmetric-extremes``,
    only the extremes, whose pairs reach 2 * 127 * 128 = 32512, just under int16's saturation."""
    if mode == "symmetric-extremes":
        return (rng.choice(np.array([-127, 127], np.int8), size=a_shape),
                rng.choice(np.array([-128, -127, 127], np.int8), size=w_shape))
    return rng.integers(-127, 128, size=a_shape, dtype=np.int8), rng.integers(-128, 128, size=w_shape, dtype=np.int8)
