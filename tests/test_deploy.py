"""A bundle on the robot: real actions from a verified bundle, run one control tick at a time."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.backends import make_runner
from edgevla.control import ThreadedInference
from edgevla.deploy import BundlePolicy
from edgevla.errors import EdgevlaError
from edgevla.pipeline import task_for
from edgevla.task import TabletopEnv, evaluate
from edgevla.task.tabletop import clip_norm


def test_a_bundle_answers_with_real_actions(tiny_bundle):
    with BundlePolicy(tiny_bundle.bundle, backend="onnxruntime", threads=1) as policy:
        obs = policy.spec.example(batch=3, seed=1)
        actions = policy(obs)
        assert actions.shape == (3, policy.chunk_size, policy.spec.action_dim)
        assert policy.control_rate_hz == 30
        with make_runner("onnxruntime", onnx_path=tiny_bundle.bundle / "model.onnx", spec=policy.spec,
                         threads=1) as runner:
            normalized = runner(obs)
        std, mean = (np.asarray(v, np.float32) for v in (policy.spec.action_std, policy.spec.action_mean))
        np.testing.assert_array_equal(actions, normalized * std + mean)
        assert not np.allclose(std, 1) or not np.allclose(mean, 0)  # the normalization is really undone


def test_the_threaded_controller_drives_the_robot_as_the_evaluator_does(tiny_bundle):
    """A loop that waits for each chunk (lead 0, wait=None) on the worker thread is the evaluator's schedule:
    the same episodes end the same way, step for step."""
    with BundlePolicy(tiny_bundle.bundle, backend="native", threads=1) as policy:
        task = task_for(policy.spec)
        expected = evaluate(policy, task, episodes=12, seed=77, execute=4, batch=12)
        env = TabletopEnv(task, 12, seed=77)
        with policy.controller(execute=4, inference=ThreadedInference()) as control:
            while not env.done.all():
                action = control.step(env.observe, wait=None)
                env.step(clip_norm(np.asarray(action, np.float64), task.max_step))
            assert control.stats.held == 0 and control.stats.queries == control.stats.chunks
        assert env.success.tolist() == expected.successes
        assert float(np.mean(env.steps)) == expected.mean_steps
        assert expected.success_rate >= 0.9


def test_temporal_ensembling_on_the_worker_thread(tiny_bundle):
    with BundlePolicy(tiny_bundle.bundle, backend="native", threads=1) as policy:
        task = task_for(policy.spec)
        env = TabletopEnv(task, 4, seed=3)
        with policy.ensemble(m=0.01, inference=ThreadedInference()) as control:
            for _ in range(6):
                action = control.step(env.observe, wait=None)  # waits for a chunk whenever none covers the tick
                env.step(clip_norm(np.asarray(action, np.float64), task.max_step))
            assert control.stats.ticks == 6 and control.stats.held == 0 and control.stats.chunks >= 1


def test_bad_requests_are_refused(tiny_bundle, tmp_path):
    with pytest.raises(EdgevlaError, match="unknown backend 'tflite'"):
        BundlePolicy(tiny_bundle.bundle, backend="tflite")
    with pytest.raises(EdgevlaError, match="not an edgevla bundle"):
        BundlePolicy(tmp_path)
    with BundlePolicy(tiny_bundle.bundle, backend="onnxruntime") as policy:
        with pytest.raises(EdgevlaError, match="execute = 9 actions of the bundle's chunks of 8"):
            policy.controller(execute=9)
