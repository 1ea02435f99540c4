"""ONNX ``LSTM`` and ``GRU`` for the native runtime, in NumPy (what ``nn.LSTM`` / ``nn.GRU`` export as).

Recurrent policies (robomimic's BC-RNN, a GRU over a history of
observations) export one node per layer. Each direction runs as: the input
projection of every time step in one matrix product, then one small product
with the recurrent weight per step. Gate orders are ONNX's: ``i, o, f, c``
for LSTM (PyTorch's ``i, f, g, o`` is reordered by the exporter), ``z, r, h``
for GRU, with ``linear_before_reset`` (PyTorch's form, 1) or without it.

Supported: ``direction`` forward / reverse / bidirectional, initial hidden
(and cell) states, the default activations. Refused in one line:
``sequence_lens`` (padded batches), peepholes, ``clip``, ``input_forget``,
other activations, ``layout`` 1 (which ONNX Runtime refuses too). Checked against ONNX Runtime in
``tests/test_runtime_ops.py``.
"""

from __future__ import annotations

import numpy as np

from .activations import sigmoid
from .ops import OpContext, _fail, register

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _check(c: OpContext, op: str) -> tuple[int, str]:
    """(hidden size, direction), refusing what this runtime does not implement."""
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in c.attr("activations", [])]
    if acts and acts != _DEFAULT_ACTIVATIONS[op] * (len(acts) // len(_DEFAULT_ACTIVATIONS[op])):
        raise _fail(c, f"activations {acts} are not supported (only {_DEFAULT_ACTIVATIONS[op]})")
    if c.attr("clip") is not None or int(c.attr("input_forget", 0)):
        raise _fail(c, "clip and input_forget are not supported")
    direction = c.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _fail(c, f"unknown direction {direction!r}")
    hidden = c.attr("hidden_size")
    if hidden is None:
        raise _fail(c, "hidden_size is required")
    if int(c.attr("layout", 0)):
        raise _fail(c, "layout 1 (batch first) is not supported (nor by ONNX Runtime; PyTorch exports layout 0)")
    return int(hidden), direction


def _initial(state: np.ndarray | None, directions: int, batch: int, hidden: int) -> np.ndarray:
    return np.zeros((directions, batch, hidden), np.float32) if state is None else state


def _outputs(ys: list[np.ndarray], finals: list[tuple[np.ndarray, ...]], n_outputs: int):
    """Y ``(seq, dirs, batch, H)`` and each final state ``(dirs, batch, H)``, as many as the node reads."""
    y = np.stack(ys, axis=1)
    states = [np.stack([f[k] for f in finals]) for k in range(len(finals[0]))]
    return tuple([y, *states][:n_outputs]) if n_outputs > 1 else y


def _directions(direction: str) -> list[bool]:
    """Per direction: whether it runs the sequence backwards."""
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


@register("LSTM")
def _lstm(c):
    hidden, direction = _check(c, "LSTM")

    def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        if sequence_lens is not None or p is not None:
            raise _fail(c, "sequence_lens (padded sequences) and peepholes are not supported")
        xs = x
        steps, batch, _ = xs.shape
        runs = _directions(direction)
        h0 = _initial(initial_h, len(runs), batch, hidden)
        c0 = _initial(initial_c, len(runs), batch, hidden)
        ys, finals = [], []
        for d, backwards in enumerate(runs):
            bias = np.zeros(4 * hidden, np.float32) if b is None else b[d, :4 * hidden] + b[d, 4 * hidden:]
            projected = xs @ w[d].T + bias  # (steps, batch, 4H): every step's input at once
            h, cell = h0[d], c0[d]
            out = np.empty((steps, batch, hidden), np.float32)
            for t in (range(steps - 1, -1, -1) if backwards else range(steps)):
                gates = projected[t] + h @ r[d].T
                i, o, f = (sigmoid(gates[:, k * hidden:(k + 1) * hidden]) for k in range(3))
                cell = f * cell + i * np.tanh(gates[:, 3 * hidden:])
                h = o * np.tanh(cell)
                out[t] = h
            ys.append(out)
            finals.append((h, cell))
        return _outputs(ys, finals, c.n_outputs)
    return lstm


@register("GRU")
def _gru(c):
    hidden, direction = _check(c, "GRU")
    before_reset = bool(c.attr("linear_before_reset", 0))

    def gru(x, w, r, b=None, sequence_lens=None, initial_h=None):
        if sequence_lens is not None:
            raise _fail(c, "sequence_lens (padded sequences) is not supported")
        xs = x
        steps, batch, _ = xs.shape
        runs = _directions(direction)
        h0 = _initial(initial_h, len(runs), batch, hidden)
        ys, finals = [], []
        for d, backwards in enumerate(runs):
            wb = np.zeros(3 * hidden, np.float32) if b is None else b[d, :3 * hidden]
            rb = np.zeros(3 * hidden, np.float32) if b is None else b[d, 3 * hidden:]
            projected = xs @ w[d].T + wb  # (steps, batch, 3H)
            rz, rh = r[d][:2 * hidden], r[d][2 * hidden:]
            h = h0[d]
            out = np.empty((steps, batch, hidden), np.float32)
            for t in (range(steps - 1, -1, -1) if backwards else range(steps)):
                zr = sigmoid(projected[t, :, :2 * hidden] + h @ rz.T + rb[:2 * hidden])
                z, reset = zr[:, :hidden], zr[:, hidden:]
                if before_reset:
                    candidate = np.tanh(projected[t, :, 2 * hidden:] + reset * (h @ rh.T + rb[2 * hidden:]))
                else:
                    candidate = np.tanh(projected[t, :, 2 * hidden:] + (reset * h) @ rh.T + rb[2 * hidden:])
                h = (1 - z) * candidate + z * h
                out[t] = h
            ys.append(out)
            finals.append((h,))
        return _outputs(ys, finals, c.n_outputs)
    return gru


__all__: list[str] = []
