"""Runs every CUDA kernel once on the test suite's edge shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python3 tests/cuda/sanitize_kernels.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 tests/cuda/sanitize_kernels.py

Covers both W8A8 variants with vector and byte-wise loads (odd K, odd
strides), M = 1 and partial tiles, the int4 GEMV for every rows-per-block
template, and both 2:4 kernels. Each result is also checked against its
reference, so the script fails on a wrong answer as well as on a sanitizer
report. EDGEVLA_CUDA_SYNC=1 makes every launch synchronous.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("EDGEVLA_CUDA_SYNC", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgevla import cuda_kernels as ck  # noqa: E402
from edgevla import native  # noqa: E402


def int8(rng, shape):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    x[x == 0] = 5
    return x


def main() -> int:
    if not ck.available():
        print(f"skipped: {ck.unavailable_reason()}")
        return 0
    rng = np.random.default_rng(0)
    failures = 0

    def expect(name, ok):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        failures += not ok

    for m, k, n, variant in [(1, 257, 33, "small_m"), (16, 64, 24, "small_m"), (5, 768, 3072, "small_m"),
                             (17, 129, 250, "tiled"), (130, 256, 136, "tiled"), (1, 31, 7, "tiled"),
                             (1536, 64, 1536, "tiled"), (700, 256, 1000, "tiled"), (768, 130, 776, "tiled"),
                             (130, 256, 136, "tiled_split_k"), (700, 256, 1000, "tiled_split_k"),
                             (5, 31, 7, "tiled_split_k"), (300, 200, 520, "tiled_wide"), (300, 256, 520, "wgmma"),
                             # small_m_wave at 4, 8 and 16 warps a block, vector and byte-wise loads
                             (3, 1000, 17, "small_m_wave"), (2, 2112, 40, "small_m_wave"),
                             (16, 4096, 24, "small_m_wave"), (1, 257, 33, "small_m_wave")]:
        if variant == "wgmma" and not ck.wgmma_available():
            continue
        a, w = int8(rng, (m, k)), int8(rng, (n, k))
        out = ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant)
        expect(f"gemm_s8s8 {variant} M={m} K={k} N={n}",
               np.array_equal(out.cpu().numpy(), a.astype(np.int64) @ w.astype(np.int64).T))
    for m, k, n, group, dtype, variant in [(1, 257, 33, 32, np.float32, "auto"), (3, 96, 40, 64, np.float16, "auto"),
                                           (16, 130, 17, 128, np.float32, "auto"), (64, 64, 16, 32, np.float16, "auto"),
                                           (1, 257, 33, 32, np.float16, "tensor_cores"),
                                           (24, 130, 17, 64, np.float16, "tensor_cores"),
                                           (64, 300, 40, 128, np.float16, "tensor_cores"),
                                           (1, 4100, 40, 32, np.float16, "tensor_cores"),
                                           (13, 2050, 24, 64, np.float32, "tensor_cores"),
                                           (40, 130, 17, 32, np.float32, "tensor_cores"),
                                           # blocks of 4 and 2 channel tiles (up to 132 SMs)
                                           (1, 96, 8464, 32, np.float32, "tensor_cores"),
                                           (12, 64, 4240, 64, np.float16, "tensor_cores"),
                                           # streaming: 4, 8 and 16 warps a block (K past 2048, 4096)
                                           (1, 257, 33, 32, np.float32, "streaming"),
                                           (2, 2050, 24, 64, np.float16, "streaming"),
                                           (1, 4100, 40, 32, np.float16, "streaming"),
                                           (9, 130, 17, 128, np.float32, "streaming")]:
        codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
        scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(dtype)
        out = ck.gemm_w4(torch.from_numpy(x).cuda(), ck.W4Weight.from_packed(native.pack_w4(codes, scales, group, k=k)),
                         variant=variant)
        ref = native.gemm_w4_f32_ref(x.astype(np.float32), codes, scales, group)
        expect(f"gemm_w4 {variant} M={m} K={k} N={n} g{group}",
               np.linalg.norm(out.cpu().numpy() - ref) <= 1e-5 * np.linalg.norm(ref))
    for m, k, n, variant in [(1, 64, 16, "auto"), (5, 200, 40, "auto"), (33, 130, 24, "auto"),
                             (100, 192, 200, "auto"), (70, 64, 72, "auto"), (100, 192, 200, "tiled_wide"),
                             (70, 64, 72, "tiled_wide")]:
        w = ck.random_2to4(rng, n, k, np.int8)
        x = int8(rng, (m, k))
        out = ck.gemm_2to4_s8(torch.from_numpy(x).cuda(), ck.pack_2to4_s8(w), variant=variant)
        expect(f"gemm_2to4_s8 {variant} M={m} K={k} N={n}",
               np.array_equal(out.cpu().numpy(), x.astype(np.int64) @ w.astype(np.int64).T))
        wf = ck.random_2to4(rng, n, k, np.float16)
        xf = rng.uniform(-1, 1, (m, k)).astype(np.float16)
        outf = ck.gemm_2to4_f16(torch.from_numpy(xf).cuda(), ck.pack_2to4_f16(wf), variant=variant).cpu().numpy()
        ref = xf.astype(np.float64) @ wf.astype(np.float64).T
        expect(f"gemm_2to4_f16 {variant} M={m} K={k} N={n}", np.linalg.norm(outf - ref) <= 1e-5 * np.linalg.norm(ref))
    if ck.wgmma_available():
        m, k, n = 300, 256, 520
        a, w = int8(rng, (m, k)), int8(rng, (n, k))
        w_scale, a_scale = rng.uniform(1e-4, 1e-3, n).astype(np.float32), rng.uniform(1e-3, 1e-2, m).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        cuda = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
        out = ck.gemm_s8s8(cuda(a), cuda(w), w_scale=cuda(w_scale), a_scale=cuda(a_scale), bias=cuda(bias),
                           act="gelu_erf", variant="wgmma")
        ref = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act="gelu_erf")
        expect(f"gemm_s8s8 wgmma W8A8 epilogue M={m} K={k} N={n}",
               np.array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32)))
        w24 = ck.random_2to4(rng, n, k, np.int8)
        out = ck.gemm_2to4_s8(cuda(a), ck.pack_2to4_s8_wgmma(w24), w_scale=cuda(w_scale), a_scale=cuda(a_scale),
                              bias=cuda(bias), act="gelu_erf")
        ref = native.gemm_s8s8_f32_ref(a, w24, w_scale, a_scale, bias, act="gelu_erf")
        expect(f"gemm_2to4_s8 wgmma W8A8 epilogue M={m} K={k} N={n}",
               np.array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32)))
        for m, k, n in [(17, 96, 100), (300, 256, 520)]:
            w = ck.random_2to4(rng, n, k, np.int8)
            x = int8(rng, (m, k))
            out = ck.gemm_2to4_s8(torch.from_numpy(x).cuda(), ck.pack_2to4_s8_wgmma(w))
            expect(f"gemm_2to4_s8 wgmma M={m} K={k} N={n}",
                   np.array_equal(out.cpu().numpy(), x.astype(np.int64) @ w.astype(np.int64).T))
    torch.cuda.synchronize()
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
