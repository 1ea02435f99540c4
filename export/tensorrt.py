"""TensorRT engines from a bundle's ONNX model: planned per target, built, and checked after building.

An engine is tied to one GPU architecture and one TensorRT version, so the host that builds a
bundle rarely makes the engine that ships. A bundle for a GPU target therefore carries the plan
(:class:`EnginePlan`, in ``tensorrt.json``), the exact ``trtexec`` command line and
``build_engine.sh``, which builds the engine on the device from the bundle. Where TensorRT and a GPU
of the target's compute capability are present, :func:`build_engine` does the same through the
TensorRT Python API.

Two TensorRT generations are handled:

* TensorRT 10.x (JetPack 6: 10.3; JetPack 7: 10.13) builds *strongly typed* networks, where every
  tensor keeps the type the ONNX model gives it and Q/DQ nodes say where int8/fp8 runs, or *weakly
  typed* ones, where builder flags (FP16, INT8, ...) let TensorRT pick lower precisions on its own.
* TensorRT 11 removed weak typing: the precision builder flags and trtexec's --fp16/--int8/--fp8
  are gone and every network is strongly typed (--stronglyTyped is accepted and ignored).

Q/DQ formats (w8a8, w8a16, w4a16, fp8) are always built strongly typed, so TensorRT runs exactly
what the graph says. fp16/bf16 of an fp32 ONNX model need weak typing, which only TensorRT 10 has;
an ONNX model already in fp16/bf16 builds strongly typed on either. DLA builds on TensorRT 10 follow
NVIDIA's documented weakly typed flow (--fp16 or --int8, with --allowGPUFallback).

After a build the layer precisions are read back from the engine inspector (DETAILED profiling
verbosity) and compared with the plan, because TensorRT can build a layer in another precision
without saying so (fp8 asked on a GPU or version that does not run it, for one). Layers that
TensorRT fuses into an opaque Myelin node show only their boundary tensors; the report counts them
as unverified instead of claiming they were checked.

Everything that needs ``tensorrt`` imports it on use and fails with a one-line
:class:`~edgevla.errors.EdgevlaError` where it is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgevlaError
from ..spec import PolicySpec

FORMATS = ("fp32", "fp16", "bf16", "w8a8", "w8a16", "w4a16", "fp8")
QDQ_FORMATS = ("w8a8", "w8a16", "w4a16", "fp8")
WEIGHT_ONLY_FORMATS = ("w8a16", "w4a16")
DLA_FORMATS = ("fp16", "w8a8")  # DLA runs FP16 and INT8 only
# What a format needs the target's tensor cores to run (names as in a target's facts.precisions).
# Weight-only formats keep int weights and compute in 16-bit floats: they need fp16.
_NEEDS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "w8a8": "int8", "w8a16": "fp16", "w4a16": "fp16",
          "fp8": "fp8"}
_LOW_PRECISION = {"fp16": "fp16", "bf16": "bf16", "w8a8": "int8", "fp8": "fp8"}  # the precision the GEMMs run in
_WEIGHT_STORAGE = {"w8a8": "int8", "w8a16": "int8", "w4a16": "int4", "fp8": "fp8"}
# TensorRT 10 builder flags of a weakly typed build, per format (names of tensorrt.BuilderFlag members).
_WEAK_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",), "w8a8": ("INT8",), "fp8": ("FP8",)}
_TRTEXEC_PRECISION = {"FP16": "--fp16", "BF16": "--bf16", "INT8": "--int8", "FP8": "--fp8"}
_INDEX_TYPES = frozenset({"int32", "int64", "bool", "uint8"})
MIN_TENSORRT = (10, 0)

ENGINE_NAME = "model.engine"
TIMING_CACHE_NAME = "timing.cache"
LAYER_INFO_NAME = "layers.json"
SCRIPT_NAME = "build_engine.sh"
PLAN_NAME = "tensorrt.json"
PLAN_FORMAT = "edgevla-tensorrt"
ENGINE_DIR_VAR = "ENGINE_DIR"  # shell variable of build_engine.sh holding the output directory


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class InputProfile:
    """Min / opt / max shapes of one engine input (batch included), as an optimization profile takes them."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputProfile":
        return cls(str(d["name"]), tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


@dataclass(frozen=True)
class EnginePlan:
    """Everything a TensorRT build for one target decides, checked against what that target runs.

    Make one with :func:`plan_engine`. ``graph_float`` is the float type of the ONNX model
    (fp32 for edgevla's exports); ``builder_flags`` name ``tensorrt.BuilderFlag`` members.
    """

    target: str
    compute_capability: str
    tensorrt: str  # the TensorRT version the target runs (its profile's facts.tensorrt)
    precision: str
    graph_float: str
    strongly_typed: bool
    sparse: bool
    dla_core: int | None
    inputs: tuple[InputProfile, ...]
    workspace_mib: int
    timing_cache: str = TIMING_CACHE_NAME

    @property
    def gpu_fallback(self) -> bool:
        return self.dla_core is not None

    @property
    def precision_flags(self) -> tuple[str, ...]:
        """Precision builder flags; none for a strongly typed network (TensorRT rejects them there)."""
        if self.strongly_typed:
            return ()
        flags = _WEAK_FLAGS[self.precision]
        if self.dla_core is not None and self.precision == "w8a8":
            flags += ("FP16",)  # DLA has no fp32: the layers Q/DQ leave in float must be allowed fp16
        return flags

    @property
    def builder_flags(self) -> tuple[str, ...]:
        flags = self.precision_flags
        if self.sparse:
            flags += ("SPARSE_WEIGHTS",)
        if self.gpu_fallback:
            flags += ("GPU_FALLBACK",)
        return flags

    @property
    def float_precisions(self) -> tuple[str, ...]:
        """Precisions the layers the plan leaves in floating point may run in."""
        if self.strongly_typed:
            return (self.graph_float,)
        if "FP16" in self.precision_flags or "BF16" in self.precision_flags:
            low = "bf16" if "BF16" in self.precision_flags else "fp16"
            return (low,) if self.precision in ("fp16", "bf16") else (low, self.graph_float)
        return (self.graph_float,)

    @property
    def compute_precision(self) -> str:
        """The precision the plan asks the matrix multiplies and convolutions to run in."""
        return _LOW_PRECISION.get(self.precision, self.float_precisions[0])

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "compute_capability": self.compute_capability, "tensorrt": self.tensorrt,
                "precision": self.precision, "graph_float": self.graph_float, "strongly_typed": self.strongly_typed,
                "sparse": self.sparse, "dla_core": self.dla_core, "gpu_fallback": self.gpu_fallback,
                "inputs": [i.to_dict() for i in self.inputs], "workspace_mib": self.workspace_mib,
                "timing_cache": self.timing_cache, "builder_flags": list(self.builder_flags)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnginePlan":
        """The plan a ``tensorrt.json`` holds; checked again as :func:`plan_engine` checks a new one."""
        try:
            plan = cls(target=str(d["target"]), compute_capability=str(d["compute_capability"]),
                       tensorrt=str(d["tensorrt"]), precision=str(d["precision"]),
                       graph_float=str(d["graph_float"]), strongly_typed=bool(d["strongly_typed"]),
                       sparse=bool(d["sparse"]), dla_core=d["dla_core"],
                       inputs=tuple(InputProfile.from_dict(i) for i in d["inputs"]),
                       workspace_mib=int(d["workspace_mib"]), timing_cache=str(d["timing_cache"]))
        except (KeyError, TypeError, ValueError) as e:
            raise EdgevlaError(f"TensorRT plan is malformed: {type(e).__name__} {e}") from e
        _check_plan_consistency(plan)
        return plan


def plan_engine(target, spec: PolicySpec, *, precision: str = "fp32", sparse: bool = False,
                dla_core: int | None = None, batch: tuple[int, int, int] | None = None,
                batch_sizes: Sequence[int] = (1,), workspace_mib: int | None = None,
                graph_float: str = "fp32", tensorrt_version: str | None = None,
                strongly_typed: bool | None = None, timing_cache: str = TIMING_CACHE_NAME) -> EnginePlan:
    """The TensorRT build plan of ``spec``'s policy on ``target``, or a one-line error saying why not.

    ``batch`` is (min, opt, max) of the batch dimension; by default min and opt are 1 (a robot runs
    batch 1) and max is the largest of ``batch_sizes``. ``workspace_mib`` defaults to a quarter of the
    target's memory budget: the workspace is scratch memory for kernels, and the weights and
    activations of the policy need the rest of the budget. ``strongly_typed=None`` picks what the
    format and TensorRT version need (see the module docstring).
    """
    facts = target.facts
    if target.kind != "gpu" or facts.compute_capability is None:
        raise EdgevlaError(f"target {target.name} has no NVIDIA GPU: TensorRT engines need a GPU target")
    version = tensorrt_version or facts.tensorrt
    if version is None:
        raise EdgevlaError(f"target {target.name} names no TensorRT version (facts.tensorrt); give one")
    if precision not in FORMATS:
        raise EdgevlaError(f"unknown TensorRT precision {precision!r}; expected one of {', '.join(FORMATS)}")
    supported = supported_formats(target)
    if precision not in supported:
        raise EdgevlaError(f"target {target.name} cannot run {precision}: it has no {_NEEDS[precision]} tensor "
                           f"cores; TensorRT precisions it supports: {', '.join(supported)}")
    if sparse and not facts.sparse_tensor_cores:
        raise EdgevlaError(f"target {target.name} has no sparse tensor cores: 2:4 sparse weights cannot be used")
    if dla_core is not None:
        if facts.dla_count == 0:
            raise EdgevlaError(f"target {target.name} has no DLA; DLA cores exist on jetson-agx-orin and "
                               "jetson-orin-nx")
        if isinstance(dla_core, bool) or not isinstance(dla_core, int) or not 0 <= dla_core < facts.dla_count:
            raise EdgevlaError(f"DLA core {dla_core!r} does not exist on {target.name}: it has cores "
                               f"{', '.join(map(str, range(facts.dla_count)))}")
        if precision not in DLA_FORMATS:
            raise EdgevlaError(f"DLA runs only {' and '.join(DLA_FORMATS)}, not {precision}")
    lo, opt, hi = batch if batch is not None else (1, 1, max(batch_sizes))
    workspace = target.budgets.memory_budget_mb // 4 if workspace_mib is None else workspace_mib
    if strongly_typed is None:
        strongly_typed = _auto_strongly_typed(precision, graph_float, dla_core, _version_tuple(version)[0])
    plan = EnginePlan(target=target.name, compute_capability=facts.compute_capability, tensorrt=version,
                      precision=precision, graph_float=graph_float, strongly_typed=strongly_typed,
                      sparse=bool(sparse), dla_core=dla_core,
                      inputs=tuple(InputProfile(o.name, (lo, *o.shape), (opt, *o.shape), (hi, *o.shape))
                                   for o in spec.observations),
                      workspace_mib=workspace, timing_cache=timing_cache)
    _check_plan_consistency(plan)
    if not 1 <= workspace <= target.budgets.memory_budget_mb:
        raise EdgevlaError(f"TensorRT workspace {workspace} MiB must be between 1 MiB and the target's memory "
                           f"budget ({target.budgets.memory_budget_mb} MB)")
    return plan


def supported_formats(target) -> tuple[str, ...]:
    """The TensorRT formats ``target`` runs, in :data:`FORMATS` order."""
    return tuple(f for f in FORMATS if _NEEDS[f] in target.facts.precisions)


def _auto_strongly_typed(precision: str, graph_float: str, dla_core: int | None, major: int) -> bool:
    if major >= 11:
        return True
    if dla_core is not None:
        return False  # TensorRT 10's DLA flow: --fp16 / --int8 with GPU fallback
    return not (precision in ("fp16", "bf16") and graph_float != precision)


def _check_plan_consistency(plan: EnginePlan) -> None:
    """Rules between fields: what TensorRT would reject or silently ignore."""
    if plan.precision not in FORMATS:
        raise EdgevlaError(f"unknown TensorRT precision {plan.precision!r}; expected one of {', '.join(FORMATS)}")
    if plan.graph_float not in ("fp32", "fp16", "bf16"):
        raise EdgevlaError(f"the ONNX model's float type must be fp32, fp16 or bf16, got {plan.graph_float!r}")
    if plan.precision == "fp32" and plan.graph_float != "fp32":
        raise EdgevlaError(f"an fp32 engine needs an fp32 ONNX model; this one is {plan.graph_float}")
    if plan.precision in ("fp16", "bf16") and plan.graph_float not in ("fp32", plan.precision):
        raise EdgevlaError(f"a {plan.precision} engine cannot come from a {plan.graph_float} ONNX model")
    version = _version_tuple(plan.tensorrt)
    if version < MIN_TENSORRT:
        raise EdgevlaError(f"TensorRT {plan.tensorrt} is too old: edgevla builds engines with TensorRT >= 10.0")
    if not plan.strongly_typed:
        if version[0] >= 11:
            raise EdgevlaError(f"TensorRT {plan.tensorrt} builds strongly typed networks only: {plan.precision} "
                               f"from an {plan.graph_float} ONNX model needs precision builder flags, which "
                               "TensorRT 11 removed; export the model in that precision (e.g. with ModelOpt "
                               "AutoCast) or target TensorRT 10")
        if plan.precision not in _WEAK_FLAGS:
            raise EdgevlaError(f"{plan.precision} must be built as a strongly typed network (its Q/DQ nodes "
                               "say where each precision runs)")
    elif plan.precision in ("fp16", "bf16") and plan.graph_float != plan.precision:
        why = (f"TensorRT {plan.tensorrt} builds strongly typed networks only" if version[0] >= 11
               else "a strongly typed network")
        raise EdgevlaError(f"{why}, which run the ONNX model's own types: {plan.precision} needs the model in "
                           f"{plan.precision} (convert it, e.g. with ModelOpt AutoCast), this one is {plan.graph_float}")
    if plan.dla_core is not None:
        if isinstance(plan.dla_core, bool) or not isinstance(plan.dla_core, int) or plan.dla_core < 0:
            raise EdgevlaError(f"DLA core must be a non-negative integer, got {plan.dla_core!r}")
        if plan.precision not in DLA_FORMATS:
            raise EdgevlaError(f"DLA runs only {' and '.join(DLA_FORMATS)}, not {plan.precision}")
        if any(i.min != i.max or i.opt != i.max for i in plan.inputs):
            raise EdgevlaError("DLA does not support dynamic shapes: give one batch size (min = opt = max)")
    names = [i.name for i in plan.inputs]
    if not names or len(set(names)) != len(names):
        raise EdgevlaError(f"a TensorRT plan needs uniquely named inputs, got {names}")
    for i in plan.inputs:
        if not (len(i.min) == len(i.opt) == len(i.max) >= 1) or any(
                not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in (*i.min, *i.opt, *i.max)):
            raise EdgevlaError(f"input {i.name!r}: shapes must be positive integers of one rank, got "
                               f"min {i.min}, opt {i.opt}, max {i.max}")
        if not all(a <= b <= c for a, b, c in zip(i.min, i.opt, i.max)):
            raise EdgevlaError(f"input {i.name!r}: shapes must satisfy min <= opt <= max, got "
                               f"min {i.min}, opt {i.opt}, max {i.max}")
    if plan.workspace_mib < 1:
        raise EdgevlaError(f"TensorRT workspace must be at least 1 MiB, got {plan.workspace_mib}")
    if not _is_plain_name(plan.timing_cache):
        raise EdgevlaError(f"timing cache {plan.timing_cache!r} must be a plain file name")


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"^(\d+)(?:\.(\d+))?", str(version))
    if not match:
        raise EdgevlaError(f"cannot read TensorRT version {version!r} (expected e.g. '10.3')")
    return int(match.group(1)), int(match.group(2) or 0)


