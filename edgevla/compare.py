"""Bundles side by side: which compression to ship.

A team builds a policy several ways for one target (2:4, w8a8, both,
structured blocks ...) and has to pick one. :func:`compare_bundles` reads each
bundle's report (hash-checked with the bundle) and puts the figures that
decide it in one row per bundle: what was done to the policy, its size,
closed-loop success and the loss against the original, batch-1 latency, the
efficiency score E(M), whether it met every budget of its target, and the
latency it was proven to tolerate in each schedule. :func:`pick` names the
bundle with the highest E(M) among those within their budgets.

Reports record latency on the machine that built them, which for a GPU or
Jetson target is not the robot's. With ``measure`` the bundles' latency is
measured again here (on the robot's computer: ``--measure tensorrt`` or
``native``), in one run: rounds that time every bundle in turn (median of
``runs`` calls each, after warm-up; the figure is the median over rounds), so
a drift of a shared machine hits all alike. The pick then weighs that
latency: E(M) with the measured p50 for T, and the latency budget checked
against the measured p99.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgevlaError


@dataclass
class BundleRow:
    """One bundle's deciding figures (from its report unless ``measured``)."""

    bundle: str
    policy: str
    target: str
    host_cpu: str | None
    compression: str
    params_nonzero: int
    onnx_bytes: int
    success_rate: float | None
    original_success_rate: float | None
    latency_backend: str | None
    p50_ms: float | None
    p99_ms: float | None
    speedup_p50: float | None
    efficiency: dict[str, Any] | None  # the report's E(M) and its inputs (P, C_gflops, M_gb, T_ms, weights)
    budgets: dict[str, bool | None] = field(default_factory=dict)  # the report's checks: name -> ok (None: unchecked)
    latency_budget_ms: float | None = None  # the target's, against p99
    # schedule -> {"tolerated": the most ticks (None: not even 0), "at_least": held to the probe's end}, as the
    # report has it; None: not measured (evaluate.tolerance.max_ticks: 0)
    tolerated: dict[str, dict[str, Any]] | None = None
    measured: dict[str, Any] | None = None  # this host, this run (measure=True)
    task: str = "tabletop"  # where success was measured: the tabletop task or the simulator of evaluate.env
    # The 95 % interval of the loss (original - built) on the gate's episodes (report: extra.success_uncertainty);
    # None where the report has none
    loss_ci95: list[float] | None = None

    @property
    def efficiency_E(self) -> float | None:
        return None if self.efficiency is None else self.efficiency["E"]

    @property
    def within_budgets(self) -> bool | None:
        """Within every budget of the target, as the report checked them (None: one could not be checked)."""
        return within(self.budgets)

    @property
    def failed_budgets(self) -> list[str]:
        return [name for name, ok in self.budgets.items() if ok is False]

    @property
    def deciding_E(self) -> float | None:
        """E(M) as the pick weighs it: with the latency measured here where it was, else the report's."""
        return self.measured["efficiency_E"] if self.measured is not None else self.efficiency_E

    @property
    def deciding_within(self) -> bool | None:
        """Within every budget, the latency one judged on the p99 measured here where it was."""
        if self.measured is None:
            return self.within_budgets
        return within({**self.budgets, "latency_p99_ms": self.measured["within_latency_budget"]})

    @property
    def success_loss(self) -> float | None:
        if self.success_rate is None or self.original_success_rate is None:
            return None
        return self.original_success_rate - self.success_rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "efficiency_E": self.efficiency_E, "success_loss": self.success_loss,
                "within_budgets": self.within_budgets, "failed_budgets": self.failed_budgets}


def within(budgets: Mapping[str, bool | None]) -> bool | None:
    """False if a budget is exceeded, else None if one could not be checked, else True."""
    oks = list(budgets.values())
    return False if False in oks else None if None in oks else True


