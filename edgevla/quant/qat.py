"""Quantization-aware training: fine-tune the fake-quant model, distilled from the float policy.

Inside :func:`~edgevla.quant.fakequant.qat_mode` each fake-quant layer
quantizes its live float weight and its input with a straight-through
estimator (the rounding's gradient is taken as the identity), so the
optimizer moves the float weights to where their *quantized* values serve the
output best. The loss is the pruning recovery's distillation loss
(:class:`edgevla.prune.Distiller`): the float teacher's actions, plus the
expert's when the task supplies them. Afterwards the codes and scales are
re-derived from the trained weights; activation scales stay as calibrated.

Exact zeros in the weights — a pruned model's masks, baked in — stay zero:
their gradient is masked (:func:`zeros_held`), so QAT after 2:4 pruning
still ships 2:4. Training moves what ships in floating point (biases, norms,
tables) off its storage grid; :func:`settle` puts a trained model back on it.
Pruning recovery with ``prune.recovery.train: shipped`` trains the quantized
student the same way, inside :func:`qat_mode` and :func:`zeros_held`, and
judges settled copies of it (:func:`settled_copy`).

Fine-tuning can also make a good PTQ model worse (W8A8 at ~34 dB leaves
little to gain and a step size to lose it with), so by default the trained
model is kept only if its output SQNR against the teacher on the held-out
observations beat the PTQ model's; otherwise the PTQ weights come back and
the report says so.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import EdgevlaError
from .apply import round_float_storage, round_tables
from .fakequant import qat_mode, quantized_layers, refresh_quantized
from .primitives import sqnr_db

Batch = tuple[Sequence[torch.Tensor], torch.Tensor]


@dataclass
class QATReport:
    steps: int
    seconds: float
    loss_first: float  # mean distillation loss over the first tenth of the steps
    loss_last: float   # and over the last tenth
    sqnr_before_db: float  # output SQNR against the float teacher on held-out observations, after PTQ
    sqnr_trained_db: float  # and after training
    sqnr_after_db: float    # of the model returned
    kept: str  # "qat": the trained weights; "ptq": training did not beat PTQ and was undone
    kept_zeros: int  # exact zeros held at zero through training

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def zeros_held(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block the exact zeros of every fake-quant layer's float weight (a pruned model's baked
    masks) get no gradient; on leaving they are set to zero again, exactly. Yields the keep-masks by layer
    name (only layers with a zero)."""
    layers = quantized_layers(model)
    masks = {name: (m.weight != 0) for name, m in layers.items() if bool((m.weight == 0).any())}
    hooks = [layers[n].weight.register_hook(lambda g, keep=keep: g * keep) for n, keep in masks.items()]
    try:
        yield masks
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():  # AdamW never moves a zero-gradient entry; make it exact regardless
            for n, keep in masks.items():
                layers[n].weight.mul_(keep)


@torch.no_grad()
def settle(model: nn.Module, float_dtype: str, tables: bool) -> None:
    """After training, in place: the codes and weight scales re-derived from the float weights, the tables
    (with ``tables``) back on their int8 grid, what stays float rounded to ``float_dtype`` — what
    :func:`~edgevla.quant.quantize_policy` leaves, for the trained weights."""
    refresh_quantized(model)
    if tables:
        round_tables(model)
    round_float_storage(model, float_dtype)


def settled_copy(model: nn.Module, float_dtype: str, tables: bool) -> nn.Module:
    """A copy of a fake-quant ``model`` in training (inside :func:`qat_mode`) as it would ship now: out of QAT
    mode and :func:`settle`-d; the model itself keeps training on its float masters."""
    copied = copy.deepcopy(model)
    for m in quantized_layers(copied).values():
        m.qat = False
    settle(copied, float_dtype, tables)
    return copied.eval()


@torch.no_grad()
def _sqnr_against(model: nn.Module, teacher: nn.Module, heldout: Sequence[torch.Tensor]) -> float:
    model.eval()
    return sqnr_db(teacher(*heldout).float(), model(*heldout).float())


def quantization_aware_training(model: nn.Module, teacher: nn.Module, batches: Iterator[Batch], *,
                                steps: int, heldout: Sequence[torch.Tensor], lr: float = 3e-5,
                                w_task: float = 0.0, batch_size: int = 32, keep_better: bool = True) -> QATReport:
    """Fine-tune the fake-quant ``model`` in place for ``steps`` distillation steps from ``teacher``.

    ``batches`` yields (observation tensors, target actions); with
    ``w_task=0`` (the default: pure distillation) the targets are ignored and
    only the teacher is matched, so no task is needed. ``heldout``
    observations measure the output SQNR before and after; with
    ``keep_better`` the PTQ model comes back when training did not raise it.
    """
    from ..prune.recovery import Distiller, RecoveryConfig

    if not isinstance(steps, int) or steps < 1:
        raise EdgevlaError(f"QAT needs a positive number of steps, got {steps!r}")
    if not quantized_layers(model):
        raise EdgevlaError(f"{type(model).__name__} has no fake-quant layers: quantize it before QAT")
    before = _sqnr_against(model, teacher, heldout)
    snapshot = copy.deepcopy(model.state_dict()) if keep_better else None
    config = RecoveryConfig(max_steps=steps, batch_size=batch_size, lr=lr, w_kd=1.0, w_task=w_task,
                            weight_decay=0.0)
    start = time.perf_counter()
    try:
        with qat_mode(model), zeros_held(model) as masks:
            distiller = Distiller(model, teacher, config, batches)
            for _ in range(steps):
                distiller.step()
    finally:
        model.eval()
    trained = _sqnr_against(model, teacher, heldout)
    kept = "qat"
    if snapshot is not None and trained <= before:
        model.load_state_dict(snapshot)
        kept = "ptq"
    losses = distiller.losses
    tenth = max(1, len(losses) // 10)
    return QATReport(steps=steps, seconds=round(time.perf_counter() - start, 3),
                     loss_first=float(sum(losses[:tenth]) / tenth), loss_last=float(sum(losses[-tenth:]) / tenth),
                     sqnr_before_db=before, sqnr_trained_db=trained,
                     sqnr_after_db=trained if kept == "qat" else before, kept=kept,
                     kept_zeros=int(sum((~keep).sum() for keep in masks.values())))
