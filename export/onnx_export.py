"""Export a policy to a plain, checked ONNX graph.

Any ``torch.nn.Module`` honouring the spec contract (see :mod:`edgevla.spec`)
exports to a graph whose inputs are named after ``spec.observations``, whose
single output is named after ``spec.action``, and whose leading (batch) axis
is dynamic, so one file serves batch 1 on the robot and large batches in
verification.

We use PyTorch's ``torch.export``-based exporter (the TorchScript exporter is
deprecated since PyTorch 2.9). It needs ``onnxscript``. The exporter's stock
optimizer is replaced by the same sequence of passes *minus* initializer
deduplication: the stock pipeline merges parameters that happen to hold equal
values (two freshly initialised LayerNorms share one ``weight``), and later
stages must be able to give each layer its own precision. Constant folding
stays, so a ``Linear`` becomes ``MatMul``/``Gemm`` on a plain initializer and
the graph keeps only ops like MatMul, Gemm, LayerNormalization and Softmax —
the form Q/DQ insertion and graph linting expect.

Folding a ``Linear``'s weight transpose creates a new initializer; we rename
it ``<param>.T`` so every weight in the graph is named after the PyTorch
parameter it came from. :func:`match_initializers` recovers that mapping
from values, so it holds for any exporter's naming.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..backends import policy_device
from ..errors import EdgevlaError
from ..models.explicit_attention import explicit_attention, reference_attention
from ..spec import PolicySpec, spec_of

if TYPE_CHECKING:
    from .trace_cache import TraceCache

#: LayerNormalization, which every transformer policy uses, entered ONNX in opset 17.
MIN_OPSET = 17
#: The opset torch.onnx writes; older ones are converted to after folding (:func:`_down_to_opset`).
EXPORTER_OPSET = 18
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class InitializerRef:
    """Where a PyTorch parameter lives in an ONNX graph.

    ``transposed`` is true when the initializer holds ``param.T`` (a folded
    ``Linear`` weight feeding ``MatMul``): its output channels are then axis 1.
    """

    name: str
    transposed: bool


def export_onnx(policy: torch.nn.Module, path: str | os.PathLike, *, opset: int = 18,
                dynamic_batch: bool = True, cache: TraceCache | None = None) -> Path:
    """Export ``policy`` to ``path``, check it, and return the path.

    The file appears only complete: it is written beside ``path`` under a
    temporary name, checked with ``onnx.checker.check_model(full_check=True)``
    and then renamed into place. The policy's train/eval mode is restored.

    PyTorch's attention modules (``nn.MultiheadAttention``, ``nn.Transformer*``)
    are traced in their explicit form (:mod:`edgevla.models.explicit_attention`,
    checked equal on the example): the fused fast path and the causal-mask
    detection of ``nn.TransformerEncoder`` do not trace, and the explicit form is
    the one the native runtime fuses into one attention step. Its initializers are
    named after the split projections (``self_attn.q_proj.weight``).

    ``cache`` (:class:`~edgevla.export.trace_cache.TraceCache`): a graph traced
    earlier from a module of the same structure gets this policy's weights
    written in instead of a new trace, where that is exact; what is traced is
    kept there for the next export.
    """
    if not isinstance(policy, torch.nn.Module):
        raise EdgevlaError(f"can only export a torch.nn.Module, got {type(policy).__name__}")
    spec = spec_of(policy)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise EdgevlaError(f"ONNX opset {opset!r} is too old: edgevla needs opset >= {MIN_OPSET} (LayerNormalization)")
    path = Path(path)
    if path.is_dir():
        raise EdgevlaError(f"ONNX output {path} is a directory, expected a file path")

    batch = 2 if dynamic_batch else 1  # torch.export specializes size-1 dims, so trace with 2
    device = policy_device(policy)
    example = tuple(torch.from_numpy(a).to(device) for a in spec.example(batch=batch, seed=0).values())
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad(), reference_attention():
            _check_forward(policy, spec, example)
            traced = explicit_attention(policy, example).model
            key = _structure_key(traced, spec, (opset, dynamic_batch)) if cache is not None else None
            data = None  # the serialized graph: a large one takes seconds to serialize, so once
            if key is not None:
                second = tuple(torch.from_numpy(a).to(device)
                               for a in spec.example(batch=batch + 1 if dynamic_batch else 1, seed=1).values())
                data = cache.reweighted(key, traced, spec, (example, second))
            kept = data is not None
            if not kept:
                proto = _trace(traced, spec, example, opset=opset, dynamic_batch=dynamic_batch)
                _name_initializers_after_parameters(proto, traced)
                if dynamic_batch:
                    _check_dynamic_batch(proto, spec)
                data = serialized(proto)
            _write_checked(data, path)
            if not kept and key is not None:
                cache.keep(key, path, traced)
    finally:
        policy.train(was_training)
    return path


def match_initializers(onnx_model: onnx.ModelProto | str | os.PathLike,
                       policy: torch.nn.Module) -> dict[str, InitializerRef]:
    """Map each parameter name to the initializer holding its value.

    An initializer named like the parameter with the same shape wins; others
    are matched by value, exactly or transposed (2-D only). Parameters whose
    value no longer appears in the graph (folded into another constant), or
    whose value matches several candidates ambiguously, are left out.
    Tied parameters map every alias to the same initializer.
    """
    model = onnx_model if isinstance(onnx_model, onnx.ModelProto) else _load(onnx_model)
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    params = [(name, _as_numpy(p)) for name, p in policy.named_parameters(remove_duplicate=False)]

    found: dict[str, InitializerRef] = {}
    for name, value in params:
        init = arrays.get(name)
        if init is not None and init.shape == value.shape:
            found[name] = InitializerRef(name, transposed=False)

    claimed = {ref.name for ref in found.values()}
    by_digest: dict[str, list[str]] = {}
    for init_name, init in arrays.items():
        if init_name not in claimed:
            by_digest.setdefault(_digest(init), []).append(init_name)

    candidates: dict[str, list[InitializerRef]] = {}
    for name, value in params:
        if name in found:
            continue
        refs = [InitializerRef(n, False) for n in by_digest.get(_digest(value), [])]
        if value.ndim == 2 and not refs:
            refs = [InitializerRef(n, True) for n in by_digest.get(_digest(value.T), [])]
        candidates[name] = refs
    # Tied aliases share one value; group by value so they resolve together.
    claimants: dict[str, set[str]] = {}
    for name, value in params:
        for ref in candidates.get(name, []):
            claimants.setdefault(ref.name, set()).add(_digest(value))
    beside = _bias_beside(model, arrays)
    for name, refs in candidates.items():
        if len(refs) == 1 and len(claimants[refs[0].name]) == 1:
            found[name] = refs[0]
        elif len(refs) > 1 and name.endswith(".weight"):
            # Equal weights (the untrained clones nn.TransformerEncoder makes of its layer): the one
            # multiplied where this layer's own bias is added is this layer's.
            bias = found.get(name.removesuffix(".weight") + ".bias")
            mine = [r for r in refs if bias is not None and beside.get(r.name) == bias.name]
            if len(mine) == 1:
                found[name] = mine[0]
    return found


def _bias_beside(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Initializer -> the initializer added to the product it is a factor of (``Gemm``'s C, ``MatMul`` then ``Add``)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    beside = {}
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in arrays:
            beside[node.input[1]] = node.input[2]
        elif node.op_type == "MatMul" and node.input[1] in arrays:
            for add in consumers.get(node.output[0], []):
                others = [n for n in add.input if n != node.output[0]]
                if add.op_type == "Add" and len(others) == 1 and others[0] in arrays:
                    beside[node.input[1]] = others[0]
    return beside


def initializer_map(onnx_model: onnx.ModelProto | str | os.PathLike, policy: torch.nn.Module) -> dict[str, str]:
    """``{parameter name: initializer name}``; see :func:`match_initializers`."""
    return {name: ref.name for name, ref in match_initializers(onnx_model, policy).items()}


# --------------------------------------------------------------------------- internals


def _check_forward(policy: torch.nn.Module, spec: PolicySpec, example: tuple[torch.Tensor, ...]) -> None:
    """Fail early, with a readable message, on a policy that breaks its own spec."""
    name = type(policy).__name__
    try:
        out = policy(*example)
    except Exception as e:  # the user's forward: any failure is theirs to see in one line
        raise EdgevlaError(f"{name}.forward failed on example observations: {_one_line(e)}") from e
    expected = (example[0].shape[0], *spec.action.shape)
    if not isinstance(out, torch.Tensor):
        raise EdgevlaError(f"{name}.forward must return one tensor of actions, got {type(out).__name__}")
    if tuple(out.shape) != expected:
        raise EdgevlaError(f"{name}.forward returned shape {tuple(out.shape)}, its spec declares {expected}")


def _trace(policy: torch.nn.Module, spec: PolicySpec, example: tuple[torch.Tensor, ...], *,
           opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    try:
        import onnx_ir as ir
    except ImportError as e:  # pragma: no cover - a packaging error, not a user error
        raise EdgevlaError("ONNX export needs the onnxscript package: pip install onnxscript") from e
    dynamic_shapes = tuple({0: BATCH_AXIS} for _ in example) if dynamic_batch else None
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                policy, example, dynamo=True, optimize=False, opset_version=max(opset, EXPORTER_OPSET),
                input_names=spec.input_names, output_names=[spec.action.name],
                dynamic_shapes=dynamic_shapes, external_data=False, verbose=False, report=False)
            model = _optimize(program.model, opset)
            proto = ir.serde.serialize_model(model)
    except EdgevlaError:
        raise
    except Exception as e:  # torch.export raises many unrelated types; the user needs one line
        raise _export_failure(policy, e) from e
    return _down_to_opset(proto, opset)


def _structure_key(module: torch.nn.Module, spec: PolicySpec, settings: tuple) -> str | None:
    from .trace_cache import structure_key  # it imports this module

    return structure_key(module, spec, settings)


def _down_to_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Write the folded graph in an opset older than the exporter's own (17: TensorRT 8.5, JetPack 5).

    The exporter converts before folding, and fails silently there on inputs that are constant only
    once folded (a ``ReduceMean``'s axes), handing back opset 18. After folding, ONNX's converter
    takes every op back but ``Split``, for which it has no adapter although the sizes-input form
    (:func:`_split_sizes_before_opset_18`) reads the same in 13 and 18: Splits wait out the
    conversion in a private domain. Initializers nobody reads any more (the axes now attributes) go.
    """
    if opset >= EXPORTER_OPSET:
        return proto
    import onnx.version_converter

    splits = [n for n in _all_nodes(proto.graph) if n.op_type == "Split" and n.domain in ("", "ai.onnx")]
    for node in splits:
        node.domain = _ASIDE
    proto.opset_import.append(onnx.helper.make_opsetid(_ASIDE, 1))
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
    except Exception as e:  # the C converter raises RuntimeError with its file and assertion text
        raise EdgevlaError(f"ONNX export: the graph cannot be written in opset {opset} "
                           f"({_one_line(e).split(': ')[-1]}); set export.opset to {EXPORTER_OPSET} or later") from e
    for node in _all_nodes(converted.graph):
        if node.domain == _ASIDE:
            node.domain = ""
        _drop_noop_with_empty_axes(node, opset)
    kept = [o for o in converted.opset_import if o.domain != _ASIDE]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    read = {name for n in _all_nodes(converted.graph) for name in n.input} | {o.name for o in converted.graph.output}
    unread = [i for i in converted.graph.initializer if i.name not in read]
    for init in unread:
        converted.graph.initializer.remove(init)
    return converted


