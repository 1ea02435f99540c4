"""The ``edgevla`` command line: every command, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from edgevla import native
from edgevla.cli import main
from edgevla.models.vla import CONFIGS, VLAPolicy
from edgevla.targets import load_target


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    """The error is the last line on stderr, alone (stage progress lines may come before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgevla: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def test_targets_json(capsys):
    code, out, _ = run(capsys, "targets", "--json")
    assert code == 0
    targets = {t["name"]: t for t in json.loads(out)}
    assert {"jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "jetson-thor", "rtx-4090", "h100",
            "x86-64-cpu", "x86-64-avx2", "arm64-cpu"} <= set(targets)
    assert targets["x86-64-avx2"]["facts"]["cpu"]["kernels"] == "avx_vnni"


def test_targets_table(capsys):
    code, out, _ = run(capsys, "targets")
    assert code == 0 and "jetson-agx-orin" in out and "jetson-orin" in out
    assert "CPU kernels" in out and "avx_vnni" in out


def test_unknown_target(capsys, tmp_path):
    code, _, err = run(capsys, "build", "--target", "jetson-nope", "-o", str(tmp_path / "b"))
    assert code == 2
    line = one_line_error(err)
    assert "jetson-nope" in line and "jetson-agx-orin" in line
    assert not (tmp_path / "b").exists()


def test_unknown_policy(capsys, tmp_path):
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "--policy", "not-a-policy", "-o", str(tmp_path / "b"))
    assert code == 2
    assert "unknown policy 'not-a-policy'" in one_line_error(err)


@pytest.mark.parametrize("recipe, message", [
    ({"prunning": {"method": "none"}}, "unknown key 'prunning'"),
    ({"profile": {"runs": "many"}}, "profile.runs"),
    ({"verify": {"atol": -1.0}}, "verify.atol"),
    ({"quantize": {"format": "int3"}}, "quantize.format"),
    ({"efficiency": {"alpha": 0.5, "beta": 0.5, "gamma": 0.5}}, "sum"),
])
def test_bad_recipe(capsys, tmp_path, recipe, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "--recipe", str(path), "-o", str(tmp_path / "b"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["3:4", "unstructured:1.5", "structured", "dense", "structured:0"])
def test_bad_prune_shorthand_is_one_line_before_any_work(capsys, tmp_path, value):
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "--prune", value, "-o", str(tmp_path / "b"))
    assert code == 2
    line = one_line_error(err)
    assert line == ("edgevla: error: --prune: expected none, 2:4, 4:8, unstructured:S or "
                    f"structured:A[:neurons|heads|width|blocks] (S, A fractions in (0, 1)), got {value!r}")
    assert not (tmp_path / "b").exists() and "load" not in err  # refused before the first stage


@pytest.mark.parametrize("assignment, message", [
    ("prune.scope", "--set: expected KEY=VALUE like profile.runs=50, got 'prune.scope'"),
    ("prune.bogus=1", "recipe: prune: unknown key 'bogus'"),
    ("profile.runs=many", "profile.runs"),
    ("prune.sparsity=0.5", "prune.sparsity 0.5 needs a prune method (method is none)"),  # YAML: a float
])
def test_bad_set_is_one_line_before_any_work(capsys, tmp_path, assignment, message):
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "--set", "profile.runs=5", "--set", assignment,
                       "-o", str(tmp_path / "b"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "b").exists() and "analyze" not in err


def test_recipe_that_is_not_yaml(capsys, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("verify: [unclosed\n")
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "--recipe", str(path))
    assert code == 2
    one_line_error(err)


def test_output_is_a_file(capsys, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "-o", str(f))
    assert code == 2 and "is a file" in one_line_error(err)
    assert f.read_text() == "mine"


