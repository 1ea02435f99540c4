"""The gated MLP product act(gate) * value (csrc/gated_f32.h): every ISA's copy identical to the baseline one,
within 2e-7 (relative to max(1, |gate|), times |value|) of the float64 meaning, on column halves read in place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgevla import native

pytestmark = pytest.mark.skipif(not native.available(), reason="edgevla._C is not built")

ISAS = native.available_isas() if native.available() else []
RNG = np.random.default_rng(12)
ERF = np.vectorize(math.erf, otypes=[float])


def meaning(gate, activation):
    g = gate.astype(np.float64)
    if activation == "silu":
        return g / (1.0 + np.exp(-np.clip(g, -700, 700)))
    if activation == "gelu_tanh":
        return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
    return 0.5 * g * (1.0 + ERF(g / math.sqrt(2.0)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n", [(1, 1), (3, 7), (8, 352), (5, 33), (64, 257), (0, 4)])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu_erf"])
@pytest.mark.parametrize("with_value", [True, False])
def test_every_isa_is_the_baseline_copy_and_the_meaning(isa, m, n, activation, with_value, restore_dispatch):
    native.set_isa(isa)
    fused = (RNG.standard_normal((m, 2 * n + 3)) * 6).astype(np.float32)  # a fused gate-up output, padded rows
    gate, value = fused[:, :n], (fused[:, n:2 * n] if with_value else None)
    buffer = np.full(m * n + 9, np.nan, np.float32)  # poisoned, then guards
    out = buffer[: m * n].reshape(m, n)
    assert native.gated_f32(gate, value, activation=activation, out=out) is out
    assert np.isnan(buffer[m * n:]).all(), "wrote past the end"
    np.testing.assert_array_equal(out, native.gated_f32_ref(gate, value, activation=activation))
    want = meaning(gate, activation) * (1.0 if value is None else value.astype(np.float64))
    scale = np.maximum(1.0, np.abs(gate)) * (1.0 if value is None else np.abs(value))
    assert np.all(np.abs(out - want) <= 2.5e-7 * scale)


def test_silu_over_its_whole_range_and_at_the_special_values():
    a = np.concatenate([np.linspace(-100, 100, 40001), RNG.standard_normal(10000) * 5]).astype(np.float32)[None]
    got = native.gated_f32(a, None, activation="silu")
    assert np.all(np.abs(got - meaning(a, "silu")) <= 2e-7 * np.maximum(1.0, np.abs(a)))
    special = native.gated_f32(np.array([[np.nan, np.inf, -np.inf, -90.0, 0.0]], np.float32), None,
                               activation="silu")
    np.testing.assert_array_equal(special, [[np.nan, np.inf, np.nan, -0.0, 0.0]])


def test_large_inputs_split_over_threads_give_the_same_floats(restore_dispatch):
    gate, value = (RNG.standard_normal((2, 256, 512)) * 3).astype(np.float32)
    native.set_num_threads(1)
    one = native.gated_f32(gate, value, activation="silu")
    native.set_num_threads(2)
    np.testing.assert_array_equal(native.gated_f32(gate, value, activation="silu"), one)


@pytest.mark.parametrize("fn", ["gated_f32", "gated_f32_ref"])
def test_bad_arguments_raise_one_line_errors(fn):
    gate, value = np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)
    for kwargs, error, message in [
            (dict(value=np.ones((3, 5), np.float32)), ValueError, "value must have gate's shape"),
            (dict(value=value.astype(np.float64)), TypeError, "value must have dtype float32"),
            (dict(activation="relu"), ValueError, "activation must be 'silu', 'gelu_tanh' or 'gelu_erf'"),
            (dict(out=gate), ValueError, "must not share memory"),
            (dict(out=np.ones((4, 3), np.float32)), ValueError, "out must have shape")]:
        args = dict(value=value, activation="silu", out=None) | kwargs
        with pytest.raises(error, match=message) as raised:
            getattr(native, fn)(gate, args.pop("value"), **args)
        assert "\n" not in str(raised.value)