def _is_plain_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name))


# --------------------------------------------------------------------------- trtexec


def trtexec_command(plan: EnginePlan, onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                    layer_info_path: str | os.PathLike | None = None,
                    timing_cache_path: str | os.PathLike | None = None) -> list[str]:
    """The ``trtexec`` argv that builds ``plan``'s engine (and skips trtexec's own benchmark run).

    The timing cache and the layer information (the engine inspector's JSON, DETAILED) go beside the
    engine unless given.
    """
    engine = os.fspath(engine_path)
    folder = os.path.dirname(engine)
    cache = os.fspath(timing_cache_path) if timing_cache_path is not None else os.path.join(folder, plan.timing_cache)
    layers = os.fspath(layer_info_path) if layer_info_path is not None else os.path.join(folder, LAYER_INFO_NAME)
    argv = ["trtexec", f"--onnx={os.fspath(onnx_path)}", f"--saveEngine={engine}"]
    if plan.strongly_typed:
        argv.append("--stronglyTyped")
    argv += [_TRTEXEC_PRECISION[f] for f in plan.precision_flags]
    if plan.sparse:
        argv.append("--sparsity=enable")
    if plan.dla_core is not None:
        argv += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    for which in ("min", "opt", "max"):
        shapes = ",".join(f"{i.name}:{'x'.join(map(str, getattr(i, which)))}" for i in plan.inputs)
        argv.append(f"--{which}Shapes={shapes}")
    argv += [f"--memPoolSize=workspace:{plan.workspace_mib}M", f"--timingCacheFile={cache}",
             "--profilingVerbosity=detailed", f"--exportLayerInfo={layers}", "--skipInference"]
    return argv


