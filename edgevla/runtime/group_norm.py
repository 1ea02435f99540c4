"""``edgevla.GroupNorm``: ``nn.GroupNorm`` as one step, in either layout.

PyTorch exports ``nn.GroupNorm(G, C)`` (Diffusion Policy's ResNets and 1-d
U-Nets use it where others use BatchNorm) as six nodes::

    r = Reshape(x, [0, G, -1])
    n = InstanceNormalization(r, s (G,), b (G,), epsilon)
    y = Reshape(n, Shape(x))
    y = Add(Mul(y, gamma (C, 1, ...)), beta (C, 1, ...))     # when affine

(and a ``Relu`` or ``Mish`` that only it feeds, applied in the same pass). The fused step computes the same: per sample and group, mean and variance
over the group's channels and every position, then one scale and shift per
channel (``s_g gamma_c`` and ``b_g gamma_c + beta_c``). On a channels-last
value (:mod:`.layout`) it reduces over the positions and the group's channels
in place of ONNX order, so the normalization needs no transposes around it:
a ResNet-18 with GroupNorm spent as long in those six nodes and their
transposes as in its twenty convolutions' GEMMs. The step runs
:func:`edgevla.native.group_norm_f32` (C++) where the build has it, else NumPy
(BLAS sums); both two-pass. The fusion may give the step an output stage
(:meth:`GroupNorm.set_output_stage`): a computed value it is multiplied by
(FiLM's scale), one added to it (FiLM's shift, or a skip connection), a ReLU,
and the next int8 layer's codes, in the same pass.
"""

from __future__ import annotations

import numpy as np

from .. import native
from ..errors import EdgevlaError
from .graph import Graph, GraphView, Node
from .ops import quantize_symmetric_int8

GROUP_NORM_OP = "edgevla.GroupNorm"


#: The activations a GroupNorm step applies in its own pass (the node after it it absorbs).
ACTIVATIONS = ("none", "relu", "mish")


