"""The proof of a build: original and built policy measured side by side.

:func:`build_report` turns two :class:`ModelMetrics` plus the target and host
descriptions into one JSON-ready dict; :func:`write_report` writes it as
``report.json``, ``report.md`` and PNG plots. The plots and tables are drawn
from the dict alone, so a report can be re-rendered from ``report.json``.

Report schema, ``schema_version`` "1" (units in brackets; ``null`` where a
figure was not measured)::

    schema_version     "1"
    created_utc        ISO 8601 time the report was built
    target             the target profile as given: name, control_rate_hz [Hz],
                       latency_budget_ms [ms], memory_budget_mb [MiB],
                       max_accuracy_loss [fraction], bandwidth [bytes/s],
                       peaks [FLOP/s per precision]
    host               where it was measured: cpu, cores, os, python, torch,
                       onnxruntime, numpy (see host_info)
    efficiency_weights {alpha, beta, gamma} of E(M)
    models             {"original": ModelMetrics, "built": ModelMetrics}, each:
      label              name shown in tables
      params             {total, nonzero} [parameter elements]
      size_bytes         artifact size on disk [bytes]
      flops              {total, per_layer: [{name, type, flops, params,
                         weight_bytes}]} [FLOPs of one batch-1 inference;
                         bytes] (see edgevla.metrics.flops)
      memory             {baseline_mb, after_load_mb, peak_mb, inference_mb,
                         load_peak_mb, hwm_reset, runs, model_mb} [MiB]
                         (see edgevla.metrics.memory_probe)
      reference_backend  backend whose batch-1 latency stands for the model
      latency            {backend: {mean_ms, std_ms, p50_ms, p90_ms, p99_ms,
                         max_ms, min_ms, runs, samples_ms}} [ms, batch 1]
      throughput         {backend: {"<batch>": samples_per_s}} [samples/s]
      deadline           {backend: {period_ms, budget_ms, misses, miss_rate,
                         worst_slack_ms}} [ms; miss_rate fraction]; derived
                         from the latency samples and the target's control
                         rate and budget for every backend not given one
      success_rate       fraction of episodes solved [0..1]
      mean_steps         mean control steps per episode [steps]
      smoothness         action smoothness as the evaluator defines it
      action_error       mean |action - original's action| on held-out
                         observations [normalized action units]; 0 for the
                         original
    comparison         {metric: {unit, lower_is_better, original, built,
                         reduction_pct}}; reduction_pct = (original - built) /
                         original * 100, positive when the built value is
                         smaller (for lower_is_better false metrics a
                         negative value is a gain). Metrics: params_total,
                         params_nonzero, gflops, size_bytes, peak_memory_mb,
                         model_memory_mb, inference_memory_mb,
                         latency_{mean,p50,p90,p99,max}_ms and
                         deadline_miss_rate (each model's reference backend),
                         throughput_b<N> (batch sizes both reference backends
                         measured), success_rate, mean_steps, smoothness,
                         action_error, efficiency_E
    speedup_p50        original p50 / built p50 on the reference backends
    efficiency         {original, built: {E, E_c, E_m, E_i, P, C_gflops, M_gb,
                         T_ms, alpha, beta, gamma} or null, improvement:
                         (E_built - E_original) / E_original or null, inputs:
                         text naming the figures used}. P = success_rate,
                         C = GFLOPs per batch-1 inference, M = model memory
                         in GiB = (peak_mb - baseline_mb) / 1024, the memory
                         loading and running the model adds to the runtime
                         process (peak_mb beside it is the whole process),
                         T = batch-1 p50 latency [ms] of the reference backend
    budget_checks      {latency_p99_ms, peak_memory_mb, accuracy_loss:
                         {limit, value, ok}} for the built model against the
                         target's budgets; accuracy_loss = original - built
                         success rate; ok is null where either is missing
    roofline           {label: "estimate for <target>", original, built:
                         {floor_ms, memory_bound_layers, compute_bound_layers,
                         weight_bytes, flops} or null} — estimates, not
                         measurements (see edgevla.metrics.efficiency)
    stage_timings_s    {stage: seconds} of the build
    extra              free-form, JSON-safe

Sizes written ``_mb`` are MiB (2^20 bytes).
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import EdgevlaError
from ..task.evaluate import RATE_SLACK
from ..task.tolerance import tolerated_said
from .efficiency import (DEFAULT_WEIGHTS, RooflineEstimate, efficiency_improvement, efficiency_score,
                         reduction_pct)
from .flops import FlopReport
from .latency import DeadlineReport, LatencyStats, deadline_misses
from .memory import MemoryStats
from .params import ParamCount
from .success_ci import uncertainty_said

SCHEMA_VERSION = "1"
MODEL_KEYS = ("original", "built")
TOP_LAYERS = 15
MIB = float(1 << 20)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class ModelMetrics:
    """Everything measured about one model (the original or the built one)."""

    label: str
    params: ParamCount
    size_bytes: int
    flops: FlopReport | None = None
    memory: MemoryStats | None = None
    latency: dict[str, LatencyStats] = field(default_factory=dict)  # backend -> batch-1 timings
    reference_backend: str | None = None  # default: the first backend in ``latency``
    throughput: dict[str, dict[int, float]] = field(default_factory=dict)  # backend -> batch -> samples/s
    deadline: dict[str, DeadlineReport] = field(default_factory=dict)  # backend -> misses
    success_rate: float | None = None
    mean_steps: float | None = None
    smoothness: float | None = None
    action_error: float | None = None

    def __post_init__(self) -> None:
        if self.reference_backend is None and self.latency:
            self.reference_backend = next(iter(self.latency))
        if self.reference_backend is not None and self.reference_backend not in self.latency:
            raise EdgevlaError(f"{self.label}: reference backend {self.reference_backend!r} has no latency "
                               f"measurement (measured: {', '.join(self.latency) or 'none'})")
        if self.success_rate is not None and not 0.0 <= self.success_rate <= 1.0:
            raise EdgevlaError(f"{self.label}: success rate is a fraction in [0, 1], got {self.success_rate}")

    @property
    def reference_latency(self) -> LatencyStats | None:
        return self.latency.get(self.reference_backend) if self.reference_backend else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "params": self.params.to_dict(),
            "size_bytes": int(self.size_bytes),
            "flops": self.flops.to_dict() if self.flops else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "reference_backend": self.reference_backend,
            "latency": {b: s.to_dict() for b, s in self.latency.items()},
            "throughput": {b: {str(n): float(v) for n, v in t.items()} for b, t in self.throughput.items()},
            "deadline": {b: d.to_dict() for b, d in self.deadline.items()},
            "success_rate": _opt_float(self.success_rate),
            "mean_steps": _opt_float(self.mean_steps),
            "smoothness": _opt_float(self.smoothness),
            "action_error": _opt_float(self.action_error),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelMetrics":
        return cls(
            label=str(d["label"]),
            params=ParamCount.from_dict(d["params"]),
            size_bytes=int(d["size_bytes"]),
            flops=FlopReport.from_dict(d["flops"]) if d.get("flops") else None,
            memory=MemoryStats.from_dict(d["memory"]) if d.get("memory") else None,
            latency={b: LatencyStats.from_dict(s) for b, s in d.get("latency", {}).items()},
            reference_backend=d.get("reference_backend"),
            throughput={b: {int(n): float(v) for n, v in t.items()} for b, t in d.get("throughput", {}).items()},
            deadline={b: DeadlineReport.from_dict(r) for b, r in d.get("deadline", {}).items()},
            success_rate=d.get("success_rate"),
            mean_steps=d.get("mean_steps"),
            smoothness=d.get("smoothness"),
            action_error=d.get("action_error"),
        )


def host_info() -> dict[str, Any]:
    """Where the measurements ran: CPU model, core count, OS and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "torch": version("torch"), "onnxruntime": version("onnxruntime"), "numpy": version("numpy")}


