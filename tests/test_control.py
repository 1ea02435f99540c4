"""The chunk controller: which action each control tick gets, under every schedule and latency."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from edgevla.control import (ChunkController, SampledLatency, SimulatedLatency, TemporalEnsemble, ThreadedInference,
                             latency_ticks, run_paced)
from edgevla.errors import EdgevlaError
from edgevla.task import TaskConfig, evaluate
from edgevla.task.tabletop import TabletopEnv, clip_norm

HORIZON = 8


class NumberedChunks:
    """Query q answers a chunk whose action h is 100 q + h: a tick's action names its query and index."""

    def __init__(self, horizon: int = HORIZON) -> None:
        self.horizon = horizon
        self.queries = 0
        self.seen: list[float] = []

    def __call__(self, obs):
        self.seen.append(float(obs["x"][0, 0]))
        q, self.queries = self.queries, self.queries + 1
        return (100.0 * q + np.arange(self.horizon, dtype=np.float64)).reshape(1, self.horizon, 1)


def schedule(controller: ChunkController, ticks: int) -> list[int | None]:
    out = []
    for tick in range(ticks):
        action = controller.step({"x": np.full((1, 1), tick, np.float32)})
        out.append(None if action is None else int(action[0, 0]))
    return out


def simulated(execute: int, lead: int, latency: int) -> tuple[ChunkController, NumberedChunks]:
    policy = NumberedChunks()
    return ChunkController(policy, execute=execute, lead=lead, inference=SimulatedLatency(latency)), policy


def test_no_latency_runs_each_chunk_from_its_first_action():
    controller, policy = simulated(execute=4, lead=0, latency=0)
    assert schedule(controller, 10) == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201]
    assert policy.seen == [0, 4, 8]  # observed at the query ticks
    assert controller.stats.to_dict() == {"ticks": 10, "queries": 3, "chunks": 3, "held": 0, "held_at_start": 0,
                                          "mean_delay_ticks": 0.0, "max_delay_ticks": 0}


def test_synchronous_holds_while_the_policy_runs_then_uses_the_whole_chunk():
    controller, _ = simulated(execute=4, lead=0, latency=2)
    assert schedule(controller, 14) == [None, None, 0, 1, 2, 3, None, None, 100, 101, 102, 103, None, None]
    assert controller.stats.held == 6 and controller.stats.held_at_start == 2
    assert controller.stats.mean_delay_ticks == 2


def test_asynchronous_queries_early_and_skips_the_actions_moved_through():
    controller, policy = simulated(execute=4, lead=2, latency=2)
    # Query 1 starts at tick 4 with 2 actions of query 0 left; it arrives at tick 6, after the robot moved
    # 2 ticks, so its actions 2..5 run. Only the first chunk is waited for.
    assert schedule(controller, 12) == [None, None, 0, 1, 2, 3, 102, 103, 104, 105, 202, 203]
    assert policy.seen == [0, 4, 8]
    assert controller.stats.held == 2 and controller.stats.max_delay_ticks == 2


def test_a_latency_past_the_horizon_holds_and_skips_only_what_was_moved():
    # execute 4 + lead 6 > H = 8: query 1 starts at tick 7 (3 actions left), arrives at tick 13; the robot
    # moved 3 ticks (7, 8, 9) and held 3 (10-12), so query 1 runs from its action 3.
    controller, _ = simulated(execute=4, lead=6, latency=6)
    assert schedule(controller, 15) == [None] * 6 + [0, 1, 2, 3] + [None] * 3 + [103, 104]


def test_a_late_chunk_is_cut_at_the_horizon():
    controller, _ = simulated(execute=6, lead=4, latency=4)
    # query 1 at tick 6 (4 left), used at tick 10 from action 4: only 4..7 exist; query 2 starts at tick 11
    # (3 left), is late by a tick, and runs from action 3
    assert schedule(controller, 16) == [None] * 4 + [0, 1, 2, 3, 4, 5, 104, 105, 106, 107, None, 203]


