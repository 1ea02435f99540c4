"""How a structurally pruned model differs from the architecture it was built as.

Structured pruning changes more than tensors: a Linear's ``out_features``, a
LayerNorm's ``normalized_shape``, an attention module's head count, a block
replaced by the identity. A checkpoint of tensors alone therefore cannot be
loaded back into a freshly constructed model. :func:`architecture_delta`
records the difference as plain JSON (module paths, changed attributes,
removed modules, and the few non-persistent buffers a width cut sliced), and
:func:`rebuild` replays it on a fresh model before the tensors are loaded:

    fresh = MyPolicy(config)                       # the unpruned architecture
    delta = architecture_delta(pruned, fresh)      # saved beside the weights
    ...
    model = rebuild(MyPolicy(config), delta, state_dict)   # the pruned one, exactly

Nothing here knows our zoo: it compares module attributes, so any policy
built from standard modules (or its own, with plain int/float/tuple
attributes) round-trips.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import EdgevlaError

DELTA_VERSION = 1
# A sliced non-persistent buffer (positions, coordinate grids) is stored in the
# delta itself; larger ones would not belong in a JSON manifest.
MAX_INLINE_BUFFER = 1 << 16
_PLAIN = (bool, int, float, str)


class SkippedBlock(nn.Identity):
    """A block structured pruning removed: it returns its first input, whatever else its caller passes.

    (``nn.TransformerEncoderLayer`` is called with masks as keywords, which ``nn.Identity`` refuses.)
    ``outputs``: the block returned a tuple of that many, the stream first and the rest None (a Hugging
    Face decoder layer before transformers 4.48: ``(hidden_states,)``); the skip returns the same.
    """

    def __init__(self, outputs: int = 0):
        super().__init__()
        self.outputs = outputs

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return (x,) + (None,) * (self.outputs - 1) if self.outputs else x


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """The module's own configuration: public attributes of plain (JSON) types."""
    out = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)):
            out[name] = value
    return out


def _non_persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in module._buffers.items()
            if b is not None and n in module._non_persistent_buffers_set}


def architecture_delta(pruned: nn.Module, fresh: nn.Module) -> dict[str, Any]:
    """What must change in ``fresh`` (unpruned, same constructor) to hold ``pruned``'s tensors.

    Returns ``{"version", "removed": [paths replaced by nn.Identity], "removed_outputs": {path: the
    tuple size a skipped block returns, where it returns one}, "attributes": {path: {name: value}},
    "buffers": {path.name: {"shape", "values"}}}``; all lists and plain values, ready for JSON.
    """
    pruned_modules = dict(pruned.named_modules())
    removed: list[str] = []
    removed_outputs: dict[str, int] = {}
    attributes: dict[str, dict[str, Any]] = {}
    buffers: dict[str, dict[str, Any]] = {}
    for path, original in fresh.named_modules():
        if any(path.startswith(r + ".") for r in removed):
            continue
        now = pruned_modules.get(path)
        if now is None:
            raise EdgevlaError(f"the pruned model has no module {path!r} that its architecture has: "
                               "only identity replacements can be recorded")
        if isinstance(now, nn.Identity) and not isinstance(original, nn.Identity):
            removed.append(path)
            if getattr(now, "outputs", 0):
                removed_outputs[path] = now.outputs
            continue
        if type(now) is not type(original):
            raise EdgevlaError(f"module {path!r} changed type ({type(original).__name__} -> "
                               f"{type(now).__name__}): not a change structured pruning makes")
        before, after = _plain_attributes(original), _plain_attributes(now)
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in after.items() if before.get(k) != v}
        if changed:
            attributes[path] = changed
        fresh_buffers = _non_persistent_buffers(original)
        for name, buf in _non_persistent_buffers(now).items():
            if name in fresh_buffers and fresh_buffers[name].shape == buf.shape:
                continue
            if buf.numel() > MAX_INLINE_BUFFER:
                raise EdgevlaError(f"buffer {path}.{name} ({buf.numel():,} values) changed shape and is not saved "
                                   "with the weights; too large to record in the manifest")
            buffers[f"{path}.{name}" if path else name] = {"shape": list(buf.shape), "dtype": str(buf.dtype),
                                                           "values": buf.detach().cpu().flatten().tolist()}
    return {"version": DELTA_VERSION, "removed": removed, "removed_outputs": removed_outputs,
            "attributes": attributes, "buffers": buffers}


def is_identity(delta: Mapping[str, Any] | None) -> bool:
    return not delta or not (delta.get("removed") or delta.get("attributes") or delta.get("buffers"))


def rebuild(fresh: nn.Module, delta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Apply ``delta`` to ``fresh`` in place, resize its tensors to ``state_dict`` and load it (strict)."""
    if delta.get("version") != DELTA_VERSION:
        raise EdgevlaError(f"architecture delta version {delta.get('version')!r} is not {DELTA_VERSION}")
    for path in delta.get("removed", []):
        owner, _, attr = path.rpartition(".")
        try:
            parent = fresh.get_submodule(owner)
            getattr(parent, attr)
        except AttributeError:
            raise EdgevlaError(f"the architecture has no module {path!r} to remove") from None
        setattr(parent, attr, SkippedBlock(int(delta.get("removed_outputs", {}).get(path, 0))))
    for path, changes in delta.get("attributes", {}).items():
        module = _submodule(fresh, path)
        for name, value in changes.items():
            if not hasattr(module, name):
                raise EdgevlaError(f"module {path!r} has no attribute {name!r} to set")
            setattr(module, name, tuple(value) if isinstance(value, list) else value)
    for key, entry in delta.get("buffers", {}).items():
        path, _, name = key.rpartition(".")
        module = _submodule(fresh, path)
        dtype = getattr(torch, entry["dtype"].removeprefix("torch."))
        module._buffers[name] = torch.tensor(entry["values"], dtype=dtype).reshape(entry["shape"])
    _resize_to(fresh, state_dict)
    try:
        fresh.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise EdgevlaError(f"the weights do not fit the rebuilt architecture: "
                           f"{' '.join(str(e).split())[:300]}") from None
    return fresh


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise EdgevlaError(f"the architecture has no module {path!r}") from None


def _resize_to(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Give every parameter and persistent buffer the shape its saved tensor has."""
    for key, tensor in state_dict.items():
        path, _, name = key.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue  # load_state_dict names the unexpected key
        if name in module._parameters and module._parameters[name] is not None:
            old = module._parameters[name]
            if old.shape != tensor.shape:
                module._parameters[name] = nn.Parameter(torch.empty(tensor.shape, dtype=old.dtype),
                                                        requires_grad=old.requires_grad)
        elif name in module._buffers and module._buffers[name] is not None:
            old = module._buffers[name]
            if old.shape != tensor.shape:
                module._buffers[name] = torch.empty(tensor.shape, dtype=old.dtype)