# --------------------------------------------------------------------------- the ONNX model


def onnx_float_type(model) -> str:
    """fp32, fp16 or bf16: the float type of the model's float inputs (else outputs)."""
    import onnx

    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    for group in (model.graph.input, model.graph.output):
        for value in group:
            kind = names.get(value.type.tensor_type.elem_type)
            if kind is not None:
                return kind
    return "fp32"


def expected_node_precisions(model, plan: EnginePlan) -> dict[str, str]:
    """The precision each MatMul / Gemm / Conv / ConvTranspose node of the ONNX model must run in under ``plan``.

    A node whose activation comes through Q/DQ runs in the quantized type (int8, fp8); one whose
    only quantized input is the weight (weight-only) and every float node run in a float precision
    of the plan.
    """
    import onnx

    quantized = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.FLOAT8E4M3FN: "fp8"}
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    float_precision = plan.float_precisions[0]
    expected = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose") or not node.name:
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 and q.input[2] in inits:
            expected[node.name] = quantized.get(inits[q.input[2]].data_type, float_precision)
        else:
            expected[node.name] = float_precision
    return expected


def check_onnx_for_plan(onnx_path: str | os.PathLike, plan: EnginePlan) -> None:
    """Refuse an ONNX model the plan cannot turn into the engine it promises.

    A Q/DQ format needs Q/DQ nodes in the graph (without them TensorRT builds a float engine), and
    int8/int4 Q/DQ must pass :func:`~edgevla.export.lint.lint_qdq` (TensorRT's explicit-quantization
    rules); a float format must have none. The graph's float type must be the plan's.
    """
    import onnx

    from .lint import lint_qdq

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # unreadable file or not protobuf
        raise EdgevlaError(f"cannot read ONNX model {path}: {type(e).__name__}") from e
    graph_float = onnx_float_type(model)
    if graph_float != plan.graph_float:
        raise EdgevlaError(f"{path.name} is an {graph_float} model, the TensorRT plan expects {plan.graph_float}")
    ops = {n.op_type for n in model.graph.node}
    has_qdq = "DequantizeLinear" in ops
    if plan.precision in QDQ_FORMATS:
        if not has_qdq:
            raise EdgevlaError(f"{path.name} has no Q/DQ nodes, so TensorRT would build it in "
                               f"{plan.graph_float}, not {plan.precision}: export it with Q/DQ first")
        if plan.precision == "w8a8" and "QuantizeLinear" not in ops:
            raise EdgevlaError(f"{path.name} quantizes no activation: w8a8 needs QuantizeLinear on the "
                               "MatMul/Gemm inputs")
        if plan.precision != "fp8":  # the lint states TensorRT's int8/int4 rules
            issues = lint_qdq(model)
            if issues:
                more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
                raise EdgevlaError(f"{path.name} breaks TensorRT's Q/DQ rules: {issues[0]}{more}")
    elif has_qdq:
        raise EdgevlaError(f"{path.name} holds Q/DQ nodes, but the TensorRT plan is {plan.precision}: "
                           "plan the quantized format instead")


