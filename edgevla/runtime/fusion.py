"""Graph rewrites of the native runtime: GELU subgraphs into one op, linear layers into one kernel call.

Runs on a loaded, constant-folded :class:`~.graph.Graph`, in this order
(after a ``ConvTranspose`` with a constant weight is rewritten as a ``Conv``
and an interleaving reshape, :mod:`.conv_transpose`, so that step 2 makes it
a layer like any other convolution):

1. **GELU**: the exporter spells GELU as five nodes,
   ``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))`` (or with the 0.5 on
   ``x``), and its tanh form as eight, ``Pow(x, 3)`` scaled by 0.044715,
   added to ``x``, scaled by sqrt(2/pi), ``Tanh``, then the same three. Each
   such chain, whose intermediates nothing else reads, becomes one standard
   ``Gelu`` node (``approximate`` none or tanh). Likewise each RMSNorm's
   seven nodes become one ``RMSNormalization`` (:func:`~.norms.fuse_rms_norm`),
   and each rotary embedding's ``x cos + rotate_half(x) sin`` one
   ``edgevla.Rotary`` (:mod:`.rotary`).
2. **Linear layers**: ``MatMul(x, W)`` or ``Gemm(x, W, C)`` with a constant
   2-D weight becomes one ``edgevla.Linear`` node, absorbing

   * a following ``Add`` of a constant 1-D bias of N values;
   * a following ``Relu`` or ``Gelu`` (tanh or exact erf form), run in the
     kernel's epilogue (the float32 NumPy path applies it on its output),
     unless it is a GEGLU's gate, which step 4 applies with the product;
   * then a following ``Add`` of another (non-constant) value, the skip
     connection of a residual block: the node reads that value as a second
     input, and the int8 kernels add it in their epilogue;
   * on its input, a ``QuantizeLinear → DequantizeLinear`` pair with one
     per-tensor scale and an int8 zero point of 0, when the weight is int8:
     the layer then reads the ``QuantizeLinear``'s int8 output directly and
     the pair's scale is the kernel's activation scale. Layers sharing one
     pair (q, k, v) share its ``QuantizeLinear``, so the activation is
     quantized once.

   A node is absorbed only when the layer's intermediate value has no other
   reader and is not a graph output, so the rewrite never changes what any
   other node sees.
   Then int8 layers that read the same value with the same kernel and
   epilogue (q, k and v) are stacked into one layer, one GEMM
   (:mod:`.siblings`), each reading its columns of the output as a view.
   A ``Conv`` of one group with a constant weight (and a ``Relu`` only
   it feeds, then an ``Add`` of a skip connection) becomes one
   ``edgevla.Conv`` node run by a linear layer over its input's windows
   (:class:`~.conv.ConvLayer`), on the kernel the same rules choose: a Q/DQ
   convolution (int8 filters, a static int8 input) reads the
   ``QuantizeLinear``'s codes, and its int8 GEMM gathers the windows itself.
3. **Shared activation quantization**: when several dynamic int8 layers
   read the same activation (q, k and v), one ``edgevla.QuantizePerToken``
   node quantizes it once and each layer reads its codes and scales; the
   numbers are the ones each layer would have computed itself.
4. **Attention**: the transposes, products, scaling and softmax of each
   attention head group become one ``edgevla.Attention`` node
   (:mod:`.attention`), under the same only-reader rule; q, k and v cut from
   one stacked projection by a transpose are strided views of it
   (:func:`~.attention.view_stacked_heads`), not a copy. Then each gated
   MLP's ``silu(gate) * up`` (or GEGLU's ``gelu(a) * b``), and each SiLU
   alone, becomes one ``edgevla.Gated`` node (:mod:`.gated`).
5. **LayerNorm + quantization**: a ``LayerNormalization`` or
   ``RMSNormalization`` whose only reader is a static int8 ``QuantizeLinear``
   becomes one ``edgevla.LayerNormS8`` node (:mod:`.norms`), int8 codes out.
6. **GroupNorm**: ``nn.GroupNorm``'s six exported nodes become one
   ``edgevla.GroupNorm`` step (:mod:`.group_norm`).
7. **Output stages**: a linear layer, convolution or GroupNorm step takes
   over a ``Relu`` after its residual (a ResNet block's end; a convolution
   absorbs its block's skip ``Add`` in step 2 as a linear layer does, a
   GroupNorm here, and FiLM's ``Mul`` and ``Add`` of a conditioning scale
   and shift) and then a static int8 ``QuantizeLinear`` of its output:
   it writes the next int8 layer's codes itself, tile by tile in its threads,
   and its float output only where something else reads it
   (:func:`_fuse_output_stages`).
8. **Channels last**: the values between convolutions stay ``(N, *spatial, C)``
   (:mod:`.layout`), so no convolution transposes its input or output, nor
   does a GroupNorm between them.

Before step 2, equal ``QuantizeLinear`` nodes of one value (the exporter
writes one Q/DQ pair per consuming linear: q, k and v each quantize the same
LayerNorm output with the same scale) are merged into one, so the value is
quantized once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .attention import fuse_attention, view_stacked_heads
from .conv_transpose import rewrite_conv_transposes
from .graph import Graph, GraphView, Node, QuantizedConstant, layer_name
from .conv import CONV_OP, ConvLayer, conv_matrix
from .linear import LINEAR_OP, LinearLayer, LinearSpec, LinearWeight, weight_from_constant
from .gated import fuse_gated
from .group_norm import GROUP_NORM_OP, fuse_group_norm
from .layout import keep_channels_last
from .norms import fuse_layer_norm_quantize, fuse_rms_norm
from .rotary import fuse_rotary
from .ops import OpContext
from .siblings import merge_sibling_linears
from .weights import WeightArena
QUANTIZE_TOKENS_OP = "edgevla.QuantizePerToken"


def fuse(graph: Graph, precision: str, arena: WeightArena | None = None) -> list[LinearLayer]:
    """Rewrite ``graph`` in place; returns the linear layers, in graph order (weights kept in ``arena``).

    ``precision`` is how float work runs (:data:`~edgevla.runtime.linear.PRECISIONS`), except in the
    layers the graph's metadata says the build kept on a float input (``graph.float_inputs``): those
    run ``fp32`` (int8 or float weights) or int4 weight-only."""
    def precision_of(layer: str) -> str:
        return "fp32" if any(part in graph.float_inputs for part in layer.split("+")) else precision

    rewrite_conv_transposes(graph)
    _fuse_gelu(graph)
    fuse_rms_norm(graph)
    fuse_rotary(graph)
    _merge_equal_quantizations(graph)
    _fuse_linears(graph, precision_of, arena)
    _fuse_convs(graph, precision_of, arena)
    _share_token_quantization(graph)
    fuse_attention(graph)
    view_stacked_heads(graph)
    fuse_gated(graph)
    fuse_layer_norm_quantize(graph)
    fuse_group_norm(graph)
    _fuse_output_stages(graph)
    graph.prune()
    keep_channels_last(graph)
    layers = [node.attrs["layer"] if node.op_type == LINEAR_OP else node.attrs["conv"].layer
              for node in graph.nodes if node.op_type in (LINEAR_OP, CONV_OP)]
    for layer in layers:
        if precision_of(layer.name) != precision:  # the plan says why this one does not follow the precision
            for choice in layer.choices:
                choice.rule += "; input kept float: the build's mixed precision raised this layer"
    return layers


# --------------------------------------------------------------------------- helpers


def _other(node: Node, value: str) -> str | None:
    """The other input of a binary node that reads ``value``."""
    if len(node.inputs) != 2 or value not in node.inputs:
        return None
    a, b = node.inputs
    return b if a == value else a


def _close(x: float | None, target: float) -> bool:
    return x is not None and abs(x - target) <= 1e-6 * abs(target)


def _replace(graph: Graph, removed: list[Node], new: Node, at_first: bool = False) -> None:
    """Put ``new`` where the last of ``removed`` was (the first, with ``at_first``) and drop the rest."""
    ids = {id(n) for n in removed}
    where = [i for i, n in enumerate(graph.nodes) if id(n) in ids]
    last = where[0] if at_first else where[-1]
    nodes = []
    for i, n in enumerate(graph.nodes):
        if i == last:
            nodes.append(new)
        elif id(n) not in ids:
            nodes.append(n)
    graph.nodes = nodes


# --------------------------------------------------------------------------- GELU


def _fuse_gelu(graph: Graph) -> None:
    view = GraphView(graph)
    for core in [n for n in graph.nodes if n.op_type in ("Erf", "Tanh")]:
        match = _match_gelu(view, core) if core.op_type == "Erf" else _match_gelu_tanh(view, core)
        if match is None:
            continue
        x, chain = match
        approximate = "none" if core.op_type == "Erf" else "tanh"
        gelu = Node(chain[-1].name, "Gelu", (x,), (chain[-1].outputs[0],), {"approximate": approximate})
        _replace(graph, chain, gelu)
        view.refresh()


def _scaled_by(view: GraphView, node: Node | None, factor: float) -> str | None:
    """The value ``node`` multiplies by the constant ``factor`` (either side), if it does."""
    if node is None or node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _close(view.scalar(b), factor):
        return a
    if _close(view.scalar(a), factor):
        return b
    return None


def _match_gelu_tanh(view: GraphView, tanh: Node) -> tuple[str, list[Node]] | None:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, as the exporter spells
    ``F.gelu(approximate="tanh")`` before opset 20: eight nodes around the ``Tanh``."""
    scaled = tanh.inputs[0]
    outer = view.producer.get(scaled)
    inner = _scaled_by(view, outer, math.sqrt(2.0 / math.pi))
    add = view.producer.get(inner or "")
    if inner is None or view.only_reader(scaled) is not tanh or add is None or add.op_type != "Add":
        return None
    if view.only_reader(inner) is not outer:
        return None
    for x, cubic in (add.inputs, add.inputs[::-1]):
        cube_scaled = view.producer.get(cubic)
        cube = _scaled_by(view, cube_scaled, 0.044715)
        power = view.producer.get(cube or "")
        if (power is not None and power.op_type == "Pow" and power.inputs[0] == x
                and _close(view.scalar(power.inputs[1]), 3.0) and view.only_reader(cubic) is add
                and view.only_reader(cube) is cube_scaled):
            break
    else:
        return None
    head = _gelu_head(view, x, tanh)
    return None if head is None else (x, [power, cube_scaled, add, outer, tanh, *head])


