"""Q/DQ ONNX export in the form TensorRT's explicit quantization expects.

The fake-quant model is exported as its float graph (every fake-quant layer
in :func:`edgevla.quant.float_mode`), then each quantized ``Linear``'s
``MatMul`` / ``Gemm``, and each quantized convolution's ``Conv`` or ``ConvTranspose``, is rewritten:

* its weight initializer becomes the layer's int8 codes (int4 for W4A16),
  laid out as the graph uses it — ``MatMul`` holds ``W^T`` ``(in, out)``, so
  the output channel is axis 1; ``Gemm`` with ``transB=1`` holds ``W``
  ``(out, in)``, axis 0; ``Conv`` holds ``(out, in / groups, *kernel)``,
  axis 0; ``ConvTranspose`` (one group) holds ``(in, out, *kernel)``, axis 1
  — followed by a per-channel ``DequantizeLinear`` on
  that axis (int4: blocked along the input axis, opset 21);
* under W8A8 its activation input passes ``QuantizeLinear → DequantizeLinear``
  with the layer's static scale and an int8 zero point of 0 (consumers of one
  tensor with equal scales share one pair, as for q/k/v);
* its bias stays float (``Gemm``'s, ``Conv``'s or ``ConvTranspose``'s, or the ``Add`` after ``MatMul``).

FP8 layers take the same form with E4M3 (``FLOAT8E4M3FN``) codes and zero
points (opset 19). The integer codes and scales are exactly the fake-quant
layer's, so the ONNX model computes what the PyTorch fake-quant model
computes up to float summation order — and, under W8A8, the rare activation
that lands within float noise of a rounding tie and rounds the other way.

Tensors left in floating point are stored as the model's float storage type
(:func:`store_floats_as`: fp16 or bf16 initializers, each followed by a
``Cast`` to fp32), but only where the value is exactly representable in that
type — :func:`edgevla.quant.round_float_storage` made the fake-quant model's
tensors so — so storage costs no accuracy and parity stays exact. The
compute graph and its inputs and outputs stay fp32. Debug metadata that the
exporter attaches to every node (Python stack traces, FX node text) is
stripped: it is a third of a small model's file and nothing reads it.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgevlaError
from ..quant.fakequant import (
    FakeQuantLayer,
    Float8Linear,
    Int4WeightLinear,
    Int8Weights,
    StaticInt8Input,
    float_mode,
    is_any_convolution,
    is_convolution,
    is_transposed_convolution,
    quantizable_layers,
    quantized_layers,
)
from ..runtime.graph import FLOAT_INPUTS_KEY
from .onnx_export import _write_checked, export_onnx, match_initializers

if TYPE_CHECKING:
    from .trace_cache import TraceCache

INT4_OPSET = 21  # blocked DequantizeLinear and the int4 type
FP8_OPSET = 19   # float8 QuantizeLinear / DequantizeLinear
STORAGE_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
MIN_STORED_ELEMENTS = 16  # smaller float tensors stay fp32: a Cast node costs more than it saves
_ACTIVATION_LAYERS = (StaticInt8Input, Float8Linear)
ORT_DISABLED_OPTIMIZERS = ("ReluQuantRewrite",)  # wrong for fp8 Q/DQ in ONNX Runtime 1.32: see reference_session
_LITERAL_QDQ = {"session.disable_quant_qdq": "1"}  # see ort_qdq_entries


def ort_qdq_entries(features: Mapping[str, bool] | None = None, machine: str | None = None) -> dict[str, str]:
    """Session config entries ONNX Runtime needs on this host (or on one with ``features``, by their
    /proc/cpuinfo names, and ``machine``, as ``platform.machine()`` names it) to compute a Q/DQ model's
    arithmetic.

    On x86-64 ONNX Runtime (1.32) runs int8 Q/DQ layers as uint8 x int8 integer kernels (its
    ``QDQS8ToU8Transformer`` turns the int8 activations into uint8). Without VNNI those multiply with
    ``vpmaddubsw``, whose pairwise 16-bit sums saturate where an activation code near 255 meets weights near
    ±127: on a Zen 3 (AVX2, no VNNI) a w8a8 tiny-vla's actions moved by up to 1.4 against the Q/DQ model run
    literally, and its closed-loop success fell from 100 % to 85 % over 60 episodes. There the QDQ fusions go
    off (``session.disable_quant_qdq``): float MatMuls on weights dequantized once at load, exactly the Q/DQ
    arithmetic, 1.3-1.4x the saturating kernels' batch-1 time; keeping the activations int8
    (``session.qdqisint8allowed``) is right up to rounding ties but takes 2.2-6.3x their time
    (``benchmarks/cpu/ort-int8-sessions-zen3-2026-12-07.json``). With VNNI (``vpdpbusd`` sums in 32 bits), and
    on aarch64 (whose kernels take int8 as it is), nothing is needed."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return {}
    if features is None:  # the native module's cpuid/xgetbv reading; none (a broken install): literal, to be safe
        from .. import native

        features = native.cpu_features() if native.available() else {}
    return {} if features.get("avx512_vnni") or features.get("avx_vnni") else dict(_LITERAL_QDQ)


