"""The CUDA kernels' emulated drivers (test_cuda_emulated.py) built with ThreadSanitizer and UBSan.

A race check. cuda_emulate.h makes each thread one of ThreadSanitizer's fibers
and tells it what orders memory on a GPU (__syncthreads, bar.sync; not shuffles,
MMAs or ldmatrix). An access to shared (or global) memory that no barrier orders
against another thread's write is reported however the fibers happened to
interleave: warps that drift apart on a GPU are caught here even though the
emulation runs them in step. ThreadSanitizer keeps the last few accesses of each
8 bytes, so a race among many readers can go unseen; it never invents one.

And UndefinedBehaviorSanitizer: an index past a fixed-size array (shared arrays,
fragment registers), signed overflow in index arithmetic, a shift by 32 or more.
These are as undefined in CUDA C++ as here, and nvcc optimises on that too.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cuda_emulation import (DRIVERS, RACE_EXIT, RACE_REPORT, REFILL_BEFORE_BARRIER, UNDEFINED_EXIT, build_driver,
                            build_drivers, case_lines, compile_flags, compiler, cuda_include, emulation_folder,
                            mutated_headers, race_env, race_flags, run, run_race_checked)


@pytest.fixture(scope="module")
def emulation_out(tmp_path_factory) -> Path:
    return emulation_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def race_checked(emulation_out) -> dict[str, Path]:
    """Every driver built with ThreadSanitizer and UBSan (skips where the compiler has no runtime for them,
    or they cannot run here)."""
    probe_source = emulation_out / "tsan_probe.cpp"
    probe_source.write_text("int main() { return 0; }\n")
    probe = emulation_out / "tsan_probe"
    built = subprocess.run([compiler(), "-fsanitize=thread,undefined", str(probe_source), "-o", str(probe)],
                           capture_output=True, text=True)
    if built.returncode != 0 or subprocess.run([str(probe)], capture_output=True, env=race_env()).returncode != 0:
        pytest.skip("needs ThreadSanitizer and UBSan (-fsanitize=thread,undefined) that build and run here")
    return build_drivers(race_flags(), emulation_out, suffix="_race")


@pytest.fixture(scope="module")
def race_runs(race_checked) -> dict[str, subprocess.CompletedProcess]:
    """Each kernel driver's quick cases under the race check, two at a time."""
    names = [name for name in DRIVERS if name != "cuda_emulate_selftest"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(lambda name: run_race_checked(race_checked[name], "--quick"), names)))


@pytest.fixture(scope="module")
def plain_selftest(emulation_out) -> Path:
    """The emulation's self-test built without the sanitizers."""
    binary = emulation_out / "cuda_emulate_selftest"
    built = build_driver("cuda_emulate_selftest", compile_flags(cuda_include()), emulation_out, binary)
    assert built.returncode == 0, built.stderr[-4000:]
    return binary


@pytest.fixture(scope="module")
def refill_before_barrier(emulation_out, tmp_path_factory) -> tuple[Path, Path]:
    """The int8 driver with REFILL_BEFORE_BARRIER, built plainly and sanitized, at once."""
    header, driver, before, after = REFILL_BEFORE_BARRIER
    headers = mutated_headers(tmp_path_factory.mktemp("refill"), header, before, after)
    jobs = [(compile_flags(cuda_include(), headers_first=headers), emulation_out / "refill"),
            (race_flags(headers_first=headers), emulation_out / "refill_race")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = list(pool.map(lambda job: build_driver(driver, job[0], emulation_out, job[1]), jobs))
    for result in built:
        assert result.returncode == 0, result.stderr[-3000:]
    return jobs[0][1], jobs[1][1]


@pytest.mark.parametrize("driver", ["cuda_emulated_w4", "cuda_emulated_s8", "cuda_emulated_2to4"])
def test_kernels_have_no_data_races_or_undefined_behaviour(race_runs, driver):
    result = race_runs[driver]
    assert result.returncode == 0 and result.stderr == "", result.stderr[-6000:]
    cases = case_lines(result.stdout)
    assert len(cases) >= 20 and all(line.endswith(": ok") for line in cases), cases


@pytest.mark.parametrize("mode", ["no-barrier", "warp-synchronous"])
def test_race_check_reports_unordered_accesses(race_checked, plain_selftest, mode):
    result = run_race_checked(race_checked["cuda_emulate_selftest"], mode)
    assert result.returncode == RACE_EXIT and RACE_REPORT in result.stderr, result.stdout + result.stderr[-3000:]
    assert "block_sum" in result.stderr and "Location is TLS" in result.stderr  # shared memory, in the kernel
    if mode == "warp-synchronous":
        # Only the race check sees this one: run in step, the pairs' swap through shared memory sums right.
        assert run(plain_selftest, mode).returncode == 0
    clean = run_race_checked(race_checked["cuda_emulate_selftest"], "sum")
    assert clean.returncode == 0 and clean.stderr == ""


def test_undefined_behaviour_check_reports_an_index_past_a_shared_array(race_checked):
    result = run_race_checked(race_checked["cuda_emulate_selftest"], "index-past-shared")
    assert result.returncode == UNDEFINED_EXIT, result.stdout + result.stderr[-3000:]
    assert "runtime error: index 5 out of bounds for type 'float [5]'" in result.stderr and "block_sum" in result.stderr


def test_race_check_catches_a_stage_refilled_before_the_barrier(race_checked, refill_before_barrier):
    """REFILL_BEFORE_BARRIER. Warps run in step, so the sums still come out right; on a GPU a warp that
    runs ahead overwrites data a slower warp has yet to read. The race check names the refill."""
    plain, sanitized = refill_before_barrier
    assert run(plain, "--quick").returncode == 0  # the sums do not show it
    result = run_race_checked(sanitized, "--quick")
    assert result.returncode == RACE_EXIT and RACE_REPORT in result.stderr, result.stderr[-3000:]
    assert "load_tile_s8" in result.stderr and "gemm_s8s8_tiled_kernel" in result.stderr
