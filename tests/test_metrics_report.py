"""The report: schema keys, reductions, E(M), JSON round trip, markdown tables and PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevla.errors import EdgevlaError
from edgevla.metrics.efficiency import efficiency_score, roofline_estimate
from edgevla.metrics.flops import FlopReport, LayerFlops
from edgevla.metrics.latency import LatencyStats, deadline_misses
from edgevla.metrics.memory import MemoryStats
from edgevla.metrics.params import ParamCount
from edgevla.metrics.report import (SCHEMA_VERSION, ModelMetrics, build_report, host_info, render_markdown,
                                    write_report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TARGET = {"name": "jetson-orin-nano-8gb", "control_rate_hz": 50.0, "latency_budget_ms": 15.0,
          "memory_budget_mb": 1024.0, "max_accuracy_loss": 0.05, "bandwidth": 68e9, "peaks": {"fp16": 16.7e12}}
HOST = {"cpu": "Test CPU 9000", "cores": 2, "os": "Linux", "python": "3.11", "torch": "2.x", "onnxruntime": "1.x",
        "numpy": "2.x"}
WEIGHTS = (0.5, 0.25, 0.25)


def _layers(rng: np.random.Generator, n: int, scale: float) -> list[LayerFlops]:
    return [LayerFlops(name=f"blocks.{i}.fc", type="Linear", flops=int(rng.integers(1, 10**6) * scale),
                       params=int(rng.integers(1, 10**4)), weight_bytes=int(rng.integers(1, 10**5) * scale))
            for i in range(n)]


def _metrics(label: str, seed: int, scale: float, success: float | None,
             reference: str, backends: tuple[str, ...]) -> ModelMetrics:
    rng = np.random.default_rng(seed)
    layers = _layers(rng, 20, scale)
    latency = {b: LatencyStats.from_samples(rng.lognormal(np.log(14 * scale), 0.25, 200)) for b in backends}
    return ModelMetrics(
        label=label,
        params=ParamCount(total=int(1e6 * scale) + 17, nonzero=int(9e5 * scale)),
        size_bytes=int(4e6 * scale),
        flops=FlopReport(total=sum(r.flops for r in layers), per_layer=layers),
        memory=MemoryStats(baseline_mb=210.0, after_load_mb=210 + 500 * scale, peak_mb=215 + 520 * scale,
                           inference_mb=5 + 20 * scale, load_peak_mb=230 + 600 * scale, hwm_reset=True, runs=20),
        latency=latency,
        reference_backend=reference,
        throughput={b: {1: 70 / scale, 8: 400 / scale} for b in backends},
        success_rate=success,
        mean_steps=40.0 + 5 * scale,
        smoothness=0.1 * scale,
        action_error=0.0 if label == "original" else 0.03,
    )


@pytest.fixture
def pair():
    original = _metrics("original", 0, 1.0, 0.9, "torch", ("torch",))
    built = _metrics("built", 1, 0.5, 0.88, "onnxruntime", ("onnxruntime", "torch"))
    return original, built


@pytest.fixture
def report(pair):
    original, built = pair
    roof = {k: roofline_estimate([(r.flops, r.weight_bytes) for r in m.flops.per_layer], 16.7e12, 68e9)
            for k, m in (("original", original), ("built", built))}
    return build_report(original, built, target=TARGET, host=HOST, efficiency_weights=WEIGHTS, roofline=roof,
                        stage_timings={"compress": 12.5, "export": 3.25}, extra={"recipe": "int8"})


def test_every_schema_key_is_present(report):
    assert set(report) == {"schema_version", "created_utc", "target", "host", "efficiency_weights", "models",
                           "comparison", "speedup_p50", "efficiency", "budget_checks", "roofline",
                           "stage_timings_s", "extra"}
    assert report["schema_version"] == SCHEMA_VERSION == "1"
    for m in report["models"].values():
        assert set(m) == {"label", "params", "size_bytes", "flops", "memory", "reference_backend", "latency",
                          "throughput", "deadline", "success_rate", "mean_steps", "smoothness", "action_error"}
    assert set(report["comparison"]) == {
        "params_total", "params_nonzero", "gflops", "size_bytes", "peak_memory_mb", "model_memory_mb",
        "inference_memory_mb", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
        "latency_max_ms", "deadline_miss_rate", "throughput_b1", "throughput_b8", "success_rate", "mean_steps",
        "smoothness", "action_error", "efficiency_E"}
    for row in report["comparison"].values():
        assert set(row) == {"unit", "lower_is_better", "original", "built", "reduction_pct"}
    assert set(report["efficiency"]) == {"original", "built", "improvement", "inputs"}
    assert set(report["budget_checks"]) == {"latency_p99_ms", "peak_memory_mb", "accuracy_loss"}
    assert set(report["roofline"]) == {"label", "original", "built"}
    assert report["roofline"]["label"] == "estimate for jetson-orin-nano-8gb"
    assert report["efficiency_weights"] == {"alpha": 0.5, "beta": 0.25, "gamma": 0.25}


def test_reductions_are_computed_from_the_reference_backends(report, pair):
    original, built = pair
    c = report["comparison"]

    def pct(a, b):
        return (a - b) / a * 100

    assert c["params_total"]["reduction_pct"] == pytest.approx(pct(original.params.total, built.params.total))
    assert c["gflops"]["original"] == pytest.approx(original.flops.total / 1e9)
    assert c["gflops"]["reduction_pct"] == pytest.approx(pct(original.flops.total, built.flops.total))
    assert c["peak_memory_mb"]["reduction_pct"] == pytest.approx(pct(735.0, 475.0))
    o_lat = np.asarray(original.latency["torch"].samples_ms)
    b_lat = np.asarray(built.latency["onnxruntime"].samples_ms)  # the built model's reference backend
    assert c["latency_p50_ms"]["built"] == pytest.approx(np.percentile(b_lat, 50))
    assert c["latency_p99_ms"]["reduction_pct"] == pytest.approx(pct(np.percentile(o_lat, 99), np.percentile(b_lat, 99)))
    assert report["speedup_p50"] == pytest.approx(np.percentile(o_lat, 50) / np.percentile(b_lat, 50))
    assert c["throughput_b8"]["reduction_pct"] == pytest.approx(pct(400, 800))  # negative: throughput doubled
    assert c["throughput_b8"]["lower_is_better"] is False
    assert c["success_rate"]["reduction_pct"] == pytest.approx(pct(0.9, 0.88))
    assert c["action_error"]["reduction_pct"] is None  # 0 -> 0.03 has no finite percentage


def test_deadlines_are_derived_from_samples_and_target(report, pair):
    original, built = pair
    for key, m in (("original", original), ("built", built)):
        for backend, stats in m.latency.items():
            expected = deadline_misses(stats, TARGET["control_rate_hz"], TARGET["latency_budget_ms"])
            assert report["models"][key]["deadline"][backend] == expected.to_dict()
    o_rate = report["models"]["original"]["deadline"]["torch"]["miss_rate"]
    assert report["comparison"]["deadline_miss_rate"]["original"] == o_rate
    assert o_rate == pytest.approx(np.mean(np.asarray(original.latency["torch"].samples_ms) > 15.0))


def test_efficiency_uses_success_gflops_model_memory_and_p50(report, pair):
    original, built = pair
    for key, m in (("original", original), ("built", built)):
        expected = efficiency_score(m.success_rate, m.flops.total / 1e9, (m.memory.peak_mb - m.memory.baseline_mb) / 1024,
                                    m.reference_latency.p50_ms, *WEIGHTS)
        assert report["efficiency"][key] == pytest.approx(expected.to_dict())
    e0, e1 = report["efficiency"]["original"]["E"], report["efficiency"]["built"]["E"]
    assert report["efficiency"]["improvement"] == pytest.approx((e1 - e0) / e0)
    assert report["comparison"]["efficiency_E"]["built"] == e1


def test_a_loss_of_exactly_the_budget_is_within_it(pair):
    original, built = pair
    original.success_rate, built.success_rate = 0.985, 0.965  # 0.985 - 0.965 rounds past 0.02
    checks = build_report(original, built, target={**TARGET, "max_accuracy_loss": 0.02}, host=HOST)["budget_checks"]
    assert checks["accuracy_loss"]["ok"] is True
    built.success_rate = 0.964
    checks = build_report(original, built, target={**TARGET, "max_accuracy_loss": 0.02}, host=HOST)["budget_checks"]
    assert checks["accuracy_loss"]["ok"] is False


def test_budget_checks(report):
    checks = report["budget_checks"]
    built_p99 = report["comparison"]["latency_p99_ms"]["built"]
    assert checks["latency_p99_ms"] == {"limit": 15.0, "value": built_p99, "ok": built_p99 <= 15.0}
    assert checks["peak_memory_mb"] == {"limit": 1024.0, "value": 475.0, "ok": True}
    assert checks["accuracy_loss"]["value"] == pytest.approx(0.02) and checks["accuracy_loss"]["ok"] is True


def test_json_round_trip_and_model_metrics_round_trip(report, pair):
    assert json.loads(json.dumps(report)) == report
    original, _ = pair
    restored = ModelMetrics.from_dict(json.loads(json.dumps(report["models"]["original"])))
    assert restored.latency == original.latency and restored.throughput == original.throughput
    assert restored.flops == original.flops and restored.memory == original.memory
    assert restored.deadline["torch"].to_dict() == report["models"]["original"]["deadline"]["torch"]


def test_written_files(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.md", "latency.png", "success_vs_latency.png"]
    assert json.loads(paths[0].read_text()) == report
    md = paths[1].read_text()
    for heading in ("## Summary", "## Latency at batch 1 (ms)", "## Throughput (samples/s)", "## Deadline misses",
                    "## Efficiency score E(M)", "## Roofline floor — estimate for jetson-orin-nano-8gb",
                    "## FLOPs per layer, top 15 — original", "## FLOPs per layer, top 15 — built", "## Build stages"):
        assert heading in md
    assert "| metric | unit | original | built | reduction |" in md
    assert "| built | onnxruntime (reference) |" in md
    assert "on Test CPU 9000 with onnxruntime" in md
    top_layer = max(report["models"]["original"]["flops"]["per_layer"], key=lambda r: r["flops"])["name"]
    smallest = min(report["models"]["original"]["flops"]["per_layer"], key=lambda r: r["flops"])["name"]
    flops_section = md.split("## FLOPs per layer, top 15 — original")[1].split("##")[0]
    assert f"| {top_layer} |" in flops_section and f"| {smallest} |" not in flops_section
    assert flops_section.count("| blocks.") == 15
    for png in paths[2:]:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_the_robots_loop_of_the_success_rates_is_said(pair):
    original, built = pair
    for loop, said in (
            ({"execute": 4, "latency_ticks": 2, "schedule": "async"},
             "the robot's loop of the recipe: 4 actions of each chunk executed, async, each chunk 2 control tick(s) "
             "late."),
            ({"execute": 4, "latency_ticks": 0, "schedule": "ensemble", "ensemble_m": 0.01},
             "the robot's loop of the recipe: temporally ensembled (m = 0.01), each chunk 0 control tick(s) late.")):
        report = build_report(original, built, target=TARGET, host=HOST, extra={"robot_loop": loop})
        assert said in render_markdown(report)
    assert "robot's loop" not in render_markdown(build_report(original, built, target=TARGET, host=HOST))


def test_how_sure_the_success_rates_are_is_said(pair):
    from edgevla.metrics.success_ci import success_uncertainty

    original, built = pair
    loop = {"execute": 4, "latency_ticks": 0, "schedule": "sync"}
    uncertainty = {"backend": "onnxruntime", **success_uncertainty([True] * 180 + [False] * 20,
                                                                   [True] * 176 + [False] * 24, 0.05)}
    md = render_markdown(build_report(original, built, target=TARGET, host=HOST,
                                      extra={"robot_loop": loop, "success_uncertainty": uncertainty}))
    assert "How sure (built on onnxruntime): over 200 episodes, 95 % intervals: original 90.0 % (85.1–93.4)" in md
    # the built policy fails where the original does and on 4 more: paired, the loss is pinned down
    assert "loss 2.0 pt (-0.2 to 4.6): within the 5.0 pt budget with 95 % confidence." in md


def test_latency_tolerance_and_action_error_by_index_are_tabled(pair):
    original, built = pair
    perfect = {"success": [1.0, 1.0, 1.0], "mean_steps": [6, 7, 8], "tolerated": 2, "at_least": True}
    tolerance = {"floor": 0.98, "max_ticks": 2, "control_rate_hz": 30.0, "episodes": 200, "seed": 10_000,
                 "execute": 4, "ensemble_m": 0.01, "backends": {"original": "torch", "built": "onnxruntime"},
                 "schedules": {
                     "async": {"original": perfect, "built": {"success": [0.995, 0.84, 0.295],
                                                             "mean_steps": [8, 15, 25], "tolerated": 0,
                                                             "at_least": False}},
                     "ensemble": {"original": perfect, "built": {"success": [0.94, 0.38, 0.06],
                                                                 "mean_steps": [15, 26, 30], "tolerated": None,
                                                                 "at_least": False}}}}
    by_index = {"backend": "onnxruntime", "held-out": [0.01, 0.02], "episode starts": [0.004, 0.03]}
    md = render_markdown(build_report(original, built, target=TARGET, host=HOST, extra={
        "latency_tolerance": tolerance, "action_error_by_index": by_index}))
    assert "each chunk k control ticks late at the policy’s 30 Hz, on the gate's 200 episodes" in md
    assert "| schedule | model | 0 ticks | 1 ticks | 2 ticks | tolerated ticks | queries up to ms |" in md
    assert "| async | original (torch) | 100.0 % | 100.0 % | 100.0 % | ≥ 2 | ≥ 100.0 |" in md
    assert "| async | built (onnxruntime) | 99.5 % | 84.0 % | 29.5 % | 0 | 33.3 |" in md
    assert "| ensemble | built (onnxruntime) | 94.0 % | 38.0 % | 6.0 % | none |  |" in md
    assert "## Action error by chunk index (built, onnxruntime, vs original; real units)" in md
    assert "| observations | 0 | 1 |" in md and "| episode starts | 0.004 | 0.03 |" in md
    plain = render_markdown(build_report(original, built, target=TARGET, host=HOST, extra={
        "latency_tolerance": "not measured (evaluate.tolerance.max_ticks: 0)"}))
    assert "Latency tolerance" not in plain and "by chunk index" not in plain


def test_no_success_rates_means_no_efficiency_and_no_success_plot(pair, tmp_path):
    original, built = pair
    original.success_rate = built.success_rate = None
    report = build_report(original, built, target={"name": "cpu"}, host=HOST)
    assert report["efficiency"]["original"] is None and report["efficiency"]["improvement"] is None
    assert report["budget_checks"]["accuracy_loss"]["ok"] is None
    assert report["models"]["original"]["deadline"] == {}  # no control rate: nothing to miss
    assert report["roofline"]["original"] is None
    assert [p.name for p in write_report(report, tmp_path)] == ["report.json", "report.md", "latency.png"]
    assert "n/a" in render_markdown(report)


def test_bad_inputs_are_user_errors(pair, tmp_path):
    original, built = pair
    with pytest.raises(EdgevlaError, match="reference backend"):
        ModelMetrics(label="x", params=ParamCount(1, 1), size_bytes=1, latency={"torch": original.latency["torch"]},
                     reference_backend="tensorrt")
    with pytest.raises(EdgevlaError, match="success rate"):
        ModelMetrics(label="x", params=ParamCount(1, 1), size_bytes=1, success_rate=1.5)
    with pytest.raises(EdgevlaError, match="JSON"):
        build_report(original, built, target=TARGET, host=HOST, extra={"obj": object()})
    with pytest.raises(EdgevlaError, match="name"):
        build_report(original, built, target={}, host=HOST)
    with pytest.raises(EdgevlaError, match="schema"):
        write_report({"schema_version": "0"}, tmp_path)


def test_host_info_describes_this_machine():
    info = host_info()
    assert set(info) == {"cpu", "cores", "os", "python", "torch", "onnxruntime", "numpy"}
    assert info["cores"] >= 1 and info["torch"] and info["cpu"]