_ASIDE = "edgevla.opset18"


def _drop_noop_with_empty_axes(node: onnx.NodeProto, opset: int) -> None:
    """The converter moves a reduction's axes back to an attribute but keeps opset 18's
    ``noop_with_empty_axes``, unknown before 18; without axes it would mean reduce-nothing."""
    attrs = {a.name: a for a in node.attribute}
    flag = attrs.get("noop_with_empty_axes")
    if flag is None or node.domain not in ("", "ai.onnx"):
        return
    if "noop_with_empty_axes" in onnx.defs.get_schema(node.op_type, opset).attributes:
        return
    if flag.i and "axes" not in attrs:
        raise EdgevlaError(f"ONNX export: a {node.op_type} over no axes (an identity) cannot be written in opset "
                           f"{opset}; set export.opset to {EXPORTER_OPSET} or later")
    node.attribute.remove(flag)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                yield from _all_nodes(sub)


def _export_failure(policy: torch.nn.Module, error: Exception) -> EdgevlaError:
    """One line naming the real cause, which torch.onnx wraps in a generic 'step 1/3' error."""
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    what = f"ONNX export of {type(policy).__name__} failed"
    if "inferred a static shape" in str(root):
        return EdgevlaError(f"{what}: its forward fixes the batch size; make it batch-size independent "
                            "(use -1 or x.shape[0] in reshapes) or export with dynamic_batch=False")
    return EdgevlaError(f"{what}: {type(root).__name__}: {_one_line(root)}")


