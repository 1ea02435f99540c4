"""One call of each batch-1 kernel variant on the large-up layer (K 4096, N 14336), for Nsight Compute.

    ncu --clock-control none -k regex:"gemm_w4|gemm_s8s8_small_m" --section SpeedOfLight \
        --section Occupancy --section LaunchStats --section WarpStateStats --csv --page details \
        python3 tests/cuda/ncu_gemv.py

run_device.sh's ``ncu-gemv`` step. The counters say what each GEMV is bound by:
DRAM throughput against the SM's issue activity, waves per SM, achieved
occupancy and the warps' stall reasons. The int4 kernels run at M = 1 on
float16 x (the bandwidth goal's rows) and at M = 16 on float32 x (the native
backend's rows); the int8 small-M kernel at M = 1 (auto, and small_m_wave) is
the reference point (2.3 TB/s on the H200). Each output is checked, so the script also fails on a
wrong answer.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from edgevla import cuda_kernels as ck
from edgevla import native

K, N, GROUP = 4096, 14336, 32


def main() -> int:
    if not ck.available():
        print(f"skipped: {ck.unavailable_reason()}")
        return 0
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (N, K // 2), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (N, K // GROUP)).astype(np.float32)
    weight = ck.W4Weight.from_packed(native.pack_w4(codes, scales, GROUP, k=K))
    failures = 0
    for m, dtype in ((1, np.float16), (16, np.float32)):
        x = rng.standard_normal((m, K)).astype(dtype)
        ref = native.gemm_w4_f32_ref(x.astype(np.float32), codes, scales, GROUP)
        for variant in ("auto", *ck.W4_VARIANTS[1:]):
            got = ck.gemm_w4(torch.from_numpy(x).cuda(), weight, variant=variant).cpu().numpy()
            ok = np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)
            print(f"{'ok  ' if ok else 'FAIL'} gemm_w4 {variant} M={m} {np.dtype(dtype).name} x")
            failures += not ok
    a = rng.integers(-127, 128, (1, K), dtype=np.int8)
    w = rng.integers(-127, 128, (N, K), dtype=np.int8)
    for variant in ("auto", *ck.SMALL_M_VARIANTS[1:]):
        got = ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant).cpu().numpy()
        ok = np.array_equal(got, a.astype(np.int64) @ w.astype(np.int64).T)
        print(f"{'ok  ' if ok else 'FAIL'} gemm_s8s8 {variant} M=1")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
