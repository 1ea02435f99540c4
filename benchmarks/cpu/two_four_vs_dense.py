"""2:4 int8 against dense int8, per x86-64 kernel table: when does a 2:4-pruned layer run faster?

For each table this build and CPU have (or those named with --isas), forced in turn with ``native.set_isa``:
the W8A8 GEMM of one layer on its dense packing and on its 2:4 packing (same codes, same outputs), 1 thread by
default, microseconds per call (median of 7 windows).

- hot: one weight, called again and again: it stays in the caches (the tiny/small-vla shapes);
- cold: --copies copies of a 4096 x 4096 weight called in turn, more bytes than the caches hold, so every call
  reads its weights from DRAM, as a batch-1 policy of a few hundred MB does (GB/s is the packed bytes read).

With --bundles, each 2:4 bundle end to end under each table, as the native runtime plans it (its 2:4 weights on
the 2:4 kernel where the table's plan says so) and with the plan's 2:4 rule taken out (every layer on the dense
GEMM): p50 ms of --runs calls, median over --rounds rounds that alternate the two. Outputs are checked equal.

    python benchmarks/cpu/two_four_vs_dense.py [--isas avx512_vnni,avx_vnni,avx2] [--threads 1] [--copies 40]
                                                [--bundles DIR ...] [--bundle-threads 2] [--rounds 5] [--runs 20]
                                                [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from edgevla import native
from edgevla.backends import make_runner
from edgevla.bundle import load_bundle
from edgevla.errors import EdgevlaError
from edgevla.metrics.latency import measure_latency
from edgevla.metrics.report import host_info
from edgevla.pipeline import batch_of, heldout_observations
from edgevla.runtime import linear
from isa_tables import seconds_per_call  # the sibling script's timing: run this one from any folder

#: (N, K) and the Ms of the hot rows: small-vla's projections and MLP, at batch 1 and over tokens.
HOT_SHAPES = [(1536, 384), (384, 1536), (384, 384)]
HOT_MS = (1, 4, 16, 32)
COLD_SHAPE, COLD_MS = (4096, 4096), (1, 4)


def two_four(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Random int8 codes with two nonzeros at random places in every aligned group of 4 inputs."""
    w = rng.integers(-127, 128, (n, k // 4, 4), dtype=np.int8)
    w[rng.integers(1, 128, w.shape) == 0] = 1  # no zeros beyond the pattern's
    order = np.argsort(rng.random(w.shape), axis=2)
    np.put_along_axis(w, order[:, :, 2:], 0, axis=2)
    return w.reshape(n, k)


def _rotating(gemm, a, packed: list, a_scale, out):
    """A call that runs the GEMM on the next of the packed weights, round robin."""
    state = {"next": 0}

    def call():
        gemm(a, packed[state["next"]], a_scale, out=out)
        state["next"] = (state["next"] + 1) % len(packed)
    return call


def measure(isas: list[str], copies: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    layers = [(n, k, HOT_MS, 1) for n, k in HOT_SHAPES] + [(*COLD_SHAPE, COLD_MS, copies)]
    for n, k, ms, count in layers:
        scale = np.full(n, 0.01, np.float32)
        weights = [two_four(rng, n, k) for _ in range(min(count, 2))]  # copies alternate two weights
        dense = [native.pack_weight_s8(weights[i % len(weights)], scale) for i in range(count)]
        sparse = [native.pack_2to4_s8(weights[i % len(weights)], scale) for i in range(count)]
        dense_bytes, sparse_bytes = (native.packed_info(p[0])["nbytes"] for p in (dense, sparse))
        for m in ms:
            a, a_scale = rng.integers(-127, 128, (m, k), dtype=np.int8), np.float32(0.1)
            out = np.empty((m, n), np.float32)
            for isa in isas:
                native.set_isa(isa)
                window = 0.03 if count == 1 else 0.1
                dense_us = 1e6 * seconds_per_call(_rotating(native.gemm_s8s8_f32, a, dense, a_scale, out),
                                                  window_s=window)
                sparse_us = 1e6 * seconds_per_call(_rotating(native.gemm_2to4_s8s8_f32, a, sparse, a_scale, out),
                                                   window_s=window)
                row = {"isa": isa, "weights": "hot" if count == 1 else "cold", "m": m, "n": n, "k": k,
                       "dense_us": round(dense_us, 2), "two_four_us": round(sparse_us, 2),
                       "dense_over_two_four": round(dense_us / sparse_us, 3),
                       "dense_bytes": dense_bytes, "two_four_bytes": sparse_bytes}
                if count > 1:
                    row["dense_gbps"] = round(dense_bytes / dense_us / 1e3, 1)
                    row["two_four_gbps"] = round(sparse_bytes / sparse_us / 1e3, 1)
                rows.append(row)
                print(f"{n}x{k} M={m:<3d} {isa:12s} {row['weights']:4s} dense {dense_us:8.1f} us  "
                      f"2:4 {sparse_us:8.1f} us  dense/2:4 {row['dense_over_two_four']:.2f}", flush=True)
    native.set_isa("auto")
    return rows


def _runner(bundle, threads: int, rules: tuple):
    """A native runner of the bundle planned with `rules` as the kernel table."""
    planned = linear.RULES
    linear.RULES = rules
    try:
        return make_runner("native", onnx_path=bundle.file("model.onnx"), spec=bundle.spec, threads=threads)
    finally:
        linear.RULES = planned


def measure_bundles(paths: list[str], bundles: list, isas: list[str], threads: int, rounds: int,
                    runs: int) -> list[dict]:
    without_two_four = tuple(rule for rule in linear.RULES if rule.kernel != "s8-2:4")
    rows = []
    for path, bundle in zip(paths, bundles):
        obs = batch_of(heldout_observations(bundle.spec, 8), 0, 1)
        for isa in isas:
            with native.isa_scope(isa):
                runners = {"planned": _runner(bundle, threads, linear.RULES),
                           "dense": _runner(bundle, threads, without_two_four)}
                try:
                    outputs = [runner(obs) for runner in runners.values()]
                    same = bool(np.array_equal(outputs[0], outputs[1]))
                    ms = {name: [] for name in runners}
                    for _ in range(rounds):
                        for name, runner in runners.items():
                            ms[name].append(measure_latency(lambda r=runner: r(obs), warmup=3, runs=runs).p50_ms)
                    kernels = sorted({c.kernel for c in runners["planned"].plan()})
                finally:
                    for runner in runners.values():
                        runner.close()
            row = {"bundle": Path(path).name, "isa": isa, "threads": threads, "planned_kernels": kernels,
                   "planned_ms": round(statistics.median(ms["planned"]), 3),
                   "dense_ms": round(statistics.median(ms["dense"]), 3),
                   "dense_over_planned": round(statistics.median(d / p for d, p in zip(ms["dense"], ms["planned"])), 3),
                   "same_outputs": same}
            rows.append(row)
            print(f"{row['bundle']} {isa:12s} planned ({', '.join(kernels)}) {row['planned_ms']:.2f} ms  "
                  f"all dense {row['dense_ms']:.2f} ms  dense/planned {row['dense_over_planned']:.3f}  "
                  f"outputs {'equal' if same else 'DIFFER'}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isas", help="comma-separated tables (default: every x86 SIMD table here)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--copies", type=int, default=40, help="cold: 4096 x 4096 weights called in turn")
    parser.add_argument("--bundles", nargs="*", default=[], help="2:4 bundles to time end to end")
    parser.add_argument("--bundle-threads", type=int, default=2, help="kernel threads for the bundles")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="calls a round, per bundle and plan")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    here = native.available_isas()
    isas = args.isas.split(",") if args.isas else [i for i in ("avx512_vnni", "avx_vnni", "avx2") if i in here]
    missing = [i for i in isas if i not in here]
    if missing:
        raise SystemExit(f"two_four_vs_dense: {', '.join(missing)} not available here ({', '.join(here)})")
    native.set_num_threads(args.threads)
    try:
        bundles = [load_bundle(path) for path in args.bundles]  # a bad folder fails before any timing
        rows = measure(isas, args.copies)
        bundle_rows = measure_bundles(args.bundles, bundles, isas, args.bundle_threads, args.rounds, args.runs)
    except EdgevlaError as error:
        raise SystemExit(f"two_four_vs_dense: {error}") from None
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "two_four_vs_dense", "host": host_info(),
                                               "threads": args.threads, "copies": args.copies, "rows": rows,
                                               "bundle_threads": args.bundle_threads, "bundles": bundle_rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
