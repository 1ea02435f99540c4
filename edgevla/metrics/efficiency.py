"""Efficiency scores, reductions and a roofline latency floor.

**E(M)** (the efficient-VLA seed, section 4.2): a model's task performance
divided by what it costs, on three axes, weighted::

    E(M) = alpha * E_c + beta * E_m + gamma * E_i,   alpha + beta + gamma = 1
    E_c = P / C    computational efficiency
    E_m = P / M    memory efficiency
    E_i = P / T    inference efficiency

Units, as in the seed's worked example: P a fraction in [0, 1] (success rate),
C in GFLOPs per inference, M in GB (edgevla uses GiB of measured memory), T in
milliseconds. The terms are not normalised, so E is only meaningful when
comparing models scored in the same units — which is how the report uses it.

Note on the seed: its worked example states E(M0) = 0.0716 and E(M1) = 0.1389,
but those sums omit the gamma * E_i term (0.4*0.00095 + 0.3*0.2375 = 0.07163).
With all three terms the formula gives 0.071915 and 0.13961; the improvement
(E1 - E0) / E0 is 0.94 either way. This module computes the formula as defined.

**Roofline floor** (an estimate, never a measurement): each layer takes at
least as long as reading its weights at the memory bandwidth and as doing its
FLOPs at peak rate, so latency >= sum over layers of
``max(weight_bytes / bandwidth, flops / peak)``. Activations, launch overheads
and imperfect kernels are ignored, so real latency is higher.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ..errors import EdgevlaError

DEFAULT_WEIGHTS = (0.4, 0.3, 0.3)  # alpha, beta, gamma of the seed's worked example


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise EdgevlaError(f"{name} must be a positive number, got {value}")
    return value


@dataclass(frozen=True)
class EfficiencyScore:
    """E(M) and its terms for one model, with the inputs that produced them."""

    E: float
    E_c: float
    E_m: float
    E_i: float
    P: float
    C_gflops: float
    M_gb: float
    T_ms: float
    alpha: float
    beta: float
    gamma: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EfficiencyScore":
        return cls(**{k: float(d[k]) for k in cls.__dataclass_fields__})


def efficiency_score(P: float, C_gflops: float, M_gb: float, T_ms: float,
                     alpha: float = DEFAULT_WEIGHTS[0], beta: float = DEFAULT_WEIGHTS[1],
                     gamma: float = DEFAULT_WEIGHTS[2]) -> EfficiencyScore:
    """E(M) = alpha*P/C + beta*P/M + gamma*P/T (units in the module docstring)."""
    P = float(P)
    if not 0.0 <= P <= 1.0:
        raise EdgevlaError(f"performance P is a fraction in [0, 1], got {P}")
    C, M, T = _positive("C (GFLOPs)", C_gflops), _positive("M (GB)", M_gb), _positive("T (ms)", T_ms)
    weights = (float(alpha), float(beta), float(gamma))
    if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise EdgevlaError(f"efficiency weights must be >= 0 and sum to 1, got alpha={alpha}, beta={beta}, gamma={gamma}")
    E_c, E_m, E_i = P / C, P / M, P / T
    E = weights[0] * E_c + weights[1] * E_m + weights[2] * E_i
    return EfficiencyScore(E=E, E_c=E_c, E_m=E_m, E_i=E_i, P=P, C_gflops=C, M_gb=M, T_ms=T,
                           alpha=weights[0], beta=weights[1], gamma=weights[2])


def efficiency_improvement(before: EfficiencyScore | float, after: EfficiencyScore | float) -> float:
    """Relative gain (E_after - E_before) / E_before; 0.94 means 94 % better."""
    e0 = before.E if isinstance(before, EfficiencyScore) else float(before)
    e1 = after.E if isinstance(after, EfficiencyScore) else float(after)
    if e0 <= 0:
        raise EdgevlaError(f"efficiency improvement needs a positive starting score, got {e0}")
    return (e1 - e0) / e0


def reduction_pct(before: float | None, after: float | None) -> float | None:
    """How much smaller ``after`` is than ``before``, in percent (negative: it grew).

    None when either value is missing or ``before`` is 0 while ``after`` is
    not (no finite percentage exists); 0 when both are 0.
    """
    if before is None or after is None:
        return None
    before, after = float(before), float(after)
    if before == 0:
        return 0.0 if after == 0 else None
    return (before - after) / before * 100.0


@dataclass(frozen=True)
class RooflineEstimate:
    """Latency floor from weight traffic and FLOPs alone (an estimate)."""

    floor_ms: float
    memory_bound_layers: int   # layers whose weight reading outlasts their arithmetic
    compute_bound_layers: int  # layers whose arithmetic outlasts their weight reading
    weight_bytes: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RooflineEstimate":
        return cls(floor_ms=float(d["floor_ms"]), memory_bound_layers=int(d["memory_bound_layers"]),
                   compute_bound_layers=int(d["compute_bound_layers"]), weight_bytes=int(d["weight_bytes"]),
                   flops=int(d["flops"]))


def roofline_estimate(per_layer: Iterable[tuple[float, float]], peak_flops_per_s: float,
                      bandwidth_bytes_per_s: float) -> RooflineEstimate:
    """Floor latency = sum over layers of max(weight_bytes / bandwidth, flops / peak).

    ``per_layer`` holds ``(flops, weight_bytes)`` pairs, e.g.
    ``[(r.flops, r.weight_bytes) for r in flop_report.per_layer]``; adjust the
    bytes for the target's storage (bits per weight, sparsity, index metadata)
    before calling. Layers with neither FLOPs nor weights are not counted as
    either bound.
    """
    peak = _positive("peak FLOP/s", peak_flops_per_s)
    bandwidth = _positive("bandwidth (bytes/s)", bandwidth_bytes_per_s)
    floor_s = 0.0
    memory_bound = compute_bound = 0
    total_bytes = total_flops = 0
    for flops, nbytes in per_layer:
        if flops < 0 or nbytes < 0:
            raise EdgevlaError(f"a layer cannot have negative FLOPs or bytes, got ({flops}, {nbytes})")
        t_mem, t_compute = nbytes / bandwidth, flops / peak
        floor_s += max(t_mem, t_compute)
        total_bytes += nbytes
        total_flops += flops
        if t_mem > t_compute:
            memory_bound += 1
        elif t_compute > 0:
            compute_bound += 1
    return RooflineEstimate(floor_ms=floor_s * 1e3, memory_bound_layers=memory_bound,
                            compute_bound_layers=compute_bound, weight_bytes=int(total_bytes),
                            flops=int(total_flops))
