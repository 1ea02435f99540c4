"""Which tensor dimensions must shrink together: a dependency graph of channels.

Removing output channel ``c`` of a ``Linear`` is only correct if every tensor
that meets that channel loses it too: the next layer's input column, a
residual stream's LayerNorms and the other branches added onto it, a
positional parameter broadcast over it, the rows of a FiLM layer whose output
is chunked onto it, every head's slice of q, k, v and of the output
projection. Rules written per model family miss the user's own layout, so
the coupling is *derived*: the model is traced with ``torch.fx``, shapes are
propagated with example inputs, and every dimension of every tensor in the
graph becomes a slot in a union-find. Ops that carry a dimension through
(element-wise ops with broadcasting, LayerNorm, matmul's contraction,
transpose, cat's other axes) unify slots; ops that cut a dimension into pieces
record a relation:

* **concat** — a slot is a parent made of children at offsets (``cat`` along
  it, ``chunk``/``split`` of it, a slice of a parameter);
* **product** — a slot of size ``a*b`` is an outer slot ``a`` times an inner
  slot ``b`` (``view`` into heads and back, any reshape that splits or merges).

Asking to remove indices of one slot class propagates them through the
relations to a fixed point; the classes and the parameters and buffers that
own a dimension in them form a :class:`Group`. Dimensions the analysis does
not understand (an unknown op, the model's inputs and outputs, a softmax or a
mean over the dimension, unless it is a written-out norm's statistic of the
very channels it rescales) are *blocked*: a group that reaches one is refused,
so what cannot be proven safe is never pruned.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import EdgevlaError
from ..spec import spec_of

# Ops that apply element-wise (with broadcasting) to their tensor arguments.
_ELEMENTWISE = {
    "add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "neg", "pow", "sqrt", "rsqrt",
    "exp", "log", "abs", "gelu", "relu", "silu", "sigmoid", "tanh", "erf", "dropout", "contiguous", "clone",
    "float", "to", "type_as", "clamp", "clip", "square", "reciprocal", "leaky_relu", "elu", "softplus",
    "mish", "hardswish", "detach", "cos", "sin",
}
_NORMS = (nn.LayerNorm, nn.RMSNorm)  # normalized over the last dimension(s): their weights ride along
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d)
_ELEMENTWISE_MODULES = (nn.GELU, nn.ReLU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity, nn.LeakyReLU,
                        nn.ELU, nn.Softplus, nn.Mish, nn.Hardswish)
_AUGMENTED_ASSIGNMENTS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                          operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor}
_RESHAPES = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "unflatten"}
# Tensor factories: sized by their arguments, or shaped like a tensor.
_SIZED_FACTORIES = {"zeros", "ones", "empty", "full", "rand", "randn"}
_FACTORIES_LIKE = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp", "norm"}
# What a norm does to its statistic before applying it (+ ε, a root, a cast), and the casts of its input.
_STATISTIC_CASTS = {"to", "float", "type_as", "contiguous", "clone", "detach", "double", "half", "bfloat16"}
_STATISTIC_MAPS = {"add", "rsqrt", "sqrt", "reciprocal", "clamp", "clamp_min"} | _STATISTIC_CASTS
# Integer attributes that name a head count or a head width, updated when heads shrink.
_HEAD_COUNT_NAMES = ("n_heads", "num_heads", "heads", "n_head", "num_attention_heads", "nhead",
                     "num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
_HEAD_DIM_NAMES = ("head_dim", "head_size", "d_head", "dim_head")
_WIDTH_NAMES = ("embed_dim", "inner_dim", "all_head_size", "d_inner", "hidden_size")


@dataclass
class _Product:
    parent: int
    outer: int
    inner: int
    module: str  # the module whose forward does the reshape (its head-count attributes follow)


@dataclass
class Coupling:
    """One dimension of one parameter or buffer that a group removes indices from."""

    tensor: str  # qualified name, as in model.named_parameters() / named_buffers()
    dim: int
    indices: tuple[int, ...]


@dataclass
class Group:
    """A set of coupled channels, pruned in units (a neuron, a channel, a head).

    ``units`` is how many units the root slot class has; ``unit_width`` how
    many channels of the narrowest coupled tensor one unit is (1 for a
    neuron, ``head_dim`` for a head), which is what ``round_to`` rounds.
    """

    graph: "DependencyGraph"
    root: int
    kind: str
    name: str
    units: int
    unit_width: int
    _unit_cache: dict[int, list[Coupling]] = field(default_factory=dict, repr=False)

    def couplings(self, units) -> list[Coupling]:
        """Every tensor dimension that loses indices when ``units`` are removed."""
        units = sorted({int(u) for u in units})
        if any(u < 0 or u >= self.units for u in units):
            raise EdgevlaError(f"group {self.name}: unit index out of range 0..{self.units - 1}")
        return self.graph.couplings({self.root: set(units)})

    def unit_couplings(self, unit: int) -> list[Coupling]:
        if unit not in self._unit_cache:
            self._unit_cache[unit] = self.couplings([unit])
        return self._unit_cache[unit]

    def removed_parameters(self, units) -> int:
        """Parameters (not buffers) that removing ``units`` takes out of the model."""
        return self.graph.removed_parameters(self.couplings(units))

    def __repr__(self) -> str:
        return f"Group({self.kind} {self.name}: {self.units} units x {self.unit_width})"


class DependencyGraph:
    """The channel dependencies of one model, traced once with example inputs.

    The graph describes the model as it is: after pruning, build a new one.
    """

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None = None):
        if any(hasattr(m, "parametrizations") for m in model.modules()):
            raise EdgevlaError("the model has masks (parametrizations): call remove_masks() before structured pruning")
        self.model = model
        if example_inputs is None:
            spec = spec_of(model)
            example_inputs = tuple(torch.from_numpy(a) for a in spec.example(batch=2, seed=0).values())
        try:
            self.gm = _trace(model, example_inputs)
        except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear line
            raise EdgevlaError(f"cannot trace {type(model).__name__} with torch.fx for dependency analysis: "
                               f"{type(e).__name__}: {e}") from None
        # What no output depends on constrains nothing: attention weights a caller drops, say
        # (nn.MultiheadAttention returns them averaged over heads unless need_weights=False).
        if self.gm.graph.eliminate_dead_code(is_impure_node=_keep_in_dead_code):
            self.gm.recompile()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(*example_inputs)
        finally:
            model.train(was_training)
        self._parent: list[int] = []
        self.size: list[int] = []
        self._blocked: set[int] = set()
        self.blocked_reason: dict[int, str] = {}
        self._concats: list[tuple[int, int, int]] = []  # (parent, child, offset)
        self._products: list[_Product] = []
        self._members: list[tuple[int, str, int]] = []  # (slot, tensor name, dim)
        self.linear_in: dict[str, int] = {}
        self.linear_out: dict[str, int] = {}
        self.conv_in: dict[str, int] = {}  # a convolution's input channels (groups == 1), as linear_in
        self.conv_out: dict[str, int] = {}
        self._channelwise: set[str] = set()  # per-channel tensors between layers: BatchNorm's, depthwise filters
        self._normalized: list[int] = []  # slots a norm (a module, or written out) takes its statistic over
        self._group_norms: list[tuple[int, int]] = []  # (channel slot, its groups' slot) of each GroupNorm
        self._dims: dict[fx.Node, object] = {}
        self._tensors = dict(model.named_parameters())
        self._tensors.update(dict(model.named_buffers()))
        self._relation_index = None
        self._blocked_roots: set[int] | None = None
        self._groups: dict[tuple[int, str, str], Group] = {}  # one object per group, its unit couplings cached
        self._build()
        self._relations()  # the union-find is final: index relations and blocked classes once

    # ---- union-find -------------------------------------------------------------------------
    def _new(self, size: int) -> int:
        self._parent.append(len(self._parent))
        self.size.append(int(size))
        return len(self._parent) - 1

    def find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def _unify(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # a shape mismatch means we misread an op: refuse both
            self._block(ra, "dimension sizes disagree")
            self._block(rb, "dimension sizes disagree")
            return
        self._parent[rb] = ra

    def _block(self, s: int, reason: str) -> None:
        self._blocked.add(s)
        self.blocked_reason.setdefault(s, reason)

    def blocked(self, s: int) -> bool:
        if self._blocked_roots is not None:
            return self.find(s) in self._blocked_roots
        r = self.find(s)
        return any(self.find(b) == r for b in self._blocked)

    def _compose(self, slots: list[int]) -> int:
        """One slot standing for the row-major product of ``slots`` (nested outer x inner)."""
        if len(slots) == 1:
            return slots[0]
        inner = self._compose(slots[1:])
        parent = self._new(self.size[slots[0]] * self.size[inner])
        self._products.append(_Product(parent, slots[0], inner, self._current_module))
        return parent

    # ---- tracing ----------------------------------------------------------------------------
    def _fresh(self, shape) -> list[int]:
        return [self._new(d) for d in shape]

    def _slots(self, node) -> list[int] | None:
        d = self._dims.get(node) if isinstance(node, fx.Node) else None
        return d if isinstance(d, list) else None

    def _build(self) -> None:
        for node in self.gm.graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            self._current_module = next(reversed(stack.values()))[0] if stack else ""
            meta = node.meta.get("tensor_meta")
            if node.op == "output":
                for leaf in _flatten(node.args):
                    for s in self._slots(leaf) or []:
                        self._block(s, "a model output")
                continue
            if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):  # TensorMetadata is a tuple too
                self._dims[node] = ("tuple", [tuple(m.shape) if hasattr(m, "shape") else None for m in meta])
                self._visit_tuple(node)
                continue
            if not hasattr(meta, "shape"):
                continue
            out = self._fresh(tuple(meta.shape))
            self._dims[node] = out
            if node.op == "placeholder":
                for s in out:
                    self._block(s, "a model input")
            elif node.op == "get_attr":
                for d, s in enumerate(out):
                    self._member(s, node.target, d)
            else:
                try:
                    ok = self._visit(node, out)
                except (IndexError, TypeError, ValueError, KeyError):
                    ok = False
                if not ok:
                    self._block_all(node, out)

    def _member(self, slot: int, tensor: str, dim: int) -> None:
        if tensor in self._tensors:
            self._members.append((slot, tensor, dim))
        else:
            self._block(slot, f"{tensor} is not a parameter or buffer")

    def _block_all(self, node: fx.Node, out: list[int]) -> None:
        reason = f"op {_op_name(node, self.gm)} is not understood"
        for s in out:
            self._block(s, reason)
        for a in _flatten((node.args, node.kwargs)):
            for s in self._slots(a) or []:
                self._block(s, reason)
            if isinstance(a, fx.Node) and isinstance(self._dims.get(a), tuple):  # a chunk/split/unbind result
                for piece in self._dims[a][2]:
                    for s in piece:
                        self._block(s, reason)

    def _unify_broadcast(self, out: list[int], out_shape, arg) -> None:
        slots = self._slots(arg)
        if slots is None:
            return
        shape = _shape(arg)
        for k in range(1, len(slots) + 1):
            if k <= len(out) and shape[-k] == out_shape[-k] and shape[-k] != 1:
                self._unify(slots[-k], out[-k])

    def _visit(self, node: fx.Node, out: list[int]) -> bool:
        out_shape = _shape(node)
        name = _op_name(node, self.gm)
        args = list(node.args)
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            x = self._slots(args[0]) if args else None
            if isinstance(mod, nn.Linear):
                self._unify_leading(x, out)
                self._member(x[-1], f"{node.target}.weight", 1)
                self._member(out[-1], f"{node.target}.weight", 0)
                if mod.bias is not None:
                    self._member(out[-1], f"{node.target}.bias", 0)
                self.linear_in[node.target] = x[-1]
                self.linear_out[node.target] = out[-1]
                return True
            if isinstance(mod, _NORMS):
                self._unify_broadcast(out, out_shape, args[0])
                self._normalized.append(out[-1])
                nd = len(mod.normalized_shape)
                for d in range(nd):
                    for p in ("weight", "bias"):
                        if getattr(mod, p, None) is not None:
                            self._member(out[len(out) - nd + d], f"{node.target}.{p}", d)
                    if nd > 1 or d != nd - 1:
                        self._block(out[len(out) - nd + d], f"a multi-dimensional {type(mod).__name__}")
                return True
            if isinstance(mod, _CONVOLUTIONS):
                # (N, C, *spatial): the batch carries through, the channels are the filters' (a CNN's hidden
                # channels, a patch embedding feeding a transformer's width); the spatial sizes change. A
                # depthwise convolution keeps each channel to itself; other grouped ones tie channels into
                # groups the analysis does not follow.
                if len(x) != len(out) or len(out) != mod.weight.ndim:
                    return False
                depthwise = mod.groups == mod.in_channels == mod.out_channels
                if mod.groups != 1 and not depthwise:
                    return False
                self._unify(x[0], out[0])
                tensors = [(f"{node.target}.weight", 0)] + ([(f"{node.target}.bias", 0)] if mod.bias is not None
                                                             else [])
                if depthwise:
                    self._unify(x[1], out[1])
                    self._channelwise.update(t for t, _ in tensors)
                else:
                    self._member(x[1], f"{node.target}.weight", 1)
                    self.conv_in[node.target], self.conv_out[node.target] = x[1], out[1]
                for tensor, dim in tensors:
                    self._member(out[1], tensor, dim)
                return True
            if isinstance(mod, _BATCH_NORMS):  # eval: a per-channel affine map of (N, C, *spatial)
                self._unify_broadcast(out, out_shape, args[0])
                for p in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, p, None) is not None:
                        self._member(out[1], f"{node.target}.{p}", 0)
                        self._channelwise.add(f"{node.target}.{p}")
                return True
            if isinstance(mod, nn.GroupNorm):
                # Normalized over groups of channels: a channel goes only with its whole group (the channels are
                # groups x channels-per-group, and only the groups may shrink).
                if mod.weight is None or len(out) < 2:
                    return False
                self._unify_broadcast(out, out_shape, args[0])
                per_group = mod.num_channels // mod.num_groups
                outer, inner = self._new(mod.num_groups), self._new(per_group)
                self._products.append(_Product(out[1], outer, inner, self._current_module))
                self._group_norms.append((out[1], outer))
                if per_group > 1:
                    self._block(inner, "a GroupNorm group's channels (remove whole groups)")
                for p in ("weight", "bias"):
                    if getattr(mod, p, None) is not None:
                        self._member(out[1], f"{node.target}.{p}", 0)
                        self._channelwise.add(f"{node.target}.{p}")
                return True
            if isinstance(mod, _POOLS):  # batch and channels carry through, the spatial sizes change
                if len(x) != len(out) or len(out) < 3:
                    return False
                self._unify(x[0], out[0])
                self._unify(x[1], out[1])
                return True
            if isinstance(mod, nn.Embedding):
                for a, b in zip(x, out[:-1]):
                    self._unify(a, b)
                self._member(out[-1], f"{node.target}.weight", 1)
                return True
            if isinstance(mod, _ELEMENTWISE_MODULES):
                self._unify_broadcast(out, out_shape, args[0])
                return True
            return False
        if node.op not in ("call_function", "call_method"):
            return False
        if name in _ELEMENTWISE:
            for a in _flatten((args, node.kwargs)):
                self._unify_broadcast(out, out_shape, a)
            return True
        if name == "linear":
            x, w = self._slots(args[0]), self._slots(args[1])
            self._unify_leading(x, out)
            self._unify(x[-1], w[1])
            self._unify(out[-1], w[0])
            b = args[2] if len(args) > 2 else node.kwargs.get("bias")
            if self._slots(b):
                self._unify(out[-1], self._slots(b)[0])
            return True
        if name in _RESHAPES:
            self._reshape(self._slots(args[0]), _shape(args[0]), out, out_shape)
            return True
        if name in ("transpose", "swapaxes"):
            x = self._slots(args[0])
            d0, d1 = (_norm(int(d), len(x)) for d in args[1:3])
            perm = list(range(len(x)))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            for i, p in enumerate(perm):
                self._unify(out[i], x[p])
            return True
        if name == "permute":
            x = self._slots(args[0])
            dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            for i, p in enumerate(dims):
                self._unify(out[i], x[_norm(int(p), len(x))])
            return True
        if name == "t" or (name == "getattr" and len(args) == 2 and args[1] in ("T", "mT")):  # x.T, x.mT
            x = self._slots(args[0])
            if x is None or len(x) != len(out):
                return False
            perm = list(reversed(range(len(x)))) if name == "t" or args[1] == "T" else [
                *range(len(x) - 2), len(x) - 1, len(x) - 2]
            for i, p in enumerate(perm):
                self._unify(out[i], x[p])
            return True
        if name in ("matmul", "bmm"):
            return self._matmul(self._slots(args[0]), self._slots(args[1]), args, out)
        if name in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None:
                return False
            self._unify_broadcast(out, out_shape, args[0])
            self._block(out[_norm(int(dim), len(out))], "a softmax normalises over it")
            return True
        if name in _REDUCTIONS:
            return self._reduce(node, args, out)
        if name == "cat" or name == "concat" or name == "concatenate":
            tensors = args[0]
            dim = _norm(int(node.kwargs.get("dim", args[1] if len(args) > 1 else 0)), len(out))
            offset = 0
            for t in tensors:
                x = self._slots(t)
                for i in range(len(out)):
                    if i == dim:
                        self._concats.append((out[i], x[i], offset))
                    else:
                        self._unify(out[i], x[i])
                offset += _shape(t)[dim]
            return True
        if name == "stack":  # a new axis of one entry per tensor; the others carry through
            dim = _norm(int(node.kwargs.get("dim", args[1] if len(args) > 1 else 0)), len(out))
            for t in args[0]:
                x = self._slots(t)
                if x is None or len(x) != len(out) - 1:
                    return False
                for i, s in enumerate(x):
                    self._unify(out[i + (i >= dim)], s)
            return True
        if name == "getitem":
            return self._getitem(node, args, out)
        if name in _FACTORIES_LIKE:
            self._unify_broadcast(out, out_shape, args[0])
            return True
        if name in _SIZED_FACTORIES:
            return self._factory(name, args, node.kwargs, out)
        if name in ("expand", "expand_as", "repeat", "repeat_interleave"):
            x = self._slots(args[0])
            shape = _shape(args[0])
            if len(x) != len(out):
                return False
            copies = self._copied_dim(node, name, args, len(out))
            like = self._slots(args[1]) if name == "expand_as" and len(args) > 1 else None
            for i in range(len(out)):
                if shape[i] == 1 and out_shape[i] != 1:  # broadcast to a size the call's arguments set
                    if like is not None and len(like) == len(out):
                        self._unify(out[i], like[i])
                    else:  # a literal or an attribute (repeat_kv's n_rep): pruning it would not change them
                        self._block(out[i], f"{name} broadcasts it to a size its arguments set")
                elif shape[i] == out_shape[i] and shape[i] != 1:
                    self._unify(out[i], x[i])
                elif shape[i] != 1 and i == copies and out_shape[i] % shape[i] == 0:
                    # Each index copied r times, in runs (repeat_interleave: grouped-query attention's key and value
                    # heads) or in turn (repeat): the output is x's slot times r copies, removed only whole.
                    r = self._new(out_shape[i] // shape[i])
                    self._block(r, f"{name}'s copies of one index (remove the index)")
                    outer, inner = (x[i], r) if name == "repeat_interleave" else (r, x[i])
                    self._products.append(_Product(out[i], outer, inner, self._current_module))
                elif shape[i] != 1:  # copied in a way not followed here
                    self._block(x[i], f"{name} copies its indices")
                    self._block(out[i], f"{name} copies its indices")
            return True
        if name == "scaled_dot_product_attention":
            q, k, v = (self._slots(a) for a in args[:3])
            heads, kv_heads = _shape(args[0])[-3] if len(q) > 2 else 1, _shape(args[1])[-3] if len(k) > 2 else 1
            grouped = heads != kv_heads  # enable_gqa: each key/value head serves a run of query heads
            if grouped and not (node.kwargs.get("enable_gqa", args[7] if len(args) > 7 else False)
                                and heads % kv_heads == 0 and len(q) == len(k) == len(v) == len(out)):
                return False
            for i in range(len(out) - 2):
                self._unify(k[i], v[i])
                self._unify(q[i], out[i])
                if i != len(out) - 3 or not grouped:
                    self._unify(q[i], k[i])
            if grouped:  # as repeat_interleave(k, heads // kv_heads, dim=-3) would make them
                r = self._new(heads // kv_heads)
                self._block(r, "a key/value head's query heads under enable_gqa (remove the key/value head)")
                self._products.append(_Product(q[-3], k[-3], r, self._current_module))
            self._unify(q[-1], k[-1])
            self._unify(k[-2], v[-2])
            self._unify(out[-2], q[-2])
            self._unify(out[-1], v[-1])
            return True
        return False

    @staticmethod
    def _copied_dim(node: fx.Node, name: str, args, rank: int) -> int | None:
        """The one dimension ``repeat_interleave(int, dim)`` or ``repeat`` (one factor above 1) copies, else None."""
        if name == "repeat_interleave":
            repeats, dim = (args[1] if len(args) > 1 else node.kwargs.get("repeats"),
                            args[2] if len(args) > 2 else node.kwargs.get("dim"))
            return _norm(int(dim), rank) if isinstance(repeats, int) and isinstance(dim, int) else None
        if name == "repeat":
            factors = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            big = [i for i, f in enumerate(factors) if not isinstance(f, int) or f != 1]
            if len(factors) == rank and len(big) == 1 and isinstance(factors[big[0]], int):
                return big[0]
        return None

    def _unify_leading(self, x, out) -> None:
        """A Linear maps the last dimension; every leading (batch, token) dimension passes through."""
        for a, b in zip(x[:-1], out[:-1]):
            self._unify(a, b)

    def _matmul(self, a, b, args, out) -> bool:
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return False
        self._unify(a[-1], b[-2])
        self._unify(out[-2], a[-2])
        self._unify(out[-1], b[-1])
        for x, arg in ((a, args[0]), (b, args[1])):
            shape = _shape(arg)
            for k in range(3, len(x) + 1):
                if k <= len(out) and shape[-k] != 1:
                    self._unify(x[-k], out[-k])
        return True

    def _reduce(self, node, args, out) -> bool:
        x = self._slots(args[0])
        dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None or x is None:
            return False
        dims = {_norm(int(d), len(x)) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        keep = bool(node.kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        # A norm written out (LlamaRMSNorm's x * rsqrt(mean(x²)), (x - μ) / σ) takes its statistic over the
        # channels it rescales: they shrink together, as through nn.RMSNorm / nn.LayerNorm.
        statistic = keep and dims == {len(x) - 1} and self._normalizes_own_input(node)
        if statistic:
            self._normalized.append(x[-1])
        j = 0
        for i, s in enumerate(x):
            if i in dims:
                if not statistic:
                    self._block(s, f"{_op_name(node, self.gm)} reduces over it")
                if keep:
                    j += 1
                continue
            self._unify(s, out[j])
            j += 1
        return True

    def _factory(self, name: str, args: list, kwargs: dict, out: list[int]) -> bool:
        """``torch.zeros(20, x.shape[0], x.shape[-1])``: each dimension sized by a traced tensor's dimension is
        that dimension, and shrinks with it; one of a constant size is blocked (pruning cannot resize it)."""
        sizes = kwargs.get("size", args[0] if name == "full" or (args and isinstance(args[0], (tuple, list)))
                           else args)
        if name == "full" and not args:
            return False
        sizes = list(sizes) if isinstance(sizes, (tuple, list)) else [sizes]
        if len(sizes) != len(out):
            return False
        for slot, size in zip(out, sizes):
            source = self._size_source(size)
            if source is None:
                self._block(slot, f"torch.{name} gives it a constant size")
            else:
                self._unify(slot, source)
        return True

    def _size_source(self, size) -> int | None:
        """The slot whose size ``size`` is when it is read off a tensor (``x.shape[i]``, ``x.size(i)``,
        ``x.size()[i]``), else None."""
        if not isinstance(size, fx.Node):
            return None
        name, args = _op_name(size, self.gm), size.args
        if name == "size" and len(args) == 2 and isinstance(args[1], int):
            tensor, index = args[0], args[1]
        elif name == "getitem" and len(args) == 2 and isinstance(args[1], int) and isinstance(args[0], fx.Node):
            whole, index = args[0], args[1]
            whole_name = _op_name(whole, self.gm)
            if whole_name == "getattr" and len(whole.args) == 2 and whole.args[1] == "shape":
                tensor = whole.args[0]
            elif whole_name == "size" and len(whole.args) == 1:
                tensor = whole.args[0]
            else:
                return None
        else:
            return None
        slots = self._slots(tensor)
        return None if slots is None or not -len(slots) <= index < len(slots) else slots[index]

    def _normalizes_own_input(self, node: fx.Node) -> bool:
        """Whether ``node``, a reduction over the last dimension kept as size 1, is a norm's statistic of a
        tensor ``x`` (``mean(x)``, ``mean(x²)``, ``var(x)``, of ``x`` centred by its mean, casts looked
        through) that only shifts or rescales that same ``x``: every path from it, through a scalar ``+ ε``,
        ``rsqrt``, ``sqrt`` or a cast, ends in ``x - μ``, ``x * r`` or ``x / σ`` (``x`` perhaps centred or scaled
        by a parameter first)."""
        root = self._statistic_source(node.args[0] if node.args else None, squares=True)
        if root is None:
            return False
        pending, seen = list(node.users), set()
        while pending:
            user = pending.pop()
            if user in seen:
                continue
            seen.add(user)
            name = _op_name(user, self.gm)
            tensors = [a for a in (*user.args, *user.kwargs.values()) if isinstance(a, fx.Node)]
            if name in _STATISTIC_MAPS and len(tensors) == 1:  # ε added, a root taken, a cast: follow
                pending.extend(user.users)
            elif name in ("sub", "mul", "truediv", "div") and len(tensors) == 2:
                mine = 1 if tensors[1] in seen or tensors[1] is node else 0
                if (name in ("truediv", "div") and mine == 0  # σ divides x, never x σ
                        or self._statistic_source(tensors[1 - mine], squares=False) is not root):
                    return False
            else:
                return False
        return bool(seen)

    def _statistic_source(self, value, squares: bool) -> fx.Node | None:
        """The tensor ``value`` is, looking through casts, centring by a kept-dimension mean, a per-channel
        parameter scale (and, with ``squares``, a square or absolute value first); None if not a node."""
        if squares and isinstance(value, fx.Node) and value.op in ("call_method", "call_function"):
            name, args = _op_name(value, self.gm), value.args
            if ((name == "pow" and len(args) == 2 and args[1] == 2) or name in ("square", "abs")
                    or (name == "mul" and len(args) == 2 and args[0] is args[1])):
                value = args[0]
        for _ in range(16):
            if not isinstance(value, fx.Node) or value.op not in ("call_method", "call_function"):
                return value if isinstance(value, fx.Node) else None
            name, args = _op_name(value, self.gm), value.args
            if name in _STATISTIC_CASTS and args:
                value = args[0]
            elif (name == "sub" and len(args) == 2 and isinstance(args[1], fx.Node)
                  and _op_name(args[1], self.gm) in _REDUCTIONS):
                value = args[0]  # x - μ
            elif name == "mul" and len(args) == 2 and any(isinstance(a, fx.Node) and a.op == "get_attr"
                                                          for a in args):
                value = next(a for a in args if not (isinstance(a, fx.Node) and a.op == "get_attr"))  # γ ⊙ x
            else:
                return value
        return None

    def _reshape(self, x, in_shape, out, out_shape) -> None:
        """Split/merge bookkeeping for a reshape: group dims whose products match."""
        ins = [i for i, s in enumerate(in_shape) if s != 1]
        outs = [i for i, s in enumerate(out_shape) if s != 1]
        i = j = 0
        while i < len(ins) and j < len(outs):
            gi, gj = [ins[i]], [outs[j]]
            pi, pj = in_shape[ins[i]], out_shape[outs[j]]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    gi.append(ins[i]); pi *= in_shape[ins[i]]; i += 1  # noqa: E702
                else:
                    gj.append(outs[j]); pj *= out_shape[outs[j]]; j += 1  # noqa: E702
            self._unify(self._compose([x[k] for k in gi]), self._compose([out[k] for k in gj]))

    def _getitem(self, node, args, out) -> bool:
        src = args[0]
        if isinstance(self._dims.get(src), tuple):  # an element of chunk / split / unbind
            pieces = self._dims[src][2]
            self._dims[node] = out
            for a, b in zip(pieces[args[1]], out):
                self._unify(a, b)
            return True
        x = self._slots(src)
        if x is None:
            return False
        shape = _shape(src)
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(ix, fx.Node) or isinstance(ix, (list, torch.Tensor)) for ix in index):
            return False
        given = sum(ix is not None and ix is not Ellipsis for ix in index)  # the entries that take an axis
        if any(ix is Ellipsis for ix in index):
            k = next(i for i, ix in enumerate(index) if ix is Ellipsis)
            index = index[:k] + (slice(None),) * (len(x) - given) + index[k + 1:]
        else:
            index = index + (slice(None),) * (len(x) - given)
        out_shape = _shape(node)
        j, d = 0, -1
        for ix in index:
            if ix is None:  # a new axis of size 1 (repeat_kv's x[:, :, None]): a slot of its own
                j += 1
                continue
            d += 1
            if isinstance(ix, int):
                self._block(x[d], "indexed with an integer")
                continue
            if isinstance(ix.start, fx.Node) or isinstance(ix.stop, fx.Node):
                # A bound computed from a size (rotate_half's x[..., : x.shape[-1] // 2]): the traced length
                # places it when the other bound is an end of the dimension.
                if ix.step not in (None, 1) or out_shape is None:
                    return False
                if ix.start in (None, 0) and isinstance(ix.stop, fx.Node):
                    ix = slice(0, out_shape[j])
                elif isinstance(ix.start, fx.Node) and ix.stop is None:
                    ix = slice(shape[d] - out_shape[j], shape[d])
                else:
                    return False
            start, stop, step = ix.indices(shape[d])
            if step != 1:
                return False
            if (start, stop) == (0, shape[d]):
                self._unify(x[d], out[j])
            else:
                self._concats.append((x[d], out[j], start))
            j += 1
        return True

    def _visit_tuple(self, node: fx.Node) -> None:
        """chunk / split / unbind: each piece's slots, kept for the getitems that follow."""
        name = _op_name(node, self.gm)
        args = list(node.args)
        x = self._slots(args[0]) if args else None
        shapes = self._dims[node][1]
        pieces: list[list[int]] = []
        if x is None or name not in ("chunk", "split", "unbind", "tensor_split"):
            for sh in shapes:
                pieces.append(self._fresh(sh or ()))
            for s in x or []:
                self._block(s, f"op {name} is not understood")
            for p in pieces:
                for s in p:
                    self._block(s, f"op {name} is not understood")
            self._dims[node] = ("tuple", shapes, pieces)
            return
        positional = 1 if name == "unbind" else 2  # unbind(dim) / chunk(n, dim) / split(size, dim)
        dim = node.kwargs.get("dim", args[positional] if len(args) > positional else 0)
        dim = _norm(int(dim), len(x))
        offset = 0
        for sh in shapes:
            p = self._fresh(sh)
            if name == "unbind":
                self._block(x[dim], "unbound")
                for a, b in zip([s for i, s in enumerate(x) if i != dim], p):
                    self._unify(a, b)
            else:
                for i in range(len(x)):
                    if i == dim:
                        self._concats.append((x[i], p[i], offset))
                    else:
                        self._unify(x[i], p[i])
                offset += sh[dim]
            pieces.append(p)
        self._dims[node] = ("tuple", shapes, pieces)

    # ---- propagation ------------------------------------------------------------------------
    def closure(self, seed: dict[int, set[int]]) -> dict[int, set[int]]:
        """Indices removed from every slot class when ``seed`` indices are removed."""
        removed: dict[int, set[int]] = defaultdict(set)
        queue = []
        for s, idx in seed.items():
            removed[self.find(s)] |= set(idx)
            queue.append(self.find(s))
        concats, products = self._relations()

        def give(cls: int, idx: set[int]) -> None:
            if idx - removed[cls]:
                removed[cls] |= idx
                queue.append(cls)

        while queue:
            cls = queue.pop()
            idx = removed[cls]
            if self.blocked(cls):
                raise EdgevlaError(f"cannot prune a dimension of size {self.size[cls]}: "
                                   f"{self._why_blocked(cls)}")
            for p, c, o in concats.get(cls, ()):
                if c == cls:
                    give(p, {i + o for i in idx})
                if p == cls:
                    n = self.size[c]
                    give(c, {i - o for i in idx if o <= i < o + n})
            for p, a, b in products.get(cls, ()):
                na, nb = self.size[a], self.size[b]
                if a == cls:
                    give(p, {i * nb + j for i in idx for j in range(nb)})
                if b == cls:
                    give(p, {i * nb + j for i in range(na) for j in idx})
                if p == cls:
                    outer = {i for i in range(na) if all(i * nb + j in idx for j in range(nb))}
                    inner = {j for j in range(nb) if all(i * nb + j in idx for i in range(na))}
                    if {i * nb + j for i in outer for j in range(nb)} == idx:
                        give(a, outer)
                    elif {i * nb + j for i in range(na) for j in inner} == idx:
                        give(b, inner)
                    else:
                        raise EdgevlaError(f"cannot prune part of a {na} x {nb} reshaped dimension "
                                           "(for example half a head): prune whole units")
        return dict(removed)

    def _relations(self):
        """Concat and product relations indexed by every slot class they touch (built once)."""
        if self._relation_index is None:
            concats: dict[int, list] = defaultdict(list)
            products: dict[int, list] = defaultdict(list)
            for p, c, o in self._concats:
                rel = (self.find(p), self.find(c), o)
                for cls in {rel[0], rel[1]}:
                    concats[cls].append(rel)
            for prod in self._products:
                rel = (self.find(prod.parent), self.find(prod.outer), self.find(prod.inner))
                for cls in set(rel):
                    products[cls].append(rel)
            self._blocked_roots = {self.find(b) for b in self._blocked}
            self._relation_index = (dict(concats), dict(products))
        return self._relation_index

    def _why_blocked(self, cls: int) -> str:
        for b in self._blocked:
            if self.find(b) == cls:
                return self.blocked_reason[b]
        return "it is blocked"

    def couplings(self, seed: dict[int, set[int]]) -> list[Coupling]:
        removed = self.closure(seed)
        per: dict[tuple[str, int], set[int]] = defaultdict(set)
        for slot, tensor, dim in self._members:
            idx = removed.get(self.find(slot))
            if idx:
                per[(tensor, dim)] |= idx
        return [Coupling(t, d, tuple(sorted(i))) for (t, d), i in sorted(per.items())]

    def removed_parameters(self, couplings: list[Coupling]) -> int:
        params = dict(self.model.named_parameters())
        kept: dict[str, list[int]] = {}
        for c in couplings:
            if c.tensor in params:
                kept.setdefault(c.tensor, list(params[c.tensor].shape))[c.dim] -= len(c.indices)
        return sum(params[t].numel() - math.prod(k) for t, k in kept.items())

    # ---- groups -----------------------------------------------------------------------------
    def group(self, slot: int, kind: str, name: str, units_slot: int | None = None) -> Group:
        root = self.find(units_slot if units_slot is not None else slot)
        key = (root, kind, name)
        if key not in self._groups:
            g = Group(self, root, kind, name, self.size[root], 1)
            widths = [len(c.indices) for c in g.unit_couplings(0)]
            g.unit_width = min(widths) if widths else 1
            self._groups[key] = g
        return self._groups[key]

    def channel_group(self, layer: str, dim: str = "out") -> Group:
        """The group of a Linear layer's (or a convolution's) output (``dim="out"``) or input channels."""
        table = {**self.linear_out, **self.conv_out} if dim == "out" else {**self.linear_in, **self.conv_in}
        if layer not in table:
            raise EdgevlaError(f"no nn.Linear or convolution named {layer!r} was called in the traced forward")
        return self.group(table[layer], "channels", f"{layer}:{dim}")

    def _linear_members(self, cls: int, *, convolutions: bool = False) -> tuple[list[str], list[str], set[str]]:
        """The layers producing (outs) and reading (ins) a class — Linears, and convolutions if asked — and every
        tensor with a dimension in it."""
        produce, read = ({**self.linear_out, **self.conv_out}, {**self.linear_in, **self.conv_in}) if convolutions \
            else (self.linear_out, self.linear_in)
        outs = [n for n, s in produce.items() if self.find(s) == cls]
        ins = [n for n, s in read.items() if self.find(s) == cls]
        tensors = {t for s, t, _ in self._members if self.find(s) == cls}
        return outs, ins, tensors

    def _related(self, cls: int) -> bool:
        return any(cls in (self.find(p), self.find(c)) for p, c, _ in self._concats) or any(
            cls in (self.find(p.parent), self.find(p.outer), self.find(p.inner)) for p in self._products)

    def hidden_groups(self) -> list[Group]:
        """MLP hidden layers: Linear outputs feeding only other Linears' inputs — one Linear's, or several
        combined element-wise (a SwiGLU MLP's ``silu(gate(x)) * up(x)``, as Llama- and Gemma-style trunks have).
        And a CNN's hidden channels: a convolution's filters feeding only other convolutions (or Linears),
        through per-channel steps — a BatchNorm, an activation, pooling, a depthwise convolution — whose
        tensors lose the channel too.

        Nothing else may touch the class (no LayerNorm, no parameter added onto
        it, no reshape into heads, no chunking), so removing a neuron is exact
        for the layers reading it: a neuron they give zero weight contributes
        nothing, and a pruned one nothing either.
        """
        seen, groups = set(), []
        for name, slot in {**self.linear_out, **self.conv_out}.items():
            cls = self.find(slot)
            if cls in seen:
                continue
            seen.add(cls)
            outs, ins, tensors = self._linear_members(cls, convolutions=True)
            own = self._own(outs, ins) | self._channelwise | self._per_channel(cls)
            if not ins or not tensors <= own or self.blocked(cls) or any(self.find(s) == cls for s in self._normalized):
                continue
            if not self._related(cls):
                groups.append(self.group(slot, "neurons", name))
            elif (units := self._group_norm_units(cls)) is not None:  # whole GroupNorm groups are the units
                groups.append(self.group(slot, "neurons", name, units_slot=units))
        return groups + self._fused_gated_groups(seen)

    def _fused_gated_groups(self, seen: set[int]) -> list[Group]:
        """Gated MLPs whose gate and value come from one layer: ``a, b = w12(x).chunk(2, -1)``, then
        ``silu(a) * b`` (SwiGLU) or ``a * gelu(b)`` (GEGLU). The product puts the pieces in one class; a
        neuron is one index of it, which is one output row of the fused layer per piece and one input column of
        each layer reading the product. Nothing else may touch the pieces or the fused output."""
        concats, products = self._relations()
        groups = []
        for name, slot in {**self.linear_out, **self.conv_out}.items():
            fused = self.find(slot)
            pieces = concats.get(fused, ())
            if len(pieces) < 2 or fused in products or self.blocked(fused) or any(p != fused for p, _, _ in pieces):
                continue
            children = {c for _, c, _ in pieces}
            if len(children) != 1:
                continue
            cls = children.pop()
            if cls in seen or cls in products or self.blocked(cls):
                continue
            width = self.size[cls]
            if sorted(o for _, _, o in pieces) != [i * width for i in range(len(pieces))] \
                    or len(pieces) * width != self.size[fused] or set(concats[cls]) != set(pieces):
                continue
            outs, ins, tensors = self._linear_members(cls, convolutions=True)
            fused_outs, fused_ins, fused_tensors = self._linear_members(fused, convolutions=True)
            if outs or fused_ins or not ins:
                continue
            if (tensors | fused_tensors) <= self._own(fused_outs, ins) | self._channelwise:
                seen.add(cls)
                groups.append(self.group(cls, "neurons", name))
        return groups

    def _group_norm_units(self, cls: int) -> int | None:
        """The groups' slot when every relation ``cls`` has is a GroupNorm splitting it into groups (of one
        size), else None."""
        concats, products = self._relations()
        mine = [o for c, o in self._group_norms if self.find(c) == cls]
        if not mine or concats.get(cls) or len(products.get(cls, ())) != len(mine):
            return None
        if len({self.size[self.find(o)] for o in mine}) != 1 or any(p != cls for p, _, _ in products[cls]):
            return None
        return mine[0]

    def _per_channel(self, cls: int) -> set[str]:
        """Tensors holding one value per channel of ``cls`` and nothing else (a FrozenBatchNorm's statistics and
        affine, a layer scale: shape ``(C,)`` or ``(1, C, 1, 1)``), met element-wise: they lose the channel as a
        BatchNorm's do."""
        return {t for s, t, d in self._members
                if self.find(s) == cls and self._tensors[t].numel() == self._tensors[t].shape[d]}

    @staticmethod
    def _own(outs: list[str], ins: list[str]) -> set[str]:
        """The tensors of the Linears that produce (``outs``) and read (``ins``) a class."""
        return {f"{n}.weight" for n in outs + ins} | {f"{n}.bias" for n in outs}

    def head_groups(self) -> list[Group]:
        """Attention heads: the outer slot of a Linear output split by a reshape (heads x head_dim)."""
        # Slot classes a Linear produces, directly or as a piece of a split of its output
        # (a fused qkv output is split into (3, heads x head_dim) first, then into heads).
        produced = {self.find(s): n for n, s in self.linear_out.items()}
        changed = True
        while changed:
            changed = False
            for p in self._products:
                parent = self.find(p.parent)
                for piece in (self.find(p.outer), self.find(p.inner)):
                    if parent in produced and piece not in produced:
                        produced[piece] = produced[parent]
                        changed = True
        seen, groups, covered = set(), [], set()
        for p in self._products:
            parent, outer = self.find(p.parent), self.find(p.outer)
            if outer in seen or self.size[outer] < 2 or self.blocked(outer):
                continue
            if parent not in produced:
                continue
            try:
                g = self.group(outer, "heads", p.module or produced[parent])
            except EdgevlaError:
                continue
            first = frozenset((c.tensor, c.dim, c.indices) for c in g.unit_couplings(0))
            if first in covered:  # the same heads reached from another side (a grouped-query key and value head)
                continue
            if any(tensor.endswith(".weight") and dim == 0 for tensor, dim, _ in first):
                seen.add(outer)
                covered.add(first)
                groups.append(g)
        return groups

    def width_groups(self) -> list[Group]:
        """Residual/embedding widths: classes that other tensors than their Linears' meet (a norm, an
        embedding, a positional parameter, a patch-embedding convolution), not blocked."""
        seen, groups = set(), []
        for name, slot in self.linear_out.items():
            cls = self.find(slot)
            if cls in seen or self.blocked(cls):
                continue
            outs, ins, tensors = self._linear_members(cls)
            if tensors - self._own(outs, ins):
                try:
                    g = self.group(slot, "width", name)
                except EdgevlaError:
                    continue
                seen.add(cls)
                groups.append(g)
        return groups

    # ---- surgery ----------------------------------------------------------------------------
    def apply(self, couplings: list[Coupling]) -> None:
        """Physically remove the coupled indices and fix the modules' shape attributes."""
        removed = self._removed_classes(couplings)
        per_tensor: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for c in couplings:
            per_tensor[c.tensor][c.dim] |= set(c.indices)
        for tensor, dims in per_tensor.items():
            owner, attr = _split_name(tensor)
            module = self.model.get_submodule(owner)
            old = getattr(module, attr)
            new = old.detach()
            for dim, idx in dims.items():
                keep = torch.tensor([i for i in range(new.shape[dim]) if i not in idx], dtype=torch.long)
                new = new.index_select(dim, keep)
            if isinstance(old, nn.Parameter):
                setattr(module, attr, nn.Parameter(new.clone(), requires_grad=old.requires_grad))
            else:
                persistent = attr not in getattr(module, "_non_persistent_buffers_set", set())
                module.register_buffer(attr, new.clone(), persistent=persistent)
        for module in self.model.modules():
            _sync_shape_attributes(module)
        self._update_head_attributes(removed)

    def _removed_classes(self, couplings: list[Coupling]) -> dict[int, int]:
        """Slot class -> how many indices it loses, recomputed from the tensor couplings."""
        by_member = {(t, d): self.find(s) for s, t, d in self._members}
        seed: dict[int, set[int]] = defaultdict(set)
        for c in couplings:
            cls = by_member.get((c.tensor, c.dim))
            if cls is not None:
                seed[cls] |= set(c.indices)
        return {k: len(v) for k, v in self.closure(seed).items()} if seed else {}

    def _update_head_attributes(self, removed: dict[int, int]) -> None:
        """Head counts, head widths and widths a module keeps as integer attributes follow its reshapes' slots,
        each matched by its value before pruning (a grouped-query module has 8 query heads and 2 key/value
        heads: both shrink, neither by the other's rule)."""
        updates: dict[tuple[str, str], int] = {}
        for p in self._products:
            if not p.module:
                continue
            module = self.model.get_submodule(p.module)
            for names, slot in ((_HEAD_COUNT_NAMES, p.outer), (_HEAD_DIM_NAMES, p.inner), (_WIDTH_NAMES, p.parent)):
                cls = self.find(slot)
                old, new = self.size[cls], self.size[cls] - removed.get(cls, 0)
                for name in names:
                    if old != new and isinstance(module.__dict__.get(name), int) and module.__dict__[name] == old:
                        updates.setdefault((p.module, name), new)
        for (module, name), new in updates.items():
            setattr(self.model.get_submodule(module), name, new)


