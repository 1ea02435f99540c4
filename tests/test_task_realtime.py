"""Closed-loop success in real time (edgevla eval --realtime): episodes one at a time at the control rate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgevla.backends import make_runner
from edgevla.cli import main
from edgevla.pipeline import BuildRequest, action_fn, build
from edgevla.task import evaluate
from edgevla.task.realtime import evaluate_realtime
from edgevla.task.user_env import EnvTask
from user_envs import make_reach_policy

ENV = "user_envs:make_reach_env"
RATE = 20.0  # the reach policy's control rate


@pytest.fixture(scope="module")
def policy():
    return make_reach_policy()


def test_a_fast_policy_in_real_time_does_what_the_evaluator_says(policy):
    act = action_fn(make_runner("torch", policy=policy))
    task = EnvTask(ENV, policy.spec)
    r = evaluate_realtime(act, task, RATE, episodes=6, seed=77)
    assert r.result.episodes == 6 and r.result.success_rate >= 5 / 6
    stats = r.loop.stats
    assert stats.ticks == round(r.result.mean_steps * 6)  # one command a tick, each a step of its episode
    assert stats.chunks >= 6 and len(r.loop.command_ms) == stats.ticks
    d = r.to_dict()
    assert d["schedule"] == "sync" and d["rate_hz"] == RATE and d["command_ms"]["max"] >= d["command_ms"]["p50"]
    if stats.held == 0 and stats.max_delay_ticks == 0:  # every chunk in within its tick: the evaluator's 0-tick loop
        assert r.result == evaluate(act, task, episodes=6, seed=77, batch=1)


def test_a_policy_slower_than_the_period_holds_the_robot(policy):
    act = action_fn(make_runner("torch", policy=policy))

    def slow(obs):
        time.sleep(1.2 / RATE)  # each query more than one period
        return act(obs)

    r = evaluate_realtime(slow, EnvTask(ENV, policy.spec), RATE, episodes=2, seed=5, warmup=0)
    assert r.loop.stats.max_delay_ticks >= 1 and r.loop.stats.held >= 2 * 1  # at least each episode's first tick
    lead = evaluate_realtime(slow, EnvTask(ENV, policy.spec), RATE, episodes=2, seed=5, warmup=0, lead=2)
    assert lead.to_dict()["schedule"] == "async" and lead.to_dict()["lead"] == 2


@pytest.fixture(scope="module")
def reach_bundle(tmp_path_factory, fast):
    tests = str(Path(__file__).parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(tests)
        mp.setenv("PYTHONPATH", tests)
        out = tmp_path_factory.mktemp("reach") / "w8a8"
        build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(out),
                           overrides={**fast, "evaluate.env": ENV, "quantize.format": "w8a8"}))
        yield out


def test_eval_realtime(reach_bundle, capsys):
    assert main(["eval", str(reach_bundle), "--realtime", "--episodes", "4", "--lead", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == ENV and data["realtime"]["schedule"] == "async" and data["realtime"]["episodes"] == 4
    assert data["without_latency"]["episodes"] == 4 and data["without_latency"]["success_rate"] == 1.0
    assert main(["eval", str(reach_bundle), "--realtime", "--episodes", "2", "--ensemble", "0.01"]) == 0
    said = capsys.readouterr().out
    assert "real time at 20 Hz (onnxruntime, temporal ensembling m = 0.01): success" in said
    assert "the same episodes without latency (every chunk in at once): success 100.0%" in said


@pytest.mark.parametrize("argv, message", [
    (["--lead", "1"], "--lead sets the schedule of the real-time loop: give --realtime too"),
    (["--realtime", "--async"], "the asynchronous schedule is --lead N"),
    (["--realtime", "--lead", "-1"], "--lead must be >= 0, got -1"),
    (["--realtime", "--lead", "1", "--ensemble", "0.01"], "--lead does not apply to --ensemble"),
    (["--realtime", "--latency-ticks", "1"], "argument --latency-ticks: not allowed with argument --realtime"),
])
def test_eval_realtime_refuses_what_does_not_apply(reach_bundle, capsys, argv, message):
    assert main(["eval", str(reach_bundle), "--episodes", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
