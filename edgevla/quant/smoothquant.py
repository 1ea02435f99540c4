"""SmoothQuant: move activation outliers into the weights before W8A8.

A ``Linear`` computes ``X W^T``. Dividing input channel ``j`` of ``X`` by
``s_j`` and multiplying column ``j`` of ``W`` by ``s_j`` leaves the product
unchanged but flattens the activation's per-channel range, which per-tensor
int8 handles badly, at the cost of a wider weight range, which per-channel
int8 handles well. Following Xiao et al. (2023)::

    s_j = max|X_j|^α / max|W_{:,j}|^(1-α)

The division of ``X`` must cost nothing at run time, so it is folded into the
``LayerNorm`` that produces ``X`` (``γ/s``, ``β/s``), or the ``RMSNorm`` of a
Llama-style trunk (``γ/s``: RMSNorm's ``x / rms(x)`` is unchanged), whether a module or written
out as ops the way Hugging Face's modeling files write theirs (``LlamaRMSNorm``, Gemma's
``x * (1 + γ)``, whose ``1 + γ`` is divided). That fold is exact only
when every consumer of the LayerNorm's output is a ``Linear`` receiving it
directly — q, k and v sharing one pre-norm get one shared ``s`` and all three
weights are scaled. A gated MLP's down projection, whose input (``act(gate(x)) *
up(x)``) carries a Llama-family model's largest activation outliers, takes its
scales through ``up``'s output rows instead: the product's channel ``j`` is
``up``'s row ``j`` times a gate, exactly (a random-init Llama-style policy, w8a8:
28.6 -> 29.8 dB output SQNR with them, 28.0 without SmoothQuant). Pairs are
found on the ``torch.export`` graph of the
model; anything else (a LayerNorm whose output also feeds a residual, a
reshape or a non-linear op, a Linear called on two different inputs) is
refused and left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdgevlaError
from .calibrate import observe_layer_inputs

_NORMS = ("aten.layer_norm", "aten.rms_norm")
_LINEAR = "aten.linear"
# Ops that hand their first operand on unchanged but for its dtype or storage.
_CASTS = ("aten.to", "aten.type_as", "aten._to_copy", "aten.clone", "aten.contiguous", "aten.alias")


@dataclass(frozen=True)
class SmoothGroup:
    """One LayerNorm (or RMSNorm) and the Linears that read its output, all of them and nothing else; or the
    Linear producing a gated MLP's value (``up_proj``) and the one reading the product (``down_proj``).

    ``weight`` (and ``bias``) are the parameters divided by the scales: a norm's 1-D γ, which multiplies by
    ``offset + weight`` (Gemma's RMSNorm by ``1 + w``; 0 elsewhere), or the value Linear's rows."""

    norm: str
    linears: tuple[str, ...]
    weight: str = ""
    bias: str | None = None
    offset: float = 0.0


@dataclass(frozen=True)
class Refusal:
    """A LayerNorm that could not be folded, and why."""

    norm: str
    reason: str


@dataclass
class _Candidate:
    """A norm's output values and the parameters its scale lives in, before its readers are checked."""

    outputs: list[torch.fx.Node]
    weight: str
    bias: str | None
    offset: float = 0.0
    reason: str | None = None


def find_smooth_groups(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[list[SmoothGroup], list[Refusal]]:
    """LayerNorm / RMSNorm → Linear groups where SmoothQuant's fold is exact, and the norms refused.

    A norm is ``nn.LayerNorm`` / ``nn.RMSNorm``, or one written out by hand (Hugging Face's
    ``LlamaRMSNorm``, ``T5LayerNorm``, Gemma's ``x * (1 + w)``): :func:`_spelled_norms`."""
    modules = dict(model.named_modules())
    program = trace_program(model, example, "SmoothQuant")
    linear_inputs = {owner: [call.args[0] for call in calls] for owner, calls in
                     module_calls(program, modules, (_LINEAR,), lambda m: isinstance(m, nn.Linear)).items()}
    candidates = (_module_norms(program, modules) | _spelled_norms(program, modules)
                  | _gated_values(program, modules, linear_inputs))

    groups, refused = [], []
    for norm, found in candidates.items():
        reason = found.reason
        consumers: list[str] = []
        for output in found.outputs if reason is None else ():
            for user in _uncast_users(output):
                owner = _owner(user)
                if _op_name(user) != _LINEAR or not isinstance(modules.get(owner), nn.Linear):
                    reason = f"its output also feeds {user.target} in {owner or 'the top-level forward'}"
                    break
                if _uncast(user.args[0]) is not output:
                    reason = f"it reaches {owner} other than as the input"
                    break
                consumers.append(owner)
            if reason:
                break
        if reason is None:
            for lin in set(consumers):
                if any(_uncast(inp) not in found.outputs for inp in linear_inputs[lin]):
                    reason = f"{lin} is also called on another input"
                    break
        if reason is None and not consumers:
            reason = "its output is unused"
        if reason:
            refused.append(Refusal(norm, reason))
        else:
            groups.append(SmoothGroup(norm, tuple(dict.fromkeys(consumers)), found.weight, found.bias, found.offset))
    return groups, refused


def _module_norms(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module]) -> dict[str, _Candidate]:
    """``nn.LayerNorm`` / ``nn.RMSNorm`` calls: one aten op, the module's affine weight and bias."""
    found = {}
    for norm, calls in module_calls(program, modules, _NORMS,
                                    lambda m: isinstance(m, (nn.LayerNorm, nn.RMSNorm))).items():
        module = modules[norm]
        bias = f"{norm}.bias" if getattr(module, "bias", None) is not None else None
        reason = (None if module.weight is not None
                  else f"{type(module).__name__} has no affine weight to fold the scales into")
        found[norm] = _Candidate(calls, f"{norm}.weight", bias, 0.0, reason)
    return found


def _spelled_norms(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module]) -> dict[str, _Candidate]:
    """Norms written as ops, found from the Linears' inputs back: the input is ``γ ⊙ r`` (``+ β``), where ``γ``
    and ``β`` are 1-D parameters over its last axis (``γ`` perhaps ``c + γ``) and ``r`` is anything scaled
    only by row-wise factors (``x * rsqrt(mean(x²))``, ``(x - μ) / σ``) after ``γ``: dividing ``γ`` and
    ``β`` by ``s`` divides the input's channels by ``s``, whatever ``r`` is. Dtype casts pass through.

    Keyed by the module owning ``γ``; each use of ``γ`` and ``β`` must be such a norm, or the norm is refused."""
    parameters = program.graph_signature.inputs_to_parameters
    linear = [n for n in program.graph.nodes if n.op == "call_function" and _op_name(n) == _LINEAR]
    chains: dict[str, list[tuple[torch.fx.Node, str | None, float]]] = {}
    seen: set[torch.fx.Node] = set()  # q, k and v read one output
    for call in linear:
        output = _uncast(call.args[0])  # casts between the norm and its readers are theirs
        if not isinstance(output, torch.fx.Node) or output in seen:
            continue
        seen.add(output)
        chain = _affine_chain(output, parameters)
        if chain is not None:
            weight, bias, offset = chain
            chains.setdefault(weight, []).append((output, bias, offset))
    found = {}
    for weight, uses in chains.items():
        norm = weight.rpartition(".")[0] or weight  # a scale the root holds goes by its own name
        biases, offsets = {u[1] for u in uses}, {u[2] for u in uses}
        reason = None
        if len(biases) > 1 or len(offsets) > 1:
            reason = "its calls add different biases or offsets"
        elif _parameter_uses(program, weight) != len(uses):
            reason = f"{weight} is also used elsewhere"
        elif (bias := next(iter(biases))) is not None and _parameter_uses(program, bias) != len(uses):
            reason = f"{bias} is also used elsewhere"
        found[norm] = _Candidate([u[0] for u in uses], weight, next(iter(biases)), next(iter(offsets)), reason)
    return found