def _optimize(model, opset: int):
    """onnxscript's default optimization, without deduplicating initializers."""
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer
    import onnxscript.rewriter

    passes.InlinePass()(model)
    passes.CommonSubexpressionEliminationPass()(model)  # one Transpose per weight, however often it is read
    for _ in range(2):
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
        model = onnxscript.rewriter.rewrite(model)
    if opset < 18:
        _split_sizes_before_opset_18(model)
    for step in (passes.RemoveUnusedNodesPass(),
                 passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 passes.CommonSubexpressionEliminationPass(),
                 passes.RemoveUnusedNodesPass(),
                 passes.OutputFixPass(),
                 passes.NameFixPass()):
        step(model)
    return model


def _split_sizes_before_opset_18(model) -> None:
    """Give each ``Split(num_outputs=n)`` its sizes as an input, the form every opset reads.

    The exporter and onnxscript's rewriter (two halving ``Slice``s: ``x.chunk(2, -1)`` in adaLN,
    FiLM, GLU) write ``Split(num_outputs=n)``, an opset-18 attribute ONNX's converter cannot take
    back to 17. Sizes follow opset 18's rule: ``ceil(d / n)`` each, the remainder last.
    """
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Split" or node.domain != "" or "num_outputs" not in node.attributes:
            continue
        n = node.attributes.pop("num_outputs").as_int()
        shape = node.inputs[0].shape
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        dim = shape[axis] if shape is not None else None
        if not isinstance(dim, int):
            raise EdgevlaError(f"ONNX export: a Split into {n} along an axis of unknown size cannot be written "
                               f"before opset 18; set export.opset to 18 or later")
        part = -(-dim // n)
        sizes = ir.Value(name=f"{node.name}_sizes",
                         const_value=ir.tensor(np.array([part] * (n - 1) + [dim - part * (n - 1)], np.int64)))
        node.graph.register_initializer(sizes)
        node.resize_inputs(2)
        node.replace_input_with(1, sizes)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and deprecation notes the user cannot act on."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _name_initializers_after_parameters(proto: onnx.ModelProto, policy: torch.nn.Module) -> None:
    """Rename matched initializers to ``<param>`` or ``<param>.T`` everywhere in the graph."""
    taken = _all_value_names(proto.graph)
    renames: dict[str, str] = {}
    for param, ref in match_initializers(proto, policy).items():
        wanted = f"{param}.T" if ref.transposed else param
        if ref.name == wanted or ref.name in renames or wanted in taken:
            continue
        renames[ref.name] = wanted
        taken.add(wanted)
    if renames:
        _rename_values(proto.graph, renames)


def _all_value_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                names |= _all_value_names(sub)
    return names


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for group in (graph.input, graph.output, graph.value_info):
        for v in group:
            v.name = renames.get(v.name, v.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                _rename_values(sub, renames)


def _check_dynamic_batch(proto: onnx.ModelProto, spec: PolicySpec) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise EdgevlaError(
                f"the exported graph fixed the batch size of {value.name!r}: make the policy's forward "
                "batch-size independent (use -1 or x.shape[0] in reshapes) or export with dynamic_batch=False")


def serialized(proto: onnx.ModelProto) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise EdgevlaError(f"the exported model is too large for one ONNX file: {_one_line(e)}") from e


def _write_checked(model: onnx.ModelProto | bytes, path: Path) -> None:
    """Write ``model`` (or its serialized bytes) to ``path`` through a temporary file, checked by onnx.checker."""
    data = model if isinstance(model, bytes) else serialized(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise EdgevlaError(f"cannot write ONNX model to {path}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise EdgevlaError(f"the exported ONNX model does not pass onnx.checker: {_one_line(e)}") from e
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except OSError as e:
        raise EdgevlaError(f"cannot write ONNX model to {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(path))
    except Exception as e:  # OSError, protobuf DecodeError, ...: all mean "not a readable model"
        raise EdgevlaError(f"cannot read ONNX model {path}: {_one_line(e)}") from e


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; the bytes are what we compare
        t = t.view(torch.int16)
    return t.numpy()


def _digest(a: np.ndarray) -> str:
    """Identity of a tensor's value: element size, shape and bytes (dtype names differ across libraries)."""
    a = np.ascontiguousarray(a)
    return hashlib.sha1(f"{a.dtype.itemsize}{a.shape}".encode() + a.tobytes()).hexdigest()


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch colours some messages
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
