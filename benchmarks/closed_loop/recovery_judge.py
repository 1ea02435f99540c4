"""Where pruning recovery stops, and what ships: one recovery setting against another, over recovery seeds.

For each recovery seed (the episodes recovery evaluates on, and the next ones that confirm a hit) and each
value of the setting varied (``--vary``: by default ``prune.recovery.judge``, the pruned float model or the
model as it ships, quantized; or ``prune.recovery.train``, the float student or the quantized one), builds the
candidate with recovery's own margin (``--margin``, 1 pt: half the usual 2 pt budget) and a gate that refuses
nothing, on ``--episodes`` gate episodes (1,000 by default: a close estimate of the shipped model's real
success), and tabulates where recovery stopped, what the shipped model scored, and whether it is within the
``--budget`` there.

    python benchmarks/closed_loop/recovery_judge.py -t jetson-orin --prune unstructured:0.9 --quantize w4a16 \\
        --seeds 20000 21000 22000 23000 24000 [--vary prune.recovery.confirm_episodes=100,300] [--json FILE]
    (--vary prune.recovery.train=float,shipped: what recovery trains)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from edgevla.bench import recipe_settings, write_json
from edgevla.metrics.report import host_info
from edgevla.original_memo import OriginalMemo
from edgevla.pipeline import BuildRequest, build
from edgevla.progress import Progress
from edgevla.recipe import prune_shorthand, quantize_shorthand
from edgevla.task.evaluate import meets


def run(target: str, policy: str | None, settings: dict, seed: int, key: str, value, memo: OriginalMemo,
        out: Path) -> dict:
    overrides = {**settings, "prune.recovery.seed": seed, key: value}
    start = time.perf_counter()
    report = build(BuildRequest(target=target, policy=policy, output=str(out), overrides=overrides, memo=memo),
                   Progress()).report
    extra = report["extra"]
    recovery = extra["prune"]["recovery"]
    gate = {k: v["success_rate"] for k, v in extra["evaluate"].items()}
    original, built = gate["original/torch"], next(v for k, v in gate.items() if k.startswith("built/"))
    return {"seed": seed, key.rsplit(".", 1)[-1]: value, "judged": recovery["judged"], "steps": recovery["steps"],
            "recovered": recovery["recovered"], "recovery_success": recovery["after"]["success"],
            "recovery_teacher": recovery["teacher_success"],
            "confirmations": [c["success"] for c in recovery["confirmations"]],
            "teacher_confirm": recovery["teacher_confirm_success"], "trained": recovery["trained"],
            "train_seconds": recovery["train_seconds"], "samples_per_s": round(recovery["samples_per_s"], 1),
            "original": original, "built": built,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--target", required=True)
    ap.add_argument("--policy")
    ap.add_argument("--prune", required=True)
    ap.add_argument("--quantize", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--budget", type=float, default=0.02)
    ap.add_argument("--vary", default="prune.recovery.judge=float,shipped", metavar="KEY=V1,V2,...")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = {**prune_shorthand(args.prune), **quantize_shorthand(args.quantize),
                "prune.recovery.max_loss": args.margin, "evaluate.max_accuracy_loss": 1.0,
                "evaluate.episodes": args.episodes,
                **recipe_settings(args.settings)}
    key, values = args.vary.split("=", 1)
    values = [yaml.safe_load(v) for v in values.split(",")]
    name = key.rsplit(".", 1)[-1]
    out = {"host": host_info(), "target": args.target, "policy": args.policy or "tiny-vla", "prune": args.prune,
           "quantize": args.quantize, "budget": args.budget, "settings": settings, "runs": []}
    with OriginalMemo() as memo, tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for value in values:
                row = run(args.target, args.policy, settings, seed, key, value, memo, Path(tmp) / f"{seed}-{value}")
                row["within_budget"] = meets(row["built"], row["original"] - args.budget)
                out["runs"].append(row)
                print(f"seed {seed} {name} {value!s:>7}: recovery {row['steps']:>4} steps, "
                      f"{row['recovery_success']:.0%} (teacher {row['recovery_teacher']:.0%}), confirmations {row['confirmations']}; shipped "
                      f"{row['built']:.1%} vs {row['original']:.1%} on {args.episodes} episodes "
                      f"({'within' if row['within_budget'] else 'OVER'} {args.budget:.0%}); {row['seconds']} s")
    out["varied"] = {"key": key, "values": values}
    for value in values:
        rows = [r for r in out["runs"] if r[name] == value]
        print(f"{name} {value!s:>7}: within budget {sum(r['within_budget'] for r in rows)}/{len(rows)}, mean "
              f"shipped {sum(r['built'] for r in rows) / len(rows):.2%}, mean steps "
              f"{sum(r['steps'] for r in rows) / len(rows):.0f}")
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
