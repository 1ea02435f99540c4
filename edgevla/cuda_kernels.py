"""edgevla's CUDA kernels, for PyTorch CUDA tensors (or any ``__cuda_array_interface__`` / DLPack array).

The compiled module links no PyTorch (one binary for every torch build); this
module is the thin PyTorch-facing layer over ``edgevla._C.cuda_*``:

=====================  ==========================================================  ==========================
function               computes                                                    weight as stored
=====================  ==========================================================  ==========================
:func:`gemm_s8s8`      ``A (M,K) int8 . W (N,K)^T int8``: int32 out, or the W8A8   plain ``nn.Linear`` int8
                       epilogue (scales, bias, activation) in float32              (N, K), no packing
:func:`gemm_w4`        ``x (M,K) f16/f32 . dequant(W)^T`` (+ bias, activation),    the CPU's ``W4_N16K8``
                       float32 out, M <= 64                                        buffer, copied unchanged
:func:`gemm_2to4_s8`   2:4 sparse int8 on the sparse tensor cores (mma.sp; on      :func:`pack_2to4_s8`
                       sm_90 also wgmma.sp through CUTLASS)                        (:func:`pack_2to4_s8_wgmma`)
:func:`gemm_2to4_f16`  2:4 sparse float16, float32 accumulation and out            :func:`pack_2to4_f16`
=====================  ==========================================================  ==========================

All run asynchronously on ``stream`` (default: PyTorch's current stream).
int8 results are exact; the float32 W8A8 epilogue is bit-identical to the CPU
reference (``native.gemm_s8s8_f32_ref``); the float16 and int4 kernels sum in
float32 in their own order (errors stated in ``tests/test_cuda_kernels.py``).

Nothing here imports torch at module import: a machine without torch or a
GPU can import it, and :func:`available` says False.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EdgevlaError

try:
    from . import _C
except ImportError as _error:  # a broken install; native.py reports it the same way
    _C = None
    _IMPORT_ERROR = f"{type(_error).__name__}: {_error}"
else:
    _IMPORT_ERROR = ""


def compiled() -> bool:
    """Whether the compiled module has the CUDA kernels (built with nvcc, EDGEVLA_CUDA not OFF)."""
    return _C is not None and bool(_C.cuda_kernels_compiled())


def available() -> bool:
    """Whether the kernels can run here: compiled in, PyTorch sees a CUDA device."""
    if not compiled():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def wgmma_available() -> bool:
    """Whether the ``"wgmma"`` variants (gemm_s8s8, and gemm_2to4_s8 on a :func:`pack_2to4_s8_wgmma` weight) can
    run here: built in (CUTLASS, sm_90a) and the GPU is sm_90."""
    if not available() or not bool(_C.cuda_wgmma_compiled()):
        return False
    import torch

    return torch.cuda.get_device_capability() == (9, 0)


def tcgen05_available() -> bool:
    """Whether gemm_s8s8's ``"tcgen05"`` variant can run here: built in (CUTLASS) for this GPU's sm_110 / sm_100."""
    if not available():
        return False
    import torch

    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor in _C.cuda_tcgen05_ccs()


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str:
    """Why :func:`available` is False, in one line ('' when it is True); asked once per process."""
    if _C is None:
        return f"edgevla._C did not import ({_IMPORT_ERROR})"
    if not _C.cuda_kernels_compiled():
        return "edgevla was built without CUDA (EDGEVLA_CUDA=OFF or no nvcc)"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return ""


def _require() -> Any:
    reason = unavailable_reason()
    if reason:
        raise EdgevlaError(f"the CUDA kernels cannot run: {reason}")
    return _C


def _stream(stream: Any) -> int:
    if stream is not None:
        return stream if isinstance(stream, int) else int(stream.cuda_stream)
    import torch

    return int(torch.cuda.current_stream().cuda_stream)


def _empty(m: int, n: int, dtype: Any, like: Any) -> Any:
    import torch

    return torch.empty((m, n), dtype=dtype, device=like.device)


# ------------------------------------------------------------ W8A8 GEMM ---

#: The tiled kernel's shapes (csrc/cuda/gemm_s8s8_kernels.cuh, TileConfig):
#: ``tiled`` picks the tile by the grid it makes, as ``auto`` does for M > 16;
#: ``tiled_wide`` is 128 x 256 tiles of 64 x 64 warps; ``tiled_split_k`` splits
#: the smaller tiles' K among 2 or 4 warp groups of one block.
TILED_VARIANTS = ("tiled", "tiled_wide", "tiled_split_k")
#: The M <= 16 kernel (csrc/cuda/gemm_s8s8_kernels.cuh, gemm_s8s8_small_m_kernel): ``small_m``, what
#: ``auto`` runs, with 8 warps a block; ``small_m_wave`` with 4, 8 or 16, the most that keep the whole
#: grid resident at once (csrc/cuda/one_wave.cuh).
SMALL_M_VARIANTS = ("small_m", "small_m_wave")


def gemm_s8s8(a: Any, w: Any, *, w_scale: Any = None, a_scale: Any = None, bias: Any = None, act: str = "none",
              variant: str = "auto", out: Any = None, stream: Any = None) -> Any:
    """``out = A . W^T`` on the int8 tensor cores.

    Args:
        a: int8 (M, K) activations, rows contiguous (any row stride).
        w: int8 (N, K) weights, the ``nn.Linear`` layout.
        w_scale, a_scale: float32 (N,) and (1,) or (M,): with them the result
            is float32 ``act(acc * (a_scale * w_scale) + bias)`` (gemm_s8s8.h);
            without them it is the int32 accumulator.
        variant: ``"auto"`` (``small_m`` for M <= 16, else ``tiled``),
            one of :data:`SMALL_M_VARIANTS` (M <= 16), ``"tiled"``, or one of :data:`TILED_VARIANTS`'
            other shapes of the tiled kernel (tests force each; the
            benchmark times them beside ``tiled``), or ``"wgmma"``: CUTLASS's
            Hopper kernel on sm_90 only (:func:`wgmma_available`), int32 out
            or the same float32 epilogue as an epilogue visitor, or
            ``"tcgen05"``: its Blackwell counterpart for Jetson Thor (sm_110)
            and sm_100 builds (:func:`tcgen05_available`).
        out: optional (M, N) int32 / float32 CUDA tensor to write into.
    """
    import torch

    c = _require()
    m, n = a.shape[0], w.shape[0]
    if out is None:
        out = _empty(m, n, torch.float32 if w_scale is not None else torch.int32, a)
    c.cuda_gemm_s8s8(a, w, out, w_scale=w_scale, a_scale=a_scale, bias=bias, act=act, variant=variant,
                     stream=_stream(stream))
    return out


# ---------------------------------------------------- weight-only int4 ----

def _nbytes(*tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class W4Weight:
    """A ``W4_N16K8`` packed weight (``native.pack_w4``) on the GPU."""

    packed: Any  # uint8 CUDA tensor, the whole buffer (header included)
    n: int
    k: int
    group_size: int

    @property
    def nbytes(self) -> int:
        return _nbytes(self.packed)

    @classmethod
    def from_packed(cls, packed: np.ndarray, device: Any = "cuda") -> W4Weight:
        import torch

        from . import native

        info = native.packed_info(packed)
        if info["format"] != "w4_n16k8":
            raise EdgevlaError(f"W4Weight needs a w4_n16k8 buffer, got {info['format']}")
        data = torch.from_numpy(np.ascontiguousarray(packed)).to(device)
        return cls(data, int(info["n"]), int(info["k"]), int(info["group_size"]))


def gemm_w4_max_m() -> int:
    """The most rows :func:`gemm_w4` takes in one call (a GEMV kernel for small batches)."""
    if _C is None:
        raise EdgevlaError(f"edgevla._C did not import ({_IMPORT_ERROR})")
    return int(_C.CUDA_GEMM_W4_MAX_M)


#: The int4 kernels, all for float32 or float16 x: ``cuda_cores`` (float32 FMAs), ``streaming`` (the
#: same arithmetic with the grid resident in one wave) and ``tensor_cores`` (float16 MMAs; float32 x
#: is split into two float16 parts, to 2^-22). ``auto`` runs ``cuda_cores``.
W4_VARIANTS = ("cuda_cores", "streaming", "tensor_cores")


def gemm_w4(x: Any, weight: W4Weight, bias: Any = None, *, act: str = "none", out: Any = None,
            variant: str = "auto", stream: Any = None) -> Any:
    """``out = act(x . dequant(W)^T + bias)``, float32, for x float16 or float32 (M, K), M <= 64.

    ``variant``: ``"auto"`` or one of :data:`W4_VARIANTS`.
    """
    import torch

    c = _require()
    if out is None:
        out = _empty(x.shape[0], weight.n, torch.float32, x)
    c.cuda_gemm_w4(x, weight.packed, out, n=weight.n, k=weight.k, group=weight.group_size, bias=bias, act=act,
                   variant=variant, stream=_stream(stream))
    return out


# ------------------------------------------------------------ 2:4 sparse ---

@dataclass(frozen=True)
class Sparse2to4Weight:
    """A 2:4 sparse weight in mma.sp fragment order (csrc/cuda/pack_2to4_mma.h) on the GPU."""

    values: Any  # int32 CUDA tensor holding the uint32 words (PyTorch's uint32 supports few operations)
    meta: Any    # int32 CUDA tensor, likewise
    n: int
    k: int
    dtype: str   # "int8" or "float16"
    meta_layout: int

    @property
    def nbytes(self) -> int:
        return _nbytes(self.values, self.meta)


def _to_numpy(w: Any) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().cpu().numpy()
    return np.ascontiguousarray(w)


def _words(words: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(words.view(np.int32)).to(device)


def pack_2to4_s8(w: Any, *, meta_layout: int | None = None, device: Any = "cuda") -> Sparse2to4Weight:
    """Packs a 2:4 sparse int8 (N, K) weight (host, C++) and copies it to the GPU."""
    wn = _to_numpy(w)
    layout = meta_layout_s8() if meta_layout is None else meta_layout
    values, meta = _C.pack_2to4_s8_mma(wn, layout)
    return Sparse2to4Weight(_words(values, device), _words(meta, device), wn.shape[0], wn.shape[1], "int8", layout)


def pack_2to4_f16(w: Any, *, meta_layout: int | None = None, device: Any = "cuda") -> Sparse2to4Weight:
    """Packs a 2:4 sparse float16 (N, K) weight (host, C++) and copies it to the GPU."""
    wn = _to_numpy(w).astype(np.float16, copy=False).view(np.uint16)
    layout = meta_layout_f16() if meta_layout is None else meta_layout
    values, meta = _C.pack_2to4_f16_mma(wn, layout)
    return Sparse2to4Weight(_words(values, device), _words(meta, device), wn.shape[0], wn.shape[1], "float16",
                            layout)


@dataclass(frozen=True)
class Sparse2to4WgmmaWeight:
    """A 2:4 sparse int8 weight in CUTLASS's Hopper layout (csrc/cuda/gemm_2to4_sm90.h), for the ``"wgmma"`` variant."""

    values: Any  # int8 CUDA tensor: the kept values, (N, K/2) padded to CUTLASS's alignments, flat
    meta: Any    # uint8 CUDA tensor: the metadata in CUTLASS's reordered layout, flat
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return _nbytes(self.values, self.meta)


