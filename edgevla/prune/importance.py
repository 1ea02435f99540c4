"""How much each weight, channel, head or block matters.

Three element-wise criteria, each a small class with the same two entry points:

* ``criterion(layer)`` -> a score per element of ``layer.weight`` (what the
  unstructured and N:M masks rank);
* ``criterion.tensor_scores(name, tensor)`` -> scores for any parameter by
  its qualified name, or ``None`` when the criterion has nothing to say about
  it (what :class:`GroupImportance` sums over a coupled group).

:class:`MagnitudeImportance` is ``|w|``. :class:`TaylorImportance` is the
first-order Taylor estimate of the loss change when a weight is removed,
``|w * dL/dw|`` (Molchanov et al. 2019), averaged over calibration batches.
:class:`WandaImportance` is ``|w_ij| * ||x_j||`` (Sun et al. 2023, "Wanda"):
a weight matters as much as its magnitude times the norm of the input
channel it multiplies, gathered with forward hooks — no gradients, so it
suits large transformer trunks. :class:`BlockInfluence` scores whole residual
blocks by how much they change their input (1 - cosine, as in ShortGPT).

A calibration source is an iterable of ``(observations, target)`` pairs, or a
callable returning one; :func:`task_batches` makes it from the tabletop task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EdgevlaError
from .graph import Group

Batch = tuple[Sequence[torch.Tensor], torch.Tensor]
Batches = Iterable[Batch] | Callable[[], Iterable[Batch]]


def task_batches(policy: nn.Module, n_batches: int = 4, batch_size: int = 32, seed: int = 0) -> list[Batch]:
    """Calibration batches of the tabletop task: observations and *normalized* expert actions.

    Drawn from the task's calibration split (never the training stream), in
    the policy's own input order and action normalization.
    """
    from ..task.dataset import make_batch, split_rng
    from ..train import task_config_for

    config = getattr(policy, "config", None)
    if config is None:
        raise EdgevlaError(f"{type(policy).__name__} has no .config: pass calibration batches explicitly")
    task = task_config_for(config)
    spec = policy.spec
    mean = np.asarray(spec.action_mean, np.float32)
    std = np.asarray(spec.action_std, np.float32)
    rng = split_rng("calibration", seed)
    batches = []
    for _ in range(n_batches):
        b = make_batch(task, batch_size, rng)
        obs = [torch.from_numpy(np.ascontiguousarray(b.observations[n])) for n in spec.input_names]
        batches.append((obs, torch.from_numpy(((b.actions - mean) / std).astype(np.float32))))
    return batches


def action_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The behaviour-cloning loss of edgevla.train: MSE of the normalized action chunk."""
    return F.mse_loss(prediction.float(), target)


def _iterate(batches: Batches) -> Iterable[Batch]:
    source = batches() if callable(batches) else batches
    seen = False
    for b in source:
        seen = True
        yield b
    if not seen:
        raise EdgevlaError("the calibration source yielded no batches")


def _weight(layer) -> torch.Tensor:
    if isinstance(layer, torch.Tensor):
        return layer
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise EdgevlaError(f"{type(layer).__name__} has no weight tensor to score")
    return w


