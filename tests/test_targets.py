"""Hardware targets: the built-in profiles, a user's own profile, and the roofline helpers."""

from __future__ import annotations

import importlib.resources
import os
import re

import pytest
import yaml

from edgevla.errors import EdgevlaError
from edgevla.recipe import load_recipe
from edgevla.targets import (PRECISIONS, Target, bandwidth_bytes_per_s, list_targets, load_target,
                             roofline_peak, target_names)

EXPECTED = {
    "jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "jetson-thor",
    "rtx-4090", "h100", "x86-64-cpu", "x86-64-avx2", "arm64-cpu",
}
ORIN_FAMILY = ("jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano")


def builtin_text(name: str) -> str:
    return (importlib.resources.files("edgevla") / "targets" / f"{name}.yaml").read_text(encoding="utf-8")


def write_target(tmp_path, data: dict, name: str = "my-board.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def orin_data() -> dict:
    """The AGX Orin profile as plain data, renamed: a starting point for a user's file."""
    data = yaml.safe_load(builtin_text("jetson-agx-orin"))
    data["name"], data["aliases"] = "my-board", []
    return data


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- the built-in profiles -------------------------------------------------------------------------

def test_every_builtin_target_loads_and_is_named_after_its_file():
    files = {e.name.removesuffix(".yaml")
             for e in (importlib.resources.files("edgevla") / "targets").iterdir() if e.name.endswith(".yaml")}
    assert set(target_names()) == EXPECTED == files
    assert target_names() == sorted(EXPECTED)
    for target in list_targets():
        assert isinstance(target, Target)
        assert target.source_path.endswith(f"{target.name}.yaml")
        assert target.kind in ("gpu", "cpu") and target.host_arch in ("x86_64", "aarch64")


@pytest.mark.parametrize("alias, name", [
    ("jetson-orin", "jetson-agx-orin"), ("orin", "jetson-agx-orin"), ("orin-nx", "jetson-orin-nx"),
    ("orin-nano", "jetson-orin-nano"), ("thor", "jetson-thor"), ("h100-sxm", "h100"), ("4090", "rtx-4090"),
    ("x86-64", "x86-64-cpu"), ("avx512", "x86-64-cpu"), ("x86-64-v3", "x86-64-avx2"), ("robot-pc", "x86-64-avx2"),
    ("aarch64", "arm64-cpu"), ("Jetson-Orin", "jetson-agx-orin"), (" h100 ", "h100"),
])
def test_aliases_resolve_to_the_same_target(alias, name):
    assert load_target(alias) is load_target(name)
    assert load_target(alias).name == name


def test_every_alias_of_every_target_resolves():
    for target in list_targets():
        for alias in target.aliases:
            assert load_target(alias) is target


def test_unknown_target_lists_the_known_names_and_suggests_one():
    with pytest.raises(EdgevlaError) as excinfo:
        load_target("jetson-orin-nanno")
    message = one_line_error(excinfo)
    assert message.startswith("unknown target 'jetson-orin-nanno'")
    assert "did you mean 'jetson-orin-nano'?" in message
    for name in EXPECTED:
        assert name in message


def test_budgets_fit_the_control_loop_and_the_memory():
    for t in list_targets():
        b = t.budgets
        assert 0 < b.latency_budget_ms <= 1000.0 / b.control_rate_hz == pytest.approx(b.control_period_ms)
        assert b.memory_budget_mb <= t.facts.memory_gb * 1024
        assert 0 <= b.max_accuracy_loss <= 1


def test_orin_budget_is_the_30hz_loop_with_headroom():
    b = load_target("jetson-orin").budgets
    assert b.control_rate_hz == 30
    assert b.latency_budget_ms < 1000 / 30  # strictly: the rest of the loop needs time too


def test_fp8_and_fp4_only_where_the_hardware_has_them():
    for name in ORIN_FAMILY:
        facts = load_target(name).facts
        assert "fp8" not in facts.precisions and "fp4" not in facts.precisions
        assert facts.compute_capability == "8.7" and facts.cuda_arch == "sm_87"
    for name in ("jetson-thor", "h100", "rtx-4090"):
        assert "fp8" in load_target(name).facts.precisions
    assert "fp4" in load_target("thor").facts.precisions
    assert "fp4" not in load_target("h100").facts.precisions  # Hopper: FP8 yes, FP4 no
    assert "int4" not in load_target("h100").facts.precisions  # Hopper dropped INT4 MMA


def test_gpu_and_cpu_facts():
    assert load_target("thor").facts.cuda_arch == "sm_110"
    assert load_target("rtx-4090").facts.cuda_arch == "sm_89"
    assert load_target("h100").facts.cuda_arch == "sm_90"
    for t in list_targets():
        f = t.facts
        if t.kind == "cpu":
            assert f.compute_capability is f.cuda_arch is f.tensorrt is f.cuda is None
            assert not f.sparse_tensor_cores and f.dla_count == 0
        else:
            assert f.cuda_arch == "sm_" + f.compute_capability.replace(".", "")
            assert f.sparse_tensor_cores
        assert f.jetpack is None or t.name.startswith("jetson-")
        assert f.preferred_channel_multiple in (8, 16)
        assert f.cpu.cores >= 1
    assert load_target("jetson-agx-orin").facts.dla_count == 2
    assert load_target("jetson-orin-nano").facts.dla_count == 0
    assert load_target("jetson-thor").facts.dla_count == 0


def test_the_cpu_peaks_follow_from_cores_clock_and_vector_width():
    """The derived CPU figures: cores x GHz x FMA pipes x FP32 lanes x 2, int8 at 4x (VPDPBUSD / SDOT),
    and the channel multiple one vector register of FP32 (AVX2) or FP16 (NEON) lanes."""
    avx512, avx2, arm = load_target("x86-64-cpu").facts, load_target("x86-64-avx2").facts, load_target("arm64").facts
    assert avx512.peak_tflops["fp32"] == pytest.approx(16 * 4.3 * 2 * 16 * 2 / 1000, rel=0.01)
    assert avx2.peak_tflops["fp32"] == pytest.approx(4 * 4.7 * 2 * 8 * 2 / 1000, rel=0.01)
    assert arm.peak_tflops["fp32"] == pytest.approx(8 * 2.0 * 2 * 4 * 2 / 1000, rel=0.01)
    for facts in (avx512, avx2, arm):
        assert facts.peak_tflops["int8_dense"] == pytest.approx(4 * facts.peak_tflops["fp32"], rel=0.01)
    assert (avx512.preferred_channel_multiple, avx2.preferred_channel_multiple) == (16, 8)
    assert avx2.cpu.cores == 4 and avx2.memory_bandwidth_gbps == pytest.approx(2 * 64 * 4800 / 8 / 1000)
    assert "fp16" not in avx2.precisions and "bf16" not in avx2.precisions


def test_every_target_names_the_native_kernels_of_its_cpu():
    """What edgevla.native runs on the reference CPU: `profile` says when this host runs others."""
    kernels = {t.name: t.facts.cpu.kernels for t in list_targets()}
    assert kernels == {"jetson-agx-orin": "neon_dot", "jetson-orin-nx": "neon_dot", "jetson-orin-nano": "neon_dot",
                       "jetson-thor": "neon_dot", "arm64-cpu": "neon_dot", "x86-64-cpu": "avx512_vnni",
                       "x86-64-avx2": "avx_vnni", "rtx-4090": "avx512_vnni", "h100": "avx512_amx"}


def test_sparse_peaks_are_twice_dense():
    """2:4 sparsity doubles tensor-core throughput; a profile that says otherwise has a typo."""
    for t in list_targets():
        peaks = t.facts.peak_tflops
        for key, sparse in peaks.items():
            if key.endswith("_sparse"):
                dense = peaks[key.replace("_sparse", "_dense")]
                assert sparse == pytest.approx(2 * dense, rel=0.01), (t.name, key)


def test_ridge_points_match_the_public_roofline_estimates():
    """HARDWARE.md: a batch-1 fp16 linear layer is memory-bound below ~200 tokens on AGX Orin and
    ~500-950 on Thor (M < peak / bandwidth * bytes_per_weight / 2, with 2 bytes per fp16 weight)."""
    def ridge_tokens(name: str) -> float:
        t = load_target(name)
        return roofline_peak(t, "fp16") / bandwidth_bytes_per_s(t) * 2 / 2

    assert 180 <= ridge_tokens("jetson-orin") <= 230
    assert 500 <= ridge_tokens("thor") <= 950


def test_every_figure_in_a_profile_carries_a_comment():
    """The numbers a build is judged by must say where they come from (or that they are derived)."""
    figure = re.compile(r"^\s+(memory_gb|memory_bandwidth_gbps|fp32|\w+_dense|\w+_sparse|control_rate_hz|"
                        r"latency_budget_ms|memory_budget_mb|max_accuracy_loss):\s*[0-9.]+\s*(#.*)?$")
    checked = 0
    for name in EXPECTED:
        for line in builtin_text(name).splitlines():
            match = figure.match(line)
            if match:
                checked += 1
                assert match.group(2), f"{name}.yaml: no source comment on {line.strip()!r}"
    assert checked > 9 * 8  # the pattern does find the figures


def test_a_targets_recipe_keeps_only_what_the_target_changes():
    assert load_target("arm64-cpu").recipe == {"profile": {"batch_sizes": [1, 4], "warmup": 10, "runs": 100}}


def test_every_target_recipe_resolves_and_applies():
    for t in list_targets():
        recipe = load_recipe(None, t)
        assert recipe.prune.method == "none" and recipe.quantize.format == "none"
    assert load_recipe(None, load_target("arm64")).profile.runs == 100
    assert load_recipe(None, load_target("orin-nano")).efficiency.beta == pytest.approx(0.4)
    assert load_recipe(None, load_target("h100")).profile.batch_sizes == (1, 16, 64)


# --- roofline helpers ------------------------------------------------------------------------------

def test_roofline_peak_picks_dense_unless_sparse_is_asked():
    orin, h100 = load_target("jetson-orin"), load_target("h100")
    assert roofline_peak(orin, "int8") == pytest.approx(85e12)
    assert roofline_peak(orin, "int8", sparse=True) == pytest.approx(170e12)
    assert roofline_peak(orin, "fp32") == pytest.approx(5.3e12)
    assert roofline_peak(h100, "fp8") == pytest.approx(1978.9e12)
    assert roofline_peak(h100, "bf16", sparse=True) == pytest.approx(1978.9e12)
    assert roofline_peak(load_target("thor"), "fp4", sparse=True) == pytest.approx(2070e12)
    assert bandwidth_bytes_per_s(orin) == pytest.approx(204.8e9)
    assert bandwidth_bytes_per_s(h100) == pytest.approx(3.35e12)


@pytest.mark.parametrize("target, precision, sparse, words", [
    ("jetson-orin", "fp8", False, "has no fast fp8"),
    ("x86-64-cpu", "fp16", False, "has no fast fp16"),
    ("x86-64-cpu", "int8", True, "no 2:4-sparse int8 peak"),
    ("h100", "fp32", True, "no 2:4-sparse fp32 peak"),
    ("h100", "fp6", False, "unknown precision 'fp6'"),
])
def test_roofline_peak_refuses_what_the_hardware_cannot_do(target, precision, sparse, words):
    with pytest.raises(EdgevlaError, match=re.escape(words)):
        roofline_peak(load_target(target), precision, sparse=sparse)


def test_every_listed_precision_has_a_dense_peak():
    for t in list_targets():
        for precision in t.facts.precisions:
            assert roofline_peak(t, precision) > 0
        for precision in set(PRECISIONS) - set(t.facts.precisions):
            with pytest.raises(EdgevlaError):
                roofline_peak(t, precision)


# --- a user's own profile --------------------------------------------------------------------------

def test_a_users_yaml_file_loads_by_path(tmp_path, orin_data):
    orin_data["facts"]["memory_gb"] = 32
    orin_data["budgets"]["memory_budget_mb"] = 8000
    path = write_target(tmp_path, orin_data)
    target = load_target(str(path))
    assert target.name == "my-board" and target.source_path == str(path.resolve())
    assert target.facts.memory_gb == 32.0 and target.budgets.memory_budget_mb == 8000
    assert target.facts.peak_tflops["int8_dense"] == 85
    assert load_target(path) is target  # a Path works too, and the parse is cached


def test_an_edited_user_file_is_read_again(tmp_path, orin_data):
    path = write_target(tmp_path, orin_data)
    assert load_target(path).facts.memory_gb == 64
    orin_data["facts"]["memory_gb"] = 48
    write_target(tmp_path, orin_data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_target(path).facts.memory_gb == 48


def test_to_dict_round_trips_through_a_users_file(tmp_path):
    thor = load_target("thor")
    path = write_target(tmp_path, {k: v for k, v in thor.to_dict().items() if k != "source_path"}, "thor.yaml")
    again = load_target(path)
    assert (again.facts, again.budgets, again.recipe, again.aliases) == (thor.facts, thor.budgets, thor.recipe,
                                                                         thor.aliases)


def test_a_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(EdgevlaError) as excinfo:
        load_target(str(tmp_path / "nope.yaml"))
    assert "does not exist" in one_line_error(excinfo)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: my-board\nfacts: {memory_gb: [1, 2\n", encoding="utf-8")
    with pytest.raises(EdgevlaError) as excinfo:
        load_target(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"target {path.resolve()}: not valid YAML") and "line" in message


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(builtin_text("jetson-orin-nano") + "kind: cpu\n", encoding="utf-8")
    with pytest.raises(EdgevlaError, match="key 'kind' is given twice"):
        load_target(path)


def set_path(data: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[leaf] = value
    return data


@pytest.mark.parametrize("dotted, value, expected", [
    ("facts.memroy_gb", 8, "facts: unknown key 'memroy_gb' (did you mean 'memory_gb'?"),
    ("budgets.control_rate_hz", "fast", "budgets.control_rate_hz: expected number > 0, got 'fast'"),
    ("budgets.control_rate_hz", 0, "budgets.control_rate_hz: expected number > 0, got 0"),
    ("budgets.max_accuracy_loss", 2, "budgets.max_accuracy_loss: expected number in [0, 1], got 2"),
    ("facts.compute_capability", 8.7, "facts.compute_capability: expected a string like '8.7' or null, got 8.7"),
    ("facts.precisions", ["fp16", "fp7"], "facts.precisions[1]: expected one of fp32, tf32"),
    ("facts.peak_tflops.fp16_dnse", 1.0, "facts.peak_tflops: unknown key 'fp16_dnse' (did you mean 'fp16_dense'?"),
    ("facts.preferred_channel_multiple", 12, "facts.preferred_channel_multiple: expected one of 8, 16, got 12"),
    ("facts.dla_count", True, "facts.dla_count: expected int >= 0, got True"),
    ("kind", "npu", "kind: expected one of gpu, cpu, got 'npu'"),
    ("recipe.prune", {"method": "2:4"},
     "recipe.prune.method '2:4' is not supported yet (supported: none, unstructured, nm, structured)"),
    ("recipe.profile", {"runs": "abc"}, "recipe.profile.runs: expected int >= 1, got 'abc'"),
])
def test_a_bad_user_file_gives_one_line_naming_the_key(tmp_path, orin_data, dotted, value, expected):
    path = write_target(tmp_path, set_path(orin_data, dotted, value))
    with pytest.raises(EdgevlaError) as excinfo:
        load_target(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"target {path.resolve()}: ")
    assert expected in message


def test_a_missing_required_key_is_named(tmp_path, orin_data):
    del orin_data["budgets"]["latency_budget_ms"]
    with pytest.raises(EdgevlaError, match=r"budgets\.latency_budget_ms: missing"):
        load_target(write_target(tmp_path, orin_data))


@pytest.mark.parametrize("dotted, value, expected", [
    ("budgets.latency_budget_ms", 40, "40 ms does not fit the 33.33 ms period of a 30 Hz control loop"),
    ("budgets.memory_budget_mb", 70000, "70000 MB is more than the device's 64 GB"),
    ("facts.cuda_arch", "sm_86", "cuda_arch 'sm_86' does not match compute_capability '8.7'"),
    ("facts.cuda", None, "facts.cuda: a gpu target needs it"),
    ("facts.peak_tflops.fp8_dense", 100, "fp8 is not in precisions"),
    ("facts.peak_tflops.int8_sparse", 80, "80 is not above the dense peak 85"),
    ("facts.precisions", ["fp32", "fp16", "int8", "int4"], "int4 is listed in precisions but has no int4_dense peak"),
    ("facts.sparse_tensor_cores", False, "a sparse peak needs sparse_tensor_cores: true"),
    ("kind", "cpu", "a cpu target has none"),
    ("recipe.efficiency", {"alpha": 0.9}, "efficiency: alpha + beta + gamma must sum to 1"),
    ("facts.cpu.kernels", "avx_vnni", "'avx_vnni' is not one of the aarch64 kernel tables (neon_dot, generic)"),
])
def test_inconsistent_profiles_are_refused(tmp_path, orin_data, dotted, value, expected):
    path = write_target(tmp_path, set_path(orin_data, dotted, value))
    with pytest.raises(EdgevlaError) as excinfo:
        load_target(path)
    assert expected in one_line_error(excinfo)