def _gelu_head(view: GraphView, x: str, core: Node) -> list[Node] | None:
    """``0.5 * (1 + core)`` then ``* x``, or ``x * (1 + core)`` then ``* 0.5``: the three nodes after the
    erf or tanh of a GELU."""
    add = view.only_reader(core.outputs[0])
    if add is None or add.op_type != "Add" or not _close(view.scalar(_other(add, core.outputs[0]) or ""), 1.0):
        return None
    m1 = view.only_reader(add.outputs[0])
    if m1 is None or m1.op_type != "Mul":
        return None
    other = _other(m1, add.outputs[0])
    m2 = view.only_reader(m1.outputs[0])
    if m2 is None or m2.op_type != "Mul":
        return None
    last = _other(m2, m1.outputs[0])
    if _close(view.scalar(other or ""), 0.5) and last == x:
        return [add, m1, m2]
    if other == x and _close(view.scalar(last or ""), 0.5):
        return [add, m1, m2]
    return None


def _match_gelu(view: GraphView, erf: Node) -> tuple[str, list[Node]] | None:
    scaled = erf.inputs[0]
    div = view.producer.get(scaled)
    if div is None or view.only_reader(scaled) is not erf:
        return None
    if div.op_type == "Div" and _close(view.scalar(div.inputs[1]), float(np.sqrt(2.0))):
        x = div.inputs[0]
    elif div.op_type == "Mul":
        x = next((i for i, c in zip(div.inputs, div.inputs[::-1]) if _close(view.scalar(c), float(np.sqrt(0.5)))),
                 None)
        if x is None:
            return None
    else:
        return None
    head = _gelu_head(view, x, erf)
    return None if head is None else (x, [div, erf, *head])