#: Tensor factories that take sizes: a forward may size one by its input (``torch.zeros(x.shape[0], 7, 16)``).
_SIZE_FACTORIES = ("zeros", "ones", "empty", "full", "rand", "randn", "randint", "arange")


class _Tracer(fx.Tracer):
    """fx's tracer, with three things a policy's forward does that its default cannot follow:

    * a buffer the forward reads (a sampler's fixed noise, expanded to the batch) is a graph node like a
      parameter: fx's default hands it over as a plain tensor, which a method call with a traced argument
      (``self.noise.expand(x.shape[0], -1, -1)``) cannot take;
    * a tensor factory sized by a traced value (``torch.zeros(x.shape[0], 7, 16)``, a diffusion sampler's
      starting actions) is recorded as a call: fx's default passes the traced size into the factory itself.
      The factories are swapped on the ``torch`` module for the trace only;
    * Python that needs a traced value's real contents (``view(*x.shape[:-1], -1, d)``, ``len(x.shape)``,
      ``if x.shape[1] > 1``, ``range(x.size(1))``: Hugging Face's modeling code is full of them) gets them
      from the graph so far, run on the example inputs (:meth:`value_of`). The trace then holds that
      example's sizes and branches, which is what the analysis of the example's shapes reads anyway.
    """

    proxy_buffer_attributes = True

    def __init__(self, example_inputs: tuple[torch.Tensor, ...] | None = None):
        super().__init__()
        self._example = example_inputs
        self._values: dict[fx.Node, object] = {}

    def trace(self, root, concrete_args=None):
        originals = {name: getattr(torch, name) for name in _SIZE_FACTORIES}

        def recorded(factory):
            def call(*args, **kwargs):
                if any(isinstance(a, fx.Proxy) for a in torch.utils._pytree.tree_leaves((args, kwargs))):
                    return self.create_proxy("call_function", factory, args, kwargs)
                return factory(*args, **kwargs)
            return call

        self._root, self._values = root, {}
        try:
            for name, factory in originals.items():
                setattr(torch, name, recorded(factory))
            return super().trace(root, concrete_args)
        finally:
            for name, factory in originals.items():
                setattr(torch, name, factory)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.size_value(obj))

    def iter(self, obj: fx.Proxy):
        return iter([obj[i] for i in range(len(self.value_of(obj)))])

    def value_of(self, proxy: fx.Proxy) -> object:
        """What ``proxy`` holds on the example inputs: the nodes traced so far run in order (each once), in
        eval mode without gradients, the example's tensors standing for the forward's tensor arguments."""
        if self._example is None:
            raise fx.proxy.TraceError(f"{proxy.node.name} is needed as a real value, and there are no example "
                                      "inputs to compute it from")
        env = self._values
        was_training = self._root.training
        self._root.eval()
        try:
            # fx's trace-time patches (a module's __call__ and __getattr__, wrapped functions) would trace
            # these calls instead of running them: lifted while they run.
            with fx._symbolic_trace._maybe_revert_all_patches(), torch.no_grad():
                for node in self.graph.nodes:
                    if node not in env:
                        env[node] = self._run(node, env)
                    if node is proxy.node:
                        return env[node]
        finally:
            self._root.train(was_training)
        raise fx.proxy.TraceError(f"{proxy.node.name} is not in the graph being traced")

    def size_value(self, proxy: fx.Proxy) -> object:
        """:meth:`value_of` for a value Python branches on or counts with, which must come from sizes alone: one
        that depends on the tensors' contents (``if x.sum() > 0``) holds for this example only, and the trace
        would hide the other branch from the analysis."""
        value = self.value_of(proxy)
        pending, seen = [proxy.node], set()
        while pending:
            node = pending.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(self._values.get(node), torch.Tensor) or node.op in ("placeholder", "get_attr"):
                raise fx.proxy.TraceError(f"control flow on {proxy.node.name}, which depends on the values of "
                                          "the model's tensors, cannot be traced")
            if not _size_query(node):
                pending.extend(node.all_input_nodes)
        return value

    def _run(self, node: fx.Node, env: dict) -> object:
        if node.op == "placeholder":
            placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
            index = placeholders.index(node)
            if index < len(self._example):
                return self._example[index]
            return node.args[0] if node.args else None  # a defaulted argument
        if node.op == "get_attr":
            value = self._root
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self._root.get_submodule(node.target)(*args, **kwargs)
        raise fx.proxy.TraceError(f"cannot compute {node.op} {node.name} during the trace")


