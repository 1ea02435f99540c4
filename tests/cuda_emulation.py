"""Building and running the CUDA kernels' own source on the CPU (tests/test_cuda_emulated.py says how).

Shared by ``test_cuda_emulated.py`` (the kernels against their references, and mutated kernels failing) and
``test_cuda_emulated_race.py`` (the same drivers under ThreadSanitizer and UBSan), two modules so that a
parallel test run builds the plain and the sanitized drivers at once.
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


def cuda_include() -> Path | None:
    """The CUDA headers' folder (cuda_fp16.h): next to nvcc, under $CUDA_HOME, or /usr/local/cuda."""
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_fp16.h").is_file()), None)


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_flags(include: Path, *, headers_first: Path | None = None) -> list[str]:
    # -O1: half of -O2's compile time, and the emulated drivers run as fast (all four built in 14.5 s against
    # 25.6 s, two compilers at a time; their cases run in 32.7 s against 36.9 s);
    # -g1: line tables and functions (inlined ones too), enough for the sanitizers' stack traces; full -g
    # took a third longer to compile these template-heavy sources;
    # -fno-strict-aliasing: kernels read a uint4 as __half2 and the like, as CUDA allows;
    # -ffp-contract=off: the epilogue's float32 steps as the kernels' --fmad=false build makes them;
    # -fno-extern-tls-init: `extern __shared__` arrays are thread_locals without dynamic initialization.
    # headers_first: a folder whose kernel headers replace csrc's (the mutation tests).
    first = [f"-I{headers_first}"] if headers_first else []
    return ["-std=c++17", "-O1", "-g1", "-fno-strict-aliasing", "-ffp-contract=off", "-fno-extern-tls-init",
            "-DEDGEVLA_CUDA_EMULATE", *first, f"-I{CSRC}", f"-I{include}"]


def emulated_sources(name: str, out: Path) -> list[str]:
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


def build_driver(name: str, flags: list[str], out: Path, binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([compiler(), *flags, *emulated_sources(name, out), "-o", str(binary)],
                          capture_output=True, text=True)


def build_drivers(flags: list[str], out: Path, suffix: str = "") -> dict[str, Path]:
    """Every driver: each source compiled once (two drivers share a launcher, the runtime and the packer),
    two compilers at a time, heaviest first, then linked."""
    sources = {name: emulated_sources(name, out) for name in DRIVERS}
    unique = sorted({source for listed in sources.values() for source in listed}, key=lambda s: -Path(s).stat().st_size)
    objects = {source: out / f"{Path(source).stem}{suffix}.o" for source in unique}

    def compile_one(source: str) -> subprocess.CompletedProcess:
        return subprocess.run([compiler(), *flags, "-c", source, "-o", str(objects[source])],
                              capture_output=True, text=True)

    def link(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([compiler(), *flags, *(str(objects[s]) for s in sources[name]), "-o",
                               str(binaries[name])], capture_output=True, text=True)

    binaries = {name: out / f"{name}{suffix}" for name in DRIVERS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for source, result in zip(unique, pool.map(compile_one, unique)):
            assert result.returncode == 0, f"{Path(source).name} did not compile:\n{result.stderr[-4000:]}"
        for name, result in zip(DRIVERS, pool.map(link, DRIVERS)):
            assert result.returncode == 0, f"{name} did not link:\n{result.stderr[-4000:]}"
    return binaries


def emulation_folder(tmp_path_factory) -> Path:
    """A fresh build folder, or a skip where there is no C++ compiler or no CUDA headers."""
    if cuda_include() is None or compiler() is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    return tmp_path_factory.mktemp("cuda_emulated")


def run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    """A driver's run (its cases on stdout, one line each)."""
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def case_lines(stdout: str) -> list[str]:
    """A run's case lines, without the indented detail and the closing count."""
    return [line for line in stdout.splitlines() if line and not line.startswith(" ") and "failed" not in line]


def has_case(cases: list[str], start: str, part: str) -> bool:
    """Whether a case line starts with ``start`` and holds ``part`` (a launch's shape, say)."""
    return any(line.startswith(start) and part in line for line in cases)


def mutated_headers(tmp_path: Path, header: str, before: str, after: str) -> Path:
    """A folder holding `header` with `before` replaced by `after` (once), to put ahead of csrc on the include path."""
    text = (CSRC / header).read_text()
    assert text.count(before) == 1
    (tmp_path / header).parent.mkdir(parents=True)
    (tmp_path / header).write_text(text.replace(before, after))
    return tmp_path


# The tiled int8 kernel issuing its next cp.async before the barrier that says every warp has read the
# stage it overwrites: a race only the sanitized build sees (test_cuda_emulated_race.py).
REFILL_BEFORE_BARRIER = (
    "cuda/gemm_s8s8_kernels.cuh", "cuda_emulated_s8",
    "        group_barrier<kSplit, kThreads>(group);  // ... for every thread; stage (lt - 1) is free again\n"
    "        if (lt + kStages - 1 < k_tiles) load_stage(lt + kStages - 1);\n",
    "        if (lt + kStages - 1 < k_tiles) load_stage(lt + kStages - 1);\n"
    "        group_barrier<kSplit, kThreads>(group);\n")


# The sanitized build (test_cuda_emulated_race.py): -fsanitize=thread,undefined, halting at the first report.
RACE_REPORT = "WARNING: ThreadSanitizer: data race"
RACE_EXIT, UNDEFINED_EXIT = 66, 67


def race_env() -> dict[str, str]:
    # halt at the first report, with exit statuses of our own
    return {**os.environ, "TSAN_OPTIONS": f"halt_on_error=1:exitcode={RACE_EXIT}",
            "UBSAN_OPTIONS": f"exitcode={UNDEFINED_EXIT}:print_stacktrace=1"}


def run_race_checked(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600, env=race_env())


def race_flags(**kwargs) -> list[str]:
    """compile_flags with ThreadSanitizer and UBSan, every report fatal."""
    return [*compile_flags(cuda_include(), **kwargs), "-fsanitize=thread,undefined",
            "-fno-sanitize-recover=all"]
