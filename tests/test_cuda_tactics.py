"""Kernel tactics (edgevla/cuda_tactics.py): choosing, agreeing, storing; and a CudaLinear's use of them.

Everything here runs without a GPU: the runs and the timer are stand-ins with
known answers (the GPU tests of the same path are in tests/test_cuda_policy.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from edgevla.cli import main
from edgevla.cuda_policy import CudaLinear, use_tactics
from edgevla.cuda_tactics import (FORMAT, Tactic, TacticTable, choose, exact_agreement, relative_agreement,
                                  tactic_key)
from edgevla.errors import EdgevlaError
from edgevla.runtime.linear import LayerChoice

OUT = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7


def _runs(outputs: dict[str, object]):
    """run(variant): the output given for it (an exception instance is raised); counts calls."""
    calls: list[str] = []

    def run(variant: str):
        calls.append(variant)
        value = outputs[variant]
        if isinstance(value, Exception):
            raise value
        return value

    return run, calls


def _timer(times: dict[str, float], log: list[str] | None = None):
    """timer(fn): calls fn once, reads which variant it ran from the run log, returns that variant's time."""
    def timer(fn):
        fn()
        return times[log[-1]]
    return timer


def test_the_fastest_agreeing_variant_wins():
    run, calls = _runs({"auto": OUT, "wide": OUT.clone(), "split": OUT.clone()})
    tactic = choose(["auto", "wide", "split"], run, timer=_timer({"auto": 9.0, "wide": 4.0, "split": 6.0}, calls),
                    agree=exact_agreement)
    assert tactic.variant == "wide"
    assert tactic.timings_us == {"auto": 9.0, "wide": 4.0, "split": 6.0} and tactic.rejected == {}


def test_a_variant_that_disagrees_or_refuses_is_never_chosen():
    wrong = OUT.clone()
    wrong[1, 2] = torch.nextafter(wrong[1, 2], torch.tensor(10.0))  # one ulp: not bit-identical
    run, calls = _runs({"auto": OUT, "wide": wrong, "split": ValueError("gemm_s8s8: refuses\nsecond line")})
    tactic = choose(["auto", "wide", "split"], run, timer=_timer({"auto": 9.0, "wide": 1.0, "split": 1.0}, calls),
                    agree=exact_agreement)
    assert tactic.variant == "auto"
    assert tactic.timings_us == {"auto": 9.0, "wide": None, "split": None}
    assert tactic.rejected == {"wide": "1 of 12 outputs differ from auto's", "split": "ValueError: gemm_s8s8: refuses"}


def test_the_reference_variant_must_run_and_ties_go_to_the_earlier_candidate():
    run, _ = _runs({"auto": RuntimeError("launch failed")})
    with pytest.raises(RuntimeError, match="launch failed"):
        choose(["auto", "wide"], run, timer=lambda fn: 1.0, agree=exact_agreement)
    run, calls = _runs({"auto": OUT, "wide": OUT})
    assert choose(["auto", "wide"], run, timer=_timer({"auto": 2.0, "wide": 2.0}, calls),
                  agree=exact_agreement).variant == "auto"
    with pytest.raises(EdgevlaError, match="no candidate"):
        choose([], run, timer=lambda fn: 1.0, agree=exact_agreement)


def test_exact_agreement_compares_bits_and_relative_agreement_norms():
    assert exact_agreement(OUT, OUT.clone()) is None
    negative_zero = torch.zeros(2)
    assert exact_agreement(negative_zero, -negative_zero) == "2 of 2 outputs differ from auto's"
    nan = torch.tensor([float("nan"), 1.0])
    assert exact_agreement(nan, nan.clone()) is None
    agree = relative_agreement(1e-5)
    assert agree(OUT, OUT * (1 + 1e-7)) is None
    assert "exceeds 1e-05" in agree(OUT, OUT * (1 + 1e-3))
    assert "exceeds" in agree(OUT, torch.full_like(OUT, float("nan")))


