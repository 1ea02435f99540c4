"""``edgevla bench prune``: every pruning method on one policy, side by side.

For each method (the ``--prune`` shorthands of ``edgevla build``) the policy is
pruned and recovered exactly as a build does it (:func:`edgevla.pipeline.prune_policy`),
then measured against the original:

- parameters (whole policy and the pruned scope) and FLOPs at batch 1;
- closed-loop success and action error (normalized MSE against the original's
  actions on held-out observations) before pruning, right after it, and after
  recovery by distillation; recovery steps and seconds;
- CPU latency at batch 1 of the PyTorch model and of its ONNX export in ONNX
  Runtime (median of ``--runs`` after warm-up), with the ratio to the original.

Unstructured and N:M zeros stay dense in both runtimes (neither has a sparse
CPU kernel), so only structured pruning can lower these latencies; the
native backend's sparse kernels are measured by ``edgevla bench kernels``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevlaError
from . import write_json

DEFAULT_METHODS = ("2:4", "unstructured:0.8", "structured:0.5")
DEFAULT_TARGET = "x86-64-cpu"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..recipe import prune_shorthand

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise EdgevlaError("--methods: name at least one method")
    for m in methods:
        prune_shorthand(m, "--methods")  # every name checked before any slow work
    for flag in ("episodes", "runs", "threads"):
        if getattr(args, flag) < 1:
            raise EdgevlaError(f"--{flag} must be >= 1")
    if args.recovery_steps is not None and args.recovery_steps < 0:
        raise EdgevlaError("--recovery-steps must be >= 0")
    result = bench_prune(args.policy, methods, target=args.target, episodes=args.episodes,
                         recovery_steps=args.recovery_steps, runs=args.runs, threads=args.threads,
                         allow_pickle=args.allow_pickle, env=args.env, log=Console(stderr=True, highlight=False).print)
    print_table(result)
    if args.json:
        write_json(result, args.json)
    return 0


def bench_prune(policy_ref: str, methods: list[str], *, target: str = DEFAULT_TARGET, episodes: int = 200,
                recovery_steps: int | None = None, runs: int = 200, threads: int = 1, allow_pickle: bool = False,
                env: str | None = None, log=lambda *a, **k: None) -> dict[str, Any]:
    """Rows of figures, one for the original and one per method (see the module docstring)."""
    import torch

    from ..models.zoo import load_policy
    from ..pipeline import heldout_observations, task_for, with_demonstrator
    from ..recipe import load_recipe, prune_shorthand
    from ..targets import load_target

    tgt = load_target(target)
    simulator = {} if env is None else {"evaluate.env": env}
    loaded = load_policy(policy_ref, allow_pickle=allow_pickle)
    original = loaded.policy.eval()
    spec = original.spec
    task = with_demonstrator(task_for(spec, load_recipe(None, tgt, overrides=simulator).evaluate), original)
    if task is None:
        raise EdgevlaError(f"bench prune needs a policy the tabletop task speaks, or its simulator (--env); "
                           f"{loaded.name} is not one")
    torch.set_num_threads(threads)
    held = heldout_observations(spec, 64, task=task)
    from ..export.trace_cache import TraceCache

    # The methods that zero weights export into the original's traced graph (export.trace_cache).
    with tempfile.TemporaryDirectory(prefix="edgevla-bench-prune-") as scratch, TraceCache() as traces:
        log(f"[bold]original[/bold] {loaded.name}")
        base = _measure(original, original, spec, task, held, episodes, runs, threads, Path(scratch) / "original",
                        traces)
        rows = [{"method": "original", **base}]
        for method in methods:
            overrides = {**simulator, **prune_shorthand(method, "--methods")}
            if recovery_steps is not None:
                overrides["prune.recovery.max_steps"] = recovery_steps
            recipe = load_recipe(None, tgt, overrides=overrides)
            log(f"[bold]{method}[/bold]")
            pruned = copy.deepcopy(original)
            start = time.perf_counter()
            info = _prune(pruned, original, spec, task, recipe, tgt)
            seconds = time.perf_counter() - start
            after = _measure(pruned, original, spec, task, held, episodes, runs, threads, Path(scratch) / "m",
                             traces)
            rec = info.get("recovery") if isinstance(info.get("recovery"), dict) else {}
            rows.append({
                "method": method,
                **after,
                "params_removed_pct": _pct(base["params"] - after["params"], base["params"]),
                "scope_params_removed_pct": _pct(info["scope_params_before"] - info["scope_params_after"],
                                                 info["scope_params_before"]),
                "scope_zero_weights": info["scope_zero_weights"],
                "flops_removed_pct": _pct(base["flops"] - after["flops"], base["flops"]),
                "success_after_pruning": rec.get("before", {}).get("success"),
                "action_error_after_pruning": rec.get("before", {}).get("action_error"),
                "recovery_steps": rec.get("steps"),
                "recovery_seconds": rec.get("train_seconds"),
                "recovered": rec.get("recovered"),
                "prune_and_recover_seconds": round(seconds, 2),
                "success_lost_points": round(100 * (base["success"] - after["success"]), 2),
                "torch_latency_ratio": round(after["torch_p50_ms"] / base["torch_p50_ms"], 3),
                "onnxruntime_latency_ratio": round(after["onnxruntime_p50_ms"] / base["onnxruntime_p50_ms"], 3),
            })
    from .. import versions

    task.close()  # a simulator's environments
    return {"bench": "prune", "policy": loaded.name, "target": tgt.name, "task": task.name,
            "episodes": episodes, "runs": runs, "threads": threads, "versions": versions(), "rows": rows}


def _prune(policy, teacher, spec, task, recipe, target) -> dict[str, Any]:
    from ..pipeline import prune_policy
    from ..progress import Progress

    info, _ = prune_policy(policy, teacher, spec, task, recipe.prune, round_to=target.facts.preferred_channel_multiple,
                           max_loss=recipe.accuracy_loss_budget(target), progress=Progress(), loop=recipe.evaluate)
    return info  # no quantized form given: recovery trains the float policy


def _measure(policy, original, spec, task, held, episodes: int, runs: int, threads: int, onnx_dir: Path, traces):
    """Size, FLOPs, success, action error against ``original`` and latency (torch, ORT) of ``policy``."""
    import torch

    from ..backends import make_runner
    from ..export import export_onnx
    from ..metrics.flops import flop_report
    from ..metrics.latency import measure_latency
    from ..pipeline import batch_of
    from ..task import evaluate
    from ..train import torch_action_fn

    names = spec.input_names
    inputs = [torch.from_numpy(np.ascontiguousarray(held[n])) for n in names]
    with torch.inference_mode():
        ours, ref = policy(*inputs).numpy(), original(*inputs).numpy()
    one = batch_of(held, 0, 1)
    flops = flop_report(policy, tuple(torch.from_numpy(one[n]) for n in names)).total
    success = evaluate(torch_action_fn(policy), task, episodes=episodes, seed=10_000).success_rate
    onnx_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(policy, onnx_dir / "model.onnx", cache=traces)
    latency = {}
    for backend, kwargs in (("torch", {"policy": policy}), ("onnxruntime", {"onnx_path": onnx_path, "spec": spec})):
        with make_runner(backend, threads=threads, **kwargs) as runner:
            latency[backend] = measure_latency(lambda: runner(one), warmup=max(10, runs // 10), runs=runs).p50_ms
    return {
        "params": sum(p.numel() for p in policy.parameters()),
        "nonzero_params": sum(int((p != 0).sum()) for p in policy.parameters()),
        "flops": int(flops),
        "onnx_bytes": onnx_path.stat().st_size,
        "success": success,
        "action_error": float(np.mean((ours - ref) ** 2)),
        "torch_p50_ms": round(latency["torch"], 4),
        "onnxruntime_p50_ms": round(latency["onnxruntime"], 4),
    }


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"bench prune: {result['policy']} (target {result['target']}, {result['episodes']} episodes, "
                    f"{result['threads']} thread(s))")
    for col in ("method", "params", "-params", "-FLOPs", "success", "after prune", "recovery", "action err",
                "torch ms", "ORT ms", "ORT ratio"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        first = r["method"] == "original"
        t.add_row(
            r["method"], f"{r['params']:,}",
            "" if first else f"{r['scope_params_removed_pct']:.1f}% scope / {r['scope_zero_weights']:,} zero",
            "" if first else f"{r['flops_removed_pct']:.1f}%",
            f"{r['success']:.1%}",
            "" if first or r["success_after_pruning"] is None else f"{r['success_after_pruning']:.1%}",
            "" if first else f"{r['recovery_steps']} steps, {r['recovery_seconds'] or 0:.0f} s",
            f"{r['action_error']:.2e}",
            f"{r['torch_p50_ms']:.3f}", f"{r['onnxruntime_p50_ms']:.3f}",
            "" if first else f"{r['onnxruntime_latency_ratio']:.2f}x",
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(t)
