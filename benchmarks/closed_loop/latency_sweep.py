"""Closed-loop success of bundles when each query's chunk reaches the robot late, both schedules.

For each bundle and each latency in control ticks: the tabletop task's seeded episodes (the same for every
bundle and latency), run by the chunk controller's schedule (``edgevla.control``) with the latency simulated:
``sync`` holds while the policy runs, ``async`` starts the next query that many ticks early and keeps
executing the previous chunk, ``ensemble`` averages every chunk's prediction for each tick (ACT's temporal
ensembling, weight --ensemble-m). Prints success and mean steps per row; writes every row to --json.

The per-index action error of each bundle against the scripted expert on one batch of scenes is printed too:
an asynchronous schedule executes the later actions of each chunk, which a zero-latency loop never does.

    python benchmarks/closed_loop/latency_sweep.py BUNDLE... [--ticks 0 1 2 3] [--episodes 200]
                                                   [--schedules sync async ensemble] [--execute 4]
                                                   [--ensemble-m 0.01] [--backend onnxruntime] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgevla.deploy import BundlePolicy
from edgevla.metrics.report import host_info
from edgevla.pipeline import task_for
from edgevla.task import TabletopEnv, evaluate
from edgevla.task.tabletop import expert_chunk


def chunk_error_by_index(policy: BundlePolicy, scenes: int = 200, seed: int = 123) -> list[float]:
    """Mean distance of each chunk index's action to the scripted expert's, over fresh scenes."""
    task = task_for(policy.spec)
    env = TabletopEnv(task, scenes, seed=seed)
    actions = policy(env.observe())
    expert = expert_chunk(task, env.effector, env.scenes.target_xy)
    return [float(e) for e in np.linalg.norm(actions - expert, axis=-1).mean(axis=0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--ticks", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--schedules", nargs="+", choices=("sync", "async", "ensemble"),
                    default=["sync", "async", "ensemble"])
    ap.add_argument("--execute", type=int, default=4)
    ap.add_argument("--ensemble-m", type=float, default=0.01)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--json")
    args = ap.parse_args()

    rows, errors = [], {}
    for path in args.bundles:
        name = Path(path).name
        with BundlePolicy(path, backend=args.backend, threads=1) as policy:
            task = task_for(policy.spec)
            errors[name] = chunk_error_by_index(policy)
            print(f"{name}: action error vs the expert by chunk index: "
                  + " ".join(f"{e:.4f}" for e in errors[name]))
            for schedule in args.schedules:
                for ticks in args.ticks:
                    r = evaluate(policy, task, episodes=args.episodes, execute=args.execute, latency_ticks=ticks,
                                 asynchronous=schedule == "async",
                                 ensemble=args.ensemble_m if schedule == "ensemble" else None)
                    rows.append({"bundle": name, "schedule": schedule, "latency_ticks": ticks,
                                 "success_rate": r.success_rate, "mean_steps": r.mean_steps,
                                 "smoothness": r.smoothness})
                    print(f"  {schedule:8s} {ticks} tick(s): success {r.success_rate:6.1%}, "
                          f"mean steps {r.mean_steps:5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "host": host_info(), "episodes": args.episodes, "execute": args.execute,
            "ensemble_m": args.ensemble_m, "backend": args.backend,
            "bundles": [str(Path(b).resolve()) for b in args.bundles], "chunk_error_by_index": errors,
            "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