def test_output_under_a_file_cannot_be_written(capsys, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    code, _, err = run(capsys, "build", "--target", "jetson-orin", "-o", str(f / "bundle"))
    assert code == 2 and "not a directory" in one_line_error(err)


def test_pickle_checkpoint_refused_then_allowed(capsys, tmp_path):
    cfg = CONFIGS["tiny-vla"]
    path = tmp_path / "policy.pt"
    torch.save({"config": cfg.to_dict(), "state_dict": VLAPolicy(cfg).state_dict()}, path)
    code, _, err = run(capsys, "profile", str(path), "--backend", "torch", "--runs", "3", "--warmup", "1")
    assert code == 2 and "--allow-pickle" in one_line_error(err)
    code, out, _ = run(capsys, "profile", str(path), "--backend", "torch", "--runs", "3", "--warmup", "1",
                       "--allow-pickle", "--json")
    assert code == 0 and json.loads(out)["latency_ms"]["runs"] == 3


def test_usage_error_is_one_line(capsys):
    code, _, err = run(capsys, "build")
    assert code == 2
    assert "--target" in one_line_error(err)


def test_inspect_eval_profile_on_a_bundle(capsys, tiny_bundle, tmp_path):
    root = str(tiny_bundle.bundle)
    code, out, _ = run(capsys, "inspect", root, "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["policy"] == "tiny-vla"
    assert all(f["sha256_ok"] for f in data["files"])

    code, out, _ = run(capsys, "eval", root, "--episodes", "40", "--json")
    data = json.loads(out)
    assert code == 0 and data["episodes"] == 40 and data["success_rate"] >= 0.9
    low, high = data["success_ci95"]  # how sure 40 episodes make it: Wilson's interval
    assert low < data["success_rate"] <= high and high - low > 0.05
    code, out, _ = run(capsys, "eval", root, "--episodes", "40")
    assert code == 0 and f"over 40 episodes (95 % interval {low:.1%}-{high:.1%}; onnxruntime)" in out

    code, out, _ = run(capsys, "eval", root, "--episodes", "40", "--backend", "torch", "--json")
    assert code == 0 and json.loads(out)["success_rate"] >= 0.9

    code, out, _ = run(capsys, "profile", root, "--runs", "5", "--warmup", "1", "--json")
    data = json.loads(out)
    assert code == 0 and data["target"] == "jetson-agx-orin" and data["latency_ms"]["runs"] == 5
    assert len(data["latency_samples_ms"]) == 5 and max(data["latency_samples_ms"]) == data["latency_ms"]["max_ms"]
    assert data["deadline"]["period_ms"] == pytest.approx(1000 / 30) and data["paced_hz"] is None
    assert data["latency_ticks"] == {"control_rate_hz": 30, **{
        k: max(0, math.ceil(data["latency_ms"][f"{k}_ms"] * 30 / 1000 - 1e-9) - 1) for k in ("p50", "p99", "max")}}

    # paced: one call per control period (30 Hz here), as the robot's loop calls the policy
    started = time.perf_counter()
    code, out, _ = run(capsys, "profile", root, "--runs", "4", "--warmup", "1", "--paced", "--json")
    data = json.loads(out)
    assert code == 0 and data["paced_hz"] == 30 and data["latency_ms"]["runs"] == 4
    assert time.perf_counter() - started >= 4 / 30  # five calls, four periods between their starts
    code, out, _ = run(capsys, "profile", root, "--runs", "2", "--warmup", "0", "--paced")
    assert code == 0 and "one call per 33.3333 ms" in out.replace("\n", " ")

    # A tampered copy fails inspection, names the file, and cannot be evaluated.
    copy = tmp_path / "tampered"
    shutil.copytree(root, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    code, out, err = run(capsys, "inspect", str(copy))
    assert code == 2 and "model.onnx" in one_line_error(err)
    code, _, err = run(capsys, "eval", str(copy), "--episodes", "5")
    assert code == 2 and "model.onnx" in one_line_error(err)


def test_eval_under_latency(capsys, tiny_bundle):
    root = str(tiny_bundle.bundle)
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--json")
    plain = json.loads(out)
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--latency-ticks", "0", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["schedule"] == "sync" and data["execute"] == 4 and data["control_rate_hz"] == 30
    none, three = data["latencies"]
    assert (none["latency_ticks"], three["latency_ticks"]) == (0, 3) and none["latency_ms"] is None
    assert none["success_rate"] == plain["success_rate"] and none["mean_steps"] == plain["mean_steps"]
    assert three["mean_steps"] > none["mean_steps"]  # three held commands before every chunk
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--latency-ms", "110", "--async", "--json")
    (row,) = json.loads(out)["latencies"]
    assert code == 0 and row["latency_ms"] == 110 and row["latency_ticks"] == 3  # 110 ms at 30 Hz: 3 missed
    assert none["mean_steps"] < row["mean_steps"] < three["mean_steps"]  # only the first chunk is waited for
    code, out, _ = run(capsys, "eval", root, "-n", "5", "--latency-ms", "50")
    assert code == 0 and "latency 1 tick(s) (50 ms), sync: success" in out
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--ensemble", "0.01", "--latency-ticks", "0", "--json")
    data = json.loads(out)
    assert code == 0 and data["schedule"] == "ensemble" and data["ensemble_m"] == 0.01 and "execute" not in data
    assert data["latencies"][0]["success_rate"] >= 0.9


def test_eval_draws_each_querys_latency_from_a_profiles_samples(capsys, tiny_bundle, tmp_path):
    root = str(tiny_bundle.bundle)
    constant = tmp_path / "constant.json"
    constant.write_text(json.dumps({"latency_samples_ms": [45.0] * 7}))  # 45 ms at 30 Hz: 1 tick, every query
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--latency-ticks", "1", "--async", "--json")
    fixed = json.loads(out)["latencies"][0]
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--latency-from", str(constant), "--async", "--json")
    data = json.loads(out)
    assert code == 0 and data["schedule"] == "async" and data["measured_latency"] == {
        "file": str(constant), "samples": 7, "p50_ms": 45.0, "p99_ms": 45.0, "max_ms": 45.0, "lead_ticks": 1,
        "ticks_share": {"1": 1.0}}
    assert (data["success_rate"], data["mean_steps"]) == (fixed["success_rate"], fixed["mean_steps"])

    # a real profile's samples, with the jitter they have
    code, out, _ = run(capsys, "profile", root, "--runs", "20", "--warmup", "2", "--json")
    measured = tmp_path / "measured.json"
    measured.write_text(out)
    code, out, _ = run(capsys, "eval", root, "-n", "10", "--latency-from", str(measured))
    assert code == 0 and "latency drawn from 20 measured samples" in out.replace("\n", " ")
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"latency_samples_ms": [5.0, 5.0, 5.0, 120.0]}))  # 0 ticks 3 times in 4, else 3
    code, out, _ = run(capsys, "eval", root, "-n", "30", "--latency-from", str(mixed), "--json")
    data = json.loads(out)
    assert data["measured_latency"]["ticks_share"] == {"0": 0.75, "3": 0.25}
    assert data["measured_latency"]["lead_ticks"] == 3  # p99 of the samples: 3 ticks


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not the JSON of `edgevla profile ... --json`"),
    ('{"latency_ms": {}}', "is not the JSON of `edgevla profile ... --json`"),
    ('{"latency_samples_ms": []}', "must be a non-empty list of milliseconds >= 0"),
    ('{"latency_samples_ms": [3, -1]}', "must be a non-empty list of milliseconds >= 0"),
    ('{"latency_samples_ms": [true]}', "must be a non-empty list of milliseconds >= 0"),
])
def test_eval_refuses_latency_samples_it_cannot_use(capsys, tiny_bundle, tmp_path, text, message):
    path = tmp_path / "profile.json"
    path.write_text(text)
    code, _, err = run(capsys, "eval", str(tiny_bundle.bundle), "-n", "2", "--latency-from", str(path))
    assert code == 2 and message in one_line_error(err)
    code, _, err = run(capsys, "eval", str(tiny_bundle.bundle), "-n", "2", "--latency-from", str(tmp_path / "none"))
    assert code == 2 and "cannot read" in one_line_error(err)