def _gated_values(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module],
                  linear_inputs: Mapping[str, list]) -> dict[str, _Candidate]:
    """Gated MLPs, ``down(act(gate(x)) * up(x))`` (SwiGLU, GEGLU): the product's channel ``j`` is ``up``'s
    output row ``j`` times a gate, so dividing that row (and its bias) by ``s_j`` divides the product's channel
    by ``s_j``, whatever the gate is. The down projection's input, which carries an LLM's largest activation
    outliers, is smoothed through ``up``: keyed by ``up``, which must be called this once."""
    found = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or _op_name(node) != "aten.mul" or len(node.args) != 2:
            continue
        if not all(isinstance(a, torch.fx.Node) for a in node.args):
            continue
        for side in node.args:
            value = _uncast(side)
            owner = _owner(value)
            if (_op_name(value) == _LINEAR and isinstance(modules.get(owner), nn.Linear) and owner not in found
                    and _uncast_users(value) == [node] and _shape(value) == _shape(node)
                    and any(_op_name(r) == _LINEAR for r in _uncast_users(node))):  # a down projection reads it
                up = modules[owner]
                reason = None if len(linear_inputs.get(owner, ())) == 1 else f"{owner} is called more than once"
                found[owner] = _Candidate([node], f"{owner}.weight", f"{owner}.bias" if up.bias is not None else None,
                                          0.0, reason)
                break
    return found


