"""Pinning the thread count of the BLAS under NumPy (OpenBLAS) while the native runtime runs.

The runtime's float matmuls (attention scores, float layers) are small, and
OpenBLAS threads them anyway. Its worker threads then compete for the cores
with edgevla's own kernel pool (and anything else on the machine): on the
2-core build host a (16, 384) x (384, 1536) float matmul measured 0.19 ms on
one OpenBLAS thread and 8 to 24 ms with two. The native runner therefore
gives OpenBLAS one thread while it is open and restores the previous count
on close.

OpenBLAS is found among the shared libraries this process has loaded (as
threadpoolctl does, without depending on it); NumPy builds on other BLAS
libraries, or platforms without ``/proc/self/maps``, are left alone.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

# Symbol pairs of the OpenBLAS builds NumPy wheels ship (64-bit-int scipy-openblas) and plain OpenBLAS.
_SYMBOLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
            ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"))


_RTLD_NOLOAD = 4  # <dlfcn.h> on Linux (glibc and musl); ctypes does not export it


@lru_cache(maxsize=1)
def _openblas() -> tuple[object, object] | None:
    import numpy  # noqa: F401  (loads the BLAS library we look for)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()
                    and line.split()[-1].startswith("/")})
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=_RTLD_NOLOAD)  # the copy already loaded, never a second one
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, set_
    return None


def get_blas_threads() -> int | None:
    """OpenBLAS's thread count, or None when NumPy does not use an OpenBLAS we can reach."""
    found = _openblas()
    return None if found is None else int(found[0]())


def set_blas_threads(threads: int) -> int | None:
    """Set OpenBLAS's thread count; returns the previous count (None when there is no OpenBLAS)."""
    found = _openblas()
    if found is None:
        return None
    get, set_ = found
    before = int(get())
    set_(int(threads))
    return before
