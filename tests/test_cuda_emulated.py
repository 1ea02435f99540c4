"""The CUDA kernels' own source, run on the CPU (no GPU needed).

``csrc/cuda/emulate/cuda_emulate.h`` runs a kernel's threads as fibers, one
block at a time, with warp shuffles, ``__syncthreads`` and the tensor-core MMAs
emulated (``ptx_emulate.h``: the PTX ISA's fragment layouts). The drivers in
``csrc/tests/`` check against references:

- ``cuda_emulated_w4``: every int4 GEMV kernel (``cuda_cores``, ``streaming``,
  ``tensor_cores``) at every row, warp and column-tile count a launcher can pick,
  and the launcher itself per variant on three device models, float32 and float16
  x, within 1e-5 of a double-precision sum;
- ``cuda_emulated_s8``: the int8 small-M kernel at 4, 8 and 16 warps (auto and
  ``small_m_wave``), the tiled kernel at every tile (the automatic three, and the
  ``tiled_wide`` and ``tiled_split_k`` variants) with cp.async landing at issue and
  as late as the kernel's waits allow, and the launchers ``gemm_s8s8`` (every
  variant) and ``gemm_2to4_s8`` (split-K, direct, tiled, ``tiled_wide``, on the host
  packer's weights): int32 exact, the float epilogue bit-identical;
- ``cuda_emulated_2to4``: the float16 2:4 launcher and kernels, within 1e-5 of a double sum;

The launchers run as emulated copies (``emulated_launcher`` rewrites each
``kernel<<<...>>>(...)``) against ``cuda_runtime_emulate.cpp``, whose device model
answers the attribute and occupancy queries.
- ``cuda_emulate_selftest``: that the emulation catches what it claims to (a
  collective under divergence, a read past a buffer, a lane gone from a shuffle).

Built again with ``-fsanitize=thread,undefined``, the same drivers are a race
check: each thread is one of ThreadSanitizer's fibers, and only barriers order
memory between them, so a shared-memory access a barrier does not order against
another thread's write is reported however the fibers happened to interleave; and
UBSan reports an index past a fixed-size array, signed overflow or an oversized
shift (the tests at the end).

What this cannot show: speed, or anything that differs between a tensor core's
internal rounding and a sum in double. The device run (``tests/cuda/run_device.sh``)
remains the judge.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
RUNTIME = "cuda/emulate/cuda_runtime_emulate.cpp"
# driver -> what it links besides itself: sources of csrc/, and launchers (*.cu) as emulated copies
DRIVERS = {
    "cuda_emulated_w4": ["cuda/gemm_w4_launch.cu", RUNTIME],
    "cuda_emulated_s8": ["cuda/gemm_s8s8_launch.cu", "cuda/gemm_2to4_launch.cu", "cuda/pack_2to4_mma.cpp", RUNTIME],
    "cuda_emulated_2to4": ["cuda/gemm_2to4_launch.cu", "cuda/pack_2to4_mma.cpp", RUNTIME],
    "cuda_emulate_selftest": [],
}

# kernel<<<grid, block, shared, stream>>>(  ->  launch_kernel(kernel, grid, block, shared, stream)(
# The kernel is a name with an optional template argument list, as our launchers write them.
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}]*?>)?)\s*<<<(.*?)>>>\s*\(", re.S)


def emulated_launcher(source: str) -> str:
    """A launcher's source with its <<<>>> launches run by the emulation (cuda_runtime_emulate.h)."""
    body, count = _LAUNCH.subn(lambda m: f"::edgevla::cuda::emulate::launch_kernel({m.group(1)}, {m.group(2)})(",
                               source)
    assert count > 0 and "<<<" not in body, "a launch the rewrite does not recognise"
    return '#include "cuda/emulate/cuda_runtime_emulate.h"\n' + body


