"""Latency statistics, deadline misses and throughput on synthetic samples and a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.errors import EdgevlaError
from edgevla.metrics.latency import (DeadlineReport, LatencyStats, deadline_misses, measure_latency,
                                     samples_per_second, throughput, time_paced_calls)


class FakeClock:
    """Nanosecond clock that only moves when the code under test calls ``advance``."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += int(round(ms * 1e6))


def test_statistics_match_numpy_on_random_samples():
    samples = np.random.default_rng(0).lognormal(mean=1.5, sigma=0.4, size=257)
    stats = LatencyStats.from_samples(samples)
    assert stats.runs == 257
    assert stats.mean_ms == pytest.approx(samples.mean())
    assert stats.std_ms == pytest.approx(samples.std(ddof=1))
    for q, value in ((50, stats.p50_ms), (90, stats.p90_ms), (99, stats.p99_ms)):
        assert value == pytest.approx(np.percentile(samples, q))
    assert (stats.min_ms, stats.max_ms) == (samples.min(), samples.max())
    assert stats.samples_ms == pytest.approx(list(samples))


def test_statistics_of_a_hand_computed_list():
    stats = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0])
    # Linear interpolation over sorted [1, 2, 3, 4]: rank q/100 * 3.
    assert (stats.p50_ms, stats.p90_ms, stats.p99_ms) == pytest.approx((2.5, 3.7, 3.97))
    assert stats.mean_ms == 2.5
    assert stats.std_ms == pytest.approx((5 / 3) ** 0.5)
    assert LatencyStats.from_samples([7.5]).std_ms == 0.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [2.0, -1.0], [[1.0, 2.0]]])
def test_bad_samples_are_user_errors(bad):
    with pytest.raises(EdgevlaError):
        LatencyStats.from_samples(bad)


def test_stats_round_trip_through_a_dict():
    stats = LatencyStats.from_samples(np.random.default_rng(1).uniform(1, 9, 31))
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_measure_latency_times_only_the_timed_calls():
    clock = FakeClock()
    durations = iter([50.0, 60.0] + [3.0, 1.5, 2.25, 8.0, 4.0])  # two warm-up calls, then five timed
    stats = measure_latency(lambda: clock.advance(next(durations)), warmup=2, runs=5, clock=clock)
    assert stats.samples_ms == [3.0, 1.5, 2.25, 8.0, 4.0]
    assert stats.max_ms == 8.0 and stats.p50_ms == 3.0


def test_paced_calls_start_on_the_control_period_grid():
    """At 100 Hz each call starts 10 ms after the last one started, idle in between; one that overruns its slot
    moves the grid (the next starts at once, then every 10 ms from there)."""
    clock, starts, slept = FakeClock(), [], []
    durations = iter([2.0, 3.0, 12.0, 1.0, 4.0])  # one warm-up call, then four timed; the third overruns

    def call():
        starts.append(clock.now)
        clock.advance(next(durations))

    def sleep(seconds):
        slept.append(seconds)
        clock.advance(seconds * 1e3)

    samples = time_paced_calls(call, 100.0, warmup=1, runs=4, clock=clock, sleep=sleep)
    assert samples == [3.0, 12.0, 1.0, 4.0]
    t0 = starts[0]
    assert [(s - t0) / 1e6 for s in starts] == [0.0, 10.0, 20.0, 32.0, 42.0]
    assert slept == pytest.approx([0.008, 0.007, 0.009])
    stats = measure_latency(lambda: clock.advance(1.0), warmup=0, runs=3, clock=clock, rate_hz=50.0)
    assert stats.samples_ms == [1.0, 1.0, 1.0]
    with pytest.raises(EdgevlaError, match="positive frequency"):
        time_paced_calls(lambda: None, 0.0, warmup=0, runs=1)


def test_measure_latency_on_the_real_clock():
    stats = measure_latency(lambda: sum(range(2000)), warmup=1, runs=5)
    assert stats.runs == 5 and all(s > 0 for s in stats.samples_ms)
    with pytest.raises(EdgevlaError, match="runs"):
        measure_latency(lambda: None, warmup=0, runs=0)


def test_deadline_misses_count_samples_over_the_period():
    samples = [10.0, 19.9, 20.0, 20.1, 35.0]
    report = deadline_misses(samples, control_rate_hz=50)
    assert report == DeadlineReport(period_ms=20.0, budget_ms=20.0, misses=2, miss_rate=0.4, worst_slack_ms=-15.0)
    tighter = deadline_misses(LatencyStats.from_samples(samples), control_rate_hz=50, budget_ms=15.0)
    assert (tighter.budget_ms, tighter.misses, tighter.miss_rate, tighter.worst_slack_ms) == (15.0, 4, 0.8, -20.0)
    relaxed = deadline_misses(samples, control_rate_hz=10)
    assert (relaxed.period_ms, relaxed.misses, relaxed.worst_slack_ms) == (100.0, 0, 65.0)
    assert DeadlineReport.from_dict(report.to_dict()) == report


@pytest.mark.parametrize("rate, budget", [(0, None), (-5, None), (50, 0.0)])
def test_deadline_misses_reject_bad_rates_and_budgets(rate, budget):
    with pytest.raises(EdgevlaError):
        deadline_misses([1.0, 2.0], rate, budget)


def test_deadline_misses_need_samples():
    stats = LatencyStats.from_dict({**LatencyStats.from_samples([1.0, 2.0]).to_dict(), "samples_ms": []})
    with pytest.raises(EdgevlaError, match="samples"):
        deadline_misses(stats, 50)


def test_samples_per_second_is_n_over_t():
    assert samples_per_second(4, [2.0] * 10) == pytest.approx(4 * 10 / 0.020)


def test_throughput_per_batch_excludes_input_preparation():
    clock = FakeClock()
    prepared = []

    def fn_for_batch(b: int):
        prepared.append(b)
        clock.advance(1000.0)  # preparing inputs is slow but must not count
        return lambda: clock.advance(1.0 + 0.5 * b)  # fixed cost plus per-sample cost

    result = throughput(fn_for_batch, [1, 4, 16], runs=7, warmup=2, clock=clock)
    assert prepared == [1, 4, 16]
    assert result == pytest.approx({b: b / ((1.0 + 0.5 * b) / 1000.0) for b in (1, 4, 16)})
    with pytest.raises(EdgevlaError, match="batch"):
        throughput(fn_for_batch, [0], runs=1, clock=clock)
