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