def _gates(view: GraphView, activation: Node) -> bool:
    """Whether ``activation`` is a GEGLU's gate, ``Mul(gelu(a), b)`` its only reader: left to the gated step
    (:mod:`.gated`), which applies it while it multiplies, so that the gate and value layers, one epilogue
    alike, stack into one GEMM (:mod:`.siblings`) as a SwiGLU's do."""
    times = view.only_reader(activation.outputs[0])
    return (times is not None and times.op_type == "Mul" and len(times.inputs) == 2
            and len(set(times.inputs)) == 2 and all(view.const(i) is None for i in times.inputs))


# --------------------------------------------------------------------------- equal quantizations


def _merge_equal_quantizations(graph: Graph) -> None:
    """Readers of a ``QuantizeLinear`` that repeats an earlier one (same value, equal constant scale and zero
    point, same attributes) read the earlier one's output instead; the repeat is dropped."""
    outputs = set(graph.outputs)
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        if renamed:
            node.inputs = tuple(renamed.get(i, i) for i in node.inputs)
        key = _quantization_key(graph, node)
        if key is None or node.outputs[0] in outputs:
            kept.append(node)
            continue
        if key in first:
            renamed[node.outputs[0]] = first[key]
            continue
        first[key] = node.outputs[0]
        kept.append(node)
    graph.nodes = kept


