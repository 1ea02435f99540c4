"""The CUDA benchmark's goal arithmetic (edgevla/bench/kernels_cuda.py), on made-up rows: no GPU needed."""

from __future__ import annotations

from edgevla.bench.kernels_cuda import GEMM_VARIANT_BACKENDS, SPARSE_VARIANT_BACKENDS, goals
from edgevla.cuda_kernels import SPARSE_VARIANTS, TILED_VARIANTS


def _row(backend: str, us: float, m: int = 256, op: str = "gemm-int8", verified: bool | None = True) -> dict:
    return {"op": op, "M": m, "K": 768, "N": 3072, "shape": "base-vla fc1", "backend": backend, "us": us,
            "gbps": 1.0, "verified": verified}


def _goal(result: list[dict], prefix: str) -> dict:
    return next(g for g in result if g["goal"].startswith(prefix))


def test_variant_backends_name_the_variants():
    assert GEMM_VARIANT_BACKENDS == (*(f"edgevla-{v}" for v in TILED_VARIANTS if v != "tiled"), "edgevla-wgmma",
                                     "edgevla-tcgen05")
    assert SPARSE_VARIANT_BACKENDS == (*(f"edgevla-{v}" for v in SPARSE_VARIANTS if v != "auto"), "edgevla-wgmma")


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


def test_int4_bandwidth_goals_are_per_kernel():
    rows = [dict(_row(backend, 10.0, m=1, op="int4-g32"), shape="large up", gbps=gbps)
            for backend, gbps in (("edgevla", 1500.0), ("edgevla-tensor_cores", 3200.0))]
    result = goals(rows, copy_gbps=4000.0)
    assert _goal(result, "int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes)")["values"] == \
        [{"where": "large up", "ratio": 0.375}]
    tensor = _goal(result, "int4 g32 GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes) (variant")
    assert tensor["values"] == [{"where": "large up", "ratio": 0.8}] and tensor["met"] is True


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