# --- building the report dict -------------------------------------------------------------------

def _fill_deadlines(m: ModelMetrics, target: Mapping[str, Any]) -> dict[str, DeadlineReport]:
    """The given deadline reports, plus one per backend with samples when the target has a rate."""
    reports = dict(m.deadline)
    rate = target.get("control_rate_hz")
    if rate:
        for backend, stats in m.latency.items():
            if backend not in reports and stats.samples_ms:
                reports[backend] = deadline_misses(stats, rate, target.get("latency_budget_ms"))
    return reports


def _metric_getters(common_batches: Sequence[int]) -> list[tuple[str, str, bool | None, Callable[[ModelMetrics], Any]]]:
    """(metric, unit, lower_is_better, getter) for every compared figure."""
    def ref(attr: str) -> Callable[[ModelMetrics], Any]:
        return lambda m: getattr(m.reference_latency, attr) if m.reference_latency else None

    def mem(attr: str) -> Callable[[ModelMetrics], Any]:
        return lambda m: getattr(m.memory, attr) if m.memory else None

    def miss_rate(m: ModelMetrics) -> Any:
        d = m.deadline.get(m.reference_backend) if m.reference_backend else None
        return d.miss_rate if d else None

    def tput(n: int) -> Callable[[ModelMetrics], Any]:
        return lambda m: m.throughput.get(m.reference_backend, {}).get(n)

    return [
        ("params_total", "parameters", True, lambda m: m.params.total),
        ("params_nonzero", "parameters", True, lambda m: m.params.nonzero),
        ("gflops", "GFLOPs", True, lambda m: m.flops.total / 1e9 if m.flops else None),
        ("size_bytes", "bytes", True, lambda m: m.size_bytes),
        ("peak_memory_mb", "MiB", True, mem("peak_mb")),
        ("model_memory_mb", "MiB", True, mem("model_mb")),
        ("inference_memory_mb", "MiB", True, mem("inference_mb")),
        *[(f"latency_{p}_ms", "ms", True, ref(f"{p}_ms")) for p in ("mean", "p50", "p90", "p99", "max")],
        ("deadline_miss_rate", "fraction", True, miss_rate),
        *[(f"throughput_b{n}", "samples/s", False, tput(n)) for n in common_batches],
        ("success_rate", "fraction", False, lambda m: m.success_rate),
        ("mean_steps", "steps", True, lambda m: m.mean_steps),
        ("smoothness", "", None, lambda m: m.smoothness),
        ("action_error", "normalized action", True, lambda m: m.action_error),
    ]