def _quantization_key(graph: Graph, node: Node) -> tuple | None:
    """What makes two ``QuantizeLinear`` nodes compute the same thing, when their scale and zero point are
    constants."""
    if node.op_type != "QuantizeLinear" or len(node.outputs) != 1:
        return None
    consts = [graph.constants.get(name) for name in node.inputs[1:]]
    if any(c is None for c in consts):
        return None
    return (node.inputs[0], tuple((c.dtype.str, c.shape, c.tobytes()) for c in consts),
            tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))


# --------------------------------------------------------------------------- linear layers


def _fuse_linears(graph: Graph, precision_of: Callable[[str], str], arena: WeightArena | None) -> None:
    view = GraphView(graph)
    for node in list(graph.nodes):
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        found = _match_linear(view, node)
        if found is None:
            continue
        spec, x, absorbed = found
        out = absorbed[-1].outputs[0]
        inputs = (x,) if spec.residual is None else (x, spec.residual)
        _replace(graph, absorbed, Node(spec.name, LINEAR_OP, inputs, (out,), {"spec": spec}))
        view.refresh()
    merge_sibling_linears(graph, precision_of)
    for node in graph.nodes:
        if node.op_type == LINEAR_OP:
            spec = node.attrs.pop("spec")
            node.attrs["layer"] = spec.build(precision_of(spec.name), arena)


def _fuse_convs(graph: Graph, precision_of: Callable[[str], str], arena: WeightArena | None) -> None:
    """Every one-group ``Conv`` with a constant weight (and bias), and a ReLU only it feeds, as a layer.

    A weight the graph dequantizes from int8 codes, one scale per filter, keeps its codes; when the
    input then passes a static int8 ``QuantizeLinear → DequantizeLinear`` pair, the layer reads the
    pair's int8 codes (the windows are gathered in int8) and computes ``int8-static``."""
    view = GraphView(graph)
    for node in list(graph.nodes):
        w = view.const(node.inputs[1]) if node.op_type == "Conv" and len(node.inputs) > 1 else None
        if w is None or w.dtype != np.float32 or not 3 <= w.ndim <= 5 or int(node.attrs.get("group", 1)) != 1:
            continue
        kernel = [int(k) for k in node.attrs.get("kernel_shape", w.shape[2:])]
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
        bias = _as_bias(view.const(node.inputs[2]), w.shape[0]) if has_bias else None
        if kernel != list(w.shape[2:]) or (has_bias and bias is None) or node.inputs[0] in graph.constants:
            continue
        absorbed, out, activation = [node], node.outputs[0], "none"
        reader = view.only_reader(out)
        if reader is not None and reader.op_type == "Relu":
            absorbed.append(reader)
            out, activation = reader.outputs[0], "relu"
            reader = view.only_reader(out)
        residual = _skip_input(view, reader, out)
        if residual is not None:
            absorbed.append(reader)
            out = reader.outputs[0]
        name = layer_name(node.inputs[1])
        weight = LinearWeight(name, conv_matrix(w))
        codes = _filter_codes(graph.quantized.get(node.inputs[1]), w.shape[0])
        static_scale, layer_input = None, node.inputs[0]
        if codes is not None:
            weight.codes, weight.scale = conv_matrix(codes[0], np.int8), codes[1]
            quantized_input = _static_int8_input(view, node.inputs[0])
            if quantized_input is not None:
                layer_input, static_scale = quantized_input
        layer = LinearSpec(name, weight, bias, activation, static_scale,
                           residual=residual).build(precision_of(name), arena)
        context = OpContext(dict(node.attrs), (), graph.opset, 1, node.describe())
        inputs = (layer_input,) if residual is None else (layer_input, residual)
        _replace(graph, absorbed, Node(name, CONV_OP, inputs, (out,), {"conv": ConvLayer(context, kernel, layer)}))
        view.refresh()