def export_qdq(model, path: str | os.PathLike, *, opset: int = 18, float_dtype: str = "fp32",
               dynamic_batch: bool = True, float_inputs: Iterable[str] = ()) -> Path:
    """Export a fake-quant policy (from :func:`edgevla.quant.quantize_`) to a Q/DQ ONNX file."""
    if not quantized_layers(model):
        raise EdgevlaError(f"{type(model).__name__} has no fake-quant layers: run edgevla.quant.quantize_ first")
    return export_quantized(model, path, opset=opset, float_dtype=float_dtype, dynamic_batch=dynamic_batch,
                            float_inputs=float_inputs)


def export_quantized(model, path: str | os.PathLike, *, opset: int = 18, float_dtype: str = "fp32",
                     dynamic_batch: bool = True, float_inputs: Iterable[str] = (),
                     cache: TraceCache | None = None) -> Path:
    """Export any model from :func:`edgevla.quant.quantize_policy` — fake-quant layers or none (fp16).

    Quantized layers become Q/DQ (see the module docstring); float tensors
    exactly representable in ``float_dtype`` are stored in it. ``float_inputs``
    names the layers whose input the build keeps in floating point (those
    mixed precision raised): the file's metadata lists them under
    :data:`~edgevla.runtime.graph.FLOAT_INPUTS_KEY`, so that a runtime which
    quantizes float activations on the fly leaves theirs alone. The file is
    checked with ``onnx.checker`` (full check) before it replaces ``path``.
    ``cache``: :func:`~edgevla.export.export_onnx`'s, for the float graph.
    """
    if float_dtype not in ("fp32", *STORAGE_TYPES):
        raise EdgevlaError(f"unknown float storage type {float_dtype!r}; expected fp32, {', '.join(STORAGE_TYPES)}")
    float_inputs = sorted(set(float_inputs))
    strangers = [n for n in float_inputs if n not in quantizable_layers(model)]
    if strangers:
        raise EdgevlaError(f"float-input layers name no nn.Linear or convolution: {', '.join(strangers[:5])}")
    layers = quantized_layers(model)
    unsupported = sorted({m.format_name for m in layers.values()
                          if not isinstance(m, (Int8Weights, Int4WeightLinear, Float8Linear))})
    if unsupported:
        raise EdgevlaError(f"Q/DQ ONNX export supports w8a8, w8a16, w4a16 and fp8 layers, not {', '.join(unsupported)}")
    path = Path(path)
    with float_mode(model):
        export_onnx(model, path, opset=opset, dynamic_batch=dynamic_batch, cache=cache)
        proto = onnx.load(str(path))
        refs = match_initializers(proto, model)
    if layers:
        insert_qdq(proto, layers, refs)
        store_tables_int8(proto, model)
    if float_dtype != "fp32":
        store_floats_as(proto, float_dtype)
    strip_debug_metadata(proto)
    if float_inputs:
        onnx.helper.set_model_props(proto, {FLOAT_INPUTS_KEY: json.dumps(float_inputs)})
    _write_checked(proto, path)
    return path


