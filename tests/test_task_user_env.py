"""A user's simulator as the closed-loop task (evaluate.env): the evaluator, demonstrations, the build, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevla.backends import make_runner
from edgevla.cli import main
from edgevla.compare import row_of
from edgevla.errors import EdgevlaError, GateFailed
from edgevla.pipeline import BuildRequest, action_fn, build, calibration_batches
from edgevla.task import evaluate
from edgevla.task.user_env import SPLIT_SEEDS, EnvTask
from edgevla.spec import PolicySpec, TensorSpec
from user_envs import CHUNK, LIMIT, MAX_STEP, PointReach, expert_chunks, make_reach_policy
from user_policies import ConvPolicy

ENV = "user_envs:make_reach_env"


@pytest.fixture(scope="module")
def policy():
    return make_reach_policy()


@pytest.fixture
def task(policy):
    t = EnvTask(ENV, policy.spec)
    yield t
    t.close()


def expert(obs):
    return expert_chunks(obs["state"])


def test_the_expert_succeeds_and_random_chunks_do_not(task):
    assert evaluate(expert, task, episodes=40).success_rate == 1.0
    rng = np.random.default_rng(0)
    rand = evaluate(lambda obs: rng.uniform(-MAX_STEP, MAX_STEP, (len(obs["state"]), CHUNK, 2)), task, episodes=40)
    assert rand.success_rate < 0.2
    assert rand.mean_steps > 0.8 * LIMIT  # the failures ran until the env truncated them


def test_same_seeds_give_the_same_episodes_to_every_policy(task, policy):
    act = action_fn(make_runner("torch", policy=policy))
    a = evaluate(act, task, episodes=30, seed=5, batch=7)
    b = evaluate(act, task, episodes=30, seed=5, batch=7)
    assert a == b and a.success_rate >= 0.95
    starts = [PointReach().reset(seed=5 + i)[0]["state"] for i in range(3)]
    assert not np.allclose(starts[0], starts[1]) and not np.allclose(starts[1], starts[2])


def test_actions_are_clipped_to_the_action_space_and_the_robot_holds_its_last_while_waiting(policy):
    task = EnvTask(ENV, policy.spec)
    chunk = np.tile(np.array([[0.5, -0.02]]), (CHUNK, 1))  # x beyond the Box's 0.1
    evaluate(lambda obs: np.broadcast_to(chunk, (len(obs["state"]), CHUNK, 2)), task, episodes=1, seed=3,
             execute=2, latency_ticks=1)
    received = np.array(task._calls._envs[0].received)
    # tick 0: nothing in yet, the robot holds (zeros before any action); then 2 executed, 1 held (the last sent)...
    assert np.allclose(received[0], 0.0)
    assert np.allclose(received[1:3], [MAX_STEP, -0.02]) and np.allclose(received[3], [MAX_STEP, -0.02])
    assert np.abs(received).max() <= MAX_STEP + 1e-7


def test_a_gymnasium_env_under_its_time_limit_wrapper(policy):
    pytest.importorskip("gymnasium")
    task = EnvTask("user_envs:make_gym_env", policy.spec)
    act = action_fn(make_runner("torch", policy=policy))
    waiting = evaluate(act, task, episodes=8, latency_ticks=2)
    assert waiting.success_rate == 1.0
    assert sum(env.unwrapped.holds for env in task._calls._envs) > 0  # hold_action found through the wrapper
    stuck = evaluate(lambda obs: np.zeros((len(obs["state"]), CHUNK, 2)), task, episodes=4)
    assert stuck.success_rate == 0.0 and stuck.mean_steps == LIMIT  # TimeLimit truncated every episode


@pytest.mark.parametrize("factory", ["make_reach_env", "make_gym_env"])
def test_episodes_in_worker_processes_give_what_this_process_gives(policy, factory):
    if factory == "make_gym_env":
        pytest.importorskip("gymnasium")
    act = action_fn(make_runner("torch", policy=policy))
    here = EnvTask(f"user_envs:{factory}", policy.spec)
    there = EnvTask(f"user_envs:{factory}", policy.spec, workers=2)
    try:
        for loop in ({}, {"latency_ticks": 2}, {"latency_ticks": 1, "asynchronous": True}):
            assert evaluate(act, there, episodes=11, seed=3, batch=5, **loop) == \
                evaluate(act, here, episodes=11, seed=3, batch=5, **loop)
        here.demonstrator = there.demonstrator = act
        assert np.array_equal(there.split("heldout", 40).observations["state"],
                              here.split("heldout", 40).observations["state"])
        procs = there._calls._procs
        assert len(procs) == 2 and all(p.is_alive() for p in procs)
    finally:
        there.close()
        here.close()
    assert not any(p.is_alive() for p in procs)


@pytest.mark.parametrize("factory, message", [
    ("make_crashing_env", "step\\(\\) raised RuntimeError: the simulator crashed"),
    ("make_dying_env", "environment worker \\d died \\(exit code 3\\)"),
    ("make_no_env", "returned dict, which has no reset"),
])
def test_a_worker_process_failing_is_one_clear_error(policy, factory, message):
    task = EnvTask(f"user_envs:{factory}", policy.spec, workers=2)
    try:
        with pytest.raises(EdgevlaError, match=message):
            evaluate(expert, task, episodes=4)
    finally:
        task.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_camera_images_reach_a_visuomotor_policy(workers):
    """Image observations take the same path as any other (checked against the spec, stacked, through the
    worker's pipe): a convolutional policy's chunks drive the episodes, and a frame of the wrong size is
    one clear error."""
    torch.manual_seed(0)
    conv = ConvPolicy().eval()
    seen = []

    def act(obs):
        seen.append(obs["rgb"].copy())
        return action_fn(make_runner("torch", policy=conv))(obs)

    task = EnvTask("user_envs:make_camera_env", conv.spec, workers=workers)
    try:
        r = evaluate(act, task, episodes=3, seed=11, execute=4)
    finally:
        task.close()
    assert r.episodes == 3 and r.mean_steps > 0
    first = seen[0]
    assert first.shape == (3, 3, 24, 24) and first.dtype == np.float32
    assert first[:, 0].sum() == 3 and first[:, 1].sum() == 3  # each episode's goal and point drawn
    small = TensorSpec("rgb", (3, 32, 32))
    wrong = PolicySpec(observations=(small, conv.spec.observations[1]), action=conv.spec.action)
    with pytest.raises(EdgevlaError, match="observation 'rgb' has shape \\(3, 24, 24\\), the policy's spec declares "
                                           "\\(3, 32, 32\\)"):
        evaluate(act, EnvTask("user_envs:make_camera_env", wrong), episodes=1)


def test_an_episode_the_env_never_ends_is_cut_at_max_steps(policy):
    task = EnvTask(ENV, policy.spec, max_steps=7)
    r = evaluate(lambda obs: np.zeros((len(obs["state"]), CHUNK, 2)), task, episodes=3)
    assert r.success_rate == 0.0 and r.mean_steps == 7


def test_demonstrations_are_the_originals_rollouts_seeded_per_split(task, policy):
    with pytest.raises(EdgevlaError, match="need the original policy"):
        task.split("heldout", 8)
    task.demonstrator = action_fn(make_runner("torch", policy=policy))
    held = task.split("heldout", 50)
    assert held.observations["state"].shape == (50, 4) and held.actions.shape == (50, CHUNK, 2)
    assert np.allclose(held.actions, task.demonstrator(held.observations), atol=1e-6)
    first = PointReach().reset(seed=SPLIT_SEEDS["heldout"])[0]["state"]
    assert np.array_equal(held.observations["state"][0], first)
    calib = task.split("calibration", 50)
    assert not np.isin(calib.observations["state"][:, 2], held.observations["state"][:, 2]).any()  # other goals
    again = EnvTask(ENV, policy.spec)
    again.demonstrator = task.demonstrator
    assert np.array_equal(again.split("heldout", 50).observations["state"], held.observations["state"])
    batches = task.stream(32)
    b = next(batches)
    assert b.observations["state"].shape == (32, 4) and b.actions.shape == (32, CHUNK, 2)


def test_training_rollouts_execute_noisy_actions_under_clean_labels(policy):
    """DART: the train split's rollouts stray from the original's path (noise on the executed actions), and are
    labelled with its clean chunks; the noise is seeded, and 0 rolls out clean."""
    demonstrator = action_fn(make_runner("torch", policy=policy))
    tasks = {noise: EnvTask(ENV, policy.spec, noise=noise) for noise in (0.0, 0.5)}  # 0: the default
    for t in tasks.values():
        t.demonstrator = demonstrator
    clean, noisy = (tasks[n].split("train", 64) for n in (0.0, 0.5))
    assert np.array_equal(clean.observations["state"][:16], noisy.observations["state"][:16])  # the resets
    assert not np.allclose(clean.observations["state"][16:], noisy.observations["state"][16:])
    assert np.allclose(noisy.actions, demonstrator(noisy.observations), atol=1e-6)
    again = EnvTask(ENV, policy.spec, noise=0.5)
    again.demonstrator = demonstrator
    assert np.array_equal(again.split("train", 64).observations["state"], noisy.observations["state"])
    held = {n: tasks[n].split("heldout", 64).observations["state"] for n in tasks}
    assert np.array_equal(held[0.0], held[0.5])  # held-out (and calibration) rollouts stay clean
    with pytest.raises(EdgevlaError, match="evaluate.env_noise must be >= 0"):
        EnvTask(ENV, policy.spec, noise=-1.0)


def test_taylor_pruning_is_refused_on_a_simulators_own_actions(task, policy):
    with pytest.raises(EdgevlaError, match="taylor needs expert actions.*policy's own actions"):
        calibration_batches(policy, policy.spec, task, "taylor")


class _Env(PointReach):
    """PointReach that breaks Gymnasium's API one way."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def reset(self, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        if self.how == "no key":
            return {"qpos": obs["state"]}, info
        if self.how == "shape":
            return {"state": obs["state"][:3]}, info
        if self.how == "reset tuple":
            return obs
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.how == "four":
            return obs, reward, terminated or truncated, info
        if self.how == "no success":
            return obs, reward, terminated, truncated, {}
        if self.how == "raises":
            raise RuntimeError("the simulator crashed")
        return obs, reward, terminated, truncated, info


def make_broken(how):
    return lambda: _Env(how)


@pytest.mark.parametrize("how, message", [
    ("no key", "the observation has no 'state' \\(it has qpos\\)"),
    ("shape", "observation 'state' has shape \\(3,\\), the policy's spec declares \\(4,\\)"),
    ("reset tuple", "reset\\(seed=...\\) must return \\(observation, info\\)"),
    ("four", "step\\(\\) must return \\(observation, reward, terminated, truncated, info\\)"),
    ("no success", "neither 'is_success' nor 'success'"),
    ("raises", "step\\(\\) raised RuntimeError: the simulator crashed"),
])
def test_an_env_that_breaks_the_api_is_one_clear_error(policy, monkeypatch, how, message):
    import user_envs

    monkeypatch.setattr(user_envs, "broken", make_broken(how), raising=False)
    task = EnvTask("user_envs:broken", policy.spec)
    with pytest.raises(EdgevlaError, match=message):
        evaluate(expert, task, episodes=2)


@pytest.mark.parametrize("ref, message", [
    ("user_envs:nothing", "has no callable 'nothing'"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("user_envs", "expected package.module:callable"),
    ("user_envs:expert_chunks", "the factory raised TypeError"),
    ("user_envs:make_reach_policy", "returned ReachPolicy, which has no reset\\(\\) and step\\(\\)"),
])
def test_a_bad_env_reference_is_one_clear_error(policy, ref, message):
    with pytest.raises(EdgevlaError, match=message):
        evaluate(expert, EnvTask(ref, policy.spec), episodes=1)


# --------------------------------------------------------------------------- the build and eval


@pytest.fixture(scope="module")
def quick(fast):
    return {**fast, "evaluate.env": ENV}


def test_build_gates_on_the_simulator_and_recovers_on_the_originals_rollouts(tests_on_path, quick, tmp_path):
    out = tmp_path / "reach-2to4"
    result = build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(out),
                                overrides={**quick, "prune.method": "nm", "prune.pattern": "2:4"}))
    extra = result.report["extra"]
    recovery = extra["prune"]["recovery"]
    assert recovery["before"]["success"] < 0.5 and recovery["recovered"]  # 2:4 broke it; distillation mended it
    success = {k: v["success_rate"] for k, v in extra["evaluate"].items()}
    assert success["original/torch"] == 1.0 and success["built/onnxruntime"] >= 0.98
    assert set(extra["action_error_by_index"]) == {"backend", "held-out", "episode starts"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["evaluate"]["env"] == ENV and extra["closed_loop_task"] == ENV
    assert f"Success rates are closed-loop, in the simulator `{ENV}`" in (out / "report.md").read_text()

    code = main(["eval", str(out), "--episodes", "20", "--json"])
    assert code == 0


def test_eval_runs_the_bundles_simulator_or_another(tests_on_path, quick, tmp_path, capsys):
    out = tmp_path / "reach-w8a8"
    build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(out),
                       overrides={**quick, "quantize.format": "w8a8"}))
    capsys.readouterr()
    assert row_of(out).task == ENV  # compare says when bundles' success was measured on different tasks
    assert main(["eval", str(out), "--episodes", "20", "--latency-ticks", "1", "--async", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == ENV and data["latencies"][0]["success_rate"] >= 0.9
    assert main(["eval", str(out), "--episodes", "4", "--env", "user_envs:make_gym_env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "user_envs:make_gym_env"
    assert main(["eval", str(out), "--env", "user_envs:nothing"]) == 2
    assert capsys.readouterr().err.strip().endswith("has no callable 'nothing'")
    assert main(["eval", str(out), "--episodes", "20", "--latency-ticks", "1", "--async", "--env-workers", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latencies"] == data["latencies"]  # the same episodes, elsewhere


def test_a_confident_gate_needs_episodes_enough_to_show_the_budget(tests_on_path, quick, tmp_path):
    """A perfect build over 60 episodes: its loss's interval is about ±6 points, which a 2 % budget cannot hold
    and a 10 % one can."""
    settings = {**quick, "quantize.format": "w8a8", "evaluate.gate": "confident"}
    with pytest.raises(GateFailed, match="accuracy gate \\(confident\\): success went from 100.0% to 100.0%"):
        build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(tmp_path / "a"),
                           overrides=settings))
    result = build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy",
                                output=str(tmp_path / "b"), overrides={**settings, "evaluate.max_accuracy_loss": 0.1}))
    uncertainty = result.report["extra"]["success_uncertainty"]
    assert uncertainty["verdict"] == "within" and uncertainty["loss_ci95"][1] <= 0.1


def test_env_workers_need_a_simulator():
    from types import SimpleNamespace

    from edgevla.commands import _eval_task

    tabletop = SimpleNamespace(manifest={"recipe": {"evaluate": {"env": None}}}, spec=None)
    with pytest.raises(EdgevlaError, match="--env-workers steps a simulator's episodes"):
        _eval_task(tabletop, None, 4, 2)
    with pytest.raises(EdgevlaError, match="--env-workers must be >= 0, got -1"):
        _eval_task(tabletop, ENV, 4, -1)


def test_a_compression_the_simulator_shows_broken_fails_the_gate(tests_on_path, quick, tmp_path):
    out = tmp_path / "reach-broken"
    with pytest.raises(GateFailed, match="success 0.0"):
        build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(out),
                           overrides={**quick, "prune.method": "unstructured", "prune.sparsity": 0.95,
                                      "prune.recovery.max_steps": 0}))
    assert not out.exists()


def test_the_pruning_and_quantization_benches_run_in_the_simulator():
    from edgevla.bench.prune import bench_prune
    from edgevla.bench.quant import bench_quant

    pruned = bench_prune("user_envs:make_reach_policy", ["2:4"], episodes=20, runs=5, env=ENV)
    assert pruned["task"] == ENV
    original, two_four = pruned["rows"]
    assert original["success"] == 1.0 and two_four["success_after_pruning"] < 0.5 and two_four["recovered"]
    quant = bench_quant("user_envs:make_reach_policy", formats=("w8a8",), episodes=20, runs=5, env=ENV)
    assert quant["task"] == ENV and quant["calibration"]["source"] == f"the original policy's rollouts in {ENV}"
    assert quant["rows"][1]["model"] == "w8a8" and quant["rows"][1]["success_ort"] >= 0.95
    with pytest.raises(EdgevlaError, match="or its simulator \\(--env\\)"):
        bench_prune("user_envs:make_reach_policy", ["2:4"], episodes=2, runs=2)
