"""``edgevla bench e2e`` on the session's tiny bundle: every backend timed, ratios of the medians, JSON, errors."""

from __future__ import annotations

import json

import pytest

from edgevla.bench import write_json
from edgevla import native
from edgevla.bench.e2e import bench_e2e
from edgevla.cli import main
from edgevla.errors import EdgevlaError


def test_bench_e2e_times_every_backend_and_reports_ratios(tiny_bundle, tmp_path, capsys, torch_one_thread):
    out = tmp_path / "e2e.json"
    assert main(["bench", "e2e", str(tiny_bundle.bundle), "--rounds", "2", "--runs", "3", "--warmup", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    label = tiny_bundle.bundle.resolve().name
    assert set(result["median_ms"]) == {f"native:{label}", f"onnxruntime:{label}", "onnxruntime-dynint8",
                                        "native-dense", "torch-fp32"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["rounds_ms"].values())
    med = result["median_ms"]
    ratios = result["ratios_vs_native"][label]
    assert ratios["torch-fp32"] == pytest.approx(med["torch-fp32"] / med[f"native:{label}"], rel=1e-3, abs=1e-3)
    per_round = [t / n for t, n in zip(result["rounds_ms"]["torch-fp32"], result["rounds_ms"][f"native:{label}"])]
    assert result["round_ratios_vs_native"][label]["torch-fp32"] == pytest.approx(sum(per_round) / 2, rel=1e-3,
                                                                                   abs=1e-3)  # median of two
    assert [g["threshold"] for g in result["goals"]] == [1.5, 4.0]
    assert all(g["met"] == (g["ratio"] >= g["threshold"]) for g in result["goals"])
    assert result["policy"] == "tiny-vla" and result["threads"] == 1 and result["native_isa"] == native.get_isa()
    printed = capsys.readouterr().out
    assert "goal: native" in printed and "median of per-round ratios" in printed


def test_bench_e2e_bad_input_is_one_line(tmp_path, capsys, tiny_bundle):
    assert main(["bench", "e2e", str(tmp_path / "missing")]) == 2
    assert main(["bench", "e2e", str(tmp_path), "--rounds", "0"]) == 2
    assert main(["bench", "e2e", str(tiny_bundle.bundle), "--isa", "sse9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--rounds must be >= 1" in err[1] and "unknown ISA 'sse9'" in err[2]
    with pytest.raises(EdgevlaError, match="at least one bundle"):
        bench_e2e([])


def test_recipe_settings_read_values_as_yaml_and_refuse_a_pair_without_a_key():
    from edgevla.bench import recipe_settings

    assert recipe_settings(["evaluate.latency_ticks=1", "x=[a, b]", "y=null"], "m:f") == {
        "evaluate.latency_ticks": 1, "x": ["a", "b"], "y": None, "evaluate.env": "m:f"}
    for bad in ("episodes", "=3"):
        with pytest.raises(EdgevlaError, match=f"--set takes KEY=VALUE, got {bad!r}"):
            recipe_settings([bad])


def test_write_json_is_whole_or_a_one_line_error(tmp_path):
    path = write_json({"a": [1, 2]}, tmp_path / "deep" / "r.json")
    assert json.loads(path.read_text()) == {"a": [1, 2]} and list(path.parent.iterdir()) == [path]
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgevlaError, match="cannot write"):
        write_json({}, tmp_path / "file" / "r.json")
