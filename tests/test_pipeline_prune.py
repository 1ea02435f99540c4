"""``edgevla build`` with pruning: the exact pattern in the exported ONNX weights, the manifest's per-layer
record, structured pruning that ships a smaller graph, and the recovery figures in the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgevla.bundle import load_bundle, load_weights
from edgevla.cli import main
from edgevla.export import match_initializers
from edgevla.models.vla import VLAConfig, VLAPolicy
from edgevla.pipeline import BuildRequest, build, pruning_markdown
from edgevla.prune import follows_nm
from edgevla.recipe import prune_shorthand

# Small recovery budgets: recovery runs for real, on few episodes.
RECOVERY = {"prune.recovery.episodes": 30, "prune.recovery.max_steps": 60, "prune.recovery.eval_every": 20}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _build(tmp_path_factory, fast, memo, shorthand: str, **extra):
    out = tmp_path_factory.mktemp("pruned") / shorthand.replace(":", "_")
    return build(BuildRequest(target="jetson-orin", output=str(out),
                              overrides={**fast, **RECOVERY, **prune_shorthand(shorthand), **extra}, memo=memo))


def _trunk_linears(policy) -> list[str]:
    return [n for n, m in policy.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("trunk.")]


def _exported_weights(root) -> tuple[VLAPolicy, dict[str, np.ndarray]]:
    """The bundle's policy rebuilt from its weights, and each weight as the ONNX graph holds it."""
    manifest = json.loads((root / "manifest.json").read_text())
    policy = VLAPolicy(VLAConfig.from_dict(manifest["policy"]["config"]))
    policy.load_state_dict(load_weights(root / "weights.safetensors")[0])
    model = onnx.load(str(root / "model.onnx"))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    refs = match_initializers(model, policy)
    return policy, {n: arrays[r.name].T if r.transposed else arrays[r.name] for n, r in refs.items()}


@pytest.fixture(scope="module")
def nm_bundle(tmp_path_factory, fast, original_memo):
    return _build(tmp_path_factory, fast, original_memo, "2:4")


def test_2_4_holds_exactly_in_every_exported_trunk_linear(nm_bundle):
    policy, exported = _exported_weights(nm_bundle.bundle)
    trunk = _trunk_linears(policy)
    assert len(trunk) == 18
    for name in trunk:
        w = exported[f"{name}.weight"]  # every trunk weight is found in the graph
        groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(axis=-1)
        assert (groups == 2).all(), name  # exactly 2 of every 4: the random trained weights have no ties at 0
        assert follows_nm(torch.from_numpy(np.array(w)), 2, 4)
    assert (exported["action_head.weight"] != 0).all()  # outside the trunk nothing is touched


def test_manifest_layers_record_the_pattern(nm_bundle):
    layers = {row["name"]: row for row in load_bundle(nm_bundle.bundle).manifest["layers"]}
    for name, row in layers.items():
        if name.startswith("trunk."):
            assert (row["pattern"], row["sparsity"], row["precision"]) == ("2:4", 0.5, "fp32"), name
        else:
            assert row["pattern"] == "dense" and row["sparsity"] == 0.0, name
    assert layers["trunk.0.mlp.fc1"]["shape"] == [384, 96]