def test_the_observation_is_read_only_when_a_query_starts():
    controller, _ = simulated(execute=4, lead=0, latency=0)
    reads = []

    def camera():
        reads.append(len(reads))
        return {"x": np.zeros((1, 1), np.float32)}

    for _ in range(9):
        controller.step(camera)
    assert len(reads) == 3


def test_reset_starts_a_new_episode():
    controller, _ = simulated(execute=4, lead=2, latency=1)
    schedule(controller, 5)
    controller.reset()
    assert controller.stats.ticks == 0
    assert schedule(controller, 3)[0] is None  # the chunk of the old episode is gone


def ensemble_schedule(m: float, latency: int, ticks: int) -> list[float | None]:
    ensemble = TemporalEnsemble(NumberedChunks(), m=m, inference=SimulatedLatency(latency))
    out = []
    for tick in range(ticks):
        action = ensemble.step({"x": np.full((1, 1), tick, np.float32)})
        out.append(None if action is None else float(action[0, 0]))
    return out


def test_temporal_ensembling_weighs_every_chunks_prediction_oldest_first():
    # a query every tick; tick t gets query k's action t - k, weighted exp(-m i) with i = 0 for the oldest
    m = math.log(2)
    got = ensemble_schedule(m, latency=0, ticks=3)
    assert got[0] == 0.0
    assert got[1] == pytest.approx((1 * 1 + 0.5 * 100) / 1.5)
    assert got[2] == pytest.approx((1 * 2 + 0.5 * 101 + 0.25 * 200) / 1.75)
    # past the horizon only the last H queries have a say
    uniform = ensemble_schedule(0.0, latency=0, ticks=12)
    assert uniform[11] == pytest.approx(np.mean([100 * k + (11 - k) for k in range(4, 12)]))


def test_temporal_ensembling_indexes_chunks_by_the_robots_moves():
    # latency 2: query 0 in at tick 2 (the robot held, so its action 0 runs), query 1 (asked at tick 3 after one
    # move) in at tick 5, when the robot has moved 3 ticks: query 0's action 3 and query 1's action 2
    assert ensemble_schedule(0.0, latency=2, ticks=6) == [None, None, 0.0, 1.0, 2.0, 52.5]


def test_temporal_ensembling_refuses_a_bad_weight():
    for m in (-0.1, math.nan, True):
        with pytest.raises(EdgevlaError, match="ensemble weight"):
            TemporalEnsemble(NumberedChunks(), m=m, inference=SimulatedLatency(0))


