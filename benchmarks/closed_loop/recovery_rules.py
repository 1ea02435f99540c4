"""When pruning recovery stops: the first evaluation within budget, a hit confirmed on other episodes, a
confirmed hit of the model as it ships (quantized), one decided on three times the episodes, and what recovery
trains: the float student or the quantized one.

Runs ``edgevla search`` once per rule over the same candidates, and tabulates for every candidate the recovery
(steps, success on its episodes and on the confirmation episodes, hits not confirmed, the model judged) and the
gate's verdict on the evaluator's episodes:

* ``first-hit``: the rule before 2026-12-06: stop at the first evaluation (every 50 steps, 100 episodes) of the
  pruned float model within half the budget, at most 300 steps
  (``prune.recovery.confirm=false max_steps=300 patience=0 judge=float``);
* ``confirmed``: the rule of 2026-12-06: a hit counts when 100 other episodes agree, up to 2,000 steps, giving
  up after 8 evaluations without progress (since ``prune.recovery.train``: neither the held-out action error
  5 % down nor success 5 points up; before, the error alone); still the float model judged
  (``prune.recovery.judge=float confirm_episodes=100``);
* ``shipped``: as ``confirmed``, but a candidate that also quantizes is judged quantized, as it will ship (for
  one that does not, the same as ``confirmed``); the float student trained;
* ``float-trained``: the defaults before ``prune.recovery.train``: judged as it ships, a hit screened on 100
  episodes and decided on 300, the float student trained (``prune.recovery.train=float``);
* ``defaults``: today's: as ``float-trained``, but a candidate that also quantizes is quantized once after
  pruning and recovery trains that model through its quantizer.

    PYTHONPATH=tests python benchmarks/closed_loop/recovery_rules.py -t jetson-orin \\
        --policy mujoco_reacher:make_reacher_policy --env mujoco_reacher:make_reacher_env \\
        --try 2:4 --try structured:0.5 --set evaluate.latency_ticks=1 --set evaluate.schedule=async [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgevla.bench import recipe_settings, write_json
from edgevla.metrics.report import host_info
from edgevla.progress import Progress
from edgevla.search import search

RULES = {
    "first-hit": {"prune.recovery.confirm": False, "prune.recovery.max_steps": 300, "prune.recovery.patience": 0,
                  "prune.recovery.judge": "float"},
    "confirmed": {"prune.recovery.judge": "float", "prune.recovery.confirm_episodes": 100},
    "shipped": {"prune.recovery.confirm_episodes": 100, "prune.recovery.train": "float"},
    "float-trained": {"prune.recovery.train": "float"},
    "defaults": {},
}


def candidate_row(record: dict) -> dict:
    """What one candidate's build said about its recovery and its gate (its report; a refused one, its error)."""
    row = {"candidate": record["candidate"], "built": record["error"] is None, "error": record["error"],
           "build_s": round(record["seconds"], 1)}
    if record["bundle"] is None:  # refused: the error says why
        return row
    extra = json.loads((Path(record["bundle"]) / "report.json").read_text())["extra"]
    recovery = (extra.get("prune") or {}).get("recovery")
    if isinstance(recovery, dict):
        row["recovery"] = {k: recovery[k] for k in ("steps", "teacher_success", "teacher_confirm_success",
                                                    "confirmations", "stalled", "judged", "trained")}
        row["recovery"]["before"] = recovery["before"]["success"]
        row["recovery"]["after"] = recovery["after"]["success"]
    row["gate"] = {k: v["success_rate"] for k, v in extra["evaluate"].items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--target", required=True)
    ap.add_argument("--policy")
    ap.add_argument("--env")
    ap.add_argument("--try", dest="candidates", action="append", required=True)
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = recipe_settings(args.settings, args.env)
    out = {"host": host_info(), "target": args.target, "policy": args.policy or "tiny-vla", "settings": settings,
           "rules": {}}
    for rule in args.rules:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = search(args.target, args.candidates, tmp, policy=args.policy,
                            overrides={**settings, **RULES[rule]}, progress=Progress())
            rows = [candidate_row(r) for r in result["candidates"]]
            out["rules"][rule] = {"overrides": RULES[rule], "seconds": round(time.perf_counter() - start, 1),
                                  "pick": None if result["pick"] is None else Path(result["pick"]).name,
                                  "candidates": rows}
        for row in rows:
            rec, gate = row.get("recovery"), row.get("gate", {})
            said = "" if rec is None else (
                f"recovery {rec['before']:.0%} -> {rec['after']:.0%} in {rec['steps']} steps, "
                f"{len(rec['confirmations'])} confirmation(s); ")
            verdict = "built" if row["built"] else f"refused: {row['error']}"
            print(f"{rule:>13} {row['candidate']:<22} {said}gate {gate}; {verdict}")
        print(f"{rule:>13} pick {out['rules'][rule]['pick']} ({out['rules'][rule]['seconds']} s)")
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
