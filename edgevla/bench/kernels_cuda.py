"""``edgevla bench kernels --device cuda``: the CUDA kernels on the reference policies' shapes, beside the peers.

For every linear shape of the reference policies (attention ``d x d``, MLP
``d x 4d`` and ``4d x d`` of tiny/small/base-vla) plus two large shapes (4096
x 14336 and back, where a batch-1 layer is memory-bound for real), and M = 1,
16, 256, 1024 tokens, it times in one run, on the same data:

============  ==============================================  ===============================================
op            what runs                                       backends
============  ==============================================  ===============================================
gemm-int8     int8 A, int8 W -> int32 / float32 epilogue      edgevla (int32 out), edgevla-epilogue (float32
                                                              out, scales + bias; edgevla-wgmma-epilogue,
                                                              -tcgen05-epilogue likewise), cublas-int8 (``torch._int_mm``;
                                                              M <= 16 padded to 32 rows, as it requires M > 16);
                                                              M > 16: edgevla-tiled_wide, edgevla-tiled_split_k
                                                              (the tiled kernel's other shapes, int32 out) and,
                                                              when built for the GPU, edgevla-wgmma (CUTLASS,
                                                              sm_90) or edgevla-tcgen05 (CUTLASS, sm_110/100)
linear-fp16   float16 x, float16 W -> float16                 torch-fp16 (``F.linear``, cuBLAS)
2to4-int8     int8 x, 2:4 int8 W -> int32                     edgevla (mma.sp), cusparselt-int8
                                                              (``torch._cslt_sparse_mm``); M > 16:
                                                              edgevla-tiled_wide (128-channel tiles) and, on
                                                              sm_90 when built, edgevla-wgmma (CUTLASS wgmma.sp)
2to4-f16      float16 x, 2:4 float16 W -> float32 / float16   edgevla (mma.sp), cusparselt-fp16; M > 16:
                                                              edgevla-tiled_wide
int4-g32/128  float16 x, int4 W (groups 32/128) -> float32    edgevla (M <= 16; CUDA cores),
                                                              edgevla-streaming (the same arithmetic, the grid
                                                              resident in one wave), edgevla-tensor_cores (the
                                                              float16 MMA kernel)
int4-g32-f32x float32 x (the native backend's int4 layers),   the same three
              int4 W (groups of 32) -> float32
============  ==============================================  ===============================================

Every kernel's output is checked before it is timed: poisoned (NaN, or
0x7f7f7f7f for int32), run, and compared with a reference — int8 exactly with
a float64 product of the same integers on the GPU (exact: every partial sum is
an integer below 2**53), the float32 epilogue with the same float32 operations
in PyTorch, float16 and int4 within a stated relative error of a float64
reference (``tolerance`` in each row). A row whose check fails is kept, with
``verified: false``, and counts against no goal.

Timing: CUDA events around each call, median of 50 calls (20 with
``--quick``) after warm-up; before every call the 256 MiB L2 flush buffer is
overwritten and the inputs rotate over several copies, so every call reads its
weight from HBM (``cache: "cold"``), as a real policy whose layers outrun the
60 MB L2 does. ``us`` times CUDA-graph replays of the call (``timing:
"graph"``: the kernels' device time, as a runtime that replays a captured
policy sees it); ``us_eager`` times the plain Python calls, where the host
overhead of argument checking shows whenever it outlasts the flush.
The copy bandwidth (``copy_gbps``) is a device-to-device copy of 1 GiB,
counting bytes read plus written; the int4 rows' ``gbps`` (weight + io bytes
per second) are expressed as a fraction of it in the goals.

The batch-1 rows of the memory-bound ops (int4 and the fp16 GEMV), and the
int8 rows at M <= 16 (ours and cuBLAS's), also carry ``us_chain``: the same calls, one per input copy,
captured back to back in one CUDA graph after one flush, and the replay's
time divided by the calls. Every call still reads its own weight copy from
HBM, but a lone call's fixed cost (graph launch, first DRAM round trip, the
drain: the ~4-5 us floor of the tiny rows) is paid once per chain, as a
captured policy pays it once per forward. ``gbps_chain`` is the bandwidth a
layer gets inside a policy, the figure comparable with the 1 GiB copy's; the
goals report both.

Before timing anything, each kernel variant runs once in a child process of its
own (:mod:`edgevla.cuda_preflight`): a variant that faults (an illegal address leaves the
CUDA context unusable), hangs, or dies is left out, with a note, rather than
taking every later row with it. The large shapes run first, and with ``--json``
the file is rewritten after every shape (``"complete": false`` until the end), so
a run stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ..errors import EdgevlaError, describe
from . import write_json
from ..cuda_preflight import PROBES, unsafe_variants
from .kernels import CONFIG_NAMES, Shape, _find, _ints, _names, _ratio_goal, _verdict, reference_shapes

DEFAULT_MS = (1, 16, 256, 1024)
#: Backend names of the int8 GEMM's variants timed beside auto at M > 16: the tiled kernel's other
#: shapes (cuda_kernels.TILED_VARIANTS less "tiled", what auto runs) and CUTLASS's wgmma (sm_90) and
#: tcgen05 (sm_110, sm_100) kernels.
GEMM_VARIANT_BACKENDS = ("edgevla-tiled_wide", "edgevla-tiled_split_k", "edgevla-wgmma", "edgevla-tcgen05")
#: ... and at M <= 16: the small-M kernel's one-wave shape (cuda_kernels.SMALL_M_VARIANTS less "small_m").
SMALL_M_VARIANT_BACKENDS = ("edgevla-small_m_wave",)
#: Likewise for the 2:4 int8 GEMM: 128-channel tiles of mma.sp, and CUTLASS's sparse wgmma (sm_90).
SPARSE_VARIANT_BACKENDS = ("edgevla-tiled_wide", "edgevla-wgmma")
#: The int4 kernels timed: (variant, backend name).
W4_BACKENDS = (("auto", "edgevla"), ("streaming", "edgevla-streaming"), ("tensor_cores", "edgevla-tensor_cores"))
LARGE_SHAPES = (Shape("large", "up", 4096, 14336), Shape("large", "down", 14336, 4096))
FLUSH_BYTES = 256 * 2**20
ROTATE_BYTES = 192 * 2**20  # inputs rotate over copies totalling at least this (> 3x L2)
MAX_COPIES = 8


def run(args: argparse.Namespace) -> int:
    configs = _names(args.configs, CONFIG_NAMES, "--configs") if args.configs else None
    ms = _ints(args.ms, "--ms") if args.ms else None
    # With --json, the file is rewritten after every shape (whole, "complete": false until the end).
    save = (lambda partial: write_json(partial, args.json)) if args.json else None
    result = bench_kernels_cuda(quick=args.quick, configs=configs, ms=ms, on_shape=save)
    print_table(result)
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


# ------------------------------------------------------------------ timing ---

class _Timer:
    """Median CUDA-event microseconds of calls, each after an L2 flush.

    ``graph``: each call (one per rotated input copy) is captured once in a
    CUDA graph and the replays are timed, so the figure is the device's time
    for the kernels alone; Python and binding overhead (argument checks, tens
    of microseconds per call) is left out. Without it the eager calls are
    timed, host overhead included wherever it outlasts the flush before it.
    """

    def __init__(self, runs: int):
        import torch

        self.runs = runs
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")

    def __call__(self, call: Callable[[int], Any], before: Callable[[], Any] | None = None, *,
                 copies: int = 1, graph: bool = False) -> float:
        import torch

        for i in range(3):
            call(i)
        torch.cuda.synchronize()
        run = call
        if graph:
            graphs = []
            for i in range(copies):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, capture_error_mode="relaxed"):
                    call(i)
                graphs.append(g)
            run = lambda i: graphs[i % copies].replay()  # noqa: E731
            run(0)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        for i in range(self.runs):
            self.flush.fill_(i)
            if before is not None:
                before()
            starts[i].record()
            run(i)
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3

    def chained(self, call: Callable[[int], Any], copies: int, before: Callable[[], Any] | None = None) -> float:
        """Median microseconds per call of ``copies`` calls (call(i) on input copy i) in one CUDA graph."""
        import torch

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            for i in range(copies):
                call(i)

        def run(_):
            graph.replay()

        return self(run, before) / copies


def copy_bandwidth_gbps(timer: _Timer) -> float:
    """Device-to-device copy of 1 GiB, GB/s of bytes read plus written (median)."""
    import torch

    src = torch.randint(-100, 100, (2**30 // 4,), dtype=torch.int32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * 2**30 / timer(lambda _: dst.copy_(src)) / 1e3


def _copies(nbytes: int) -> int:
    return max(2, min(MAX_COPIES, -(-ROTATE_BYTES // max(nbytes, 1))))


# -------------------------------------------------------------- the rows ---

class _Rows:
    def __init__(self, timer: _Timer):
        self.timer = timer
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, op: str, shape: Shape, m: int, backend: str, call: Callable[[int], Any], *, weight_bytes: int,
            io_bytes: int, check: Callable[[], tuple[bool, float]] | None, tolerance: float | str, copies: int,
            sparsity: float = 0.0, poison: Callable[[], Any] | None = None, chain: bool = False) -> None:
        verified, error = (None, None)
        if check is not None:
            try:
                verified, error = check()
            except (ValueError, RuntimeError, TypeError, EdgevlaError) as e:  # a refusal: noted, not timed
                self.notes.append(f"{shape.name} M={m} {backend} {op}: not run ({describe(e)})")
                return
        eager = self.timer(call, poison)
        try:
            us, timing = self.timer(call, poison, copies=copies, graph=True), "graph"
        except Exception as e:  # noqa: BLE001 — a call that cannot be captured is timed eagerly
            self.notes.append(f"{shape.name} M={m} {backend} {op}: no CUDA graph ({describe(e)}); eager timing")
            import torch

            torch.cuda.synchronize()
            us, timing = eager, "eager"
        chained = None
        if chain and timing == "graph":
            try:
                chained = self.timer.chained(call, copies, poison)
            except Exception as e:  # noqa: BLE001 — the row keeps its single-call figures
                self.notes.append(f"{shape.name} M={m} {backend} {op}: no back-to-back timing ({describe(e)})")
                import torch

                torch.cuda.synchronize()
        self.rows.append({
            "op": op, "M": m, "K": shape.k, "N": shape.n, "sparsity": sparsity, "backend": backend,
            "us": round(us, 3), "gops": round(2 * m * shape.n * shape.k / us / 1e3, 3),
            "gbps": round((weight_bytes + io_bytes) / us / 1e3, 3), "shape": shape.name, "cache": "cold",
            "weight_bytes": weight_bytes, "verified": verified,
            "max_error": None if error is None else float(error), "tolerance": tolerance,
            "timing": timing, "us_eager": round(eager, 3),
            **({} if chained is None else {
                "us_chain": round(chained, 3), "gbps_chain": round((weight_bytes + io_bytes) / chained / 1e3, 3)}),
        })


def _exact(got, ref) -> tuple[bool, float]:
    import torch

    diff = (got.double() - ref).abs()
    bad = int(torch.isnan(got.double()).sum()) if got.is_floating_point() else 0
    err = float(diff.max()) if diff.numel() else 0.0
    return bad == 0 and err == 0.0, err


def _relative(got, ref, tolerance: float) -> tuple[bool, float]:
    import torch

    got = got.double()
    if torch.isnan(got).any():
        return False, float("nan")
    err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
    return err <= tolerance, err


def _cloned(weight, copies: int) -> list:
    return [dataclasses.replace(weight, values=weight.values.clone(), meta=weight.meta.clone()) for _ in range(copies)]


def _dequantize_w4(codes: np.ndarray, scales: np.ndarray, group: int, k: int) -> np.ndarray:
    """float64 (N, K) weight of native.pack_w4's inputs: low nibble first, 4-bit two's complement, times the scale."""
    nibbles = np.stack([codes & 15, codes >> 4], axis=2).reshape(codes.shape[0], -1)[:, :k].astype(np.int64)
    q = (nibbles ^ 8) - 8
    return q * np.repeat(scales.astype(np.float64), group, axis=1)[:, :k]


def _probe_keys(sparse: dict[str, bool]) -> list[str]:
    """The preflight probes (cuda_preflight.PROBES) of what this build and GPU run."""
    from .. import cuda_kernels as ck

    built = {"wgmma": ck.wgmma_available(), "tcgen05": ck.tcgen05_available()}

    def wanted(key: str) -> bool:
        op, variant = key.split(":")
        if not built.get(variant, True):
            return False
        if op == "2to4-int8" and variant != "wgmma":
            return sparse["int8"]
        return sparse["float16"] if op == "2to4-f16" else True

    return [key for key in PROBES if wanted(key)]


def _bench_shape(rows: _Rows, shape: Shape, ms: Sequence[int], rng: np.random.Generator,
                 sparse: dict[str, bool], unsafe: Collection[str] = ()) -> None:
    """The rows of one shape; ``unsafe``: preflight probes (``op:variant``) whose backends are left out."""
    import torch
    import torch.nn.functional as F

    from .. import cuda_kernels as ck
    from .. import native

    def runs(key: str) -> bool:
        return key not in unsafe

    wgmma = ck.wgmma_available()
    cutlass_variants = tuple(v for v, built in (("wgmma", wgmma), ("tcgen05", ck.tcgen05_available()))
                             if built and runs(f"int8:{v}"))
    k, n = shape.k, shape.n
    dev = "cuda"
    w8_np = rng.integers(-127, 128, (n, k), dtype=np.int8)
    w8_np[w8_np == 0] = 1
    w_scale = torch.from_numpy(rng.uniform(1e-3, 1e-2, n).astype(np.float32)).to(dev)
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(dev)
    copies = _copies(n * k)
    w8 = [torch.from_numpy(w8_np).to(dev) for _ in range(copies)]
    w16 = [(w.float() * w_scale[:, None]).half() for w in w8]
    w24_s8_np = ck.random_2to4(rng, n, k, np.int8)
    w24_f16_np = ck.random_2to4(rng, n, k, np.float16)
    sp_s8 = _cloned(ck.pack_2to4_s8(w24_s8_np), copies) if sparse["int8"] else None
    sp_f16 = _cloned(ck.pack_2to4_f16(w24_f16_np), copies) if sparse["float16"] else None
    w24_s8 = torch.from_numpy(w24_s8_np).to(dev)
    sp_wgmma = None
    if wgmma and runs("2to4-int8:wgmma"):
        try:
            sp_wgmma = [ck.pack_2to4_s8_wgmma(w24_s8) for _ in range(copies)]
        except (ValueError, RuntimeError, EdgevlaError) as e:  # a shape CUTLASS refuses: noted
            rows.notes.append(f"{shape.name}: 2:4 int8 wgmma not run: {type(e).__name__}: {e}")
    w24_f16 = torch.from_numpy(w24_f16_np).to(dev)
    cslt_s8 = cslt_f16 = None
    try:
        cslt_s8 = [torch._cslt_compress(w24_s8) for _ in range(copies)]
        cslt_f16 = [torch._cslt_compress(w24_f16) for _ in range(copies)]
    except Exception as e:  # noqa: BLE001 — a peer we cannot run is reported, not fatal
        rows.notes.append(f"{shape.name}: cuSPARSELt compress failed: {type(e).__name__}: {e}")
    w4 = {}
    for group in (32, 128):
        codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
        scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
        packed = ck.W4Weight.from_packed(native.pack_w4(codes, scales, group, k=k))
        weights = [dataclasses.replace(packed, packed=packed.packed.clone()) for _ in range(copies)]
        w4[group] = (torch.from_numpy(_dequantize_w4(codes, scales, group, k)).to(dev), weights)

    for m in ms:
        a_np = rng.integers(-127, 128, (m, k), dtype=np.int8)
        a_np[a_np == 0] = -1
        a = torch.from_numpy(a_np).to(dev)
        a_scale = torch.from_numpy(rng.uniform(1e-3, 1e-2, m).astype(np.float32)).to(dev)
        ref_acc = a.double() @ w8[0].double().T  # exact: integers below 2**53
        out_s32 = torch.empty((m, n), dtype=torch.int32, device=dev)
        out_f32 = torch.empty((m, n), dtype=torch.float32, device=dev)
        int8_io = m * k + 4 * m * n

        def poison_s32():
            out_s32.fill_(0x7F7F7F7F)

        def poison_f32():
            out_f32.fill_(float("nan"))

        def check_s32(fn):
            def check():
                poison_s32()
                fn(0)
                torch.cuda.synchronize()
                return _exact(out_s32, ref_acc)
            return check

        if runs("int8:auto"):
            rows.add("gemm-int8", shape, m, "edgevla", lambda i: ck.gemm_s8s8(a, w8[i % copies], out=out_s32),
                     weight_bytes=n * k, io_bytes=int8_io,
                     check=check_s32(lambda i: ck.gemm_s8s8(a, w8[0], out=out_s32)),
                     tolerance="exact", copies=copies, poison=poison_s32, chain=m <= 16)

        variants = (*ck.TILED_VARIANTS[1:], *cutlass_variants) if m > 16 else ck.SMALL_M_VARIANTS[1:]
        for variant in (v for v in variants if runs(f"int8:{v}")):
            # The int8 GEMM's other shapes, timed beside what auto picks ("edgevla").
            rows.add("gemm-int8", shape, m, f"edgevla-{variant}",
                     lambda i, v=variant: ck.gemm_s8s8(a, w8[i % copies], out=out_s32, variant=v),
                     weight_bytes=n * k, io_bytes=int8_io,
                     check=check_s32(lambda i, v=variant: ck.gemm_s8s8(a, w8[0], out=out_s32, variant=v)),
                     tolerance="exact", copies=copies, poison=poison_s32, chain=m <= 16)

        ref_f32 = (ref_acc.float() * (a_scale[:, None] * w_scale[None, :])) + bias[None, :]

        def check_epilogue(variant="auto"):
            poison_f32()
            ck.gemm_s8s8(a, w8[0], w_scale=w_scale, a_scale=a_scale, bias=bias, out=out_f32, variant=variant)
            torch.cuda.synchronize()
            return _exact(out_f32, ref_f32.double())

        for variant in (v for v in ("auto", *(cutlass_variants if m > 16 else ())) if runs(f"int8:{v}")):
            backend = "edgevla-epilogue" if variant == "auto" else f"edgevla-{variant}-epilogue"
            rows.add("gemm-int8", shape, m, backend,
                     lambda i, v=variant: ck.gemm_s8s8(a, w8[i % copies], w_scale=w_scale, a_scale=a_scale, bias=bias,
                                                      out=out_f32, variant=v),
                     weight_bytes=n * k + 8 * n, io_bytes=m * k + 4 * m * n + 4 * m,
                     check=lambda v=variant: check_epilogue(v),
                     tolerance="exact (float32 ops as PyTorch)", copies=copies, poison=poison_f32)

        m_pad = max(m, 32)
        a_pad = torch.zeros((m_pad, k), dtype=torch.int8, device=dev)
        a_pad[:m] = a
        if k % 8 == 0 and n % 8 == 0:
            def check_cublas():
                got = torch._int_mm(a_pad, w8[0].T)[:m]
                torch.cuda.synchronize()
                return _exact(got, ref_acc)

            w8_t = [w.T for w in w8]
            rows.add("gemm-int8", shape, m, "cublas-int8" + (" (M padded to 32)" if m < 32 else ""),
                     lambda i: torch._int_mm(a_pad, w8_t[i % copies]), weight_bytes=n * k,
                     io_bytes=m_pad * k + 4 * m_pad * n, check=check_cublas, tolerance="exact", copies=copies,
                     chain=m <= 16)

        x16 = (torch.randn((m, k), device=dev) * 0.5).half()
        ref16 = x16.double() @ w16[0].double().T

        def check_fp16():
            got = F.linear(x16, w16[0])
            torch.cuda.synchronize()
            return _relative(got, ref16, 2e-3)

        rows.add("linear-fp16", shape, m, "torch-fp16", lambda i: F.linear(x16, w16[i % copies]), chain=m == 1,
                 weight_bytes=2 * n * k, io_bytes=2 * m * (k + n), check=check_fp16, tolerance=2e-3, copies=copies)

        ref24 = a.double() @ w24_s8.double().T

        # The 2:4 kernels' other tile shape runs only at M > 16 (the same kernel below).
        sparse_variants = (("auto", "edgevla"), ("tiled_wide", "edgevla-tiled_wide")) if m > 16 else (("auto", "edgevla"),)
        for variant, backend in sparse_variants if sp_s8 is not None else ():
            if not runs(f"2to4-int8:{variant}"):
                continue

            def check_sp_s8(variant=variant):
                poison_s32()
                ck.gemm_2to4_s8(a, sp_s8[0], out=out_s32, variant=variant)
                torch.cuda.synchronize()
                return _exact(out_s32, ref24)

            sp_bytes = sp_s8[0].values.numel() * 4 + sp_s8[0].meta.numel() * 4
            rows.add("2to4-int8", shape, m, backend,
                     lambda i, variant=variant: ck.gemm_2to4_s8(a, sp_s8[i % copies], out=out_s32, variant=variant),
                     weight_bytes=sp_bytes, io_bytes=int8_io, check=check_sp_s8, tolerance="exact", sparsity=0.5,
                     copies=copies, poison=poison_s32)
        if sp_wgmma is not None and m > 16:
            def check_sp_wgmma():
                poison_s32()
                ck.gemm_2to4_s8(a, sp_wgmma[0], out=out_s32)
                torch.cuda.synchronize()
                return _exact(out_s32, ref24)

            rows.add("2to4-int8", shape, m, "edgevla-wgmma",
                     lambda i: ck.gemm_2to4_s8(a, sp_wgmma[i % copies], out=out_s32),
                     weight_bytes=sp_wgmma[0].values.numel() + sp_wgmma[0].meta.numel(), io_bytes=int8_io,
                     check=check_sp_wgmma, tolerance="exact", sparsity=0.5, copies=copies, poison=poison_s32)
        if cslt_s8 is not None:
            def cslt_s8_call(i):
                return torch._cslt_sparse_mm(cslt_s8[i % copies], a_pad.T, out_dtype=torch.int32)

            def check_cslt_s8():
                try:
                    got = cslt_s8_call(0).T[:m]
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001
                    rows.notes.append(f"{shape.name} M={m}: cuSPARSELt int8: {type(e).__name__}: {e}")
                    return None, None
                return _exact(got, ref24)

            ok, _ = check_cslt_s8()
            if ok is not None:
                rows.add("2to4-int8", shape, m, "cusparselt-int8" + (" (M padded to 32)" if m < 32 else ""),
                         cslt_s8_call, weight_bytes=n * k // 2 + n * k // 8, io_bytes=m_pad * k + 4 * m_pad * n,
                         check=check_cslt_s8, tolerance="exact", sparsity=0.5, copies=copies)

        ref24f = x16.double() @ w24_f16.double().T

        for variant, backend in sparse_variants if sp_f16 is not None else ():
            if not runs(f"2to4-f16:{variant}"):
                continue

            def check_sp_f16(variant=variant):
                poison_f32()
                ck.gemm_2to4_f16(x16, sp_f16[0], out=out_f32, variant=variant)
                torch.cuda.synchronize()
                return _relative(out_f32, ref24f, 1e-5)

            rows.add("2to4-f16", shape, m, backend,
                     lambda i, variant=variant: ck.gemm_2to4_f16(x16, sp_f16[i % copies], out=out_f32, variant=variant),
                     weight_bytes=sp_f16[0].values.numel() * 4 + sp_f16[0].meta.numel() * 4,
                     io_bytes=2 * m * k + 4 * m * n, check=check_sp_f16, tolerance=1e-5, sparsity=0.5, copies=copies,
                     poison=poison_f32)
        if cslt_f16 is not None:
            x16_pad = torch.zeros((m_pad, k), dtype=torch.float16, device=dev)
            x16_pad[:m] = x16

            def cslt_f16_call(i):
                return torch._cslt_sparse_mm(cslt_f16[i % copies], x16_pad.T)

            def check_cslt_f16():
                try:
                    got = cslt_f16_call(0).T[:m]
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001
                    rows.notes.append(f"{shape.name} M={m}: cuSPARSELt fp16: {type(e).__name__}: {e}")
                    return None, None
                return _relative(got, ref24f, 2e-3)

            ok, _ = check_cslt_f16()
            if ok is not None:
                rows.add("2to4-f16", shape, m, "cusparselt-fp16" + (" (M padded to 32)" if m < 32 else ""),
                         cslt_f16_call, weight_bytes=n * k + n * k // 8, io_bytes=2 * m_pad * (k + n),
                         check=check_cslt_f16, tolerance=2e-3, sparsity=0.5, copies=copies)

        if m <= 16:
            # float16 x (W4A16) for both group sizes; float32 x, what the native backend's int4 layers get, for g32.
            x32 = x16.float()
            cases = [(f"int4-g{group}", x16, group) for group in w4] + [("int4-g32-f32x", x32, 32)]
            for op, xw, group in cases:
                w4_f64, weights = w4[group]
                ref4 = xw.double() @ w4_f64.T
                for variant, backend in ((v, b) for v, b in W4_BACKENDS if runs(f"int4:{v}")):
                    def check_w4(weights=weights, ref4=ref4, variant=variant, xw=xw):
                        poison_f32()
                        ck.gemm_w4(xw, weights[0], out=out_f32, variant=variant)
                        torch.cuda.synchronize()
                        return _relative(out_f32, ref4, 1e-5)

                    rows.add(op, shape, m, backend,
                             lambda i, weights=weights, variant=variant, xw=xw: ck.gemm_w4(
                                 xw, weights[i % copies], out=out_f32, variant=variant),
                             weight_bytes=int(weights[0].packed.numel()),
                             io_bytes=xw.element_size() * m * k + 4 * m * n,
                             check=check_w4, tolerance=1e-5, copies=copies, poison=poison_f32, chain=m == 1)


# ------------------------------------------------------------------- goals ---

def _chained(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row with its back-to-back time as ``us`` (None without one), for :func:`_ratio_goal`."""
    return {**row, "us": row["us_chain"]} if row is not None and "us_chain" in row else None