def test_profile_runs_the_robots_loop(capsys, tiny_bundle):
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "3", "--warmup", "0", "--loop",
                       "--loop-ticks", "12", "--json")
    data = json.loads(out)
    loop = data["robot_loop"]
    assert code == 0 and loop["rate_hz"] == 30 and loop["ticks"] == 12 and loop["execute"] == 4
    assert loop["lead"] == data["latency_ticks"]["p99"]  # by default the measured p99 latency is hidden
    assert loop["queries"] >= 3 and loop["chunks"] <= loop["queries"]
    assert set(loop["command_ms"]) == {"p50", "p99", "max"}
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "2", "--warmup", "0", "--loop",
                       "--loop-ticks", "4", "--lead", "0")
    assert code == 0 and "robot loop, 4 ticks at 30 Hz (execute 4, lead 0: sync" in out.replace("\n", " ")
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "2", "--warmup", "0", "--loop",
                       "--loop-ticks", "6", "--ensemble", "0.01", "--json")
    loop = json.loads(out)["robot_loop"]
    assert code == 0 and loop["schedule"] == "ensemble" and loop["ensemble_m"] == 0.01 and loop["ticks"] == 6


def test_profile_sets_its_latency_against_the_tolerance_the_build_proved(capsys, tmp_path, tiny_bundle):
    from edgevla.commands import _tolerance_fit, _tolerance_fit_line
    from edgevla.errors import EdgevlaError

    def curve(tolerated, at_least):
        return {"built": {"tolerated": tolerated, "at_least": at_least}}

    (tmp_path / "report.json").write_text(json.dumps({"extra": {"latency_tolerance": {
        "floor": 0.98, "max_ticks": 2,
        "schedules": {"sync": curve(2, True), "async": curve(1, False), "ensemble": curve(None, False)}}}}))
    fits = {p99: {s: c["fits"] for s, c in _tolerance_fit(str(tmp_path), p99)["schedules"].items()}
            for p99 in (0, 1, 2, 3)}
    assert fits == {0: {"sync": True, "async": True, "ensemble": False},
                    1: {"sync": True, "async": True, "ensemble": False},
                    2: {"sync": True, "async": False, "ensemble": False},
                    3: {"sync": None, "async": False, "ensemble": False}}  # past the probe: not known
    assert _tolerance_fit_line(_tolerance_fit(str(tmp_path), 3)) == (
        "closed-loop success >= 98.0% proven by the build up to: sync ≥ 2, async 1, ensemble none ticks of "
        "latency; at this p99 (3 tick(s)): not proven for async, ensemble; not probed (past 2 ticks) for sync")
    # a build that did not measure it, a policy reference, and a report that is not JSON
    assert _tolerance_fit(str(tiny_bundle.bundle), 0) is None and _tolerance_fit("tiny-vla", 0) is None
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "2", "--warmup", "0", "--json")
    assert code == 0 and "latency_tolerance" not in json.loads(out)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(EdgevlaError, match="cannot read the bundle's report"):
        _tolerance_fit(str(tmp_path), 0)