def pack_2to4_s8_wgmma(w: Any, *, device: Any = "cuda", stream: Any = None) -> Sparse2to4WgmmaWeight:
    """Compresses a 2:4 sparse int8 (N, K) weight on the GPU with CUTLASS's sm90 compressor (K a multiple of 32).

    ``w`` is a NumPy array or a tensor (copied to ``device`` when it is not a CUDA tensor). The pattern is
    checked on the GPU first; a group of 4 k with more than 2 non-zeros raises ValueError naming it.
    Needs :func:`wgmma_available`.
    """
    import torch

    c = _require()
    if not bool(c.cuda_wgmma_compiled()):
        raise EdgevlaError("pack_2to4_s8_wgmma: this build has no wgmma kernels (it needs sm_90 among "
                           "EDGEVLA_CUDA_ARCHS and the CUTLASS headers at build time)")
    wt = w if isinstance(w, torch.Tensor) and w.is_cuda else torch.from_numpy(_to_numpy(w)).to(device)
    if wt.dtype != torch.int8 or wt.dim() != 2:
        raise EdgevlaError(f"pack_2to4_s8_wgmma: expected an int8 (N, K) weight, got {wt.dtype} {tuple(wt.shape)}")
    n, k = wt.shape
    value_bytes, meta_bytes = c.cuda_2to4_s8_wgmma_sizes(n, k)
    values = torch.empty(value_bytes, dtype=torch.int8, device=wt.device)
    meta = torch.empty(meta_bytes, dtype=torch.uint8, device=wt.device)
    c.cuda_pack_2to4_s8_wgmma(wt, values, meta, stream=_stream(stream))
    return Sparse2to4WgmmaWeight(values, meta, int(n), int(k))


