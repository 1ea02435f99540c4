"""Recovery by distillation: the KD loss by hand, a real recovery of the trained tiny-vla after 50 %
magnitude pruning, early stopping when the budget is met, a clear failure when it cannot be."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgevla.errors import EdgevlaError, GateFailed
from edgevla.models.zoo import load_policy
from edgevla.prune import (Evaluation, RecoveryConfig, RecoveryFailed, action_errors, apply_masks, distill,
                           heldout_batch, kd_loss, recover, unstructured_masks)
from edgevla.prune.recovery import stalled
from edgevla.prune.schedule import current_mask


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def teacher():
    return load_policy("tiny-vla").policy.eval()


@pytest.fixture(scope="module")
def heldout(teacher):
    return heldout_batch(teacher, 64)


def _pruned(teacher, sparsity=0.5):
    student = copy.deepcopy(teacher)
    apply_masks(student, unstructured_masks(student, sparsity))
    return student


def test_kd_loss_matches_a_hand_computation():
    g = np.random.default_rng(0)
    s, t, e = (g.normal(size=(3, 4, 2)).astype(np.float32) for _ in range(3))
    expected = 0.7 * np.mean((s - t) ** 2) + 0.3 * np.mean((s - e) ** 2)
    got = kd_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(e), w_kd=0.7, w_task=0.3)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # bf16 student actions are promoted: the loss is float32, as in edgevla.train.
    assert kd_loss(torch.from_numpy(s).bfloat16(), torch.from_numpy(t), torch.from_numpy(e)).dtype == torch.float32


def test_distillation_recovers_action_error_and_keeps_the_masks(teacher, heldout):
    student = _pruned(teacher)
    masks = {n: current_mask(m).clone() for n, m in student.named_modules() if current_mask(m) is not None}
    before = action_errors(student, teacher, heldout)
    distiller = distill(student, teacher, 8, RecoveryConfig(batch_size=16, lr=1e-3))
    after = action_errors(student, teacher, heldout)
    # Measured: MSE vs the teacher 0.17 -> ~0.02 in 8 steps of 16 samples.
    assert after[0] < 0.4 * before[0]
    assert after[1] < before[1]  # closer to the expert too
    assert distiller.samples == 8 * 16 and len(distiller.losses) == 8
    for name, mask in masks.items():
        w = student.get_submodule(name).weight.detach()
        assert bool((w[mask == 0] == 0).all())
        assert int((w == 0).sum()) >= int((mask == 0).sum())


def test_recovery_stops_at_once_when_the_budget_is_already_met(teacher):
    student = copy.deepcopy(teacher)
    reference = [p.detach().clone() for p in student.parameters()]
    report = recover(student, teacher, RecoveryConfig(max_steps=50, eval_episodes=10, max_loss=0.0))
    assert report.recovered and report.steps_to_recover == 0 and report.steps == 0
    assert report.before.success == report.teacher_success
    assert all(torch.equal(a, b) for a, b in zip(reference, student.parameters()))


def test_recovery_reports_efficiency_and_stops_when_recovered(teacher, heldout):
    student = _pruned(teacher)
    calls = []

    def success(policy):  # the gate's view: action error on held-out data as a stand-in success
        calls.append(policy is teacher)
        return 1.0 if policy is teacher else float(action_errors(policy, teacher, heldout)[0] < 0.05)

    config = RecoveryConfig(max_steps=40, batch_size=16, lr=1e-3, eval_every=4, max_loss=0.0, epoch_samples=1000)
    report = recover(student, teacher, config, heldout=heldout, success_fn=success)
    assert report.recovered and 0 < report.steps_to_recover <= 40 and report.steps_to_recover % 4 == 0
    assert report.steps == report.steps_to_recover and report.samples == 16 * report.steps
    assert report.samples_per_s == pytest.approx(report.samples / report.train_seconds)
    assert report.seconds_per_epoch == pytest.approx(1000 / report.samples_per_s)
    assert report.after.action_error < 0.05 < report.before.action_error
    assert [e.step for e in report.history] == list(range(0, report.steps + 1, 4))
    assert report.to_dict()["recovered"] is True


def test_a_lucky_hit_goes_on_training_until_other_episodes_confirm_it(teacher, heldout):
    primary = iter([0.5, 1.0, 0.5, 1.0])  # the student at steps 0, 2, 4, 6: a hit at 2, a miss at 4, a hit at 6
    others = iter([0.5, 0.85])  # the student on the confirmation episodes, at each hit
    teacher_confirmed = []

    def confirm(policy):
        if policy is teacher:
            teacher_confirmed.append(True)
            return 0.9
        return next(others)

    config = RecoveryConfig(max_steps=20, batch_size=8, eval_every=2, max_loss=0.05)
    report = recover(_pruned(teacher), teacher, config, heldout=heldout,
                     success_fn=lambda p: 1.0 if p is teacher else next(primary), confirm_fn=confirm)
    assert report.recovered and report.steps_to_recover == report.steps == 6  # 0.85 is within 0.05 of 0.9
    assert [(c.step, c.success) for c in report.confirmations] == [(2, 0.5), (6, 0.85)]
    assert report.teacher_confirm_success == 0.9 and teacher_confirmed == [True]  # the teacher measured once
    assert report.to_dict()["confirmations"] == [{"step": 2, "success": 0.5}, {"step": 6, "success": 0.85}]

    config = RecoveryConfig(max_steps=4, batch_size=8, eval_every=2, max_loss=0.05)
    with pytest.raises(RecoveryFailed, match="after 4 steps, .* of training; 3 hit\\(s\\) not confirmed on other "
                       "episodes \\(there the last 0.500 vs teacher 0.900\\)$"):
        recover(_pruned(teacher), teacher, config, heldout=heldout, success_fn=lambda p: 1.0,  # hits at 0, 2, 4
                confirm_fn=lambda p: 0.9 if p is teacher else 0.5)


@pytest.mark.parametrize("errors, patience, expected", [
    ([1.0, 0.5, 0.4, 0.39, 0.385], 2, True),    # 0.39 and 0.385 are within 5 % of 0.4: stalled
    ([1.0, 0.5, 0.4, 0.39, 0.37], 2, False),    # 0.37 is 7.5 % below 0.4
    ([1.0, 0.5, 0.4, 0.39, 0.385], 3, False),   # three back, 0.4 was 20 % below 0.5
    ([1.0, 0.5, 0.4, 0.39, 0.385], 0, False),   # no patience: never
    ([1.0, 1.0], 2, False),                     # too short a history to say
])
def test_stalled_means_the_held_out_error_stopped_falling(errors, patience, expected):
    history = [Evaluation(50 * i, 0.0, e, e) for i, e in enumerate(errors)]
    assert stalled(history, patience) is expected


@pytest.mark.parametrize("successes, expected", [
    ([0.0, 0.02, 0.1, 0.5, 0.8], False),    # the error flat, success up 70 points: progress
    ([0.6, 0.7, 0.8, 0.82, 0.84], True),    # up 4 points on the best before: noise, stalled
    ([0.6, 0.7, 0.8, 0.84, 0.85], False),   # 5 points: progress
    ([0.9, 0.9, 0.95, 0.9, 0.85], True),    # down
])
def test_rising_success_is_progress_too(successes, expected):
    history = [Evaluation(50 * i, s, 0.5, 0.5) for i, s in enumerate(successes)]  # the error flat
    assert stalled(history, 2) is expected


def test_recovery_gives_up_when_it_stops_making_progress(teacher, heldout):
    config = RecoveryConfig(max_steps=1000, batch_size=8, eval_every=1, max_loss=0.0, lr=0.0, patience=3)
    with pytest.raises(RecoveryFailed, match="it stopped making progress \\(none of the last 3 evaluations "
                       "brought the held-out action error 5% below the best before them, nor success 5 points "
                       "above\\)$") as info:
        recover(_pruned(teacher, 0.9), teacher, config, heldout=heldout,  # lr 0: the student cannot change
                success_fn=lambda p: 1.0 if p is teacher else 0.0)
    assert info.value.report.stalled and info.value.report.steps == 3  # steps 1-3 no better than step 0


def test_an_impossible_budget_fails_the_gate_on_one_line(teacher, heldout):
    student = _pruned(teacher, 0.9)
    config = RecoveryConfig(max_steps=3, batch_size=8, eval_every=2, max_loss=0.01)
    with pytest.raises(GateFailed) as info:
        recover(student, teacher, config, heldout=heldout,
                success_fn=lambda p: 1.0 if p is teacher else 0.5)
    assert isinstance(info.value, RecoveryFailed)
    message = str(info.value)
    assert "\n" not in message and "success 0.500 vs teacher 1.000" in message and "after 3 steps" in message
    assert info.value.report.steps == 3 and [e.step for e in info.value.report.history] == [0, 2, 3]


def test_a_time_budget_also_ends_recovery(teacher, heldout):
    config = RecoveryConfig(max_steps=10_000, max_seconds=0.01, batch_size=8, eval_every=1000, max_loss=0.0)
    with pytest.raises(RecoveryFailed) as info:
        recover(_pruned(teacher, 0.9), teacher, config, heldout=heldout,
                success_fn=lambda p: 1.0 if p is teacher else 0.0)
    assert 1 <= info.value.report.steps < 10_000


@pytest.mark.parametrize("field,value,match", [("max_steps", -1, "max_steps"), ("w_kd", 0.0, "both 0"),
                                               ("max_loss", 2.0, "max_loss"), ("precision", "fp8", "precision"),
                                               ("eval_every", 0, "eval_every"), ("patience", -1, "patience")])
def test_bad_recovery_settings_are_one_line_errors(teacher, field, value, match):
    config = RecoveryConfig(**{field: value, **({"w_task": 0.0} if field == "w_kd" else {})})
    with pytest.raises(EdgevlaError, match=match):
        recover(copy.deepcopy(teacher), teacher, config)


def test_closed_loop_recovery_of_tiny_vla_after_half_its_weights_go(teacher):
    config = RecoveryConfig(max_steps=60, batch_size=16, lr=1e-3, eval_every=10, eval_episodes=50, max_loss=0.02)
    report = recover(_pruned(teacher), teacher, config)
    # Measured: success 0.78 -> 1.0 (teacher 1.0) on these 50 episodes.
    assert report.before.success < report.teacher_success - 0.02
    assert report.recovered and report.steps_to_recover > 0
    assert report.after.success >= report.teacher_success - 0.02
    assert report.after.action_error < report.before.action_error


def test_bf16_autocast_distillation_keeps_float32_weights_and_masks(teacher):
    student = _pruned(teacher)
    fc1 = student.get_submodule("trunk.0.mlp.fc1")
    zeros = int((fc1.weight == 0).sum())
    distiller = distill(student, teacher, 2, RecoveryConfig(batch_size=8, precision="bf16"))
    assert distiller.precision == "bf16" and np.isfinite(distiller.losses).all()
    assert fc1.parametrizations.weight.original.dtype == torch.float32
    assert int((fc1.weight == 0).sum()) == zeros
