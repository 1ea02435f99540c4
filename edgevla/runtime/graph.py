"""An ONNX model as the native runtime holds it: plain nodes, NumPy constants, folded at load.

:func:`load_graph` reads a model once and does everything that does not
depend on the observations:

* every initializer and ``Constant`` node becomes a NumPy array;
* nodes are put in topological order (ONNX asks for it, a hand-edited graph
  may not keep it) and nodes that no output needs are dropped;
* constant subgraphs are evaluated with the runtime's own op implementations
  (:mod:`.ops`), so a weight's ``DequantizeLinear`` or ``Transpose`` costs
  nothing per call;
* a ``DequantizeLinear`` of integer codes is folded to float like any other
  node, but its integer form is kept in :attr:`Graph.quantized`, so that a
  linear layer can run on the codes the exporter wrote rather than on
  requantized floats.

Only the default ONNX domain is accepted, and ops without an implementation
are refused here, at load, with one line naming the op and the node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgevlaError
from . import ops

#: Ops never evaluated at load even when their inputs are constant (none today: every op
#: the runtime implements is deterministic). Kept as the one place to say so.
_NEVER_FOLD: frozenset[str] = frozenset()


@dataclass
class Node:
    """One ONNX node; an omitted optional input is the empty string, as in ONNX."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.op_type} node {self.name!r}" if self.name else f"{self.op_type} node"


@dataclass(frozen=True)
class ValueSpec:
    """A graph input: dtype and shape, ``None`` for a symbolic (dynamic) dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: rank unknown


@dataclass(frozen=True)
class QuantizedConstant:
    """A constant the graph computes as ``DequantizeLinear(codes, scale, zero_point)``.

    ``codes`` are int8 arrays (int4 codes widened to int8, ``bits`` says
    which), laid out as the graph holds them; ``scale`` and ``zero_point`` are
    as the node reads them: a scalar (per tensor), 1-D along ``axis`` (per
    channel), or, with ``block_size > 0``, blocked along ``axis``.
    """

    codes: np.ndarray
    bits: int
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int
    block_size: int

    def symmetric(self) -> bool:
        """Whether the zero point is absent or all zero (the form integer kernels take)."""
        return self.zero_point is None or not np.any(self.zero_point)


@dataclass
class Graph:
    """A loaded model: what remains to compute per call, and the constants it reads."""

    name: str
    opset: int
    inputs: list[ValueSpec]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    quantized: dict[str, QuantizedConstant]
    nodes: list[Node]
    float_inputs: frozenset[str] = frozenset()  # layers whose input the build kept float (FLOAT_INPUTS_KEY)
    ranks: dict[str, int] = field(default_factory=dict)  # values' ranks the model states (value_info), for rewrites

    def consumers(self) -> dict[str, list[tuple[Node, int]]]:
        """``{value name: [(node, input index), ...]}`` over the nodes left to compute."""
        found: dict[str, list[tuple[Node, int]]] = {}
        for node in self.nodes:
            for k, name in enumerate(node.inputs):
                if name:
                    found.setdefault(name, []).append((node, k))
        return found

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def prune(self) -> None:
        """Drop nodes that no graph output depends on."""
        needed = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.outputs):
                kept.append(node)
                needed.update(i for i in node.inputs if i)
        self.nodes = kept[::-1]


class GraphView:
    """Who produces and who reads each value of a graph (``refresh`` after replacing nodes), for the rewrites."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        self.producer = self.graph.producers()
        self.readers = self.graph.consumers()
        self.outputs = set(self.graph.outputs)

    def only_reader(self, value: str) -> Node | None:
        """The single node reading ``value``, if exactly one does and it is not a graph output."""
        readers = self.readers.get(value, [])
        if value in self.outputs or len(readers) != 1:
            return None
        return readers[0][0]

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.constants.get(name)

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1 or v.dtype.kind not in "fiu":
            return None
        return float(v.reshape(()))