def compression_of(recipe: Mapping[str, Any]) -> str:
    """What a recipe did to the policy, as ``edgevla build``'s shorthands say it: ``2:4 + w8a8``, ``none``."""
    prune, fmt = recipe.get("prune", {}), recipe.get("quantize", {}).get("format", "none")
    method = prune.get("method", "none")
    parts = []
    if method == "nm":
        parts.append(prune["pattern"])
    elif method == "unstructured":
        parts.append(f"unstructured:{prune['sparsity']:g}"
                     + (" (sensitivity)" if prune.get("allocation") == "sensitivity" else ""))
    elif method == "structured":
        parts.append(f"structured:{prune['amount']:g}:{prune['structure']}")
    if fmt != "none":
        parts.append(fmt)
    return " + ".join(parts) or "none"


def row_of(path: str | Path) -> BundleRow:
    """A bundle's row from its manifest and report (the bundle's files hash-checked on load)."""
    from .bundle import load_bundle

    bundle = load_bundle(path)
    try:
        report = json.loads(bundle.file("report.json").read_text())
        return _row(str(path), bundle.manifest, report)
    except (OSError, ValueError) as e:
        raise EdgevlaError(f"cannot read the report of bundle {str(path)!r}: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise EdgevlaError(f"the report of bundle {str(path)!r} lacks what compare reads ({e!r}): "
                           "a report of another edgevla version?") from None


def _row(path: str, manifest: Mapping[str, Any], report: Mapping[str, Any]) -> BundleRow:
    built, original = report["models"]["built"], report["models"]["original"]
    backend = built.get("reference_backend")
    latency = built["latency"].get(backend) if backend else None
    checks = report.get("budget_checks", {})
    budgets = {name: check.get("ok") for name, check in checks.items()}
    tolerance = report.get("extra", {}).get("latency_tolerance")
    uncertainty = report.get("extra", {}).get("success_uncertainty")
    return BundleRow(
        bundle=path, policy=manifest["policy"]["name"], target=report["target"]["name"],
        host_cpu=report.get("host", {}).get("cpu"), compression=compression_of(manifest.get("recipe", {})),
        params_nonzero=int(built["params"]["nonzero"]), onnx_bytes=int(built["size_bytes"]),
        success_rate=built.get("success_rate"), original_success_rate=original.get("success_rate"),
        latency_backend=backend, p50_ms=latency["p50_ms"] if latency else None,
        p99_ms=latency["p99_ms"] if latency else None, speedup_p50=report.get("speedup_p50"),
        efficiency=report.get("efficiency", {}).get("built"), budgets=budgets,
        latency_budget_ms=checks.get("latency_p99_ms", {}).get("limit"),
        tolerated=({s: {"tolerated": c["built"]["tolerated"], "at_least": c["built"]["at_least"]}
                    for s, c in tolerance["schedules"].items()} if isinstance(tolerance, Mapping) else None),
        task=manifest.get("recipe", {}).get("evaluate", {}).get("env") or "tabletop",
        loss_ci95=list(uncertainty["loss_ci95"]) if isinstance(uncertainty, Mapping) else None)


def differences(rows: Sequence[BundleRow]) -> list[str]:
    """What makes the rows' report figures hard to compare: other policies, targets, closed-loop tasks, build
    machines or latency backends."""
    said = []
    for what, values in (("policies", {r.policy for r in rows}), ("targets", {r.target for r in rows}),
                         ("closed-loop tasks", {r.task for r in rows}),
                         ("build machines", {r.host_cpu for r in rows}),
                         ("latency backends", {r.latency_backend for r in rows})):
        if len(values) > 1:
            said.append(f"{what} differ ({', '.join(sorted(str(v) for v in values))})")
    return said


def tolerates(row: BundleRow, schedule: str, ticks: int) -> bool:
    """Whether the bundle's build proved its success at ``ticks`` of latency in ``schedule`` (False where the
    build did not measure it, or probed less)."""
    proven = (row.tolerated or {}).get(schedule)
    return proven is not None and proven["tolerated"] is not None and proven["tolerated"] >= ticks


