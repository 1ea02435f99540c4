"""The CUDA kernels on the GPU, each against its reference (skipped without a GPU).

Error budgets:
- int8 GEMM, dense and 2:4: exact (int32 accumulators compared with int64 numpy);
- the float32 W8A8 epilogue: bit-identical to native.gemm_s8s8_f32_ref (the
  kernels spell out csrc/epilogue_math.h's operations with rounded intrinsics);
- int4 GEMV: relative error (L2 norm) <= 1e-5 against native.gemm_w4_f32_ref
  (float32 accumulation in another order; K <= 4096 here);
- 2:4 float16: relative error <= 1e-5 against a float64 product of the same
  float16 inputs (products are exact in float32, sums are float32).
Every output is poisoned first and followed by guard elements that must be
unchanged afterwards; every check synchronizes, so faults surface in the test
that caused them. Random data, never zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgevla import cuda_kernels as ck
from edgevla import native

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not ck.available(), reason=ck.unavailable_reason() or "ok")]

GUARD = 64
POISON_S32 = 0x7F7F7F7F
SENTINEL = -0x2A2A2A2B


def _torch():
    import torch

    return torch


def _guarded(m: int, n: int, dtype):
    """An (M, N) output with GUARD sentinel elements after it, poisoned."""
    torch = _torch()
    buf = torch.empty(m * n + GUARD, dtype=dtype, device="cuda")
    if dtype == torch.int32:
        buf[: m * n] = POISON_S32
        buf[m * n:] = SENTINEL
    else:
        buf[: m * n] = float("nan")
        buf[m * n:] = -1234.5
    return buf, buf[: m * n].view(m, n)


def _guards_intact(buf, m: int, n: int) -> bool:
    torch = _torch()
    tail = buf[m * n:].cpu()
    return bool((tail == (SENTINEL if buf.dtype == torch.int32 else -1234.5)).all())


def _int8(rng, shape, lo=-128, hi=127):
    x = rng.integers(lo, hi + 1, shape, dtype=np.int16).astype(np.int8)
    x[x == 0] = 3
    return x


# The tiled variant picks 128 x 128 tiles for (1536, 96, 1536), 64 x 64 for (700, 256, 1000) and
# (768, 130, 776) (odd K: byte-wise loads), 32 x 32 for the others (132 multiprocessors).
# small_m_wave picks 4 warps a block for (3, 1000, 17), 8 for (2, 2100, 40), 16 for (16, 4096, 24) below.
SHAPES = [(1, 257, 33), (1, 64, 8), (3, 1000, 17), (16, 64, 8), (16, 768, 3072), (5, 31, 7),
          (17, 129, 250), (130, 256, 136), (256, 513, 200), (64, 768, 768), (1, 0, 5),
          (1536, 96, 1536), (700, 256, 1000), (768, 130, 776), (2, 2100, 40)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("variant", ["auto", *ck.SMALL_M_VARIANTS, *ck.TILED_VARIANTS])
def test_gemm_s8s8_int32_is_exact(m, k, n, variant):
    torch = _torch()
    if variant in ck.SMALL_M_VARIANTS and m > 16:
        pytest.skip(f"{variant} takes M <= 16")
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, w = _int8(rng, (m, k)), _int8(rng, (n, k))
    buf, out = _guarded(m, n, torch.int32)
    ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant, out=out)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), a.astype(np.int64) @ w.astype(np.int64).T)
    assert _guards_intact(buf, m, n)


def _cutlass_variant_or_skip(variant: str) -> None:
    if variant == "wgmma" and not ck.wgmma_available():
        pytest.skip("the wgmma variant needs a build with CUTLASS and an sm_90 GPU")
    if variant == "tcgen05" and not ck.tcgen05_available():
        pytest.skip("the tcgen05 variant needs a build with CUTLASS for this GPU's sm_110 / sm_100")


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("variant", ["wgmma", "tcgen05"])
def test_gemm_s8s8_cutlass_is_exact_or_refuses_the_shape(m, k, n, variant):
    """CUTLASS's Hopper and Blackwell kernels (builds with CUTLASS, on their GPUs): exact int32, or a one-line
    refusal of TMA-unfit shapes."""
    torch = _torch()
    _cutlass_variant_or_skip(variant)
    rng = np.random.default_rng(m * 7919 + k * 31 + n + 1)
    a, w = _int8(rng, (m, k)), _int8(rng, (n, k))
    buf, out = _guarded(m, n, torch.int32)
    if k % 16 or n % 4:
        with pytest.raises(ValueError, match=f"{variant} variant needs 16-byte aligned"):
            ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant, out=out)
        return
    ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant, out=out)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), a.astype(np.int64) @ w.astype(np.int64).T)
    assert _guards_intact(buf, m, n)


@pytest.mark.parametrize("variant", ["wgmma", "tcgen05"])
def test_gemm_s8s8_cutlass_refuses_other_gpus_and_unaligned_outputs(variant):
    torch = _torch()
    a = torch.ones((32, 64), dtype=torch.int8, device="cuda")
    w = torch.ones((32, 64), dtype=torch.int8, device="cuda")
    scale = torch.ones(32, device="cuda")
    if not (ck.wgmma_available() if variant == "wgmma" else ck.tcgen05_available()):
        with pytest.raises(ValueError, match=f"{variant} variant"):
            ck.gemm_s8s8(a, w, variant=variant)
        return
    out = torch.empty(32 * 32 + 1, device="cuda")[1:].view(32, 32)  # 4-byte, not 16-byte, aligned
    with pytest.raises(ValueError, match="16-byte aligned A, W and C"):
        ck.gemm_s8s8(a, w, w_scale=scale, a_scale=scale[:1], variant=variant, out=out)
    # an empty K as strided views (row stride 64): TMA takes no empty dimension
    with pytest.raises(ValueError, match=f"the {variant} variant takes K > 0"):
        ck.gemm_s8s8(a[:, :0], w[:, :0], variant=variant)


@pytest.mark.parametrize("variant", [*ck.SMALL_M_VARIANTS, *ck.TILED_VARIANTS])
def test_gemm_s8s8_saturation_values(variant):
    torch = _torch()
    m, k, n = 16, 4096, 24
    a = np.full((m, k), -128, np.int8)
    w = np.full((n, k), -128, np.int8)
    w[1::2] = 127
    out = ck.gemm_s8s8(torch.from_numpy(a).cuda(), torch.from_numpy(w).cuda(), variant=variant)
    np.testing.assert_array_equal(out.cpu().numpy(), a.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.parametrize("m,k,n", [(1, 257, 33), (7, 96, 384), (16, 768, 768), (40, 130, 96), (256, 384, 1536)])
@pytest.mark.parametrize("act", ["none", "relu", "gelu_tanh", "gelu_erf"])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("variant", [*ck.SMALL_M_VARIANTS, *ck.TILED_VARIANTS, "wgmma", "tcgen05"])
def test_gemm_s8s8_epilogue_is_bit_identical_to_the_cpu_reference(m, k, n, act, per_token, variant):
    torch = _torch()
    if variant in ck.SMALL_M_VARIANTS and m > 16:
        pytest.skip(f"{variant} takes M <= 16")
    if variant in ("wgmma", "tcgen05"):
        _cutlass_variant_or_skip(variant)
        if k % 16 or n % 4:
            pytest.skip("CUTLASS's TMA needs K % 16 == 0 and N % 4 == 0 (refusals tested above)")
    rng = np.random.default_rng(m + 13 * k + n)
    a, w = _int8(rng, (m, k)), _int8(rng, (n, k))
    w_scale = rng.uniform(1e-4, 1e-3, n).astype(np.float32)
    a_scale = rng.uniform(1e-3, 1e-2, m if per_token else 1).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    ref = native.gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act)
    buf, out = _guarded(m, n, torch.float32)
    cuda = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    ck.gemm_s8s8(cuda(a), cuda(w), w_scale=cuda(w_scale), a_scale=cuda(a_scale), bias=cuda(bias), act=act,
                 variant=variant, out=out)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32))
    assert _guards_intact(buf, m, n)


def test_gemm_s8s8_row_strided_and_unaligned_operands():
    torch = _torch()
    rng = np.random.default_rng(5)
    m, k, n = 20, 100, 40
    big_a = torch.from_numpy(_int8(rng, (m, k + 3))).cuda()
    big_w = torch.from_numpy(_int8(rng, (n + 1, k + 5))).cuda()
    a, w = big_a[:, 1:k + 1], big_w[1:, 2:k + 2]  # odd offsets and strides: the byte-wise path
    for variant in ("auto", *ck.TILED_VARIANTS):
        out = ck.gemm_s8s8(a, w, variant=variant)
        ref = a.cpu().numpy().astype(np.int64) @ w.cpu().numpy().astype(np.int64).T
        np.testing.assert_array_equal(out.cpu().numpy(), ref)
    out = ck.gemm_s8s8(a[:4], w, variant="small_m")
    np.testing.assert_array_equal(out.cpu().numpy(), a[:4].cpu().numpy().astype(np.int64) @
                                  w.cpu().numpy().astype(np.int64).T)


def test_cuda_array_interface_objects_are_accepted():
    torch = _torch()

    class Cai:  # only __cuda_array_interface__, no DLPack
        def __init__(self, t):
            self.t = t
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    rng = np.random.default_rng(9)
    a, w = _int8(rng, (3, 64)), _int8(rng, (8, 64))
    out = torch.empty((3, 8), dtype=torch.int32, device="cuda")
    from edgevla import _C

    _C.cuda_gemm_s8s8(Cai(torch.from_numpy(a).cuda()), Cai(torch.from_numpy(w).cuda()), Cai(out),
                      stream=torch.cuda.current_stream())
    np.testing.assert_array_equal(out.cpu().numpy(), a.astype(np.int64) @ w.astype(np.int64).T)


def test_bad_inputs_raise_one_line_errors():
    torch = _torch()
    from edgevla import _C

    a = torch.ones((4, 64), dtype=torch.int8, device="cuda")
    w = torch.ones((8, 64), dtype=torch.int8, device="cuda")
    out = torch.empty((4, 8), dtype=torch.int32, device="cuda")
    with pytest.raises(TypeError, match="a: expected a CUDA array"):
        _C.cuda_gemm_s8s8(a.cpu(), w, out)
    with pytest.raises(TypeError, match="w: expected int8, got float32"):
        _C.cuda_gemm_s8s8(a, w.float(), out)
    with pytest.raises(ValueError, match="w: expected 64 columns"):
        _C.cuda_gemm_s8s8(a, w[:, :32], out)
    with pytest.raises(ValueError, match="out: expected 4 rows"):
        _C.cuda_gemm_s8s8(a, w, out[:3])
    with pytest.raises(ValueError, match="float32 out needs w_scale"):
        _C.cuda_gemm_s8s8(a, w, out.float())
    with pytest.raises(ValueError, match="variant"):
        _C.cuda_gemm_s8s8(a, w, out, variant="fast")
    for variant in ck.SMALL_M_VARIANTS:
        with pytest.raises(ValueError, match=f"{variant} variant takes M <= 16"):
            _C.cuda_gemm_s8s8(torch.ones((17, 64), dtype=torch.int8, device="cuda"), w,
                              torch.empty((17, 8), dtype=torch.int32, device="cuda"), variant=variant)
    shared = torch.empty(64 * 8, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="out overlaps a"):
        _C.cuda_gemm_s8s8(shared[:256].view(4, 64), w, shared.view(torch.int32)[:32].view(4, 8))
    with pytest.raises(TypeError, match="stream"):
        _C.cuda_gemm_s8s8(a, w, out, stream="default")


# -------------------------------------------------------------- int4 GEMV ---

# K = 2050 and 4096+: the streaming and tensor-core kernels pick 8 and 16 warps a block there.
# N = 8464 (M <= 8) and 4240 (M <= 16): the tensor-core kernel's blocks of 4 and 2 channel tiles on
# GPUs of up to 132 SMs.
@pytest.mark.parametrize("m,k,n", [(1, 257, 33), (1, 768, 3072), (3, 96, 384), (16, 4096, 40), (64, 130, 17),
                                   (2, 8, 16), (24, 200, 48), (9, 4100, 24), (2, 2050, 24), (1, 96, 8464),
                                   (12, 64, 4240)])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("x_dtype,variant", [("float32", "auto"), ("float16", "cuda_cores"), ("float32", "streaming"),
                                             ("float16", "streaming"), ("float16", "tensor_cores"),
                                             ("float32", "tensor_cores")])
def test_gemm_w4_matches_the_reference(m, k, n, group, x_dtype, variant):
    torch = _torch()
    rng = np.random.default_rng(m * 31 + k + n + group)
    codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float16 if x_dtype == "float16" else np.float32)
    weight = ck.W4Weight.from_packed(native.pack_w4(codes, scales, group, k=k))
    buf, out = _guarded(m, n, torch.float32)
    ck.gemm_w4(torch.from_numpy(x).cuda(), weight, torch.from_numpy(bias).cuda(), act="relu", out=out, variant=variant)
    torch.cuda.synchronize()
    ref = native.gemm_w4_f32_ref(x.astype(np.float32), codes, scales, group, bias, act="relu").astype(np.float64)
    got = out.cpu().numpy().astype(np.float64)
    assert not np.isnan(got).any()
    assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)
    assert _guards_intact(buf, m, n)


@pytest.mark.parametrize("variant", ["tensor_cores", "streaming"])
def test_gemm_w4_float32_rows_of_any_magnitude(variant):
    """Rows from 1e-30 to 1e30 (and one of zeros): the tensor-core kernel's float16 split scales per unit and row."""
    torch = _torch()
    rng = np.random.default_rng(5)
    m, k, n, group = 7, 300, 40, 32
    codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32) * np.array([1e-30, 1e-6, 1.0, 0.0, 7e4, 1e20, 1e30],
                                                                  np.float32)[:, None]
    weight = ck.W4Weight.from_packed(native.pack_w4(codes, scales, group, k=k))
    got = ck.gemm_w4(torch.from_numpy(x).cuda(), weight, variant=variant).cpu().numpy().astype(np.float64)
    ref = native.gemm_w4_f32_ref(x, codes, scales, group).astype(np.float64)
    assert np.isfinite(got).all()
    for row in range(m):
        assert np.linalg.norm(got[row] - ref[row]) <= 1e-5 * np.linalg.norm(ref[row]), row


