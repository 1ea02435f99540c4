"""The build recipe: defaults, the four-layer merge, and one-line errors for every kind of mistake."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevla.errors import EdgevlaError
from edgevla.recipe import (Recipe, load_recipe, nest_overrides, parse_assignments, prune_shorthand,
                            quantize_shorthand)
from edgevla.targets import load_target

# The defaults the brief fixes; written out so that a changed default is a visible decision.
DEFAULTS = {
    "policy": None,
    "prune": {"method": "none", "sparsity": 0.0, "pattern": "2:4", "structure": "neurons", "amount": 0.0,
              "scope": "trunk", "criterion": "magnitude", "schedule": "oneshot", "steps": 1,
              "allocation": "uniform", "allocation_cost": "params", "sensitivity_episodes": 20,
              "recovery": {"max_steps": 2000, "patience": 8, "eval_every": 50, "episodes": 100, "seed": 20_000,
                           "confirm": True, "confirm_episodes": None, "judge": "shipped", "train": "shipped",
                           "max_loss": None, "batch_size": 32, "lr": 3e-4, "precision": "fp32"}},
    "quantize": {"format": "none", "float_dtype": "auto", "group_size": 128, "int4_rounding": "gptq",
                 "int4_scaling": "awq", "tables": True,
                 "calibration": {"method": "minmax", "percentile": 99.99, "batches": 8, "batch_size": 32,
                                 "data": None},
                 "smoothquant": {"enabled": False, "alpha": 0.5},
                 "mixed_precision": {"enabled": False, "metric": "sqnr", "min_sqnr_db": 30.0, "ladder": True,
                                     "sensitivity_samples": 8,
                                     "max_loss": None, "episodes": 100, "seed": 30_000},
                 "qat": {"enabled": False, "steps": 200, "lr": 3e-5, "batch_size": 32},
                 "parity": {"atol": 0.05, "min_cosine": 0.999}},
    "export": {"opset": 18, "dynamic_batch": True},
    "verify": {"samples": 64, "atol": 1e-4, "min_cosine": 0.9999},
    "evaluate": {"episodes": 200, "seed": 10_000, "max_accuracy_loss": None, "gate": "estimate",
                 "backends": ["onnxruntime"],
                 "execute": 4, "latency_ticks": 0, "schedule": "sync", "ensemble_m": 0.01,
                 "env": None, "env_max_steps": 1000, "env_noise": 0.0, "env_workers": 0,
                 "tolerance": {"max_ticks": 0, "schedules": ["sync", "async", "ensemble"]}},
    "profile": {"warmup": 20, "runs": 200, "batch_sizes": [1, 4, 16], "backends": ["torch", "onnxruntime"],
                "threads": None},
    "efficiency": {"alpha": 0.4, "beta": 0.3, "gamma": 0.3},
}

TARGET_YAML = """\
name: test-board
description: a board for merge-order tests
kind: cpu
host_arch: x86_64
facts:
  compute_capability: null
  cuda_arch: null
  precisions: [fp32]
  memory_gb: 4
  memory_bandwidth_gbps: 10
  peak_tflops: {fp32: 0.1}
  cpu: {arch: x86-64-v4, cores: 2, model: test}
  preferred_channel_multiple: 16
budgets: {control_rate_hz: 10, latency_budget_ms: 50, memory_budget_mb: 1024, max_accuracy_loss: 0.05}
recipe:
  verify: {samples: 11, atol: 0.001}
  profile: {warmup: 7, runs: 111, batch_sizes: [2, 3]}