def _skip_input(view: GraphView, reader: Node | None, out: str, op: str = "Add") -> str | None:
    """The other input of ``reader`` when it is an ``Add`` (or ``op``) of ``out`` and a computed value (a skip
    connection; FiLM's scale, for a ``Mul``)."""
    if reader is None or reader.op_type != op:
        return None
    other = _other(reader, out)
    return other if other and other != out and other not in view.graph.constants else None


def _fuse_output_stages(graph: Graph) -> None:
    """A layer (linear or convolution) takes over what the graph does to its output next, as its output stage
    (:meth:`~.linear.LinearLayer.set_output_stage`): a ``Relu`` after its residual, when only that reads the
    sum (a ResNet block's end), then a static int8 ``QuantizeLinear`` of the result (per-tensor scale > 0,
    zero point 0: the next int8 layer's input), whose codes the node then writes as an output of its own.
    The float output stays an output only where something else reads it (the next block's skip). The node
    keeps its place (every value the stage reads is ready there)."""
    view = GraphView(graph)
    for node in list(graph.nodes):
        if node.op_type == GROUP_NORM_OP:
            _fuse_group_norm_stage(graph, view, node)
            continue
        layer = _stageable_layer(node)
        if layer is None:
            continue
        absorbed, out, relu_after = [node], node.outputs[0], False
        reader = view.only_reader(out)
        if layer.residual and reader is not None and reader.op_type == "Relu":
            absorbed.append(reader)
            out, relu_after = reader.outputs[0], True
        outputs, codes_scale = _quantized_outputs(view, out, absorbed)
        if codes_scale is None and not relu_after:
            continue
        layer.set_output_stage(relu_after, codes_scale)
        if node.op_type == CONV_OP:
            node.attrs["conv"].keep_float = len(outputs) == 2 or codes_scale is None
        _replace(graph, absorbed, Node(node.name, node.op_type, node.inputs, outputs, node.attrs), at_first=True)
        view.refresh()


def _fuse_group_norm_stage(graph: Graph, view: GraphView, node: Node) -> None:
    """The same for a GroupNorm step, which also takes over a ``Mul`` by a computed value and then an ``Add`` of
    one after it: FiLM's scale and shift (Diffusion Policy's conditional blocks: conv, GroupNorm, Mish,
    * scale + shift, then the next conv's QuantizeLinear), or the skip ``Add`` of a GroupNorm ResNet's block
    end (conv, GroupNorm, + skip, ReLU, then the next block's QuantizeLinear)."""
    norm = node.attrs["norm"]
    absorbed, out, inputs, relu_after = [node], node.outputs[0], node.inputs, False
    reader = view.only_reader(out)
    scale = _skip_input(view, reader, out, "Mul")
    if scale is not None:
        absorbed.append(reader)
        out, inputs = reader.outputs[0], (*inputs, scale)
        reader = view.only_reader(out)
    residual = _skip_input(view, reader, out)
    if residual is not None:
        absorbed.append(reader)
        out, inputs = reader.outputs[0], (*inputs, residual)
        reader = view.only_reader(out)
        if reader is not None and reader.op_type == "Relu":
            absorbed.append(reader)
            out, relu_after = reader.outputs[0], True
    outputs, codes_scale = _quantized_outputs(view, out, absorbed)
    if codes_scale is None and residual is None and scale is None:
        return
    norm.set_output_stage(residual is not None, relu_after, codes_scale, keep_float=len(outputs) == 2,
                          scaled=scale is not None)
    # At the last Mul's or Add's place (its operands may be computed after the GroupNorm), else at its own.
    operands = 1 + (scale is not None) + (residual is not None)
    _replace(graph, absorbed[:operands], Node(node.name, GROUP_NORM_OP, inputs, outputs, node.attrs))
    graph.nodes = [n for n in graph.nodes if not any(n is r for r in absorbed[operands:])]
    view.refresh()


