"""ONNX ops that write at, pick out or rank positions: ScatterND, ScatterElements, TopK, CumSum.

What a policy's exported forward makes of Python indexing and sorting:
``y[:, 2:4] = v`` (an in-place slice assignment) exports as ``ScatterND``,
``x.scatter(dim, index, src)`` as ``ScatterElements``, ``topk`` / ``sort`` /
``argsort`` as ``TopK``, ``cumsum`` (position ids from a mask) as ``CumSum``.
Semantics follow the ONNX operator specification (opsets 11 to 21), checked
against ONNX Runtime op by op in ``tests/test_runtime_ops.py``. Indices out of
range are refused with the node named, never read or written out of bounds.
"""

from __future__ import annotations

import numpy as np

from .ops import OpContext, _fail, register

_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _reduction(c: OpContext):
    name = c.text("reduction", "none")
    if name not in _REDUCTIONS:
        raise _fail(c, f"unknown reduction {name!r}")
    return _REDUCTIONS[name]


def _checked(c: OpContext, indices: np.ndarray, sizes) -> np.ndarray:
    """``indices`` with negatives wrapped by ``sizes`` (broadcast along the last axis or per element)."""
    sizes = np.asarray(sizes, np.int64)
    wrapped = np.where(indices < 0, indices + sizes, indices)
    if ((wrapped < 0) | (wrapped >= sizes)).any():
        raise _fail(c, "an index is out of range")
    return wrapped


@register("ScatterND")
def _scatter_nd(c: OpContext):
    """``data`` with ``updates`` written (or reduced) at the positions ``indices[..., :k]`` address; repeated
    positions under ``reduction: none`` keep the last update, as ONNX Runtime does."""
    reduce = _reduction(c)

    def scatter_nd(data, indices, updates):
        k = indices.shape[-1]
        if k > data.ndim or updates.shape != indices.shape[:-1] + data.shape[k:]:
            raise _fail(c, f"updates {updates.shape} do not fit indices {indices.shape} into data {data.shape}")
        where = tuple(np.moveaxis(_checked(c, indices, data.shape[:k]), -1, 0))
        out = data.copy()
        if reduce is None:
            out[where] = updates
        else:
            reduce.at(out, where, updates)
        return out
    return scatter_nd


@register("ScatterElements")
def _scatter_elements(c: OpContext):
    """``data`` with ``updates[i]`` written (or reduced) at ``indices[i]`` along ``axis``."""
    axis, reduce = int(c.attr("axis", 0)), _reduction(c)

    def scatter_elements(data, indices, updates):
        if indices.shape != updates.shape or indices.ndim != data.ndim:
            raise _fail(c, f"indices {indices.shape} and updates {updates.shape} must match, of data's rank")
        a = axis % data.ndim
        where = list(np.indices(indices.shape, sparse=True))
        where[a] = _checked(c, indices, data.shape[a])
        out = data.copy()
        if reduce is None:
            out[tuple(where)] = updates
        else:
            reduce.at(out, tuple(where), updates)
        return out
    return scatter_elements


@register("TopK")
def _top_k(c: OpContext):
    """The ``k`` largest (``largest: 0``: smallest) values along ``axis`` and their indices; ties keep the
    lower index first. ``sorted: 0`` is answered sorted too (ONNX leaves the order open)."""
    axis, largest = int(c.attr("axis", -1)), bool(c.attr("largest", 1))

    def top_k(x, k):
        n = int(np.asarray(k).reshape(-1)[0])
        a = axis % x.ndim
        if not 0 <= n <= x.shape[a]:
            raise _fail(c, f"k = {n} for an axis of {x.shape[a]}")
        keys = -x if largest and x.dtype.kind in "fi" else x
        if largest and x.dtype.kind not in "fi":
            raise _fail(c, f"largest values of a {x.dtype} input")
        order = np.argsort(keys, axis=a, kind="stable")
        indices = np.take(order, np.arange(n), axis=a)
        return np.take_along_axis(x, indices, a), indices.astype(np.int64)
    return top_k


@register("CumSum")
def _cum_sum(c: OpContext):
    """Running sums along the axis input; ``exclusive`` starts at 0, ``reverse`` runs from the end."""
    exclusive, reverse = bool(c.attr("exclusive", 0)), bool(c.attr("reverse", 0))

    def cum_sum(x, axis):
        a = int(np.asarray(axis).reshape(-1)[0]) % x.ndim
        y = np.flip(x, a) if reverse else x
        total = np.cumsum(y, axis=a, dtype=x.dtype)
        if exclusive:
            total = np.concatenate([np.zeros_like(np.take(total, [0], axis=a)),
                                    np.take(total, np.arange(x.shape[a] - 1), axis=a)], axis=a)
        return np.ascontiguousarray(np.flip(total, a) if reverse else total)
    return cum_sum