def test_gemm_w4_refuses_a_short_buffer_and_large_m():
    torch = _torch()
    from edgevla import _C

    packed = torch.zeros(100, dtype=torch.uint8, device="cuda")
    x = torch.ones((1, 64), device="cuda")
    out = torch.empty((1, 16), device="cuda")
    with pytest.raises(ValueError, match="packed: expected a contiguous uint8 buffer"):
        _C.cuda_gemm_w4(x, packed, out, n=16, k=64, group=32)
    with pytest.raises(ValueError, match="M must be <= 64"):
        _C.cuda_gemm_w4(torch.ones((65, 64), device="cuda"), packed, torch.empty((65, 16), device="cuda"),
                        n=16, k=64, group=32)
    with pytest.raises(ValueError, match="variant must be 'auto', 'cuda_cores', 'streaming' or 'tensor_cores'"):
        _C.cuda_gemm_w4(x, packed, out, n=16, k=64, group=32, variant="mma")


# ------------------------------------------------------------- 2:4 sparse ---

def test_the_default_metadata_layouts_are_the_ones_this_gpu_reads():
    assert ck.probe_meta_layout("int8") == ck.META_LAYOUT_S8
    assert ck.probe_meta_layout("float16") == ck.META_LAYOUT_F16


# M > 16 with K % 16 == 0 runs the shared-memory tiled kernel, (33, 130, 24) the per-warp one.
@pytest.mark.parametrize("m,k,n", [(1, 64, 16), (5, 200, 40), (8, 96, 384), (16, 768, 768), (33, 130, 24),
                                   (256, 512, 128), (100, 192, 200), (1, 3, 5)])