class GroupNorm:
    """Group normalization of ``(N, C, *spatial)``, or ``(N, *spatial, C)`` when ``channels_last``; then
    ``activation`` (:data:`ACTIVATIONS`)."""

    def __init__(self, groups: int, scale: np.ndarray, shift: np.ndarray, epsilon: float, rank: int,
                 activation: str = "none"):
        if activation not in ACTIVATIONS:
            raise EdgevlaError(f"GroupNorm activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.groups, self.epsilon, self.rank, self.activation = groups, np.float32(epsilon), rank, activation
        self.native = native.available() and hasattr(native, "group_norm_f32")
        self._kernel = native.raw("group_norm_f32") if self.native else None
        self.scale = np.ascontiguousarray(scale, np.float32).reshape(-1)
        self.shift = np.ascontiguousarray(shift, np.float32).reshape(-1)
        self._channels_last = False
        self._ones: dict[int, np.ndarray] = {}
        self._operand_rows: dict[tuple, tuple[int, int] | None] = {}  # per operand and input shape (_per_channel)
        self.channels_last = False
        # The output stage (:meth:`set_output_stage`): a value multiplied, one added, a ReLU after it, the codes.
        self.scaled = self.residual = self.relu_after = False
        self.codes_scale: float | None = None
        self.keep_float = True  # with codes, whether the float output is an output too
        self._quantize_codes = None

    @property
    def channels_last(self) -> bool:
        return self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        """The layout, and the per-channel shift shaped for it: (1, 1, C) or (1, C, 1)."""
        self._channels_last = bool(value)
        self._shift_view = self.shift.reshape((1, 1, -1) if self._channels_last else (1, -1, 1))

    def set_output_stage(self, residual: bool, relu_after: bool, codes_scale: float | None, keep_float: bool,
                         scaled: bool = False) -> None:
        """What the graph does to the output next, in the same pass (:mod:`.fusion`): ``* scale`` where
        ``scaled`` (the step's next input: FiLM's scale), ``+ residual`` (the input after that: FiLM's shift,
        or a skip connection), a ReLU after it, and a static int8 ``QuantizeLinear`` (scale > 0, zero point
        0) whose codes the step returns, with the float output too if ``keep_float``. The operands come in
        the output's layout; per channel (FiLM's ``(N, C, 1)``) or of the output's shape, the native kernel
        applies them, any other broadcast NumPy."""
        if relu_after and not residual:
            raise EdgevlaError("GroupNorm: a ReLU after the residual needs a residual")
        if codes_scale is not None and not (np.isfinite(codes_scale) and codes_scale > 0):
            raise EdgevlaError(f"GroupNorm: output codes need a positive finite scale, got {codes_scale}")
        self.scaled, self.residual, self.relu_after, self.codes_scale = scaled, residual, relu_after, codes_scale
        self.keep_float = keep_float or codes_scale is None
        if codes_scale is not None:
            self._quantize_codes = quantize_symmetric_int8(np.float32(codes_scale))

    def __call__(self, x: np.ndarray, *operands: np.ndarray):
        """The normalized output; with an output stage, the codes too (or alone, without ``keep_float``).
        ``operands``: the stage's scale where :attr:`scaled`, then its residual where :attr:`residual`."""
        scale = operands[0] if self.scaled else None
        residual = operands[-1] if self.residual else None
        y, codes = self._normalized(x, scale, residual)
        if codes is None:
            return y
        return (y, codes) if self.keep_float else codes

    def _normalized(self, x: np.ndarray, scale: np.ndarray | None,
                    residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the float output after the stage, the codes or None)."""
        n, c = x.shape[0], x.shape[-1] if self.channels_last else x.shape[1]
        g = self.groups
        if c != self.scale.size or x.ndim != self.rank or x.dtype != np.float32:
            raise EdgevlaError(f"GroupNorm of {self.scale.size} float32 channels (affine constants for rank "
                               f"{self.rank}) got an input of shape {x.shape} ({x.dtype})")
        film_scale = None if scale is None else self._per_channel(scale, x)
        whole = residual is not None and residual.shape == x.shape and residual.dtype == np.float32
        film_shift = None if residual is None or whole else self._per_channel(residual, x)
        if self.native and (scale is None or film_scale is not None) and (residual is None or whole
                                                                           or film_shift is not None):
            codes = None if self.codes_scale is None else np.empty(x.shape, np.int8)
            y = np.empty(x.shape, np.float32)
            self._kernel(np.ascontiguousarray(x), g, self.scale, self.shift, float(self.epsilon), self._channels_last,
                         self.activation, y, film_scale, film_shift, np.ascontiguousarray(residual) if whole else None,
                         self.relu_after, codes, self.codes_scale)
            return y, codes
        y = self._numpy(x) if not self.native else native.group_norm_f32(
            np.ascontiguousarray(x), g, self.scale, self.shift, epsilon=float(self.epsilon),
            channels_last=self.channels_last, activation=self.activation)
        if scale is not None:
            y = y * scale  # may broadcast to a larger shape
        if residual is not None:
            y = y + residual
        if self.relu_after:
            np.maximum(y, np.float32(0), out=y)
        return y, None if self.codes_scale is None else self._quantize_codes(y)

    def _per_channel(self, v: np.ndarray, x: np.ndarray) -> np.ndarray | None:
        """A stage operand that holds one value per sample (or for all) and channel, in ``x``'s layout, as the
        ``(N or 1, C)`` rows the native kernel takes; None for any other."""
        key = (v.shape, v.dtype.num, x.shape, self._channels_last)
        rows = self._operand_rows.get(key, False)
        if rows is False:  # decided once per shape: ~1 us a call otherwise
            if len(self._operand_rows) >= 8:
                self._operand_rows.pop(next(iter(self._operand_rows)))
            rows = self._operand_rows[key] = _per_channel_rows(v, x.shape, self._channels_last)
        return None if rows is None else np.ascontiguousarray(v.reshape(rows))

    def _numpy(self, x: np.ndarray) -> np.ndarray:
        n, c = x.shape[0], x.shape[-1] if self.channels_last else x.shape[1]
        g = self.groups
        cg = c // g
        positions = x.size // (n * c)
        # Two passes, as a float32 GroupNorm must (E[x^2] - mean^2 lost three digits at a mean of 50 std):
        # the mean, then the variance of the centered values. Per channel sums are matrix products with ones
        # (BLAS: one blocked pass, where NumPy's reductions over a non-last axis crawl), per group in float64.
        ones = self._ones.get(positions)
        if ones is None:
            ones = self._ones[positions] = np.ones((positions, 1), np.float32)
        if self.channels_last:  # (N, P, C); per channel sums (N, 1, C)
            flat, channel_sums, per_channel = x.reshape(n, positions, c), lambda v: ones.T @ v, (n, 1, c)
        else:  # (N, C, P); per channel sums (N, C, 1)
            flat, channel_sums, per_channel = x.reshape(n, c, positions), lambda v: v @ ones, (n, c, 1)
        count = positions * cg

        def group_means(v: np.ndarray) -> np.ndarray:  # (N, G), float64
            return channel_sums(v).reshape(n, g, cg).sum(axis=2, dtype=np.float64) / count

        # Per-channel copies of the group statistics keep every full-size pass on 3-d arrays with one
        # broadcast axis (NumPy's 4-d broadcasts over the groups ran 1.6x slower).
        mean = np.repeat(group_means(flat).astype(np.float32), cg, axis=1)
        centered = flat - mean.reshape(per_channel)
        inv = 1.0 / np.sqrt(group_means(np.square(centered)) + float(self.epsilon))
        factor = (np.repeat(inv, cg, axis=1) * self.scale).astype(np.float32)
        y = np.multiply(centered, factor.reshape(per_channel), out=centered)
        y += self._shift_view
        if self.activation == "relu":
            np.maximum(y, np.float32(0), out=y)
        elif self.activation == "mish":  # as the Mish op (runtime/ops.py)
            np.multiply(y, np.tanh(np.logaddexp(np.float32(0), y)), out=y)
        return y.reshape(x.shape)


def _per_channel_rows(v: np.ndarray, x_shape: tuple[int, ...], channels_last: bool) -> tuple[int, int] | None:
    """``(N or 1, C)`` when ``v`` broadcasts against a value of ``x_shape`` (in its layout) with one float32 per
    sample (or one for all) and channel; else None."""
    rank = len(x_shape)
    if v.dtype != np.float32 or v.ndim > rank:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    axis = rank - 1 if channels_last else 1
    if (shape[0] not in (1, x_shape[0]) or shape[axis] != x_shape[axis]
            or any(d != 1 for i, d in enumerate(shape) if i not in (0, axis))):
        return None
    return shape[0], shape[axis]


def fuse_group_norm(graph: Graph) -> int:
    """Each exported ``nn.GroupNorm`` (the pattern in the module docstring) as one :data:`GROUP_NORM_OP` node;
    returns how many."""
    fused = 0
    for norm in [n for n in graph.nodes if n.op_type == "InstanceNormalization"]:
        match = _match(graph, norm)
        if match is None:
            continue
        x, removed, step = match
        last = removed[-1]
        index = graph.nodes.index(last)
        graph.nodes[index] = Node(norm.name, GROUP_NORM_OP, (x,), (last.outputs[0],), {"norm": step})
        for node in removed[:-1]:
            graph.nodes.remove(node)
        fused += 1
    return fused


def _match(graph: Graph, norm: Node) -> tuple[str, list[Node], GroupNorm] | None:
    view = GraphView(graph)
    producers, only_reader = view.producer, view.only_reader

    flatten = producers.get(norm.inputs[0])
    shape = graph.constants.get(flatten.inputs[1]) if flatten is not None and flatten.op_type == "Reshape" else None
    s = graph.constants.get(norm.inputs[1]) if len(norm.inputs) > 1 else None
    b = graph.constants.get(norm.inputs[2]) if len(norm.inputs) > 2 else None
    if shape is None or s is None or b is None or s.ndim != 1 or b.shape != s.shape:
        return None
    groups = s.size
    if shape.tolist() != [0, groups, -1] or flatten.attrs.get("allowzero", 0) or only_reader(flatten.outputs[0]) is not norm:
        return None
    x = flatten.inputs[0]
    restore = only_reader(norm.outputs[0])
    size_of = producers.get(restore.inputs[1]) if restore is not None and restore.op_type == "Reshape" else None
    if (size_of is None or size_of.op_type != "Shape" or size_of.inputs[0] != x or size_of.attrs.get("start", 0)
            or size_of.attrs.get("end") is not None):
        return None
    removed = [flatten, norm, restore]
    if only_reader(size_of.outputs[0]) is restore:
        removed.append(size_of)
    y, gamma, beta = restore.outputs[0], None, None
    mul = only_reader(y)
    gamma = _per_channel(graph, mul, y, "Mul")
    if gamma is not None:
        removed.append(mul)
        y = mul.outputs[0]
        add = only_reader(y)
        beta = _per_channel(graph, add, y, "Add")
        if beta is not None:
            removed.append(add)
            y = add.outputs[0]
    activation = only_reader(y)
    if activation is not None and activation.op_type in ("Relu", "Mish") and gamma is not None:
        removed.append(activation)
    channels = gamma.size if gamma is not None else None
    if channels is None or channels % groups or (beta is not None and beta.shape != gamma.shape):
        return None  # without the affine Mul the channel count is unknown until run time: left as it is
    per_group = channels // groups
    scale = np.repeat(s.astype(np.float32), per_group) * gamma.reshape(-1)
    shift = np.repeat(b.astype(np.float32), per_group) * gamma.reshape(-1) + (0 if beta is None else beta.reshape(-1))
    removed = [n for n in graph.nodes if any(n is r for r in removed)]  # graph order: the last one is replaced
    # (C, 1, ..., 1) applies per channel to a value of one more dimension only: the fused step checks that rank.
    step = GroupNorm(groups, scale, shift, float(norm.attrs.get("epsilon", 1e-5)), gamma.ndim + 1,
                     activation={"Relu": "relu", "Mish": "mish"}.get(removed[-1].op_type, "none"))
    return x, removed, step


def _per_channel(graph: Graph, node: Node | None, value: str, op: str) -> np.ndarray | None:
    """The (C,) constant a ``Mul`` / ``Add`` applies per channel of ``value``: a ``(C, 1, ...)`` operand."""
    if node is None or node.op_type != op or len(node.inputs) != 2 or value not in node.inputs:
        return None
    other = graph.constants.get(node.inputs[1] if node.inputs[0] == value else node.inputs[0])
    if other is None or other.dtype != np.float32 or other.ndim < 2 or any(d != 1 for d in other.shape[1:]):
        return None
    return other


__all__ = ["GROUP_NORM_OP", "GroupNorm", "fuse_group_norm"]
