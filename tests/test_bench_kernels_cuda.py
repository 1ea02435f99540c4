"""The CUDA benchmark's goal arithmetic (edgevla/bench/kernels_cuda.py), on made-up rows: no GPU needed."""

from __future__ import annotations

from edgevla.bench.kernels_cuda import GEMM_VARIANT_BACKENDS, SMALL_M_VARIANT_BACKENDS, SPARSE_VARIANT_BACKENDS, goals
from edgevla.cuda_kernels import SMALL_M_VARIANTS, SPARSE_VARIANTS, TILED_VARIANTS


def _row(backend: str, us: float, m: int = 256, op: str = "gemm-int8", verified: bool | None = True) -> dict:
    return {"op": op, "M": m, "K": 768, "N": 3072, "shape": "base-vla fc1", "backend": backend, "us": us,
            "gbps": 1.0, "verified": verified}


def _goal(result: list[dict], prefix: str) -> dict:
    return next(g for g in result if g["goal"].startswith(prefix))


def test_variant_backends_name_the_variants():
    assert GEMM_VARIANT_BACKENDS == (*(f"edgevla-{v}" for v in TILED_VARIANTS if v != "tiled"), "edgevla-wgmma",
                                     "edgevla-tcgen05")
    assert SPARSE_VARIANT_BACKENDS == (*(f"edgevla-{v}" for v in SPARSE_VARIANTS if v != "auto"), "edgevla-wgmma")
    assert SMALL_M_VARIANT_BACKENDS == tuple(f"edgevla-{v}" for v in SMALL_M_VARIANTS if v != "small_m")


def test_the_variants_goal_takes_the_fastest_tiled_shape_per_row():
    rows = [_row("cublas-int8", 10.0), _row("edgevla", 20.0), _row("edgevla-tiled_wide", 30.0),
            _row("edgevla-tiled_split_k", 11.0), _row("edgevla-wgmma", 12.0)]
    result = goals(rows, copy_gbps=1000.0)
    assert _goal(result, "int8 GEMM >= 0.9x")["values"] == [{"where": "base-vla fc1 M=256", "ratio": 0.5}]
    variants = _goal(result, "(variants)")
    assert variants["values"] == [{"where": "base-vla fc1 M=256 (edgevla-tiled_split_k)", "ratio": 0.909}]
    assert variants["met"] is True


def test_a_variant_that_failed_its_check_is_not_a_candidate():
    rows = [_row("cublas-int8", 10.0), _row("edgevla", 20.0), _row("edgevla-tiled_split_k", 5.0, verified=False)]
    variants = _goal(goals(rows, copy_gbps=1000.0), "(variants)")
    assert variants["values"] == [{"where": "base-vla fc1 M=256 (edgevla)", "ratio": 0.5}]
    assert variants["met"] is False


def test_int4_bandwidth_goals_are_per_kernel_and_per_timing():
    rows = [dict(_row(backend, 10.0, m=1, op="int4-g32"), shape="large up", gbps=gbps, gbps_chain=chain)
            for backend, gbps, chain in (("edgevla", 1500.0, 2000.0), ("edgevla-streaming", 2400.0, 3000.0),
                                         ("edgevla-tensor_cores", 3200.0, 3600.0))]
    rows.append(dict(_row("torch-fp16", 40.0, m=1, op="linear-fp16"), shape="large up", gbps_chain=3400.0))
    result = goals(rows, copy_gbps=4000.0)
    single = "int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes)"
    chained = "int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes, back to back in one graph: us_chain)"
    assert _goal(result, single)["values"] == [{"where": "large up", "ratio": 0.375}]
    assert _goal(result, chained)["values"] == [{"where": "large up", "ratio": 0.5}]
    streaming = _goal(result, single + " (variant: streaming)")
    assert streaming["values"] == [{"where": "large up", "ratio": 0.6}] and streaming["met"] is False
    assert _goal(result, chained + " (variant: streaming)")["met"] is True
    tensor = _goal(result, single + " (variant: tensor_cores)")
    assert tensor["values"] == [{"where": "large up", "ratio": 0.8}] and tensor["met"] is True
    assert _goal(result, "(comparison) cuBLAS fp16 GEMV")["values"] == [{"where": "large up", "ratio": 0.85}]


