"""``edgevla bench e2e``: compressed bundles end to end, against the dense policy's usual runtimes.

One process, one thread for every backend (``--threads``), batch 1 (``--batch``),
the same held-out observation every call. The backends:

======================  ================================================================
``native:B``            bundle B's ONNX graph on our CPU kernels (``--backend native``)
``onnxruntime:B``       bundle B's ONNX graph in ONNX Runtime
``onnxruntime-dynint8`` the dense policy's export, ``onnxruntime.quantization.quantize_dynamic``
                        (int8 weights, per-tensor dynamic activations: MatMulInteger)
``native-dense``        the dense policy's export on the native backend
``torch-fp32``          the dense policy in PyTorch eager, float32
======================  ================================================================

Each round times every backend once (median of ``--runs`` calls after
``--warmup``), in turn, so drifts of a shared machine hit all of them alike;
the figure of a backend is the median over ``--rounds`` rounds. Ratios are
of those medians, within this one run: issue #5's end-to-end goals are
``native:B`` >= 1.5x ``onnxruntime-dynint8`` and >= 4x ``torch-fp32``. On a
machine whose speed drifts between rounds (a shared 2-vCPU VM: every backend
30 % slower in some rounds), the medians of different backends may come from
different rounds; ``round_ratios_vs_native`` is the median over rounds of
each round's own ratio, the steadier figure there.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import EdgevlaError
from . import write_json

GOALS = (("onnxruntime-dynint8", 1.5), ("torch-fp32", 4.0))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    for flag in ("rounds", "runs", "threads", "batch"):
        if getattr(args, flag) < 1:
            raise EdgevlaError(f"--{flag} must be >= 1")
    if args.warmup < 0:
        raise EdgevlaError("--warmup must be >= 0")
    from .. import native

    with native.isa_scope(getattr(args, "isa", None)):
        result = bench_e2e(args.bundles, policy_ref=args.policy, rounds=args.rounds, runs=args.runs,
                           warmup=args.warmup, threads=args.threads, batch=args.batch,
                           allow_pickle=args.allow_pickle, log=Console(stderr=True, highlight=False).print)
    print_table(result)
    if args.json:
        write_json(result, args.json)
    return 0


def _bundle_label(path: Path) -> str:
    return path.resolve().name


def _policy_reference(bundles: Sequence[Any]) -> str:
    refs = {b.manifest["policy"].get("reference") or b.manifest["policy"]["name"] for b in bundles}
    if len(refs) != 1:
        raise EdgevlaError(f"the bundles come from different policies ({', '.join(sorted(refs))}); "
                           "pass --policy for the dense reference")
    return refs.pop()


def _signature(spec) -> tuple:
    """What a runner's caller relies on: input names, and the action's name, shape and type."""
    return tuple(spec.input_names), spec.action.name, tuple(spec.action.shape), spec.action.dtype


def bench_e2e(bundle_dirs: Sequence[str], *, policy_ref: str | None = None, rounds: int = 5, runs: int = 50,
              warmup: int = 10, threads: int = 1, batch: int = 1, allow_pickle: bool = False,
              log: Callable[..., None] = lambda *a, **k: None) -> dict[str, Any]:
    """Latency medians, per-round figures, ratios and goals (see the module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .. import native
    from ..backends import make_runner
    from ..bundle import load_bundle
    from ..export import export_onnx
    from ..metrics.latency import time_in_rounds
    from ..metrics.report import host_info
    from ..models.zoo import load_policy
    from ..pipeline import batch_of, heldout_observations

    if not bundle_dirs:
        raise EdgevlaError("name at least one bundle directory")
    paths = [Path(d) for d in bundle_dirs]
    labels = [_bundle_label(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise EdgevlaError(f"two bundles share a directory name ({', '.join(labels)}); rename one")
    bundles = [load_bundle(p) for p in paths]
    spec = bundles[0].spec
    if any(_signature(b.spec) != _signature(spec) for b in bundles[1:]):
        raise EdgevlaError("the bundles do not take the same observations and give the same actions")
    policy_ref = policy_ref or _policy_reference(bundles)
    dense = load_policy(policy_ref, allow_pickle=allow_pickle).policy.eval()
    if _signature(dense.spec) != _signature(spec):
        raise EdgevlaError(f"policy {policy_ref!r} does not take the bundles' observations; pass --policy")
    obs = batch_of(heldout_observations(spec, max(batch, 8)), 0, batch)

    with tempfile.TemporaryDirectory(prefix="edgevla-bench-e2e-") as scratch:
        dense_onnx = export_onnx(dense, Path(scratch) / "dense.onnx")
        dynint8_onnx = Path(scratch) / "dense-dynint8.onnx"
        quantize_dynamic(str(dense_onnx), str(dynint8_onnx), weight_type=QuantType.QInt8)
        runners = {}
        try:
            for label, b in zip(labels, bundles):
                runners[f"native:{label}"] = make_runner("native", onnx_path=b.file("model.onnx"), spec=b.spec,
                                                         threads=threads)
                runners[f"onnxruntime:{label}"] = make_runner("onnxruntime", onnx_path=b.file("model.onnx"),
                                                              spec=b.spec, threads=threads)
            runners["onnxruntime-dynint8"] = make_runner("onnxruntime", onnx_path=dynint8_onnx, spec=spec,
                                                         threads=threads)
            runners["native-dense"] = make_runner("native", onnx_path=dense_onnx, spec=spec, threads=threads)
            runners["torch-fp32"] = make_runner("torch", policy=dense, threads=threads)
            timed = time_in_rounds(
                {name: (lambda runner=runner: runner(obs)) for name, runner in runners.items()}, rounds=rounds,
                runs=runs, warmup=warmup, after_round=lambda r, stats: log(
                    f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1].p50_ms:.2f}" for n, v in stats.items())))
            rounds_ms = {name: [s.p50_ms for s in per_round] for name, per_round in timed.items()}
        finally:
            for runner in runners.values():
                runner.close()

    median_ms = {name: statistics.median(v) for name, v in rounds_ms.items()}
    ratios, round_ratios, goals = {}, {}, []
    for label in labels:
        ours = median_ms[f"native:{label}"]
        peers = ("onnxruntime-dynint8", "torch-fp32", f"onnxruntime:{label}", "native-dense")
        ratios[label] = {peer: round(median_ms[peer] / ours, 3) for peer in peers}
        round_ratios[label] = {
            peer: round(statistics.median(p / o for p, o in zip(rounds_ms[peer], rounds_ms[f"native:{label}"])), 3)
            for peer in peers}
        for peer, threshold in GOALS:
            goals.append({"goal": f"native {label} >= {threshold}x {peer} (batch {batch}, {threads} thread(s))",
                          "ratio": ratios[label][peer], "threshold": threshold,
                          "met": ratios[label][peer] >= threshold})
    isa = native.get_isa() if native.available() else None
    return {"benchmark": "e2e", "host": host_info(), "native_isa": isa, "policy": policy_ref,
            "bundles": dict(zip(labels, map(str, paths))), "threads": threads, "batch": batch, "rounds": rounds,
            "runs_per_round": runs, "warmup": warmup,
            "median_ms": {k: round(v, 4) for k, v in median_ms.items()},
            "rounds_ms": {k: [round(x, 4) for x in v] for k, v in rounds_ms.items()},
            "ratios_vs_native": ratios, "round_ratios_vs_native": round_ratios, "goals": goals}


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"{result['policy']} end to end · batch {result['batch']} · {result['threads']} thread(s) · "
                        f"median of {result['rounds']} rounds"
                        + (f" · native {result['native_isa']} kernels" if result.get("native_isa") else ""))
    for col in ("backend", "p50 ms (median)", "rounds"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for name, ms in sorted(result["median_ms"].items(), key=lambda kv: kv[1]):
        table.add_row(name, f"{ms:.3f}", " ".join(f"{x:.2f}" for x in result["rounds_ms"][name]))
    console.print(table)
    for label, peers in result.get("round_ratios_vs_native", {}).items():
        console.print(f"native:{label}, median of per-round ratios: "
                      + ", ".join(f"{ratio:.2f}x vs {peer}" for peer, ratio in peers.items()))
    for g in result["goals"]:
        console.print(f"goal: {g['goal']}: {g['ratio']:.2f}x — {'met' if g['met'] else 'NOT met'}")
