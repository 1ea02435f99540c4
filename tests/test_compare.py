"""``edgevla compare``: bundles side by side from their reports, the pick, and latency measured in one run."""

from __future__ import annotations

import json

import pytest

from edgevla.cli import main
from edgevla.compare import BundleRow, compare_bundles, compression_of, differences, pick, tolerates
from edgevla.metrics.efficiency import efficiency_score
from edgevla.pipeline import BuildRequest, build

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def w8a8_bundle(tmp_path_factory, fast, original_memo):
    out = tmp_path_factory.mktemp("compare") / "tiny-w8a8"
    return build(BuildRequest(target="jetson-orin", output=str(out), overrides={
        **fast, "quantize.format": "w8a8", "evaluate.tolerance.max_ticks": 1,
        "evaluate.tolerance.schedules": ["async"]}, memo=original_memo))


def row(name: str, e: float | None, latency_ok: bool | None = True, **kw) -> BundleRow:
    return BundleRow(bundle=name, policy="tiny-vla", target="jetson-agx-orin", host_cpu="cpu", compression="none",
                     params_nonzero=1, onnx_bytes=1, success_rate=1.0, original_success_rate=1.0,
                     latency_backend="onnxruntime", p50_ms=1.0, p99_ms=1.0, speedup_p50=1.0,
                     efficiency=None if e is None else {"E": e},
                     budgets={"latency_p99_ms": latency_ok, "accuracy_loss": True}, **kw)


@pytest.mark.parametrize("recipe, label", [
    ({"prune": {"method": "nm", "pattern": "2:4"}, "quantize": {"format": "w8a8"}}, "2:4 + w8a8"),
    ({"prune": {"method": "unstructured", "sparsity": 0.8, "allocation": "sensitivity"}},
     "unstructured:0.8 (sensitivity)"),
    ({"prune": {"method": "structured", "amount": 0.5, "structure": "blocks"}}, "structured:0.5:blocks"),
    ({"prune": {"method": "none"}, "quantize": {"format": "w4a16"}}, "w4a16"),
    ({}, "none"),
])
def test_compression_is_said_as_the_build_flags_say_it(recipe, label):
    assert compression_of(recipe) == label


def test_the_pick_is_the_best_e_within_budgets_and_proven_latency():
    async2 = {"async": {"tolerated": 2, "at_least": False}}
    rows = [row("a", 10.0), row("over", 50.0, latency_ok=False), row("unchecked", 40.0, latency_ok=None),
            row("no-success", None), row("b", 20.0, tolerated=async2), row("b-tie", 20.0, tolerated=async2)]
    assert (rows[1].within_budgets, rows[1].failed_budgets, rows[2].within_budgets) == (False, ["latency_p99_ms"],
                                                                                        None)
    assert pick(rows).bundle == "b"  # ties go to the first listed
    assert pick(rows, ("async", 2)).bundle == "b" and pick(rows, ("async", 3)) is None
    assert pick(rows, ("sync", 0)) is None  # no build measured sync: nothing is proven there
    assert pick(rows[:4]).bundle == "a"
    assert not tolerates(row("none", 1.0, tolerated={"async": {"tolerated": None, "at_least": False}}), "async", 0)
    # latency measured here stands in for the report's: E(M) with it, and the latency budget on its p99
    rows[1].measured = {"efficiency_E": 50.0, "within_latency_budget": True}
    rows[4].measured = {"efficiency_E": 5.0, "within_latency_budget": True}
    assert pick(rows).bundle == "over"
    rows[1].measured["within_latency_budget"] = False
    assert pick(rows).bundle == "b-tie"  # b's measured E(M) is 5 now
    for r in rows:
        r.measured = None
    assert differences(rows) == []
    other = row("x", 1.0)
    other.policy, other.host_cpu, other.task = "small-vla", "arm", "sim:make_env"
    assert differences([rows[0], other]) == ["policies differ (small-vla, tiny-vla)",
                                             "closed-loop tasks differ (sim:make_env, tabletop)",
                                             "build machines differ (arm, cpu)"]


