"""Latency tolerance: success curves over ticks of latency per schedule, and the ticks a policy tolerates."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.models.zoo import load_policy
from edgevla.pipeline import task_for
from edgevla.task import EvalResult, evaluate
from edgevla.task.tolerance import ToleranceCurve, latency_tolerance, loop_of, same_loop, tolerated_ticks
from edgevla.train import torch_action_fn

pytestmark = pytest.mark.usefixtures("torch_one_thread")
EPISODES = 40


@pytest.fixture(scope="module")
def tiny():
    policy = load_policy("tiny-vla").policy.eval()
    return torch_action_fn(policy), task_for(policy.spec)


def far_end_reversed(policy):
    """The policy with every action past the first 4 of its chunk reversed: a synchronous loop executing 4
    actions a chunk never sees them; one that runs late or ensembles does."""
    def act(obs):
        actions = np.array(policy(obs))
        actions[:, 4:] *= -1
        return actions

    return act


@pytest.mark.parametrize("success, floor, expected", [
    ([1.0, 1.0, 0.5, 1.0], 0.9, 1),      # a later recovery does not count: every latency up to k must hold
    ([0.95, 0.9, 0.9], 0.9, 2),          # at the floor holds
    ([0.89, 1.0], 0.9, None),            # below the floor without latency: none tolerated
    ([1.0], 0.9, 0),
])
def test_tolerated_ticks(success, floor, expected):
    assert tolerated_ticks(success, floor) == expected
    curve = ToleranceCurve("sync", tuple(success), tuple(1.0 for _ in success), floor)
    assert curve.tolerated == expected
    assert curve.probed_to_the_end == (expected == len(success) - 1)


def test_a_far_end_that_is_wrong_costs_async_and_ensemble_not_sync(tiny):
    policy, task = tiny
    bad = latency_tolerance(far_end_reversed(policy), task, max_ticks=2, floor=0.9, episodes=EPISODES)
    good = latency_tolerance(policy, task, max_ticks=2, floor=0.9, episodes=EPISODES)
    assert {s: (c.tolerated, c.probed_to_the_end) for s, c in good.items()} == {
        "sync": (2, True), "async": (2, True), "ensemble": (2, True)}
    assert bad["sync"].success == good["sync"].success == (1.0, 1.0, 1.0)
    assert bad["async"].success[0] == 1.0  # no latency: async is the sync loop
    assert bad["async"].tolerated == 0 and bad["async"].success[2] < 0.6
    assert bad["ensemble"].success[1] < 0.5 and bad["ensemble"].tolerated in (0, None)
    # every point is the evaluator's own figure on the same episodes
    for schedule in ("async", "ensemble"):
        direct = evaluate(far_end_reversed(policy), task, episodes=EPISODES, seed=10_000,
                          **loop_of(schedule, 1, 4, 0.01))
        assert bad[schedule].success[1] == direct.success_rate
        assert bad[schedule].mean_steps[1] == direct.mean_steps


def test_known_results_are_not_run_again_and_progress_counts_every_point(tiny):
    policy, task = tiny
    calls = []

    def counted(obs):
        calls.append(1)
        return policy(obs)

    marker = EvalResult(episodes=EPISODES, success_rate=0.123, mean_steps=9.0, smoothness=0.0, successes=[])
    advanced = []
    curves = latency_tolerance(counted, task, max_ticks=1, floor=0.1, schedules=("async", "sync"),
                               episodes=EPISODES, known={("sync", 0): marker}, progress=advanced.append)
    # async at 0 ticks is the sync loop: both take the known result, neither is run
    assert curves["async"].success[0] == curves["sync"].success[0] == 0.123
    assert sum(advanced) == 2 * 2 * EPISODES and list(curves) == ["async", "sync"]
    assert calls  # the two points not known ran


def test_loop_keys_and_bad_arguments(tiny):
    assert same_loop("async", 0) == ("sync", 0) and same_loop("async", 1) == ("async", 1)
    assert same_loop("ensemble", 0) == ("ensemble", 0)
    assert loop_of("ensemble", 2, 4, 0.05) == {"execute": 4, "latency_ticks": 2, "asynchronous": False,
                                               "ensemble": 0.05}
    policy, task = tiny
    with pytest.raises(ValueError, match="max_ticks"):
        latency_tolerance(policy, task, max_ticks=-1, floor=0.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        latency_tolerance(policy, task, max_ticks=0, floor=0.5, schedules=("later",))


def test_to_dict_is_json_ready():
    curve = ToleranceCurve("async", (1.0, 0.5), (6.0, 9.5), 0.9)
    assert curve.to_dict() == {"success": [1.0, 0.5], "mean_steps": [6.0, 9.5], "tolerated": 0, "at_least": False}