#: The 2:4 kernels' shapes at M > 16: ``auto`` (64-channel tiles) and
#: ``tiled_wide`` (128-channel tiles: each warp two channel tiles). A
#: :class:`Sparse2to4WgmmaWeight` runs ``"wgmma"`` (CUTLASS, sm_90) instead.
SPARSE_VARIANTS = ("auto", "tiled_wide")


def gemm_2to4_s8(x: Any, weight: Sparse2to4Weight | Sparse2to4WgmmaWeight, *, w_scale: Any = None,
                 a_scale: Any = None, bias: Any = None, act: str = "none", out: Any = None, variant: str = "auto",
                 stream: Any = None) -> Any:
    """``out = x . W^T`` for int8 x (M, K) and a 2:4 int8 weight: int32, or float32 with the W8A8 epilogue.

    ``variant``: one of :data:`SPARSE_VARIANTS` for a :class:`Sparse2to4Weight`; ``"wgmma"`` (or ``"auto"``)
    for a :class:`Sparse2to4WgmmaWeight` (CUTLASS's sparse wgmma kernel, sm_90).
    """
    import torch

    c = _require()
    if isinstance(weight, Sparse2to4WgmmaWeight):
        if variant not in ("auto", "wgmma"):
            raise EdgevlaError(f"gemm_2to4_s8: a Sparse2to4WgmmaWeight runs the wgmma variant, not {variant!r}")
        if out is None:
            out = _empty(x.shape[0], weight.n, torch.float32 if w_scale is not None else torch.int32, x)
        c.cuda_gemm_2to4_s8_wgmma(x, weight.values, weight.meta, out, n=weight.n, k=weight.k, w_scale=w_scale,
                                  a_scale=a_scale, bias=bias, act=act, stream=_stream(stream))
        return out
    if variant == "wgmma":
        raise EdgevlaError("gemm_2to4_s8: the wgmma variant takes a weight from pack_2to4_s8_wgmma")
    if out is None:
        out = _empty(x.shape[0], weight.n, torch.float32 if w_scale is not None else torch.int32, x)
    c.cuda_gemm_2to4_s8(x, weight.values, weight.meta, out, n=weight.n, k=weight.k, w_scale=w_scale,
                        a_scale=a_scale, bias=bias, act=act, variant=variant, stream=_stream(stream))
    return out


