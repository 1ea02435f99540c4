"""``edgevla bench quant``: one short real run on a user policy through the CLI (table + JSON), the goal
checks on hand-made rows, and one-line errors for bad arguments."""

from __future__ import annotations

import json
import sys

import pytest

from edgevla.bench.quant import goals
from edgevla.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

POLICY = '''
import torch
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


class Grip(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("obs", (4, 64), "float32", -1.0, 1.0),),
                               action=TensorSpec("act", (2, 3), "float32", -1.0, 1.0))
        self.ln = nn.LayerNorm(64)
        self.fc1, self.fc2, self.head = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 6)

    def forward(self, obs):
        h = obs + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(obs))))
        return self.head(h.mean(dim=1)).reshape(-1, 2, 3)


def make():
    torch.manual_seed(0)
    return Grip().eval()
'''


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    (folder / "bench_grip_policy.py").write_text(POLICY)
    sys.path.insert(0, str(folder))
    out = folder / "quant.json"
    try:
        code = main(["bench", "quant", "--policy", "bench_grip_policy:make", "--formats", "w8a8,w4a16",
                     "--episodes", "1", "--runs", "5", "--json", str(out)])
    finally:
        sys.path.remove(str(folder))
    return code, json.loads(out.read_text())


def test_bench_reports_every_format_and_the_peers(bench_run, capsys):
    code, result = bench_run
    assert code == 0
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "w8a8", "w4a16", "ort quantize_static", "torch dynamic int8"]
    assert rows["fp32"]["size_ratio"] == 1.0 and rows["fp32"]["latency_ratio"] == 1.0
    for fmt in ("w8a8", "w4a16"):
        r = rows[fmt]
        assert r["onnx_bytes"] == pytest.approx(r["size_ratio"] * rows["fp32"]["onnx_bytes"], rel=1e-3)
        assert r["ort_p50_ms"] > 0 and r["latency_ratio"] > 0
        assert r["parity_max_abs_error"] < 0.05 and r["sqnr_torch_db"] > 20
        assert set(r["layers"]) == {"fc1", "fc2", "head"} and set(r["layer_sqnr_db"]) == {"fc1", "fc2", "head"}
        assert r["success_torch"] is None and r["success_ort"] is None  # no task speaks this policy's spec
    assert rows["w4a16"]["onnx_bytes"] < rows["w8a8"]["onnx_bytes"] < rows["fp32"]["onnx_bytes"]
    assert rows["w4a16"]["layers"] == {"fc1": "w4a16", "fc2": "w4a16", "head": "w4a16"}
    peer = rows["ort quantize_static"]
    assert "error" not in peer and peer["onnx_bytes"] < rows["fp32"]["onnx_bytes"] and peer["sqnr_ort_db"] > 10
    assert rows["torch dynamic int8"].get("sqnr_torch_db", 0) > 20 or "error" in rows["torch dynamic int8"]
    assert result["calibration"]["samples"] == 8 * 32
    assert {g["goal"].split(" ")[0] for g in result["goals"]} == {"w8a8", "w4a16"}


def test_goals_are_checked_against_the_figures():
    rows = [{"model": "fp32", "success_ort": 0.99, "size_ratio": 1.0, "latency_ratio": 1.0},
            {"model": "w8a8", "success_ort": 0.985, "size_ratio": 0.29, "latency_ratio": 0.8},
            {"model": "w4a16", "success_ort": 0.96, "size_ratio": 0.18, "latency_ratio": 1.5},
            {"model": "ort quantize_static", "success_ort": 0.97}]
    met = {g["goal"]: g["met"] for g in goals(rows)}
    assert met["w8a8 success within 1% of fp32 (ONNX Runtime)"] is True  # 0.5 points
    assert met["w4a16 success within 2% of fp32 (ONNX Runtime)"] is False  # 3 points
    assert met["w8a8 ONNX size <= 30% of fp32"] is True and met["w4a16 ONNX size <= 17% of fp32"] is False
    assert met["w8a8 success >= ONNX Runtime quantize_static's"] is True
    assert next(v for k, v in met.items() if k.startswith("w8a8 ONNX Runtime latency")) is False
    no_task = [{**r, "success_ort": None} for r in rows]
    assert {g["met"] for g in goals(no_task) if "success" in g["goal"]} == {None}  # not measured, not invented


@pytest.mark.parametrize("argv, message", [
    (["--formats", "w8a8,int3"], "--formats: expected a comma-separated subset of w8a8,w8a16,w4a16,fp16,fp8"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--calibration", "kl"], "argument --calibration: invalid choice"),
])
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    assert main(["bench", "quant", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgevla: error: ") and message in err[0]