def test_a_table_times_a_shape_once_and_keeps_its_choice():
    table = TacticTable("GPU X (sm_87)", timer=lambda fn: float(len(fn())))  # time = output length
    outputs = {"auto": torch.ones(5), "wide": torch.ones(5)}
    run, calls = _runs(outputs)
    key = tactic_key("cuda-s8-dense", 256, 3072, 768)
    assert key == "cuda-s8-dense M=256 N=3072 K=768"
    assert table.variant(key, ("auto", "wide"), run, exact_agreement) == "auto"  # a tie: the earlier
    ran = len(calls)
    assert table.variant(key, ("auto", "wide"), run, exact_agreement) == "auto" and len(calls) == ran
    assert table.tuned == [key]
    table.tactics[key] = Tactic("gone", {"gone": 1.0})  # a variant this version no longer has: timed again
    assert table.variant(key, ("auto", "wide"), run, exact_agreement) == "auto" and len(calls) > ran


def test_a_table_round_trips_and_refuses_another_gpu_or_a_bad_file(tmp_path):
    table = TacticTable("GPU X (sm_87)", {"k1": Tactic("wide", {"auto": 3.0, "wide": 2.0, "split": None},
                                                       {"split": "ValueError: no"})})
    path = tmp_path / "tactics.json"
    table.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["device"] == "GPU X (sm_87)"
    assert [p.name for p in tmp_path.iterdir()] == ["tactics.json"]  # no temporary left behind
    again = TacticTable.load_or_new(path, "GPU X (sm_87)")
    assert again.to_dict() == table.to_dict() and again.tuned == []
    with pytest.raises(EdgevlaError, match="timed on 'GPU X \\(sm_87\\)', this GPU is 'GPU Y"):
        TacticTable.load_or_new(path, "GPU Y (sm_110)")
    assert TacticTable.load_or_new(tmp_path / "new.json", "GPU Y (sm_110)").tactics == {}
    path.write_text("{not json")
    with pytest.raises(EdgevlaError, match="cannot read the kernel tactics"):
        TacticTable.load_or_new(path, "GPU X (sm_87)")
    path.write_text(json.dumps({"format": FORMAT, "device": "GPU X (sm_87)", "tactics": {"k": {"variant": "a"}}}))
    with pytest.raises(EdgevlaError, match="malformed"):
        TacticTable.load_or_new(path, "GPU X (sm_87)")
    with pytest.raises(EdgevlaError, match="cannot write the kernel tactics"):
        table.save(tmp_path / "missing" / "t.json")


class _Scaled(CudaLinear):
    """A stand-in CudaLinear on the CPU: variants compute the same product, 'slow' and 'fast' differ in time only,
    'off' is one ulp off."""

    def __init__(self):
        super().__init__(LayerChoice("l", 4, 3, "float32", 0.0, "dense", "fp32", "test-kernel", "none", "test"), None)
        self.weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 3
        self.ran: list[str] = []

    def variants(self, m):
        return ("auto", "slow", "fast", "off") if m > 1 else ("auto",)

    def _run(self, x, variant="auto"):
        self.ran.append(variant)
        y = x @ self.weight.T
        return torch.nextafter(y, y + 1) if variant == "off" else y


def test_a_layer_runs_the_tables_choice_per_shape():
    layer = _Scaled()
    times = {"auto": 5.0, "slow": 8.0, "fast": 2.0, "off": 0.5}
    layer_table = TacticTable("cpu stand-in", timer=lambda fn: (fn(), times[layer.ran[-1]])[1])
    x = torch.randn(6, 4)
    assert layer.variant_for(x) == "auto" and layer.ran == []  # no table: auto, nothing timed
    use_tactics(torch.nn.Sequential(layer), layer_table)
    y = layer(x)
    assert layer.ran[-1] == "fast"
    torch.testing.assert_close(y, x @ layer.weight.T, rtol=0, atol=0)
    tactic = layer_table.tactics["test-kernel M=6 N=3 K=4"]
    assert tactic.variant == "fast" and tactic.timings_us["off"] is None and "differ" in tactic.rejected["off"]
    layer.ran.clear()
    layer(x)
    assert layer.ran == ["fast"]  # the choice is kept: no timing the second time
    layer(torch.randn(1, 4))
    assert layer.ran[-1] == "auto" and "test-kernel M=1 N=3 K=4" not in layer_table.tactics  # one candidate


