"""A physics simulator as the closed-loop task: MuJoCo's reacher (``tests/mujoco_reacher.py``) under
``evaluate.env``, its episodes against a plain Gymnasium loop, and builds gated on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium.envs.mujoco.reacher_v5")

from edgevla.backends import make_runner  # noqa: E402
from edgevla.cli import main  # noqa: E402
from edgevla.pipeline import BuildRequest, action_fn, build  # noqa: E402
from edgevla.task import evaluate  # noqa: E402
from edgevla.task.user_env import EnvTask  # noqa: E402
from mujoco_reacher import CHUNK, LIMIT, expert, make_reacher_env, make_reacher_policy  # noqa: E402

ENV = "mujoco_reacher:make_reacher_env"
POLICY = "mujoco_reacher:make_reacher_policy"

# The policy trains for ~10 s in each process that runs these tests; on one torch thread, the episodes of a
# chaotic simulator do not hang on how a busy machine's BLAS split a sum.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


@pytest.fixture(scope="module")
def policy():
    return make_reacher_policy()


@pytest.fixture
def task(policy):
    t = EnvTask(ENV, policy.spec)
    yield t
    t.close()


def reference_episodes(act, n: int, seed: int, execute: int) -> tuple[list[bool], list[int]]:
    """``n`` episodes of the reacher stepped by a plain Gymnasium loop, all queried together every ``execute``
    steps: each episode's success and steps."""
    envs = [make_reacher_env() for _ in range(n)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    done, success, steps = [False] * n, [False] * n, [0] * n
    while not all(done):
        chunks = act({"state": np.stack(obs).astype(np.float32)})
        for h in range(execute):
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                obs[i], _, terminated, truncated, info = env.step(np.clip(chunks[i, h], -1.0, 1.0).astype(np.float32))
                steps[i] += 1
                success[i] |= info["is_success"]
                done[i] = terminated or truncated
            if all(done):
                break
    return success, steps


def test_the_analytic_expert_reaches_and_a_limp_arm_does_not(task):
    def closed_loop_expert(obs):  # a fresh torque every step: the chunk's first action, executed alone
        return np.repeat(expert(obs["state"])[:, None], CHUNK, axis=1)

    assert evaluate(closed_loop_expert, task, episodes=40, execute=1).success_rate == 1.0
    limp = evaluate(lambda obs: np.zeros((len(obs["state"]), CHUNK, 2)), task, episodes=40)
    assert limp.success_rate == 0.0 and limp.mean_steps == LIMIT  # Gymnasium's TimeLimit ended every episode


@pytest.mark.parametrize("execute", [1, 4])
def test_the_evaluator_steps_mujoco_episodes_as_a_plain_gymnasium_loop_does(policy, task, execute):
    act = action_fn(make_runner("torch", policy=policy))
    ours = evaluate(act, task, episodes=24, seed=7, batch=24, execute=execute)
    successes, steps = reference_episodes(act, 24, seed=7, execute=execute)
    assert ours.successes == successes and ours.mean_steps == np.mean(steps)
    assert ours.success_rate >= 0.95  # the cloned policy reaches, in chunks of 4 too


def test_a_late_chunk_holds_zero_torque_and_the_arm_coasts_to_rest(policy, task):
    act = action_fn(make_runner("torch", policy=policy))
    on_time = evaluate(act, task, episodes=50, execute=4)
    late = evaluate(act, task, episodes=50, execute=4, latency_ticks=2)
    assert late.success_rate >= 0.9 and late.mean_steps > on_time.mean_steps  # two held ticks a chunk
    envs = task._calls._envs
    assert all(np.array_equal(env.hold_action(), np.zeros(2, np.float32)) for env in envs)


def test_mujoco_episodes_in_worker_processes_give_what_this_process_gives(policy):
    act = action_fn(make_runner("torch", policy=policy))
    here, there = EnvTask(ENV, policy.spec), EnvTask(ENV, policy.spec, workers=2)
    try:
        for loop in ({}, {"latency_ticks": 1, "asynchronous": True}):
            assert evaluate(act, there, episodes=20, seed=3, batch=10, **loop) == \
                evaluate(act, here, episodes=20, seed=3, batch=10, **loop)
    finally:
        there.close()
        here.close()


def test_builds_are_gated_in_mujoco_and_pruning_recovers_on_the_originals_rollouts(tests_on_path, fast, tmp_path,
                                                                                 capsys):
    settings = {**fast, "evaluate.env": ENV, "evaluate.tolerance.max_ticks": 1}
    out = tmp_path / "reacher-structured"
    result = build(BuildRequest(target="x86-64-cpu", policy=POLICY, output=str(out),
                                overrides={**settings, "prune.method": "structured", "prune.amount": 0.5}))
    extra = result.report["extra"]
    recovery = extra["prune"]["recovery"]
    assert recovery["before"]["success"] < 0.5 and recovery["recovered"]  # half the neurons gone broke it
    success = {k: v["success_rate"] for k, v in extra["evaluate"].items()}
    assert success["original/torch"] >= 0.98 and success["built/onnxruntime"] >= success["original/torch"] - 0.02
    assert extra["closed_loop_task"] == ENV

    capsys.readouterr()
    late = ["eval", str(out), "--episodes", "30", "--latency-ticks", "1", "--async", "--json"]
    assert main(late) == 0
    here = json.loads(capsys.readouterr().out)
    assert main([*late, "--env-workers", "2"]) == 0
    there = json.loads(capsys.readouterr().out)
    assert here["task"] == ENV and here["latencies"] == there["latencies"]  # the bundle's simulator, anywhere
    assert here["latencies"][0]["success_rate"] >= 0.6  # a compressed chunk late by a tick: less precise (see note)