def test_the_report_carries_what_was_pruned_and_the_recovery_figures(nm_bundle):
    prune = nm_bundle.report["extra"]["prune"]
    assert (prune["method"], prune["pattern"], prune["scope"]) == ("nm", "2:4", "trunk")
    assert prune["scope_zero_weights"] == sum(np.prod(s) for s in
                                              [(96, 96)] * 12 + [(384, 96), (96, 384)] * 3) // 2
    recovery = prune["recovery"]
    assert recovery["recovered"] and recovery["steps_to_recover"] <= 60
    for key in ("samples_per_s", "seconds_per_epoch", "train_seconds", "teacher_success"):
        assert key in recovery
    assert recovery["max_loss"] == pytest.approx(0.01)  # null: half the build's budget (jetson-agx-orin's 2 %)
    assert nm_bundle.report["extra"]["verify"]["passed"]
    # report.md says the same: what was pruned, and recovery's course.
    md = (nm_bundle.bundle / "report.md").read_text().split("## Pruning\n", 1)[1].split("\n## ", 1)[0]
    assert (f"**2:4 on 18 Linear layers, 50.0% of their weights zero** under `trunk` (magnitude importance, "
            f"oneshot schedule): {prune['scope_zero_weights']:,} of its {prune['scope_params_before']:,} "
            f"parameters zero.") in md
    assert (f"success measured on the pruned float model: {recovery['before']['success']:.1%} after pruning, "
            f"{recovery['after']['success']:.1%} after {recovery['steps']} steps") in md
    assert f"on {recovery['confirm_episodes']} other episodes" in md and recovery["confirm_episodes"] == 90
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == (len(recovery["history"]) if len(recovery["history"]) > 1 else 0)


def test_the_report_says_what_structured_pruning_removed_and_when_recovery_could_not_run():
    info = {"method": "structured", "structure": "heads", "amount": 0.25, "unit_fraction": 0.5, "round_to": 16,
            "scope": None, "criterion": "taylor", "schedule": "cubic", "steps": 3, "scope_params_before": 1000,
            "scope_params_after": 750, "scope_zero_weights": 0, "params_before": 1000, "params_after": 750,
            "recovery": "not run: no closed-loop task speaks this policy's observations"}
    md = pruning_markdown(info)
    assert ("**structured, heads: 25% of the scope's parameters (50% of each group's units, kept channels "
            "multiples of 16)** in the whole policy (taylor importance, cubic schedule over 3 steps): 250 of its "
            "1,000 parameters removed; parameters 1,000 → 750.") in md
    assert "Recovery not run: no closed-loop task speaks this policy's observations." in md
    # Groups too coarse for one fraction to reach the goal: each its own (prune/parameter_goal.py).
    md = pruning_markdown({**info, "structure": "neurons", "unit_fraction": {"trunk.0.fc1": 0.5, "trunk.1.fc1": 0.5}})
    assert ("**structured, neurons: 25% of the scope's parameters (a fraction of the units per group: 2 groups 50%, "
            "kept channels multiples of 16)**") in md


def test_the_gate_and_recovery_judge_the_robots_loop(tmp_path_factory, fast, nm_bundle, capsys, original_memo):
    """With the robot's loop in the recipe (queries 2 ticks late, asynchronous), the recovery is judged in that
    loop too: it trains until the far end of each chunk, which that loop executes, is good again."""
    late = _build(tmp_path_factory, fast, original_memo, "2:4", **{
        "evaluate.latency_ticks": 2, "evaluate.schedule": "async", "evaluate.tolerance.max_ticks": 2,
        "evaluate.tolerance.schedules": ["async", "sync"]})
    recovery = late.report["extra"]["prune"]["recovery"]
    assert recovery["before"]["success"] < recovery["after"]["success"] and recovery["steps"] > 0
    assert load_bundle(late.bundle).manifest["recipe"]["evaluate"]["schedule"] == "async"
    assert late.report["extra"]["robot_loop"] == {"execute": 4, "latency_ticks": 2, "schedule": "async"}
    assert "async, each chunk 2 control tick(s) late" in (late.bundle / "report.md").read_text()
    from edgevla.deploy import BundlePolicy
    from edgevla.pipeline import task_for
    from edgevla.task import evaluate

    success = {}
    for name, result in (("zero-latency gate", nm_bundle), ("robot-loop gate", late)):
        with BundlePolicy(result.bundle, backend="onnxruntime", threads=1) as policy:
            success[name] = evaluate(policy, task_for(policy.spec), episodes=60, latency_ticks=2,
                                     asynchronous=True).success_rate
    assert success["robot-loop gate"] >= 0.95 and success["robot-loop gate"] >= success["zero-latency gate"]

    # The latency tolerance ran on the gate's episodes: the gate's own point is its figure, not run again.
    tolerance = late.report["extra"]["latency_tolerance"]
    gate = late.report["extra"]["evaluate"]
    assert list(tolerance["schedules"]) == ["async", "sync"] and tolerance["max_ticks"] == 2
    assert tolerance["floor"] == pytest.approx(gate["original/torch"]["success_rate"] - 0.02)
    for label, key in (("original", "original/torch"), ("built", "built/onnxruntime")):
        curve = tolerance["schedules"]["async"][label]
        assert (curve["success"][2], curve["mean_steps"][2]) == (gate[key]["success_rate"], gate[key]["mean_steps"])
        assert tolerance["schedules"]["sync"][label]["success"][0] == curve["success"][0]  # one loop at 0 ticks
    md = (late.bundle / "report.md").read_text()
    assert "## Latency tolerance (closed loop)" in md and "| async | built (onnxruntime) |" in md

    # profile says which schedules the build proved at the latency it measures
    code = main(["profile", str(late.bundle), "--runs", "5", "--warmup", "1", "--json"])
    fit = json.loads(capsys.readouterr().out)["latency_tolerance"]
    assert code == 0 and fit["max_ticks"] == 2 and set(fit["schedules"]) == {"async", "sync"}
    assert fit["schedules"]["async"]["tolerated"] == tolerance["schedules"]["async"]["built"]["tolerated"]


