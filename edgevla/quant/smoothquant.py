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
28.6 -> 29.8 dB output SQNR with them, 28.0 without SmoothQuant). An attention's output projection
(``o_proj``) takes them through the value projection's rows the same way: attention mixes tokens, never
channels, so its output channel ``(head h, j)`` is ``v``'s row ``(h's key/value group, j)`` carried through
the probabilities; query heads sharing a key/value head share its scales (:func:`_attention_values`). A
ReLU feed-forward (ACT's, DETR's) smooths its second layer's input through the first layer's rows the same
way, ReLU commuting with a positive scale (:func:`_homogeneous_values`).
Pairs are found on the ``torch.export`` graph of the
model; anything else (a LayerNorm whose output also feeds a residual, a
reshape or a non-linear op, a Linear called on two different inputs) is
refused and left untouched.
"""

from __future__ import annotations

import operator
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
# Ops that only move, repeat or pick elements: run on a tensor of channel numbers, they say where each channel goes.
_MOVES = ("aten.view", "aten.reshape", "aten._unsafe_view", "aten.transpose", "aten.permute", "aten.unsqueeze",
          "aten.squeeze", "aten.expand", "aten.flatten", "aten.unflatten", "aten.slice", "aten.select",
          "aten.unbind", "aten.split", "aten.split_with_sizes", "aten.chunk", "aten.t", "aten.movedim",
          "aten.repeat_interleave", "aten.narrow")
# Token mixers linear in their value operand (the index of that operand): no output channel reads another.
_MIXERS = {"aten.scaled_dot_product_attention": 2, "aten.matmul": 1, "aten.bmm": 1}


@dataclass(frozen=True)
class SmoothGroup:
    """One LayerNorm (or RMSNorm) and the Linears that read its output, all of them and nothing else; or the
    Linear producing a gated MLP's value (``up_proj``) and the one reading the product (``down_proj``).

    ``weight`` (and ``bias``) are the parameters divided by the scales: a norm's 1-D γ, which multiplies by
    ``offset + weight`` (Gemma's RMSNorm by ``1 + w``; 0 elsewhere), or the value Linear's rows.
    ``channels``, when set, names for each input channel of the readers the row of ``weight`` it carries (an
    attention's value rows reach ``o_proj`` moved between heads, perhaps each read by several query heads)."""

    norm: str
    linears: tuple[str, ...]
    weight: str = ""
    bias: str | None = None
    offset: float = 0.0
    channels: tuple[int, ...] | None = None


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
    channels: tuple[int, ...] | None = None


def find_smooth_groups(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[list[SmoothGroup], list[Refusal]]:
    """LayerNorm / RMSNorm → Linear groups where SmoothQuant's fold is exact, and the norms refused.

    A norm is ``nn.LayerNorm`` / ``nn.RMSNorm``, or one written out by hand (Hugging Face's
    ``LlamaRMSNorm``, ``T5LayerNorm``, Gemma's ``x * (1 + w)``): :func:`_spelled_norms`."""
    modules = dict(model.named_modules())
    program = trace_program(model, example, "SmoothQuant")
    linear_inputs = {owner: [call.args[0] for call in calls] for owner, calls in
                     module_calls(program, modules, (_LINEAR,), lambda m: isinstance(m, nn.Linear)).items()}
    candidates = (_module_norms(program, modules) | _spelled_norms(program, modules)
                  | _gated_values(program, modules, linear_inputs) | _attention_values(program, modules, linear_inputs)
                  | _homogeneous_values(program, modules, linear_inputs))

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
            groups.append(SmoothGroup(norm, tuple(dict.fromkeys(consumers)), found.weight, found.bias, found.offset,
                                      found.channels))
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


# Element-wise maps that commute with a positive per-channel scale, f(x / s) = f(x) / s: a ReLU MLP's hidden
# channels may be rescaled through the first layer's rows (inference-mode dropout is the identity).
_HOMOGENEOUS = ("aten.relu", "aten.relu_", "aten.leaky_relu", "aten.leaky_relu_", "aten.dropout")


def _homogeneous_values(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module],
                        linear_inputs: Mapping[str, list]) -> dict[str, _Candidate]:
    """``down(relu(up(x)))``, ACT's and DETR's feed-forward (LeakyReLU, inference dropout too): ``relu(y / s) =
    relu(y) / s`` for ``s > 0``, so dividing ``up``'s output row ``j`` (and its bias) by ``s_j`` divides the
    down projection's input channel ``j`` by ``s_j``, exactly. Keyed by ``up``, which must be called this once
    and read by nothing else. GELU and SiLU do not commute with scaling: their MLPs are left alone."""
    found = {}
    for call in program.graph.nodes:
        if (call.op != "call_function" or _op_name(call) != _LINEAR
                or not isinstance(modules.get(_owner(call)), nn.Linear)):
            continue
        node, mapped = _uncast(call.args[0]), call
        while isinstance(node, torch.fx.Node) and _op_name(node) in _HOMOGENEOUS and _uncast_users(node) == [mapped]:
            if _op_name(node) == "aten.dropout" and (len(node.args) < 3 or node.args[2] is not False):
                break  # a training-mode dropout is not the identity
            node, mapped = _uncast(node.args[0]), node
        owner = _owner(node) if isinstance(node, torch.fx.Node) else ""
        if (node is call.args[0] or _op_name(node) != _LINEAR or not isinstance(modules.get(owner), nn.Linear)
                or _uncast_users(node) != [mapped] or owner in found):
            continue
        up = modules[owner]
        reason = None if len(linear_inputs.get(owner, ())) == 1 else f"{owner} is called more than once"
        found[owner] = _Candidate([_uncast(call.args[0])], f"{owner}.weight",
                                  f"{owner}.bias" if up.bias is not None else None, 0.0, reason)
    return found


def _attention_values(program: torch.export.ExportedProgram, modules: Mapping[str, nn.Module],
                      linear_inputs: Mapping[str, list]) -> dict[str, _Candidate]:
    """Attention output projections, ``o(moves(mix(p, moves(v(x)))))``: ``mix`` (SDPA, or ``p @ v``) sums value
    rows over tokens with weights that do not read them, and the moves only move, repeat or pick elements (head
    views and transposes, ``repeat_kv``, the slices of a stacked qkv projection), so each input channel of ``o``
    is one output row of ``v``, scaled: dividing that row (and its bias) by ``s`` divides the channel by ``s``.
    Which row reaches which channel comes from running the moves on a tensor of row numbers. Keyed by the value
    Linear, which must be called this once and whose other readers (``q`` and ``k`` out of a stacked projection)
    must carry none of those rows."""
    found = {}
    for call in program.graph.nodes:
        if (call.op != "call_function" or _op_name(call) != _LINEAR
                or not isinstance(modules.get(_owner(call)), nn.Linear)):
            continue
        path = _value_path(call.args[0])
        owner = _owner(path[0]) if path else ""
        if not path or owner in found or not isinstance(modules.get(owner), nn.Linear):
            continue
        channels, reason = _carried_rows(path, modules[owner].out_features)
        if reason is None and len(linear_inputs.get(owner, ())) != 1:
            reason = f"{owner} is called more than once"
        value = modules[owner]
        found[owner] = _Candidate([path[-1]], f"{owner}.weight", f"{owner}.bias" if value.bias is not None else None,
                                  0.0, reason, channels)
    return found


def _value_path(output) -> list[torch.fx.Node] | None:
    """The nodes from a Linear's call to ``output``, casts left out, when ``output`` is that Linear's output moved,
    mixed over tokens as the value operand of one :data:`_MIXERS` op, and moved again; else None."""
    path, node, mixed = [], _uncast(output), False
    for _ in range(64):
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return None
        path.append(node)
        op = _op_name(node)
        if op == _LINEAR:
            return path[::-1] if mixed and len(path) > 1 else None
        if node.target is operator.getitem or op in _MOVES:
            node = _uncast(node.args[0])
        elif op in _MIXERS and not mixed and len(node.args) > _MIXERS[op]:
            value = _uncast(node.args[_MIXERS[op]])
            if any(_uncast(a) is value for i, a in enumerate(node.args) if i != _MIXERS[op]):
                return None  # the weights read the value too
            node, mixed = value, True
        else:
            return None
    return None


def _carried_rows(path: list[torch.fx.Node], rows: int) -> tuple[tuple[int, ...] | None, str | None]:
    """For each channel of ``path``'s last value, the row of the first (a Linear's output) that it carries, by
    running the path on row numbers; or the reason there is no such map. Each reader of a value on the path that
    is not the next step must be a move carrying none of those rows."""
    shape = _shape(path[0])
    if shape is None or shape[-1] != rows:
        return None, "its output's shape is unknown"
    value = torch.arange(rows).expand(shape).contiguous()
    values = [value]
    try:
        for node in path[1:]:
            value = _mixed(node, value) if _op_name(node) in _MIXERS else _moved(node, value)
            if value is None:
                return None, f"{node.target} mixes value channels"
            values.append(value)
    except (RuntimeError, TypeError, IndexError, ValueError) as e:
        return None, f"moving its channels failed: {type(e).__name__}"
    flat = value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)
    if not bool((flat == flat[:1]).all()):
        return None, "its rows reach the reader's channels differently at different tokens"
    carried = flat[0]
    for node, value, following in zip(path, values, path[1:] + [None]):
        for user in _uncast_users(node):
            if user is following or following is None:
                continue
            other = _moved(user, value) if user.target is operator.getitem or _op_name(user) in _MOVES else None
            pieces = other if isinstance(other, (tuple, list)) else (other,)
            if other is None or any(bool(torch.isin(p, carried).any()) for p in pieces):
                return None, f"its rows also reach {user.target}"
    return tuple(int(c) for c in carried), None


def _moved(node: torch.fx.Node, value):
    """``node`` (a move, or ``getitem`` of one's tuple) run on ``value`` in place of its data operand."""
    if node.target is operator.getitem:
        return value[node.args[1]]
    if _op_name(node) in ("aten.view", "aten._unsafe_view"):  # the row numbers' strides need not allow a view
        return value.reshape(node.args[1])
    return node.target(value, *node.args[1:], **node.kwargs)


def _mixed(node: torch.fx.Node, value: torch.Tensor) -> torch.Tensor | None:
    """The row numbers of a token mixer's output from those of its value operand (``(..., tokens, channels)``):
    each output token carries the value's channels; SDPA's ``enable_gqa`` repeats each key/value head over its
    query heads. None when the value's channels differ between its tokens, or dropout is on."""
    out = _shape(node)
    if out is None or value.ndim < 2 or not bool((value == value[..., :1, :]).all()):
        return None
    rows = value[..., 0, :]
    if _op_name(node) == "aten.scaled_dot_product_attention":
        dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
        if dropout:
            return None
        if rows.ndim >= 2 and len(out) >= 3 and out[-3] != rows.shape[-2]:
            rows = rows.repeat_interleave(out[-3] // rows.shape[-2], dim=-2)
    return torch.broadcast_to(rows.unsqueeze(-2), out)


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


def smoothing_scales(act_amax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float,
                     channels: tuple[int, ...] | None = None, rows: int = 0) -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1-α)`` per input channel; weights of a group share one ``s``. With
    ``channels`` (:class:`SmoothGroup`), one ``s`` per source row of ``rows``, from the maxima over the
    channels carrying it."""
    if not 0.0 <= alpha <= 1.0:
        raise EdgevlaError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    w_amax = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).float()
    if channels is not None:
        index = torch.tensor(channels)
        act_amax = torch.zeros(rows).scatter_reduce(0, index, act_amax.float(), "amax")
        w_amax = torch.zeros(rows).scatter_reduce(0, index, w_amax, "amax")
    a = act_amax.float().clamp(min=1e-5)
    w = w_amax.clamp(min=1e-5)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    # A channel that never fires (or an all-zero weight column) keeps scale 1.
    s = torch.where((act_amax > 0) & (w_amax > 0), s, torch.ones_like(s))
    return s.clamp(min=1e-5, max=1e5)


@torch.no_grad()
def fold_smoothing(model: nn.Module, group: SmoothGroup, scales: torch.Tensor) -> None:
    """Divide the norm's γ (its ``offset + γ``) and β, or the value Linear's rows and bias, by ``scales`` and
    multiply each reading Linear's input columns by them (by the scale of the row each carries)."""
    modules = dict(model.named_modules())
    weight = model.get_parameter(group.weight or f"{group.norm}.weight")
    s = scales.to(weight.dtype)
    if weight.ndim == 2:  # a gated MLP's value Linear: its output rows
        weight.div_(s[:, None])
    else:
        weight.copy_((group.offset + weight) / s - group.offset)
    if group.bias is not None:
        model.get_parameter(group.bias).div_(s)
    columns = s if group.channels is None else s[list(group.channels)]
    for name in group.linears:
        modules[name].weight.mul_(columns.to(modules[name].weight.dtype)[None, :])


def smooth_quant(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], alpha: float = 0.5,
                 example: tuple[torch.Tensor, ...] | None = None,
                 reuse: dict[str, object] | None = None) -> dict[str, object]:
    """Apply SmoothQuant in place to every foldable LayerNorm → Linear group.

    ``batches`` are calibration inputs (positional tensor tuples); the first
    one doubles as the tracing example unless ``example`` is given. Returns
    ``{"groups": [...], "refused": [...], "scales": {norm: tensor}}``.

    The groups and the activation ranges they are smoothed by do not depend on ``alpha``: with ``reuse`` (an
    empty dict at first) they are kept there and read back by later calls on copies of the same model with the
    same batches, as an ``alpha`` search makes them.
    """
    batches = list(batches)
    if not batches:
        raise EdgevlaError("SmoothQuant needs at least one calibration batch")
    if not 0.0 <= alpha <= 1.0:
        raise EdgevlaError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    if reuse is not None and "groups" in reuse:
        groups, refused, ranges = reuse["groups"], reuse["refused"], reuse["ranges"]
    else:
        groups, refused = find_smooth_groups(model, example if example is not None else batches[0])
        observers = observe_layer_inputs(model, batches, [g.linears[0] for g in groups]) if groups else {}
        ranges = {g.norm: observers[g.linears[0]].channel_amax for g in groups}
        if reuse is not None:
            reuse.update(groups=groups, refused=refused, ranges=ranges)
    modules = dict(model.named_modules())
    scales: dict[str, torch.Tensor] = {}
    for g in groups:
        s = smoothing_scales(ranges[g.norm], [modules[n].weight for n in g.linears], alpha, g.channels,
                             model.get_parameter(g.weight).shape[0] if g.channels is not None else 0)
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