"""


@pytest.fixture
def board(tmp_path):
    path = tmp_path / "test-board.yaml"
    path.write_text(TARGET_YAML, encoding="utf-8")
    return load_target(path)


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(EdgevlaError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- defaults and round trips ----------------------------------------------------------------------

def test_defaults_are_the_documented_ones():
    assert Recipe.defaults().to_dict() == DEFAULTS
    assert load_recipe(None) == Recipe.defaults()


def test_sections_are_typed():
    r = Recipe.defaults()
    assert r.profile.batch_sizes == (1, 4, 16) and isinstance(r.profile.batch_sizes, tuple)
    assert r.evaluate.tolerance.schedules == ("sync", "async", "ensemble")  # nested sections' lists too
    assert isinstance(r.verify.atol, float) and isinstance(r.export.opset, int)
    with pytest.raises(AttributeError):
        r.profile.runs = 5  # frozen: a resolved recipe does not change behind the manifest's back


def test_to_dict_round_trips_through_dict_json_and_a_yaml_file(tmp_path, board):
    recipe = load_recipe(None, board, {"policy": "policies/act.pt", "evaluate.max_accuracy_loss": 0.01,
                                      "profile.threads": 2})
    data = recipe.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data: lists, not tuples
    assert Recipe.from_dict(data) == recipe
    assert load_recipe(write(tmp_path, yaml.safe_dump(data))) == recipe
    assert Recipe.from_dict(Recipe.defaults().to_dict()) == Recipe.defaults()


def test_an_empty_file_changes_nothing(tmp_path):
    assert load_recipe(write(tmp_path, "")) == Recipe.defaults()
    assert load_recipe(write(tmp_path, "# only a comment\n")) == Recipe.defaults()


# --- the merge ----------------------------------------------------------------------------------------

def test_merge_order_defaults_target_file_overrides(tmp_path, board):
    path = write(tmp_path, "verify: {samples: 22}\nprofile: {runs: 222}\nexport: {opset: 19}\n")
    recipe = load_recipe(path, board, {"profile.runs": 333})
    assert recipe.profile.runs == 333                  # CLI beats file, target and defaults
    assert recipe.verify.samples == 22                 # file beats target
    assert recipe.export.opset == 19                   # file beats defaults
    assert recipe.profile.warmup == 7                  # target beats defaults
    assert recipe.verify.atol == pytest.approx(1e-3)   # target key kept beside the file's key in one section
    assert recipe.profile.batch_sizes == (2, 3)        # target
    assert recipe.verify.min_cosine == pytest.approx(0.9999)  # default
    assert recipe.evaluate.episodes == 200             # default


def test_a_list_in_a_later_layer_replaces_the_earlier_list(tmp_path, board):
    recipe = load_recipe(write(tmp_path, "profile: {batch_sizes: [8]}\n"), board)
    assert recipe.profile.batch_sizes == (8,)


def test_a_builtin_targets_recipe_sits_under_the_users_file(tmp_path):
    arm = load_target("arm64-cpu")
    assert load_recipe(None, arm).profile.runs == 100
    assert load_recipe(write(tmp_path, "profile: {runs: 150}\n"), arm).profile.runs == 150
    assert load_recipe(write(tmp_path, "profile: {runs: 150}\n"), arm).profile.warmup == 10


@settings(max_examples=40, deadline=None)
@given(target=st.none() | st.integers(1, 10**6), file=st.none() | st.integers(1, 10**6),
       cli=st.none() | st.integers(1, 10**6))
def test_the_last_layer_that_sets_a_key_wins(tmp_path_factory, target, file, cli):
    folder = tmp_path_factory.mktemp("layers")
    text = TARGET_YAML.replace("runs: 111", f"runs: {target}") if target else TARGET_YAML.replace("runs: 111, ", "")
    board = load_target(write(folder, text, "test-board.yaml"))
    path = write(folder, f"profile: {{runs: {file}}}\n") if file else None
    recipe = load_recipe(path, board, {"profile": {"runs": cli}} if cli else None)
    expected = next(v for v in (cli, file, target, 200) if v is not None)
    assert recipe.profile.runs == expected


def test_apply_overrides_accepts_dotted_and_nested_keys_and_returns_a_new_recipe():
    base = Recipe.defaults()
    changed = base.apply_overrides({"profile.runs": 5, "profile": {"warmup": 1}, "policy": "act.pt",
                                    "evaluate.backends": ["torch", "onnxruntime"]})
    assert (changed.profile.runs, changed.profile.warmup, changed.policy) == (5, 1, "act.pt")
    assert changed.evaluate.backends == ("torch", "onnxruntime")
    assert base == Recipe.defaults()
    assert nest_overrides({"a.b.c": 1, "a.b": {"d": 2}}) == {"a": {"b": {"c": 1, "d": 2}}}


def test_parse_assignments_reads_values_as_yaml():
    assert parse_assignments(["profile.runs=50", "verify.atol=1e-3", "profile.batch_sizes=[1, 2]",
                              "profile.threads=null", "policy=act.pt"]) == {
        "profile.runs": 50, "verify.atol": 1e-3, "profile.batch_sizes": [1, 2], "profile.threads": None,
        "policy": "act.pt"}
    assert "expected KEY=VALUE" in error_of(parse_assignments, ["profile.runs"])
    recipe = Recipe.defaults().apply_overrides(parse_assignments(["profile.runs=50"]))
    assert recipe.profile.runs == 50


def test_accuracy_loss_budget_falls_back_to_the_target(board):
    assert load_recipe(None, board).accuracy_loss_budget(board) == pytest.approx(0.05)
    own = load_recipe(None, board, {"evaluate.max_accuracy_loss": 0.01})
    assert own.accuracy_loss_budget(board) == pytest.approx(0.01)


# --- efficiency weights -----------------------------------------------------------------------------

def test_efficiency_weights_must_sum_to_one():
    message = error_of(Recipe.defaults().apply_overrides, {"efficiency.alpha": 0.5})
    assert message == "recipe: efficiency: alpha + beta + gamma must sum to 1, got 1.1 (0.5 + 0.3 + 0.3)"
    ok = Recipe.defaults().apply_overrides({"efficiency": {"alpha": 0.5, "beta": 0.2, "gamma": 0.3}})
    assert (ok.efficiency.alpha, ok.efficiency.beta, ok.efficiency.gamma) == (0.5, 0.2, 0.3)


def test_efficiency_sum_tolerance_is_one_millionth():
    Recipe.from_dict({"efficiency": {"alpha": 0.4, "beta": 0.3, "gamma": 0.3 + 5e-7}})
    with pytest.raises(EdgevlaError, match="must sum to 1"):
        Recipe.from_dict({"efficiency": {"alpha": 0.4, "beta": 0.3, "gamma": 0.3 + 5e-6}})


def test_efficiency_weights_cannot_be_negative():
    message = error_of(Recipe.from_dict, {"efficiency": {"alpha": 1.2, "beta": -0.2, "gamma": 0.0}})
    assert "efficiency.alpha: expected number in [0, 1], got 1.2" in message


# --- methods not implemented yet -----------------------------------------------------------------------

def test_an_unknown_prune_method_is_refused_clearly(tmp_path):
    message = error_of(load_recipe, None, None, {"prune.method": "2:4"})
    assert message == "recipe: prune.method '2:4' is not supported yet (supported: none, unstructured, nm, structured)"
    path = write(tmp_path, "prune:\n  method: magnitude\n  sparsity: 0.5\n")
    assert error_of(load_recipe, path) == (
        f"recipe {path}: prune.method 'magnitude' is not supported yet (supported: none, unstructured, nm, structured)")


def test_the_quantize_section_reads_every_option(tmp_path):
    recipe = load_recipe(write(tmp_path, "quantize:\n  format: w4a16\n  group_size: 64\n  float_dtype: bf16\n"
                                         "  tables: false\n"
                                         "  calibration: {method: percentile, percentile: 99.9, batches: 3,"
                                         " batch_size: 16, data: calib}\n"
                                         "  smoothquant: {enabled: true, alpha: 0.8}\n"
                                         "  mixed_precision: {enabled: true, metric: success, max_loss: 0.01}\n"
                                         "  qat: {enabled: true, steps: 50, lr: 2e-5}\n"
                                         "  parity: {atol: 0.01}\n"))
    q = recipe.quantize
    assert (q.format, q.group_size, q.float_dtype, q.tables) == ("w4a16", 64, "bf16", False)
    c = q.calibration
    assert (c.method, c.percentile, c.batches, c.batch_size, c.data) == ("percentile", 99.9, 3, 16, "calib")
    assert (q.smoothquant.enabled, q.smoothquant.alpha) == (True, 0.8)
    assert load_recipe(None, None, {"quantize.smoothquant.alpha": "auto"}).quantize.smoothquant.alpha == "auto"
    m = q.mixed_precision
    assert (m.enabled, m.metric, m.max_loss, m.min_sqnr_db, m.episodes) == (True, "success", 0.01, 30.0, 100)
    assert (q.qat.enabled, q.qat.steps, q.qat.lr, q.qat.batch_size) == (True, 50, 2e-5, 32)
    assert (q.parity.atol, q.parity.min_cosine) == (0.01, 0.999)
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("overrides, expected", [
    ({"quantize.format": "int3"}, "recipe: quantize.format: expected one of none, w8a8, w8a16, w4a16, fp16, fp8, "
                                  "got 'int3'"),
    ({"quantize.group_size": 48}, "recipe: quantize.group_size: expected one of 32, 64, 128, got 48"),
    ({"quantize.smoothquant.alpha": 1.5}, "recipe: quantize.smoothquant.alpha: expected number in [0, 1] or one "
                                          "of auto, got 1.5"),
    ({"quantize.smoothquant.alpha": "best"}, "recipe: quantize.smoothquant.alpha: expected number in [0, 1] or one "
                                             "of auto, got 'best'"),
    ({"quantize.calibration.method": "kl"}, "recipe: quantize.calibration.method: expected one of minmax, "
                                            "percentile, entropy, mse, got 'kl'"),
    ({"quantize.calibration.batches": 0}, "recipe: quantize.calibration.batches: expected int >= 1, got 0"),
    ({"quantize.calibration.percentile": 0}, "recipe: quantize.calibration.percentile: expected number in "
                                             "(0, 100], got 0"),
    ({"quantize.mixed_precision.metric": "loss"}, "recipe: quantize.mixed_precision.metric: expected one of "
                                                  "sqnr, success, got 'loss'"),
    ({"quantize.qat.steps": 0}, "recipe: quantize.qat.steps: expected int >= 1, got 0"),
    ({"quantize.qat.lr": 0}, "recipe: quantize.qat.lr: expected number > 0, got 0"),
    ({"quantize.float_dtype": "fp8"}, "recipe: quantize.float_dtype: expected one of auto, fp16, bf16, fp32, "
                                      "got 'fp8'"),
    ({"quantize.method": "w8a8"}, "recipe: quantize: unknown key 'method' (known: format, float_dtype, group_size, "
                                  "int4_rounding, int4_scaling, tables, calibration, smoothquant, mixed_precision, "
                                  "qat, parity)"),
])
def test_bad_quantize_values_are_one_line_errors(overrides, expected):
    assert error_of(load_recipe, None, None, overrides) == expected


def test_quantize_shorthand_overrides_the_file_and_the_target(tmp_path, board):
    assert quantize_shorthand("W8A8") == {"quantize.format": "w8a8"}
    assert error_of(quantize_shorthand, "int8") == ("--quantize: expected one of none, w8a8, w8a16, w4a16, fp16, "
                                                    "fp8, got 'int8'")
    path = write(tmp_path, "quantize: {format: w4a16, group_size: 32}\n")
    recipe = load_recipe(path, board, quantize_shorthand("fp8"))
    assert (recipe.quantize.format, recipe.quantize.group_size) == ("fp8", 32)  # only the format is replaced


def test_the_prune_section_reads_every_method(tmp_path):
    recipe = load_recipe(write(tmp_path, "prune:\n  method: structured\n  structure: heads\n  amount: 0.3\n"
                                         "  criterion: wanda\n  schedule: cubic\n  steps: 3\n"
                                         "  recovery: {max_steps: 40, max_loss: 0.01}\n"))
    p = recipe.prune
    assert (p.method, p.structure, p.amount, p.criterion, p.schedule, p.steps) == (
        "structured", "heads", 0.3, "wanda", "cubic", 3)
    assert (p.recovery.max_steps, p.recovery.max_loss, p.recovery.eval_every) == (40, 0.01, 50)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    nm = Recipe.from_dict({"prune": {"method": "nm", "pattern": "4:8"}}).prune
    assert (nm.method, nm.pattern, nm.sparsity) == ("nm", "4:8", 0.0)
    assert "prune.sparsity: expected number in [0, 1), got 1" in error_of(
        Recipe.from_dict, {"prune": {"sparsity": 1}})
    assert "prune.sparsity 0.5 needs a prune method" in error_of(Recipe.from_dict, {"prune": {"sparsity": 0.5}})
    assert error_of(Recipe.from_dict, {"prune": {"method": "unstructured"}}) == (
        "recipe: prune.method unstructured needs prune.sparsity > 0")
    assert error_of(Recipe.from_dict, {"prune": {"method": "nm", "amount": 0.5}}) == (
        "recipe: prune.amount 0.5 is for method structured, method is nm")
    assert "prune.pattern: expected one of 2:4, 4:8, got '1:4'" in error_of(
        Recipe.from_dict, {"prune": {"method": "nm", "pattern": "1:4"}})
    assert error_of(load_recipe, write(tmp_path, "prune: {method: nm, pattern: 2:4}\n")).endswith(
        "prune.pattern: got the number 124: YAML reads an unquoted N:M as base 60; quote it, like \"2:4\"")
    assert "prune.structure: expected one of neurons, heads, width, blocks, got 'channel'" in error_of(
        Recipe.from_dict, {"prune": {"structure": "channel"}})
    assert "prune.recovery: unknown key 'max_step'" in error_of(
        Recipe.from_dict, {"prune": {"recovery": {"max_step": 5}}})
    assert error_of(Recipe.from_dict, {"prune": {"method": "nm", "allocation": "sensitivity"}}) == (
        "recipe: prune.allocation sensitivity is for method unstructured with schedule oneshot, "
        "got method nm, schedule oneshot")
    assert "prune.allocation_cost: expected one of params, flops, latency, got 'watts'" in error_of(
        Recipe.from_dict, {"prune": {"allocation_cost": "watts"}})


def test_prune_shorthand_keeps_a_sensitivity_allocation_only_for_unstructured(tmp_path):
    path = write(tmp_path, "prune: {method: unstructured, sparsity: 0.6, allocation: sensitivity}\n")
    assert load_recipe(path, None, prune_shorthand("unstructured:0.8")).prune.allocation == "sensitivity"
    for text, method, allocation in (("2:4", "nm", "uniform"), ("structured:0.5", "structured", "uniform"),
                                     ("none", "none", "sensitivity")):  # method none: allocation unused
        prune = load_recipe(path, None, prune_shorthand(text)).prune
        assert (prune.method, prune.allocation) == (method, allocation)


@pytest.mark.parametrize("text, method, key, value", [
    ("none", "none", None, None), ("2:4", "nm", "pattern", "2:4"), ("4:8", "nm", "pattern", "4:8"),
    ("unstructured:0.8", "unstructured", "sparsity", 0.8), ("structured:0.5", "structured", "amount", 0.5),
    ("structured:0.5:blocks", "structured", "structure", "blocks"),
    ("structured:0.3:width", "structured", "structure", "width"),
])
def test_prune_shorthand_overrides_the_file_and_the_target(tmp_path, text, method, key, value):
    path = write(tmp_path, "prune: {method: unstructured, sparsity: 0.6, pattern: '4:8'}\n")
    prune = load_recipe(path, None, prune_shorthand(text)).prune
    assert prune.method == method
    if key is not None:
        assert getattr(prune, key) == value
    if method != "unstructured":
        assert prune.sparsity == 0.0  # the file's sparsity does not outlive its method


@pytest.mark.parametrize("text", ["3:4", "2:8x", "unstructured", "unstructured:1", "unstructured:0",
                                  "structured:-0.5", "structured:half", "magnitude:0.5", "",
                                  "structured:0.5:channels", "structured:0.5:blocks:2", "unstructured:0.5:blocks"])
def test_bad_prune_shorthand_is_one_line(text):
    assert error_of(prune_shorthand, text) == (
        "--prune: expected none, 2:4, 4:8, unstructured:S or structured:A[:neurons|heads|width|blocks] "
        f"(S, A fractions in (0, 1)), got {text!r}")


# --- one-line errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ({"profile.runs": "abc"}, "recipe: profile.runs: expected int >= 1, got 'abc'"),
    ({"profile.runs": 0}, "recipe: profile.runs: expected int >= 1, got 0"),
    ({"profile.runs": True}, "recipe: profile.runs: expected int >= 1, got True"),
    ({"profile.runs": 2.0}, "recipe: profile.runs: expected int >= 1, got 2.0"),
    ({"profile.threads": "all"}, "recipe: profile.threads: expected int >= 1 or null, got 'all'"),
    ({"profile.batch_sizes": [1, "4"]}, "recipe: profile.batch_sizes[1]: expected int >= 1, got '4'"),
    ({"profile.batch_sizes": [1, 1]}, "recipe: profile.batch_sizes[1]: 1 is listed twice"),
    ({"profile.batch_sizes": []}, "recipe: profile.batch_sizes: expected a non-empty list of int >= 1, got []"),
    ({"profile.backends": ["tensorrt"]}, "recipe: profile.backends[0]: expected one of torch, onnxruntime, "
                                         "got 'tensorrt'"),
    ({"export.opset": 12}, "recipe: export.opset: expected int in [17, 21], got 12"),
    ({"export.dynamic_batch": "yes please"}, "recipe: export.dynamic_batch: expected true or false, "
                                              "got 'yes please'"),
    ({"verify.atol": float("nan")}, "recipe: verify.atol: expected number >= 0, got nan"),
    ({"verify.min_cosine": 1.5}, "recipe: verify.min_cosine: expected number in [0, 1], got 1.5"),
    ({"evaluate.max_accuracy_loss": -0.1}, "recipe: evaluate.max_accuracy_loss: expected number in [0, 1] or "
                                           "null, got -0.1"),
    ({"policy": ""}, "recipe: policy: expected a non-empty string or null, got ''"),
    ({"evaluate.tolerance.max_ticks": -1}, "recipe: evaluate.tolerance.max_ticks: expected int >= 0, got -1"),
    ({"evaluate.tolerance.schedules": ["async", "later"]}, "recipe: evaluate.tolerance.schedules[1]: expected one "
                                                           "of sync, async, ensemble, got 'later'"),
    ({"prunning": {}}, "recipe: unknown key 'prunning' (did you mean 'prune'? known: policy, prune, quantize, "
                       "export, verify, evaluate, profile, efficiency)"),
    ({"profile.run": 3}, "recipe: profile: unknown key 'run' (did you mean 'runs'? known: warmup, runs, "
                         "batch_sizes, backends, threads)"),
    ({"profile": 5}, "recipe: profile: expected a mapping, got 5"),
    ({"profile..runs": 5}, "recipe: override key 'profile..runs' is not a dotted name like 'profile.runs'"),
])
def test_bad_values_give_one_line_naming_the_dotted_path(overrides, expected):
    assert error_of(load_recipe, None, None, overrides) == expected


def test_errors_in_a_file_name_the_file(tmp_path):
    path = write(tmp_path, "profile:\n  runs: abc\n")
    assert error_of(load_recipe, path) == f"recipe {path}: profile.runs: expected int >= 1, got 'abc'"
    path = write(tmp_path, "- just\n- a list\n")
    assert error_of(load_recipe, path) == f"recipe {path}: expected a mapping, got ['just', 'a list']"


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "profile:\n  runs: 5\n  batch_sizes: [1, 4\n")
    message = error_of(load_recipe, path)
    assert message.startswith(f"recipe {path}: not valid YAML:") and "(line " in message


def test_a_key_given_twice_is_refused(tmp_path):
    path = write(tmp_path, "profile: {runs: 5}\nprofile: {warmup: 1}\n")
    assert "key 'profile' is given twice (line 2" in error_of(load_recipe, path)


def test_a_missing_file_is_a_one_line_error(tmp_path):
    assert "does not exist" in error_of(load_recipe, tmp_path / "nope.yaml")


def test_exponent_floats_are_numbers_in_files(tmp_path):
    """PyYAML alone reads `1e-4` as a string; a recipe file must not."""
    recipe = load_recipe(write(tmp_path, "verify: {atol: 1e-5, min_cosine: 9.99e-1}\n"))
    assert recipe.verify.atol == pytest.approx(1e-5) and recipe.verify.min_cosine == pytest.approx(0.999)