# --------------------------------------------------------------------------- layer precisions


_DTYPE_WORDS = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16", "bf16": "bf16",
                "int8": "int8", "fp8": "fp8", "e4m3": "fp8", "int4": "int4", "fp4": "fp4", "e2m1": "fp4",
                "int32": "int32", "int64": "int64", "bool": "bool", "uint8": "uint8", "double": "fp64"}
_COMPUTE_KINDS = frozenset({"Convolution", "Deconvolution", "MatrixMultiply", "FullyConnected", "Gemm"})


def tensor_precision(description: str) -> str:
    """The data type a TensorRT tensor description names ("Row major linear FP16 format" -> fp16)."""
    for word in re.findall(r"[A-Za-z0-9]+", str(description)):
        found = _DTYPE_WORDS.get(word.lower())
        if found is not None:
            return found
    return "unknown"


@dataclass(frozen=True)
class EngineLayer:
    """One layer of a built engine as the inspector reports it."""

    name: str
    kind: str  # the network layer it implements ("MatrixMultiply", "Convolution", ...)
    implementation: str  # the engine's kernel family ("gemm", "CaskConvolution", "Myelin", ...)
    inputs: tuple[str, ...]  # data type of each input tensor
    outputs: tuple[str, ...]
    weights: tuple[str, ...] = ()  # data types of constant weights / bias, when reported

    @property
    def precision(self) -> str:
        """A layer runs in the type of its first input (its first output when it has none)."""
        return (self.inputs or self.outputs or ("unknown",))[0]

    @property
    def opaque(self) -> bool:
        """A Myelin "foreign node": a fused subgraph whose inner precisions TensorRT does not report."""
        return self.implementation.lower() == "myelin" or self.name.startswith("{ForeignNode")

    @property
    def computes(self) -> bool:
        impl = self.implementation.lower()
        return self.kind in _COMPUTE_KINDS or "gemm" in impl or "convolution" in impl or "matmul" in impl

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "precision": self.precision, "inputs": list(self.inputs),
                "outputs": list(self.outputs)}


