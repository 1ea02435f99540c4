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
    a: Any, w: Any, w_scale: Any, a_scale: Any, bias: Any = None, *, out: Any = None
) -> np.ndarray:
    """Reference int8 GEMM with the float32 dequantization epilogue.

    Computes ``out[m, n] = float32(acc[m, n]) * (a_scale[m or 0] * w_scale[n]) + bias[n]``
    in float32, where ``acc = a @ w.T`` in int32: symmetric int8 quantization
    with a scale per output channel for the weights and a per-tensor (static)
    or per-token (dynamic) scale for the activations.

    Args:
        a: int8 (M, K) activations.
        w: int8 (N, K) weights.
        w_scale: float32 (N,), one scale per output channel.
        a_scale: float32; one value (a 0-D array or shape (1,)) for a
            per-tensor scale, or shape (M,) for one scale per token (row of a).
        bias: float32 (N,), or None.
        out: optional float32 (M, N) array to write into, as in
            :func:`gemm_s8s8_s32_ref`.

    Returns ``out``, or a new C-contiguous float32 (M, N) array.
    """
    return _compiled().gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, out=out)
