"""edgevla's compiled kernels and machine queries, documented.

The compiled module ``edgevla._C`` (built from ``csrc/`` with pybind11) does
not link PyTorch: it reads any object with the buffer protocol (NumPy arrays,
memoryviews; a CPU torch tensor through ``tensor.numpy()``) without copying,
so one binary serves every torch build, including Jetson's. This module is
its public face: the same functions, documented, plus :func:`available`.

Array arguments are validated before any memory is touched; a bad one raises
``TypeError`` (not an array, wrong dtype) or ``ValueError`` (wrong rank, shape,
layout, alignment, read-only or overlapping ``out``). The kernels run without
the GIL.

The ``*_ref`` GEMMs are the scalar references: obvious rather than fast, the
ground truth that every SIMD and CUDA kernel is tested against.

The fast path: weights are packed once with :func:`pack_weight_s8`, then
:func:`gemm_s8s8_f32` runs on the best instruction set this CPU has
(``avx512_vnni``, ``avx2``, ``neon_dot``, else ``generic``), chosen at run time
and forced with :func:`set_isa`, over a fixed pool of :func:`get_num_threads`
threads. Every ISA gives results bit-identical to :func:`gemm_s8s8_f32_ref`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import EdgevlaError

try:
    from . import _C
except ImportError as _error:  # a source checkout that was never built, or a broken install
    _C = None
    _IMPORT_ERROR = f"{type(_error).__name__}: {_error}"
else:
    _IMPORT_ERROR = ""

#: Largest K for which an int32 accumulator of int8 products cannot overflow:
#: the largest product is (-128) * (-128) = 16384, and 131071 * 16384 < 2**31.
GEMM_S8S8_MAX_K = (2**31 - 1) // (128 * 128)


def available() -> bool:
    """Whether the compiled module imported (it is absent only in a broken install)."""
    return _C is not None


def _compiled() -> Any:
    if _C is None:
        raise EdgevlaError(
            f"edgevla's compiled module edgevla._C is not available ({_IMPORT_ERROR}); "
            "reinstall edgevla with `pip install .` from its source tree"
        )
    return _C


def cpu_arch() -> str:
    """The CPU architecture the module was built for: ``"x86_64"`` or ``"aarch64"``."""
    return _compiled().cpu_arch()


def cpu_features() -> dict[str, bool]:
    """Which CPU features kernels may use on this machine, by their /proc/cpuinfo names.

    Every key is always present; features of the other architecture are False.
    x86-64 (cpuid, with xgetbv to confirm the OS saves the AVX / AVX-512
    registers, since a CPU flag alone does not make an instruction safe):
    ``avx2``, ``fma``, ``avx512f``, ``avx512bw``, ``avx512vl``, ``avx512_vnni``,
    ``avx_vnni``. aarch64 (getauxval): ``asimd`` (NEON), ``asimddp`` (SDOT, on
    every Jetson Orin core), ``i8mm`` (SMMLA), ``sve``.
    """
    return _compiled().cpu_features()


def build_info() -> dict[str, Any]:
    """How the compiled module was built, for bug reports and benchmark records.

    Keys: ``version``, ``build_type``, ``system_processor``, ``compiler``,
    ``cxx_flags``, ``sanitizers`` (list), ``pybind11``, ``cuda`` (bool: CUDA
    compiled in), ``cuda_compiler``, ``cuda_flags``, ``cuda_archs`` (list, e.g.
    ``["87", "90"]``), ``cuda_runtime`` (``"static"``); the CUDA strings are
    None without CUDA.
    """
    return _compiled().build_info()


def cuda_devices() -> list[dict[str, Any]]:
    """The CUDA devices this process can use, one dict each.

    Keys: ``index``, ``name``, ``compute_capability`` (``(8, 7)`` on Jetson
    Orin), ``total_memory_bytes``, ``multiprocessor_count``. Returns ``[]``
    when CUDA was not compiled in, or when the CUDA runtime finds no device or
    no driver (the runtime is linked statically, so the module imports on such
    machines). A driver older than the CUDA runtime of the build (see
    ``build_info()["cuda_compiler"]``) also gives ``[]``: the runtime reports
    it with the same error as a missing driver. Any other CUDA failure, such as
    a broken driver, raises ``RuntimeError`` naming the CUDA error.
    """
    return _compiled().cuda_devices()


def gemm_s8s8_s32_ref(a: Any, w: Any, *, out: Any = None) -> np.ndarray:
    """Reference int8 GEMM: ``a @ w.T`` with exact int32 accumulation.

    Args:
        a: int8 (M, K) activations.
        w: int8 (N, K) weights, the ``nn.Linear.weight`` layout (no transpose).
            K may be at most :data:`GEMM_S8S8_MAX_K`, where int32 is exact.
        out: optional int32 (M, N) array to write into; it must be writable
            and share no memory with the inputs.

    Inputs and ``out`` need contiguous rows, not contiguous matrices: a slice
    such as ``big[:, :K]`` is used in place. Returns ``out``, or a new
    C-contiguous int32 (M, N) array.
    """
    return _compiled().gemm_s8s8_s32_ref(a, w, out=out)


def gemm_s8s8_f32_ref(
    a: Any, w: Any, w_scale: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None
) -> np.ndarray:
    """Reference int8 GEMM with the float32 dequantization epilogue.

    Computes ``out[m, n] = act(float32(acc[m, n]) * (a_scale[m or 0] * w_scale[n]) + bias[n])``
    in float32, op by op in that order, where ``acc = a @ w.T`` in int32: symmetric int8 quantization
    with a scale per output channel for the weights and a per-tensor (static)
    or per-token (dynamic) scale for the activations.

    Args:
        a: int8 (M, K) activations.
        w: int8 (N, K) weights.
        w_scale: float32 (N,), one scale per output channel.
        a_scale: float32; one value (a 0-D array or shape (1,)) for a
            per-tensor scale, or shape (M,) for one scale per token (row of a).
        bias: float32 (N,), or None.
        act: ``"none"``, ``"relu"`` or ``"gelu_tanh"`` (GELU in its tanh form,
            PyTorch's ``approximate="tanh"``, with tanh evaluated by a rational
            approximation within a few ulp; csrc/epilogue_math.h).
        out: optional float32 (M, N) array to write into, as in
            :func:`gemm_s8s8_s32_ref`.

    Returns ``out``, or a new C-contiguous float32 (M, N) array.
    """
    return _compiled().gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act, out=out)


def pack_weight_s8(w: Any, w_scale: Any) -> np.ndarray:
    """Packs an int8 weight for :func:`gemm_s8s8_f32`, once, at load time.

    Args:
        w: int8 (N, K), the ``nn.Linear.weight`` layout; K <= :data:`GEMM_S8S8_MAX_K`.
        w_scale: float32 (N,), one scale per output channel.

    Returns a new uint8 array in the ``S8_N16K4`` format of
    ``csrc/packed_formats.h``: a 64-byte header (magic ``b"EVLA"``, format,
    version, block sizes, N, K, section offsets, total length), the weights in
    cells of 16 output channels x 4 k, the scales and the ``128 * rowsum(w)``
    compensation of the VNNI kernel. The same buffer runs on every ISA.
    """
    return _compiled().pack_weight_s8(w, w_scale)


def gemm_s8s8_f32(
    a: Any, packed: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None
) -> np.ndarray:
    """W8A8 GEMM on the active ISA, bit-identical to :func:`gemm_s8s8_f32_ref`.

    Args:
        a: int8 (M, K) activations (rows contiguous, any row stride).
        packed: a weight from :func:`pack_weight_s8`; its header is checked
            (magic, format, version, shape, length) and K must match ``a``.
        a_scale, bias, act, out: as in :func:`gemm_s8s8_f32_ref`; ``out`` must
            share no memory with any input (the packed buffer included).

    Returns ``out``, or a new float32 (M, N) array.
    """
    return _compiled().gemm_s8s8_f32(a, packed, a_scale, bias, act=act, out=out)


def quantize_per_token(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric int8 quantization, one scale per row (token).

    ``scale = max|x[m]| / 127`` and ``q = clip(round_half_even(x * (127 / max|x[m]|)), -127, 127)``,
    so ``x ~= q * scale[:, None]``; rows with ``max|x| < 2**-100`` (all-zero
    rows included) give zeros. Returns ``(q int8 (M, K), scale float32 (M,))``.
    Raises ValueError when ``x`` holds a NaN or an infinity.
    """
    return _compiled().quantize_per_token(x)


def set_isa(name: str) -> None:
    """Forces the kernels of one instruction set, for tests and benchmarks.

    ``name`` is one of :func:`compiled_isas` (``"generic"``, ``"avx2"``,
    ``"avx512_vnni"`` on x86-64, ``"neon_dot"`` on aarch64), or ``"auto"``
    for the best this CPU runs (the default). Raises ValueError for a name not
    compiled in or one this CPU cannot run.
    """
    _compiled().set_isa(name)


def get_isa() -> str:
    """The instruction set whose kernels run now."""
    return _compiled().get_isa()


def compiled_isas() -> list[str]:
    """The instruction sets compiled into this build, best first, ``"generic"`` last."""
    return _compiled().compiled_isas()


def available_isas() -> list[str]:
    """The compiled instruction sets this CPU can run, best first."""
    return _compiled().available_isas()


def set_num_threads(threads: int) -> None:
    """Sets the kernels' thread count (1 to 1024); the default is one per core.

    The pool is persistent: threads are started here, not per call. Waits for
    a running kernel to finish.
    """
    _compiled().set_num_threads(threads)


def get_num_threads() -> int:
    """The kernels' thread count."""
    return _compiled().get_num_threads()