def _affine_chain(output: torch.fx.Node, parameters: Mapping[str, str]) -> tuple[str, str | None, float] | None:
    """``(γ's name, β's name or None, γ's offset)`` when ``output`` is a spelled
    norm's (:func:`_spelled_norms`); else None. Every node between γ's product and ``output`` has one reader."""
    width = _last_size(output)

    def vector(node) -> str | None:  # a 1-D parameter over the last axis, perhaps cast
        node = _uncast(node)
        name = parameters.get(node.name) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None
        return name if name is not None and tuple(_shape(node) or ()) == (width,) else None

    node, bias = output, None
    if _op_name(node) == "aten.add" and len(node.args) == 2:
        for mine, other in (node.args, node.args[::-1]):
            if (beta := vector(other)) is not None and isinstance(mine, torch.fx.Node):
                node, bias = _uncast(mine), beta
                break
    for _ in range(16):  # a norm is a few ops deep
        if node is not output and len(_uncast_users(node)) != 1:
            return None
        op = _op_name(node)
        if op == "aten.mul" and len(node.args) == 2:
            for mine, other in (node.args, node.args[::-1]):
                if (gamma := vector(other)) is not None:
                    return gamma, bias, 0.0
                shifted = _uncast(other)
                if (_op_name(shifted) == "aten.add" and len(shifted.args) == 2
                        and isinstance(shifted.args[1], (int, float)) and vector(shifted.args[0]) is not None):
                    return vector(shifted.args[0]), bias, float(shifted.args[1])
            mine = next((m for m, o in (node.args, node.args[::-1]) if _row_wise(o) and isinstance(m, torch.fx.Node)),
                        None)
        elif op == "aten.div" and len(node.args) == 2 and _row_wise(node.args[1]):
            mine = node.args[0]
        else:
            return None
        if not isinstance(mine, torch.fx.Node):
            return None
        node = _uncast(mine)
    return None


def _uncast(node):
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and _op_name(node) in _CASTS:
        node = node.args[0]
    return node


def _uncast_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The readers of ``node``, looking through dtype casts (and past the tracer's metadata assertions)."""
    out = []
    for user in node.users:
        if _op_name(user) != "aten._assert_tensor_metadata":
            out.extend(_uncast_users(user) if _op_name(user) in _CASTS else [user])
    return out


def _parameter_uses(program: torch.export.ExportedProgram, name: str) -> int:
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                       and program.graph_signature.inputs_to_parameters.get(n.name) == name)
    return len(_uncast_users(placeholder))


def _shape(node) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _last_size(node) -> int | None:
    shape = _shape(node)
    return shape[-1] if shape else None


def _row_wise(operand) -> bool:
    """A Python number, or a tensor constant along the last axis (its last size 1): scaling by it commutes
    with scaling the channels."""
    if isinstance(operand, (int, float)):
        return True
    shape = _shape(operand)
    return shape is not None and (len(shape) == 0 or shape[-1] == 1)


