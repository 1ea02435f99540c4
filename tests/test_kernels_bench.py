"""``edgevla bench kernels``: the rows it writes and the goals it derives from them.

Speed is never asserted (a shared 2-core machine): the tests run a tiny
benchmark for its structure, and check the goal arithmetic on hand-made rows.
"""

from __future__ import annotations

import json

import pytest

from edgevla import native
from edgevla.bench import kernels
from edgevla.cli import main

FIELDS = {"op", "M", "K", "N", "sparsity", "backend", "us", "gops", "gbps", "shape", "cache", "weight_bytes"}


def test_reference_shapes_are_the_policies_linear_layers():
    from edgevla.models.vla import CONFIGS

    shapes = kernels.reference_shapes(("tiny-vla", "base-vla"))
    assert [(s.name, s.k, s.n) for s in shapes] == [
        ("tiny-vla attn", 96, 96), ("tiny-vla fc1", 96, 384), ("tiny-vla fc2", 384, 96),
        ("base-vla attn", 768, 768), ("base-vla fc1", 768, 3072), ("base-vla fc2", 3072, 768)]
    assert CONFIGS["base-vla"].mlp_ratio == 4.0


def test_isa_runs_our_kernels_of_that_table_and_says_so(tmp_path, capsys):
    path = tmp_path / "kernels.json"
    before = native.get_isa()
    assert main(["bench", "kernels", "--quick", "--configs", "tiny-vla", "--ms", "1", "--min-time", "0.001",
                 "--threads", "1", "--no-convs", "--isa", "generic", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["host"]["isa"] == "generic" and result["compute_roofs"] == {}  # no roof loop for scalar code
    assert native.get_isa() == before


def test_cli_runs_the_benchmark_and_writes_json(tmp_path, capsys):
    path = tmp_path / "kernels.json"
    assert main(["bench", "kernels", "--quick", "--configs", "tiny-vla", "--ms", "1", "--min-time", "0.001",
                 "--threads", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert "bench kernels" in capsys.readouterr().out
    assert result["copy_gbps"] > 0 and result["read_gbps"] > 0 and result["host"]["threads"] == 1
    assert result["cold_bytes"] == kernels.MIN_COLD_BYTES  # --quick: the smallest rotation
    assert set(result["compute_roofs"]) == set(kernels.compute_roofs(native.get_isa()))
    assert all(rate > 0 for rate in result["compute_roofs"].values())
    rows = result["rows"]
    assert all(set(row) == FIELDS for row in rows)
    backends = {(row["op"], row["backend"]) for row in rows}
    assert {("linear-f32", "torch-fp32"), ("linear-int8", "torch-dynamic-int8"), ("gemm-int8", "onnxruntime-int8"),
            ("linear-int8", "edgevla"), ("gemm-int8", "edgevla"), ("sparse-f32", "edgevla"), ("sparse-int8", "edgevla"),
            ("2to4-int8", "edgevla"), ("2to4-f32", "edgevla"), ("int4-g32", "edgevla"),
            ("int4-g128", "edgevla"), ("int4-g32", "edgevla-w4a8"), ("int4-g128", "edgevla-w4a8"),
            ("conv-int8", "edgevla"), ("conv-int8", "onnxruntime-int8")} == backends
    assert {row["sparsity"] for row in rows if row["op"] == "sparse-f32"} == {0.5, 0.9}
    convs = {(c.shape.name, c.m, c.k, c.n) for c in kernels.conv_shapes()}
    assert {(row["shape"], row["M"]) for row in rows} == (
        {(f"tiny-vla {layer}", 1) for layer in ("attn", "fc1", "fc2")} | {(name, m) for name, m, _, _ in convs})
    assert {(row["shape"], row["M"], row["K"], row["N"]) for row in rows if row["op"] == "conv-int8"} == convs
    assert result["thread_handoff"] is None  # --threads 1
    for row in rows:
        assert row["us"] > 0
        assert row["gops"] == pytest.approx(2 * row["M"] * row["N"] * row["K"] / row["us"] / 1e3, rel=1e-2, abs=1e-3)
    goal_names = [g["goal"] for g in result["goals"]]
    assert any("int4 g32 GEMV >= 5x" in name for name in goal_names)
    assert "int4 g128 GEMV >= 5x fp32 GEMV at M = 1 (hot weights, W4A8)" in goal_names
    assert any("2:4 int8 GEMV >= 1.4x" in name for name in goal_names)
    assert any("int8 convolution GEMMs >= 1.0x ONNX Runtime" in name for name in goal_names)


def test_conv_shapes_are_the_resnet18_policys_convolutions():
    """Cross-checked on the benchmark's own policy (``benchmarks/cpu/policies/resnet18_policy.py``): every
    convolution, called on a 96x96 image, as (output positions, kernel x input channels, output channels)."""
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu" / "policies" / "resnet18_policy.py"
    spec = importlib.util.spec_from_file_location("resnet18_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    policy, seen = module.bn(), set()

    def record(conv, inputs, output):
        seen.add((output.shape[2] * output.shape[3], conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1],
                  conv.out_channels))

    for layer in policy.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(record)
    with torch.no_grad():
        policy(torch.rand(1, 3, 96, 96), torch.rand(1, 7))
    assert {(c.m, c.k, c.n) for c in kernels.conv_shapes()} == seen
    assert len(kernels.conv_shapes()) == len(seen) == 11


def test_thread_handoff_reports_cost_and_gain_polling_and_asleep():
    assert kernels.thread_handoff(1, 0.001) is None
    spin, least, threads = native.get_thread_spin_us(), native.get_min_macs_per_thread(), native.get_num_threads()
    handoff = kernels.thread_handoff(2, 0.001)
    assert (native.get_thread_spin_us(), native.get_min_macs_per_thread()) == (spin, least)  # restored
    assert native.get_num_threads() == 2
    native.set_num_threads(threads)
    assert handoff["threads"] == 2 and handoff["spin_us"] == spin
    assert set(handoff["overhead_us"]) == set(handoff["speedup"]) == {"polling", "sleeping"}
    assert handoff["small_one_thread_us"] > 0 and all(v > 0 for v in handoff["speedup"].values())


def test_cold_rows_rotate_over_twice_the_last_level_cache(tmp_path, monkeypatch):
    llc = kernels.last_level_cache_bytes()
    assert kernels.cold_bytes() == max(kernels.MIN_COLD_BYTES, 2 * llc)
    # sysfs sizes as Linux writes them ("491520K"), the largest of the levels wins
    root = tmp_path / "cache"
    for i, size in enumerate(["48K", "2048K", "491520K", "garbage"]):
        (root / f"index{i}").mkdir(parents=True)
        (root / f"index{i}" / "size").write_text(size + "\n")
    real_path = kernels.Path
    monkeypatch.setattr(kernels, "Path", lambda p: real_path(str(p).replace("/sys/devices/system/cpu/cpu0/cache",
                                                                            str(root))))
    assert kernels.last_level_cache_bytes() == 491520 * 1024
    assert kernels.cold_bytes() == 2 * 491520 * 1024


@pytest.mark.parametrize("flags, message", [
    (["--ms", "0"], "--ms: expected comma-separated positive integers"),
    (["--configs", "huge-vla"], "--configs: expected a comma-separated subset of tiny-vla,small-vla,base-vla"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--isa", "sse9"], "unknown ISA 'sse9'"),
])
def test_bad_arguments_are_one_line_errors(flags, message, capsys):
    assert main(["bench", "kernels", *flags]) == 2
    assert message in capsys.readouterr().err


def _row(op, backend, us, m=1, shape="base-vla fc1", cache="hot", sparsity=0.0, gbps=1.0):
    return {"op": op, "backend": backend, "us": us, "M": m, "K": 768, "N": 3072, "shape": shape, "cache": cache,
            "sparsity": sparsity, "gbps": gbps}


def test_goals_are_ratios_of_rows_of_the_same_run():
    rows = [
        _row("linear-f32", "torch-fp32", 100.0), _row("int4-g32", "edgevla", 25.0),
        _row("linear-f32", "torch-fp32", 300.0, cache="cold"),
        _row("int4-g32", "edgevla", 50.0, cache="cold", gbps=30.0),
        _row("int4-g32", "edgevla-w4a8", 10.0), _row("int4-g32", "edgevla-w4a8", 40.0, cache="cold", gbps=20.0),
        _row("sparse-f32", "edgevla", 20.0, sparsity=0.9), _row("sparse-f32", "edgevla", 60.0, sparsity=0.5),
        _row("gemm-int8", "edgevla", 30.0), _row("2to4-int8", "edgevla", 20.0, sparsity=0.5),
        _row("linear-int8", "torch-dynamic-int8", 120.0, m=16), _row("linear-int8", "edgevla", 100.0, m=16),
    ]
    goals = {g["goal"]: g for g in kernels.goals(rows, copy_gbps=40.0)}
    hot = goals["int4 g32 GEMV >= 5x fp32 GEMV at M = 1 (hot weights)"]
    assert hot["values"] == [{"where": "base-vla fc1", "ratio": 4.0}] and hot["met"] is False
    assert goals["int4 g32 GEMV >= 5x fp32 GEMV at M = 1 (cold weights)"]["met"] is True
    bandwidth = goals["int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (cold weights)"]
    assert bandwidth["values"] == [{"where": "base-vla fc1", "ratio": 0.75}] and bandwidth["met"] is True
    # The W4A8 kernel's rows get goals of their own.
    assert goals["int4 g32 GEMV >= 5x fp32 GEMV at M = 1 (hot weights, W4A8)"]["values"][0]["ratio"] == 10.0
    assert goals["int4 g32 GEMV >= 5x fp32 GEMV at M = 1 (cold weights, W4A8)"]["values"][0]["ratio"] == 7.5
    bandwidth = goals["int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (cold weights, W4A8)"]
    assert bandwidth["values"] == [{"where": "base-vla fc1", "ratio": 0.5}] and bandwidth["met"] is False
    assert goals["90 % unstructured sparse GEMV >= 4x dense fp32 GEMV (hot weights)"]["values"][0]["ratio"] == 5.0
    assert goals["2:4 int8 GEMV >= 1.4x dense int8 GEMV (hot weights)"]["values"][0]["ratio"] == 1.5
    torch_goal = goals["int8 GEMM >= 1.2x PyTorch dynamic int8 at M >= 16 (linear-int8, quantization included)"]
    assert torch_goal["values"] == [{"where": "base-vla fc1 M=16", "ratio": 1.2}] and torch_goal["met"] is True
    assert not any("ONNX Runtime" in name for name in goals), "goals without rows are left out"


def test_gemm_goal_values_carry_each_sides_fraction_of_its_compute_roof():
    rows = [_row("gemm-int8", "onnxruntime-int8", 120.0, m=16), _row("gemm-int8", "edgevla", 100.0, m=16),
            _row("linear-f32", "torch-fp32", 400.0, m=16), _row("linear-int8", "edgevla", 100.0, m=16)]
    for row, gops in zip(rows, (300.0, 360.0, 90.0, 380.0)):
        row["gops"] = gops
    roofs = {"int8_gops": 400.0, "f32_gflops": 100.0}
    goals = {g["goal"]: g for g in kernels.goals(rows, copy_gbps=40.0, roofs=roofs)}
    onnx = goals["int8 GEMM >= 1.2x ONNX Runtime int8 at M >= 16 (gemm-int8, MatMulInteger)"]
    assert onnx["values"] == [{"where": "base-vla fc1 M=16", "ratio": 1.2,
                               "of_peak": {"edgevla": 0.9, "onnxruntime-int8": 0.75}}]
    fp32 = goals["int8 GEMM about 4x PyTorch fp32 at M >= 16 (linear-int8 vs linear-f32)"]
    assert fp32["values"] == [{"where": "base-vla fc1 M=16", "ratio": 4.0,
                               "of_peak": {"edgevla": 0.95, "torch-fp32": 0.9}}]
    plain = {g["goal"]: g for g in kernels.goals(rows, copy_gbps=40.0)}
    assert "of_peak" not in plain[onnx["goal"]]["values"][0]


ROOF_ISAS = [isa for isa in ("avx512_vnni",) if isa in native.available_isas()]


@pytest.mark.parametrize("isa", ROOF_ISAS)
@pytest.mark.parametrize("iterations", [0, 1, 7, 1000])
def test_roof_loops_compute_what_they_time(isa, iterations):
    # every 4-byte int8 dot product of the loop's operands is -1, 256 of them per iteration;
    # every FMA is acc * 1 + 1, 256 of them per iteration
    assert native.int8_peak_loop(isa, iterations) == -256 * iterations
    assert native.f32_peak_loop(isa, iterations) == 256.0 * iterations


@pytest.mark.parametrize("isa", ROOF_ISAS)
def test_roofs_are_rates(isa):
    assert native.int8_peak_gops(isa, seconds=0.002) > 0
    assert native.f32_peak_gflops(isa, seconds=0.002) > 0
    assert set(kernels.compute_roofs(isa)) == {"int8_gops", "f32_gflops"}


def test_roofs_refuse_what_they_cannot_measure():
    with pytest.raises(ValueError, match="unknown ISA 'nope'"):
        native.int8_peak_loop("nope", 1)
    with pytest.raises(ValueError, match="no compute-roof loop"):
        native.int8_peak_gops("generic")
    with pytest.raises(ValueError, match="no compute-roof loop"):
        native.f32_peak_loop("generic", 1)
    with pytest.raises(ValueError, match="seconds must be in"):
        native.f32_peak_gflops("generic", seconds=0.0)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        native.f32_peak_loop("generic", -1)
    for isa in set(native.compiled_isas()) - set(native.available_isas()):
        with pytest.raises(ValueError, match="this CPU cannot run"):
            native.int8_peak_loop(isa, 1)
    assert kernels.compute_roofs("generic") == {}