def test_unstructured_zeros_the_asked_fraction_of_trunk_weights(tmp_path_factory, fast, original_memo):
    # The gate is judged on other episodes than recovery's; a looser gate keeps this test about the zeros.
    result = _build(tmp_path_factory, fast, original_memo, "unstructured:0.8", **{"evaluate.max_accuracy_loss": 0.1})
    policy, exported = _exported_weights(result.bundle)
    for name in _trunk_linears(policy):
        w = exported[f"{name}.weight"]
        assert float((w == 0).mean()) == pytest.approx(0.8, abs=1 / w.size), name
    layers = {row["name"]: row for row in load_bundle(result.bundle).manifest["layers"]}
    assert layers["trunk.1.attn.q"]["pattern"] == "unstructured"
    assert layers["trunk.1.attn.q"]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert layers["vision.patch_embed"]["pattern"] == "dense"
    # zeros change values only: the exported graph is the original's, re-weighted (export.trace_cache)
    assert result.report["extra"]["onnx_graph"] == "re-weighted"


def test_sensitivity_allocation_spreads_latency_over_layers_and_reports_it(tmp_path_factory, fast, original_memo):
    # One trunk block (6 linears), half of its measured latency removed where the action error grows least.
    result = _build(tmp_path_factory, fast, original_memo, "unstructured:0.5", **{
        "prune.scope": "trunk.0", "prune.allocation": "sensitivity", "prune.allocation_cost": "latency",
        "prune.sensitivity_episodes": 10, "evaluate.max_accuracy_loss": 0.2})
    section = result.report["extra"]["prune"]["sensitivity"]
    assert section["cost"] == "latency" and section["target"] == 0.5
    assert section["achieved"] == pytest.approx(0.5, abs=1e-3)
    curves = {c["unit"]: c for c in section["curves"]}
    assert sorted(curves) == sorted(f"trunk.0.{n}" for n in ("attn.q", "attn.k", "attn.v", "attn.out",
                                                              "mlp.fc1", "mlp.fc2"))
    assert all(c["latency_us"] > 0 and c["sparsities"] == [0.25, 0.5, 0.75, 0.9] for c in curves.values())
    removed = sum(section["layer_sparsity"][u] * c["latency_us"] for u, c in curves.items())
    assert removed == pytest.approx(0.5 * sum(c["latency_us"] for c in curves.values()), rel=1e-3)
    # The shipped weights hold exactly the allocated zeros, layer by layer (recovery keeps masks): the
    # mask zeroes round(s * size) weights for the exact s; the report gives s to 6 decimals.
    _, exported = _exported_weights(result.bundle)
    for unit, s in section["layer_sparsity"].items():
        w = exported[f"{unit}.weight"]
        assert abs(int((w == 0).sum()) - s * w.size) <= 0.5 + 5e-7 * w.size, unit
    assert len(set(round(s, 3) for s in section["layer_sparsity"].values())) > 1  # non-uniform
    assert "## Pruning sensitivity" in (result.bundle / "report.md").read_text()
    assert "sensitivity.png" in load_bundle(result.bundle).manifest["files"]


