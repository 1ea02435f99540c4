"""How long one decision takes, and whether it fits the control loop.

A robot policy runs inside a loop at a fixed rate: at 50 Hz a new action
chunk is due every 20 ms. The mean latency says little about that; the tail
does. :func:`measure_latency` keeps every sample so the report can show the
distribution and :func:`deadline_misses` can count the calls that would have
been late. All times are milliseconds, taken with ``time.perf_counter_ns``.

Percentiles use NumPy's default (linear interpolation between order
statistics); ``std_ms`` is the sample standard deviation (``ddof=1``) since
the runs are a sample of the policy's behaviour, 0 for a single run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import EdgevlaError

Clock = Callable[[], int]  # monotonic nanoseconds, like time.perf_counter_ns


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one call, in milliseconds."""

    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    runs: int
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float]) -> "LatencyStats":
        s = np.asarray(list(samples_ms), dtype=np.float64)
        if s.ndim != 1 or s.size == 0:
            raise EdgevlaError("latency statistics need at least one timing sample")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise EdgevlaError("latency samples must be finite and non-negative milliseconds")
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        return cls(mean_ms=float(s.mean()), std_ms=float(s.std(ddof=1)) if s.size > 1 else 0.0,
                   p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   max_ms=float(s.max()), min_ms=float(s.min()), runs=int(s.size),
                   samples_ms=[float(x) for x in s])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyStats":
        return cls(mean_ms=float(d["mean_ms"]), std_ms=float(d["std_ms"]), p50_ms=float(d["p50_ms"]),
                   p90_ms=float(d["p90_ms"]), p99_ms=float(d["p99_ms"]), max_ms=float(d["max_ms"]),
                   min_ms=float(d["min_ms"]), runs=int(d["runs"]),
                   samples_ms=[float(x) for x in d.get("samples_ms", ())])


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0:
        raise EdgevlaError(f"warmup must be >= 0, got {warmup}")
    if runs < 1:
        raise EdgevlaError(f"runs must be >= 1, got {runs}")


