"""Accuracy recovery after pruning: knowledge distillation from the original policy.

The pruned student is fine-tuned on the task's demonstrations with

    loss = w_kd * mse(student, teacher) + w_task * mse(student, expert)

on *normalized* actions (the policy's own action statistics, as
:mod:`edgevla.train` trains). The teacher's actions are a dense, noise-free
target for every sample — the cheapest way to pull a damaged network back to
the function it computed — while the expert term keeps it on the task.
Masks stay applied throughout: :func:`apply_masks` parametrizes each weight,
so the optimizer updates the dense original and every forward re-multiplies
by the mask (pruned weights also get zero gradient).

:func:`recover` stops as soon as closed-loop success on a fixed set of
episodes is back within ``max_loss`` of the teacher's, evaluated every
``eval_every`` steps; if the step or time budget runs out first it raises
:class:`RecoveryFailed` (a :class:`GateFailed`) carrying the report. Success
on a hundred episodes is noisy (a few points from one evaluation to the next
while the student's error falls steadily), so the first evaluation to meet
the budget is often a lucky one, and the gate, on other episodes, then fails
the build: given a ``confirm_fn`` (success on a second, disjoint and larger
set of episodes: the build's default screens on 100 and decides on 300), a
hit counts only when the student meets the budget there too, against the
teacher's success on those episodes; otherwise training goes on.
Hard cases take long (tiny-vla at 98 % unstructured sparsity: 550 steps), so
the step budget is generous, and with ``patience`` recovery gives up early
once it has stopped making progress: none of the last ``patience``
evaluations brought the held-out action error 5 % below the best before
them, nor success 5 points above the best before them. The error is the
steadier sign, but not the only one: a student trained through its
quantizer (``prune.recovery.train: shipped``) can climb from 0 % to 80 %
success while its error against the float teacher rises and falls.

Training efficiency is reported as the efficiency metrics ask: seconds per
epoch, samples per second and steps until recovered. The task stream is
endless, so an **epoch is defined as ``epoch_samples`` samples** (10,000 by
default); evaluation time is reported apart from training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EdgevlaError, GateFailed
from ..task.evaluate import meets
from ..train import closed_loop_success, resolve_precision, task_config_for

Batch = tuple[Sequence[torch.Tensor], torch.Tensor]

PLATEAU_GAIN = 0.05  # the fraction the held-out action error must fall within ``patience`` evaluations,
PLATEAU_SUCCESS_GAIN = 0.05  # or the success (a fraction) rise, for recovery to go on


@dataclass
class RecoveryConfig:
    max_steps: int = 500
    max_seconds: float | None = None
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    w_kd: float = 1.0
    w_task: float = 1.0
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_episodes: int = 100
    eval_seed: int = 10_000
    patience: int = 0  # evaluations without progress (see stalled()); 0: no limit
    max_loss: float = 0.02  # success points (a fraction) the student may lose against the teacher
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "auto", as edgevla.train
    seed: int = 0
    epoch_samples: int = 10_000  # the task stream is endless: one "epoch" is this many samples
    heldout_samples: int = 256  # held-out observations for the action-error figures

    def check(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise EdgevlaError(f"recovery max_steps must be a non-negative integer, got {self.max_steps!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise EdgevlaError(f"recovery max_seconds must be positive, got {self.max_seconds!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise EdgevlaError(f"recovery patience must be a non-negative integer, got {self.patience!r}")
        for name in ("batch_size", "eval_every", "eval_episodes", "epoch_samples", "heldout_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise EdgevlaError(f"recovery {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.w_kd < 0 or self.w_task < 0 or self.w_kd + self.w_task == 0:
            raise EdgevlaError(f"distillation weights must be >= 0 and not both 0, got w_kd={self.w_kd}, "
                               f"w_task={self.w_task}")
        if not 0.0 <= self.max_loss <= 1.0:
            raise EdgevlaError(f"max_loss is a success fraction in [0, 1], got {self.max_loss!r}")
        try:
            resolve_precision(self.precision)
        except ValueError as e:
            raise EdgevlaError(str(e)) from None


@dataclass
class Evaluation:
    step: int
    success: float
    action_error: float  # normalized-action MSE against the teacher on held-out observations
    expert_error: float  # and against the expert


@dataclass
class Confirmation:
    step: int
    success: float  # on the confirmation episodes, against RecoveryReport.teacher_confirm_success


@dataclass
class RecoveryReport:
    teacher_success: float
    max_loss: float
    before: Evaluation
    after: Evaluation
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    samples_per_s: float = 0.0
    epoch_samples: int = 10_000
    seconds_per_epoch: float = 0.0
    steps_to_recover: int | None = None  # None: the budget was not met
    precision: str = "fp32"
    losses: list[float] = field(default_factory=list)
    history: list[Evaluation] = field(default_factory=list)
    teacher_confirm_success: float | None = None  # None: no hit was checked on other episodes
    confirmations: list[Confirmation] = field(default_factory=list)
    stalled: bool = False  # gave up: no progress in RecoveryConfig.patience evaluations (stalled())

    @property
    def recovered(self) -> bool:
        return self.steps_to_recover is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recovered"] = self.recovered
        d.pop("losses")
        return d


def stalled(history: Sequence[Evaluation], patience: int) -> bool:
    """Whether none of the last ``patience`` evaluations brought the held-out action error PLATEAU_GAIN below
    the best of those before them, nor success PLATEAU_SUCCESS_GAIN above theirs (never, with ``patience`` 0
    or too short a history)."""
    if patience == 0 or len(history) <= patience:
        return False
    before, last = history[:-patience], history[-patience:]
    error_fell = min(e.action_error for e in last) <= (1.0 - PLATEAU_GAIN) * min(e.action_error for e in before)
    success_rose = meets(max(e.success for e in last), max(e.success for e in before) + PLATEAU_SUCCESS_GAIN)
    return not (error_fell or success_rose)


class RecoveryFailed(GateFailed):
    """The accuracy budget was not met within the recovery budget; ``.report`` says how far it got."""

    def __init__(self, message: str, report: RecoveryReport):
        super().__init__(message)
        self.report = report


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, expert: torch.Tensor, w_kd: float = 1.0,
            w_task: float = 1.0) -> torch.Tensor:
    """``w_kd * mse(student, teacher) + w_task * mse(student, expert)``, in float32."""
    student = student.float()
    return w_kd * F.mse_loss(student, teacher.float()) + w_task * F.mse_loss(student, expert.float())


def task_stream(policy: nn.Module, batch_size: int, seed: int = 0) -> Iterator[Batch]:
    """Endless training batches of the tabletop task: observations in the policy's input order and
    expert actions normalized by the policy's action statistics."""
    from ..task import stream

    config = getattr(policy, "config", None)
    if config is None:
        raise EdgevlaError(f"{type(policy).__name__} has no .config for the tabletop task: pass batches explicitly")
    spec = policy.spec
    mean = np.asarray(spec.action_mean, np.float32)
    std = np.asarray(spec.action_std, np.float32)
    for b in stream(task_config_for(config), batch_size, seed=seed):
        obs = [torch.from_numpy(np.ascontiguousarray(b.observations[n])) for n in spec.input_names]
        yield obs, torch.from_numpy(((b.actions - mean) / std).astype(np.float32))


