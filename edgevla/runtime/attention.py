"""Multi-head attention as one step: the exporter's head-splitting transposes become strided views.

The exporter writes scaled dot-product attention over ``(B, T, H, D)`` head
views of the q, k and v projections as::

    Tq = Transpose(q, perm=[0, 2, 1, 3])      # (B, H, T, D)
    Tk = Transpose(k, perm=[0, 2, 3, 1])      # (B, H, D, S)
    Tv = Transpose(v, perm=[0, 2, 1, 3])      # (B, H, S, D)
    P  = Softmax(Add(Mul(MatMul(Tq, Tk), c), bias))   # the Mul (or a Div) by a constant and the Add
                                              # of a bias (a mask, broadcast over batch and heads) optional
    y  = Transpose(MatMul(P, Tv), perm=[0, 2, 1, 3])   # back to (B, T, H, D)

Run node by node, that is four transposing copies and nine steps per
attention. :func:`fuse_attention` replaces each such chain, whose
intermediates nothing else reads, by one ``edgevla.Attention`` node reading
``q, k, v`` and writing ``y``: the batched products read the transposed
views in place (NumPy hands BLAS the strides) and the second one writes
straight into ``y``'s ``(B, T, H, D)`` layout. The score scaling and the
softmax are the runtime's own ``Mul``/``Div`` and ``Softmax``, in the graph's
order; only the summation order inside the products may differ from the
unfused steps (float32 rounding). ``F.scaled_dot_product_attention``, which the exporter writes
over ``(B, H, T, D)`` heads with k's axes swapped by reshapes, is matched
too (:func:`_match_sdpa`), and so is the eager attention of Hugging Face's
Llama-family code (``q @ k^T`` scaled after the product, a ``finfo.min``
causal mask added); they run the same step on transposed views.

Where the kernels of :data:`NATIVE_ATTENTION_MAX_TOKENS` run and both
sequences are short enough for the thread count (at most its limit), the
whole step is one call of :func:`edgevla.native.attention_f32` instead
(scores, a mask's bias (causal, padding: a float32 one of at most four axes
broadcast over batch, heads or queries), softmax and ``P @ V`` per head in
registers; a boolean mask's fully hidden queries zeroed; not bit-identical:
within 4e-6 (1 + max |score|) max |v| of its float reference, as
tests/test_kernels_attention.py asserts).
Measured alone (1 thread; runs vary by ~10 %), native vs NumPy + OpenBLAS:
H = 6, D = 64 (small-vla): 5.5 vs 12.4 us at T = 6, 9.2-10.8 vs 14.3-18.4 at
T = 16, 28-31 vs 28-36 at T = 32; inside a whole small-vla call, after the
GEMMs have pushed NumPy's code and data out of the caches, the 7 attention
steps took 186 us native against 305 us NumPy. H = 4, D = 24 (tiny-vla):
5.7 vs 11.9 at T = 16, 14.6 vs 18.4 at T = 32, 49 vs 44 at T = 64. With 2
threads (the Xeon AMX machine, 2026-12-06) the kernel is ahead or level up
to T = 192 (H = 4, D = 24: 33 vs 33 us at T = 64, 87 vs 100 at 128, 195 vs
293 at 192; H = 6, D = 64: 165 vs 302 at 128, 449 vs 569 at 192, 945 vs 915
at 256), and inside a tiny-vla call its T = 64 and 80 attention took 30.5 and
43.6 us against NumPy's 43.7 and 55.6 (the call 0.505 vs 0.534 ms).
The AVX2 kernel (the avx2 and avx_vnni tables) against NumPy + OpenBLAS on
an AVX2 Zen 3 (2 vCPUs, 2026-12-07; benchmarks/cpu/attention_f32.py, whose
rows are benchmarks/cpu/attention-avx2-zen3-2026-12-07.md), both through
this step: since its P @ V takes 4 queries at a time, with 1 thread ahead at
every T measured, 6 to 256 (H = 4, D = 24: 1.40x at 80, 1.28x at 128, 1.18x
at 192; H = 6, D = 64: 1.12x at 80, 1.04x at 128, level at 192); with 2 ahead
up to T = 80 (1.90x and 1.49x there), at 128 for H = 4 (1.76x) but not H = 6
(0.87x). Before, it lost from T = 48 with 1 thread (0.74x at 64, H = 4), so
tiny-vla's T = 64 and 80 ran on NumPy; with the kernel, a tiny-vla w8a8 call
on 1 thread took 2.87 ms against 3.50 (medians of 9 alternated rounds; 1.09x
the median of their ratios: ``attention_f32.py --bundle``). The
1-thread limit stays at 128, past which H = 6 is only level. The AVX-512
tables' limits are from before that change, which was not timed on AVX-512
(none here): it only adds accumulators and loads V less often. The SSE2
kernel (generic) lost to OpenBLAS before (77.8 us at T = 32, H = 6, D = 64,
the Xeon); after, on the Zen 3, it is level at T = 32 for H = 6 and behind
from 48, so elsewhere (NEON included, until measured on a Jetson) the NumPy
path runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import native
from ..errors import EdgevlaError
from . import ops
from .graph import Graph, GraphView, Node
from .scratch import work_arrays

ATTENTION_OP = "edgevla.Attention"
#: The kernel tables on which :func:`edgevla.native.attention_f32` beats NumPy + OpenBLAS, and the
#: longest query and key sequences it takes there: (with one thread, with two or more). Module docstring.
NATIVE_ATTENTION_MAX_TOKENS = {"avx512_amx": (48, 192), "avx512_vnni": (48, 192), "avx_vnni": (128, 80),
                               "avx2": (128, 80)}

_TO_HEADS = (0, 2, 1, 3)  # (B, T, H, D) -> (B, H, T, D), and back
_KEYS_TRANSPOSED = (0, 2, 3, 1)  # (B, S, H, D) -> (B, H, D, S)


class Attention:
    """``y = softmax(scale(q_h @ k_h^T)) @ v_h`` per head, on ``(B, T, H, D)`` inputs and output
    (``heads_first``: inputs ``(B, H, T, D)``, as ``F.scaled_dot_product_attention`` takes them)."""

    def __init__(self, scale: np.float32 | None, divide: bool, softmax: ops.OpFn, heads_first: bool = False,
                 nan_rows_zero: bool = False, kv_repeats: tuple[int, int] = (1, 1)):
        self.scale, self.divide, self.softmax, self.heads_first = scale, divide, softmax, heads_first
        self.nan_rows_zero = nan_rows_zero
        self.kv_repeats = kv_repeats  # k's and v's heads repeated this many times each in the graph (grouped queries)
        self._kernel = native.raw("attention_f32") if native.available() else None
        self._checked: tuple | None = None  # the last shapes and bias seen, the kernel's bias, whether it fits

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        if self.heads_first:
            if not q.ndim == k.ndim == v.ndim == 4:
                raise EdgevlaError(f"the native backend's attention takes (batch, heads, tokens, width) inputs, "
                                   f"got shapes {q.shape}, {k.shape}, {v.shape}")
            q, k, v = q.transpose(_TO_HEADS), k.transpose(_TO_HEADS), v.transpose(_TO_HEADS)  # views
        # A signature's calls hand over the same shapes, strides and bias (a mask fixed by the shapes): what
        # they allow is worked out once.
        key = (q.shape, q.strides, k.shape, k.strides, v.shape, v.strides)
        if self._checked is None or self._checked[0] != key or self._checked[3] is not bias:
            if self.kv_repeats != (1, 1):
                _check_groups(q.shape[2], k.shape[2], v.shape[2], self.kv_repeats)
            kernel_bias = None if bias is None else _kernel_bias(bias, q.shape[0], q.shape[2], q.shape[1],
                                                                 k.shape[1])
            fits = ((bias is None or kernel_bias is not None) and 0 < k.shape[1]
                    and all(_kernel_layout(a) for a in (q, k, v)))
            self._checked = (key, kernel_bias, fits, bias)  # the bias itself: compared by identity
        _, kernel_bias, fits, _ = self._checked
        if fits and max(q.shape[1], k.shape[1]) <= native_attention_max_tokens():
            return self._kernel(q, k, v, None if self.scale is None else float(self.scale), self.divide, out,
                                kernel_bias, self.nan_rows_zero)
        b, t, h, _ = q.shape
        if k.shape[2] != h or v.shape[2] != h:  # grouped queries: each key/value head read by a run of heads
            k, v = np.repeat(k, h // k.shape[2], axis=2), np.repeat(v, h // v.shape[2], axis=2)
        scores, probabilities = work_arrays((b, h, t, k.shape[1]), 2)  # softmax takes none
        np.matmul(q.transpose(_TO_HEADS), k.transpose(_KEYS_TRANSPOSED), out=scores)
        if self.scale is not None:
            if self.divide:
                scores /= self.scale
            else:
                scores *= self.scale
        if bias is not None:
            if np.broadcast_shapes(bias.shape, scores.shape) != scores.shape:
                raise EdgevlaError(f"the native backend cannot add an attention bias of shape {bias.shape} to "
                                   f"scores of shape {scores.shape}")
            scores += bias
        self.softmax(scores, out=probabilities)
        if self.nan_rows_zero:
            probabilities[np.isnan(probabilities)] = 0.0
        y = np.empty((b, t, h, v.shape[3]), np.float32) if out is None else out
        np.matmul(probabilities, v.transpose(_TO_HEADS), out=y.transpose(_TO_HEADS))
        return y


def native_attention_max_tokens() -> int:
    """The longest sequences the native kernel takes with the kernel table and threads in use now (0: none)."""
    if not native.available():
        return 0
    limits = NATIVE_ATTENTION_MAX_TOKENS.get(native.get_isa())
    return 0 if limits is None else limits[0 if native.get_num_threads() == 1 else 1]


def _check_groups(heads: int, k_heads: int, v_heads: int, repeats: tuple[int, int]) -> None:
    """The graph repeated each of k's (v's) heads ``repeats`` times into the query heads: the unrepeated one must
    have heads / repeats of them (or one, which its Expand broadcast to all)."""
    if k_heads != v_heads or any(n != 1 and n * r != heads for n, r in zip((k_heads, v_heads), repeats)):
        raise EdgevlaError(f"the native backend's grouped attention has {heads} query heads and {k_heads} key, "
                           f"{v_heads} value heads repeated {repeats[0]} and {repeats[1]} times: they do not match")


def _kernel_bias(bias: np.ndarray, b: int, h: int, t: int, s: int) -> np.ndarray | None:
    """``bias`` as the kernel reads it, float32 ``(B or 1, H or 1, T or 1, S)`` with S contiguous (a view where
    it can be), or None where it is not such a bias (the NumPy path broadcasts it, or says why not)."""
    if bias.dtype != np.float32 or bias.ndim > 4 or bias.shape[-1:] != (s,):
        return None
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    if any(n not in (1, want) for n, want in zip(bias.shape[:3], (b, h, t))):
        return None
    return bias if bias.strides[3] == 4 or s == 1 else np.ascontiguousarray(bias)


def _kernel_layout(a: np.ndarray) -> bool:
    """float32 (B, T, H, D) with non-negative strides and D contiguous: what the kernel reads in place."""
    return (a.dtype == np.float32 and a.ndim == 4 and (a.strides[3] == 4 or a.shape[3] <= 1)
            and min(a.strides) >= 0)


@dataclass
class _Match:
    q: str
    k: str
    v: str
    removed: list[Node]  # the chain; the fused node takes the place of the last of them in the graph
    scale: np.float32 | None
    divide: bool
    bias: str | None  # added to the scaled scores (a mask), or none
    heads_first: bool = False  # q, k, v are (B, H, T, D): the scaled-dot-product form
    nan_rows_zero: bool = False  # a query whose every key is masked attends to nothing (zeros)


def fuse_attention(graph: Graph) -> int:
    """Rewrite every attention chain of the module docstring in place; returns how many."""
    fused = 0
    for softmax in [n for n in graph.nodes if n.op_type == "Softmax"]:
        match = _match(graph, softmax) or _match_sdpa(graph, softmax)
        if match is None:
            continue
        kernel = ops.compile_op("Softmax", softmax.attrs, (None,), graph.opset, 1, softmax.describe())
        k, k_rep = _unrepeated_heads(graph, match.k) if match.heads_first else (match.k, 1)
        v, v_rep = _unrepeated_heads(graph, match.v) if match.heads_first else (match.v, 1)
        attention = Attention(match.scale, match.divide, kernel.fn, match.heads_first, match.nan_rows_zero,
                              (k_rep, v_rep))
        last = match.removed[-1]
        inputs = (match.q, k, v) + ((match.bias,) if match.bias is not None else ())
        node = Node(last.name, ATTENTION_OP, inputs, last.outputs, {"attention": attention})
        ids = {id(n) for n in match.removed}
        at = max(i for i, n in enumerate(graph.nodes) if id(n) in ids)
        graph.nodes = [node if i == at else n for i, n in enumerate(graph.nodes) if i == at or id(n) not in ids]
        fused += 1
    return fused


def _unrepeated_heads(graph: Graph, value: str) -> tuple[str, int]:
    """``(x, r)`` when ``value`` is ``x``'s heads each repeated ``r`` times, ``(B, Hkv, S, D)`` to ``(B, Hkv r, S,
    D)``, as the exporter spells ``repeat_interleave`` on the heads axis (and a Llama ``repeat_kv``):
    ``Reshape(Expand(Unsqueeze(x, axes=[2]), [.., .., r, .., ..]), [.., Hkv r, .., ..])``; else ``(value, 1)``.
    The attention then reads ``x`` (grouped-query heads); the repeat's nodes stay for any other reader."""
    producer = graph.producers()
    reshape = producer.get(value)
    expand = None if reshape is None or reshape.op_type != "Reshape" else producer.get(reshape.inputs[0])
    unsqueeze = None if expand is None or expand.op_type != "Expand" else producer.get(expand.inputs[0])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return value, 1
    axes = graph.constants.get(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else unsqueeze.attrs.get("axes")
    repeats, heads = _shape_entry(graph, producer, expand.inputs[1], 5, 2), _shape_entry(graph, producer,
                                                                                         reshape.inputs[1], 4, 1)
    if axes is None or np.ravel(axes).tolist() != [2] or repeats is None or heads is None:
        return value, 1
    if repeats < 1 or heads < 1 or heads % repeats:
        return value, 1
    return unsqueeze.inputs[0], repeats


def _shape_entry(graph: Graph, producer, value: str, rank: int, index: int) -> int | None:
    """Entry ``index`` of the ``rank``-long shape ``value``: a constant, or a ``Concat`` of one-value pieces (the
    batch and sequence sizes from ``Shape`` at run time) whose piece ``index`` is one; else None."""
    shape = graph.constants.get(value)
    if shape is not None:
        return int(shape.reshape(-1)[index]) if shape.size == rank else None
    parts = _concat_parts(producer, value)
    piece = graph.constants.get(parts[index]) if len(parts) == rank else None
    return int(piece.reshape(-1)[0]) if piece is not None and piece.size == 1 else None


def _match(graph: Graph, softmax: Node) -> _Match | None:
    view = GraphView(graph)
    producer, only_reader = view.producer, view.only_reader

    def transpose_of(value: str, perm: tuple[int, ...], reader: Node) -> Node | None:
        node = producer.get(value)
        if (node is None or node.op_type != "Transpose" or tuple(node.attrs.get("perm", ())) != perm
                or only_reader(value) is not reader):
            return None
        return node

    axis = int(softmax.attrs.get("axis", -1 if graph.opset >= 13 else 1))
    if axis not in (-1, 3):
        return None
    scores = softmax.inputs[0]
    node = producer.get(scores)
    if node is None or only_reader(scores) is not softmax:
        return None
    bias, masking = None, []
    if node.op_type == "Add":  # a mask: Add(scaled scores, bias), either order
        add = node
        for mine, other in (add.inputs, add.inputs[::-1]):
            first = producer.get(mine)
            if first is not None and first.op_type in ("Mul", "Div", "MatMul") and only_reader(mine) is add:
                node, bias, masking = first, other, [add]
                break
        else:
            return None
    scale, divide, scaling = None, False, []
    if node.op_type in ("Mul", "Div"):
        a, b = node.inputs
        if _scalar(graph, b) is not None:
            product, scale = a, _scalar(graph, b)
        elif node.op_type == "Mul" and _scalar(graph, a) is not None:
            product, scale = b, _scalar(graph, a)
        else:
            return None
        divide, scaling = node.op_type == "Div", [node]
        node = producer.get(product)
        if node is None or only_reader(product) is not scaling[0]:
            return None
    if node.op_type != "MatMul":
        return None
    qk = node
    tq = transpose_of(qk.inputs[0], _TO_HEADS, qk)
    tk = transpose_of(qk.inputs[1], _KEYS_TRANSPOSED, qk)
    pv = only_reader(softmax.outputs[0])
    if tq is None or tk is None or pv is None or pv.op_type != "MatMul" or pv.inputs[0] != softmax.outputs[0]:
        return None
    tv = transpose_of(pv.inputs[1], _TO_HEADS, pv)
    back = only_reader(pv.outputs[0])
    if tv is None or back is None or back.op_type != "Transpose" or tuple(back.attrs.get("perm", ())) != _TO_HEADS:
        return None
    return _Match(tq.inputs[0], tk.inputs[0], tv.inputs[0],
                  [tq, tk, tv, qk, *scaling, *masking, softmax, pv, back], scale, divide, bias)


def _match_sdpa(graph: Graph, softmax: Node) -> _Match | None:
    """Attention on ``(B, H, T, D)`` heads: ``F.scaled_dot_product_attention`` as the exporter writes it, and
    the eager attention of Hugging Face's Llama-family models (the scale applied to the scores)::

        Kt = Reshape(Transpose(Reshape(k, [-1, S, D]), perm=[0, 2, 1]), [..., D, S])  # or Transpose(k, 0132)
        P  = Softmax(Add(MatMul(Mul(q, sqrt c), Mul(Kt, sqrt c)), bias))   # the scalings and Add optional
        P  = Softmax(Add(Mul(MatMul(q, Kt), c), bias))                     # or the scores scaled (Mul or Div)
        y  = Transpose(MatMul(P, v), perm=[0, 2, 1, 3])                     # back to (B, T, H, D)

    The two reshapes' shapes are computed from ``Shape(k)`` at run time; they must be exactly
    ``[-1, S, D]`` and ``[..., D, S]`` of it, so that the chain is ``k``'s last two axes swapped."""
    view = GraphView(graph)
    producer, readers, outputs, only_reader = view.producer, view.readers, view.outputs, view.only_reader

    def made(value: str, op: str, reader: Node) -> Node | None:
        node = producer.get(value)
        return node if node is not None and node.op_type == op and only_reader(value) is reader else None

    def scores(value: str, reader: Node) -> tuple[Node, Node | None] | None:
        """``(the q-k MatMul, the Mul / Div scaling its output by a constant, or None)`` that ``value`` is."""
        product = made(value, "MatMul", reader)
        if product is not None:
            return product, None
        scaling = made(value, "Mul", reader) or made(value, "Div", reader)
        if scaling is None:
            return None
        a, b = scaling.inputs
        if _scalar(graph, b) is not None:
            product = made(a, "MatMul", scaling)
        elif scaling.op_type == "Mul" and _scalar(graph, a) is not None:
            product = made(b, "MatMul", scaling)
        else:
            return None
        return None if product is None else (product, scaling)

    if int(softmax.attrs.get("axis", -1)) not in (-1, 3):
        return None
    found = scores(softmax.inputs[0], softmax)
    bias, masking = None, []
    add = made(softmax.inputs[0], "Add", softmax) if found is None else None
    if add is not None:
        for mine, other in (add.inputs, add.inputs[::-1]):
            found = scores(mine, add)
            if found is not None:
                bias, masking = other, [add]
                break
    if found is None:
        return None
    qk, post = found
    scale, scaling = np.float32(1.0), []
    sides = []
    for value in qk.inputs:
        mul = made(value, "Mul", qk)
        c = None if mul is None else next((_scalar(graph, i) for i in mul.inputs if _scalar(graph, i) is not None),
                                          None)
        if mul is not None and c is not None:
            scale, scaling = np.float32(scale * c), scaling + [mul]
            value = next(i for i in mul.inputs if _scalar(graph, i) is None)
        sides.append((value, mul if c is not None else qk))
    divide = False
    if post is not None:
        c = next(x for x in (_scalar(graph, i) for i in post.inputs[::-1]) if x is not None)
        divide = post.op_type == "Div"
        if divide and scaling:  # q and k scaled, and the scores divided: not one factor the step applies
            return None
        scale, scaling = (c if divide else np.float32(scale * c)), scaling + [post]
    (q, _), (kt, kt_reader) = sides
    swap = _swapped_last_axes(graph, kt, kt_reader, producer, only_reader)
    probabilities, zeroing = _nan_rows_zeroed(graph, softmax.outputs[0], readers, outputs)
    pv = only_reader(probabilities)
    if swap is None or pv is None or pv.op_type != "MatMul" or pv.inputs[0] != probabilities:
        return None
    k, swapping = swap
    back = only_reader(pv.outputs[0])
    if back is None or back.op_type != "Transpose" or tuple(back.attrs.get("perm", ())) != _TO_HEADS:
        return None
    return _Match(q, k, pv.inputs[1], [*swapping, *scaling, qk, *masking, softmax, *zeroing, pv, back],
                  None if not scaling else scale, divide, bias, heads_first=True, nan_rows_zero=bool(zeroing))


def _nan_rows_zeroed(graph: Graph, p: str, readers, outputs) -> tuple[str, list[Node]]:
    """``Where(IsNaN(p), 0, p)`` (the exporter's softmax over a boolean mask: a row with every key masked is 0,
    not NaN): ``(its output, [IsNaN, Where])``; else ``(p, [])``."""
    found = readers.get(p, [])
    if p in outputs or len(found) != 2:
        return p, []
    nodes = {n.op_type: n for n, _ in found}
    isnan, where = nodes.get("IsNaN"), nodes.get("Where")
    if isnan is None or where is None or len(where.inputs) != 3 or where.inputs[0] != isnan.outputs[0]:
        return p, []
    zero = graph.constants.get(where.inputs[1])
    if (zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0 or where.inputs[2] != p
            or len(readers.get(isnan.outputs[0], [])) != 1 or isnan.outputs[0] in outputs):
        return p, []
    return where.outputs[0], [isnan, where]


def _swapped_last_axes(graph: Graph, value: str, reader: Node, producer, only_reader) -> tuple[str, list[Node]] | None:
    """``(k, nodes)`` when ``value`` is ``k`` with its last two axes swapped, by a Transpose or by the
    exporter's Reshape-Transpose-Reshape over its own ``Shape``; else None."""
    node = producer.get(value)
    if node is None or only_reader(value) is not reader:
        return None
    if node.op_type == "Transpose" and tuple(node.attrs.get("perm", ())) == (0, 1, 3, 2):
        return node.inputs[0], [node]
    if node.op_type != "Reshape":
        return None
    outer = node
    middle = producer.get(outer.inputs[0])
    if (middle is None or middle.op_type != "Transpose" or tuple(middle.attrs.get("perm", ())) != (0, 2, 1)
            or only_reader(outer.inputs[0]) is not outer):
        return None
    inner = producer.get(middle.inputs[0])
    if inner is None or inner.op_type != "Reshape" or only_reader(middle.inputs[0]) is not middle:
        return None
    k = inner.inputs[0]
    # [-1, S, D] and [leading..., D, S], each piece sliced from Shape(k)
    pieces = [_shape_slice(graph, producer, k, p) for p in _concat_parts(producer, inner.inputs[1])]
    back = [_shape_slice(graph, producer, k, p) for p in _concat_parts(producer, outer.inputs[1])]
    first = _scalar_int(graph, _concat_parts(producer, inner.inputs[1])[:1])
    if first != -1 or pieces[1:] != [(-2, -1), (-1, None)] or back != [(None, -2), (-1, None), (-2, -1)]:
        return None
    return k, [inner, middle, outer]


def _concat_parts(producer, value: str) -> list[str]:
    node = producer.get(value)
    return list(node.inputs) if node is not None and node.op_type == "Concat" else []


def _scalar_int(graph: Graph, names: list[str]) -> int | None:
    value = graph.constants.get(names[0]) if names else None
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _shape_slice(graph: Graph, producer, k: str, value: str) -> tuple[int | None, int | None] | None:
    """``(start, end)`` (None: open) when ``value`` is ``Shape(k)[start:end]``; else None."""
    node = producer.get(value)
    if node is None or node.op_type != "Slice" or len(node.inputs) < 3:
        return None
    shape = producer.get(node.inputs[0])
    if shape is None or shape.op_type != "Shape" or shape.inputs[0] != k or shape.attrs.get("start", 0) != 0:
        return None
    start, end = _scalar_int(graph, [node.inputs[1]]), _scalar_int(graph, [node.inputs[2]])
    if start is None or end is None:
        return None
    huge = 2 ** 62
    return (None if start <= -huge else start), (None if end >= huge else end)


def _scalar(graph: Graph, name: str) -> np.float32 | None:
    value = graph.constants.get(name)
    if value is None or value.size != 1 or value.dtype != np.float32:
        return None
    return np.float32(value.reshape(()))


# --------------------------------------------------------------------------- q, k and v as views

HEADS_VIEW_OP = "edgevla.HeadsView"


class HeadsView:
    """``x.transpose(perm)[index]``: one of q, k and v cut from a stacked projection, as a view of it."""

    def __init__(self, perm: tuple[int, ...], index: int):
        self.perm, self.index = perm, index

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(self.perm)[self.index]


def view_stacked_heads(graph: Graph) -> int:
    """Each q, k or v that only attention steps read (and ``Shape``) and that is piece ``i`` of a transposed
    stacked projection becomes a :class:`HeadsView` of the projection; returns how many.

    A fused qkv layer's heads, ``qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)`` then ``unbind(0)`` (timm's
    ViT, DINOv2) or ``q, k, v = ...`` (an OpenVLA-style trunk), export as ``Transpose`` and per piece a
    ``Slice`` and ``Squeeze`` of axis 0 (``qkv[0]``: a ``Gather`` of one index): a
    transposing copy of the whole projection and two steps per piece. The attention reads strided views in
    place, so the piece is a view of the untransposed projection instead (its rows stay D-contiguous)."""
    view = GraphView(graph)
    done = 0
    for attention in [n for n in graph.nodes if n.op_type == ATTENTION_OP]:
        for value in dict.fromkeys(attention.inputs[:3]):
            readers = view.readers.get(value, [])
            if value in view.outputs or not all(r.op_type in (ATTENTION_OP, "Shape") for r, _ in readers):
                continue
            found = _stacked_piece(view, value)
            if found is None:
                continue
            x, perm, index, last = found
            at = next(i for i, n in enumerate(graph.nodes) if n is last)
            graph.nodes[at] = Node(last.name, HEADS_VIEW_OP, (x,), (value,), {"view": HeadsView(perm, index)})
            view.refresh()
            done += 1
    return done  # the slices and the transpose, when nothing else reads them, go with the graph's pruning


def _stacked_piece(view: GraphView, value: str) -> tuple[str, tuple[int, ...], int, Node] | None:
    """``(x, perm, i, the node writing value)`` when ``value`` is ``Transpose(x, perm)[i]`` cut by a
    ``Squeeze`` of a one-index ``Slice`` of axis 0, or a ``Gather`` of one index; else None."""
    graph, producer = view.graph, view.producer
    last = producer.get(value)
    if last is None:
        return None

    def ints(name: str | None, attr: str, node: Node) -> list[int] | None:
        found = graph.constants.get(name) if name else None
        found = node.attrs.get(attr) if found is None else found
        return None if found is None else np.ravel(found).astype(np.int64).tolist()

    if last.op_type == "Gather" and int(last.attrs.get("axis", 0)) == 0:
        index = graph.constants.get(last.inputs[1])
        if index is None or index.ndim != 0:
            return None
        source, i = last.inputs[0], int(index)
    elif last.op_type == "Squeeze" and ints(last.inputs[1] if len(last.inputs) > 1 else None, "axes", last) == [0]:
        cut = producer.get(last.inputs[0])
        if cut is None or cut.op_type != "Slice" or view.only_reader(last.inputs[0]) is not last:
            return None
        starts, ends = ints(cut.inputs[1], "starts", cut), ints(cut.inputs[2], "ends", cut)
        axes = ints(cut.inputs[3] if len(cut.inputs) > 3 else None, "axes", cut) or [0]
        steps = ints(cut.inputs[4] if len(cut.inputs) > 4 else None, "steps", cut) or [1]
        if starts is None or ends is None or len(starts) != 1 or axes != [0] or steps != [1]:
            return None
        if starts[0] < 0 or ends[0] != starts[0] + 1:
            return None
        source, i = cut.inputs[0], starts[0]
    else:
        return None
    transpose = producer.get(source)
    if transpose is None or transpose.op_type != "Transpose" or "perm" not in transpose.attrs:
        return None
    perm = tuple(int(p) for p in transpose.attrs["perm"])
    rank = graph.ranks.get(transpose.inputs[0])
    if rank is not None and rank != len(perm):
        return None
    return transpose.inputs[0], perm, i, last