def parse_engine_layers(text: str) -> list[EngineLayer]:
    """The layers of an engine inspector JSON document (TensorRT 10 or 11, LayerInformationFormat.JSON)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise EdgevlaError(f"TensorRT layer information is not JSON: {e}") from e
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise EdgevlaError("TensorRT layer information has no 'Layers' list")
    if any(not isinstance(layer, dict) for layer in layers):
        raise EdgevlaError("TensorRT layer information lists names only: build the engine with profiling "
                           "verbosity DETAILED (trtexec --profilingVerbosity=detailed)")
    parsed = []
    for raw in layers:
        weights = tuple(tensor_precision(raw[k]["Type"]) for k in ("Weights", "Bias")
                        if isinstance(raw.get(k), dict) and "Type" in raw[k] and raw[k].get("Count", 1))
        parsed.append(EngineLayer(
            name=str(raw.get("Name", "")), kind=str(raw.get("ParameterType", raw.get("LayerType", ""))),
            implementation=str(raw.get("LayerType", "")),
            inputs=tuple(_region_precision(r) for r in raw.get("Inputs", [])),
            outputs=tuple(_region_precision(r) for r in raw.get("Outputs", [])), weights=weights))
    return parsed


def _region_precision(region: Any) -> str:
    if not isinstance(region, dict):
        return "unknown"
    # TensorRT 11 gives the type on its own ("DataType"); TensorRT 10 inside "Format/Datatype".
    for key in ("DataType", "Format/Datatype", "Format/DataType", "Format"):
        if key in region:
            return tensor_precision(region[key])
    return "unknown"


@dataclass(frozen=True)
class PrecisionReport:
    """What the engine runs where, as read back from it, and whether that is what the plan asked."""

    precision: str  # the plan's format
    layers: tuple[EngineLayer, ...]
    opaque: tuple[str, ...]  # layers whose inner precisions TensorRT does not report
    verified: bool  # some compute layer was visible and every visible one matched

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            if layer.computes and not layer.opaque:
                out[layer.precision] = out.get(layer.precision, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "verified": self.verified, "compute_layers": self.counts(),
                "opaque_layers": list(self.opaque),
                "layers": [layer.to_dict() for layer in self.layers if layer.computes or layer.opaque]}


def check_layer_precisions(layers: Sequence[EngineLayer], plan: EnginePlan,
                           expected: Mapping[str, str] | None = None) -> PrecisionReport:
    """Compare an engine's layer precisions with ``plan``; raise when TensorRT fell back silently.

    ``expected`` maps ONNX node names to the precision each must run in (see
    :func:`expected_node_precisions`); a compute layer named after fused nodes (``a + b``) may run in
    any of theirs, one matching no node in any precision the plan allows. A mismatch is any of:
    a visible compute layer in another precision; a tensor of a type the plan never produces (fp16
    in an fp8 plan, say); no visible compute layer in the asked precision; for weight-only formats,
    no int weight anywhere.
    """
    expected = dict(expected or {})
    allowed_compute = {plan.compute_precision, *plan.float_precisions}
    permitted = set(_INDEX_TYPES) | allowed_compute | {plan.graph_float, "unknown"}
    if plan.precision in _WEIGHT_STORAGE:
        permitted.add(_WEIGHT_STORAGE[plan.precision])
    problems: list[str] = []
    visible = [layer for layer in layers if layer.computes and not layer.opaque]
    for layer in visible:
        nodes = [n.strip() for n in layer.name.split(" + ")]
        wanted = {expected[n] for n in nodes if n in expected} or allowed_compute
        if layer.precision not in wanted:
            problems.append(f"layer {layer.name!r} runs in {layer.precision}, the plan asks {'/'.join(sorted(wanted))}")
    for layer in layers:
        foreign = sorted({p for p in (*layer.inputs, *layer.outputs, *layer.weights) if p not in permitted})
        if foreign:
            problems.append(f"layer {layer.name!r} holds {', '.join(foreign)} tensors, which a {plan.precision} "
                            "plan never produces")
    low = _LOW_PRECISION.get(plan.precision)
    if visible and low is not None and not any(layer.precision == low for layer in visible):
        found = ", ".join(sorted({layer.precision for layer in visible}))
        problems.append(f"no matrix multiply or convolution runs in {low} (they run in {found})")
    storage = _WEIGHT_STORAGE.get(plan.precision) if plan.precision in WEIGHT_ONLY_FORMATS else None
    if visible and storage is not None and not any(
            storage in (*layer.inputs, *layer.outputs, *layer.weights) for layer in layers):
        problems.append(f"no layer keeps {storage} weights")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EdgevlaError(f"TensorRT engine for {plan.target} does not run {plan.precision} as planned, a silent "
                           f"fallback: {problems[0]}{more}")
    opaque = tuple(layer.name for layer in layers if layer.opaque)
    return PrecisionReport(plan.precision, tuple(layers), opaque, verified=bool(visible))


def engine_layer_precisions(engine) -> list[EngineLayer]:
    """The layers of a deserialized ``tensorrt.ICudaEngine``, read through its engine inspector."""
    trt = import_tensorrt()
    inspector = engine.create_engine_inspector()
    return parse_engine_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------- building


def import_tensorrt():
    """The ``tensorrt`` module, or a one-line error saying what is missing."""
    try:
        import tensorrt
    except ImportError as e:
        raise EdgevlaError("TensorRT is not installed here (the tensorrt Python package does not import): build "
                           f"on the device with the bundle's {SCRIPT_NAME}, or pip install tensorrt") from e
    return tensorrt


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def device_compute_capability(device: int = 0) -> str | None:
    """Compute capability of CUDA device ``device`` ("8.7"), through torch or cuda-python; None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except ImportError:
        pass
    cudart = _cudart()
    if cudart is None:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count <= device:
        return None
    values = []
    for attr in (cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor,
                 cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor):
        err, value = cudart.cudaDeviceGetAttribute(attr, device)
        if int(err) != 0:
            return None
        values.append(value)
    return f"{values[0]}.{values[1]}"