def goals(rows: list[dict[str, Any]], copy_gbps: float) -> list[dict[str, Any]]:
    ok = [r for r in rows if r["verified"] is not False]
    shapes = sorted({(r["shape"], r["K"], r["N"]) for r in ok}, key=lambda s: (s[1] * s[2], s[0]))
    ms = sorted({r["M"] for r in ok})

    def at(op, backend, shape, m):
        return _find(ok, op=op, backend=backend, shape=shape[0], M=m)

    def cublas(shape, m):
        return at("gemm-int8", "cublas-int8" + (" (M padded to 32)" if m < 32 else ""), shape, m)

    def cslt(op, shape, m):
        name = "cusparselt-int8" if op == "2to4-int8" else "cusparselt-fp16"
        return at(op, name + (" (M padded to 32)" if m < 32 else ""), shape, m)

    big = [m for m in ms if m >= 256]
    small = [m for m in ms if m <= 16]
    def fastest(op, backends, shape, m):
        found = [r for r in (at(op, name, shape, m) for name in backends) if r]
        return min(found, key=lambda r: r["us"]) if found else None

    def fastest_tiled(shape, m):
        """The fastest of the tiled kernel's shapes (auto's pick and the variants) on this row."""
        return fastest("gemm-int8", ("edgevla", *GEMM_VARIANT_BACKENDS), shape, m)

    def fastest_small(shape, m, chained=False):
        """The fastest of the small-M kernel's shapes (auto's and small_m_wave), by us or us_chain."""
        found = [r for r in (at("gemm-int8", name, shape, m) for name in ("edgevla", *SMALL_M_VARIANT_BACKENDS)) if r]
        if chained:
            found = [c for c in map(_chained, found) if c]
        return min(found, key=lambda r: r["us"]) if found else None

    def fastest_sparse(shape, m):
        return fastest("2to4-int8", ("edgevla", *SPARSE_VARIANT_BACKENDS), shape, m)

    result = [
        _ratio_goal(ok, "int8 GEMM >= 0.9x cuBLAS int8 at M >= 256 (int32 out both)", 0.9,
                    [(f"{s[0]} M={m}", cublas(s, m), at("gemm-int8", "edgevla", s, m)) for s in shapes for m in big]),
        _ratio_goal(ok, "(variants) the fastest int8 GEMM shape per row vs cuBLAS int8 at M >= 256: what auto "
                        "would reach picking it", 0.9,
                    [(f"{s[0]} M={m} ({fast['backend']})", cublas(s, m), fast)
                     for s in shapes for m in big if (fast := fastest_tiled(s, m))]),
        _ratio_goal(ok, "int8 GEMM >= 2x cuBLAS int8 at M <= 16 (cuBLAS padded to M = 32)", 2.0,
                    [(f"{s[0]} M={m}", cublas(s, m), at("gemm-int8", "edgevla", s, m)) for s in shapes for m in small]),
        _ratio_goal(ok, "int8 GEMM >= 2x cuBLAS int8 at M <= 16 (cuBLAS padded to M = 32), back to back in one graph "
                        "(us_chain)", 2.0,
                    [(f"{s[0]} M={m}", _chained(cublas(s, m)), _chained(at("gemm-int8", "edgevla", s, m)))
                     for s in shapes for m in small]),
        _ratio_goal(ok, "(variants) the fastest int8 small-M shape per row vs cuBLAS int8 at M <= 16", 2.0,
                    [(f"{s[0]} M={m} ({fast['backend']})", cublas(s, m), fast)
                     for s in shapes for m in small if (fast := fastest_small(s, m))]),
        _ratio_goal(ok, "(variants) the fastest int8 small-M shape per row vs cuBLAS int8 at M <= 16, back to back "
                        "(us_chain)", 2.0,
                    [(f"{s[0]} M={m} ({fast['backend']})", _chained(cublas(s, m)), fast)
                     for s in shapes for m in small if (fast := fastest_small(s, m, chained=True))]),
        _ratio_goal(ok, "2:4 sparse int8 >= 1.3x our dense int8 at M >= 256", 1.3,
                    [(f"{s[0]} M={m}", at("gemm-int8", "edgevla", s, m), at("2to4-int8", "edgevla", s, m))
                     for s in shapes for m in big]),
        _ratio_goal(ok, "(variants) the fastest 2:4 int8 tile shape vs the fastest dense int8 tile shape, M >= 256",
                    1.3, [(f"{s[0]} M={m} ({sparse['backend']} vs {dense['backend']})", dense, sparse)
                          for s in shapes for m in big
                          if (dense := fastest_tiled(s, m)) and (sparse := fastest_sparse(s, m))]),
        _ratio_goal(ok, "(comparison) 2:4 sparse int8 vs cuSPARSELt int8, all M", 1.0,
                    [(f"{s[0]} M={m}", cslt("2to4-int8", s, m), at("2to4-int8", "edgevla", s, m))
                     for s in shapes for m in ms]),
        _ratio_goal(ok, "(comparison) 2:4 sparse fp16 vs cuSPARSELt fp16, all M", 1.0,
                    [(f"{s[0]} M={m}", cslt("2to4-f16", s, m), at("2to4-f16", "edgevla", s, m))
                     for s in shapes for m in ms]),
        _ratio_goal(ok, "(comparison) int8 GEMM vs fp16 torch.matmul, all M", 1.0,
                    [(f"{s[0]} M={m}", at("linear-fp16", "torch-fp16", s, m), at("gemm-int8", "edgevla", s, m))
                     for s in shapes for m in ms]),
    ]
    for group in (32, 128):
        for variant, backend in W4_BACKENDS:
            which = "" if variant == "auto" else f" (variant: {variant})"
            gemv = [r for r in ok if r["op"] == f"int4-g{group}" and r["backend"] == backend and r["M"] == 1
                    and r["shape"].startswith("large")]
            result.append(_verdict(f"int4 g{group} GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes){which}",
                                   0.7, [{"where": r["shape"], "ratio": round(r["gbps"] / copy_gbps, 3)} for r in gemv]))
            result.append(_verdict(f"int4 g{group} GEMV at M = 1 >= 70 % of the copy bandwidth (large shapes, "
                                   f"back to back in one graph: us_chain){which}", 0.7,
                                   [{"where": r["shape"], "ratio": round(r["gbps_chain"] / copy_gbps, 3)}
                                    for r in gemv if "gbps_chain" in r]))
    for variant, backend in W4_BACKENDS[1:]:
        result.append(_ratio_goal(ok, f"(comparison) int4 g32 with float32 x, {variant} vs auto, M <= 16", 1.0,
                                  [(f"{s[0]} M={m}", at("int4-g32-f32x", "edgevla", s, m),
                                    at("int4-g32-f32x", backend, s, m)) for s in shapes for m in small]))
    fp16 = [r for r in ok if r["op"] == "linear-fp16" and r["M"] == 1 and r["shape"].startswith("large")
            and "gbps_chain" in r]
    result.append(_verdict("(comparison) cuBLAS fp16 GEMV at M = 1, back to back: fraction of the copy bandwidth "
                           "(large shapes)", 0.7,
                           [{"where": r["shape"], "ratio": round(r["gbps_chain"] / copy_gbps, 3)} for r in fp16]))
    return [g for g in result if g["count"]]


