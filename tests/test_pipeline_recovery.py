"""What pruning recovery judges in a build, and on which episodes: the student as it will ship (in a build that
also quantizes, quantized as the build will quantize it: ``prune.recovery.judge: shipped``, the default),
screened on ``prune.recovery.episodes`` and a hit confirmed on ``confirm_episodes`` others; and what it trains:
the float student, or (``prune.recovery.train: shipped``) the quantized one, through its quantizer."""

from __future__ import annotations

import copy

import pytest
import torch

import edgevla.pipeline
from edgevla.errors import GateFailed
from edgevla.bundle import load_bundle
from edgevla.pipeline import (BuildRequest, build, prune_policy, quantize_for_build, quantized_form, torch_success,
                              with_demonstrator)
from edgevla.progress import Progress
from edgevla.quant import form_of
from edgevla.prune import apply_masks, nm_masks, remove_masks
from edgevla.recipe import load_recipe
from edgevla.task.user_env import EnvTask
from user_envs import FRAGILE_CHANNEL, make_fragile_reach_policy, make_reach_policy

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ENV = "user_envs:make_reach_env"


@pytest.fixture
def task():
    t = with_demonstrator(EnvTask(ENV, make_reach_policy().spec), make_reach_policy())
    yield t
    t.close()


def masked_2_4(policy: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``policy`` with 2:4 masks on the trunk's Linear layers, still parametrized (as in recovery)."""
    student = copy.deepcopy(policy)
    apply_masks(student, nm_masks(student, 2, 4, layers=["trunk.0", "trunk.2"]))
    return student


@pytest.mark.parametrize("fmt, settings, what", [
    ("w8a8", {}, "quantized w8a8 (every layer, post-training)"),
    ("w4a16", {}, "quantized w4a16 (every layer, post-training)"),
    ("w8a8", {"quantize.mixed_precision.enabled": True, "quantize.mixed_precision.min_sqnr_db": 36.0},
     "quantized w8a8 (layers under 36 dB solo SQNR raised up the precision ladder, post-training)"),
    ("w8a8", {"quantize.mixed_precision.enabled": True, "quantize.mixed_precision.min_sqnr_db": 36.0,
              "quantize.mixed_precision.ladder": False},
     "quantized w8a8 (layers under 36 dB solo SQNR kept float, post-training)"),
])
def test_the_form_recovery_judges_is_the_model_the_build_ships(task, fmt, settings, what):
    teacher = make_reach_policy()
    student = masked_2_4(teacher)
    recipe = load_recipe(None, overrides={"quantize.format": fmt, "evaluate.env": ENV, **settings})
    form = quantized_form(teacher, teacher.spec, task, recipe.quantize, "fp32")
    judged = form.of(student)
    assert form.what == what
    shipped = masked_2_4(teacher)
    remove_masks(shipped)
    built, info = quantize_for_build(shipped, teacher, teacher.spec, task, recipe.quantize, float_dtype="fp32",
                                     max_loss=0.02, progress=Progress())
    if settings:  # a bar some layers miss (solo SQNRs here 35-37 dB): the same layers raised in both
        mp = info["mixed_precision"]
        forms = {**mp["raised"], **{n: "float" for n in mp["kept_float"]}}
        assert 0 < len(forms) < 3 and set(forms.values()) == ({"w8a16"} if mp["ladder"] else {"float"})
        assert {n: form_of(m) for n, m in judged.named_modules() if n in forms} == forms
    state = torch.rand(64, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(judged(state), built(state))  # the same calibration, the same codes: bit for bit
        assert not torch.equal(judged(state), student(state))  # and not the float student
    assert any(p.startswith("parametrizations.") for p, _ in student.trunk[0].named_parameters())  # left masked


def test_quantization_that_breaks_the_policy_is_refused_by_recovery_not_after_it(tests_on_path, fast, tmp_path):
    policy = make_fragile_reach_policy()
    t = EnvTask(ENV, policy.spec)
    try:
        assert torch_success(policy, t, 40, 20_000, None) >= 0.95  # the float policy reaches without the channel
    finally:
        t.close()
    settings = {**fast, "evaluate.env": ENV, "prune.method": "unstructured", "prune.sparsity": 0.2,
                "quantize.format": "w8a8", "prune.recovery.max_steps": 50, "prune.recovery.train": "float"}

    def refusal(**more) -> str:
        with pytest.raises(GateFailed) as e:
            build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_fragile_reach_policy",
                               output=str(tmp_path / "out"), overrides={**settings, **more}))
        return str(e.value)

    # The float student trained and judged quantized fails from the first evaluation, and recovery says why.
    said = refusal()
    assert said.startswith("pruning recovery missed the accuracy budget: success 0.")
    assert "the student's success measured quantized w8a8 (every layer, post-training), as it will ship" in said
    assert said.endswith("(prune.recovery.train: shipped trains it quantized, through its quantizer; "
                         "prune.recovery.judge: float measures the float model)")
    # Judged float, the lightly pruned student passes recovery at once; only the gate finds what ships broken.
    # (Recovery trains what it judges: the float student, whatever prune.recovery.train says.)
    said = refusal(**{"prune.recovery.judge": "float", "prune.recovery.train": "shipped"})
    assert "pruning recovery" not in said and "success" in said
    assert not (tmp_path / "out").exists()