def _cuda_include() -> Path | None:
    """The CUDA headers' folder (cuda_fp16.h): next to nvcc, under $CUDA_HOME, or /usr/local/cuda."""
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_fp16.h").is_file()), None)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _flags(include: Path, *, optimize: str = "-O2", headers_first: Path | None = None) -> list[str]:
    # -fno-strict-aliasing: kernels read a uint4 as __half2 and the like, as CUDA allows;
    # -ffp-contract=off: the epilogue's float32 steps as the kernels' --fmad=false build makes them;
    # -fno-extern-tls-init: `extern __shared__` arrays are thread_locals without dynamic initialization.
    # headers_first: a folder whose kernel headers replace csrc's (the mutation tests).
    first = [f"-I{headers_first}"] if headers_first else []
    return ["-std=c++17", optimize, "-g", "-fno-strict-aliasing", "-ffp-contract=off", "-fno-extern-tls-init",
            "-DEDGEVLA_CUDA_EMULATE", *first, f"-I{CSRC}", f"-I{include}"]


def _emulated_sources(name: str, out: Path) -> list[str]:
    """The driver and what it links, with each launcher as its emulated copy (written once into out)."""
    sources = [str(CSRC / "tests" / f"{name}.cpp")]
    for extra in DRIVERS[name]:
        if not extra.endswith(".cu"):
            sources.append(str(CSRC / extra))
            continue
        copy = out / (Path(extra).stem + "_emulated.cpp")
        if not copy.exists():
            copy.write_text(emulated_launcher((CSRC / extra).read_text()))
        sources.append(str(copy))
    return sources


def _build(name: str, flags: list[str], out: Path, binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_compiler(), *flags, *_emulated_sources(name, out), "-o", str(binary)],
                          capture_output=True, text=True)


def _build_all(flags: list[str], out: Path, suffix: str = "") -> dict[str, Path]:
    for name in DRIVERS:
        _emulated_sources(name, out)  # the launchers' copies, once, before the parallel builds
    binaries = {name: out / f"{name}{suffix}" for name in DRIVERS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda name: _build(name, flags, out, binaries[name]), DRIVERS)
        for name, result in zip(DRIVERS, built):
            assert result.returncode == 0, f"{name} did not compile:\n{result.stderr[-4000:]}"
    return binaries


@pytest.fixture(scope="module")
def emulation_out(tmp_path_factory) -> Path:
    if _cuda_include() is None or _compiler() is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    return tmp_path_factory.mktemp("cuda_emulated")


@pytest.fixture(scope="module")
def drivers(emulation_out) -> dict[str, Path]:
    return _build_all(_flags(_cuda_include()), emulation_out)


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def _case_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line and not line.startswith(" ") and "failed" not in line]


def _has_case(cases: list[str], start: str, part: str) -> bool:
    """Whether a case line starts with ``start`` and holds ``part`` (a launch's shape, say)."""
    return any(line.startswith(start) and part in line for line in cases)


