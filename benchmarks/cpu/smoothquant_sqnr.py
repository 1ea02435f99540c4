"""What each kind of SmoothQuant group buys: w8a8 output SQNR against float, per policy.

Three quantizations of each policy (its fused ``nn.MultiheadAttention`` rewritten as explicit Linears first, as
``edgevla build`` does): no SmoothQuant; SmoothQuant into the norms and the gated MLPs' value rows but not the
attention output projections; and everything (``o_proj`` through ``v``'s rows too). Calibration and test
observations are drawn inside the policy's spec (``--calibration`` and ``--test`` of them, disjoint seeds).

    python benchmarks/cpu/smoothquant_sqnr.py tiny-vla hf_llama_policy:make act_policy:make [--alpha 0.5]
                                              [--calibration 256] [--test 256] [--json FILE]

A policy is a zoo name or ``module:factory`` (``benchmarks/cpu/policies`` is on the path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from unittest import mock

import torch

from edgevla.models.explicit_attention import explicit_attention
from edgevla.models.zoo import load_policy
from edgevla.quant import smoothquant
from edgevla.quant.apply import quantize_policy
from edgevla.quant.primitives import sqnr_db

sys.path.insert(0, str(Path(__file__).resolve().parent / "policies"))


def _policy(ref: str) -> torch.nn.Module:
    if ":" not in ref:
        return load_policy(ref).policy.eval()
    module, _, factory = ref.partition(":")
    return getattr(importlib.import_module(module), factory)().eval()


def _batches(policy, count: int, seed: int, size: int = 32) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.from_numpy(a) for a in policy.spec.example(batch=min(size, count - i), seed=seed + i).values())
            for i in range(0, count, size)]


def prepared(ref: str, calibration: int, test: int):
    """``(policy, calibration batches, test batches, the float policy's test outputs)``, the policy's fused
    attention rewritten as explicit Linears as ``edgevla build`` does."""
    policy = _policy(ref)
    policy = explicit_attention(policy, _batches(policy, 2, 0)[0]).model
    calib, held_out = _batches(policy, calibration, 0), _batches(policy, test, 10_000)
    with torch.no_grad():
        return policy, calib, held_out, torch.cat([policy(*b) for b in held_out])


def measure(ref: str, alpha: float, calibration: int, test: int) -> dict[str, float]:
    policy, calib, held_out, reference = prepared(ref, calibration, test)
    row = {}
    for label, alpha_, attention in (("none", None, True), ("without_o_proj", alpha, False), ("all", alpha, True)):
        with mock.patch.object(smoothquant, "_attention_values",
                               smoothquant._attention_values if attention else (lambda *_: {})):
            model = quantize_policy(policy, "w8a8", batches=calib, smoothquant_alpha=alpha_).model
        with torch.no_grad():
            row[label] = round(sqnr_db(reference, torch.cat([model(*b) for b in held_out])), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    print(f"{'policy':32s} {'none':>8s} {'w/o o_proj':>11s} {'all':>8s}   (w8a8 output SQNR, dB)")
    for ref in args.policies:
        row = results[ref] = measure(ref, args.alpha, args.calibration, args.test)
        print(f"{ref:32s} {row['none']:8.2f} {row['without_o_proj']:11.2f} {row['all']:8.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"alpha": args.alpha, "calibration": args.calibration,
                                               "test": args.test, "sqnr_db": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
