"""Exporting a policy whose weights changed: a new trace against its weights written into the traced graph.

    python benchmarks/export/reweight.py [--policy tiny-vla base-vla] [--rounds 3] [--threads 1] [--json FILE]

Per policy: the original is exported once into a TraceCache (traced); then, each round, each pruned copy
(unstructured 50 % and 2:4, by magnitude, masks baked into the weights) is exported with the cache (its
weights written into the kept graph, checked on ONNX Runtime) and without it (traced), in turn. The two files
must hold the same graph (nodes, inputs, outputs, every initializer's values) or the run fails. Prints median
seconds and their ratio; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgevla import versions
from edgevla.export import export_onnx
from edgevla.export.trace_cache import TraceCache
from edgevla.models.zoo import load_policy
from edgevla.prune import apply_masks, baked_copy, nm_masks, unstructured_masks

PRUNINGS = {"unstructured:0.5": lambda p: unstructured_masks(p, 0.5), "2:4": lambda p: nm_masks(p, 2, 4)}


def pruned(policy: torch.nn.Module, how: str) -> torch.nn.Module:
    masked = baked_copy(policy)
    apply_masks(masked, PRUNINGS[how](masked))
    return baked_copy(masked)


def same_graph(a: Path, b: Path) -> bool:
    x, y = onnx.load(str(a)), onnx.load(str(b))
    if x.graph.node != y.graph.node or x.graph.input != y.graph.input or x.graph.output != y.graph.output:
        return False
    xs = {i.name: numpy_helper.to_array(i) for i in x.graph.initializer}
    ys = {i.name: numpy_helper.to_array(i) for i in y.graph.initializer}
    return xs.keys() == ys.keys() and all(xs[n].dtype == ys[n].dtype and np.array_equal(xs[n], ys[n]) for n in xs)


def bench(name: str, rounds: int, scratch: Path) -> list[dict]:
    policy = load_policy(name).policy.eval()
    rows = []
    with TraceCache() as cache:
        start = time.perf_counter()
        export_onnx(policy, scratch / "original.onnx", cache=cache)
        first = time.perf_counter() - start
        copies = {how: pruned(policy, how) for how in PRUNINGS}
        for how, copy in copies.items():
            times = {"reweighted": [], "traced": []}
            for r in range(rounds):
                for mode in (("reweighted", "traced") if r % 2 == 0 else ("traced", "reweighted")):
                    start = time.perf_counter()
                    export_onnx(copy, scratch / f"{mode}.onnx", cache=cache if mode == "reweighted" else None)
                    times[mode].append(time.perf_counter() - start)
            if cache.reused != rounds * (1 + list(copies).index(how)):
                sys.exit(f"{name} {how}: the pruned copy was traced, not written into the kept graph")
            if not same_graph(scratch / "reweighted.onnx", scratch / "traced.onnx"):
                sys.exit(f"{name} {how}: the written graph differs from a new trace")
            row = {"policy": name, "pruning": how, "params": sum(p.numel() for p in policy.parameters()),
                   "original_export_s": round(first, 3),
                   **{f"{m}_s": round(statistics.median(t), 3) for m, t in times.items()},
                   "same_graph": True}
            row["traced_over_reweighted"] = round(row["traced_s"] / row["reweighted_s"], 1)
            rows.append(row)
            print(f"{name:10s} {how:17s} traced {row['traced_s']:7.2f} s   re-weighted {row['reweighted_s']:6.2f} s"
                  f"   {row['traced_over_reweighted']:6.1f}x   same graph", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", nargs="+", default=["tiny-vla", "base-vla"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        rows = [row for name in args.policy for row in bench(name, args.rounds, Path(scratch))]
    result = {"bench": "export-reweight", "rounds": args.rounds, "threads": args.threads,
              "host": platform.processor() or platform.machine(), "versions": versions(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