def test_trained_through_its_quantizer_the_broken_student_recovers_and_ships_its_pattern(tests_on_path, fast,
                                                                                         tmp_path):
    # The student refused above, trained quantized: the weights learn to live on the grid the outlier sets.
    result = build(BuildRequest(
        target="x86-64-cpu", policy="user_envs:make_fragile_reach_policy", output=str(tmp_path / "out"),
        overrides={**fast, "evaluate.env": ENV, "prune.method": "nm", "prune.pattern": "2:4",
                   "quantize.format": "w8a8"}))  # prune.recovery.train: shipped, the default
    extra = result.report["extra"]
    recovery = extra["prune"]["recovery"]
    assert recovery["trained"] == "the quantized student"
    assert recovery["judged"] == "quantized w8a8 (every layer, trained through its quantizer)"
    assert recovery["before"]["success"] < 0.2 and recovery["recovered"] and recovery["steps"] > 0
    assert extra["quantize"]["trained_in_recovery"] == {"steps": recovery["steps"]}
    built = next(v["success_rate"] for k, v in extra["evaluate"].items() if k.startswith("built/"))
    assert built >= extra["evaluate"]["original/torch"]["success_rate"] - 0.02  # the gate passed on its episodes
    layers = {row["name"]: row for row in load_bundle(result.bundle).manifest["layers"]}
    for name in ("trunk.0", "trunk.2"):  # the pruned zeros held through training: 2:4 ships
        assert (layers[name]["pattern"], layers[name]["format"]) == ("2:4", "w8a8"), name
    md = (result.bundle / "report.md").read_text()
    assert f"trained it through its quantizer (straight-through) for {recovery['steps']} steps" in md
    assert "success measured on the student quantized w8a8 (every layer, trained through its quantizer)" in md


def test_training_shipped_in_fp16_trains_the_float_student(task):
    teacher = make_reach_policy()
    recipe = load_recipe(None, overrides={"quantize.format": "fp16", "evaluate.env": ENV, "prune.method": "nm",
                                          "prune.pattern": "2:4", "prune.recovery.train": "shipped",
                                          "prune.recovery.episodes": 20, "prune.recovery.confirm": False,
                                          "prune.recovery.max_loss": 1.0})
    student = copy.deepcopy(teacher)
    form = quantized_form(teacher, teacher.spec, task, recipe.quantize, "fp16")
    info, trained = prune_policy(student, teacher, teacher.spec, task, recipe.prune, round_to=1, max_loss=0.02,
                                 progress=Progress(), shipped=form)
    assert trained is None  # fp16 quantizes no layer: nothing to train through
    assert info["recovery"]["trained"] == "the pruned float model"
    assert info["recovery"]["judged"] == "quantized fp16 (every layer, post-training)"


