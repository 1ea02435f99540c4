"""SmoothQuant: move activation outliers into the weights before W8A8.

A ``Linear`` computes ``X W^T``. Dividing input channel ``j`` of ``X`` by
``s_j`` and multiplying column ``j`` of ``W`` by ``s_j`` leaves the product
unchanged but flattens the activation's per-channel range, which per-tensor
int8 handles badly, at the cost of a wider weight range, which per-channel
int8 handles well. Following Xiao et al. (2023)::

    s_j = max|X_j|^α / max|W_{:,j}|^(1-α)

The division of ``X`` must cost nothing at run time, so it is folded into the
``LayerNorm`` that produces ``X`` (``γ/s``, ``β/s``), or the ``RMSNorm`` of a
Llama-style trunk (``γ/s``: RMSNorm's ``x / rms(x)`` is unchanged). That fold is exact only
when every consumer of the LayerNorm's output is a ``Linear`` receiving it
directly — q, k and v sharing one pre-norm get one shared ``s`` and all three
weights are scaled. Pairs are found on the ``torch.export`` graph of the
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


@dataclass(frozen=True)
class SmoothGroup:
    """One LayerNorm (or RMSNorm) and the Linears that read its output, all of them and nothing else."""

    norm: str
    linears: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """A LayerNorm that could not be folded, and why."""

    norm: str
    reason: str


def find_smooth_groups(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[list[SmoothGroup], list[Refusal]]:
    """LayerNorm / RMSNorm → Linear groups where SmoothQuant's fold is exact, and the norms refused."""
    modules = dict(model.named_modules())
    program = trace_program(model, example, "SmoothQuant")

    norm_calls = module_calls(program, modules, _NORMS, lambda m: isinstance(m, (nn.LayerNorm, nn.RMSNorm)))
    linear_inputs = {owner: [call.args[0] for call in calls] for owner, calls in
                     module_calls(program, modules, (_LINEAR,), lambda m: isinstance(m, nn.Linear)).items()}

    groups, refused = [], []
    for norm, calls in norm_calls.items():
        ln = modules[norm]
        if ln.weight is None:
            refused.append(Refusal(norm, f"{type(ln).__name__} has no affine weight to fold the scales into"))
            continue
        consumers: list[str] = []
        reason = None
        for call in calls:
            for user in call.users:
                owner = _owner(user)
                if _op_name(user) != _LINEAR or not isinstance(modules.get(owner), nn.Linear):
                    reason = f"its output also feeds {user.target} in {owner or 'the top-level forward'}"
                    break
                if user.args[0] is not call:
                    reason = f"it reaches {owner} other than as the input"
                    break
                consumers.append(owner)
            if reason:
                break
        if reason is None:
            for lin in set(consumers):
                if any(inp not in calls for inp in linear_inputs[lin]):
                    reason = f"{lin} is also called on another input"
                    break
        if reason is None and not consumers:
            reason = "its output is unused"
        if reason:
            refused.append(Refusal(norm, reason))
        else:
            groups.append(SmoothGroup(norm, tuple(dict.fromkeys(consumers))))
    return groups, refused


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
    """Divide the norm's γ (and a LayerNorm's β) by ``scales`` and multiply each Linear's input columns by them."""
    modules = dict(model.named_modules())
    ln = modules[group.norm]
    s = scales.to(ln.weight.dtype)
    ln.weight.div_(s)
    if getattr(ln, "bias", None) is not None:
        ln.bias.div_(s)
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