#: Model metadata naming, as a JSON list, the layers whose input a quantized build kept in floating point
#: (the layers mixed precision raised: int8 weights with a float input, or float). Runtimes that would
#: otherwise quantize float activations on the fly (the native backend's int8 precision) leave theirs float.
FLOAT_INPUTS_KEY = "edgevla.float_input_layers"


def float_input_layers(proto: onnx.ModelProto) -> frozenset[str]:
    """The layer names under :data:`FLOAT_INPUTS_KEY` in ``proto``'s metadata (empty when absent)."""
    for prop in proto.metadata_props:
        if prop.key == FLOAT_INPUTS_KEY:
            try:
                names = json.loads(prop.value)
            except json.JSONDecodeError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise EdgevlaError(f"model metadata {FLOAT_INPUTS_KEY} must be a JSON list of layer names, "
                                   f"got {prop.value[:60]!r}")
            return frozenset(names)
    return frozenset()


def layer_name(weight: str) -> str:
    """The layer a weight value belongs to: ``trunk.0.mlp.fc1.weight.T_DequantizeLinear`` -> ``trunk.0.mlp.fc1``;
    ``head.weight_fp32`` (an fp16-stored weight cast back to fp32) -> ``head``."""
    name = weight
    for suffix in ("_fp32", "_DequantizeLinear", ".T", ".weight", "_quantized"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_graph(model: onnx.ModelProto | str | os.PathLike) -> Graph:
    """Read, order, check and constant-fold an ONNX model (see the module docstring)."""
    proto = model if isinstance(model, onnx.ModelProto) else _read(model)
    opset = _default_opset(proto)
    g = proto.graph
    constants: dict[str, np.ndarray] = {}
    for init in g.initializer:
        constants[init.name] = _to_array(init, what=f"initializer {init.name!r}")
    for sparse in g.sparse_initializer:
        raise EdgevlaError(f"the native backend does not read sparse initializers ({sparse.values.name!r}); "
                           "export dense weights (zeros are found and used at load)")
    init_names = set(constants)
    inputs = [_value_spec(v) for v in g.input if v.name not in init_names]
    outputs = [v.name for v in g.output]
    nodes: list[Node] = []
    for i, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx"):
            raise EdgevlaError(f"the native backend runs only standard ONNX ops; node {n.name or i!r} is "
                               f"{n.op_type!r} from domain {n.domain!r}")
        attrs = {a.name: _attribute(a, n) for a in n.attribute}
        node = Node(n.name or f"{n.op_type}_{i}", n.op_type, tuple(n.input), tuple(n.output), attrs)
        if node.op_type == "Constant":
            (name,) = node.outputs
            constants[name] = _constant_value(node)
            continue
        nodes.append(node)
    graph = Graph(g.name, opset, inputs, outputs, constants, {}, _topological(nodes, constants, inputs),
                  float_input_layers(proto), _ranks(proto))
    graph.prune()
    for node in graph.nodes:
        ops.check_supported(node.op_type, node.describe(), opset)
    _fold_constants(graph)
    missing = [o for o in outputs if o not in constants and o not in {x for n in graph.nodes for x in n.outputs}
               and o not in {i.name for i in inputs}]
    if missing:
        raise EdgevlaError(f"the model's output {missing[0]!r} is not produced by any node")
    return graph


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value whose type the model states with a shape (inputs, outputs, value_info), or, when
    it states none between nodes (a Q/DQ rewrite drops them), that ONNX shape inference finds."""
    g = proto.graph
    if not g.value_info and g.node:
        try:
            g = onnx.shape_inference.infer_shapes(proto).graph
        except Exception:  # noqa: BLE001 - inference is optional: without ranks, rewrites that need one are skipped
            pass
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.output, *g.value_info]
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


# --------------------------------------------------------------------------- folding


def _fold_constants(graph: Graph) -> None:
    """Evaluate every node whose inputs are all constants; keep integer codes of dequantized weights."""
    remaining: list[Node] = []
    for node in graph.nodes:
        present = [i for i in node.inputs if i]
        if node.op_type in _NEVER_FOLD or not all(i in graph.constants for i in present):
            remaining.append(node)
            continue
        args = [graph.constants[i] if i else None for i in node.inputs]
        results = ops.evaluate(node.op_type, node.attrs, args, graph.opset, len(node.outputs), node.describe())
        for name, value in zip(node.outputs, results, strict=True):
            if name:
                graph.constants[name] = value
        if node.op_type == "DequantizeLinear":
            q = _quantized(node, args)
            if q is not None:
                graph.quantized[node.outputs[0]] = q
    graph.nodes = remaining


def _quantized(node: Node, args: list[np.ndarray | None]) -> QuantizedConstant | None:
    codes, scale = args[0], args[1]
    zero_point = args[2] if len(args) > 2 else None
    name = str(codes.dtype)
    if name in ("int8",):
        bits = 8
    elif name == "int4":
        bits, codes = 4, codes.astype(np.int8)
        zero_point = None if zero_point is None else zero_point.astype(np.int8)
    else:
        return None  # uint8, int32 (biases), float8: no integer kernel takes them
    axis = int(node.attrs.get("axis", 1))
    if codes.ndim:
        axis %= codes.ndim
    return QuantizedConstant(codes, bits, np.asarray(scale, np.float32), zero_point, axis,
                             int(node.attrs.get("block_size", 0)))


# --------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise EdgevlaError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(os.fspath(path))
    except Exception as e:  # protobuf DecodeError, OSError, missing external data: all "unreadable"
        raise EdgevlaError(f"cannot read ONNX model {path}: {_one_line(e)}") from e


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise EdgevlaError("the ONNX model imports no version of the standard op set")


def _to_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # an unknown element type or a truncated payload
        raise EdgevlaError(f"cannot read {what} of the ONNX model: {_one_line(e)}") from e


def _value_spec(v: onnx.ValueInfoProto) -> ValueSpec:
    t = v.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    except Exception as e:
        raise EdgevlaError(f"model input {v.name!r} has an element type the native backend cannot take") from e
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return ValueSpec(v.name, dtype, shape)


def _attribute(a: onnx.AttributeProto, n: onnx.NodeProto) -> Any:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise EdgevlaError(f"the native backend does not run control flow: {n.op_type} node {n.name!r} has a "
                           "subgraph")
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return _to_array(value, what=f"attribute {a.name!r} of node {n.name!r}")
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _constant_value(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    raise EdgevlaError(f"{node.describe()} holds a constant kind the native backend does not read "
                       f"({', '.join(a) or 'no value'})")


def _topological(nodes: list[Node], constants: dict[str, np.ndarray], inputs: Iterable[ValueSpec]) -> list[Node]:
    available = set(constants) | {v.name for v in inputs} | {""}
    producer = {o: node for node in nodes for o in node.outputs if o}
    order: list[Node] = []
    state: dict[int, int] = {}  # id(node) -> 1 visiting, 2 done

    for root in nodes:
        if state.get(id(root)) == 2:
            continue
        stack: list[tuple[Node, int]] = [(root, 0)]
        state[id(root)] = 1
        while stack:
            node, k = stack.pop()
            if k < len(node.inputs):
                stack.append((node, k + 1))
                name = node.inputs[k]
                if name in available:
                    continue
                dep = producer.get(name)
                if dep is None:
                    raise EdgevlaError(f"{node.describe()} reads {name!r}, which no node, input or "
                                       "initializer of the model produces")
                if state.get(id(dep)) == 1:
                    raise EdgevlaError(f"the ONNX graph has a cycle through {dep.describe()}")
                if state.get(id(dep)) != 2:
                    state[id(dep)] = 1
                    stack.append((dep, 0))
            else:
                state[id(node)] = 2
                order.append(node)
    return order


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