def test_rows_without_a_chain_timing_leave_the_chained_goal_out():
    rows = [dict(_row("edgevla", 10.0, m=1, op="int4-g128"), shape="large down", gbps=2000.0)]
    names = [g["goal"] for g in goals(rows, copy_gbps=4000.0)]
    assert names == ["int4 g128 GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes)"]


def test_the_sparse_variants_goal_pits_the_fastest_shapes_against_each_other():
    rows = [_row("edgevla", 20.0), _row("edgevla-tiled_split_k", 12.0),
            _row("edgevla", 30.0, op="2to4-int8"), _row("edgevla-tiled_wide", 8.0, op="2to4-int8")]
    result = goals(rows, copy_gbps=1000.0)
    assert _goal(result, "2:4 sparse int8 >= 1.3x")["values"] == [{"where": "base-vla fc1 M=256", "ratio": 0.667}]
    best = _goal(result, "(variants) the fastest 2:4")
    assert best["values"] == [{"where": "base-vla fc1 M=256 (edgevla-tiled_wide vs edgevla-tiled_split_k)",
                               "ratio": 1.5}]


def test_the_sparse_wgmma_rows_compete_with_the_dense_wgmma_rows():
    rows = [_row("edgevla", 20.0), _row("edgevla-wgmma", 10.0),
            _row("edgevla", 30.0, op="2to4-int8"), _row("edgevla-wgmma", 7.0, op="2to4-int8"),
            _row("edgevla-tiled_wide", 25.0, op="2to4-int8")]
    best = _goal(goals(rows, copy_gbps=1000.0), "(variants) the fastest 2:4")
    assert best["values"] == [{"where": "base-vla fc1 M=256 (edgevla-wgmma vs edgevla-wgmma)", "ratio": 1.429}]
    assert best["met"] is True


def test_the_float32_x_int4_rows_compare_each_kernel_with_auto():
    rows = [dict(_row(backend, us, m=16, op="int4-g32-f32x"))
            for backend, us in (("edgevla", 60.0), ("edgevla-streaming", 40.0), ("edgevla-tensor_cores", 15.0))]
    result = goals(rows, copy_gbps=4000.0)
    assert _goal(result, "(comparison) int4 g32 with float32 x, tensor_cores vs auto")["values"] == \
        [{"where": "base-vla fc1 M=16", "ratio": 4.0}]
    assert _goal(result, "(comparison) int4 g32 with float32 x, streaming vs auto")["values"] == \
        [{"where": "base-vla fc1 M=16", "ratio": 1.5}]


def test_the_small_m_int8_goal_is_also_read_back_to_back():
    rows = [dict(_row("cublas-int8 (M padded to 32)", 8.0, m=16), us_chain=4.0),
            dict(_row("edgevla", 7.0, m=16), us_chain=1.6)]
    result = goals(rows, copy_gbps=1000.0)
    assert _goal(result, "int8 GEMM >= 2x cuBLAS int8 at M <= 16 (cuBLAS padded to M = 32)")["values"] == \
        [{"where": "base-vla fc1 M=16", "ratio": 1.143}]
    chained = _goal(result, "int8 GEMM >= 2x cuBLAS int8 at M <= 16 (cuBLAS padded to M = 32), back to back")
    assert chained["values"] == [{"where": "base-vla fc1 M=16", "ratio": 2.5}] and chained["met"] is True


