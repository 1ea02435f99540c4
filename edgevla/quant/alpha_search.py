"""SmoothQuant's migration strength chosen by measurement.

``α`` decides how much of an activation channel's range moves into the weights (:mod:`.smoothquant`): 0.5
suits most models, but the best value depends on how the model's outliers sit (Xiao et al. report 0.75-0.85
for some). :func:`search_alpha` quantizes the policy once per candidate, without SmoothQuant too, and keeps
the one whose whole-model output is closest to the float policy's (SQNR) on observations that calibration
did not see; each candidate is a full post-training quantization, so the search costs that many.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdgevlaError
from .mixed import model_sqnr

#: The candidates of ``quantize.smoothquant.alpha: auto``.
ALPHAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class AlphaSearch:
    """The chosen ``alpha`` (None: SmoothQuant made the output worse at every candidate) and the output SQNR
    (dB) each candidate gave, ``None``'s under the key ``"off"``."""

    alpha: float | None
    sqnr_db: dict[str, float]

    def said(self) -> str:
        tried = ", ".join(f"{k} {v:.1f}" for k, v in self.sqnr_db.items())
        chosen = "off" if self.alpha is None else f"α={self.alpha:g}"
        return f"SmoothQuant {chosen} by output SQNR (dB: {tried})"


def search_alpha(policy: nn.Module, quantize: Callable[[nn.Module, float | None], nn.Module],
                 probe: Sequence[tuple[torch.Tensor, ...]], alphas: Sequence[float] = ALPHAS) -> AlphaSearch:
    """The ``α`` among ``alphas`` (or none) whose quantized model, ``quantize(policy, α)``, has the highest
    output SQNR against its float form on ``probe`` batches. Ties go to the smaller ``α`` (the milder change)."""
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise EdgevlaError(f"SmoothQuant alpha candidates must be in [0, 1], got {list(alphas)}")
    if not probe:
        raise EdgevlaError("the SmoothQuant alpha search needs at least one probe batch")
    scores: dict[str, float] = {}
    best: tuple[float, float | None] = (-math.inf, None)
    for alpha in (None, *sorted(alphas)):
        sqnr = model_sqnr(quantize(policy, alpha), probe)
        scores["off" if alpha is None else f"{alpha:g}"] = round(sqnr, 3)
        if sqnr > best[0]:  # NaN never wins
            best = (sqnr, alpha)
    if best[0] == -math.inf:
        raise EdgevlaError("the SmoothQuant alpha search found no candidate with a finite output SQNR")
    return AlphaSearch(best[1], scores)


__all__ = ["ALPHAS", "AlphaSearch", "search_alpha"]
