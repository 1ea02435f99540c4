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
check (``test_cuda_emulated_race.py``; the building is ``cuda_emulation.py``'s).

What this cannot show: speed, or anything that differs between a tensor core's
internal rounding and a sum in double. The device run (``tests/cuda/run_device.sh``)
remains the judge.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cuda_emulation import (build_driver, build_drivers, case_lines, compile_flags, cuda_include, emulation_folder,
                            has_case, mutated_headers, run)


@pytest.fixture(scope="module")
def emulation_out(tmp_path_factory) -> Path:
    return emulation_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def drivers(emulation_out) -> dict[str, Path]:
    return build_drivers(compile_flags(cuda_include()), emulation_out)


def test_int4_kernels_match_the_reference(drivers):
    result = run(drivers["cuda_emulated_w4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = case_lines(result.stdout)
    # 10 problems x 2 x types x (3 cuda_cores + 9 streaming + 2 to 6 tensor_cores instantiations + 9 launcher calls)
    assert len(cases) >= 10 * 2 * 23
    assert all(line.endswith(": ok") for line in cases), cases
    for kernel in ("cuda_cores<f32", "streaming<f16", "tensor_cores/16ch<f32", "tensor_cores/16ch<f16",
                   "tensor_cores/32ch<f16,2", "tensor_cores/64ch<f32,1", "gemm_w4(automatic)",
                   "gemm_w4(streaming) on Orin", "gemm_w4(tensor_cores) on 2-SM"):
        assert any(line.startswith(kernel) for line in cases), kernel
    assert has_case(cases, "tensor_cores/64ch<f32", " extreme")
    # The launcher's one-wave rule: 16 warps when one block has units for them, the fewest (4)
    # when the grid cannot be resident at once (8 blocks on 2 SMs of 2 blocks each).
    # K = 4096 gives 16 warps work: the H200 holds the 3 blocks of 16 at once, the 2-SM part (one
    # 16-warp block an SM) does not, and takes 8 (two 8-warp blocks an SM).
    assert has_case(cases, "gemm_w4(streaming) on H200 f32 m=1 n=40 k=4096", "[3x1 blocks of 512]")
    assert has_case(cases, "gemm_w4(streaming) on 2-SM f32 m=1 n=40 k=4096", "[3x1 blocks of 256]")
    assert has_case(cases, "gemm_w4(streaming) on 2-SM f32 m=30", "[1x8 blocks of 128]")
    # tensor_cores: blocks of 4 channel tiles when there are still blocks for every SM (9 tiles, 2 SMs),
    # of 2 at 2 column tiles (5 tiles), else of 1.
    assert has_case(cases, "gemm_w4(tensor_cores) on 2-SM f32 m=1 n=136", "[3x1 blocks")
    assert has_case(cases, "gemm_w4(tensor_cores) on 2-SM f32 m=9 n=72", "[3x1 blocks")
    assert has_case(cases, "gemm_w4(tensor_cores) on H200 f32 m=1 n=136", "[9x1 blocks")
    assert "gemm_w4 refuses M = 65: ok" in cases
    assert result.stdout.rstrip().endswith("0 kernel runs failed")


def test_int8_kernels_are_exact(drivers):
    result = run(drivers["cuda_emulated_s8"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = case_lines(result.stdout)
    assert len(cases) >= 6 * 6 + 3 * 24 + 9 * 3 * 6 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("4 warps", "8 warps", "16 warps", "vector", "bytes", "per-token", "int32", "TileWide",
                  "TileSmallSplitK", "TileTinySplitK", "cp.async early", "cp.async late", "gemm_s8s8(small_m_wave) on Orin",
                  "gemm_s8s8(tiled_wide) on 2-SM", "gemm_s8s8(tiled_split_k) on H200", "gemm_2to4_s8(automatic) on H200",
                  "gemm_2to4_s8(tiled_wide) on H200 cp.async early", "gemm_2to4_s8(tiled_wide) on 2-SM"):
        assert any(shape in line for line in cases), shape
    assert sum(line.startswith("gemm_s8s8 refuses M = 17") for line in cases) == 2
    # small_m_wave: 16 warps a block when the grid fits and K gives every warp a batch of steps.
    assert has_case(cases, "gemm_s8s8(small_m_wave) on H200 [2x1 blocks of 512]", "k=4096")


def test_float16_2to4_kernels_match_the_reference(drivers):
    result = run(drivers["cuda_emulated_2to4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = case_lines(result.stdout)
    assert len(cases) >= 5 * 12 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("(automatic) on H200, x aligned to 2", "(tiled_wide) on H200, x aligned to 16, cp.async early",
                  "(tiled_wide) on Orin", "(automatic) on 2-SM"):
        assert any(shape in line for line in cases), shape


@pytest.mark.parametrize("mode", ["sum", "mma"])
def test_emulation_runs_collectives_and_mma_layouts(drivers, mode):
    result = run(drivers["cuda_emulate_selftest"], mode)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shared_memory_starts_as_garbage(drivers):
    """A kernel counting on shared memory starting at zero sums NaN: every block's shared arrays start as 0xFF."""
    result = run(drivers["cuda_emulate_selftest"], "unwritten-shared")
    assert re.match(r"block sum -?nan,", result.stdout) and result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize(("mode", "status", "message"), [
    ("divergent", 3, "divergence"),
    ("past-the-end", 4, "invalid memory access in block (0, 0)"),
    ("exited-lane", 3, "returned while the warp waits"),
])
def test_emulation_reports_what_a_gpu_would_not(drivers, mode, status, message):
    result = run(drivers["cuda_emulate_selftest"], mode)
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


@pytest.fixture(scope="module")
def mutants(emulation_out, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every mutation's driver built at once, two compilers at a time: name -> (binary, the compiler's result)."""
    jobs = []
    for name, (header, driver, before, after) in sorted(MUTATIONS.items()):
        headers = mutated_headers(tmp_path_factory.mktemp(name), header, before, after)
        jobs.append((name, driver, compile_flags(cuda_include(), headers_first=headers)))
    out = tmp_path_factory.mktemp("mutants")
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda job: build_driver(job[1], job[2], emulation_out, out / job[0]), jobs)
        return {job[0]: (out / job[0], result) for job, result in zip(jobs, built)}


def _mutant(mutants, name: str) -> Path:
    binary, built = mutants[name]
    assert built.returncode == 0, built.stderr[-3000:]
    return binary


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_bug_in_a_kernel_fails_its_driver(mutants, mutation):
    result = run(_mutant(mutants, mutation), "--quick")
    assert result.returncode == 1 and ": FAIL" in result.stdout
    if mutation == "tiled-cp-async-wait-too-shallow":
        failed = [line for line in case_lines(result.stdout) if line.endswith("FAIL")]
        assert any("cp.async late" in line for line in failed)
        assert not any("cp.async early" in line for line in failed), failed
