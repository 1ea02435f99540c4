"""The tabletop task: rendering, dynamics, expert, datasets, closed-loop evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.task import (VOCAB, TabletopEnv, TaskConfig, evaluate, expert_chunk, fixed_split, make_batch,
                          random_policy, render, sample_scenes)
from edgevla.task.dataset import split_rng
from edgevla.task.tabletop import BACKGROUND, COLOURS, clip_norm

CFG = TaskConfig()


def test_vocabulary_round_trip():
    ids = VOCAB.encode("reach the red circle", CFG.text_len)
    assert ids.dtype == np.int64 and ids.shape == (CFG.text_len,)
    assert VOCAB.decode(ids) == "reach the red circle"
    assert VOCAB.decode(VOCAB.encode("reach the mauve circle", 6)) == "reach the <unk> circle"
    assert len(VOCAB) <= 16  # fits the reference policies' embedding table


def test_scenes_are_separated_and_named():
    rng = np.random.default_rng(3)
    s = sample_scenes(CFG, 64, rng)
    d = np.linalg.norm(s.positions[:, :, None] - s.positions[:, None], axis=-1)
    d[:, np.arange(CFG.n_objects), np.arange(CFG.n_objects)] = 1.0
    assert d.min() >= CFG.min_separation
    names = list(COLOURS)
    for b in range(64):
        assert len(set(s.colours[b])) == CFG.n_objects  # colours distinct: the instruction is unambiguous
        t = s.target[b]
        assert names[s.colours[b, t]] in s.texts[b]
        assert VOCAB.decode(s.instruction[b]) == s.texts[b]


def test_render_draws_target_colour_at_its_position():
    rng = np.random.default_rng(0)
    s = sample_scenes(CFG, 8, rng)
    far = np.full((8, 2), 2.0)  # effector off the table: not drawn
    img = render(CFG, s, far)
    assert img.shape == (8, 3, CFG.image_size, CFG.image_size) and img.dtype == np.float32
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    for b in range(8):
        for k in range(CFG.n_objects):
            x, y = (s.positions[b, k] * CFG.image_size).astype(int)
            np.testing.assert_allclose(img[b, :, y, x], palette[s.colours[b, k]], atol=1e-6)
    corner_is_background = np.isclose(img[:, :, 0, 0], np.array(BACKGROUND, np.float32)).all(axis=1)
    assert corner_is_background.mean() > 0.5


def test_second_camera_sees_a_different_view():
    cfg = TaskConfig(n_cameras=2)
    env = TabletopEnv(cfg, 4, seed=1)
    obs = env.observe()
    assert obs["image"].shape == (4, 2, 3, cfg.image_size, cfg.image_size)
    assert not np.allclose(obs["image"][:, 0], obs["image"][:, 1])


def test_step_clips_and_ends_on_success():
    env = TabletopEnv(CFG, 16, seed=5)
    start = env.effector.copy()
    env.step(np.full((16, 2), 10.0))  # a huge action moves at most max_step
    moved = np.linalg.norm(env.effector - start, axis=-1)
    assert (moved <= CFG.max_step + 1e-9).all()
    env.effector[:] = env.scenes.target_xy + 0.01
    env.step(np.zeros((16, 2)))
    assert env.success.all() and env.done.all()


def test_expert_reaches_every_target():
    env = TabletopEnv(CFG, 100, seed=11)
    while not env.done.all():
        env.step(expert_chunk(CFG, env.effector, env.scenes.target_xy)[:, 0])
    assert env.success.all()
    assert env.steps.max() <= CFG.max_steps


def test_expert_chunk_is_consistent_with_dynamics():
    rng = np.random.default_rng(2)
    eff = rng.uniform(0, 1, size=(32, 2))
    tgt = rng.uniform(0.1, 0.9, size=(32, 2))
    chunk = expert_chunk(CFG, eff, tgt)
    assert chunk.shape == (32, CFG.chunk_size, 2)
    np.testing.assert_allclose(np.linalg.norm(chunk, axis=-1).max(), CFG.max_step, rtol=1e-5)
    end = eff + chunk.sum(axis=1)
    before = np.linalg.norm(tgt - eff, axis=-1)
    after = np.linalg.norm(tgt - end, axis=-1)
    expected = np.maximum(before - CFG.chunk_size * CFG.max_step, 0.0)
    np.testing.assert_allclose(after, expected, atol=1e-5)


def test_clip_norm():
    v = np.array([[3.0, 4.0], [0.03, 0.04], [0.0, 0.0]])
    np.testing.assert_allclose(clip_norm(v, 1.0), [[0.6, 0.8], [0.03, 0.04], [0.0, 0.0]])


def test_dataset_is_seeded_and_splits_differ():
    a = fixed_split(CFG, "heldout", 16)
    b = fixed_split(CFG, "heldout", 16)
    c = fixed_split(CFG, "calibration", 16)
    for k in a.observations:
        np.testing.assert_array_equal(a.observations[k], b.observations[k])
    assert not np.array_equal(a.observations["state"], c.observations["state"])
    with pytest.raises(ValueError):
        split_rng("test")


def test_blanked_batches():
    rng = np.random.default_rng(0)
    b = make_batch(CFG, 8, rng, blank="instruction")
    assert not b.observations["instruction"].any() and b.observations["image"].any()
    b = make_batch(CFG, 8, rng, blank="image")
    assert not b.observations["image"].any()


def test_random_policy_fails_and_evaluation_is_reproducible():
    r1 = evaluate(random_policy(CFG, 0), CFG, episodes=100, seed=123)
    r2 = evaluate(random_policy(CFG, 0), CFG, episodes=100, seed=123)
    assert r1.success_rate == r2.success_rate
    assert r1.success_rate <= 0.10
    assert len(r1.successes) == 100
    assert 1 <= r1.mean_steps <= CFG.max_steps
