"""Q/DQ ONNX export in the form TensorRT's explicit quantization expects.

The fake-quant model is exported as its float graph (every fake-quant layer
in :func:`edgevla.quant.float_mode`), then each quantized ``Linear``'s
``MatMul`` / ``Gemm`` is rewritten:

* its weight initializer becomes the layer's int8 codes (int4 for W4A16),
  laid out as the graph uses it — ``MatMul`` holds ``W^T`` ``(in, out)``, so
  the output channel is axis 1; ``Gemm`` with ``transB=1`` holds ``W``
  ``(out, in)``, axis 0 — followed by a per-channel ``DequantizeLinear`` on
  that axis (int4: blocked along the input axis, opset 21);
* under W8A8 its activation input passes ``QuantizeLinear → DequantizeLinear``
  with the layer's static scale and an int8 zero point of 0 (consumers of one
  tensor with equal scales share one pair, as for q/k/v);
* its bias stays float (``Gemm``'s C, or the ``Add`` after ``MatMul``).

The integer codes and scales are exactly the fake-quant layer's, so the
ONNX model computes what the PyTorch fake-quant model computes up to float
summation order (and the rare activation that rounds the other way because
ONNX Runtime and PyTorch divide by the scale with different instructions).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgevlaError
from ..quant.fakequant import (
    FakeQuantLinear,
    Int4WeightLinear,
    Int8ActivationInt8WeightLinear,
    Int8WeightLinear,
    float_mode,
    quantized_layers,
)
from .onnx_export import _write_checked, export_onnx, match_initializers

INT4_OPSET = 21  # blocked DequantizeLinear and the int4 type


def export_qdq(model, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Export a fake-quant policy (from :func:`edgevla.quant.quantize_`) to a Q/DQ ONNX file."""
    layers = quantized_layers(model)
    if not layers:
        raise EdgevlaError(f"{type(model).__name__} has no fake-quant layers: run edgevla.quant.quantize_ first")
    unsupported = sorted({m.format_name for m in layers.values()
                          if not isinstance(m, (Int8WeightLinear, Int4WeightLinear))})
    if unsupported:
        raise EdgevlaError(f"Q/DQ ONNX export supports w8a8, w8a16 and w4a16 layers, not {', '.join(unsupported)}")
    path = Path(path)
    with float_mode(model):
        export_onnx(model, path, opset=opset)
        proto = onnx.load(str(path))
        refs = match_initializers(proto, model)
    insert_qdq(proto, layers, refs)
    _write_checked(proto, path)
    return path


