"""EDGEVLA_CUDA_ARCHS read from the target profiles (CMakeLists.txt): a configure-only run of CMake, no build."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)

pytestmark = pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None or shutil.which("ninja") is None,
                                reason="needs cmake, ninja and nvcc")


def _configure(spec: str, build: Path) -> subprocess.CompletedProcess:
    pybind11_dir = subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    return subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DEDGEVLA_CUDA=ON",
                           f"-DCMAKE_CUDA_COMPILER={NVCC}", f"-DEDGEVLA_CUDA_ARCHS={spec}",
                           f"-Dpybind11_DIR={pybind11_dir}", f"-DPython_EXECUTABLE={sys.executable}"],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def thor(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One configure for Jetson Thor (about ten seconds of CUDA compiler checks), shared: its result and folder."""
    build = tmp_path_factory.mktemp("thor")
    return _configure("target:jetson-thor", build), build


def test_a_target_name_builds_for_its_cuda_arch(thor):
    configured, _ = thor
    assert configured.returncode == 0, configured.stderr
    assert "for architectures 110\n" in configured.stdout  # targets/jetson-thor.yaml: cuda_arch: sm_110


def test_a_cpu_target_or_an_unknown_one_stops_the_configure(tmp_path):
    cpu = _configure("target:x86-64-cpu", tmp_path / "cpu")
    assert cpu.returncode != 0 and "no GPU target there" in cpu.stderr
    missing = _configure("target:jetson-nope", tmp_path / "missing")
    assert missing.returncode != 0 and "there is no targets/jetson-nope.yaml" in missing.stderr


@pytest.mark.skipif(importlib.util.find_spec("cutlass_library") is None, reason="needs the nvidia-cutlass wheel")
def test_the_thor_build_compiles_the_tcgen05_kernel(thor):
    """The tcgen05 int8 GEMM (csrc/cuda/gemm_s8s8_sm100.cu) is built only for sm_110 / sm_100, which the default
    architectures (87, 90) leave out: compiled here so that it does not rot (no GPU needed, none can run it)."""
    configured, folder = thor
    assert configured.returncode == 0, configured.stderr
    assert "tcgen05 int8 GEMM on CUTLASS for 110a" in configured.stdout
    build = subprocess.run(["cmake", "--build", str(folder), "--target", "edgevla_cuda_sm100"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