@pytest.mark.parametrize("variant", ck.SPARSE_VARIANTS)
def test_gemm_2to4_s8_is_exact(m, k, n, variant):
    torch = _torch()
    rng = np.random.default_rng(m + k * 3 + n * 7)
    w = ck.random_2to4(rng, n, k, np.int8)
    x = _int8(rng, (m, k))
    buf, out = _guarded(m, n, torch.int32)
    ck.gemm_2to4_s8(torch.from_numpy(x).cuda(), ck.pack_2to4_s8(w), out=out, variant=variant)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), x.astype(np.int64) @ w.astype(np.int64).T)
    assert _guards_intact(buf, m, n)


@pytest.mark.parametrize("m,k,n", [(1, 130, 33), (24, 768, 96)])
@pytest.mark.parametrize("act", ["none", "gelu_tanh", "gelu_erf"])
@pytest.mark.parametrize("variant", ck.SPARSE_VARIANTS)
def test_gemm_2to4_s8_epilogue_is_bit_identical_to_the_cpu_reference(m, k, n, act, variant):
    torch = _torch()
    rng = np.random.default_rng(m * k + n)
    w = ck.random_2to4(rng, n, k, np.int8)
    x = _int8(rng, (m, k))
    w_scale = rng.uniform(1e-4, 1e-3, n).astype(np.float32)
    a_scale = rng.uniform(1e-3, 1e-2, m).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    cuda = lambda v: torch.from_numpy(v).cuda()  # noqa: E731
    out = ck.gemm_2to4_s8(cuda(x), ck.pack_2to4_s8(w), w_scale=cuda(w_scale), a_scale=cuda(a_scale),
                          bias=cuda(bias), act=act, variant=variant)
    ref = native.gemm_s8s8_f32_ref(x, w, w_scale, a_scale, bias, act=act)
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("m,k,n", [(1, 64, 16), (5, 45, 40), (16, 768, 3072), (40, 130, 24), (256, 512, 128),
                                   (100, 200, 72)])