def smoothing_scales(act_amax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1-α)`` per input channel; weights of a group share one ``s``."""
    if not 0.0 <= alpha <= 1.0:
        raise EdgevlaError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    w_amax = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).float()
    a = act_amax.float().clamp(min=1e-5)
    w = w_amax.clamp(min=1e-5)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    # A channel that never fires (or an all-zero weight column) keeps scale 1.
    s = torch.where((act_amax > 0) & (w_amax > 0), s, torch.ones_like(s))
    return s.clamp(min=1e-5, max=1e5)


@torch.no_grad()
def fold_smoothing(model: nn.Module, group: SmoothGroup, scales: torch.Tensor) -> None:
    """Divide the norm's γ (its ``offset + γ``) and β, or the value Linear's rows and bias, by ``scales`` and
    multiply each reading Linear's input columns by them."""
    modules = dict(model.named_modules())
    weight = model.get_parameter(group.weight or f"{group.norm}.weight")
    s = scales.to(weight.dtype)
    if weight.ndim == 2:  # a gated MLP's value Linear: its output rows
        weight.div_(s[:, None])
    else:
        weight.copy_((group.offset + weight) / s - group.offset)
    if group.bias is not None:
        model.get_parameter(group.bias).div_(s)
    for name in group.linears:
        modules[name].weight.mul_(s.to(modules[name].weight.dtype)[None, :])


def smooth_quant(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], alpha: float = 0.5,
                 example: tuple[torch.Tensor, ...] | None = None) -> dict[str, object]:
    """Apply SmoothQuant in place to every foldable LayerNorm → Linear group.

    ``batches`` are calibration inputs (positional tensor tuples); the first
    one doubles as the tracing example unless ``example`` is given. Returns
    ``{"groups": [...], "refused": [...], "scales": {norm: tensor}}``.
    """
    batches = list(batches)
    if not batches:
        raise EdgevlaError("SmoothQuant needs at least one calibration batch")
    if not 0.0 <= alpha <= 1.0:
        raise EdgevlaError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    groups, refused = find_smooth_groups(model, example if example is not None else batches[0])
    if not groups:
        return {"groups": [], "refused": refused, "scales": {}}
    first_linears = [g.linears[0] for g in groups]
    observers = observe_layer_inputs(model, batches, first_linears)
    modules = dict(model.named_modules())
    scales: dict[str, torch.Tensor] = {}
    for g in groups:
        act = observers[g.linears[0]].channel_amax
        s = smoothing_scales(act, [modules[n].weight for n in g.linears], alpha)
        fold_smoothing(model, g, s)
        scales[g.norm] = s
    return {"groups": groups, "refused": refused, "scales": scales}


def trace_program(model: nn.Module, example: tuple[torch.Tensor, ...], purpose: str) -> torch.export.ExportedProgram:
    """``model`` traced by ``torch.export`` in eval mode (its mode restored); a failure is one line naming ``purpose``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, tuple(example), strict=False)
    except Exception as e:  # torch.export raises many types; the user needs one line
        raise EdgevlaError(f"{purpose} could not trace {type(model).__name__}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        model.train(was_training)


def module_calls(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module], ops: tuple[str, ...],
                 accepts) -> dict[str, list[torch.fx.Node]]:
    """``{module name: [its calls]}``: the calls of the aten ops ``ops`` (any overload: ``aten.conv2d``) in
    ``program`` made inside a module that ``accepts`` takes, in graph order."""
    found: dict[str, list[torch.fx.Node]] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and _op_name(node) in ops:
            owner = _owner(node)
            if owner in modules and accepts(modules[owner]):
                found.setdefault(owner, []).append(node)
    return found


def _op_name(node: torch.fx.Node) -> str:
    """``aten.linear`` for a call of ``aten.linear.default``: the op without its overload."""
    return ".".join(str(node.target).split(".")[:2])


def _owner(node: torch.fx.Node) -> str:
    """Qualified name of the innermost module a traced node came from ('' for the root)."""
    stack: Mapping[str, tuple[str, type]] | None = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _normalize_path(path)


def _normalize_path(path: str) -> str:
    # torch.export writes ModuleList members as "blocks.0" or "blocks[0]" / "L['self'].blocks[0]" by version.
    path = path.replace("L['self'].", "").replace("L__self__.", "")
    out = []
    for part in path.replace("]", "").split("."):
        out.extend(p for p in part.split("[") if p)
    return ".".join(out)
