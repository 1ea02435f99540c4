"""int4 weights rounded to nearest against GPTQ, each with and without AWQ's scales: w4a16 output SQNR against
float, per policy and group size.

Each policy (fused ``nn.MultiheadAttention`` rewritten as explicit Linears first, as ``edgevla build`` does) is
quantized to w4a16 four times per group size, ``int4_rounding`` ``nearest`` and ``gptq`` by ``int4_scaling``
``none`` and ``awq`` (a row ``g128/gptq+awq``), calibrated on
``--calibration`` observations inside its spec and measured on ``--test`` others; the seconds are those of the
whole ``quantize_policy`` call.

    python benchmarks/cpu/int4_rounding.py tiny-vla act_policy:make hf_llama_policy:make [--groups 128,32]
                                           [--calibration 256] [--test 256] [--json FILE]

A policy is a zoo name or ``module:factory`` (``benchmarks/cpu/policies`` is on the path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "policies"))

from smoothquant_sqnr import prepared  # noqa: E402  (one way to load and feed a policy)

from edgevla.quant.apply import quantize_policy  # noqa: E402
from edgevla.quant.primitives import sqnr_db  # noqa: E402


def measure(ref: str, groups: list[int], calibration: int, test: int) -> dict[str, dict[str, float]]:
    policy, calib, held_out, reference = prepared(ref, calibration, test)
    rows = {}
    for group in groups:
        for scaling in ("none", "awq"):
            for rounding in ("nearest", "gptq"):
                start = time.perf_counter()
                model = quantize_policy(policy, "w4a16", batches=calib, group_size=group, int4_rounding=rounding,
                                        int4_scaling=scaling).model
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    sqnr = sqnr_db(reference, torch.cat([model(*b) for b in held_out]))
                key = f"g{group}/{rounding}" + ("+awq" if scaling == "awq" else "")
                rows[key] = {"sqnr_db": round(sqnr, 2), "seconds": round(seconds, 2)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--groups", default="128,32")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    results = {}
    for ref in args.policies:
        rows = results[ref] = measure(ref, groups, args.calibration, args.test)
        cells = "  ".join(f"{k} {v['sqnr_db']:6.2f} dB {v['seconds']:5.1f} s" for k, v in rows.items())
        print(f"{ref:28s} {cells}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"calibration": args.calibration, "test": args.test,
                                               "w4a16": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
