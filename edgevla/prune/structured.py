"""Structured pruning that physically shrinks a model.

Four structures, all found by analysis of the traced model (never by module
names): ``"neurons"`` (MLP hidden units), ``"heads"`` (attention heads, with
the module's head-count attributes updated), ``"width"`` (a residual or
embedding width across every block, norm and positional table that shares
it), and ``"blocks"`` (residual blocks replaced by the identity).

Every group loses the same fraction of its units, or each its own (an
``amount`` mapping group names to fractions); the kept count is rounded up so
the kept channels are a multiple of ``round_to`` (8 or 16 on tensor cores).
The lowest-scoring units go, scored by :class:`GroupImportance` of the chosen
criterion (or :class:`BlockInfluence` for blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import EdgevlaError
from ..spec import spec_of
from .architecture import SkippedBlock
from .graph import Coupling, DependencyGraph, Group
from .importance import Batches, BlockInfluence, GroupImportance

STRUCTURES = ("neurons", "heads", "width", "blocks")


@dataclass
class PrunedGroup:
    name: str
    kind: str
    units_before: int
    units_after: int
    removed_units: tuple[int, ...]


@dataclass
class StructuredResult:
    """What a structured pruning pass did, and what the analysis predicted it would."""

    structure: str
    params_before: int
    params_after: int
    predicted_removed: int
    groups: list[PrunedGroup] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.params_before - self.params_after


def kept_units(units: int, amount: float, unit_width: int = 1, round_to: int = 1) -> int:
    """Units to keep when removing ``amount`` of ``units``, rounded up to whole multiples.

    The kept channel count ``kept * unit_width`` is rounded up to a multiple
    of ``round_to`` where the group is large enough; at least one unit stays.
    """
    if not isinstance(round_to, int) or round_to < 1:
        raise EdgevlaError(f"round_to must be a positive integer, got {round_to!r}")
    keep = max(1, units - int(math.floor(amount * units + 1e-9)))
    while keep < units and (keep * unit_width) % round_to:
        keep += 1
    return keep


#: The fraction of units a structured pass removes: one for every group, or one per group name (a group the
#: mapping does not name keeps all its units).
Amount = float | Mapping[str, float]


def check_amount(amount: Amount) -> None:
    fractions = amount.values() if isinstance(amount, Mapping) else (amount,)
    for fraction in fractions:
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
            raise EdgevlaError(f"the pruned fraction must be in [0, 1), got {fraction!r}")


def fraction_of(amount: Amount, group: Group) -> float:
    return amount.get(group.name, 0.0) if isinstance(amount, Mapping) else float(amount)


def _example_inputs(model: nn.Module, example_inputs) -> tuple[torch.Tensor, ...]:
    if example_inputs is not None:
        return tuple(example_inputs)
    return tuple(torch.from_numpy(a) for a in spec_of(model).example(batch=2, seed=0).values())


def _in_scope(name: str, scope: str | None) -> bool:
    return scope is None or name == scope or name.startswith(scope + ".") or name.startswith(scope + ":")


def _check_runs(model: nn.Module, inputs, before: torch.Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            after = model(*inputs)
    except Exception as e:  # noqa: BLE001 - report the model's failure on one line
        raise EdgevlaError(f"the pruned model no longer runs ({type(e).__name__}: {str(e).splitlines()[0]}); its "
                           "forward may hard-code a pruned size") from None
    finally:
        model.train(was_training)
    if after.shape != before.shape:
        raise EdgevlaError(f"pruning changed the output shape from {tuple(before.shape)} to {tuple(after.shape)}")


def groups_of(graph: DependencyGraph, structure: str, scope: str | None = None) -> list[Group]:
    """The prunable groups of one structure, optionally only those whose name starts with ``scope``."""
    finders = {"neurons": graph.hidden_groups, "heads": graph.head_groups, "width": graph.width_groups}
    if structure not in finders:
        raise EdgevlaError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    return [g for g in finders[structure]() if _in_scope(g.name, scope)]


def no_groups(graph: DependencyGraph, structure: str, scope: str | None) -> EdgevlaError:
    """The error of a structure with no group under ``scope``, naming those outside it."""
    where = f" under {scope!r}" if scope else ""
    outside = [g.name for g in groups_of(graph, structure)] if scope else []
    hint = (f" ({len(outside)} outside it, the first {outside[0]!r}: --set prune.scope=null lets them be pruned"
            + ("; the residual width runs through the whole policy)" if structure == "width" else ")")
            if outside else "")
    return EdgevlaError(f"{type(graph.model).__name__} has no prunable {structure} groups{where}{hint}")


def plan(graph: DependencyGraph, structure: str, amount: Amount, importance=None, round_to: int = 1,
         scope: str | None = None) -> tuple[list[Coupling], list[PrunedGroup], int]:
    """Choose the units to remove from every group: (couplings, per-group summary, predicted parameters)."""
    check_amount(amount)
    scorer = importance if isinstance(importance, GroupImportance) else GroupImportance(importance)
    groups = groups_of(graph, structure, scope)
    if not groups:
        raise no_groups(graph, structure, scope)
    couplings: list[Coupling] = []
    summary: list[PrunedGroup] = []
    for group in groups:
        keep = kept_units(group.units, fraction_of(amount, group), group.unit_width, round_to)
        if keep == group.units:
            continue
        scores = scorer(group)
        drop = tuple(sorted(int(i) for i in torch.argsort(scores, stable=True)[: group.units - keep]))
        couplings.extend(group.couplings(drop))
        summary.append(PrunedGroup(group.name, group.kind, group.units, keep, drop))
    merged: dict[tuple[str, int], set[int]] = {}
    for c in couplings:
        merged.setdefault((c.tensor, c.dim), set()).update(c.indices)
    couplings = [Coupling(t, d, tuple(sorted(i))) for (t, d), i in sorted(merged.items())]
    return couplings, summary, graph.removed_parameters(couplings)


def prune_structured(model: nn.Module, structure: str, amount: Amount, importance=None, *, round_to: int = 1,
                     scope: str | None = None, example_inputs=None,
                     calibration: Batches | None = None) -> StructuredResult:
    """Remove ``amount`` of the units of every ``structure`` group (or each group its own) in place; returns what
    changed.

    ``importance`` is an element criterion (Magnitude, Taylor, Wanda) or a
    :class:`GroupImportance`; blocks are scored by :class:`BlockInfluence`
    on ``calibration`` (or on the spec's example inputs). ``scope`` limits
    pruning to groups under a module name (``"trunk"``).
    """
    inputs = _example_inputs(model, example_inputs)
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        was_training = model.training
        model.eval()
        reference = model(*inputs)
        model.train(was_training)
    if structure == "blocks":
        if isinstance(amount, Mapping):
            raise EdgevlaError("blocks are pruned by one fraction of all of them, not per group")
        couplings_result = _prune_blocks(model, amount, scope, inputs, calibration)
        summary, predicted = couplings_result
    else:
        graph = DependencyGraph(model, inputs)
        couplings, summary, predicted = plan(graph, structure, amount, importance, round_to, scope)
        if couplings:
            graph.apply(couplings)
    _check_runs(model, inputs, reference)
    return StructuredResult(structure, params_before, sum(p.numel() for p in model.parameters()), predicted, summary)


def residual_blocks(model: nn.Module, example_inputs=None) -> list[str]:
    """Modules that can be replaced by the identity (:func:`_residual_block_outputs`, in graph order)."""
    return list(_residual_block_outputs(model, example_inputs))


def _residual_block_outputs(model: nn.Module, example_inputs=None) -> dict[str, int]:
    """Modules that can be replaced by the identity, and how each returns its stream (:func:`stream_outputs`):
    a tensor in and one of the same shape out, with a skip connection inside (that input is added to
    something they compute). Other inputs they only read (a Hugging Face decoder layer's mask and rotary
    tables) are allowed: a forward on the example checks that the stream is the first argument and what is
    returned, alone or first in a tuple of otherwise None (what :class:`~.architecture.SkippedBlock` hands
    back).

    Found on the fx graph, so pre-norm, post-norm and any user block qualify.
    """
    inputs = _example_inputs(model, example_inputs)
    graph = DependencyGraph(model, inputs)
    gm = graph.gm
    members: dict[str, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        for path in (node.meta.get("nn_module_stack") or {}).values():
            members.setdefault(path[0], set()).add(node)
    found, shapes = [], {}
    for path, nodes in members.items():
        if not path or not any(True for _ in model.get_submodule(path).parameters()):
            continue
        ins = {a for n in nodes for a in n.all_input_nodes if a not in nodes and "tensor_meta" in a.meta}
        outs = [n for n in nodes if any(u not in nodes for u in n.users)]
        if len(outs) != 1 or not hasattr(outs[0].meta.get("tensor_meta"), "shape"):
            continue
        y = outs[0]
        shape = tuple(y.meta["tensor_meta"].shape)
        streams = [a for a in ins if tuple(getattr(a.meta["tensor_meta"], "shape", ())) == shape]
        if len(streams) != 1:
            continue
        (x,) = streams
        if any(n.op == "call_function" and getattr(n.target, "__name__", "") in ("add", "iadd") and x in n.args
               for n in nodes):
            found.append(path)
            shapes[path] = shape
    passing = stream_outputs(model, inputs, shapes) if shapes else {}
    found = [p for p in found if p in passing]
    # Keep the innermost: a module holding a block is not itself the unit to drop.
    return {p: passing[p] for p in found if not any(q != p and q.startswith(p + ".") for q in found)}


def stream_outputs(model: nn.Module, inputs, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The modules of ``shapes`` that, in a forward on ``inputs``, take a tensor of their shape as the first
    positional argument and give it back transformed, every time they are called: what a skipped block
    (returning its first argument) stands in for. By module, how it gives it: 0 as the one tensor returned,
    ``n`` as the first of a tuple of ``n`` whose others are None (a Hugging Face decoder layer before
    transformers 4.48 returns ``(hidden_states,)``)."""
    seen: dict[str, int | None] = {}

    def is_stream(path: str, value) -> bool:
        return isinstance(value, torch.Tensor) and tuple(value.shape) == shapes[path]

    def check(path: str):
        def hook(_module, args, output):
            if isinstance(output, tuple) and output and all(o is None for o in output[1:]):
                form, output = len(output), output[0]
            else:
                form = 0
            ok = bool(args) and is_stream(path, args[0]) and is_stream(path, output)
            seen[path] = form if ok and seen.get(path, form) == form else None
        return hook

    _run_hooked(model, inputs, {p: check(p) for p in shapes})
    return {p: form for p, form in seen.items() if form is not None}


def _run_hooked(model: nn.Module, inputs, hooks: dict[str, Callable]) -> None:
    """One forward on ``inputs``, in eval mode without gradients, with a forward hook on each named module."""
    handles = [model.get_submodule(p).register_forward_hook(h) for p, h in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _prune_blocks(model: nn.Module, amount: float, scope: str | None, inputs, calibration):
    if not 0.0 <= amount < 1.0:
        raise EdgevlaError(f"the pruned fraction must be in [0, 1), got {amount!r}")
    forms = _residual_block_outputs(model, inputs)
    blocks = [b for b in forms if _in_scope(b, scope)]
    if not blocks:
        raise EdgevlaError(f"no residual blocks{' under ' + scope if scope else ''} to prune")
    n_drop = min(len(blocks) - 1, int(math.floor(amount * len(blocks) + 1e-9)))
    if n_drop == 0:
        return [], 0
    scores = BlockInfluence(model, calibration or [(inputs, None)])(blocks)
    drop = sorted(int(i) for i in torch.argsort(scores, stable=True)[:n_drop])
    predicted = 0
    for i in drop:
        owner, _, attr = blocks[i].rpartition(".")
        parent = model.get_submodule(owner)
        predicted += sum(p.numel() for p in parent.get_submodule(attr).parameters())
        setattr(parent, attr, SkippedBlock(forms[blocks[i]]))
    return [PrunedGroup(blocks[i], "block", 1, 0, (0,)) for i in drop], predicted