def strip_debug_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node metadata, doc strings (stack traces, FX text) and the intermediate shape
    annotations (``value_info``, which every runtime infers again): none of it changes what runs."""
    def strip(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        del graph.value_info[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                    strip(sub)

    strip(proto.graph)
    return proto


def store_floats_as(proto: onnx.ModelProto, dtype: str) -> list[str]:
    """Store fp32 initializers as ``dtype`` (fp16 / bf16) followed by a ``Cast`` to fp32, in place.

    Only tensors whose every value survives the round trip exactly, with at
    least :data:`MIN_STORED_ELEMENTS` elements, used by top-level nodes only,
    and not a Q/DQ scale (TensorRT and ONNX want those fp32 constants). The
    initializer keeps its name, so tools see which parameter it is; its
    consumers read ``<name>_fp32``. Returns the names converted.
    """
    import torch

    if dtype not in STORAGE_TYPES:
        raise EdgevlaError(f"unknown float storage type {dtype!r}; expected one of {', '.join(STORAGE_TYPES)}")
    graph = proto.graph
    scales = {n.input[k] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
              for k in (1, 2) if len(n.input) > k}
    in_subgraphs = _subgraph_inputs(graph)
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}
    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    converted: dict[str, str] = {}
    casts = []
    for init in graph.initializer:
        if (init.data_type != TensorProto.FLOAT or init.name in scales or init.name in in_subgraphs
                or init.name in outputs):
            continue
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        if value.numel() < MIN_STORED_ELEMENTS:
            continue
        narrow = value.to(torch_dtype)
        if not torch.equal(narrow.float(), value):
            continue
        init.ClearField("float_data")
        init.data_type = STORAGE_TYPES[dtype]
        init.raw_data = narrow.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        out = f"{init.name}_fp32"
        converted[init.name] = out
        casts.append(helper.make_node("Cast", [init.name], [out], name=f"{init.name}_Cast", to=TensorProto.FLOAT))
    for node in graph.node:
        node.input[:] = [converted.get(n, n) for n in node.input]
    stale = [v for v in graph.value_info if v.name in converted]  # typed fp32 there; now the Cast's output is
    for v in stale:
        graph.value_info.remove(v)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return list(converted)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                names.update(n for inner in sub.node for n in inner.input)
                names |= _subgraph_inputs(sub)
    return names


def verify_quantized(model, onnx_path: str | os.PathLike, observations, *, atol: float, min_cosine: float,
                     batch_size: int = 64):
    """Compare the fake-quant PyTorch ``model`` with the Q/DQ ONNX file executed literally
    (:func:`reference_session`) on ``observations``; a :class:`~edgevla.export.VerifyResult`."""
    import torch

    from ..spec import spec_of
    from .verify import compare

    spec = spec_of(model)
    samples = spec.validate(observations)
    if samples == 0:
        raise EdgevlaError("verification needs at least one observation")
    arrays = spec.cast(observations)
    session = reference_session(onnx_path)
    reference, exported = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, samples, batch_size):
            batch = {k: np.ascontiguousarray(v[start:start + batch_size]) for k, v in arrays.items()}
            with torch.inference_mode():
                reference.append(model(*(torch.from_numpy(batch[n]) for n in spec.input_names)).float().numpy())
            exported.append(session.run([spec.action.name], batch)[0])
    finally:
        model.train(was_training)
    return compare(np.concatenate(reference), np.concatenate(exported), atol=atol, min_cosine=min_cosine,
                   tie_flips=True)


def reference_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session that executes Q/DQ literally (dequantize, then float MatMul).

    With its QDQ fusions on, ONNX Runtime replaces DQ→MatMul by integer
    kernels (``MatMulNBits`` quantizes the float activation of a weight-only
    layer on the fly), which is fast but no longer the fake-quant arithmetic;
    ``session.disable_quant_qdq`` turns those fusions off for parity checks.

    ``ReluQuantRewrite`` is off too: ONNX Runtime (1.32) folds a Relu into the
    QuantizeLinear after it when the zero point sits at the bottom of the
    quantized range — right for uint8, but it also fires for an fp8 zero
    point of 0, whose range is symmetric, and then negative values leak
    through. :data:`ORT_DISABLED_OPTIMIZERS` is that list, for other sessions.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))


def dequantize_conv_weights(proto: onnx.ModelProto) -> list[str]:
    """Replace, in place, each constant int8 ``DequantizeLinear`` read only as ``Conv`` (or ``ConvTranspose``)
    weights by its float value.

    For ONNX Runtime's CPU provider: it fuses Q/DQ around a ``Conv`` only when
    the convolution's output is quantized too (``QLinearConv``), which the
    TensorRT form this exporter writes does not do, and it then keeps every
    weight's ``DequantizeLinear`` in the graph, run on every call — a W8A8
    ResNet-18 ran 1.8x slower than its float model. Folded once, the
    convolutions run ONNX Runtime's float kernels on the same values
    (``codes x scale``, in float32 as ``DequantizeLinear`` computes them); the
    input Q/DQ pairs stay, so the arithmetic is unchanged. Returns the names of
    the folded values.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph)
    folded, dropped = [], set()
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.input[1] not in inits:
            continue
        users = readers.get(node.output[0], [])
        if not users or any(u.op_type not in ("Conv", "ConvTranspose") or k != 1 for u, k in users):
            continue
        codes = numpy_helper.to_array(inits[node.input[0]])
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(codes.ndim, 1)
        if codes.dtype != np.int8 or any(a.name == "block_size" and a.i for a in node.attribute) or (
                zero is not None and np.any(zero)) or scale.size not in (1, codes.shape[axis]):
            continue
        shape = [1] * codes.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        value = codes.astype(np.float32) * scale.reshape(shape)
        graph.node.remove(node)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        dropped.update(n for n in node.input if n)
        folded.append(node.output[0])
    still_read = {name for n in graph.node for name in n.input}
    for name in dropped - still_read:
        _remove_initializer(graph, name)
    return folded


