"""The AVX2 int8 GEMMs' two exact paths, dense (csrc/arch/x86_64/gemm_avx2.cpp) and 2:4 sparse
(gemm_2to4_avx2.cpp), timed in one binary on the same weights: activations in [-127, 127] (the signed path:
vpsignb + vpmaddubsw + vpmaddwd, what this library's dynamic quantization feeds them) and the same activations
with one -128 a row (every tile then takes the widening path: int8 -> int16 and vpmaddwd). Both results are
checked against int64 products first. GMAC/s count the dense product's M N K for both kernels.

    python benchmarks/cpu/avx2_int8_paths.py [--threads 1] [--rounds 15] [--json FILE]

Needs a CPU with AVX2. Rounds alternate the two paths; the medians are quoted with their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from edgevla import native

SHAPES = [(1, 96, 96), (1, 768, 768), (1, 768, 3072), (1, 3072, 768), (16, 96, 384), (16, 768, 768),
          (16, 768, 3072), (16, 3072, 768), (64, 768, 768), (256, 768, 768)]  # (M, K, N)


def two_four(w: np.ndarray, rng) -> np.ndarray:
    """``w`` with two random zeros in every group of four inputs."""
    groups = w.reshape(w.shape[0], -1, 4).copy()
    drop = np.argsort(rng.random(groups.shape), axis=2)[..., :2]
    np.put_along_axis(groups, drop, 0, axis=2)
    return groups.reshape(w.shape)


KERNELS = {"dense": (native.pack_weight_s8, native.gemm_s8s8_f32),
           "2:4": (native.pack_2to4_s8, native.gemm_2to4_s8s8_f32)}


def _time(gemm, a, packed, out, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        gemm(a, packed, np.float32(1.0), None, act="none", out=out)
    return (time.perf_counter() - start) / calls * 1e6


def measure(kernel: str, m: int, k: int, n: int, rounds: int, rng) -> dict:
    pack, gemm = KERNELS[kernel]
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    if kernel == "2:4":
        w = two_four(w, rng)
    packed = pack(w, np.ones(n, np.float32))
    signed = rng.integers(-127, 128, (m, k), dtype=np.int8)
    widening = signed.copy()
    widening[:, k // 2] = -128
    out = np.empty((m, n), np.float32)
    for a in (signed, widening):
        gemm(a, packed, np.float32(1.0), None, act="none", out=out)
        if not np.array_equal(out, (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.float32)):
            raise SystemExit(f"{kernel} M={m} K={k} N={n}: the result differs from the int64 products")
    calls = max(3, int(2e7 / (m * n * k)))
    times: dict[str, list[float]] = {"signed": [], "widening": []}
    for _ in range(rounds):
        times["signed"].append(_time(gemm, signed, packed, out, calls))
        times["widening"].append(_time(gemm, widening, packed, out, calls))
    s, wd = float(np.median(times["signed"])), float(np.median(times["widening"]))
    return {"kernel": kernel, "M": m, "K": k, "N": n, "signed_us": round(s, 2), "widening_us": round(wd, 2),
            "widening_over_signed": round(wd / s, 3), "signed_gmacs": round(m * n * k / s / 1e3, 2),
            "widening_gmacs": round(m * n * k / wd / 1e3, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if "avx2" not in native.available_isas():
        print("error: this CPU has no AVX2", file=sys.stderr)
        raise SystemExit(2)
    native.set_isa("avx2")
    native.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for kernel in KERNELS:
        for m, k, n in SHAPES:
            row = measure(kernel, m, k, n, args.rounds, rng)
            rows.append(row)
            print(f"{kernel:5s} M={m:4d} K={k:5d} N={n:5d}: signed {row['signed_us']:8.1f} us "
                  f"({row['signed_gmacs']:5.1f} GMAC/s), widening {row['widening_us']:8.1f} us "
                  f"({row['widening_gmacs']:5.1f}): x{row['widening_over_signed']:.2f}", flush=True)
    if args.json:
        host = {"cpu": native.cpu_features() if hasattr(native, "cpu_features") else None,
                "machine": platform.machine(), "threads": args.threads}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "avx2_int8_paths", "host": host, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