def heldout_batch(policy: nn.Module, n: int, seed: int = 0) -> Batch:
    """``n`` held-out observations (the task's held-out split) with normalized expert actions."""
    from ..task import fixed_split

    config = getattr(policy, "config", None)
    if config is None:
        raise EdgevlaError(f"{type(policy).__name__} has no .config for the tabletop task: pass held-out data")
    spec = policy.spec
    b = fixed_split(task_config_for(config), "heldout", n, seed)
    obs = [torch.from_numpy(np.ascontiguousarray(b.observations[k])) for k in spec.input_names]
    mean = np.asarray(spec.action_mean, np.float32)
    std = np.asarray(spec.action_std, np.float32)
    return obs, torch.from_numpy(((b.actions - mean) / std).astype(np.float32))


@torch.no_grad()
def action_errors(student: nn.Module, teacher: nn.Module, batch: Batch) -> tuple[float, float]:
    """(MSE against the teacher, MSE against the expert) of normalized actions, in eval mode."""
    obs, expert = batch
    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    try:
        s, t = student(*obs).float(), teacher(*obs).float()
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return float(F.mse_loss(s, t)), float(F.mse_loss(s, expert))


class Distiller:
    """Fine-tunes a student towards a teacher, one step at a time, with its own AdamW.

    Build a new one after a structured step: parameter shapes have changed.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: RecoveryConfig | None = None,
                 batches: Iterator[Batch] | None = None):
        self.config = config or RecoveryConfig()
        self.config.check()
        self.student, self.teacher = student, teacher.eval()  # the teacher runs under no_grad, untouched
        self.batches = batches if batches is not None else task_stream(student, self.config.batch_size,
                                                                       self.config.seed)
        params = [p for p in student.parameters() if p.requires_grad]
        if not params:
            raise EdgevlaError("the student has no trainable parameters")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=self.config.lr, betas=(0.9, 0.95))
        self.precision = resolve_precision(self.config.precision)
        self.samples = 0
        self.seconds = 0.0
        self.losses: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        obs, expert = next(self.batches)
        with torch.no_grad():
            teacher_actions = self.teacher(*obs).float()
        self.student.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            prediction = self.student(*obs)
        loss = kd_loss(prediction, teacher_actions, expert, self.config.w_kd, self.config.w_task)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.student.eval()
        self.samples += int(expert.shape[0])
        self.seconds += time.perf_counter() - start
        self.losses.append(float(loss.detach()))
        return self.losses[-1]


def distill(student: nn.Module, teacher: nn.Module, steps: int, config: RecoveryConfig | None = None,
            batches: Iterator[Batch] | None = None) -> Distiller:
    """``steps`` distillation steps, no evaluation: the fine-tuning between gradual pruning steps."""
    distiller = Distiller(student, teacher, config, batches)
    for _ in range(steps):
        distiller.step()
    return distiller


def recover(student: nn.Module, teacher: nn.Module, config: RecoveryConfig | None = None, *,
            batches: Iterator[Batch] | None = None, heldout: Batch | None = None,
            success_fn: Callable[[nn.Module], float] | None = None,
            confirm_fn: Callable[[nn.Module], float] | None = None) -> RecoveryReport:
    """Distil ``teacher`` into the pruned ``student`` until success is within ``max_loss`` of the teacher's.

    Success is measured every ``eval_every`` steps on the same seeded episodes
    (``success_fn(policy)``, by default :func:`closed_loop_success` with
    ``eval_episodes`` and ``eval_seed``); a student already within budget is
    returned after 0 steps. With ``confirm_fn`` (success on other episodes)
    an evaluation within budget counts only when the student is within budget
    there too, the teacher measured there as well. Raises
    :class:`RecoveryFailed` when ``max_steps`` or ``max_seconds`` run out
    first, or when the held-out action error has stalled for ``patience``
    evaluations.
    """
    config = config or RecoveryConfig()
    config.check()
    if success_fn is None:
        def success_fn(policy: nn.Module) -> float:
            return closed_loop_success(policy, episodes=config.eval_episodes, seed=config.eval_seed)
    heldout = heldout if heldout is not None else heldout_batch(student, config.heldout_samples, config.seed)
    eval_seconds = 0.0

    def success_of(policy: nn.Module, fn: Callable[[nn.Module], float]) -> float:
        nonlocal eval_seconds
        start = time.perf_counter()
        was_training = policy.training
        policy.eval()
        success = float(fn(policy))
        policy.train(was_training)
        eval_seconds += time.perf_counter() - start
        return success

    def measure(step: int, policy: nn.Module = student) -> Evaluation:
        nonlocal eval_seconds
        success = success_of(policy, success_fn)
        start = time.perf_counter()
        errors = action_errors(policy, teacher, heldout)
        eval_seconds += time.perf_counter() - start
        return Evaluation(step, success, *errors)

    teacher_success = measure(0, teacher).success
    before = measure(0)
    report = RecoveryReport(teacher_success, config.max_loss, before, before, epoch_samples=config.epoch_samples,
                            history=[before])

    def within(e: Evaluation) -> bool:
        if not meets(e.success, teacher_success - config.max_loss):
            return False
        if confirm_fn is None:
            return True
        if report.teacher_confirm_success is None:
            report.teacher_confirm_success = success_of(teacher, confirm_fn)
        report.confirmations.append(Confirmation(e.step, success_of(student, confirm_fn)))
        return meets(report.confirmations[-1].success, report.teacher_confirm_success - config.max_loss)

    if within(before):
        report.steps_to_recover = 0
        report.precision = resolve_precision(config.precision)
        report.eval_seconds = eval_seconds
        return report
    distiller = Distiller(student, teacher, config, batches)
    report.precision = distiller.precision
    last = before
    while len(distiller.losses) < config.max_steps:
        distiller.step()
        step = len(distiller.losses)
        out_of_time = config.max_seconds is not None and distiller.seconds >= config.max_seconds
        if step % config.eval_every == 0 or step == config.max_steps or out_of_time:
            last = measure(step)
            report.history.append(last)
            if within(last):
                report.steps_to_recover = step
                break
            if stalled(report.history, config.patience):
                report.stalled = True
                break
        if out_of_time:
            break
    report.after = last
    report.steps = len(distiller.losses)
    report.samples = distiller.samples
    report.train_seconds = distiller.seconds
    report.eval_seconds = eval_seconds
    report.samples_per_s = distiller.samples / distiller.seconds if distiller.seconds else 0.0
    report.seconds_per_epoch = (config.epoch_samples / report.samples_per_s) if report.samples_per_s else 0.0
    report.losses = distiller.losses
    if not report.recovered:
        gave_up = "" if not report.stalled else (
            f"; it stopped making progress (none of the last {config.patience} evaluations brought the held-out "
            f"action error {PLATEAU_GAIN:.0%} below the best before them, nor success "
            f"{PLATEAU_SUCCESS_GAIN * 100:.0f} points above)")
        unconfirmed = "" if not report.confirmations else (
            f"; {len(report.confirmations)} hit(s) not confirmed on other episodes (there the last "
            f"{report.confirmations[-1].success:.3f} vs teacher {report.teacher_confirm_success:.3f})")
        raise RecoveryFailed(
            f"pruning recovery missed the accuracy budget: success {last.success:.3f} vs teacher "
            f"{teacher_success:.3f} (allowed loss {config.max_loss:.3f}) after {report.steps} steps, "
            f"{report.train_seconds:.1f} s of training{gave_up}{unconfirmed}", report)
    return report