def reference_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session that executes Q/DQ literally (dequantize, then float MatMul).

    With its QDQ fusions on, ONNX Runtime replaces DQ→MatMul by integer
    kernels (``MatMulNBits`` quantizes the float activation of a weight-only
    layer on the fly), which is fast but no longer the fake-quant arithmetic;
    ``session.disable_quant_qdq`` turns those fusions off for parity checks.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def insert_qdq(proto: onnx.ModelProto, layers: dict[str, FakeQuantLinear], refs) -> None:
    """Rewrite ``proto`` in place: quantized weights + DequantizeLinear, Q/DQ on activations."""
    if any(isinstance(m, Int4WeightLinear) for m in layers.values()):
        _require_opset(proto, INT4_OPSET)  # first: it replaces the graph message
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))


    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes to insert before it
    shared_act: dict[tuple[str, float], str] = {}
    done: set[str] = set()
    for name, layer in layers.items():
        ref = refs.get(f"{name}.weight")
        if ref is None:
            raise EdgevlaError(f"Q/DQ export: the weight of {name} is not an initializer of the exported graph")
        users = consumers.get(ref.name, [])
        if not users or any(n.op_type not in ("MatMul", "Gemm") or k != 1 for n, k in users):
            raise EdgevlaError(f"Q/DQ export: {name}'s weight does not feed MatMul/Gemm as input B")
        if ref.name in done:
            continue
        done.add(ref.name)
        axis = _output_axis(users[0][0], ref.transposed)
        for node, _ in users[1:]:
            if _output_axis(node, ref.transposed) != axis:
                raise EdgevlaError(f"Q/DQ export: {name}'s weight is used with two layouts")
        dq_out = f"{ref.name}_DequantizeLinear"
        weight_nodes = _weight_dq(graph, inits[ref.name], layer, axis, ref.transposed, dq_out)
        first = users[0][0]
        new_nodes.setdefault(id(first), []).extend(weight_nodes)
        for node, k in users:
            node.input[k] = dq_out
            if isinstance(layer, Int8ActivationInt8WeightLinear):
                act = node.input[0]
                scale = float(layer.input_scale)
                key = (act, scale)
                if key not in shared_act:
                    base = f"{act}_{len(shared_act)}"
                    s_name, z_name = f"{base}_scale", f"{base}_zero_point"
                    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name),
                                              numpy_helper.from_array(np.array(0, np.int8), z_name)])
                    q, dq = f"{base}_QuantizeLinear", f"{base}_DequantizeLinear"
                    new_nodes.setdefault(id(node), []).extend([
                        helper.make_node("QuantizeLinear", [act, s_name, z_name], [q], name=q),
                        helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=dq)])
                    shared_act[key] = dq
                node.input[0] = shared_act[key]

    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(new_nodes.get(id(node), []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(_topological(ordered, graph))


def _output_axis(node: onnx.NodeProto, transposed: bool) -> int:
    """Axis of the output channels of input B as the node reads it."""
    if node.op_type == "MatMul":
        axis = 1  # B is (K, N)
    else:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    expected = 1 if transposed else 0  # initializer holds W^T (in, out) or W (out, in)
    if axis != expected:
        raise EdgevlaError(f"Q/DQ export: {node.op_type} {node.name} reads its weight in a layout "
                           "that does not match the Linear's (unexpected transpose)")
    return axis


def _weight_dq(graph, init: onnx.TensorProto, layer: FakeQuantLinear, axis: int, transposed: bool,
               out: str) -> list[onnx.NodeProto]:
    """Replace ``init`` by quantized codes; return the DequantizeLinear producing ``out``."""
    base = init.name
    if isinstance(layer, Int4WeightLinear):
        codes = layer.int4_weight.codes().numpy()  # (out, in), int8 in [-8, 7]
        scale = layer.weight_scale.numpy()  # (out, in / g)
        if transposed:
            codes, scale = codes.T, scale.T
        q = helper.make_tensor(f"{base}_quantized", TensorProto.INT4, codes.shape,
                               _pack_rows(codes), raw=True)
        block_axis = 0 if transposed else 1  # blocks run along the input channels
        zp = helper.make_tensor(f"{base}_zero_point", TensorProto.INT4, scale.shape,
                                np.zeros(((scale.size + 1) // 2,), np.uint8).tobytes(), raw=True)
        attrs = {"axis": block_axis, "block_size": layer.group_size}
    else:
        codes = layer.weight_qdata.numpy()
        scale = layer.weight_scale.numpy()
        if transposed:
            codes = codes.T
        q = numpy_helper.from_array(np.ascontiguousarray(codes), f"{base}_quantized")
        zp = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")
        attrs = {"axis": axis}
    s = numpy_helper.from_array(np.ascontiguousarray(scale.astype(np.float32)), f"{base}_scale")
    _remove_initializer(graph, base)
    graph.initializer.extend([q, s, zp])
    return [helper.make_node("DequantizeLinear", [q.name, s.name, zp.name], [out], name=out, **attrs)]


def _pack_rows(codes: np.ndarray) -> bytes:
    """Flat int4 packing of a whole tensor, ONNX order (element 2k low nibble, 2k+1 high)."""
    flat = (codes.reshape(-1).astype(np.int16) & 0xF)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _remove_initializer(graph, name: str) -> None:
    keep = [i for i in graph.initializer if i.name != name]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _require_opset(proto: onnx.ModelProto, version: int) -> None:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < version:
            converted = onnx.version_converter.convert_version(proto, version)
            proto.CopyFrom(converted)
            return


def _topological(nodes: list[onnx.NodeProto], graph) -> list[onnx.NodeProto]:
    """Nodes reordered so every input is produced first (inserted Q/DQ keep the graph valid)."""
    available = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(n in available for n in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise EdgevlaError("Q/DQ export produced a graph with a cycle or a missing input")
        pending = rest
    return ordered