@pytest.mark.parametrize("variant", ck.SPARSE_VARIANTS)
def test_gemm_2to4_f16_within_stated_error(m, k, n, variant):
    torch = _torch()
    rng = np.random.default_rng(m + k + n)
    w = ck.random_2to4(rng, n, k, np.float16)
    x = rng.uniform(-1, 1, (m, k)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float32)
    buf, out = _guarded(m, n, torch.float32)
    ck.gemm_2to4_f16(torch.from_numpy(x).cuda(), ck.pack_2to4_f16(w), torch.from_numpy(bias).cuda(), out=out,
                     variant=variant)
    torch.cuda.synchronize()
    ref = x.astype(np.float64) @ w.astype(np.float64).T + bias
    got = out.cpu().numpy().astype(np.float64)
    assert not np.isnan(got).any()
    assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)
    assert _guards_intact(buf, m, n)


def _wgmma_or_skip():
    if not ck.wgmma_available():
        pytest.skip("the wgmma variant needs a build with CUTLASS and an sm_90 GPU")


# K % 32 == 0 (the compressed rows' 16-byte TMA pieces); N % 4 == 0; the padding CUTLASS adds (N to 64
# for the metadata, K to 128) is crossed by N = 100, K = 96 and K = 800.
@pytest.mark.parametrize("m,k,n", [(1, 64, 16), (17, 96, 100), (256, 512, 128), (130, 800, 1536), (1024, 768, 3072),
                                   (33, 4096, 64)])