def test_structured_ships_a_smaller_graph_that_still_verifies(tmp_path_factory, fast, capsys, original_memo):
    result = _build(tmp_path_factory, fast, original_memo, "structured:0.5")
    report, prune = result.report, result.report["extra"]["prune"]
    assert prune["scope_params_after"] <= 0.5 * prune["scope_params_before"]
    assert report["models"]["built"]["params"]["total"] == prune["params_after"] < prune["params_before"]
    assert report["models"]["built"]["size_bytes"] < 0.8 * report["models"]["original"]["size_bytes"]
    assert report["extra"]["verify"]["passed"] and report["extra"]["onnx_graph"] == "traced"  # new shapes
    layers = {row["name"]: row for row in load_bundle(result.bundle).manifest["layers"]}
    hidden = layers["trunk.0.mlp.fc1"]["shape"][0]
    assert hidden < 384 and hidden % 16 == 0  # kept channels round to the target's preferred multiple
    assert layers["trunk.0.mlp.fc2"]["shape"] == [96, hidden] and layers["trunk.0.mlp.fc1"]["pattern"] == "dense"
    onnx.checker.check_model(str(result.bundle / "model.onnx"), full_check=True)
    # The pruned shapes survive the bundle: the torch backend rebuilds them from the
    # manifest's architecture delta and agrees with ONNX Runtime on the same inputs.
    from edgevla.deploy import bundle_runner
    from edgevla.pipeline import heldout_observations

    bundle = load_bundle(result.bundle)
    assert bundle.manifest["policy"]["architecture"]["attributes"]["trunk.0.mlp.fc1"]["out_features"] == hidden
    obs = heldout_observations(bundle.spec, 8)
    with bundle_runner(bundle, "torch") as t, bundle_runner(bundle, "onnxruntime") as o:
        np.testing.assert_allclose(t(obs), o(obs), atol=1e-4)
    assert main(["eval", str(result.bundle), "--backend", "torch", "-n", "2"]) == 0


def test_width_pruning_ships_a_narrower_residual_stream(tmp_path_factory, fast, original_memo):
    """The residual width shrinks everywhere it reaches (norms, embeddings, every reader and writer of the
    stream, the positional table): the bundle rebuilds it from the architecture delta and agrees with ONNX
    Runtime, and recovery brought success back within budget."""
    result = _build(tmp_path_factory, fast, original_memo, "structured:0.25:width", **{"prune.scope": None})
    prune = result.report["extra"]["prune"]
    assert prune["structure"] == "width" and prune["params_after"] <= 0.75 * prune["params_before"]
    assert result.report["extra"]["verify"]["passed"]
    layers = {row["name"]: row for row in load_bundle(result.bundle).manifest["layers"]}
    width = layers["trunk.0.attn.q"]["shape"][1]
    assert width < 96 and width % 16 == 0
    assert layers["trunk.2.mlp.fc2"]["shape"][0] == layers["action_head"]["shape"][1] == width
    from edgevla.deploy import bundle_runner
    from edgevla.pipeline import heldout_observations

    bundle = load_bundle(result.bundle)
    assert bundle.manifest["policy"]["architecture"]["attributes"]["ln_f"]["normalized_shape"] == [width]
    obs = heldout_observations(bundle.spec, 8)
    with bundle_runner(bundle, "torch") as t, bundle_runner(bundle, "onnxruntime") as o:
        np.testing.assert_allclose(t(obs), o(obs), atol=1e-4)
