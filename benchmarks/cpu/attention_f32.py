"""The runtime's attention step two ways on one machine: the native kernel (csrc/attention_f32_rows.h, on
each kernel table this CPU runs) and the NumPy path it falls back to (batched products on OpenBLAS, the runtime's
softmax), on the reference policies' head shapes and token counts, with q, k and v as column views of one
stacked projection output as the runtime hands them over: both timed through the runtime's own step
(edgevla.runtime.attention.Attention), its token limit set to take or skip the kernel. Both outputs are checked against float64 first.

    python benchmarks/cpu/attention_f32.py [--threads 1 2] [--rounds 9] [--json FILE]
    python benchmarks/cpu/attention_f32.py --bundle DIR [--threads 1] [--rounds 9]

With --bundle, a whole call of the bundle's graph on the native backend instead (its spec's example
observations, batch 1), the attention steps on the kernel (up to the table's limits) and on NumPy in
alternated rounds: what the kernel's limits are worth in a policy.

Rounds alternate the two paths; medians (microseconds a call) and their ratio (NumPy / native: above 1 the
kernel is faster) are quoted. What the runtime's NATIVE_ATTENTION_MAX_TOKENS (edgevla/runtime/attention.py)
should say for a table is read from these rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time

import numpy as np

from edgevla import native
from edgevla.runtime import attention as runtime_attention
from edgevla.runtime import ops
from edgevla.runtime.blas import set_blas_threads

HEADS = {"tiny-vla": (4, 24), "small-vla": (6, 64)}  # (H, D)
TOKENS = [6, 16, 32, 48, 64, 80, 128, 192, 256]


def stacked(t: int, h: int, d: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v as (1, T, H, D) views of one (1, T, 3 H D) array."""
    y = rng.standard_normal((1, t, 3 * h * d), dtype=np.float32)
    return tuple(y[:, :, i * h * d:(i + 1) * h * d].reshape(1, t, h, d) for i in range(3))


@contextlib.contextmanager
def native_up_to(tokens: int):
    """The runtime's Attention running the native kernel up to ``tokens`` (0: never) on every table."""
    saved = dict(runtime_attention.NATIVE_ATTENTION_MAX_TOKENS)
    runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.update({isa: (tokens, tokens) for isa in native.compiled_isas()})
    try:
        yield
    finally:
        runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.clear()
        runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.update(saved)


def check(y: np.ndarray, q, k, v, scale: float, what: str) -> None:
    q64, k64, v64 = (a.astype(np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))
    s = q64 @ k64.transpose(0, 1, 3, 2) * scale
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    want = ((p / p.sum(axis=-1, keepdims=True)) @ v64).transpose(0, 2, 1, 3)
    if np.abs(y - want).max() > 1e-4:
        raise SystemExit(f"{what}: differs from float64 by {np.abs(y - want).max():.3g}")


def time_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(isa: str, h: int, d: int, t: int, rounds: int, rng) -> dict:
    q, k, v = stacked(t, h, d, rng)
    scale = 1.0 / np.sqrt(d)
    softmax = ops.compile_op("Softmax", {"axis": -1}, (None,), 18, 1, "softmax").fn
    step = runtime_attention.Attention(np.float32(scale), False, softmax)
    out = np.empty((1, t, h, d), np.float32)
    native.set_isa(isa)

    def call():
        step(q, k, v, out=out)

    paths = {"native": t, "numpy": 0}  # the token limit that takes the path
    for what, limit in paths.items():
        out.fill(np.nan)
        with native_up_to(limit):
            call()
        check(out, q, k, v, scale, f"{what} {isa} H={h} D={d} T={t}")
    calls = max(5, int(20000 / (t * t * h * d / 1000 + 5)))
    times = {"native": [], "numpy": []}
    for _ in range(rounds):
        for what, limit in paths.items():
            with native_up_to(limit):
                times[what].append(time_call(call, calls))
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    return {"isa": isa, "heads": h, "head_dim": d, "tokens": t, "native_us": round(med["native"], 2),
            "numpy_us": round(med["numpy"], 2), "numpy_over_native": round(med["numpy"] / med["native"], 3)}


def measure_bundle(path: str, rounds: int, calls: int = 200) -> dict:
    """Milliseconds a call of the bundle on the native backend, attention on the kernel vs on NumPy."""
    from edgevla.bundle import load_bundle
    from edgevla.runtime import NativeModel

    bundle = load_bundle(path)
    model = NativeModel(bundle.file("model.onnx"))
    feeds = bundle.spec.example(batch=1, seed=0)
    limits = dict(runtime_attention.NATIVE_ATTENTION_MAX_TOKENS)
    paths = {"native": limits, "numpy": {}}
    times = {"native": [], "numpy": []}
    for _ in range(rounds):
        for what, table in paths.items():
            runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.clear()
            runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.update(table)
            for _ in range(calls // 10):
                model.run(feeds)
            times[what].append(time_call(lambda: model.run(feeds), calls) / 1e3)
    runtime_attention.NATIVE_ATTENTION_MAX_TOKENS.update(limits)
    med = {what: float(np.median(ts)) for what, ts in times.items()}
    ratios = np.array(times["numpy"]) / np.array(times["native"])
    return {"bundle": path, "isa": native.get_isa(), "threads": native.get_num_threads(),
            "max_tokens": runtime_attention.native_attention_max_tokens(), "native_ms": round(med["native"], 3),
            "numpy_ms": round(med["numpy"], 3), "numpy_over_native_per_round": round(float(np.median(ratios)), 3),
            "rounds_ms": {what: [round(x, 3) for x in ts] for what, ts in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--isa", nargs="+", help="kernel tables (default: every one this CPU runs)")
    parser.add_argument("--bundle", help="time a whole call of this bundle instead (see above)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if not native.available():
        raise SystemExit("edgevla._C is not built")
    if args.bundle:
        rows = []
        for threads in args.threads:
            native.set_num_threads(threads)
            set_blas_threads(threads)
            row = measure_bundle(args.bundle, args.rounds)
            rows.append(row)
            print(f"{threads}t {row['isa']} attention up to {row['max_tokens']} tokens on the kernel: "
                  f"{row['native_ms']:.3f} ms a call, on NumPy {row['numpy_ms']:.3f} ms; "
                  f"numpy/native per round {row['numpy_over_native_per_round']:.2f}", flush=True)
        return _write(args.json, rows)
    isas = args.isa or [i for i in native.available_isas() if i != "scalar"]
    rng = np.random.default_rng(0)
    rows = []
    start_isa = native.get_isa()
    try:
        for threads in args.threads:
            native.set_num_threads(threads)
            set_blas_threads(threads)
            for isa in isas:
                for policy, (h, d) in HEADS.items():
                    for t in TOKENS:
                        row = {"threads": threads, "policy": policy, **measure(isa, h, d, t, args.rounds, rng)}
                        rows.append(row)
                        print(f"{threads}t {isa:12s} {policy:9s} H={h} D={d:3d} T={t:4d}  native "
                              f"{row['native_us']:8.1f} us  numpy {row['numpy_us']:8.1f} us  "
                              f"numpy/native {row['numpy_over_native']:.2f}", flush=True)
    finally:
        native.set_isa(start_isa)
    return _write(args.json, rows)


def _write(path: str | None, rows: list[dict]) -> int:
    if path:
        with open(path, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                       "numpy": np.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
