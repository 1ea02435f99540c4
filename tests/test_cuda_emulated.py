"""The CUDA kernels' own source, run on the CPU (no GPU needed).

``csrc/cuda/emulate/cuda_emulate.h`` runs a kernel's threads as fibers, one
block at a time, with warp shuffles, ``__syncthreads`` and the tensor-core MMAs
emulated (``ptx_emulate.h``: the PTX ISA's fragment layouts). The drivers in
``csrc/tests/`` check against references:

- ``cuda_emulated_w4``: every int4 GEMV kernel (``cuda_cores``, ``streaming``,
  ``tensor_cores``) at every row, warp and column-tile count a launcher can pick,
  float32 and float16 x, within 1e-5 of a double-precision sum;
- ``cuda_emulated_s8``: the int8 small-M kernel at 4, 8 and 16 warps (auto and
  ``small_m_wave``), the tiled kernel at every tile (the automatic three, and the
  ``tiled_wide`` and ``tiled_split_k`` variants) with cp.async landing at issue and
  as late as the kernel's waits allow, and the int8 2:4 kernels (split-K, direct,
  tiled, ``tiled_wide``) on the host packer's weights: int32 exact, the float
  epilogue bit-identical;
- ``cuda_emulated_2to4``: the float16 2:4 kernels, within 1e-5 of a double sum;
- ``cuda_emulate_selftest``: that the emulation catches what it claims to (a
  collective under divergence, a read past a buffer, a lane gone from a shuffle).

What this cannot show: speed, races between threads (fibers switch only at
collectives), or anything that differs between a tensor core's internal rounding and
a sum in double. The device run (``tests/cuda/run_device.sh``) remains the judge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
# driver -> the other sources it links (the host 2:4 packer)
DRIVERS = {
    "cuda_emulated_w4": [],
    "cuda_emulated_s8": ["cuda/pack_2to4_mma.cpp"],
    "cuda_emulated_2to4": ["cuda/pack_2to4_mma.cpp"],
    "cuda_emulate_selftest": [],
}


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


@pytest.fixture(scope="module")
def drivers(tmp_path_factory) -> dict[str, Path]:
    include, compiler = _cuda_include(), _compiler()
    if include is None or compiler is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    out = tmp_path_factory.mktemp("cuda_emulated")
    # -fno-strict-aliasing: kernels read a uint4 as __half2 and the like, as CUDA allows;
    # -ffp-contract=off: the epilogue's float32 steps as the kernels' --fmad=false build makes them;
    # -fno-extern-tls-init: `extern __shared__` arrays are thread_locals without dynamic initialization.
    flags = ["-std=c++17", "-O2", "-g", "-fno-strict-aliasing", "-ffp-contract=off", "-fno-extern-tls-init",
             "-DEDGEVLA_CUDA_EMULATE", f"-I{CSRC}", f"-I{include}"]

    def build(name: str) -> subprocess.CompletedProcess:
        sources = [str(CSRC / "tests" / f"{name}.cpp"), *(str(CSRC / extra) for extra in DRIVERS[name])]
        return subprocess.run([compiler, *flags, *sources, "-o", str(out / name)], capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, built in zip(DRIVERS, pool.map(build, DRIVERS)):
            assert built.returncode == 0, f"{name} did not compile:\n{built.stderr[-4000:]}"
    return {name: out / name for name in DRIVERS}


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def _case_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line and not line.startswith(" ") and "failed" not in line]


def test_int4_kernels_match_the_reference(drivers):
    result = _run(drivers["cuda_emulated_w4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    # 8 problems x 2 x types x (3 cuda_cores + 9 streaming + 2 or 3 tensor_cores instantiations)
    assert len(cases) >= 8 * 2 * 14
    assert all(line.endswith(": ok") for line in cases), cases
    for kernel in ("cuda_cores<f32", "streaming<f16", "tensor_cores<f32", "tensor_cores<f16"):
        assert any(line.startswith(kernel) for line in cases)
    assert any(" extreme" in line and line.startswith("tensor_cores<f32") for line in cases)
    assert result.stdout.rstrip().endswith("0 kernel runs failed")


def test_int8_kernels_are_exact(drivers):
    result = _run(drivers["cuda_emulated_s8"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    assert len(cases) >= 6 * 6 + 3 * 24 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("4 warps", "8 warps", "16 warps", "vector", "bytes", "per-token", "int32", "TileWide",
                  "TileSmallSplitK", "TileTinySplitK", "cp.async early", "cp.async late", "2to4<split_k,1",
                  "2to4<split_k,2", "2to4<direct", "2to4<tiled,1", "2to4<tiled,2"):
        assert any(shape in line for line in cases), shape


def test_float16_2to4_kernels_match_the_reference(drivers):
    result = _run(drivers["cuda_emulated_2to4"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    cases = _case_lines(result.stdout)
    assert len(cases) >= 13 and all(line.endswith(": ok") for line in cases), cases
    for shape in ("split_k,1,halves", "split_k,2,vector", "direct,4,vector", "tiled,1", "tiled,2", "cp.async early"):
        assert any(shape in line for line in cases), shape


@pytest.mark.parametrize("mode", ["sum", "mma"])
def test_emulation_runs_collectives_and_mma_layouts(drivers, mode):
    result = _run(drivers["cuda_emulate_selftest"], mode)
    assert result.returncode == 0, result.stdout + result.stderr


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
