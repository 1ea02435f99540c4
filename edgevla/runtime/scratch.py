"""Float32 work arrays shared by all ops of the runtime: one set per shape and thread, so they stay in cache.

An op takes its work arrays with :func:`work_arrays` at the start of a call
and is done with them when it returns; while it holds them it must not call
another op that takes work arrays of the same shape. Ops run one at a time,
so every LayerNormalization, QuantizeLinear, GELU and attention of a model
shares the same few arrays of each shape, and they stay in the L1/L2 cache
from one op to the next. Arrays of its own per node (as before) made ~100
separate buffers over small-vla, each cold whenever its node ran: a
(32, 384) LayerNormalization took 2.5x as long with its work array evicted.

Per thread: NumPy releases the GIL inside ufuncs, so two threads running two
models at once must not share work arrays.
"""

from __future__ import annotations

import threading

import numpy as np

#: Shapes kept per thread before the cache is dropped (shapes change only with the batch size).
MAX_SHAPES = 64

_local = threading.local()


def work_arrays(shape: tuple[int, ...], count: int) -> tuple[np.ndarray, ...]:
    """``count`` distinct float32 arrays of ``shape``, the same ones on every call from this thread."""
    cache: dict[tuple[int, ...], tuple[np.ndarray, ...]] | None = getattr(_local, "arrays", None)
    if cache is None:
        cache = _local.arrays = {}
    arrays = cache.get(shape)
    if arrays is None or len(arrays) < count:
        if arrays is None and len(cache) >= MAX_SHAPES:
            cache.clear()
        have = arrays or ()
        arrays = cache[shape] = have + tuple(np.empty(shape, np.float32) for _ in range(count - len(have)))
    return arrays if len(arrays) == count else arrays[:count]