def _quantized_outputs(view: GraphView, out: str, absorbed: list[Node]) -> tuple[tuple[str, ...], float | None]:
    """The outputs of a node that also takes over a static int8 ``QuantizeLinear`` of ``out`` (appended to
    ``absorbed``), and its scale: ``(codes,)``, or ``(out, codes)`` where something else reads ``out`` too;
    ``((out,), None)`` when no such quantization reads ``out``."""
    quantize = _static_quantize_of(view, out)
    if quantize is None:
        return (out,), None
    q, codes_scale = quantize
    absorbed.append(q)
    float_read = out in view.outputs or any(r is not q for r, _ in view.readers.get(out, []))
    return ((out, q.outputs[0]) if float_read else (q.outputs[0],)), codes_scale


def _stageable_layer(node: Node) -> LinearLayer | None:
    """The layer of a linear or convolution node that can take an output stage: not stacked, and reading its
    input as it is (not codes quantized per token by a shared ``edgevla.QuantizePerToken``)."""
    if node.op_type == CONV_OP:
        return node.attrs["conv"].layer
    if node.op_type != LINEAR_OP:
        return None
    layer = node.attrs["layer"]
    if layer.parts or len(node.inputs) != (2 if layer.residual else 1):
        return None
    return layer


def _static_quantize_of(view: GraphView, value: str) -> tuple[Node, float] | None:
    """A reader of ``value`` that is a static int8 ``QuantizeLinear`` of it (one constant scale > 0, an int8
    zero point of 0), and its scale as float32."""
    for reader, _ in view.readers.get(value, []):
        if reader.op_type != "QuantizeLinear" or reader.inputs[0] != value or len(reader.inputs) < 3:
            continue
        if reader.attrs.get("output_dtype", 0) or reader.attrs.get("block_size", 0) or len(reader.outputs) != 1:
            continue
        scale, zero = view.const(reader.inputs[1]), view.const(reader.inputs[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype != np.int8:
            continue
        s = float(np.float32(scale.reshape(())))
        if int(zero.reshape(())) == 0 and np.isfinite(s) and s > 0:
            return reader, s
    return None


def _filter_codes(quantized: QuantizedConstant | None, filters: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 codes, one scale per filter) of a convolution weight dequantized per output channel, zero point 0."""
    if quantized is None or quantized.bits != 8 or not quantized.symmetric() or quantized.block_size:
        return None
    scale = np.asarray(quantized.scale, np.float32).reshape(-1)
    if scale.size == 1:
        scale = np.full(filters, scale[0], np.float32)
    elif quantized.axis != 0 or scale.size != filters:
        return None
    return quantized.codes, np.ascontiguousarray(scale)


def _share_token_quantization(graph: Graph) -> None:
    """One ``edgevla.QuantizePerToken`` per activation that several dynamic int8 layers read."""
    names = {n for node in graph.nodes for n in (*node.inputs, *node.outputs)} | set(graph.constants)
    for value, readers in graph.consumers().items():
        layers = [node for node, _ in readers if node.op_type == LINEAR_OP and len(node.inputs) == 1
                  and node.attrs["layer"].takes_token_codes]
        codes, scales = f"{value}::int8", f"{value}::token_scale"
        if len(layers) < 2 or codes in names or scales in names:
            continue
        first = min(graph.nodes.index(node) for node in layers)
        graph.nodes.insert(first, Node(f"{value}::quantize_per_token", QUANTIZE_TOKENS_OP, (value,),
                                       (codes, scales)))
        for node in layers:
            node.inputs = (codes, scales)


def _match_linear(view: GraphView, node: Node) -> tuple[LinearSpec, str, list[Node]] | None:
    graph = view.graph
    x, w_name = node.inputs[0], node.inputs[1]
    w = view.const(w_name)
    if w is None or w.ndim != 2 or w.dtype != np.float32 or x in graph.constants:
        return None
    bias = None
    if node.op_type == "MatMul":
        weight = weight_from_constant(w_name, w, graph.quantized.get(w_name), transposed=True)
    else:
        a = node.attrs
        if a.get("transA", 0):
            return None
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        weight = weight_from_constant(w_name, w, graph.quantized.get(w_name),
                                      transposed=not a.get("transB", 0), scale_factor=alpha)
        if len(node.inputs) > 2 and node.inputs[2]:
            c = view.const(node.inputs[2])
            if c is None:
                return None
            bias = _as_bias(c * np.float32(beta), weight.values.shape[0])
            if bias is None:
                return None
    n = weight.values.shape[0]
    absorbed = [node]
    out = node.outputs[0]
    reader = view.only_reader(out)
    if reader is not None and reader.op_type == "Add":
        extra = _as_bias(view.const(_other(reader, out) or ""), n)
        if extra is not None:
            bias = extra if bias is None else bias + extra
            absorbed.append(reader)
            out = reader.outputs[0]
            reader = view.only_reader(out)
    activation = "none"
    if reader is not None and reader.op_type == "Relu":
        activation = "relu"
    elif reader is not None and reader.op_type == "Gelu" and not _gates(view, reader):
        activation = "gelu_tanh" if reader.attrs.get("approximate", "none") == "tanh" else "gelu_erf"
    if activation != "none":
        absorbed.append(reader)
        out = reader.outputs[0]
        reader = view.only_reader(out)
    residual = _skip_input(view, reader, out)
    if residual is not None:
        absorbed.append(reader)
    static_scale, layer_input = None, x
    if weight.codes is not None:
        quantized_input = _static_int8_input(view, x)
        if quantized_input is not None:
            layer_input, static_scale = quantized_input
    spec = LinearSpec(layer_name(w_name), weight, bias, activation, static_scale, residual=residual)
    return spec, layer_input, absorbed


def _as_bias(c: np.ndarray | None, n: int) -> np.ndarray | None:
    """A constant that adds the same value to every row: 1-D of N values, or a scalar."""
    if c is None or c.dtype.kind != "f" or c.ndim > 1 or c.size not in (1, n):
        return None
    return np.ascontiguousarray(np.broadcast_to(c.astype(np.float32).reshape(-1), (n,)))


def _static_int8_input(view: GraphView, x: str) -> tuple[str, float] | None:
    """(int8 value, scale) when ``x = DequantizeLinear(QuantizeLinear(v, s, 0), s, 0)``, one int8 scale."""
    dq = view.producer.get(x)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.inputs) < 3:
        return None
    q = view.producer.get(dq.inputs[0])
    if q is None or q.op_type != "QuantizeLinear" or len(q.inputs) < 3:
        return None
    scales = [view.const(q.inputs[1]), view.const(dq.inputs[1])]
    zeros = [view.const(q.inputs[2]), view.const(dq.inputs[2])]
    if any(s is None or s.size != 1 for s in scales) or any(z is None or z.size != 1 for z in zeros):
        return None
    if any(z.dtype != np.int8 or int(z.reshape(())) != 0 for z in zeros):
        return None
    if float(scales[0].reshape(())) != float(scales[1].reshape(())) or q.attrs.get("output_dtype", 0):
        return None
    scale = float(np.float32(scales[0].reshape(())))
    return (q.outputs[0], scale) if scale > 0 else None

