"""Frozen BatchNorms as ``nn.BatchNorm2d``, so compression treats them as BatchNorms.

DETR-style backbones (LeRobot's ACT builds torchvision's ResNet with ``norm_layer=FrozenBatchNorm2d``;
detectron2 has its own) keep a BatchNorm's statistics and affine as buffers and apply them with element-wise
ops (``x * scale + shift``). That computes an inference-mode ``nn.BatchNorm2d`` exactly, but nothing
downstream can see it: the quantizer cannot fold it into the convolution before it (the int8 filter then
ships without its scale, and the affine runs as two extra steps), and only our dependency trace follows it.

:func:`thaw_frozen_batch_norms` swaps each module that holds exactly ``weight``, ``bias``,
``running_mean`` and ``running_var`` buffers of one length (no parameters, no children) for an
``nn.BatchNorm2d`` that stays in eval mode (:class:`InferenceBatchNorm2d`) holding the same values as
buffers, under the same names (still frozen: pruning recovery does not train them, and the parameter count
does not change), after checking on random inputs that the two compute the same thing; a module that does
not is left alone. Nothing is matched by class name.
"""

from __future__ import annotations

import torch
from torch import nn

_STATE = ("weight", "bias", "running_mean", "running_var")
TOLERANCE = 1e-5  # relative to the output's magnitude: both are float32 of the same formula


class InferenceBatchNorm2d(nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` that stays in inference mode, as the frozen one it replaces did: ``train()`` leaves
    it normalizing with its running statistics, which nothing updates (pruning recovery trains the rest)."""

    def train(self, mode: bool = True) -> "InferenceBatchNorm2d":
        return super().train(False)


def _twin(module: nn.Module) -> nn.BatchNorm2d | None:
    """The ``nn.BatchNorm2d`` ``module`` computes, or None."""
    buffers = dict(module.named_buffers(recurse=False))
    if set(buffers) != set(_STATE) or any(True for _ in module.parameters()) or any(True for _ in module.children()):
        return None
    sizes = {b.shape for b in buffers.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1 or any(not b.is_floating_point() for b in buffers.values()):
        return None
    eps = getattr(module, "eps", 1e-5)
    if not isinstance(eps, float):
        return None
    twin = InferenceBatchNorm2d(buffers["weight"].numel(), eps=eps).to(buffers["weight"].dtype).eval()
    for name in ("weight", "bias"):  # buffers, as they were: frozen, never trained, not counted as parameters
        delattr(twin, name)
        twin.register_buffer(name, buffers[name].detach().clone())
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            getattr(twin, name).copy_(buffers[name])
        probe = torch.randn(2, twin.num_features, 3, 5, generator=torch.Generator().manual_seed(0),
                            dtype=buffers["weight"].dtype) * 3
        try:
            got = module(probe)
        except Exception:  # noqa: BLE001 - a module that takes other inputs is not a BatchNorm
            return None
        want = twin(probe)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    return twin if float((got - want).abs().max()) <= TOLERANCE * max(1.0, float(want.abs().max())) else None


def thaw_frozen_batch_norms(model: nn.Module) -> list[str]:
    """Replace, in place, every frozen BatchNorm of ``model`` (module docstring) with its ``nn.BatchNorm2d``;
    returns the paths replaced."""
    replaced = []
    for path, module in list(model.named_modules()):
        if not path or isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        twin = _twin(module)
        if twin is None:
            continue
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, twin)
        replaced.append(path)
    return replaced


__all__ = ["TOLERANCE", "InferenceBatchNorm2d", "thaw_frozen_batch_norms"]