def test_int4_kernels_match_the_reference(drivers):
    result = _run(drivers["cuda_emulated_w4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    # 10 problems x 2 x types x (3 cuda_cores + 9 streaming + 2 to 6 tensor_cores instantiations + 9 launcher calls)
    assert len(cases) >= 10 * 2 * 23
    assert all(line.endswith(": ok") for line in cases), cases
    for kernel in ("cuda_cores<f32", "streaming<f16", "tensor_cores/16ch<f32", "tensor_cores/16ch<f16",
                   "tensor_cores/32ch<f16,2", "tensor_cores/64ch<f32,1", "gemm_w4(automatic)",
                   "gemm_w4(streaming) on Orin", "gemm_w4(tensor_cores) on 2-SM"):
        assert any(line.startswith(kernel) for line in cases), kernel
    assert _has_case(cases, "tensor_cores/64ch<f32", " extreme")
    # The launcher's one-wave rule: 16 warps when one block has units for them, the fewest (4)
    # when the grid cannot be resident at once (8 blocks on 2 SMs of 2 blocks each).
    # K = 4096 gives 16 warps work: the H200 holds the 3 blocks of 16 at once, the 2-SM part (one
    # 16-warp block an SM) does not, and takes 8 (two 8-warp blocks an SM).
    assert _has_case(cases, "gemm_w4(streaming) on H200 f32 m=1 n=40 k=4096", "[3x1 blocks of 512]")
    assert _has_case(cases, "gemm_w4(streaming) on 2-SM f32 m=1 n=40 k=4096", "[3x1 blocks of 256]")
    assert _has_case(cases, "gemm_w4(streaming) on 2-SM f32 m=30", "[1x8 blocks of 128]")
    # tensor_cores: blocks of 4 channel tiles when there are still blocks for every SM (9 tiles, 2 SMs),
    # of 2 at 2 column tiles (5 tiles), else of 1.
    assert _has_case(cases, "gemm_w4(tensor_cores) on 2-SM f32 m=1 n=136", "[3x1 blocks")
    assert _has_case(cases, "gemm_w4(tensor_cores) on 2-SM f32 m=9 n=72", "[3x1 blocks")
    assert _has_case(cases, "gemm_w4(tensor_cores) on H200 f32 m=1 n=136", "[9x1 blocks")
    assert "gemm_w4 refuses M = 65: ok" in cases
    assert result.stdout.rstrip().endswith("0 kernel runs failed")


def test_int8_kernels_are_exact(drivers):
    result = _run(drivers["cuda_emulated_s8"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    assert len(cases) >= 6 * 6 + 3 * 24 + 9 * 3 * 6 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("4 warps", "8 warps", "16 warps", "vector", "bytes", "per-token", "int32", "TileWide",
                  "TileSmallSplitK", "TileTinySplitK", "cp.async early", "cp.async late", "gemm_s8s8(small_m_wave) on Orin",
                  "gemm_s8s8(tiled_wide) on 2-SM", "gemm_s8s8(tiled_split_k) on H200", "gemm_2to4_s8(automatic) on H200",
                  "gemm_2to4_s8(tiled_wide) on H200 cp.async early", "gemm_2to4_s8(tiled_wide) on 2-SM"):
        assert any(shape in line for line in cases), shape
    assert sum(line.startswith("gemm_s8s8 refuses M = 17") for line in cases) == 2
    # small_m_wave: 16 warps a block when the grid fits and K gives every warp a batch of steps.
    assert _has_case(cases, "gemm_s8s8(small_m_wave) on H200 [2x1 blocks of 512]", "k=4096")


def test_float16_2to4_kernels_match_the_reference(drivers):
    result = _run(drivers["cuda_emulated_2to4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    assert len(cases) >= 5 * 12 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("(automatic) on H200, x aligned to 2", "(tiled_wide) on H200, x aligned to 16, cp.async early",
                  "(tiled_wide) on Orin", "(automatic) on 2-SM"):
        assert any(shape in line for line in cases), shape


@pytest.mark.parametrize("mode", ["sum", "mma"])
def test_emulation_runs_collectives_and_mma_layouts(drivers, mode):
    result = _run(drivers["cuda_emulate_selftest"], mode)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shared_memory_starts_as_garbage(drivers):
    """A kernel counting on shared memory starting at zero sums NaN: every block's shared arrays start as 0xFF."""
    result = _run(drivers["cuda_emulate_selftest"], "unwritten-shared")
    assert re.match(r"block sum -?nan,", result.stdout) and result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize(("mode", "status", "message"), [
    ("divergent", 3, "divergence"),
    ("past-the-end", 4, "invalid memory access in block (0, 0)"),
    ("exited-lane", 3, "returned while the warp waits"),
])
def test_emulation_reports_what_a_gpu_would_not(drivers, mode, status, message):
    result = _run(drivers["cuda_emulate_selftest"], mode)
    assert result.returncode == status, result.stdout + result.stderr
    report = result.stderr.strip().splitlines()
    assert len(report) == 1 and report[0].startswith("cuda emulation: ") and message in report[0]


# Each mutation is a one-line bug in a kernel header; the driver must then fail.
MUTATIONS = {
    "streaming-swapped-scales": (
        "cuda/gemm_w4_stream_kernels.cuh", "cuda_emulated_w4",
        "const float scale[4] = {__uint_as_float(scale_bits.x), __uint_as_float(scale_bits.y),",
        "const float scale[4] = {__uint_as_float(scale_bits.y), __uint_as_float(scale_bits.x),"),
    "tiled-stage-barrier-missing": (
        "cuda/gemm_s8s8_kernels.cuh", "cuda_emulated_s8",
        "group_barrier<kSplit, kThreads>(group);  // ... for every thread", "// (no barrier)"),
    # reads a stage one cp.async group too early: only copies that land late show it
    "tiled-cp-async-wait-too-shallow": (
        "cuda/gemm_s8s8_kernels.cuh", "cuda_emulated_s8",
        "ptx::cp_async_wait<kStages - 2>();", "ptx::cp_async_wait<kStages - 1>();"),
}


def _mutated_headers(tmp_path: Path, header: str, before: str, after: str) -> Path:
    """A folder holding `header` with `before` replaced by `after` (once), to put ahead of csrc on the include path."""
    text = (CSRC / header).read_text()
    assert text.count(before) == 1
    (tmp_path / header).parent.mkdir(parents=True)
    (tmp_path / header).write_text(text.replace(before, after))
    return tmp_path


# The tiled int8 kernel issuing its next cp.async before the barrier that says every warp has read the
# stage it overwrites: a race only the sanitized build sees (test_race_check_catches_...).
REFILL_BEFORE_BARRIER = (
    "cuda/gemm_s8s8_kernels.cuh", "cuda_emulated_s8",
    "        group_barrier<kSplit, kThreads>(group);  // ... for every thread; stage (lt - 1) is free again\n"
    "        if (lt + kStages - 1 < k_tiles) load_stage(lt + kStages - 1);\n",
    "        if (lt + kStages - 1 < k_tiles) load_stage(lt + kStages - 1);\n"
    "        group_barrier<kSplit, kThreads>(group);\n")


@pytest.fixture(scope="module")
def mutants(emulation_out, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every mutation's driver built at once, two compilers at a time: name -> (binary, the compiler's result).

    The refill mutation is built plainly ("refill-before-barrier") and sanitized ("...-sanitized").
    """
    jobs = []
    for name, (header, driver, before, after) in sorted(
            {**MUTATIONS, "refill-before-barrier": REFILL_BEFORE_BARRIER}.items()):
        headers = _mutated_headers(tmp_path_factory.mktemp(name), header, before, after)
        jobs.append((name, driver, _flags(_cuda_include(), optimize="-O1", headers_first=headers)))
        if name == "refill-before-barrier":
            jobs.append((f"{name}-sanitized", driver, _race_flags(headers_first=headers)))
    out = tmp_path_factory.mktemp("mutants")
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda job: _build(job[1], job[2], emulation_out, out / job[0]), jobs)
        return {job[0]: (out / job[0], result) for job, result in zip(jobs, built)}


def _mutant(mutants, name: str) -> Path:
    binary, built = mutants[name]
    assert built.returncode == 0, built.stderr[-3000:]
    return binary


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_bug_in_a_kernel_fails_its_driver(mutants, mutation):
    result = _run(_mutant(mutants, mutation), "--quick")
    assert result.returncode == 1 and ": FAIL" in result.stdout
    if mutation == "tiled-cp-async-wait-too-shallow":
        failed = [line for line in _case_lines(result.stdout) if line.endswith("FAIL")]
        assert any("cp.async late" in line for line in failed)
        assert not any("cp.async early" in line for line in failed), failed


# ---- The sanitized build: -fsanitize=thread,undefined ------------------------
#
# A race check. cuda_emulate.h makes each thread one of ThreadSanitizer's fibers
# and tells it what orders memory on a GPU (__syncthreads, bar.sync; not shuffles,
# MMAs or ldmatrix). An access to shared (or global) memory that no barrier orders
# against another thread's write is reported however the fibers happened to
# interleave: warps that drift apart on a GPU are caught here even though the
# emulation runs them in step. ThreadSanitizer keeps the last few accesses of each
# 8 bytes, so a race among many readers can go unseen; it never invents one.
#
# And UndefinedBehaviorSanitizer: an index past a fixed-size array (shared arrays,
# fragment registers), signed overflow in index arithmetic, a shift by 32 or more.
# These are as undefined in CUDA C++ as here, and nvcc optimises on that too.

_RACE_REPORT = "WARNING: ThreadSanitizer: data race"
_RACE_EXIT, _UNDEFINED_EXIT = 66, 67


def _race_env() -> dict[str, str]:
    # halt at the first report, with exit statuses of our own
    return {**os.environ, "TSAN_OPTIONS": f"halt_on_error=1:exitcode={_RACE_EXIT}",
            "UBSAN_OPTIONS": f"exitcode={_UNDEFINED_EXIT}:print_stacktrace=1"}


def _run_race_checked(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600, env=_race_env())


def _race_flags(**kwargs) -> list[str]:
    return [*_flags(_cuda_include(), optimize="-O1", **kwargs), "-fsanitize=thread,undefined",
            "-fno-sanitize-recover=all"]


@pytest.fixture(scope="module")
def race_checked(emulation_out) -> dict[str, Path]:
    """Every driver built with ThreadSanitizer and UBSan (skips where the compiler has no runtime for them,
    or they cannot run here)."""
    probe_source = emulation_out / "tsan_probe.cpp"
    probe_source.write_text("int main() { return 0; }\n")
    probe = emulation_out / "tsan_probe"
    built = subprocess.run([_compiler(), "-fsanitize=thread,undefined", str(probe_source), "-o", str(probe)],
                           capture_output=True, text=True)
    if built.returncode != 0 or subprocess.run([str(probe)], capture_output=True, env=_race_env()).returncode != 0:
        pytest.skip("needs ThreadSanitizer and UBSan (-fsanitize=thread,undefined) that build and run here")
    return _build_all(_race_flags(), emulation_out, suffix="_race")


@pytest.fixture(scope="module")
def race_runs(race_checked) -> dict[str, subprocess.CompletedProcess]:
    """Each kernel driver's quick cases under the race check, two at a time."""
    names = [name for name in DRIVERS if name != "cuda_emulate_selftest"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(lambda name: _run_race_checked(race_checked[name], "--quick"), names)))


@pytest.mark.parametrize("driver", ["cuda_emulated_w4", "cuda_emulated_s8", "cuda_emulated_2to4"])
def test_kernels_have_no_data_races_or_undefined_behaviour(race_runs, driver):
    result = race_runs[driver]
    assert result.returncode == 0 and result.stderr == "", result.stderr[-6000:]
    cases = _case_lines(result.stdout)
    assert len(cases) >= 20 and all(line.endswith(": ok") for line in cases), cases


@pytest.mark.parametrize("mode", ["no-barrier", "warp-synchronous"])
def test_race_check_reports_unordered_accesses(race_checked, drivers, mode):
    result = _run_race_checked(race_checked["cuda_emulate_selftest"], mode)
    assert result.returncode == _RACE_EXIT and _RACE_REPORT in result.stderr, result.stdout + result.stderr[-3000:]
    assert "block_sum" in result.stderr and "Location is TLS" in result.stderr  # shared memory, in the kernel
    if mode == "warp-synchronous":
        # Only the race check sees this one: run in step, the pairs' swap through shared memory sums right.
        assert _run(drivers["cuda_emulate_selftest"], mode).returncode == 0
    clean = _run_race_checked(race_checked["cuda_emulate_selftest"], "sum")
    assert clean.returncode == 0 and clean.stderr == ""


def test_undefined_behaviour_check_reports_an_index_past_a_shared_array(race_checked):
    result = _run_race_checked(race_checked["cuda_emulate_selftest"], "index-past-shared")
    assert result.returncode == _UNDEFINED_EXIT, result.stdout + result.stderr[-3000:]
    assert "runtime error: index 5 out of bounds for type 'float [5]'" in result.stderr and "block_sum" in result.stderr


def test_race_check_catches_a_stage_refilled_before_the_barrier(race_checked, mutants):
    """REFILL_BEFORE_BARRIER. Warps run in step, so the sums still come out right; on a GPU a warp that
    runs ahead overwrites data a slower warp has yet to read. The race check names the refill."""
    assert _run(_mutant(mutants, "refill-before-barrier"), "--quick").returncode == 0  # the sums do not show it
    result = _run_race_checked(_mutant(mutants, "refill-before-barrier-sanitized"), "--quick")
    assert result.returncode == _RACE_EXIT and _RACE_REPORT in result.stderr, result.stderr[-3000:]
    assert "load_tile_s8" in result.stderr and "gemm_s8s8_tiled_kernel" in result.stderr
