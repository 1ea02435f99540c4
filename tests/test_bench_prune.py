"""`edgevla bench prune`: the rows, their arithmetic, the JSON, and bad input."""

from __future__ import annotations

import json

import pytest

from edgevla.bench.prune import bench_prune
from edgevla.cli import main


@pytest.fixture(scope="module")
def result(torch_one_thread):
    return bench_prune("tiny-vla", ["2:4", "structured:0.5"], episodes=10, recovery_steps=20, runs=5, threads=1)


def test_rows_compare_each_method_with_the_original(result):
    original, nm, structured = result["rows"]
    assert [r["method"] for r in result["rows"]] == ["original", "2:4", "structured:0.5"]
    assert original["params"] == 638_352 and original["action_error"] == 0.0
    # 2:4 zeroes half of every trunk weight matrix and removes nothing.
    assert nm["params"] == original["params"] and nm["params_removed_pct"] == 0.0
    assert nm["nonzero_params"] < original["nonzero_params"] and nm["scope_zero_weights"] > 0
    assert 0.0 < nm["action_error"]
    # Structured pruning removes half of the trunk's parameters, and FLOPs with them.
    assert structured["scope_params_removed_pct"] >= 50.0
    assert structured["params"] < original["params"] and structured["flops"] < original["flops"]
    assert structured["flops_removed_pct"] == pytest.approx(
        100 * (original["flops"] - structured["flops"]) / original["flops"], abs=0.01)
    assert structured["onnx_bytes"] < original["onnx_bytes"]
    for r in (nm, structured):
        assert 0.0 <= r["success"] <= 1.0 and r["recovery_steps"] is not None
        assert r["success_lost_points"] == pytest.approx(100 * (original["success"] - r["success"]), abs=0.01)
        assert r["onnxruntime_latency_ratio"] == pytest.approx(
            r["onnxruntime_p50_ms"] / original["onnxruntime_p50_ms"], rel=0.01)


def test_cli_writes_json_and_rejects_bad_methods(tmp_path, capsys, torch_one_thread):
    out = tmp_path / "prune.json"
    assert main(["bench", "prune", "--methods", "unstructured:0.5", "--episodes", "4", "--runs", "3",
                 "--recovery-steps", "10", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["bench"] == "prune" and [r["method"] for r in data["rows"]] == ["original", "unstructured:0.5"]
    assert "bench prune: tiny-vla" in capsys.readouterr().out
    assert main(["bench", "prune", "--methods", "2:4,3:4"]) == 2
    assert capsys.readouterr().err.strip().startswith("edgevla: error: --methods: expected")
    assert main(["bench", "prune", "--runs", "0"]) == 2
