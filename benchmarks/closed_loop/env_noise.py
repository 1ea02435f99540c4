"""Distillation data from a simulator: the original's clean rollouts against noisy ones (evaluate.env_noise).

A pruned copy of the tests' point-reaching policy (``tests/user_envs.py``) is distilled from the original on
the train split of ``edgevla.task.user_env.EnvTask`` (the original's rollouts in the simulator, the executed
actions with Gaussian noise of NOISE action standard deviations, the labels clean) for a fixed number of steps,
with no early stop, then judged on the evaluator's 200 episodes without latency and with each chunk one tick
late (asynchronous). Each cell is the mean over torch seeds (the data's seeds too).

    PYTHONPATH=tests python benchmarks/closed_loop/env_noise.py [--noise 0 0.5] [--steps 50 200] [--seeds 3]
                                                                [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from edgevla.backends import make_runner
from edgevla.bench import write_json
from edgevla.metrics.report import host_info
from edgevla.pipeline import action_fn, normalized_batch
from edgevla.prune import RecoveryConfig, distill, gradual_prune
from edgevla.task import evaluate
from edgevla.task.user_env import EnvTask
from edgevla.train import torch_action_fn
from user_envs import make_reach_policy

ENV = "user_envs:make_reach_env"
PRUNINGS = {"2:4": ("2:4", None), "unstructured:0.9": ("unstructured", 0.9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = make_reach_policy()
    demonstrator = action_fn(make_runner("torch", policy=teacher))
    config = RecoveryConfig(batch_size=32)
    rows = []
    for pruning, (method, sparsity) in PRUNINGS.items():
        for steps in args.steps:
            for noise in args.noise:
                runs = []
                for seed in range(args.seeds):
                    task = EnvTask(ENV, teacher.spec, noise=noise)
                    task.demonstrator = demonstrator
                    torch.manual_seed(seed)
                    student = copy.deepcopy(teacher)
                    gradual_prune(student, method, sparsity, 1, schedule="oneshot", criterion="magnitude",
                                  calibration=None, layers=["trunk.0", "trunk.2"])
                    batches = (normalized_batch(teacher.spec, b.observations, b.actions)
                               for b in task.stream(config.batch_size, seed=seed))
                    distill(student, teacher, steps, config, batches)
                    act = torch_action_fn(student.eval())
                    runs.append({"seed": seed,
                                 "success": evaluate(act, task, episodes=args.episodes).success_rate,
                                 "success_async_1_tick": evaluate(act, task, episodes=args.episodes, latency_ticks=1,
                                                                  asynchronous=True).success_rate})
                    task.close()
                row = {"pruning": pruning, "steps": steps, "noise": noise, "runs": runs,
                       **{k: statistics.mean(r[k] for r in runs) for k in ("success", "success_async_1_tick")}}
                rows.append(row)
                print(f"{pruning:>16}  {steps:>4} steps  noise {noise:<4g}  success {row['success']:.1%}  "
                      f"async 1 tick {row['success_async_1_tick']:.1%}  "
                      "(" + ", ".join(f"{r['success']:.1%}/{r['success_async_1_tick']:.1%}" for r in runs) + ")", flush=True)
    if args.json:
        write_json({"host": host_info(), "episodes": args.episodes, "seeds": args.seeds, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