def _efficiency(m: ModelMetrics, weights: tuple[float, float, float]) -> dict[str, Any] | None:
    """E(M) of a model, or None when one of its inputs was not measured."""
    lat = m.reference_latency
    if m.success_rate is None or not m.flops or not m.memory or not lat:
        return None
    model_gib = m.memory.model_mb / 1024.0
    if m.flops.total <= 0 or model_gib <= 0 or lat.p50_ms <= 0:
        return None
    return efficiency_score(m.success_rate, m.flops.total / 1e9, model_gib, lat.p50_ms, *weights).to_dict()


def _check(limit: Any, value: Any, slack: float = 0.0) -> dict[str, Any]:
    ok = None if limit is None or value is None else bool(value <= limit + slack)
    return {"limit": limit, "value": value, "ok": ok}


def build_report(original: ModelMetrics, built: ModelMetrics, *, target: Mapping[str, Any],
                 host: Mapping[str, Any] | None = None,
                 efficiency_weights: Sequence[float] = DEFAULT_WEIGHTS,
                 roofline: Mapping[str, RooflineEstimate | None] | None = None,
                 stage_timings: Mapping[str, float] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict (schema in the module docstring) for an original/built pair.

    ``host`` defaults to :func:`host_info` of this machine; ``roofline`` maps
    "original"/"built" to estimates for the target.
    """
    if "name" not in target:
        raise EdgevlaError("the report's target needs a 'name'")
    if len(efficiency_weights) != 3:
        raise EdgevlaError(f"efficiency weights are (alpha, beta, gamma), got {list(efficiency_weights)}")
    weights = tuple(float(w) for w in efficiency_weights)
    unknown = set(roofline or {}) - set(MODEL_KEYS)
    if unknown:
        raise EdgevlaError(f"roofline estimates are keyed 'original' and 'built', got {', '.join(sorted(unknown))}")

    models = {k: replace(m, deadline=_fill_deadlines(m, target))
              for k, m in zip(MODEL_KEYS, (original, built))}
    o, b = models["original"], models["built"]

    batches = sorted(set(o.throughput.get(o.reference_backend, {})) & set(b.throughput.get(b.reference_backend, {})))
    comparison: dict[str, dict[str, Any]] = {}
    for metric, unit, lower_is_better, get in _metric_getters(batches):
        ov, bv = get(o), get(b)
        comparison[metric] = {"unit": unit, "lower_is_better": lower_is_better, "original": ov, "built": bv,
                              "reduction_pct": reduction_pct(ov, bv)}

    eff = {k: _efficiency(m, weights) for k, m in models.items()}
    improvement = None
    if eff["original"] and eff["built"] and eff["original"]["E"] > 0:
        improvement = efficiency_improvement(eff["original"]["E"], eff["built"]["E"])
    e_o, e_b = (eff[k]["E"] if eff[k] else None for k in MODEL_KEYS)
    comparison["efficiency_E"] = {"unit": "", "lower_is_better": False, "original": e_o, "built": e_b,
                                  "reduction_pct": reduction_pct(e_o, e_b)}

    p50 = comparison["latency_p50_ms"]
    speedup = p50["original"] / p50["built"] if p50["original"] and p50["built"] else None
    accuracy_loss = (o.success_rate - b.success_rate
                     if o.success_rate is not None and b.success_rate is not None else None)

    report = {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": dict(target),
        "host": dict(host) if host is not None else host_info(),
        "efficiency_weights": dict(zip(("alpha", "beta", "gamma"), weights)),
        "models": {k: m.to_dict() for k, m in models.items()},
        "comparison": comparison,
        "speedup_p50": speedup,
        "efficiency": {
            **eff,
            "improvement": improvement,
            "inputs": "P = success rate; C = GFLOPs per batch-1 inference; M = (peak_mb - baseline_mb) / 1024 "
                      "GiB; T = batch-1 p50 latency in ms of the reference backend",
        },
        "budget_checks": {
            "latency_p99_ms": _check(target.get("latency_budget_ms"), comparison["latency_p99_ms"]["built"]),
            "peak_memory_mb": _check(target.get("memory_budget_mb"), comparison["peak_memory_mb"]["built"]),
            "accuracy_loss": _check(target.get("max_accuracy_loss"), accuracy_loss, slack=RATE_SLACK),
        },
        "roofline": {
            "label": f"estimate for {target['name']}",
            **{k: (r.to_dict() if r else None) for k, r in ((k, (roofline or {}).get(k)) for k in MODEL_KEYS)},
        },
        "stage_timings_s": {str(k): float(v) for k, v in (stage_timings or {}).items()},
        "extra": _unbounded_decibels_as_null(dict(extra or {})),
    }
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EdgevlaError(f"the report holds a value JSON cannot store: {e}") from None
    return report


def _unbounded_decibels_as_null(value: Any, decibels: bool = False) -> Any:
    """An SQNR is +inf where quantizing left the output unchanged (an argmax over token logits often is);
    JSON has no infinity, so a decibel figure (a key ending ``_db`` or naming ``sqnr``, and all under it)
    that is infinite is stored as null. Any other non-finite value still stops the report."""
    if isinstance(value, Mapping):
        return {k: _unbounded_decibels_as_null(v, decibels or str(k).endswith("_db") or "sqnr" in str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unbounded_decibels_as_null(v, decibels) for v in value]
    if decibels and isinstance(value, float) and math.isinf(value):
        return None
    return value


# --- writing it out -----------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1e9 or 0 < abs(value) < 1:  # huge or small: significant digits, not decimals
            return f"{value:.{digits + 1}g}"
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} %"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _models(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(k, report["models"][k]) for k in MODEL_KEYS]


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the tables a reviewer reads, from the report dict."""
    target, host = report["target"], report["host"]
    where = f"{host.get('cpu', 'unknown CPU')} ({host.get('cores', '?')} cores, {host.get('os', '?')})"
    out = [f"# edgevla report: {report['models']['original']['label']} -> {report['models']['built']['label']}",
           "",
           f"Target **{target['name']}**, control rate {_fmt(target.get('control_rate_hz'))} Hz, latency budget "
           f"{_fmt(target.get('latency_budget_ms'))} ms. Measured on {where}; schema {report['schema_version']}, "
           f"{report['created_utc']}.", ""]

    out += ["## Summary", "", "Reduction % = (original − built) / original; positive means the built model's "
            "figure is smaller (for success rate, throughput and E(M), larger is better).", ""]
    out += _table(["metric", "unit", "original", "built", "reduction"],
                  [[k, c["unit"], c["original"], c["built"], _pct(c["reduction_pct"])]
                   for k, c in report["comparison"].items()])
    out += [f"Speed-up at p50: {_fmt(report['speedup_p50'], 2)}×", ""]
    loop = report.get("extra", {}).get("robot_loop")
    task = report.get("extra", {}).get("closed_loop_task", "tabletop")  # None: no task, success not measured
    if isinstance(loop, Mapping) and task is not None:
        schedule = (f"temporally ensembled (m = {_fmt(loop.get('ensemble_m'))})" if loop["schedule"] == "ensemble"
                    else f"{loop['execute']} actions of each chunk executed, {loop['schedule']}")
        where = "on the tabletop task" if task == "tabletop" else f"in the simulator `{task}`"
        out += [f"Success rates are closed-loop, {where}, in the robot's loop of the recipe: {schedule}, each chunk "
                f"{loop['latency_ticks']} control tick(s) late.", ""]
        uncertainty = report.get("extra", {}).get("success_uncertainty")
        if isinstance(uncertainty, Mapping):
            out += [f"How sure (built on {uncertainty['backend']}): {uncertainty_said(uncertainty)}.", ""]

    checks = report["budget_checks"]
    out += ["## Budgets of the target (built model)", ""]
    out += _table(["check", "limit", "built", "within"], [[k, c["limit"], c["value"], c["ok"]] for k, c in checks.items()])

    out += ["## Latency at batch 1 (ms)", ""]
    out += _table(["model", "backend", "mean", "std", "p50", "p90", "p99", "min", "max", "runs"],
                  [[m["label"], be + (" (reference)" if be == m["reference_backend"] else ""), s["mean_ms"],
                    s["std_ms"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["min_ms"], s["max_ms"], s["runs"]]
                   for _, m in _models(report) for be, s in m["latency"].items()])

    out += ["## Deadline misses", ""]
    out += _table(["model", "backend", "period ms", "budget ms", "misses", "miss rate", "worst slack ms"],
                  [[m["label"], be, d["period_ms"], d["budget_ms"], d["misses"], d["miss_rate"], d["worst_slack_ms"]]
                   for _, m in _models(report) for be, d in m["deadline"].items()])

    extra = report.get("extra", {})
    if isinstance(extra.get("latency_tolerance"), Mapping):
        out += _tolerance_section(extra["latency_tolerance"])
    if isinstance(extra.get("action_error_by_index"), Mapping):
        by_index = dict(extra["action_error_by_index"])
        backend = by_index.pop("backend")
        out += [f"## Action error by chunk index (built, {backend}, vs original; real units)", "",
                "Mean |built − original| for each action of the chunk, on held-out observations and on the first "
                "observations of the task's episodes: a loop that runs late or ensembles executes the far end of "
                "each chunk, one that executes its first actions at once never does.", ""]
        out += _table(["observations", *(str(i) for i in range(len(by_index["held-out"])))],
                      [[name, *errors] for name, errors in by_index.items()])

    out += ["## Throughput (samples/s)", ""]
    out += _table(["model", "backend", "batch", "samples/s"],
                  [[m["label"], be, int(n), v] for _, m in _models(report)
                   for be, t in m["throughput"].items() for n, v in sorted(t.items(), key=lambda kv: int(kv[0]))])

    eff = report["efficiency"]
    w = report["efficiency_weights"]
    out += ["## Efficiency score E(M)", "",
            f"E = {w['alpha']:g}·P/C + {w['beta']:g}·P/M + {w['gamma']:g}·P/T with {eff['inputs']}.", ""]
    out += _table(["model", "P", "C GFLOPs", "M GiB", "T ms", "E_c", "E_m", "E_i", "E"],
                  [[m["label"], *(eff[k][f] if eff[k] else None
                                  for f in ("P", "C_gflops", "M_gb", "T_ms", "E_c", "E_m", "E_i", "E"))]
                   for k, m in _models(report)])
    out += [f"Improvement (E_built − E_original) / E_original: {_fmt(eff['improvement'])}", ""]

    roof = report["roofline"]
    out += [f"## Roofline floor — {roof['label']} (not measured)", "",
            "Floor = Σ layers max(weight bytes ÷ bandwidth, FLOPs ÷ peak): the least time the target can take; "
            "measured latency is beside it for scale, from a different machine.", ""]
    out += _table(["model", f"{roof['label']}: floor ms", "memory-bound layers", "compute-bound layers",
                   "weight bytes", "measured p50 ms (host, backend)"],
                  [[m["label"], *((roof[k][f] if roof[k] else None)
                                  for f in ("floor_ms", "memory_bound_layers", "compute_bound_layers", "weight_bytes")),
                    (f"{_fmt(m['latency'][m['reference_backend']]['p50_ms'])} on {host.get('cpu', '?')} with "
                     f"{m['reference_backend']}") if m["reference_backend"] else "n/a"]
                   for k, m in _models(report)])

    for _, m in _models(report):
        fl = m["flops"]
        if not fl:
            continue
        total = fl["total"] or 1
        top = sorted(fl["per_layer"], key=lambda r: r["flops"], reverse=True)[:TOP_LAYERS]
        out += [f"## FLOPs per layer, top {len(top)} — {m['label']} (batch 1, total {fl['total'] / 1e6:,.3f} MFLOPs)", ""]
        out += _table(["layer", "type", "MFLOPs", "share", "params", "weight KiB"],
                      [[r["name"], r["type"], r["flops"] / 1e6, f"{100 * r['flops'] / total:.1f} %", r["params"],
                        r["weight_bytes"] / 1024] for r in top])

    if report["stage_timings_s"]:
        out += ["## Build stages (s)", ""]
        out += _table(["stage", "seconds"], [[k, v] for k, v in report["stage_timings_s"].items()])
    return "\n".join(out)


def _tolerance_section(tol: Mapping[str, Any]) -> list[str]:
    """report.md's latency tolerance: success per schedule and tick of latency, and the ticks tolerated."""
    rate = tol.get("control_rate_hz")
    ticks = range(tol["max_ticks"] + 1)
    out = ["## Latency tolerance (closed loop)", "",
           f"Success with each chunk k control ticks late{f' at the policy’s {rate:g} Hz' if rate else ''}, "
           f"on the gate's {tol['episodes']} episodes; tolerated: the most ticks with success ≥ "
           f"{_pct_of(tol['floor'])} (the gate's floor) at every latency up to it, ≥ where the probe ended there"
           + (": a query of up to (k + 1) periods costs at most k ticks." if rate else "."), ""]
    rows = []
    for schedule, models in tol["schedules"].items():
        for label, curve in models.items():
            k = curve["tolerated"]
            rows.append([schedule, f"{label} ({tol['backends'][label]})", *(_pct_of(v) for v in curve["success"]),
                         tolerated_said(k, curve["at_least"]),
                         "" if k is None or not rate else
                         f"{'≥ ' if curve['at_least'] else ''}{(k + 1) * 1000 / rate:.1f}"])
    return out + _table(["schedule", "model", *(f"{k} ticks" for k in ticks), "tolerated ticks", "queries up to ms"],
                        rows)


def _pct_of(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def _deadline_line(ax: Any, target: Mapping[str, Any]) -> None:
    rate = target.get("control_rate_hz")
    if rate:
        budget = target.get("latency_budget_ms") or 1000.0 / rate
        ax.axvline(budget, color="crimson", linestyle="--", label=f"deadline {budget:g} ms ({rate:g} Hz)")


def _plot_latency(report: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    import numpy as np

    series = [(f"{m['label']} / {be}", s["samples_ms"]) for _, m in _models(report)
              for be, s in m["latency"].items() if s["samples_ms"]]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if series:
        allv = np.concatenate([np.asarray(v, dtype=float) for _, v in series])
        lo, hi = allv.min(), allv.max()
        if lo > 0 and hi / lo > 10:  # original and built far apart: a log axis keeps both readable
            bins = np.geomspace(lo, hi, 41)
            ax.set_xscale("log")
        else:
            bins = np.linspace(lo, hi, 41) if hi > lo else 10
        for name, values in series:
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
    _deadline_line(ax, report["target"])
    ax.set_xlabel("latency per inference at batch 1 (ms)")
    ax.set_ylabel("runs")
    ax.set_title(f"Latency, measured on {report['host'].get('cpu', 'host')}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_success_vs_latency(report: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for (_, m), marker in zip(_models(report), ("o", "s")):
        if m["success_rate"] is None:
            continue
        for be, s in m["latency"].items():
            ax.scatter([s["p50_ms"]], [m["success_rate"]], s=50, marker=marker, label=f"{m['label']} / {be}")
    _deadline_line(ax, report["target"])
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write report.json, report.md, latency.png and (with success rates) success_vs_latency.png."""
    if report.get("schema_version") != SCHEMA_VERSION:
        raise EdgevlaError(f"cannot write report schema {report.get('schema_version')!r}; this edgevla writes "
                           f"schema {SCHEMA_VERSION}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgevlaError(f"cannot create report directory {str(out)!r}: {e.strerror}") from None
    paths = [out / "report.json", out / "report.md", out / "latency.png"]
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(render_markdown(report) + "\n")
    _plot_latency(report, paths[2])
    if any(m["success_rate"] is not None and m["latency"] for _, m in _models(report)):
        paths.append(out / "success_vs_latency.png")
        _plot_success_vs_latency(report, paths[-1])
    return paths
