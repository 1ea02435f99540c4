"""Rotary position embeddings (csrc/rotary_f32.h): every ISA's copy gives exactly the floats of the exported
graph's arithmetic (x * cos + concat(-x2, x1) * sin in float32) on strided rows, tables repeating over rows."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla import native

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")

ISAS = native.available_isas() if native.available() else []
RNG = np.random.default_rng(14)


def graph(x, cos, sin):
    """What the exporter's seven nodes compute, in float32."""
    h = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., h:], x[..., :h]], axis=-1) * sin


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, p, d", [(1, 1, 2), (16, 16, 32), (64, 16, 32), (6, 3, 10), (48, 6, 64), (0, 1, 4)])
def test_every_isa_is_the_graph_exactly(isa, m, p, d, restore_dispatch):
    native.set_isa(isa)
    x = RNG.normal(0, 3, (m, d + 5)).astype(np.float32)[:, :d]  # rows a stride apart
    angles = RNG.uniform(-3, 3, (p, d)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    buffer = np.full(m * d + 7, np.nan, np.float32)
    out = buffer[: m * d].reshape(m, d)
    assert native.rotary_f32(x, cos, sin, out=out) is out
    assert np.isnan(buffer[m * d:]).all(), "wrote past the end"
    want = graph(x.reshape(-1, p, d), cos, sin).reshape(m, d) if m else np.zeros((0, d), np.float32)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(native.rotary_f32_ref(x, cos, sin), want)


def test_large_inputs_split_over_threads_give_the_same_floats(restore_dispatch):
    x = RNG.normal(0, 1, (4096, 64)).astype(np.float32)
    cos, sin = (RNG.uniform(-1, 1, (64, 64)).astype(np.float32) for _ in range(2))
    native.set_num_threads(1)
    one = native.rotary_f32(x, cos, sin)
    native.set_num_threads(2)
    np.testing.assert_array_equal(native.rotary_f32(x, cos, sin), one)


@pytest.mark.parametrize("fn", ["rotary_f32", "rotary_f32_ref"])
def test_bad_arguments_raise_one_line_errors(fn):
    x, t = np.ones((6, 4), np.float32), np.ones((3, 4), np.float32)
    for args, kwargs, error, message in [
            ((np.ones((6, 5), np.float32), np.ones((3, 5), np.float32), np.ones((3, 5), np.float32)), {}, ValueError,
             "x must have an even width"),
            ((x, np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)), {}, ValueError, "P dividing M = 6"),
            ((x, t, np.ones((3, 2), np.float32)), {}, ValueError, "cos and sin must both be"),
            ((x, t.astype(np.float64), t), {}, TypeError, "cos must have dtype float32"),
            ((x, t, t), {"out": x}, ValueError, "must not share memory")]:
        with pytest.raises(error, match=message) as raised:
            getattr(native, fn)(*args, **kwargs)
        assert "\n" not in str(raised.value)