class Gated:
    """A policy that answers only when let through, one chunk of numbered actions per query."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inner = NumberedChunks()

    def __call__(self, obs):
        assert self.gate.wait(30)
        return self.inner(obs)


def test_threaded_inference_never_blocks_the_loop_and_skips_what_was_moved():
    policy = Gated()
    with ChunkController(policy, execute=4, lead=2, inference=ThreadedInference()) as controller:
        assert schedule(controller, 3) == [None, None, None]  # the first query is still running: hold
        policy.gate.set()
        first = controller.step({"x": np.zeros((1, 1), np.float32)}, wait=30)
        assert int(first[0, 0]) == 0  # the robot has not moved: the chunk runs from its first action
        assert int(controller.step({"x": np.zeros((1, 1), np.float32)})[0, 0]) == 1
        # two actions left = lead: query 1 starts now, while action 2 and 3 run
        policy.gate.clear()
        moved = [int(controller.step({"x": np.zeros((1, 1), np.float32)})[0, 0]) for _ in range(2)]
        assert moved == [2, 3]
        assert controller.step({"x": np.zeros((1, 1), np.float32)}) is None  # late: hold
        policy.gate.set()
        late = controller.step({"x": np.zeros((1, 1), np.float32)}, wait=30)
        assert int(late[0, 0]) == 102  # query 1's action 2: the robot moved 2 ticks since it started
        assert controller.stats.held == 4 and controller.stats.queries == 2


def test_threaded_inference_sees_the_observation_as_it_was_at_the_query():
    policy = Gated()
    obs = {"x": np.full((1, 1), 7, np.float32)}
    with ChunkController(policy, execute=4, inference=ThreadedInference()) as controller:
        assert controller.step(obs) is None
        obs["x"][:] = -1  # the robot's buffer is reused for the next frame
        policy.gate.set()
        controller.step(obs, wait=30)
    assert policy.inner.seen == [7.0]


def test_a_failing_policy_raises_in_the_control_loop():
    def broken(obs):
        raise EdgevlaError("observation 'x' has shape (1, 2), the policy expects (batch, 3)")

    with ChunkController(broken, execute=2, inference=ThreadedInference()) as controller:
        with pytest.raises(EdgevlaError, match="expects"):
            controller.step({"x": np.zeros((1, 2), np.float32)}, wait=30)


@pytest.mark.parametrize("kwargs, message", [
    ({"execute": 0}, "execute must be an integer >= 1"),
    ({"execute": 2, "lead": -1}, "lead must be an integer >= 0"),
    ({"execute": True}, "execute must be"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(EdgevlaError, match=message):
        ChunkController(NumberedChunks(), **kwargs, inference=SimulatedLatency(0))


def test_bad_chunks_and_latencies_are_refused():
    with pytest.raises(EdgevlaError, match="whole number of ticks"):
        SimulatedLatency(-1)
    flat = ChunkController(lambda obs: np.zeros((1, 8)), execute=2, inference=SimulatedLatency(0))
    with pytest.raises(EdgevlaError, match=r"\(batch, chunk_size, action_dim\)"):
        flat.step({})
    short = ChunkController(NumberedChunks(horizon=3), execute=4, inference=SimulatedLatency(0))
    with pytest.raises(EdgevlaError, match="execute = 4 actions of a chunk of 3"):
        short.step({"x": np.zeros((1, 1), np.float32)})
    short.close()
    with pytest.raises(EdgevlaError, match="closed"):
        short.step({})


def test_sampled_latency_draws_each_querys_ticks_from_the_measured_ones():
    sampled = SampledLatency([0, 3, 3], seed=7)
    delays = [sampled.delay() for _ in range(600)]
    assert set(delays) == {0, 3} and 0.6 < delays.count(3) / len(delays) < 0.73  # as often as listed
    again = SampledLatency([0, 3, 3], seed=7)
    assert [again.delay() for _ in range(600)] == delays  # seeded: the same draws in the same order
    controller = ChunkController(NumberedChunks(), execute=2, inference=SampledLatency([0, 3], seed=7))
    schedule(controller, 400)
    assert 0 < controller.stats.mean_delay_ticks < 3 and controller.stats.max_delay_ticks == 3
    # one value to draw from is that fixed latency
    fixed, _ = simulated(execute=4, lead=2, latency=2)
    drawn = ChunkController(NumberedChunks(), execute=4, lead=2, inference=SampledLatency([2, 2, 2]))
    assert schedule(drawn, 20) == schedule(fixed, 20)


@pytest.mark.parametrize("draws", [[], [-1], [1.5], [True]])
def test_sampled_latency_refuses_what_is_not_ticks(draws):
    with pytest.raises(EdgevlaError, match="no latencies|whole numbers of ticks"):
        SampledLatency(draws)


@pytest.mark.parametrize("ms, hz, ticks", [(0, 50, 0), (19, 50, 0), (20, 50, 0), (20.5, 50, 1), (25, 50, 1),
                                           (45, 50, 2), (33.3, 30, 0), (33.4, 30, 1), (100, 10, 0), (250, 10, 2)])
def test_latency_in_ticks(ms, hz, ticks):
    assert latency_ticks(ms, hz) == ticks


@pytest.mark.parametrize("ms, hz", [(-1, 50), (math.nan, 50), (math.inf, 50), (10, 0), (10, math.nan)])
def test_latency_in_ticks_refuses_nonsense(ms, hz):
    with pytest.raises(EdgevlaError):
        latency_ticks(ms, hz)


class FakeClock:
    """Seconds that pass only when the loop sleeps or a query says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def test_the_paced_loop_keeps_the_control_rate():
    clock = FakeClock()
    controller, _ = simulated(execute=4, lead=0, latency=1)
    loop = run_paced(controller, lambda: {"x": np.zeros((1, 1), np.float32)}, 50.0, 10, clock=clock,
                     sleep=clock.sleep)
    assert clock.sleeps == [0.02] * 9  # one period between tick starts, none before the first
    assert loop.command_ms == [0.0] * 10 and loop.stats.ticks == 10
    assert loop.stats.held == 2 and loop.stats.held_at_start == 1  # 1 tick late: held before each of 2 chunks
    report = loop.to_dict()
    assert report["rate_hz"] == 50 and report["command_ms"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_a_tick_that_overruns_moves_the_grid():
    clock = FakeClock()
    numbered = NumberedChunks()

    def slow_second_query(obs):
        if numbered.queries == 1:
            clock.now += 0.03  # 1.5 periods of 20 ms
        return numbered(obs)

    controller = ChunkController(slow_second_query, execute=2, inference=SimulatedLatency(0))
    loop = run_paced(controller, lambda: {"x": np.zeros((1, 1), np.float32)}, 50.0, 5, clock=clock,
                     sleep=clock.sleep)
    # ticks 0, 1 run query 0; tick 2's query takes 30 ms; tick 3 starts at once, then the grid resumes
    assert [round(ms, 6) for ms in loop.command_ms] == [0.0, 0.0, 30.0, 0.0, 0.0]
    assert [round(s, 6) for s in clock.sleeps] == [0.02, 0.02, 0.02]


def test_the_paced_loop_commands_the_robot_within_each_tick():
    """The robot's side of a tick (``command``) gets each step's action, its time is kept out of the next ticks'
    waits, a tick it makes overrun is counted, and it ends the loop."""
    clock = FakeClock()
    waits = []

    class Recorded(SimulatedLatency):
        def poll(self, handle, tick, wait):
            waits.append(None if wait is None else round(wait, 9))
            return super().poll(handle, tick, wait)

    controller = ChunkController(NumberedChunks(), execute=4, inference=Recorded(1))
    sent = []

    def command(action):
        sent.append(None if action is None else int(action[0, 0]))
        clock.now += 0.025 if len(sent) == 3 else 0.005  # the robot's side: 5 ms; the third tick's 25 ms
        return len(sent) == 7

    loop = run_paced(controller, lambda: {"x": np.zeros((1, 1), np.float32)}, 50.0, 100, command=command,
                     clock=clock, sleep=clock.sleep)
    assert sent == [None, 0, 1, 2, 3, None, 100]  # 1 tick late: held before each chunk
    assert loop.stats.ticks == 7 and loop.overran == 1  # only the third tick ran past its 20 ms
    # a starving tick waits for its chunk until the period's end less the longest command so far (none at first)
    assert waits[0] == 0.02 and waits[-2] == 0.0  # tick 5: 20 ms less 25 ms reserved
    assert [round(s, 6) for s in clock.sleeps] == [0.015, 0.015, 0.015, 0.015, 0.015]  # none after the overrun


def test_a_real_paced_loop_on_a_worker_thread():
    controller = ChunkController(NumberedChunks(), execute=4, lead=1, inference=ThreadedInference())
    with controller:
        loop = run_paced(controller, lambda: {"x": np.zeros((1, 1), np.float32)}, 200.0, 20)
    assert loop.stats.ticks == 20 and loop.stats.queries >= 5 and len(loop.command_ms) == 20
    assert min(loop.command_ms) >= 0
    with pytest.raises(EdgevlaError, match="ticks must be"):
        run_paced(controller, dict, 10.0, 0)
    with pytest.raises(EdgevlaError, match="control rate"):
        run_paced(controller, dict, 0.0, 3)


# --------------------------------------------------------------------------- the closed-loop evaluator


CFG = TaskConfig(max_steps=120)


def receding_horizon_reference(policy, cfg, seed, execute):
    """The plain receding-horizon loop, no controller: per-episode steps and success, smoothness."""
    env = TabletopEnv(cfg, 1, seed=seed)
    prev, jerk = None, []
    while not env.done.all():
        chunk = np.asarray(policy(env.observe()), dtype=np.float64)
        for h in range(execute):
            if env.done.all():
                break
            a = clip_norm(chunk[:, h], cfg.max_step)
            if prev is not None:
                jerk.append(float(np.linalg.norm(a - prev, axis=-1).sum()))
            env.step(a)
            prev = a
    return int(env.steps[0]), bool(env.success[0]), (sum(jerk) / max(len(jerk), 1))


@pytest.fixture(scope="module")
def tiny_policy():
    import torch

    from edgevla.models.zoo import load_policy

    policy = load_policy("tiny-vla").policy.eval()

    def act(obs):
        with torch.no_grad():
            out = policy(**{k: torch.from_numpy(np.asarray(v)) for k, v in obs.items()})
        return policy.spec.denormalize(out.numpy())

    return act


def test_the_evaluator_without_latency_is_the_plain_receding_horizon_loop(tiny_policy):
    for seed in range(3):
        steps, success, smoothness = receding_horizon_reference(tiny_policy, CFG, seed, execute=3)
        result = evaluate(tiny_policy, CFG, episodes=1, seed=seed, execute=3, batch=1)
        assert (result.mean_steps, result.successes, result.smoothness) == (steps, [success], smoothness)


@pytest.mark.parametrize("latency", [1, 3])
def test_synchronous_latency_inserts_holds_and_nothing_else(tiny_policy, latency):
    # The world is static and the robot holds while the policy runs, so each query sees what it saw without
    # latency: the same moves, with `latency` held steps before each chunk.
    for seed in range(3):
        moves, success, _ = receding_horizon_reference(tiny_policy, CFG, seed, execute=4)
        result = evaluate(tiny_policy, CFG, episodes=1, seed=seed, execute=4, batch=1, latency_ticks=latency)
        assert result.successes == [success]
        assert result.mean_steps == moves + latency * math.ceil(moves / 4)


def test_temporal_ensembling_in_closed_loop(tiny_policy):
    first = evaluate(tiny_policy, CFG, episodes=20, seed=5, ensemble=0.01)
    assert first.success_rate >= 0.9 and first == evaluate(tiny_policy, CFG, episodes=20, seed=5, ensemble=0.01)
    late = evaluate(tiny_policy, CFG, episodes=20, seed=5, ensemble=0.01, latency_ticks=2)
    assert late.success_rate >= 0.9 and late.mean_steps > first.mean_steps


def test_latency_drawn_from_one_value_is_that_latency_and_a_mixture_lies_between(tiny_policy):
    for asynchronous in (False, True):
        fixed = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_ticks=2, asynchronous=asynchronous)
        drawn = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_ticks=2, asynchronous=asynchronous,
                         latency_draws=[2, 2])
        assert drawn == fixed
    none = evaluate(tiny_policy, CFG, episodes=20, seed=5)
    late = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_ticks=3)
    mixed = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_draws=[0, 3])
    # synchronous: every held tick is a step; some queries hold 3 ticks, some none
    assert none.mean_steps < mixed.mean_steps < late.mean_steps


def test_asynchronous_latency_keeps_moving(tiny_policy):
    sync = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_ticks=2)
    asynchronous = evaluate(tiny_policy, CFG, episodes=20, seed=5, latency_ticks=2, asynchronous=True)
    # only the first chunk is waited for: fewer steps than holding before every chunk
    assert asynchronous.mean_steps < sync.mean_steps
    zero = evaluate(tiny_policy, CFG, episodes=20, seed=5, asynchronous=True)
    assert zero == evaluate(tiny_policy, CFG, episodes=20, seed=5)
