"""Check an ONNX file against TensorRT's explicit-quantization rules.

Rules (each :class:`LintIssue` names one):

* ``zero-point``   — every QuantizeLinear / DequantizeLinear has an explicit
  zero point that is int8 (int4 allowed on weights; E4M3 for an fp8 pair) and
  all zeros: symmetric.
* ``weight-axis``  — a DequantizeLinear on a MatMul / Gemm / Conv / ConvTranspose weight is
  per channel along that weight's output-channel axis (MatMul B: last axis;
  Gemm B: 0 with ``transB=1`` else 1; Conv W: 0; ConvTranspose W: 1), or blocked along the input axis.
* ``dq-input``     — an integer (or fp8) tensor reaches MatMul / Gemm / Conv / ConvTranspose only
  through DequantizeLinear, and a quantized activation goes with a quantized weight.
* ``quantized-bias`` — a Gemm / Conv / ConvTranspose bias is float, never dequantized.
* ``scale``        — every Q/DQ scale is positive and finite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgevlaError

_COMPUTE = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SIGNED_WEIGHT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT4, onnx.TensorProto.FLOAT8E4M3FN}
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
              onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
              onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}  # quantized storage types


@dataclass(frozen=True)
class LintIssue:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def lint_qdq(model: onnx.ModelProto | str | os.PathLike) -> list[LintIssue]:
    """Every rule broken by ``model`` (an empty list means TensorRT-ready Q/DQ)."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(os.fspath(model))
        except Exception as e:  # unreadable file or not protobuf
            raise EdgevlaError(f"cannot read ONNX model {model}: {type(e).__name__}") from e
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:  # Constant nodes count as initializers
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            inits[t.name] = t
    issues: list[LintIssue] = []
    for node in graph.node:
        if node.op_type in _QDQ:
            issues += _check_qdq(node, inits)
        elif node.op_type in _COMPUTE:
            issues += _check_compute(node, inits, producer)
    return issues


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _check_qdq(node, inits) -> list[LintIssue]:
    issues = []
    name = _name(node)
    if len(node.input) < 3 or not node.input[2]:
        # Without a zero point QuantizeLinear outputs uint8: asymmetric for TensorRT.
        # A weight's DequantizeLinear may leave it out: the default is 0 of the codes' signed type.
        x = inits.get(node.input[0])
        if not (node.op_type == "DequantizeLinear" and x is not None and x.data_type in _SIGNED_WEIGHT_TYPES):
            issues.append(LintIssue("zero-point", name, "no explicit int8 zero point (the default is uint8)"))
    else:
        zp = inits.get(node.input[2])
        if zp is None:
            issues.append(LintIssue("zero-point", name, "zero point is not a constant"))
        else:
            allowed = {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN}
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                allowed.add(onnx.TensorProto.INT4)
            if zp.data_type not in allowed:
                issues.append(LintIssue("zero-point", name, f"zero point type is "
                                        f"{onnx.TensorProto.DataType.Name(zp.data_type)}, expected INT8 "
                                        "(INT4 on a weight, FLOAT8E4M3FN for fp8)"))
            elif np.any(numpy_helper.to_array(zp) != 0):
                issues.append(LintIssue("zero-point", name, "zero point is not 0 (asymmetric quantization)"))
    scale = inits.get(node.input[1])
    if scale is None:
        issues.append(LintIssue("scale", name, "scale is not a constant"))
    else:
        s = numpy_helper.to_array(scale).astype(np.float64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            issues.append(LintIssue("scale", name, "scale must be positive and finite"))
    return issues


def _weight_output_axis(node, rank: int) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of a compute node's weight."""
    if node.op_type == "MatMul":
        return rank - 1, rank - 2
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (0, 1) if trans_b else (1, 0)
    if node.op_type == "ConvTranspose":
        return 1, 0  # (in, out/groups, kH, kW)
    return 0, 1  # Conv: (out, in/groups, kH, kW)


def _check_compute(node, inits, producer) -> list[LintIssue]:
    issues = []
    name = _name(node)
    act, weight = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.op_type in ("Gemm", "Conv", "ConvTranspose") else ""
    for k, tensor in ((0, act), (1, weight)):
        src = producer.get(tensor)
        integer = (tensor in inits and inits[tensor].data_type in _INT_TYPES) or (
            src is not None and src.op_type == "QuantizeLinear")
        if integer:
            issues.append(LintIssue("dq-input", name, f"input {k} ({tensor}) is an integer tensor "
                                    "not passed through DequantizeLinear"))
    act_src, w_src = producer.get(act), producer.get(weight)
    if w_src is not None and w_src.op_type == "Cast" and w_src.input[0] in producer:
        inner = producer[w_src.input[0]]  # DQ with fp16 scales, cast up to the graph's float type
        w_src = inner if inner.op_type == "DequantizeLinear" else w_src
    act_dq = act_src is not None and act_src.op_type == "DequantizeLinear"
    w_dq = w_src is not None and w_src.op_type == "DequantizeLinear"
    if act_dq and not w_dq:
        issues.append(LintIssue("dq-input", name, "activation is quantized but the weight is not"))
    if w_dq and w_src.input[0] in inits:
        w = inits[w_src.input[0]]
        rank = len(w.dims)
        out_axis, in_axis = _weight_output_axis(node, rank)
        axis = next((a.i for a in w_src.attribute if a.name == "axis"), 1)
        axis = axis + rank if axis < 0 else axis
        block = next((a.i for a in w_src.attribute if a.name == "block_size"), 0)
        scale = inits.get(w_src.input[1])
        sdims = list(scale.dims) if scale is not None else []
        if block:
            ok = axis == in_axis and len(sdims) == rank
        else:
            ok = axis == out_axis and sdims == [w.dims[out_axis]]
        if not ok:
            where = f"axis {axis}, scale shape {sdims}"
            issues.append(LintIssue("weight-axis", _name(w_src), f"weight of {name} must be dequantized per channel "
                                    f"along its output-channel axis {out_axis} (found {where})"))
    if bias:
        src = producer.get(bias)
        if (src is not None and src.op_type == "DequantizeLinear") or (
                bias in inits and inits[bias].data_type in _INT_TYPES):
            issues.append(LintIssue("quantized-bias", name, f"bias {bias} is quantized; keep it float"))
    return issues