def _cudart():
    """cuda-python's runtime module (its import path moved in cuda-python 12.6), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


@dataclass(frozen=True)
class EngineBuild:
    """A built engine and what the manifest records about it."""

    engine_path: Path
    tensorrt_version: str
    compute_capability: str
    precisions: PrecisionReport
    seconds: float
    layer_info_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"built": True, "tensorrt_version": self.tensorrt_version,
                "compute_capability": self.compute_capability, "build_seconds": round(self.seconds, 3),
                "layer_precisions": self.precisions.to_dict()}


def build_engine(plan: EnginePlan, onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 layer_info_path: str | os.PathLike | None = None,
                 timing_cache_path: str | os.PathLike | None = None) -> EngineBuild:
    """Build ``plan``'s engine from ``onnx_path`` with the TensorRT Python API, then check its precisions.

    Needs ``tensorrt`` and a GPU of the plan's compute capability. The timing cache is loaded when
    present and saved back; the inspector's layer information (DETAILED) is written beside the engine.
    Raises a one-line :class:`EdgevlaError` when the engine does not run in the planned precisions.
    """
    trt = import_tensorrt()
    version = str(trt.__version__)
    installed = _version_tuple(version)
    if installed < MIN_TENSORRT:
        raise EdgevlaError(f"TensorRT {version} is too old: edgevla builds engines with TensorRT >= 10.0")
    if installed[0] >= 11 and not plan.strongly_typed:
        raise EdgevlaError(f"this plan is weakly typed ({', '.join(plan.precision_flags)} builder flags) and the "
                           f"installed TensorRT {version} builds strongly typed networks only")
    capability = device_compute_capability()
    if capability is None:
        raise EdgevlaError("building a TensorRT engine needs an NVIDIA GPU, and no CUDA device is visible here")
    if capability != plan.compute_capability:
        raise EdgevlaError(f"this GPU is compute capability {capability}, the plan is for {plan.target} "
                           f"({plan.compute_capability}): engines are tied to the GPU architecture, build on the device")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    check_onnx_for_plan(onnx_path, plan)
    cache_path = Path(timing_cache_path) if timing_cache_path is not None else engine_path.parent / plan.timing_cache
    info_path = Path(layer_info_path) if layer_info_path is not None else engine_path.parent / LAYER_INFO_NAME

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise EdgevlaError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for i in plan.inputs:
        profile.set_shape(i.name, i.min, i.opt, i.max)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgevlaError(f"TensorRT could not build an engine from {onnx_path.name} for {plan.target} "
                           "(its log above says why)")
    engine_bytes = bytes(memoryview(serialized))
    seconds = time.perf_counter() - start

    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EdgevlaError("TensorRT built an engine it cannot deserialize")
    layers = engine_layer_precisions(engine)
    import onnx

    report = check_layer_precisions(layers, plan, expected_node_precisions(onnx.load(str(onnx_path)), plan))
    _write_atomic(engine_path, engine_bytes)
    _write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    _write_atomic(info_path, engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON).encode())
    return EngineBuild(engine_path, version, capability, report, seconds, info_path)


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise EdgevlaError(f"cannot write {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------- bundle files


def engine_dir_for(bundle_dir: str | os.PathLike) -> Path:
    """Where an engine built on the device for a bundle goes: a sibling ``<bundle>.trt`` directory.

    Beside, not inside: a bundle holds exactly the files its manifest hashes.
    """
    root = Path(bundle_dir).absolute()
    return root.with_name(root.name + ".trt")


def plan_document(plan: EnginePlan, onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The content of ``tensorrt.json``: the plan, the ONNX hash, and the command build_engine.sh runs."""
    engine_dir = "${" + ENGINE_DIR_VAR + "}"
    return {
        "format": PLAN_FORMAT,
        "plan": plan.to_dict(),
        "onnx": "model.onnx",
        "onnx_sha256": _sha256(Path(onnx_path)),
        "engine_dir": engine_dir,
        "command": trtexec_command(plan, "model.onnx", f"{engine_dir}/{ENGINE_NAME}"),
        "script": SCRIPT_NAME,
        "note": f"run `sh {SCRIPT_NAME} [ENGINE_DIR]` in the bundle on the device; ENGINE_DIR defaults to "
                "the sibling directory <bundle>.trt",
    }