def gemm_2to4_f16(x: Any, weight: Sparse2to4Weight, bias: Any = None, *, act: str = "none", out: Any = None,
                  variant: str = "auto", stream: Any = None) -> Any:
    """``out = act(x . W^T + bias)`` in float32 for float16 x (M, K) and a 2:4 float16 weight (``variant`` as above)."""
    import torch

    c = _require()
    if out is None:
        out = _empty(x.shape[0], weight.n, torch.float32, x)
    c.cuda_gemm_2to4_f16(x, weight.values, weight.meta, out, n=weight.n, k=weight.k, bias=bias, act=act,
                         variant=variant, stream=_stream(stream))
    return out


#: The 6 ways to keep 2 of a group's 4 values.
_KEEP_2_OF_4 = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], bool)


def random_2to4(rng: np.random.Generator, n: int, k: int, dtype: Any) -> np.ndarray:
    """A random (N, K) weight with exactly 2 non-zeros in every group of 4 k (fewer in a partial last group).

    Each group keeps one of the 6 pairs of positions, uniformly.
    """
    groups = -(-k // 4)
    mask = _KEEP_2_OF_4[rng.integers(0, len(_KEEP_2_OF_4), (n, groups))]
    if np.issubdtype(dtype, np.integer):
        values = rng.integers(-127, 128, (n, groups, 4), dtype=np.int8)
        values[values == 0] = 1
    else:
        # One draw u a value: sign from u < 1/2, magnitude 0.5 + (2u mod 1), uniform on [0.5, 1.5).
        u = 2 * rng.random((n, groups, 4), dtype=np.float32)
        values = np.where(u < 1, -(0.5 + u), u - 0.5)
    w = np.where(mask, values, 0).reshape(n, groups * 4)[:, :k]
    return np.ascontiguousarray(w.astype(dtype))


# The PTX ISA gives the sparse MMA's metadata layout only in figures; the
# packer implements the candidate readings (pack_2to4_mma.h, MetaLayout) and
# probe_meta_layout() asks the GPU which one it computes exactly with. On an
# H200 (sm_90, 2026-12-04, benchmarks/cuda/) that was layout 2 for int8
# (m16n8k64: each lane holds one row's 8 groups) and layout 0 for float16
# (m16n8k32: threads 0, 1 of a quad hold rows g | g + 8 of groups 4t..4t+3);
# those are the defaults, and tests/test_cuda_kernels.py re-checks them on
# every GPU it runs on. EDGEVLA_CUDA_META_LAYOUT_S8 / _F16 override them.
META_LAYOUT_S8 = 2
META_LAYOUT_F16 = 0


def meta_layout_s8() -> int:
    """The metadata layout the int8 sparse tensor cores read (see above)."""
    return int(os.environ.get("EDGEVLA_CUDA_META_LAYOUT_S8", META_LAYOUT_S8))


def meta_layout_f16() -> int:
    """The metadata layout the float16 sparse tensor cores read (see above)."""
    return int(os.environ.get("EDGEVLA_CUDA_META_LAYOUT_F16", META_LAYOUT_F16))


def probe_meta_layout(dtype: str) -> int:
    """The first candidate layout with which this GPU computes a 2:4 product exactly (``"int8"``/``"float16"``)."""
    import torch

    _require()
    rng = np.random.default_rng(1234)
    n, k, m = 32, 128, 8
    if dtype == "int8":
        w = random_2to4(rng, n, k, np.int8)
        x = rng.integers(-127, 128, (m, k)).astype(np.int8)
        ref = x.astype(np.int64) @ w.astype(np.int64).T
        candidates = _C.CUDA_META_LAYOUTS_S8
    else:
        w = random_2to4(rng, n, k, np.float16)
        x = rng.uniform(-1, 1, (m, k)).astype(np.float16)
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        candidates = _C.CUDA_META_LAYOUTS_F16
    xt = torch.from_numpy(x).cuda()
    for layout in range(candidates):
        if dtype == "int8":
            got = gemm_2to4_s8(xt, pack_2to4_s8(w, meta_layout=layout)).cpu().numpy()
            exact = np.array_equal(got.astype(np.int64), ref)
        else:
            got = gemm_2to4_f16(xt, pack_2to4_f16(w, meta_layout=layout)).cpu().numpy()
            exact = np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        if exact:
            return layout
    raise EdgevlaError(f"no candidate mma.sp metadata layout gives the exact {dtype} product on this GPU")
