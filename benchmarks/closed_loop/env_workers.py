"""Closed-loop evaluation of a slow simulator, its episodes stepped in this process or in worker processes.

The tests' point-reaching simulator with every step costing STEP_MS of CPU (``tests/user_envs.py``,
``SlowPointReach``: a busy loop on the thread's CPU clock, as a physics step or a rendered frame is), the
tests' reach policy (PyTorch, one thread) in the loop; ``edgevla.task.evaluate`` over the same seeded
episodes with ``evaluate.env_workers`` = each of WORKERS (0: this process). Prints and writes the wall
time per setting, its ratio to 0 workers, and checks every setting's result is the same.

    PYTHONPATH=tests python benchmarks/closed_loop/env_workers.py [--step-ms 5] [--episodes 100]
                                                                  [--workers 0 1 2 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from edgevla.bench import write_json
from edgevla.metrics.report import host_info
from edgevla.task import evaluate
from edgevla.task.user_env import EnvTask
from edgevla.train import torch_action_fn
from user_envs import make_reach_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step-ms", type=float, default=5.0)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["EDGEVLA_TEST_STEP_MS"] = str(args.step_ms)  # the workers inherit it
    torch.set_num_threads(1)
    policy = make_reach_policy()
    act = torch_action_fn(policy)
    rows, reference = [], None
    for workers in args.workers:
        task = EnvTask("user_envs:make_slow_reach_env", policy.spec, workers=workers)
        try:
            task.batch_env(1, 0)  # workers started and their module imported: not what is timed
            start = time.perf_counter()
            result = evaluate(act, task, episodes=args.episodes, seed=10_000)
            seconds = time.perf_counter() - start
        finally:
            task.close()
        reference = reference or (seconds, result)
        if result != reference[1]:
            raise SystemExit(f"{workers} workers gave another result: {result} vs {reference[1]}")
        steps = round(result.mean_steps * result.episodes)
        rows.append({"workers": workers, "seconds": seconds, "speedup": reference[0] / seconds, "env_steps": steps,
                     "success_rate": result.success_rate})
        print(f"workers {workers}: {seconds:.2f} s for {args.episodes} episodes ({steps} steps of {args.step_ms:g} ms), "
              f"{reference[0] / seconds:.2f}x of in-process; success {result.success_rate:.1%}", flush=True)
    if args.json:
        write_json({"host": host_info(), "cpus": len(os.sched_getaffinity(0)), "step_ms": args.step_ms,
                    "episodes": args.episodes, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