def write_engine_script(bundle_dir: str | os.PathLike, plan: EnginePlan,
                        onnx_path: str | os.PathLike | None = None) -> list[Path]:
    """Write ``build_engine.sh`` and ``tensorrt.json`` into ``bundle_dir``; return their paths.

    The script runs from any working directory, on the device: it checks that ``trtexec`` exists
    (``$TRTEXEC``, the PATH, or JetPack's /usr/src/tensorrt/bin) and that model.onnx still has the
    sha256 recorded here, runs the exact command of ``tensorrt.json`` from the bundle directory, and
    checks the layer precisions when edgevla is installed on the device. ``onnx_path`` is the model
    the bundle will hold as model.onnx (default: the one in ``bundle_dir``).
    """
    folder = Path(bundle_dir)
    onnx = Path(onnx_path) if onnx_path is not None else folder / "model.onnx"
    if not onnx.is_file():
        raise EdgevlaError(f"ONNX model {onnx} does not exist")
    document = plan_document(plan, onnx)
    script = _script_text(plan, document)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCRIPT_NAME).write_text(script, encoding="utf-8")
        (folder / SCRIPT_NAME).chmod(0o755)
        (folder / PLAN_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise EdgevlaError(f"cannot write the TensorRT build script into {folder}: {e.strerror or e}") from e
    return [folder / SCRIPT_NAME, folder / PLAN_NAME]


def _shell_word(arg: str) -> str:
    """One argument as POSIX sh reads it: plain when safe, ${ENGINE_DIR} expanded, anything else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    var = "${" + ENGINE_DIR_VAR + "}"
    if var in arg and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg.replace(var, "")):
        return '"' + arg + '"'
    return "'" + arg.replace("'", "'\"'\"'") + "'"


_SCRIPT = r"""#!/bin/sh
# Build the TensorRT engine of this bundle on the device: @TARGET@ (compute capability
# @CC@, TensorRT @TRT@), precision @PRECISION@.
# Written by edgevla @VERSION@; the plan and this command are in @PLAN@.
#
#   sh @SCRIPT@ [ENGINE_DIR]      (ENGINE_DIR defaults to the sibling directory <bundle>.trt)
#
# Engines are tied to the GPU and the TensorRT version that build them: run this on the device.
set -eu

fail() {
    echo "@SCRIPT@: $*" >&2
    exit 1
}

caller=$(pwd)
bundle=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd) || fail "cannot find the bundle directory"
cd "$bundle"
case ${1:-} in
    "") ENGINE_DIR="$bundle.trt" ;;
    /*) ENGINE_DIR=$1 ;;
    *) ENGINE_DIR="$caller/$1" ;;
esac

trtexec=${TRTEXEC:-}
if [ -z "$trtexec" ]; then
    trtexec=$(command -v trtexec 2>/dev/null || true)
fi
if [ -z "$trtexec" ] && [ -x /usr/src/tensorrt/bin/trtexec ]; then
    trtexec=/usr/src/tensorrt/bin/trtexec
fi
[ -n "$trtexec" ] || fail "trtexec not found: install TensorRT (JetPack has it in /usr/src/tensorrt/bin) or set TRTEXEC=/path/to/trtexec"
[ -x "$trtexec" ] || fail "trtexec at $trtexec is not executable"

[ -f model.onnx ] || fail "model.onnx is missing from $bundle"
expected=@SHA256@
if command -v sha256sum >/dev/null 2>&1; then
    actual=$(sha256sum model.onnx | cut -d ' ' -f 1)
elif command -v shasum >/dev/null 2>&1; then
    actual=$(shasum -a 256 model.onnx | cut -d ' ' -f 1)
else
    fail "neither sha256sum nor shasum is installed: cannot check model.onnx"
fi
[ "$actual" = "$expected" ] || fail "model.onnx sha256 is $actual, the bundle recorded $expected: the model was modified"

mkdir -p "$ENGINE_DIR" || fail "cannot create $ENGINE_DIR"
echo "@SCRIPT@: building $ENGINE_DIR/@ENGINE@" >&2
status=0
@COMMAND@ || status=$?
[ "$status" -eq 0 ] || fail "trtexec failed (exit $status)"
[ -s "$ENGINE_DIR/@ENGINE@" ] || fail "trtexec finished but wrote no engine at $ENGINE_DIR/@ENGINE@"

if command -v python3 >/dev/null 2>&1 && python3 -c 'import edgevla' >/dev/null 2>&1; then
    python3 -m edgevla.export.tensorrt check-layers "$ENGINE_DIR/@LAYERS@" --plan @PLAN@ --onnx model.onnx \
        || fail "the engine does not run in the planned precisions (see above)"
else
    echo "@SCRIPT@: edgevla is not installed here, so the layer precisions in $ENGINE_DIR/@LAYERS@ were not checked" >&2
fi
echo "@SCRIPT@: engine written to $ENGINE_DIR/@ENGINE@" >&2
"""


def _script_text(plan: EnginePlan, document: Mapping[str, Any]) -> str:
    from .. import __version__

    command = " \\\n    ".join(['"$trtexec"'] + [_shell_word(a) for a in document["command"][1:]])
    values = {"TARGET": plan.target, "CC": plan.compute_capability, "TRT": plan.tensorrt,
              "PRECISION": plan.precision, "VERSION": str(__version__), "PLAN": PLAN_NAME, "SCRIPT": SCRIPT_NAME,
              "SHA256": document["onnx_sha256"], "ENGINE": ENGINE_NAME, "LAYERS": LAYER_INFO_NAME,
              "COMMAND": command}
    return re.sub(r"@([A-Z0-9]+)@", lambda m: values[m.group(1)], _SCRIPT)


def tensorrt_precision(quantize_format: str) -> str:
    """The TensorRT format of a build recipe's ``quantize.format`` (``none`` builds fp32)."""
    precision = "fp32" if quantize_format == "none" else quantize_format
    if precision not in FORMATS:
        raise EdgevlaError(f"quantize format {quantize_format!r} has no TensorRT format "
                           f"(TensorRT formats: {', '.join(FORMATS)})")
    return precision


def bundle_tensorrt(target, spec: PolicySpec, onnx_path: str | os.PathLike, work_dir: str | os.PathLike, *,
                    precision: str = "fp32", sparse: bool = False,
                    batch_sizes: Sequence[int] = (1,)) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """The TensorRT files of a bundle and its manifest entry; nothing for a target without a GPU.

    Always: ``build_engine.sh`` and ``tensorrt.json``. When TensorRT imports here and this host's
    GPU has the target's compute capability, the engine is built too and ships as ``model.engine``
    with its TensorRT version, compute capability and layer precisions in the entry.
    """
    if target.kind != "gpu" or target.facts.tensorrt is None:
        return {}, None
    import onnx

    graph_float = onnx_float_type(onnx.load(str(onnx_path)))
    # 2:4 weights on a GPU without sparse tensor cores are ordinary dense weights to TensorRT.
    plan = plan_engine(target, spec, precision=precision, sparse=sparse and target.facts.sparse_tensor_cores,
                       batch_sizes=batch_sizes, graph_float=graph_float)
    check_onnx_for_plan(onnx_path, plan)
    folder = Path(work_dir)
    script, document = write_engine_script(folder, plan, onnx_path)
    files: dict[str, Path] = {SCRIPT_NAME: script, PLAN_NAME: document}
    entry: dict[str, Any] = {"plan": plan.to_dict(), "script": SCRIPT_NAME, "plan_file": PLAN_NAME,
                             "command": json.loads(document.read_text())["command"]}
    installed = tensorrt_version()
    capability = device_compute_capability() if installed is not None else None
    if installed is None:
        entry["engine"] = {"built": False, "reason": "TensorRT is not installed on the build host"}
    elif capability != plan.compute_capability:
        entry["engine"] = {"built": False, "reason": f"the build host's GPU ({capability or 'none'}) is not the "
                                                     f"target's compute capability {plan.compute_capability}"}
    else:
        built = build_engine(plan, onnx_path, folder / "engine" / ENGINE_NAME)
        files[ENGINE_NAME] = built.engine_path
        entry["engine"] = {**built.to_dict(), "file": ENGINE_NAME}
    return files, entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- on the device


def load_plan_document(path: str | os.PathLike) -> dict[str, Any]:
    """A ``tensorrt.json`` read back, its plan checked."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgevlaError(f"cannot read TensorRT plan {path}: {e}") from e
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise EdgevlaError(f"{path} is not an edgevla TensorRT plan (format {PLAN_FORMAT!r})")
    document["plan"] = EnginePlan.from_dict(document.get("plan") or {})
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgevla.export.tensorrt check-layers LAYERS --plan tensorrt.json [--onnx model.onnx]``.

    What build_engine.sh runs after trtexec: the silent-fallback check on trtexec's --exportLayerInfo.
    """
    parser = argparse.ArgumentParser(prog="python -m edgevla.export.tensorrt")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-layers", help="check an engine's layer precisions against its plan")
    check.add_argument("layers", help="layer information JSON (trtexec --exportLayerInfo)")
    check.add_argument("--plan", required=True, help="the bundle's tensorrt.json")
    check.add_argument("--onnx", help="the ONNX model the engine was built from (names each layer's precision)")
    args = parser.parse_args(argv)
    try:
        plan = load_plan_document(args.plan)["plan"]
        try:
            text = Path(args.layers).read_text(encoding="utf-8")
        except OSError as e:
            raise EdgevlaError(f"cannot read layer information {args.layers}: {e.strerror or e}") from e
        expected = None
        if args.onnx:
            import onnx

            expected = expected_node_precisions(onnx.load(args.onnx), plan)
        report = check_layer_precisions(parse_engine_layers(text), plan, expected)
    except EdgevlaError as e:
        print(f"edgevla: error: {e}", file=sys.stderr)
        return e.exit_code
    counts = ", ".join(f"{n} {p}" for p, n in report.counts().items()) or "none visible"
    note = "" if report.verified else " (not verified: every compute layer is fused into an opaque Myelin node)"
    print(f"layer precisions match the {plan.precision} plan: compute layers {counts}; "
          f"{len(report.opaque)} opaque{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