@pytest.mark.parametrize("argv, message", [
    (["--execute", "9"], "--execute must be in 1..8"),
    (["--lead", "-1"], "--lead >= 0"),
    (["--loop-ticks", "0"], "--loop-ticks must be >= 1"),
    (["--ensemble", "0.01", "--lead", "1"], "--lead does not apply to --ensemble"),
])
def test_profile_refuses_bad_loop_settings(capsys, tiny_bundle, argv, message):
    code, _, err = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "1", "--warmup", "0", "--loop", *argv)
    assert code == 2 and message in one_line_error(err)
    code, _, err = run(capsys, "profile", str(tiny_bundle.bundle), "--runs", "1", "--ensemble", "0.01")
    assert code == 2 and "add --loop" in one_line_error(err)


@pytest.mark.parametrize("argv, message", [
    (["--async"], "--async schedules queries around a latency"),
    (["--latency-ticks", "-1"], "--latency-ticks must be >= 0"),
    (["--latency-ms", "nan"], "finite number of milliseconds"),
    (["--execute", "9"], "--execute must be in 1..8"),
    (["--ensemble", "0.01", "--execute", "2"], "--execute does not apply to --ensemble"),
    (["--ensemble", "-1"], "ensemble weight m must be a finite number >= 0"),
])
def test_eval_refuses_bad_latency_settings(capsys, tiny_bundle, argv, message):
    code, _, err = run(capsys, "eval", str(tiny_bundle.bundle), "-n", "1", *argv)
    assert code == 2 and message in one_line_error(err)


