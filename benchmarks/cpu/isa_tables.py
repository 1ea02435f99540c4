"""The native kernels of each x86-64 instruction set on one host: what an AVX2-only or AVX-VNNI robot PC runs.

For every kernel table this build and CPU have (or those named with --isas), forced in turn with
``native.set_isa``: the dense W8A8 GEMM in GMAC/s on the reference policies' shapes (1 thread, weights hot,
median of 7 windows of 30 ms), then each bundle end to end (the native runtime loaded under that table, p50 of
--runs calls, median over --rounds rounds that visit every table in turn). It uses nothing newer than
``set_isa``, so the same script times an older build for a before/after (run it with that build's Python).
ONNX Runtime, PyTorch and NumPy are not forced: compare tables with each other, not with them.

    python benchmarks/cpu/isa_tables.py [BUNDLE ...] [--isas avx512_vnni,avx_vnni,avx2] [--threads 2]
                                        [--rounds 5] [--runs 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgevla import native
from edgevla.backends import make_runner
from edgevla.bundle import load_bundle
from edgevla.metrics.latency import measure_latency
from edgevla.metrics.report import host_info
from edgevla.pipeline import batch_of, heldout_observations

#: (M, N, K): tiny/small-vla projections and MLPs at batch 1 (M = 1) and over tokens, a U-Net-sized layer.
GEMM_SHAPES = [(1, 384, 384), (1, 1536, 384), (16, 384, 384), (16, 1536, 384), (64, 96, 384), (64, 384, 1536),
               (256, 384, 384), (256, 1536, 384)]


def seconds_per_call(call, windows: int = 7, window_s: float = 0.03) -> float:
    """The median over `windows` windows of `window_s` seconds of the time per call (also two_four_vs_dense.py's)."""
    times = []
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < window_s:
            call()
            calls += 1
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def gemm_rows(isas: list[str]) -> list[dict]:
    native.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in GEMM_SHAPES:
        a, w = rng.integers(-127, 128, (m, k), dtype=np.int8), rng.integers(-127, 128, (n, k), dtype=np.int8)
        packed, out = native.pack_weight_s8(w, np.full(n, 0.01, np.float32)), np.empty((m, n), np.float32)
        a_scale = np.float32(0.1)
        row = {"m": m, "n": n, "k": k, "gmacs": {}}
        for isa in isas:
            native.set_isa(isa)
            seconds = seconds_per_call(lambda: native.gemm_s8s8_f32(a, packed, a_scale, out=out))
            row["gmacs"][isa] = round(m * n * k / seconds / 1e9, 1)
        rows.append(row)
        print(f"GEMM {m:4d} x {n:5d} x {k:5d}  " + "  ".join(f"{i} {g:6.1f}" for i, g in row["gmacs"].items()),
              flush=True)
    native.set_isa("auto")
    return rows


def bundle_rows(paths: list[Path], isas: list[str], threads: int, rounds: int, runs: int) -> dict[str, dict]:
    native.set_num_threads(threads)
    results = {}
    for path in paths:
        bundle = load_bundle(path)
        obs = batch_of(heldout_observations(bundle.spec, 8), 0, 1)
        runners = {}
        try:
            for isa in isas:  # the runtime picks its kernels as the model loads
                native.set_isa(isa)
                runners[isa] = make_runner("native", onnx_path=bundle.file("model.onnx"), spec=bundle.spec,
                                           threads=threads)
            p50 = {isa: [] for isa in isas}
            for _ in range(rounds):
                for isa, runner in runners.items():
                    native.set_isa(isa)
                    p50[isa].append(measure_latency(lambda runner=runner: runner(obs), warmup=10, runs=runs).p50_ms)
        finally:
            native.set_isa("auto")
            for runner in runners.values():
                runner.close()
        results[path.resolve().name] = {isa: {"p50_ms": round(statistics.median(v), 4),
                                              "rounds_ms": [round(x, 4) for x in v]} for isa, v in p50.items()}
        print(f"{path.resolve().name}: " + ", ".join(f"{i} {r['p50_ms']:.3f} ms"
                                                     for i, r in results[path.resolve().name].items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--isas", help="comma-separated tables (default: every one this build and CPU have "
                                       "but generic)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the bundles (GEMMs: 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    available = native.available_isas()
    isas = args.isas.split(",") if args.isas else [isa for isa in available if isa != "generic"]
    missing = [isa for isa in isas if isa not in available]
    if missing:
        parser.error(f"this build or CPU has no {', '.join(missing)} table (it has {', '.join(available)})")
    result = {"host": host_info(), "compiled_isas": native.compiled_isas(), "isas": isas,
              "gemm_threads": 1, "gemm": gemm_rows(isas),
              "bundle_threads": args.threads, "bundles": bundle_rows(args.bundles, isas, args.threads, args.rounds,
                                                                     args.runs)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
