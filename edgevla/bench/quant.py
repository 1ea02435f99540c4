"""``edgevla bench quant``: every quantization format on one policy, beside the peers a user would pick.

For the fp32 policy and each format (w8a8, w8a16, w4a16, fp16, fp8) it
measures, in one run on the same calibration and held-out data:

* closed-loop success of the fake-quant PyTorch model and of the exported
  ONNX model in ONNX Runtime (its default session: integer kernels where it
  has them), on the same seeded episodes;
* ONNX file size and its ratio to the fp32 file (debug metadata stripped
  from every file alike);
* ONNX Runtime CPU latency at batch 1 (median of ``--runs``) and its ratio
  to fp32's — in its default session (what ``edgevla eval`` and ``profile``
  run) and with its QDQ fusions off ("DQ folded": weights dequantized once
  at load instead of on every call);
* action error against the float policy (mean |Δ| of real actions on
  held-out observations), the output SQNR, each layer's solo SQNR, and the
  parity of ONNX (Q/DQ run literally) with the fake-quant model.

Peers: ONNX Runtime's ``quantize_static`` (QDQ, per-channel weights, its
default uint8 activations and MinMax calibration, fed the same calibration
batches) and PyTorch's dynamic int8 quantization of every ``nn.Linear``
(PyTorch only: it does not export to ONNX). The issue's goals are checked
against the figures and reported as met or not — never asserted.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevlaError
from . import write_json

FORMATS = ("w8a8", "w8a16", "w4a16", "fp16", "fp8")
EVAL_SEED = 10_000  # the build's gate episodes
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 8, 32
HELDOUT = 256


def run(args: argparse.Namespace) -> int:
    formats = _formats(args.formats)
    for name in ("episodes", "runs", "threads"):
        if getattr(args, name) < 1:
            raise EdgevlaError(f"--{name} must be >= 1")
    result = bench_quant(args.policy, formats=formats, episodes=args.episodes, runs=args.runs,
                         threads=args.threads, calibration=args.calibration, float_dtype=args.float_dtype,
                         int4_rounding=args.int4_rounding, int4_scaling=args.int4_scaling,
                         allow_pickle=args.allow_pickle, env=args.env)
    print_table(result)
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


def _formats(text: str | None) -> tuple[str, ...]:
    if not text:
        return FORMATS
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise EdgevlaError(f"--formats: expected a comma-separated subset of {','.join(FORMATS)}, got {text!r}")
    return chosen


def bench_quant(policy_ref: str = "tiny-vla", *, formats=FORMATS, episodes: int = 200, runs: int = 200,
                threads: int = 1, calibration: str = "minmax", float_dtype: str = "fp16", int4_rounding: str = "gptq",
                int4_scaling: str = "awq", allow_pickle: bool = False, work_dir: str | Path | None = None,
                env: str | None = None) -> dict[str, Any]:
    """Run the benchmark; a JSON-ready dict with one row per model (fp32, formats, peers) and the goals."""
    import torch

    from ..models.zoo import load_policy
    from ..pipeline import calibration_batches, calibration_source, heldout_observations, task_for, with_demonstrator
    from ..recipe import load_recipe

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    task = None
    try:
        loaded = load_policy(policy_ref, allow_pickle=allow_pickle)
        policy = loaded.policy.eval()
        spec = policy.spec
        ev = load_recipe(None, overrides={} if env is None else {"evaluate.env": env}).evaluate
        task = with_demonstrator(task_for(spec, ev), policy)
        batches = [tuple(a) for a, _ in calibration_batches(policy, spec, task, "magnitude", n=CALIBRATION_BATCHES,
                                                            size=CALIBRATION_BATCH_SIZE)]
        heldout = heldout_observations(spec, HELDOUT, task=task)
        with tempfile.TemporaryDirectory(prefix="edgevla-bench-quant-", dir=work_dir) as tmp:
            bench = _Bench(policy, spec, task, batches, heldout, Path(tmp), episodes=episodes, runs=runs,
                           threads=threads)
            rows = [bench.fp32()]
            for fmt in formats:
                rows.append(bench.ours(fmt, calibration, float_dtype, int4_rounding, int4_scaling))
            rows.append(bench.ort_quantize_static())
            rows.append(bench.torch_dynamic())
    finally:
        torch.set_num_threads(threads_before)
        if task is not None:  # a simulator's environments
            task.close()
    from ..metrics.report import host_info

    return {
        "policy": loaded.name, "host": host_info(), "threads": threads, "episodes": episodes if task else None,
        "eval_seed": EVAL_SEED, "latency_runs": runs, "batch": 1,
        "int4_rounding": int4_rounding, "int4_scaling": int4_scaling,
        "calibration": {"method": calibration, "batches": len(batches), "samples": sum(len(b[0]) for b in batches),
                        "source": calibration_source(task)},
        "task": None if task is None else task.name,
        "float_dtype": float_dtype, "heldout_samples": HELDOUT,
        "size_note": "debug metadata (stack traces, shape annotations) is stripped from every file, fp32 included",
        "rows": rows, "goals": goals(rows),
    }


class _Bench:
    def __init__(self, policy, spec, task, batches, heldout, work: Path, *, episodes: int, runs: int, threads: int):
        import torch

        self.policy, self.spec, self.task = policy, spec, task
        self.batches, self.heldout, self.work = batches, heldout, work
        self.episodes, self.runs, self.threads = episodes, runs, threads
        self.obs1 = {k: np.ascontiguousarray(v[:1]) for k, v in heldout.items()}
        args = [torch.from_numpy(heldout[n]) for n in spec.input_names]
        with torch.no_grad():
            self.float_out = policy(*args).float()
        self.float_actions = spec.denormalize(self.float_out.numpy())
        self.base: dict[str, Any] = {}
        from ..models.explicit_attention import explicit_attention

        # What a build quantizes: PyTorch's fused attention as Linear layers (the peers get the original).
        self.quantizable = explicit_attention(policy, [a[:8] for a in args]).model

    # --------------------------------------------------------------- measurements
    def _success(self, act) -> float | None:
        if self.task is None:
            return None
        from ..task import evaluate

        return evaluate(act, self.task, episodes=self.episodes, seed=EVAL_SEED).success_rate

    def _onnx_figures(self, path: Path) -> dict[str, Any]:
        from ..backends import OnnxRuntimeRunner
        from ..metrics.latency import measure_latency
        from ..metrics.params import file_size

        runner = OnnxRuntimeRunner(path, self.spec, threads=self.threads)
        try:
            latency = measure_latency(lambda: runner(self.obs1), warmup=20, runs=self.runs)
            out = runner(self.heldout)
            success = self._success(lambda o: self.spec.denormalize(runner(o)))
        finally:
            runner.close()
        folded = self._folded_session(path)
        inputs = self.spec.cast(self.obs1)
        folded_latency = measure_latency(lambda: folded.run(None, inputs), warmup=20, runs=self.runs)
        size = file_size(path)
        row = {"onnx_bytes": size, "ort_p50_ms": round(latency.p50_ms, 4),
               "ort_folded_p50_ms": round(folded_latency.p50_ms, 4), "success_ort": success,
               "action_error": float(np.mean(np.abs(self.spec.denormalize(out) - self.float_actions))),
               "sqnr_ort_db": _sqnr(self.float_out.numpy(), out)}
        if self.base:
            row["size_ratio"] = round(size / self.base["onnx_bytes"], 4)
            row["latency_ratio"] = round(latency.p50_ms / self.base["ort_p50_ms"], 3)
            row["folded_latency_ratio"] = round(folded_latency.p50_ms / self.base["ort_p50_ms"], 3)
        return row

    def _folded_session(self, path: Path):
        """ONNX Runtime with its QDQ fusions off: a weight's DequantizeLinear is then constant-folded
        once at load (float weights in memory), where the default session keeps it to look for
        integer kernels and, finding none for TensorRT-style Q/DQ, dequantizes on every call."""
        import onnxruntime as ort

        from ..export.qdq import ORT_DISABLED_OPTIMIZERS

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))

    def _torch_success(self, model) -> float | None:
        from ..train import torch_action_fn

        return self._success(torch_action_fn(model))

    # --------------------------------------------------------------- models
    def fp32(self) -> dict[str, Any]:
        import onnx

        from ..export import export_onnx
        from ..export.qdq import strip_debug_metadata

        path = export_onnx(self.policy, self.work / "fp32.onnx")
        onnx.save(strip_debug_metadata(onnx.load(str(path))), str(path))
        row = {"model": "fp32", "kind": "float", "success_torch": self._torch_success(self.policy)}
        row.update(self._onnx_figures(path))
        self.base = row
        row["size_ratio"], row["latency_ratio"] = 1.0, 1.0
        row["folded_latency_ratio"] = round(row["ort_folded_p50_ms"] / row["ort_p50_ms"], 3)
        return row

    def ours(self, fmt: str, calibration: str, float_dtype: str, int4_rounding: str = "gptq",
             int4_scaling: str = "awq") -> dict[str, Any]:
        import torch

        from ..export.qdq import export_quantized, verify_quantized
        from ..quant import layer_sqnr, quantize_policy, sqnr_db

        start = time.perf_counter()
        storage = "fp16" if fmt == "fp16" else float_dtype
        r = quantize_policy(self.quantizable, fmt, batches=self.batches, method=calibration, float_dtype=storage,
                            int4_rounding=int4_rounding, int4_scaling=int4_scaling)
        path = export_quantized(r.model, self.work / f"{fmt}.onnx", float_dtype=storage)
        args = [torch.from_numpy(self.heldout[n]) for n in self.spec.input_names]
        with torch.no_grad():
            out = r.model(*args).float()
        parity = verify_quantized(r.model, path, self.heldout, atol=1e30, min_cosine=-1.0)
        row = {"model": fmt, "kind": "edgevla", "float_dtype": storage,
               "success_torch": self._torch_success(r.model), **self._onnx_figures(path),
               "sqnr_torch_db": round(sqnr_db(self.float_out, out), 3),
               "parity_max_abs_error": parity.max_abs_error,
               "layers": {n: f for n, f in r.formats.items()},
               "layer_sqnr_db": ({k: round(v, 2) for k, v in layer_sqnr(r.model, self.batches[:1]).items()}
                                 if fmt != "fp16" else {}),
               "seconds": round(time.perf_counter() - start, 2)}
        return row

    def ort_quantize_static(self) -> dict[str, Any]:
        """ONNX Runtime's own static quantization of the fp32 file, with the same calibration batches."""
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        names = self.spec.input_names
        batches = self.batches

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in batches])

            def get_next(self):
                return next(self.items, None)

        path = self.work / "ort_static.onnx"
        settings = {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8 (ORT default)",
                    "weight_type": "QInt8", "calibrate_method": "MinMax"}
        start = time.perf_counter()
        root = logging.getLogger()
        level = root.level
        try:
            root.setLevel(logging.ERROR)  # it logs a warning per LayerNorm weight and a pre-processing hint
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(self.work / "fp32.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # the peer's failure is a finding, not a crash of the benchmark
            return {"model": "ort quantize_static", "kind": "peer", "error": f"{type(e).__name__}: {e}"[:300]}
        finally:
            root.setLevel(level)
        row = {"model": "ort quantize_static", "kind": "peer", "settings": settings, "success_torch": None,
               **self._onnx_figures(path), "seconds": round(time.perf_counter() - start, 2)}
        return row

    def torch_dynamic(self) -> dict[str, Any]:
        """PyTorch's dynamic int8 quantization of every nn.Linear (runs in PyTorch only)."""
        import torch

        from ..train import torch_action_fn

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                model = quantize_dynamic(self.policy, {torch.nn.Linear}, dtype=torch.qint8)
                args = [torch.from_numpy(self.heldout[n]) for n in self.spec.input_names]
                with torch.no_grad():
                    out = model(*args).float().numpy()
                success = self._success(torch_action_fn(model))
        except Exception as e:  # deprecated in recent PyTorch: report, do not crash
            return {"model": "torch dynamic int8", "kind": "peer", "error": f"{type(e).__name__}: {e}"[:300]}
        return {"model": "torch dynamic int8", "kind": "peer", "success_torch": success, "success_ort": None,
                "action_error": float(np.mean(np.abs(self.spec.denormalize(out) - self.float_actions))),
                "sqnr_torch_db": _sqnr(self.float_out.numpy(), out),
                "note": "PyTorch eager only (no ONNX export): size and ONNX Runtime latency not comparable"}


def _sqnr(reference: np.ndarray, other: np.ndarray) -> float:
    import torch

    from ..quant import sqnr_db

    return round(sqnr_db(torch.from_numpy(np.asarray(reference)), torch.from_numpy(np.asarray(other))), 3)


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured figure and whether it is met (None: not measured)."""
    by = {r["model"]: r for r in rows}
    base = by.get("fp32", {})
    out = []

    def add(goal: str, value: Any, met: bool | None) -> None:
        out.append({"goal": goal, "value": value, "met": met})

    def drop(fmt: str) -> float | None:
        r = by.get(fmt)
        if not r or r.get("success_ort") is None or base.get("success_ort") is None:
            return None
        return round(base["success_ort"] - r["success_ort"], 4)

    for fmt, points in (("w8a8", 0.01), ("w4a16", 0.02)):
        if fmt in by:
            d = drop(fmt)
            add(f"{fmt} success within {points:.0%} of fp32 (ONNX Runtime)", d, None if d is None else d <= points)
    for fmt, ratio in (("w8a8", 0.30), ("w4a16", 0.17)):
        if fmt in by:
            add(f"{fmt} ONNX size <= {ratio:.0%} of fp32", by[fmt]["size_ratio"], by[fmt]["size_ratio"] <= ratio)
    if "w8a8" in by:
        add("w8a8 ONNX Runtime latency <= 0.5x fp32 at batch 1 (the issue sets it for small-vla)",
            {"default_session": by["w8a8"]["latency_ratio"], "dq_folded": by["w8a8"].get("folded_latency_ratio")},
            by["w8a8"]["latency_ratio"] <= 0.5)
        peer = by.get("ort quantize_static", {})
        ours, theirs = by["w8a8"].get("success_ort"), peer.get("success_ort")
        add("w8a8 success >= ONNX Runtime quantize_static's", {"edgevla": ours, "quantize_static": theirs},
            None if ours is None or theirs is None else ours >= theirs)
    return out


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def num(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    table = Table(title=f"bench quant · {result['policy']} · ONNX Runtime CPU, {result['threads']} thread(s), batch 1 · "
                        f"{result['episodes']} episodes · {result['host'].get('cpu', '?')}")
    for col in ("model", "success torch", "success ORT", "ONNX KiB", "× fp32 size", "ORT p50 ms", "× fp32 latency",
                "DQ folded ×", "action err", "SQNR dB", "parity"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result["rows"]:
        if "error" in r:
            table.add_row(r["model"], *(["-"] * 10))
            continue
        table.add_row(r["model"], pct(r.get("success_torch")), pct(r.get("success_ort")),
                      num(r.get("onnx_bytes") and r["onnx_bytes"] / 1024, "{:,.0f}"), num(r.get("size_ratio")),
                      num(r.get("ort_p50_ms")), num(r.get("latency_ratio"), "{:.2f}"),
                      num(r.get("folded_latency_ratio"), "{:.2f}"),
                      num(r.get("action_error"), "{:.2e}"),
                      num(r.get("sqnr_torch_db", r.get("sqnr_ort_db")), "{:.1f}"),
                      num(r.get("parity_max_abs_error"), "{:.1e}"))
    console = Console(highlight=False, width=200)
    console.print(table)
    for r in result["rows"]:
        if "error" in r:
            console.print(f"{r['model']}: failed: {r['error']}")
    for g in result["goals"]:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        console.print(f"goal: {g['goal']}: {g['value']} — {verdict}")