def insert_qdq(proto: onnx.ModelProto, layers: dict[str, FakeQuantLayer], refs) -> None:
    """Rewrite ``proto`` in place: quantized weights + DequantizeLinear, Q/DQ on activations."""
    # First: converting the opset replaces the graph message.
    if any(isinstance(m, Int4WeightLinear) for m in layers.values()):
        _require_opset(proto, INT4_OPSET)
    elif any(isinstance(m, Float8Linear) for m in layers.values()):
        _require_opset(proto, FP8_OPSET)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers = _readers(graph)

    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes to insert before it
    act_qdq: dict[tuple[str, float, bool, int], str] = {}  # (tensor, scale, fp8, consumer) -> DQ output
    done: set[str] = set()
    for name, layer in layers.items():
        ref = refs.get(f"{name}.weight")
        if ref is None:
            raise EdgevlaError(f"Q/DQ export: the weight of {name} is not an initializer of the exported graph")
        users = consumers.get(ref.name, [])
        ops = ("Conv",) if is_convolution(layer) else ("ConvTranspose",) if is_transposed_convolution(layer) else (
            "MatMul", "Gemm")
        if not users or any(n.op_type not in ops or k != 1 for n, k in users):
            raise EdgevlaError(f"Q/DQ export: {name}'s weight does not feed {'/'.join(ops)} as its weight input")
        if ref.name in done:
            continue
        done.add(ref.name)
        # a Conv reads its weight as (out, in / groups, *kernel) wherever it is used, a ConvTranspose as (in, out, ...)
        axis = layer.weight_axis if is_any_convolution(layer) else _output_axis(users[0][0], ref.transposed)
        if not is_any_convolution(layer):
            for node, _ in users[1:]:
                if _output_axis(node, ref.transposed) != axis:
                    raise EdgevlaError(f"Q/DQ export: {name}'s weight is used with two layouts")
        dq_out = f"{ref.name}_DequantizeLinear"
        weight_nodes = _weight_dq(graph, inits[ref.name], layer, axis, ref.transposed, dq_out)
        first = users[0][0]
        new_nodes.setdefault(id(first), []).extend(weight_nodes)
        for node, k in users:
            node.input[k] = dq_out
            if isinstance(layer, _ACTIVATION_LAYERS):
                act = node.input[0]
                scale = float(layer.input_scale)
                fp8 = isinstance(layer, Float8Linear)
                # One Q/DQ pair per consumer, as a per-layer input quantizer
                # exports it: TensorRT merges equal siblings, and ONNX Runtime
                # fuses DQ->MatMul into its int8 kernels only when the Q feeds
                # one DQ (a shared pair left half the small-vla linears on
                # dequantized fp32 weights, re-dequantized every run).
                key = (act, scale, fp8, id(node))
                if key not in act_qdq:
                    base = f"{act}_{len(act_qdq)}"
                    s_name, z_name = f"{base}_scale", f"{base}_zero_point"
                    zero = (helper.make_tensor(z_name, TensorProto.FLOAT8E4M3FN, [], [0.0]) if fp8
                            else numpy_helper.from_array(np.array(0, np.int8), z_name))
                    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name), zero])
                    q, dq = f"{base}_QuantizeLinear", f"{base}_DequantizeLinear"
                    new_nodes.setdefault(id(node), []).extend([
                        helper.make_node("QuantizeLinear", [act, s_name, z_name], [q], name=q),
                        helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=dq)])
                    act_qdq[key] = dq
                node.input[0] = act_qdq[key]

    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(new_nodes.get(id(node), []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(_topological(ordered, graph))


def _readers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """``{value: [(node, input index), ...]}`` over the graph's top-level nodes."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
    return readers


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


def _weight_dq(graph, init: onnx.TensorProto, layer: FakeQuantLayer, axis: int, transposed: bool,
               out: str) -> list[onnx.NodeProto]:
    """Replace ``init`` by quantized codes; return the DequantizeLinear (and Cast) producing ``out``.

    Weights carry no zero point: ONNX's default is 0 of the codes' own type,
    which is exactly the symmetric zero point TensorRT requires.
    """
    import torch

    base = init.name
    cast_from = None
    if isinstance(layer, Int4WeightLinear):
        codes = layer.int4_weight.codes().numpy()  # (out, in), int8 in [-8, 7]
        scale = layer.weight_scale.numpy()  # (out, in / g)
        if transposed:
            codes, scale = codes.T, scale.T
        q = helper.make_tensor(f"{base}_quantized", TensorProto.INT4, codes.shape,
                               _pack_rows(codes), raw=True)
        block_axis = 0 if transposed else 1  # blocks run along the input channels
        attrs = {"axis": block_axis, "block_size": layer.group_size}
        if layer.scale_dtype == "fp16":  # fp16 scales: the DQ outputs fp16, cast up for the fp32 graph
            cast_from = f"{out}_fp16"
    elif isinstance(layer, Float8Linear):
        codes = layer.weight_codes()  # (out, in) float8_e4m3fn
        scale = layer.weight_scale.numpy()
        if transposed:
            codes = codes.T
        codes = codes.contiguous()
        q = helper.make_tensor(f"{base}_quantized", TensorProto.FLOAT8E4M3FN, list(codes.shape),
                               codes.view(torch.uint8).numpy().tobytes(), raw=True)
        attrs = {"axis": axis}
    else:
        codes = layer.weight_qdata.numpy()
        scale = layer.weight_scale.numpy()
        if transposed:
            codes = codes.T
        q = numpy_helper.from_array(np.ascontiguousarray(codes), f"{base}_quantized")
        attrs = {"axis": axis}
    scale_type = np.float16 if cast_from else np.float32
    s = numpy_helper.from_array(np.ascontiguousarray(scale.astype(scale_type)), f"{base}_scale")
    _remove_initializer(graph, base)
    graph.initializer.extend([q, s])
    if cast_from is None:
        return [helper.make_node("DequantizeLinear", [q.name, s.name], [out], name=out, **attrs)]
    return [helper.make_node("DequantizeLinear", [q.name, s.name], [cast_from], name=cast_from, **attrs),
            helper.make_node("Cast", [cast_from], [out], name=f"{out}_Cast", to=TensorProto.FLOAT)]


def store_tables_int8(proto: onnx.ModelProto, model) -> list[str]:
    """Store the model's tables (:func:`edgevla.quant.apply.table_tensors`) as int8 + DequantizeLinear.

    A table is converted when its initializer, found under the table's name,
    lies exactly on its power-of-two int8 grid (as
    :func:`edgevla.quant.round_tables` leaves it) and no MatMul / Gemm / Conv
    reads it (a weight must be dequantized per channel; those stay float).
    The DequantizeLinear's output takes the initializer's name, so consumers
    are untouched. Returns the names converted.
    """
    import torch

    from ..quant.apply import table_tensors
    from ..quant.primitives import dequantize, int8_table

    graph = proto.graph
    names = set(table_tensors(model))
    compute_inputs = {i for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") for i in n.input}
    blocked = compute_inputs | _subgraph_inputs(graph) | {o.name for o in graph.output} | {i.name for i in graph.input}
    converted, nodes = [], []
    for init in list(graph.initializer):
        if init.name not in names or init.name in blocked or init.data_type != TensorProto.FLOAT:
            continue
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        codes, scale = int8_table(value)
        if not torch.equal(dequantize(codes, scale), value):
            continue  # not rounded to its grid (tables=False): stays float
        q = numpy_helper.from_array(codes.numpy(), f"{init.name}_quantized")
        s = numpy_helper.from_array(np.array(scale, np.float32), f"{init.name}_scale")
        name = init.name
        _remove_initializer(graph, name)
        graph.initializer.extend([q, s])
        nodes.append(helper.make_node("DequantizeLinear", [q.name, s.name], [name], name=f"{name}_DequantizeLinear"))
        converted.append(name)
    all_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(all_nodes)
    return converted


def _pack_rows(codes: np.ndarray) -> bytes:
    """Flat int4 packing of a whole tensor, ONNX order (element 2k low nibble, 2k+1 high)."""
    flat = (codes.reshape(-1).astype(np.int16) & 0xF)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _remove_initializer(graph, name: str) -> None:
    # In place: rebuilding the list would copy every initializer (protobuf's extend copies), and
    # the copies of a 182M-parameter model, once per quantized layer, ran a 24 GB machine out of memory.
    for index, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[index]
            return


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