def test_with_mixed_precision_by_success_recovery_judges_the_float_model(task):
    teacher = make_reach_policy()
    recipe = load_recipe(None, overrides={"quantize.format": "w8a8", "quantize.mixed_precision.enabled": True,
                                          "quantize.mixed_precision.metric": "success"})
    assert quantized_form(teacher, teacher.spec, task, recipe.quantize, "fp32") is None


@pytest.mark.parametrize("train", ["float", "shipped"])
def test_mixed_precision_raises_the_broken_layer_in_the_form_judged_too(tests_on_path, fast, tmp_path, train):
    result = build(BuildRequest(
        target="x86-64-cpu", policy="user_envs:make_fragile_reach_policy", output=str(tmp_path / "out"),
        overrides={**fast, "evaluate.env": ENV, "prune.method": "unstructured", "prune.sparsity": 0.2,
                   "quantize.format": "w8a8", "quantize.mixed_precision.enabled": True,
                   "prune.recovery.max_steps": 50, "prune.recovery.train": train}))
    extra = result.report["extra"]
    # The head's input carries the fragile channel: int8 weights with a float input are enough.
    assert extra["quantize"]["mixed_precision"]["raised"] == {"head": "w8a16"}
    assert extra["quantize"]["mixed_precision"]["kept_float"] == []
    recovery = extra["prune"]["recovery"]
    how = "post-training" if train == "float" else "trained through its quantizer"
    assert recovery["judged"] == f"quantized w8a8 (layers under 30 dB solo SQNR raised up the precision ladder, {how})"
    assert recovery["steps"] == 0 and recovery["before"]["success"] >= 0.95
    if train == "shipped":  # the layers raised were chosen on the pruned student, before recovery
        assert extra["quantize"]["mixed_precision"]["decided"] == "on the pruned student, before recovery trained it"
        assert extra["quantize"]["trained_in_recovery"] == {"steps": 0}
        assert "needed no training (`prune.recovery.train: shipped`); the layers raised were chosen before " \
            "training." in (result.bundle / "report.md").read_text()


def test_the_fragile_channel_is_what_breaks_w8a8():
    fragile = make_fragile_reach_policy()
    hidden = fragile.trunk(torch.rand(256, 4, generator=torch.Generator().manual_seed(1)))
    assert (hidden[:, FRAGILE_CHANNEL] == 500.0).all()
    others = torch.cat([hidden[:, :FRAGILE_CHANNEL], hidden[:, FRAGILE_CHANNEL + 1:]], 1)
    assert 0.0 < others.max() < 500.0 / 127 * 8  # the rest spans a few int8 levels of a scale sized for 500


@pytest.mark.parametrize("asked, confirmed", [(70, 70), (None, 120)])  # null: three times the screening episodes
def test_a_hit_is_screened_on_the_recovery_episodes_and_confirmed_on_others(
        tests_on_path, fast, tmp_path, monkeypatch, asked, confirmed):
    runs = []
    measure = edgevla.pipeline.torch_success

    def counted(policy, task, episodes, seed, loop):
        runs.append((episodes, seed))
        return measure(policy, task, episodes, seed, loop)
    monkeypatch.setattr(edgevla.pipeline, "torch_success", counted)
    result = build(BuildRequest(
        target="x86-64-cpu", policy="user_envs:make_reach_policy", output=str(tmp_path / "out"),
        overrides={**fast, "evaluate.env": ENV, "prune.method": "nm", "prune.pattern": "2:4",
                   "prune.recovery.episodes": 40, "prune.recovery.confirm_episodes": asked}))
    recovery = result.report["extra"]["prune"]["recovery"]
    assert recovery["recovered"] and recovery["confirm_episodes"] == confirmed and recovery["confirmations"]
    screens, confirms = runs.count((40, 20_000)), runs.count((confirmed, 20_040))
    # The original once on each set; the student at every evaluation and at every hit.
    assert screens == 1 + len(recovery["history"]) and confirms == 1 + len(recovery["confirmations"])
    assert len(runs) == screens + confirms  # nothing else ran through it (the gate runs the exported model)