def test_gemm_2to4_s8_wgmma_is_exact(m, k, n):
    """CUTLASS's sparse wgmma on a weight its compressor packed on the GPU: exact int32, guards intact."""
    torch = _torch()
    _wgmma_or_skip()
    rng = np.random.default_rng(m * 5 + k * 3 + n)
    w = ck.random_2to4(rng, n, k, np.int8)
    w[:: 7, : 4] = 0  # whole zero groups and groups of one non-zero: the compressor's corner cases
    w[1:: 7, 2:4] = 0
    x = _int8(rng, (m, k))
    buf, out = _guarded(m, n, torch.int32)
    weight = ck.pack_2to4_s8_wgmma(w)
    ck.gemm_2to4_s8(torch.from_numpy(x).cuda(), weight, out=out, variant="wgmma")
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), x.astype(np.int64) @ w.astype(np.int64).T)
    assert _guards_intact(buf, m, n)


@pytest.mark.parametrize("m,k,n", [(1, 96, 100), (24, 768, 96), (300, 256, 520)])
@pytest.mark.parametrize("act", ["none", "gelu_tanh", "gelu_erf"])
@pytest.mark.parametrize("per_token", [False, True])
def test_gemm_2to4_s8_wgmma_epilogue_is_bit_identical_to_the_cpu_reference(m, k, n, act, per_token):
    torch = _torch()
    _wgmma_or_skip()
    rng = np.random.default_rng(m * k + n + per_token)
    w = ck.random_2to4(rng, n, k, np.int8)
    x = _int8(rng, (m, k))
    w_scale = rng.uniform(1e-4, 1e-3, n).astype(np.float32)
    a_scale = rng.uniform(1e-3, 1e-2, m if per_token else 1).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    cuda = lambda v: torch.from_numpy(v).cuda()  # noqa: E731
    buf, out = _guarded(m, n, torch.float32)
    ck.gemm_2to4_s8(cuda(x), ck.pack_2to4_s8_wgmma(w), w_scale=cuda(w_scale), a_scale=cuda(a_scale), bias=cuda(bias),
                    act=act, out=out)
    torch.cuda.synchronize()
    ref = native.gemm_s8s8_f32_ref(x, w, w_scale, a_scale, bias, act=act)
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32))
    assert _guards_intact(buf, m, n)