def time_calls(fn: Callable[[], Any], warmup: int, runs: int,
               clock: Clock = time.perf_counter_ns) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; milliseconds per timed call."""
    _check_counts(warmup, runs)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = clock()
        fn()
        samples.append((clock() - t0) / 1e6)
    return samples


def time_paced_calls(fn: Callable[[], Any], rate_hz: float, warmup: int, runs: int,
                     clock: Clock = time.perf_counter_ns,
                     sleep: Callable[[float], None] = time.sleep) -> list[float]:
    """As :func:`time_calls`, but each call starts on a grid of ``1 / rate_hz`` seconds, idle until then, as a
    control loop calls its policy. Back-to-back calls find the caches, the CPU and the kernel threads as the
    last call left them; paced ones find what the idle period left, which is what the robot sees (on the
    2-vCPU build machine a ResNet-18 took 0.9 ms back to back and 2.2 ms once per 20 ms). A call that
    overruns its slot moves the grid: the next one starts at once, not to catch up."""
    _check_counts(warmup, runs)
    if not rate_hz or not rate_hz > 0:
        raise EdgevlaError(f"the call rate must be a positive frequency in Hz, got {rate_hz}")
    period = int(round(1e9 / rate_hz))
    samples: list[float] = []
    due = clock()
    for i in range(warmup + runs):
        wait = due - clock()
        if wait > 0:
            sleep(wait / 1e9)
        t0 = clock()
        fn()
        t1 = clock()
        if i >= warmup:
            samples.append((t1 - t0) / 1e6)
        due = max(due + period, t1)
    return samples


def measure_latency(fn: Callable[[], Any], warmup: int = 10, runs: int = 100,
                    clock: Clock = time.perf_counter_ns, rate_hz: float | None = None) -> LatencyStats:
    """Time ``fn()`` (one complete inference, inputs prepared beforehand): back to back, or with ``rate_hz``
    one call per period (:func:`time_paced_calls`)."""
    if rate_hz is not None:
        return LatencyStats.from_samples(time_paced_calls(fn, rate_hz, warmup, runs, clock))
    return LatencyStats.from_samples(time_calls(fn, warmup, runs, clock))


def time_in_rounds(calls: Mapping[str, Callable[[], Any]], *, rounds: int, runs: int, warmup: int,
                   after_round: Callable[[int, Mapping[str, list[LatencyStats]]], None] | None = None,
                   ) -> dict[str, list[LatencyStats]]:
    """Each call timed (:func:`measure_latency`) once a round, every call in turn, for ``rounds`` rounds: a
    drift of a shared machine hits all of them alike. Each call's stats, round by round; ``after_round(r,
    stats)`` sees them after each round."""
    stats: dict[str, list[LatencyStats]] = {name: [] for name in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            stats[name].append(measure_latency(fn, warmup=warmup, runs=runs))
        if after_round is not None:
            after_round(r, stats)
    return stats


@dataclass(frozen=True)
class DeadlineReport:
    """How often a call overran the time the control loop allows it."""

    period_ms: float       # 1000 / control rate
    budget_ms: float       # allowed latency; the period unless a tighter budget was given
    misses: int            # samples strictly over budget
    miss_rate: float       # misses / samples
    worst_slack_ms: float  # budget - slowest sample; negative when a deadline was missed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeadlineReport":
        return cls(period_ms=float(d["period_ms"]), budget_ms=float(d["budget_ms"]), misses=int(d["misses"]),
                   miss_rate=float(d["miss_rate"]), worst_slack_ms=float(d["worst_slack_ms"]))


def deadline_misses(stats_or_samples: LatencyStats | Sequence[float], control_rate_hz: float,
                    budget_ms: float | None = None) -> DeadlineReport:
    """Count samples over the latency budget of a loop running at ``control_rate_hz``.

    The budget defaults to the full control period; pass a smaller
    ``budget_ms`` when the loop also spends time on sensing and actuation.
    """
    if isinstance(stats_or_samples, LatencyStats):
        samples = stats_or_samples.samples_ms
        if not samples:
            raise EdgevlaError("these latency statistics kept no samples: deadline misses need the samples")
    else:
        samples = list(stats_or_samples)
    if not samples:
        raise EdgevlaError("deadline misses need at least one latency sample")
    if not control_rate_hz or control_rate_hz <= 0:
        raise EdgevlaError(f"control rate must be a positive frequency in Hz, got {control_rate_hz}")
    period = 1000.0 / float(control_rate_hz)
    budget = period if budget_ms is None else float(budget_ms)
    if budget <= 0:
        raise EdgevlaError(f"latency budget must be positive milliseconds, got {budget_ms}")
    s = np.asarray(samples, dtype=np.float64)
    misses = int(np.count_nonzero(s > budget))
    return DeadlineReport(period_ms=period, budget_ms=budget, misses=misses, miss_rate=misses / s.size,
                          worst_slack_ms=float(budget - s.max()))


def samples_per_second(batch: int, samples_ms: Sequence[float]) -> float:
    """Throughput N / T: ``batch`` samples per call over the summed call time."""
    total_s = float(np.sum(samples_ms)) / 1000.0
    if total_s <= 0:
        raise EdgevlaError("throughput needs a positive total time")
    return batch * len(samples_ms) / total_s


def throughput(fn_for_batch: Callable[[int], Callable[[], Any]], batch_sizes: Iterable[int],
               runs: int = 20, warmup: int = 3,
               clock: Clock = time.perf_counter_ns) -> dict[int, float]:
    """Samples per second at each batch size.

    ``fn_for_batch(b)`` prepares inputs of batch ``b`` and returns a callable
    that runs one inference on them, so input preparation is not timed.
    """
    result: dict[int, float] = {}
    for b in batch_sizes:
        if int(b) != b or b < 1:
            raise EdgevlaError(f"batch sizes must be positive integers, got {b}")
        b = int(b)
        result[b] = samples_per_second(b, time_calls(fn_for_batch(b), warmup, runs, clock))
    return result
