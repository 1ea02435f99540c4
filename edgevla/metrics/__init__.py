"""Measurement and report layer: what proves a built policy against its original.

* :mod:`.params`     parameter counts (total, non-zero) and artifact sizes
* :mod:`.flops`      FLOPs of a batch-1 inference, per layer
* :mod:`.latency`    latency distribution, control-loop deadline misses, throughput
* :mod:`.memory`     peak resident memory measured in a fresh process; weight bytes
* :mod:`.efficiency` E(M) efficiency score, reductions, roofline latency floor
* :mod:`.success_ci` how sure a success rate is, and a loss between policies on the same episodes
* :mod:`.report`     report.json / report.md / plots of original vs built

Names are imported lazily: ``python -m edgevla.metrics.memory_probe`` imports
this package, and its baseline must not include torch or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ParamCount": "params", "count_parameters": "params", "file_size": "params",
    "LayerFlops": "flops", "FlopReport": "flops", "flop_report": "flops",
    "LatencyStats": "latency", "DeadlineReport": "latency", "measure_latency": "latency",
    "deadline_misses": "latency", "throughput": "latency", "samples_per_second": "latency",
    "MemoryStats": "memory", "measure_peak_memory": "memory", "model_weight_bytes": "memory",
    "EfficiencyScore": "efficiency", "efficiency_score": "efficiency", "efficiency_improvement": "efficiency",
    "reduction_pct": "efficiency", "RooflineEstimate": "efficiency", "roofline_estimate": "efficiency",
    "ModelMetrics": "report", "build_report": "report", "write_report": "report", "host_info": "report",
    "render_markdown": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