def test_pack_2to4_s8_wgmma_refuses_a_dense_group_and_bad_shapes():
    torch = _torch()
    _wgmma_or_skip()
    w = ck.random_2to4(np.random.default_rng(3), 64, 128, np.int8)
    w[37, 40:44] = [1, 2, 3, 0]
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 37 has more than 2 non-zeros in k 40\.\.43"):
        ck.pack_2to4_s8_wgmma(w)
    with pytest.raises(ValueError, match="K a multiple of 32"):
        ck.pack_2to4_s8_wgmma(ck.random_2to4(np.random.default_rng(4), 64, 48, np.int8))
    weight = ck.pack_2to4_s8_wgmma(ck.random_2to4(np.random.default_rng(5), 64, 128, np.int8))
    x = torch.ones((8, 128), dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="int32 out takes no bias or activation"):
        ck.gemm_2to4_s8(x, weight, bias=torch.ones(64, device="cuda"))
    with pytest.raises(ck.EdgevlaError, match="runs the wgmma variant"):
        ck.gemm_2to4_s8(x, weight, variant="tiled_wide")
    with pytest.raises(ValueError, match="x: expected 128 columns"):
        ck.gemm_2to4_s8(torch.ones((8, 96), dtype=torch.int8, device="cuda"), weight)


def test_gemm_2to4_refuses_mismatched_packing():
    torch = _torch()
    from edgevla import _C

    weight = ck.pack_2to4_s8(ck.random_2to4(np.random.default_rng(0), 16, 64, np.int8))
    x = torch.ones((2, 64), dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="values: expected a contiguous"):
        _C.cuda_gemm_2to4_s8(x, weight.values, weight.meta, torch.empty((2, 32), dtype=torch.int32, device="cuda"),
                             n=32, k=64)