#: A traced tensor's attributes that are neither its values nor sizes that vary: taken as the example's.
_METADATA = ("dtype", "device", "ndim", "layout")


class _ConcreteProxy(fx.Proxy):
    """fx's proxy whose ``len``, integer use, dtype and device take the example's values (:class:`_Tracer`)."""

    def __len__(self) -> int:
        return len(self.tracer.value_of(self))

    def __index__(self) -> int:
        return operator.index(self.tracer.size_value(self))

    def __getattr__(self, k: str):
        if k in _METADATA and self.tracer._example is not None:  # torch.finfo(x.dtype), device=x.device
            return getattr(self.tracer.value_of(self), k)
        return _ConcreteAttribute(self, k)


class _ConcreteAttribute(_ConcreteProxy, fx.proxy.Attribute):
    """An attribute of a traced value (``x.shape``), a :class:`_ConcreteProxy` too."""


def _size_query(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``, ``x.numel()``, ``len(x)``: a tensor's sizes, not its contents."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel", "__len__")
    return node.op == "call_function" and node.target is len


def _trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None = None) -> fx.GraphModule:
    return fx.GraphModule(model, _Tracer(example_inputs).trace(model), type(model).__name__)


def _keep_in_dead_code(node: fx.Node) -> bool:
    """Nodes dead-code elimination must keep: fx's impure ones, and anything that may write in place."""
    if node.is_impure():
        return True
    if node.op not in ("call_method", "call_function"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    in_place = name.endswith("_") and not name.endswith("__")  # x.add_(y), F.relu_
    augmented = node.target in _AUGMENTED_ASSIGNMENTS  # x += y
    return in_place or augmented or "out" in node.kwargs


def _sync_shape_attributes(module: nn.Module) -> None:
    """Keep the shape bookkeeping of standard modules true to their tensors."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _NORMS) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, _CONVOLUTIONS):
        if module.groups > 1:  # depthwise: one filter a channel
            module.groups = module.weight.shape[0]
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        per_group = module.num_channels // module.num_groups
        module.num_channels = module.weight.shape[0]
        module.num_groups = module.num_channels // per_group
    elif isinstance(module, _BATCH_NORMS):
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape


def _split_name(name: str) -> tuple[str, str]:
    owner, _, attr = name.rpartition(".")
    return owner, attr


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    t = node.target
    if isinstance(t, str):
        return t
    if t is operator.getitem:
        return "getitem"
    return getattr(t, "__name__", str(t)).lstrip("_")


def _shape(node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _norm(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x


__all__ = ["Coupling", "DependencyGraph", "Group"]