def pick(rows: Sequence[BundleRow], tolerate: tuple[str, int] | None = None) -> BundleRow | None:
    """The bundle with the highest E(M) among those within every budget of their target and, with
    ``tolerate`` = (schedule, ticks), proven at that latency; None if none is (or none has an E(M): a policy
    without closed-loop success). Latency measured here, where it was, stands in for the report's (see
    :attr:`BundleRow.deciding_E`). Ties go to the first listed."""
    eligible = [r for r in rows if r.deciding_within and r.deciding_E is not None
                and (tolerate is None or tolerates(r, *tolerate))]
    return max(eligible, key=lambda r: r.deciding_E, default=None)


def measure_here(rows: Sequence[BundleRow], backend: str, *, runs: int, warmup: int, rounds: int,
                 threads: int | None) -> None:
    """Each bundle's batch-1 latency on this host with ``backend``, in one run (see the module's docstring):
    fills ``row.measured`` with the median p50 over rounds, the worst p99, and the ratio to the fastest."""
    from .bundle import load_bundle
    from .deploy import bundle_runner
    from .metrics.efficiency import efficiency_score
    from .metrics.latency import time_in_rounds
    from .pipeline import batch_of, heldout_observations

    if runs < 1 or warmup < 0 or rounds < 1:
        raise EdgevlaError("--runs and --rounds must be >= 1 and --warmup >= 0")
    runners = []
    try:
        for row in rows:
            bundle = load_bundle(row.bundle)
            obs = batch_of(heldout_observations(bundle.spec, 8), 0, 1)
            runners.append((bundle_runner(bundle, backend, threads), obs))
        timed = time_in_rounds({str(i): (lambda runner=runner, obs=obs: runner(obs))
                                for i, (runner, obs) in enumerate(runners)}, rounds=rounds, runs=runs, warmup=warmup)
    finally:
        for runner, _ in runners:
            runner.close()
    medians = [statistics.median(s.p50_ms for s in timed[str(i)]) for i in range(len(rows))]
    fastest = min(medians)
    for i, (row, p50) in enumerate(zip(rows, medians)):
        p99 = max(s.p99_ms for s in timed[str(i)])
        e = row.efficiency
        row.measured = {
            "backend": backend, "p50_ms": p50, "p99_ms": p99, "vs_fastest": p50 / fastest, "runs": runs,
            "rounds": rounds, "threads": threads,
            "efficiency_E": None if e is None or p50 <= 0 else efficiency_score(
                e["P"], e["C_gflops"], e["M_gb"], p50, e["alpha"], e["beta"], e["gamma"]).E,
            "within_latency_budget": None if row.latency_budget_ms is None else p99 <= row.latency_budget_ms}


def compare_bundles(paths: Sequence[str | Path], measure: str | None = None, *, runs: int = 50, warmup: int = 5,
                    rounds: int = 3, threads: int | None = None,
                    tolerate: tuple[str, int] | None = None) -> dict[str, Any]:
    """Rows for ``paths``, the pick (see :func:`pick`) and what differs between them; with ``measure`` (a
    backend) latency measured here too."""
    if len(paths) < 2:
        raise EdgevlaError("compare needs two bundles or more")
    rows = [row_of(p) for p in paths]
    if measure is not None:
        measure_here(rows, measure, runs=runs, warmup=warmup, rounds=rounds, threads=threads)
    return compared(rows, tolerate)


def compared(rows: Sequence[BundleRow], tolerate: tuple[str, int] | None = None) -> dict[str, Any]:
    """The rows as JSON-ready dicts, the pick and what differs between them."""
    best = pick(rows, tolerate)
    return {"bundles": [r.to_dict() for r in rows], "pick": best.bundle if best else None,
            "latency_weighed": "measured here" if any(r.measured is not None for r in rows) else "each report's",
            "tolerate": None if tolerate is None else {"schedule": tolerate[0], "ticks": tolerate[1]},
            "differences": differences(rows)}
