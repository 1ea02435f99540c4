"""The packed-weight arena: copies that are exact, aligned and shared, and a model that runs the same either way."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevla.runtime import NativeModel
from edgevla.runtime import model as runtime_model
from edgevla.runtime.weights import ALIGN, HUGE_PAGE, MIN_BYTES, WeightArena, huge_pages_available

RNG = np.random.default_rng(5)

needs_arena = pytest.mark.skipif(not huge_pages_available(), reason="no anonymous mmap with MADV_HUGEPAGE here")


@needs_arena
def test_placed_arrays_are_exact_aligned_copies_in_one_mapping():
    arena = WeightArena()
    arrays = [RNG.integers(0, 256, n, dtype=np.uint8) for n in (MIN_BYTES, 3 * MIN_BYTES + 7, 2 * MIN_BYTES)]
    arrays.append(RNG.normal(0, 1, (384, 96)).astype(np.float32))
    placed = [arena.place(a) for a in arrays]
    for a, p in zip(arrays, placed):
        assert p is not a and p.dtype == a.dtype and p.shape == a.shape and p.flags.c_contiguous
        assert p.flags.writeable and not np.shares_memory(a, p)
        np.testing.assert_array_equal(p, a)
        assert p.ctypes.data % ALIGN == 0
    starts = [p.ctypes.data for p in placed]
    assert starts == sorted(starts) and starts[0] % HUGE_PAGE == 0  # back to back from a 2 MiB boundary
    for p, q in zip(placed, placed[1:]):
        assert not np.shares_memory(p, q)
    assert arena.bytes_placed == sum(a.nbytes for a in arrays)


def test_small_strided_or_disabled_stay_where_they_are():
    arena = WeightArena()
    small = np.ones(MIN_BYTES - 1, np.uint8)
    strided = np.ones((512, 512), np.float32)[:, ::2]
    assert arena.place(small) is small and arena.place(strided) is strided
    off = WeightArena(enabled=False)
    big = np.ones(4 * MIN_BYTES, np.uint8)
    assert off.place(big) is big and off.bytes_placed == 0


@needs_arena
def test_arrays_larger_than_a_chunk_get_their_own_mapping():
    arena = WeightArena()
    first = arena.place(np.full(MIN_BYTES, 3, np.uint8))
    huge = arena.place(np.full(9 * HUGE_PAGE + 1, 7, np.uint8))
    assert huge.ctypes.data % HUGE_PAGE == 0 and not np.shares_memory(first, huge)
    assert (first == 3).all() and (huge == 7).all()


def _two_layer_model(k=256, n=512):
    w1 = RNG.normal(0, 0.1, (k, n)).astype(np.float32)
    w2 = RNG.normal(0, 0.1, (n, k)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_model_runs_bit_identically_with_and_without_the_arena(precision, monkeypatch):
    model = _two_layer_model()
    x = RNG.normal(0, 1, (4, 256)).astype(np.float32)
    with_arena = NativeModel(model, precision=precision)
    monkeypatch.setattr(runtime_model, "WeightArena", lambda: WeightArena(enabled=False))
    without = NativeModel(model, precision=precision)
    assert without._weights.bytes_placed == 0
    if huge_pages_available():
        assert with_arena._weights.bytes_placed >= 256 * 512  # both layers' weights moved (int8 or float)
    for _ in range(2):  # the tracing call, then the planned one
        np.testing.assert_array_equal(with_arena.run({"x": x})["y"], without.run({"x": x})["y"])
