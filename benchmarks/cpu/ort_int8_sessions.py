"""ONNX Runtime's integer kernels on a w8a8 Q/DQ model, with its int8 activations turned uint8 (its x86 default)
and kept int8 (``session.qdqisint8allowed``), and with its QDQ fusions off (``session.disable_quant_qdq``: float
MatMuls on weights dequantized once at load, the Q/DQ arithmetic literally): each session's actions against the
Q/DQ model run literally (the reference session, which is the last one but for its thread count), and its
batch-1 latency, on this host.

    python benchmarks/cpu/ort_int8_sessions.py tiny-vla act_policy:make [--runs 300] [--json FILE]

A policy is a zoo name or ``module:factory`` (``benchmarks/cpu/policies`` is on the path); it is quantized to
w8a8 on 256 observations inside its spec (fp16 storage) and measured on 64 others.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "policies"))

from smoothquant_sqnr import prepared  # noqa: E402  (one way to load and feed a policy)

from edgevla import native  # noqa: E402
from edgevla.export.qdq import ORT_DISABLED_OPTIMIZERS, export_quantized, reference_session  # noqa: E402
from edgevla.metrics.report import host_info  # noqa: E402
from edgevla.quant.apply import quantize_policy  # noqa: E402

SESSIONS = {"uint8 activations (default)": {}, "int8 activations kept": {"session.qdqisint8allowed": "1"},
            "integer fusions off": {"session.disable_quant_qdq": "1"}}


def session(path: Path, entries: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))


def p50_ms(run, feeds: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(20):
        run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure(ref: str, runs: int) -> dict[str, dict[str, float]]:
    policy, calib, held_out, _ = prepared(ref, 256, 64)
    model = quantize_policy(policy, "w8a8", batches=calib, float_dtype="fp16").model
    with tempfile.TemporaryDirectory() as tmp:
        path = export_quantized(model, Path(tmp) / "w8a8.onnx", float_dtype="fp16")
        literal_session = reference_session(path)
        names = policy.spec.input_names
        feeds = [{n: t.numpy() for n, t in zip(names, batch, strict=True)} for batch in held_out]
        literal = np.concatenate([literal_session.run(None, f)[0] for f in feeds])
        one = {n: a[:1] for n, a in feeds[0].items()}
        rows = {}
        for name, entries in SESSIONS.items():
            s = session(path, entries)
            out = np.concatenate([s.run(None, f)[0] for f in feeds])
            error = np.abs(out - literal)
            rows[name] = {"max_abs_error": float(error.max()), "mean_abs_error": float(error.mean()),
                          "p50_ms_batch1": round(p50_ms(lambda f, s=s: s.run(None, f), one, runs), 4)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    features = {k: v for k, v in native.cpu_features().items() if v}
    results = {}
    for ref in args.policies:
        rows = results[ref] = measure(ref, args.runs)
        for name, row in rows.items():
            print(f"{ref:20s} {name:28s} max |err| {row['max_abs_error']:.3e}  mean {row['mean_abs_error']:.3e}  "
                  f"p50 {row['p50_ms_batch1']:.3f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"host": host_info(), "cpu_features": sorted(features),
                                               "runs": args.runs, "w8a8": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