def test_native_backend_profiles_and_tensorrt_says_why(capsys, tiny_bundle):
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "3", "--json")
    assert code == 0, out
    assert json.loads(out)["thread_spin_us"] == native.DEFAULT_THREAD_SPIN_US
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "3",
                       "--spin-us", "0", "--json")
    assert code == 0 and json.loads(out)["thread_spin_us"] == 0
    assert native.get_thread_spin_us() == native.DEFAULT_THREAD_SPIN_US  # restored after the profile
    # --isa: the kernels of a CPU without the better instruction sets, for the profile only
    before = native.get_isa()
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "3",
                       "--isa", "generic", "--threads", "1", "--json")
    data = json.loads(out)
    assert code == 0 and data["native_isa"] == "generic" and data["native_threads"] == 1
    assert data["allowed_cpus"] == sorted(os.sched_getaffinity(0))
    assert native.get_isa() == before
    code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "2")
    assert code == 0 and f"{before} kernels" in out.replace("\n", " ")
    # The target's CPU runs other kernels than this host: said in one line, with the flag that runs them here.
    for target, kernels in (("x86-64-avx2", "avx_vnni"), ("jetson-orin", "neon_dot")):
        code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "2",
                           "--target", target)
        text = " ".join(out.split())
        hint = f"{load_target(target).name}'s CPU runs the {kernels} kernels, this host the {before} ones"
        assert code == 0 and (hint in text) == (kernels != before), text
        if kernels != before:
            here = kernels in native.available_isas()
            assert (f"--isa {kernels} runs them here" in text) == here
            assert ("cannot run those: the figures are this host's" in text) == (not here)
        code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "2",
                           "--target", target, "--json")
        assert json.loads(out)["target_kernels"] == kernels
    if "avx_vnni" in native.available_isas():  # running the target's kernels, nothing to say
        code, out, _ = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "2",
                           "--target", "x86-64-avx2", "--isa", "avx_vnni")
        assert code == 0 and "CPU runs the" not in " ".join(out.split())
    for flags, message in ((["--spin-us", "-1"], "--spin-us must be between 0 and 1000000"),
                           (["--spin-us", "0", "--backend", "onnxruntime"], "--spin-us sets the native CPU"),
                           (["--isa", "sse9"], "unknown ISA 'sse9'"),
                           (["--isa", "generic", "--backend", "onnxruntime"], "--isa picks the native CPU")):
        code, _, err = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "native", "--runs", "2", *flags)
        assert code == 2 and message in one_line_error(err)
    code, _, err = run(capsys, "profile", str(tiny_bundle.bundle), "--backend", "tensorrt", "--runs", "2")
    assert code == 2
    one_line_error(err)


def test_zoo_list_and_train(capsys, tmp_path):
    code, out, _ = run(capsys, "zoo", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["tiny-vla"]["available"] and rows["base-vla"]["parameters"] >= 150_000_000
    dest = tmp_path / "t.safetensors"
    code, out, _ = run(capsys, "zoo", "train", "tiny-vla", "--steps", "3", "--episodes", "10", "-o", str(dest), "--json")
    data = json.loads(out)
    assert code == 0 and data["steps"] == 3 and dest.is_file()
    code, _, err = run(capsys, "zoo", "train", "base-vla")
    assert code == 2 and "random init" in one_line_error(err)
    code, _, err = run(capsys, "zoo", "train", "tiny-vla", "--blank", "image")
    assert code == 2 and "--output" in one_line_error(err)


def test_console_script_exit_codes(tmp_path):
    exe = shutil.which("edgevla")
    assert exe, "the edgevla console script is not installed"
    ok = subprocess.run([exe, "targets"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0 and "jetson-thor" in ok.stdout
    bad = subprocess.run([exe, "build", "--target", "nowhere"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert bad.returncode == 2
    one_line_error(bad.stderr)
    mod = subprocess.run([sys.executable, "-m", "edgevla.cli", "--version"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # not the repo root: its source tree would shadow the install
    assert mod.returncode == 0 and "edgevla" in json.loads(mod.stdout)