def test_the_small_m_variants_goal_takes_the_faster_shape_each_way():
    rows = [dict(_row("cublas-int8 (M padded to 32)", 8.0, m=1), us_chain=4.0),
            dict(_row("edgevla", 7.0, m=1), us_chain=1.6), dict(_row("edgevla-small_m_wave", 5.0, m=1), us_chain=1.8)]
    result = goals(rows, copy_gbps=1000.0)
    single = _goal(result, "(variants) the fastest int8 small-M shape per row vs cuBLAS int8 at M <= 16")
    assert single["values"] == [{"where": "base-vla fc1 M=1 (edgevla-small_m_wave)", "ratio": 1.6}]
    chained = _goal(result, "(variants) the fastest int8 small-M shape per row vs cuBLAS int8 at M <= 16, back to back")
    assert chained["values"] == [{"where": "base-vla fc1 M=1 (edgevla)", "ratio": 2.5}] and chained["met"] is True


# ---- the preflight (edgevla/cuda_preflight.py) and the partial JSON ----

def test_preflight_leaves_out_what_crashed_hung_or_lost_its_context_and_keeps_what_it_could_not_probe():
    from edgevla import cuda_preflight as cp

    outcomes = {"int8:auto": (cp.EXIT_OK, "cuda_preflight: int8:auto: ok"),
                "int8:wgmma": (-11, ""),
                "int4:streaming": (None, ""),
                "2to4-int8:tiled_wide": (cp.EXIT_CONTEXT_LOST, "cuda_preflight: 2to4-int8:tiled_wide: "
                                                               "RuntimeError: illegal address; unusable"),
                "int4:tensor_cores": (cp.EXIT_OK, "cuda_preflight: int4:tensor_cores: raised ValueError: M (the "
                                                  "context survived)"),
                "int8:tiled_wide": (1, "Traceback ... ImportError: x")}
    seen = []

    def spawn(key, timeout_s, large):
        seen.append((key, timeout_s, large))
        return outcomes[key]

    unsafe, not_probed = cp.unsafe_variants(outcomes, large=True, timeout_s=30, workers=3, spawn=spawn)
    assert sorted(seen) == sorted((key, 30, True) for key in outcomes)
    assert unsafe == {"int8:wgmma": "killed by signal 11",
                      "int4:streaming": "still running after 30 s (a hang?)",
                      "2to4-int8:tiled_wide": "cuda_preflight: 2to4-int8:tiled_wide: RuntimeError: illegal address; "
                                              "unusable"}
    # a probe that could not even start says nothing about its kernel: kept, and noted
    assert not_probed == {"int8:tiled_wide": "exit status 1 (Traceback ... ImportError: x)"}