class _Int8Standin(_Scaled):
    """The stand-in as an int8 dense layer: its variants are the preflight's (cuda_preflight.probe_key)."""

    def __init__(self):
        super().__init__()
        self.choice = LayerChoice("l", 4, 3, "int8", 0.0, "dense", "int8", "cuda-s8-dense", "none", "test")

    def variants(self, m):
        return ("auto", "tiled_wide", "tiled_split_k") if m > 1 else ("auto",)

    def _run(self, x, variant="auto"):
        assert variant != "tiled_wide", "a variant its preflight left out must never run in this process"
        return super()._run(x, variant)


def test_a_variant_whose_preflight_crashed_is_never_run_and_the_verdict_is_kept(tmp_path):
    layer = _Int8Standin()
    probed: list[list[str]] = []

    def probe(keys):
        probed.append(keys)
        return {"int8:tiled_wide": "killed by signal 11"}, {}

    times = {"auto": 5.0, "tiled_split_k": 3.0}
    table = TacticTable("GPU X (sm_87)", timer=lambda fn: (fn(), times[layer.ran[-1]])[1], probe=probe)
    use_tactics(torch.nn.Sequential(layer), table)
    layer(torch.randn(6, 4))
    layer(torch.randn(9, 4))  # another shape: timed, but no second preflight
    assert probed == [["int8:tiled_split_k", "int8:tiled_wide"]]
    tactic = table.tactics["cuda-s8-dense M=6 N=3 K=4"]
    assert tactic.variant == "tiled_split_k" and tactic.timings_us["tiled_wide"] is None
    assert tactic.rejected == {"tiled_wide": "preflight: killed by signal 11"}
    assert table.preflight == {"int8:tiled_split_k": None, "int8:tiled_wide": "killed by signal 11"}
    path = tmp_path / "tactics.json"
    table.save(path)
    again = TacticTable.load_or_new(path, "GPU X (sm_87)")
    assert again.preflight == table.preflight and again.to_dict() == table.to_dict()
    again._probe = lambda keys: pytest.fail(f"probed again: {keys}")
    again._timer = lambda fn: (fn(), times[layer.ran[-1]])[1]
    use_tactics(torch.nn.Sequential(layer), again)
    layer(torch.randn(12, 4))  # a new shape on a loaded table: the stored verdicts serve
    assert again.tactics["cuda-s8-dense M=12 N=3 K=4"].variant == "tiled_split_k"


def test_cli_kernel_tactics_needs_the_native_backend_on_a_gpu(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert main(["profile", "tiny-vla", "--backend", "onnxruntime", "--runs", "1", "--kernel-tactics", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--kernel-tactics applies to the native backend on a GPU only" in err
    assert main(["profile", "tiny-vla", "--backend", "native", "--device", "cpu", "--runs", "1",
                 "--kernel-tactics", str(path)]) == 2
    assert "--kernel-tactics applies to the native backend on a GPU only" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a usable GPU")
def test_the_gpu_runner_refuses_in_one_line_before_reading_any_tactics(tmp_path):
    from edgevla.backends import CudaNativeRunner
    from edgevla.models.zoo import load_policy

    path = tmp_path / "t.json"
    path.write_text("{not json")  # never read: the missing GPU is reported first
    with pytest.raises(EdgevlaError, match="the native backend cannot run on a GPU here"):
        CudaNativeRunner(load_policy("tiny-vla").policy, tactics_path=path)


def test_every_variant_a_policy_layer_can_try_has_a_preflight_probe():
    from edgevla import cuda_kernels as ck
    from edgevla.cuda_preflight import probe_key

    layer_variants = {
        "cuda-s8-dense": ("auto", *ck.SMALL_M_VARIANTS[1:], "tiled", *ck.TILED_VARIANTS[1:], "wgmma", "tcgen05"),
        "cuda-s8-2:4": (*ck.SPARSE_VARIANTS, "wgmma"),
        "cuda-f16-2:4": ck.SPARSE_VARIANTS,
        "cuda-s4-groupwise": ("auto", *ck.W4_VARIANTS[1:]),
    }
    for kernel, variants in layer_variants.items():
        for variant in variants:
            assert probe_key(kernel, variant) is not None, (kernel, variant)
    assert probe_key("cuda-s8-dense", "tiled") == "int8:auto"  # what auto runs at M > 16
    assert probe_key("cuda-s8-2:4", "wgmma") == "2to4-int8:wgmma"
    assert probe_key("test-kernel", "fast") is None and probe_key("cuda-s8-dense", "nonsense") is None
