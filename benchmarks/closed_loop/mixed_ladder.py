"""Mixed precision with and without the precision ladder: what the sensitive layers become, what ships, and
how the policy does in the closed loop on ONNX Runtime and on the native kernels.

For each ``--case`` (a format and an SQNR floor, or metric success) it runs ``edgevla build`` twice on the
same policy, target and episodes — ``quantize.mixed_precision.ladder=false`` (the layers under the floor kept
float, the rule before 2026-12-06) and ``true`` (raised up the ladder: finer int4 groups, int8 weights, float)
— and tabulates each build's forms, the shipped ONNX bytes, weight bytes of the quantized layers, output SQNR,
the gate's success (ONNX Runtime), and the bundle run on the native kernels: ``edgevla eval --backend native``
on the gate's episodes (the raised layers' inputs kept float, as the ONNX metadata says) and ``edgevla profile
--backend native`` (median latency at batch 1; the raised layers run float).

    PYTHONPATH=tests python benchmarks/closed_loop/mixed_ladder.py -t jetson-orin \\
        --policy mujoco_reacher:make_reacher_policy --env mujoco_reacher:make_reacher_env \\
        --case w4a16:40 --case w8a8:35 [--set KEY=VALUE ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from edgevla.bench import recipe_settings, write_json
from edgevla.cli import main as edgevla_cli
from edgevla.errors import EdgevlaError
from edgevla.metrics.report import host_info
from edgevla.pipeline import BuildRequest, build
from edgevla.progress import Progress


def case_overrides(case: str) -> dict:
    """``w4a16:40`` → format w4a16, mixed precision by SQNR at 40 dB; ``w8a8:success`` → by success."""
    fmt, _, floor = case.partition(":")
    mp = {"quantize.format": fmt, "quantize.mixed_precision.enabled": True}
    if floor == "success":
        return {**mp, "quantize.mixed_precision.metric": "success"}
    return {**mp, "quantize.mixed_precision.min_sqnr_db": float(floor)}


def cli_json(*argv: str) -> dict:
    """``edgevla ARGV --json``'s output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = edgevla_cli([*argv, "--json"])
    if code != 0:
        raise EdgevlaError(f"edgevla {' '.join(argv)} exited {code}")
    return json.loads(out.getvalue())


def native_row(bundle: Path, episodes: int, runs: int) -> dict:
    evaluated = cli_json("eval", str(bundle), "--backend", "native", "--episodes", str(episodes))
    profiled = cli_json("profile", str(bundle), "--backend", "native", "--runs", str(runs))
    return {"success": evaluated["success_rate"], "latency_ms": profiled["latency_ms"]["p50_ms"],
            "modes": {row["layer"]: row["mode"] for row in profiled.get("native_plan", [])}}


def build_row(report: dict, bundle: Path, seconds: float) -> dict:
    extra = report["extra"]
    q = extra["quantize"]
    mp = q["mixed_precision"]
    layers = json.loads((bundle / "manifest.json").read_text())["layers"]
    return {
        "raised": mp["raised"], "kept_float": mp["kept_float"],
        "rungs_tried_sqnr_db": mp.get("rungs_tried_sqnr_db"), "climbed": mp.get("climbed"),
        "model_target_db": mp.get("model_target_db"), "probes": mp.get("probes"),
        "raised_probes": mp.get("raised_probes"),
        "onnx_bytes": q["onnx_bytes"]["built"], "size_ratio": q["size_ratio"],
        "model_sqnr_db": q.get("model_sqnr_db"),
        "precision_of_layers": {row["name"]: row.get("format", row["precision"]) for row in layers},
        "gate": {k: v["success_rate"] for k, v in extra["evaluate"].items()},
        "build_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--target", required=True)
    ap.add_argument("--policy")
    ap.add_argument("--env")
    ap.add_argument("--case", dest="cases", action="append", required=True, metavar="FORMAT:FLOOR_DB|success")
    ap.add_argument("--runs", type=int, default=300, help="edgevla profile --runs")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = recipe_settings(args.settings, args.env)
    out = {"host": host_info(), "target": args.target, "policy": args.policy or "tiny-vla", "settings": settings,
           "cases": {}}
    for case in args.cases:
        out["cases"][case] = {}
        for ladder in (False, True):
            overrides = {**settings, **case_overrides(case), "quantize.mixed_precision.ladder": ladder}
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                try:
                    result = build(BuildRequest(target=args.target, policy=args.policy, output=str(Path(tmp) / "b"),
                                                overrides=overrides), progress=Progress())
                    row = build_row(result.report, result.bundle, time.perf_counter() - start)
                    episodes = result.report["extra"]["evaluate"]["built/onnxruntime"]["episodes"]
                    row["native"] = native_row(result.bundle, episodes, args.runs)
                except EdgevlaError as e:  # a gate refusal: say so, keep going
                    row = {"error": str(e), "build_s": round(time.perf_counter() - start, 1)}
            out["cases"][case]["ladder" if ladder else "float"] = row
            said = row.get("error") or (f"raised {row['raised']} float {row['kept_float']}; "
                                        f"{row['onnx_bytes']:,} B ({row['size_ratio']:.1%}); "
                                        f"SQNR {row['model_sqnr_db']} dB; gate {row['gate']}; native "
                                        f"{row['native']['success']:.1%}, {row['native']['latency_ms']:.3f} ms")
            print(f"{case:>12} {'ladder' if ladder else 'float':>6}: {said} ({row['build_s']} s)", flush=True)
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