def test_preflight_probe_refuses_unknown_keys_and_says_why_it_cannot_run(capsys):
    import subprocess
    import sys

    from edgevla import cuda_preflight as cp
    from edgevla.cuda_kernels import unavailable_reason

    assert cp.probe("int8:nonsense") == cp.EXIT_USAGE
    assert "unknown probe 'int8:nonsense'" in capsys.readouterr().err
    if unavailable_reason():  # no GPU here: the child says so in one line, no traceback
        done = subprocess.run([sys.executable, "-m", "edgevla.cuda_preflight", "int4:streaming"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == cp.EXIT_NO_CUDA
        assert done.stderr.startswith("cuda_preflight: ") and len(done.stderr.strip().splitlines()) == 1


def _probe_with(monkeypatch, outcomes: dict, context_usable: list[bool]) -> list[tuple[int, int, int]]:
    """probe() on the CPU: each shape's calls per ``outcomes[(k, n)]`` (None runs, an exception raises; one
    exception in place of the list: making that shape's operands raises it);
    the context check answers from ``context_usable`` in turn. Returns the calls made, in order."""
    import torch

    from edgevla import cuda_kernels as ck
    from edgevla import cuda_preflight as cp

    made = []

    def calls(key, k, n, dev="cuda"):
        if isinstance(outcomes[(k, n)], Exception):  # making the operands fails
            raise outcomes[(k, n)]

        def call(i, outcome):
            made.append((k, n, i))
            if outcome is not None:
                raise outcome
        return [lambda i=i, o=o: call(i, o) for i, o in enumerate(outcomes[(k, n)])]

    monkeypatch.setattr(ck, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cp, "_calls", calls)
    monkeypatch.setattr(cp, "_context_usable", lambda: context_usable.pop(0))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return made


def test_a_probe_runs_every_call_after_a_refusal_and_stops_where_the_context_is_lost(monkeypatch, capsys):
    from edgevla import cuda_preflight as cp

    (small, middle), large = cp.SHAPES, cp.LARGE_SHAPE
    # refused at the smallest shape: the larger shapes, where the bench times it, are still probed
    made = _probe_with(monkeypatch, {small: [ValueError("N must be a multiple of 128"), None],
                                     middle: [None, None], large: [None]}, context_usable=[True])
    assert cp.probe("int8:tiled_wide", large=True) == cp.EXIT_OK
    assert made == [(*small, 0), (*small, 1), (*middle, 0), (*middle, 1), (*large, 0)]
    said = capsys.readouterr().out.strip()
    assert said == (f"cuda_preflight: int8:tiled_wide: 1 of 5 calls raised, the context survived; first: "
                    f"ValueError: N must be a multiple of 128 at (K, N) = {small}")

    made = _probe_with(monkeypatch, {small: [None], middle: [RuntimeError("an illegal memory access\nmore"), None],
                                     large: [None]}, context_usable=[False])
    assert cp.probe("int8:tiled_wide", large=True) == cp.EXIT_CONTEXT_LOST
    assert made == [(*small, 0), (*middle, 0)]  # nothing runs on a lost context
    err = capsys.readouterr().err.strip()
    assert err == (f"cuda_preflight: int8:tiled_wide: RuntimeError: an illegal memory access at (K, N) = {middle}; "
                   "the CUDA context is unusable after it")

    # making the operands runs kernels too (CUTLASS's compressor): a refusal there passes over that shape only,
    # a lost context ends the probe
    made = _probe_with(monkeypatch, {small: ValueError("K must be a multiple of 32"), middle: [None],
                                     large: RuntimeError("unspecified launch failure")}, context_usable=[True, False])
    assert cp.probe("2to4-int8:wgmma", large=True) == cp.EXIT_CONTEXT_LOST and made == [(*middle, 0)]
    assert "RuntimeError: unspecified launch failure at (K, N) = " in capsys.readouterr().err

    made = _probe_with(monkeypatch, {small: [None], middle: [None], large: [None]}, context_usable=[])
    assert cp.probe("int4:streaming") == cp.EXIT_OK and len(made) == 2  # no large shape unless asked
    assert capsys.readouterr().out.strip() == "cuda_preflight: int4:streaming: ok (2 calls)"


def test_every_preflight_probe_names_a_variant_the_benchmark_times():
    from edgevla.cuda_preflight import PROBES
    from edgevla.cuda_kernels import SMALL_M_VARIANTS, SPARSE_VARIANTS, TILED_VARIANTS, W4_VARIANTS

    named = {f"int8:{v}" for v in ("auto", *SMALL_M_VARIANTS[1:], *TILED_VARIANTS[1:], "wgmma", "tcgen05")}
    named |= {f"2to4-int8:{v}" for v in (*SPARSE_VARIANTS, "wgmma")} | {f"2to4-f16:{v}" for v in SPARSE_VARIANTS}
    named |= {f"int4:{v}" for v in ("auto", *W4_VARIANTS[1:])}
    assert set(PROBES) == named and len(PROBES) == len(named)


def test_probe_keys_follow_the_build_and_the_metadata_layouts(monkeypatch):
    from edgevla import cuda_kernels as ck
    from edgevla.bench import kernels_cuda

    monkeypatch.setattr(ck, "wgmma_available", lambda: True)
    monkeypatch.setattr(ck, "tcgen05_available", lambda: False)
    keys = kernels_cuda._probe_keys({"int8": False, "float16": True})
    assert "int8:wgmma" in keys and "2to4-int8:wgmma" in keys and "int8:tcgen05" not in keys
    assert "2to4-int8:auto" not in keys and "2to4-f16:tiled_wide" in keys
    monkeypatch.setattr(ck, "wgmma_available", lambda: False)
    assert not any(key.endswith(":wgmma") for key in kernels_cuda._probe_keys({"int8": True, "float16": True}))


def test_a_run_cut_short_leaves_the_shapes_it_finished(monkeypatch, tmp_path):
    import argparse
    import json

    import pytest

    from edgevla.bench import kernels_cuda

    def cut_short(*, on_shape, **kwargs):
        on_shape({"benchmark": "kernels-cuda", "complete": False, "rows": [_row("edgevla", 5.0)]})
        raise KeyboardInterrupt  # as `timeout` stopping the step would

    monkeypatch.setattr(kernels_cuda, "bench_kernels_cuda", cut_short)
    path = tmp_path / "out" / "cuda_bench.json"
    with pytest.raises(KeyboardInterrupt):
        kernels_cuda.run(argparse.Namespace(configs=None, ms=None, quick=False, json=str(path)))
    saved = json.loads(path.read_text())
    assert saved["complete"] is False and saved["rows"][0]["backend"] == "edgevla"


def test_each_probe_calls_its_variant_at_every_shape(monkeypatch):
    """The probes' calls, built on the CPU with the kernels replaced by a recorder (no GPU here)."""
    from edgevla import cuda_kernels as ck
    from edgevla import cuda_preflight as cp

    calls = []

    def recorder(name):
        def record(x, weight, *args, variant="auto", **kwargs):
            bias = kwargs.get("bias", args[0] if args else None)
            a_scale = kwargs.get("a_scale")
            calls.append((name, variant, tuple(x.shape), str(x.dtype), "w_scale" in kwargs,
                          None if a_scale is None else a_scale.shape[0], bias is not None))
        return record

    for name in ("gemm_s8s8", "gemm_2to4_s8", "gemm_2to4_f16", "gemm_w4"):
        monkeypatch.setattr(ck, name, recorder(name))
    monkeypatch.setattr(ck, "pack_2to4_s8_wgmma", lambda w: ("wgmma weight", tuple(w.shape)))
    expected = {"int8": "gemm_s8s8", "2to4-int8": "gemm_2to4_s8", "2to4-f16": "gemm_2to4_f16", "int4": "gemm_w4"}
    for key in cp.PROBES:
        op, variant = key.split(":")
        for k, n in cp.SHAPES:
            calls.clear()
            for call in cp._calls(key, k, n, dev="cpu"):
                call()
            assert calls and {c[0] for c in calls} == {expected[op]}, key
            assert {c[1] for c in calls} == {"auto" if variant == "wgmma" and op == "2to4-int8" else variant}, key
            assert all(c[2][1] == k for c in calls), key
            ms = {c[2][0] for c in calls}
            if op == "int4" or variant in ("small_m_wave",):
                assert ms == {1, 16}, key
            elif variant == "auto":
                assert ms == {1, 16, 256}, key
            else:
                assert ms == {256}, key
            if op in ("int8", "2to4-int8"):  # int32 out, and the float32 epilogue: one a_scale, and the
                # policies' per-row a_scale with a bias
                assert {c[4] for c in calls} == {False, True}, key
                assert {(c[2][0], c[5], c[6]) for c in calls if c[4]} == {
                    (m, a, b) for m in ms for a, b in ((1, False), (m, True))}, key
            else:  # with and without a bias
                assert {c[6] for c in calls} == {False, True}, key
            if op == "int4":  # float16 and float32 x
                assert {c[3] for c in calls} == {"torch.float16", "torch.float32"}, key