class MagnitudeImportance:
    """``|w|``: the baseline — small weights are assumed to matter little."""

    def __call__(self, layer: nn.Module | torch.Tensor) -> torch.Tensor:
        return _weight(layer).detach().abs()

    def tensor_scores(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor.detach().abs()


class TaylorImportance:
    """``mean over batches of |w * dL/dw|``: the first-order loss change of zeroing ``w``.

    Per-batch absolute values are averaged (not the gradients): near a minimum
    the batch gradients cancel, while their magnitudes still say which weights
    the loss is sensitive to.
    """

    def __init__(self, model: nn.Module, batches: Batches,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = action_loss):
        self._scores: dict[str, torch.Tensor] = {}
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.eval()  # the deployed behaviour is what we score (dropout off)
        saved = {n: p.grad for n, p in params.items()}
        n_batches = 0
        try:
            for obs, target in _iterate(batches):
                for p in params.values():
                    p.grad = None
                loss = loss_fn(model(*obs), target)
                loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        s = (p.detach() * p.grad).abs()
                        self._scores[n] = self._scores[n] + s if n in self._scores else s
                n_batches += 1
        finally:
            for n, p in params.items():
                p.grad = saved[n]
            model.train(was_training)
        self._scores = {n: s / n_batches for n, s in self._scores.items()}
        self._by_id = {id(params[n]): s for n, s in self._scores.items()}
        self._names = {id(p): n for n, p in params.items()}

    def __call__(self, layer: nn.Module | torch.Tensor) -> torch.Tensor:
        w = _weight(layer)
        if id(w) not in self._by_id:
            raise EdgevlaError("TaylorImportance has no gradient for this tensor: score it with the model it was "
                               "built from")
        return self._by_id[id(w)]

    def tensor_scores(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        return self._scores.get(name)


class WandaImportance:
    """``|w_ij| * ||x_j||_2``: weight magnitude times its input channel's activation norm.

    The norm is over every token of every calibration sample that reached the
    layer; for a convolution, over every position of each input channel, and
    a filter weight takes its input channel's norm at every kernel position
    (Wanda's reading for convolutions: the channel is what the weight
    multiplies). Only ``nn.Linear`` and convolution weights are scored; other
    tensors are left to the rest of their group.
    """

    def __init__(self, model: nn.Module, batches: Batches):
        self._sq: dict[str, torch.Tensor] = {}
        linears = {n: m for n, m in model.named_modules() if isinstance(m, _SCORED)}
        if not linears:
            raise EdgevlaError(f"{type(model).__name__} has no nn.Linear or convolution layer for activation-aware "
                               "scoring")

        def hook(name: str):
            def record(module, inputs, _output):
                x = inputs[0].detach().float()
                if isinstance(module, nn.Linear):
                    x = x.reshape(-1, x.shape[-1])
                else:  # (N, C, *spatial), or one unbatched sample (C, *spatial)
                    batched = x.ndim == module.weight.ndim
                    x = (x.movedim(1, -1) if batched else x.movedim(0, -1)).reshape(-1, module.in_channels)
                sq = x.pow(2).sum(dim=0)
                self._sq[name] = self._sq[name] + sq if name in self._sq else sq
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for obs, _target in _iterate(batches):
                    model(*obs)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self.input_norms = {n: sq.sqrt() for n, sq in self._sq.items()}
        self._by_id = {id(linears[n].weight): norm for n, norm in self.input_norms.items()}

    def __call__(self, layer: nn.Module | torch.Tensor) -> torch.Tensor:
        w = _weight(layer)
        norm = self._by_id.get(id(w))
        if norm is None:
            raise EdgevlaError("WandaImportance saw no input activations for this layer: it was not called in the "
                               "calibration forward passes")
        return w.detach().abs() * _per_weight(norm, w.shape)

    def tensor_scores(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        owner, _, attr = name.rpartition(".")
        norm = self.input_norms.get(owner)
        if attr != "weight" or norm is None or not _fits(norm, tensor.shape):
            return None
        return tensor.detach().abs() * _per_weight(norm, tensor.shape)


_SCORED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _fits(norm: torch.Tensor, shape: torch.Size) -> bool:
    if len(shape) == 2:
        return shape[1] == norm.numel()
    return len(shape) > 2 and norm.numel() % shape[1] == 0 and shape[0] % (norm.numel() // shape[1]) == 0


def _per_weight(norm: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Input-channel norms broadcast onto a weight of ``shape``: ``(out, in)``, or a convolution's ``(out, in /
    groups, *kernel)``, whose output channels of group g read input channels g*in/groups onwards."""
    out, per_group = shape[0], shape[1]
    groups = norm.numel() // per_group
    by_row = norm.reshape(groups, per_group).repeat_interleave(out // groups, dim=0)  # (out, in / groups)
    return by_row.reshape(out, per_group, *([1] * (len(shape) - 2)))


class GroupImportance:
    """One score per unit of a coupled group: an L1 or L2 norm over each tensor's slice, summed.

    A neuron's score is the norm of its fc1 row plus the norm of its fc2
    column (and bias); a head's is the sum over its q, k, v rows and output
    projection columns. Summing per-tensor norms (rather than one norm of the
    concatenation) keeps one large tensor from drowning the others.
    """

    def __init__(self, criterion=None, reduction: str = "l2"):
        if reduction not in ("l1", "l2"):
            raise EdgevlaError(f"group reduction must be 'l1' or 'l2', got {reduction!r}")
        self.criterion = criterion or MagnitudeImportance()
        self.reduction = reduction

    def __call__(self, group: Group) -> torch.Tensor:
        tensors = dict(group.graph.model.named_parameters())
        # Each coupled (tensor, dim): the units reading it and the indices each reads, to sum in one pass.
        slices: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for u in range(group.units):
            for c in group.unit_couplings(u):
                if c.tensor in tensors:  # buffers (fixed positional tables) carry no importance
                    units, indices = slices.setdefault((c.tensor, c.dim), ([], []))
                    units.extend([u] * len(c.indices))
                    indices.extend(c.indices)
        cache: dict[str, torch.Tensor | None] = {}
        scores = torch.zeros(group.units, dtype=torch.float64)
        for (name, dim), (units, indices) in slices.items():
            if name not in cache:
                cache[name] = self.criterion.tensor_scores(name, tensors[name])
            s = cache[name]
            if s is None:
                continue
            s = s.double().movedim(dim, 0).reshape(s.shape[dim], -1)
            per_index = s.abs().sum(1) if self.reduction == "l1" else s.pow(2).sum(1)
            part = torch.zeros(group.units, dtype=torch.float64).index_add_(
                0, torch.tensor(units, dtype=torch.long), per_index[torch.tensor(indices, dtype=torch.long)])
            scores += part if self.reduction == "l1" else part.sqrt()
        return scores


class BlockInfluence:
    """``1 - cos(x_in, x_out)`` of a residual block, averaged over tokens and batches.

    A block that barely turns its input (cosine near 1) is the one whose
    replacement by the identity costs least (Men et al. 2024, ShortGPT).
    """

    def __init__(self, model: nn.Module, batches: Batches):
        self.model = model
        self.batches = batches

    def __call__(self, blocks: Sequence[str]) -> torch.Tensor:
        sums = torch.zeros(len(blocks), dtype=torch.float64)
        counts = torch.zeros(len(blocks), dtype=torch.float64)

        def hook(i: int):
            def record(_m, inputs, output):
                y = output[0] if isinstance(output, tuple) else output  # (hidden_states,): structured.stream_outputs
                x, y = inputs[0].detach().float(), y.detach().float()
                cos = F.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
                sums[i] += (1.0 - cos).sum().double()
                counts[i] += cos.numel()
            return record

        handles = [self.model.get_submodule(b).register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for obs, _target in _iterate(self.batches):
                    self.model(*obs)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        if (counts == 0).any():
            raise EdgevlaError("a block was not called during the calibration forward passes")
        return sums / counts