# ------------------------------------------------------------------- entry ---

def bench_kernels_cuda(*, quick: bool = False, configs: Sequence[str] | None = None,
                       ms: Sequence[int] | None = None, runs: int | None = None, seed: int = 0,
                       preflight: bool = True,
                       on_shape: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the CUDA benchmark; a JSON-ready dict: device, copy bandwidth, rows, goals, notes.

    preflight: first run each kernel variant in a child process (:mod:`edgevla.cuda_preflight`) and leave out
    those that crash, hang or break the CUDA context. on_shape: called after each shape with the
    result so far (``"complete": false``), so a run cut short still leaves its figures.
    """
    from .. import cuda_kernels as ck
    from .. import native

    reason = ck.unavailable_reason()
    if reason:
        raise EdgevlaError(f"bench kernels --device cuda: {reason}")
    import torch

    if quick:
        configs = configs or ("tiny-vla", "base-vla")
        ms = ms or (1, 16, 256)
    configs = tuple(configs or CONFIG_NAMES)
    ms = tuple(ms or DEFAULT_MS)
    runs = runs or (20 if quick else 50)
    # The large shapes first: the int4 goal is read on them alone, and a run cut short keeps them.
    shapes = ([] if quick else list(LARGE_SHAPES)) + reference_shapes(configs)
    timer = _Timer(runs)
    rows = _Rows(timer)
    rng = np.random.default_rng(seed)
    copy_gbps = copy_bandwidth_gbps(timer)
    # The preflight first: nothing of ours runs in this process before its child has survived it. The 2:4
    # probes run on the default metadata layouts, whatever this GPU reads (a wrong layout sums wrong, it
    # reads the same bytes).
    all_sparse = {"int8": True, "float16": True}
    # 8 children at a time: the lent machines have 16 cores, and each probe spends most of its time on the host
    # (starting PyTorch and CUDA, making a large shape's operands)
    unsafe, not_probed = (unsafe_variants(_probe_keys(all_sparse), large=True, workers=8) if preflight
                          else ({}, {}))
    rows.notes.extend(f"preflight: {key} left out: {why}" for key, why in unsafe.items())
    rows.notes.extend(f"preflight: {key} could not be probed (kept): {why}" for key, why in not_probed.items())
    sparse, layouts = {}, {}
    for dtype, default in (("int8", ck.meta_layout_s8()), ("float16", ck.meta_layout_f16())):
        layouts[dtype], sparse[dtype] = None, False
        probe = f"2to4-{'int8' if dtype == 'int8' else 'f16'}:auto"
        if probe in unsafe:
            rows.notes.append(f"2:4 {dtype} kernel not benchmarked: its preflight probe {probe} failed")
            continue
        try:
            layouts[dtype] = ck.probe_meta_layout(dtype)
        except Exception as e:  # noqa: BLE001 — no layout, or a launch error: the other kernels still run
            rows.notes.append(f"2:4 {dtype} kernel not benchmarked: {describe(e)}")
            continue
        sparse[dtype] = layouts[dtype] == default
        if not sparse[dtype]:
            rows.notes.append(f"2:4 {dtype} kernel not benchmarked: this GPU reads metadata layout "
                              f"{layouts[dtype]}, the default is {default}")
    props = torch.cuda.get_device_properties(0)

    def result(complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "kernels-cuda",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "complete": complete,
            "device": {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "multiprocessors": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "l2_mb": round(getattr(props, "L2_cache_size", 0) / 1e6, 1)},
            "software": {"torch": torch.__version__, "cuda": torch.version.cuda,
                         "cusparselt": torch.backends.cusparselt.version()
                         if torch.backends.cusparselt.is_available() else None,
                         "edgevla_cuda_archs": native.build_info()["cuda_archs"],
                         "meta_layout_s8": layouts["int8"], "meta_layout_f16": layouts["float16"]},
            "copy_gbps": round(copy_gbps, 1),
            "runs_per_row": runs,
            "preflight": {"ran": preflight, "left_out": unsafe, "not_probed": not_probed},
            "rows": list(rows.rows),
            "goals": goals(rows.rows, copy_gbps),
            "notes": list(rows.notes),
        }

    for shape in shapes:
        try:
            _bench_shape(rows, shape, ms, rng, sparse, unsafe)
        except Exception as e:  # noqa: BLE001 — keep the other shapes' figures; the note says what broke
            rows.notes.append(f"{shape.name}: benchmark stopped: {type(e).__name__}: {e}")
        torch.cuda.empty_cache()
        if on_shape is not None:
            on_shape(result(complete=False))
    return result(complete=True)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    dev = result["device"]
    table = Table(title=f"bench kernels --device cuda · {dev['name']} · copy bandwidth {result['copy_gbps']:.0f} GB/s "
                        f"(read + write) · L2 flushed before every call · us: CUDA-graph replay")
    for column in ("shape", "op", "M", "K", "N", "backend", "us", "eager us", "GOP/s", "GB/s", "check"):
        table.add_column(column, justify="left" if column in ("shape", "op", "backend", "check") else "right")
    for r in result["rows"]:
        check = {True: "ok", False: "FAILED", None: "-"}[r["verified"]]
        if r["max_error"] not in (None, 0.0):
            check += f" ({r['max_error']:.1e})"
        table.add_row(r["shape"], r["op"], str(r["M"]), str(r["K"]), str(r["N"]), r["backend"], f"{r['us']:,.1f}", f"{r['us_eager']:,.1f}",
                      f"{r['gops']:,.0f}", f"{r['gbps']:,.0f}", check)
    console = Console(highlight=False, width=200)
    console.print(table)
    for g in result["goals"]:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        console.print(f"goal: {g['goal']}: geomean {g['geomean']}, min {g['min']} "
                      f"(met on {g['met_count']}/{g['count']}) — {verdict}")
    for note in result["notes"]:
        console.print(f"note: {note}")