def test_bundles_side_by_side_from_their_reports(tiny_bundle, w8a8_bundle):
    data = compare_bundles([tiny_bundle.bundle, w8a8_bundle.bundle])
    plain, w8a8 = data["bundles"]
    assert (plain["compression"], w8a8["compression"]) == ("none", "w8a8")
    assert w8a8["onnx_bytes"] < plain["onnx_bytes"] / 3
    for r, result in ((plain, tiny_bundle), (w8a8, w8a8_bundle)):
        report = result.report
        assert r["success_rate"] == report["models"]["built"]["success_rate"]
        assert r["efficiency_E"] == report["efficiency"]["built"]["E"]
        assert r["p50_ms"] == report["models"]["built"]["latency"]["onnxruntime"]["p50_ms"]
        assert r["within_budgets"] == all(c["ok"] for c in report["budget_checks"].values())
        assert r["loss_ci95"] == report["extra"]["success_uncertainty"]["loss_ci95"]
    assert plain["tolerated"] is None and list(w8a8["tolerated"]) == ["async"]
    assert w8a8["tolerated"]["async"]["tolerated"] == (
        w8a8_bundle.report["extra"]["latency_tolerance"]["schedules"]["async"]["built"]["tolerated"])
    eligible = [r for r in (plain, w8a8) if r["within_budgets"]]
    assert data["pick"] == max(eligible, key=lambda r: r["efficiency_E"])["bundle"]
    proven = compare_bundles([tiny_bundle.bundle, w8a8_bundle.bundle], tolerate=("async", 1))
    async_ticks = w8a8["tolerated"]["async"]["tolerated"]
    expected = w8a8["bundle"] if w8a8["within_budgets"] and async_ticks is not None and async_ticks >= 1 else None
    assert proven["pick"] == expected and proven["tolerate"] == {"schedule": "async", "ticks": 1}
    assert data["differences"] == []  # one policy, one target, one machine, one backend


def test_the_success_cell_gives_the_change_with_its_interval():
    from edgevla.commands import _success_cell

    # the report's interval is of the loss (original - built); the cell says the change (built - original)
    assert _success_cell({"success_rate": 0.97, "original_success_rate": 1.0, "loss_ci95": [0.005, 0.064]}) == \
        "97.0% (-3.0 pt in [-6.4, -0.5])"
    assert _success_cell({"success_rate": 0.97, "original_success_rate": 1.0}) == "97.0% (-3.0 pt)"
    assert _success_cell({"success_rate": 0.97, "original_success_rate": None}) == "97.0%"
    assert _success_cell({"success_rate": None, "original_success_rate": None}) == "n/a"


def test_compare_measures_latency_here_in_one_run(capsys, tiny_bundle, w8a8_bundle):
    code = main(["compare", str(tiny_bundle.bundle), str(w8a8_bundle.bundle), "--measure", "onnxruntime",
                 "--runs", "3", "--warmup", "1", "--rounds", "2", "--threads", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    measured = [r["measured"] for r in data["bundles"]]
    assert code == 0 and all(m["backend"] == "onnxruntime" and m["rounds"] == 2 for m in measured)
    assert min(m["vs_fastest"] for m in measured) == 1.0
    assert all(0 < m["p50_ms"] <= m["p99_ms"] for m in measured)
    assert data["latency_weighed"] == "measured here"
    for r in data["bundles"]:  # E(M) again with the measured p50; the latency budget on the measured p99
        e, m = r["efficiency"], r["measured"]
        assert m["efficiency_E"] == pytest.approx(efficiency_score(
            e["P"], e["C_gflops"], e["M_gb"], m["p50_ms"], e["alpha"], e["beta"], e["gamma"]).E)
        assert m["within_latency_budget"] == (m["p99_ms"] <= r["latency_budget_ms"]) and r["latency_budget_ms"] == 25
    code = main(["compare", str(tiny_bundle.bundle), str(w8a8_bundle.bundle), "--tolerate", "async:1"])
    out = capsys.readouterr().out.replace("\n", " ")
    assert code == 0 and "pick:" in out and "proven at 1 tick(s) async" in out and "not measured" in out


@pytest.mark.parametrize("argv, message", [
    (["--runs", "3"], "add --measure BACKEND"),
    (["--tolerate", "later:2"], "--tolerate: expected SCHEDULE:TICKS"),
    (["--tolerate", "async"], "--tolerate: expected SCHEDULE:TICKS"),
    (["--measure", "onnxruntime", "--rounds", "0"], "--runs and --rounds must be >= 1"),
])
def test_compare_refuses_bad_settings(capsys, tiny_bundle, argv, message):
    code = main(["compare", str(tiny_bundle.bundle), str(tiny_bundle.bundle), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_compare_needs_bundles(capsys, tiny_bundle, tmp_path):
    assert main(["compare", str(tiny_bundle.bundle)]) == 2
    assert "two bundles or more" in capsys.readouterr().err
    assert main(["compare", str(tiny_bundle.bundle), str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
