"""Each CUDA kernel variant run once, in a process of its own, before it is timed or tuned.

A kernel that faults leaves the process's CUDA context unusable (an illegal
address is sticky), and one that hangs stops the process: either would take
the process with it, the benchmark (``bench kernels --device cuda``: every later
row) or a policy tuning its kernel tactics (:mod:`edgevla.cuda_tactics`: the
robot's process). Several variants were written on machines without a GPU, and
none has run on a Jetson, so each variant's probe first runs here, a few calls
at fixed shapes (the smallest of the reference policies' and a middle one, and
for the benchmark a large one; M = 1 and 16, or 256; float16 and float32 x), in
a child process with a time limit. A variant whose child is killed by a signal,
outlives its limit, or leaves the context unusable is left out, with the
reason. A probe that merely raises (a shape a variant refuses, a launch error
that clears) is not a crash: the caller's own checks see such calls.

Usage (what the callers spawn): ``python -m edgevla.cuda_preflight KEY [--large]``
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: The probes: ``op:variant``, as the benchmark's rows group them.
PROBES = ("int8:auto", "int8:small_m_wave", "int8:tiled_wide", "int8:tiled_split_k", "int8:wgmma", "int8:tcgen05",
          "2to4-int8:auto", "2to4-int8:tiled_wide", "2to4-int8:wgmma", "2to4-f16:auto", "2to4-f16:tiled_wide",
          "int4:auto", "int4:streaming", "int4:tensor_cores")

#: Exit statuses of a probe process (anything else, or a signal, is a crash).
EXIT_OK, EXIT_USAGE, EXIT_CONTEXT_LOST, EXIT_NO_CUDA = 0, 2, 3, 4

# The probes' shapes (K, N): tiny-vla attn (smaller than every tile), base-vla fc1; with --large also
# large down, as the benchmark times it.
SHAPES = ((96, 96), (768, 3072))
LARGE_SHAPE = (14336, 4096)

# The policy layers' kernels (cuda_policy's LayerChoice.kernel) -> the probes' op.
_KERNEL_OPS = {"cuda-s8-dense": "int8", "cuda-s8-2:4": "2to4-int8", "cuda-f16-2:4": "2to4-f16",
               "cuda-s4-groupwise": "int4"}


def probe_key(kernel: str, variant: str) -> str | None:
    """The probe that vets ``variant`` of a policy layer's ``kernel``, or None if there is none."""
    op = _KERNEL_OPS.get(kernel)
    if op == "int8" and variant == "tiled":  # the tiled kernel is what auto runs at M > 16
        variant = "auto"
    key = f"{op}:{variant}"
    return key if key in PROBES else None


def _calls(key: str, k: int, n: int, dev: str = "cuda") -> list[Callable[[], Any]]:
    """One probe's calls at one shape: the variant at each M regime and x type the benchmark times it at."""
    import numpy as np
    import torch

    from . import cuda_kernels as ck
    from . import native

    op, variant = key.split(":")
    rng = np.random.default_rng(0)

    def s8(m: int) -> Any:
        return torch.from_numpy(rng.integers(-127, 128, (m, k), dtype=np.int8)).to(dev)

    w_scale = torch.full((n,), 1e-3, device=dev)
    a_scale = torch.full((1,), 1e-2, device=dev)
    bias = torch.linspace(-1, 1, n, device=dev)

    def epilogues(m: int) -> tuple[dict[str, Any], ...]:
        """int32 out; the float32 epilogue with one a_scale; with a scale per row and a bias (the policies')."""
        per_row = torch.full((m,), 1e-2, device=dev)
        return ({}, {"w_scale": w_scale, "a_scale": a_scale},
                {"w_scale": w_scale, "a_scale": per_row, "bias": bias, "act": "gelu_tanh"})

    if op == "int8":
        w = torch.from_numpy(rng.integers(-127, 128, (n, k), dtype=np.int8)).to(dev)
        ms = (1, 16) if variant in ("auto", "small_m_wave") else ()
        ms += (256,) if variant != "small_m_wave" else ()
        return [lambda m=m, e=e: ck.gemm_s8s8(s8(m), w, **e, variant=variant) for m in ms for e in epilogues(m)]
    if op == "2to4-int8":
        w24 = ck.random_2to4(rng, n, k, np.int8)
        if variant == "wgmma":
            packed = ck.pack_2to4_s8_wgmma(torch.from_numpy(w24).to(dev))
            return [lambda e=e: ck.gemm_2to4_s8(s8(256), packed, **e) for e in epilogues(256)]
        packed = ck.pack_2to4_s8(w24, device=dev)
        ms = (1, 16, 256) if variant == "auto" else (256,)
        return [lambda m=m, e=e: ck.gemm_2to4_s8(s8(m), packed, **e, variant=variant) for m in ms for e in epilogues(m)]
    if op == "2to4-f16":
        packed = ck.pack_2to4_f16(ck.random_2to4(rng, n, k, np.float16), device=dev)
        ms = (1, 16, 256) if variant == "auto" else (256,)
        return [lambda m=m, b=b: ck.gemm_2to4_f16(torch.randn((m, k), device=dev).half(), packed, b, variant=variant)
                for m in ms for b in (None, bias)]
    if op == "int4":
        calls = []
        for group in (32, 128):
            codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
            scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
            weight = ck.W4Weight.from_packed(native.pack_w4(codes, scales, group, k=k), device=dev)
            for m in (1, 16):
                for dtype in (torch.float16, torch.float32):
                    calls.append(lambda m=m, dtype=dtype, weight=weight: ck.gemm_w4(
                        torch.randn((m, k), device=dev).to(dtype), weight, bias if dtype == torch.float32 else None,
                        variant=variant))
        return calls
    raise ValueError(key)


def _context_usable() -> bool:
    """Whether this process's CUDA context still runs work (a fault leaves it unusable for good)."""
    import torch

    try:
        torch.ones(1, device="cuda").add_(1).item()
    except Exception:  # noqa: BLE001 — any failure here means the context is gone
        return False
    return True


def probe(key: str, large: bool = False) -> int:
    """Runs one probe in this process; the exit status says whether the CUDA context survived it.

    Every call runs, also after one raises: a variant that refuses the smallest shape must still
    meet the larger ones here, not first in the benchmark's process.
    """
    if key not in PROBES:
        print(f"cuda_preflight: unknown probe {key!r}; one of {', '.join(PROBES)}", file=sys.stderr)
        return EXIT_USAGE
    from . import cuda_kernels as ck
    from .errors import describe

    reason = ck.unavailable_reason()
    if reason:
        print(f"cuda_preflight: {reason}", file=sys.stderr)
        return EXIT_NO_CUDA
    import torch

    ran, refusals = 0, []

    def attempt(fn: Callable[[], Any], k: int, n: int) -> bool:
        """Runs fn; False when the context is lost (the probe ends), a refusal is noted and passed over."""
        try:
            fn()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 — a refusal is fine; a context the GPU poisoned is not
            first = describe(e)
            if not _context_usable():
                print(f"cuda_preflight: {key}: {first} at (K, N) = ({k}, {n}); the CUDA context is unusable "
                      "after it", file=sys.stderr)
                return False
            refusals.append(f"{first} at (K, N) = ({k}, {n})")
        return True

    for k, n in (*SHAPES, *((LARGE_SHAPE,) if large else ())):
        calls: list[Callable[[], Any]] = []
        # making the operands runs kernels too (the 2:4 pattern check and CUTLASS's compressor)
        if not attempt(lambda: calls.extend(_calls(key, k, n)), k, n):
            return EXIT_CONTEXT_LOST
        for call in calls:
            ran += 1
            if not attempt(call, k, n):
                return EXIT_CONTEXT_LOST
    if refusals:
        print(f"cuda_preflight: {key}: {len(refusals)} of {ran} calls raised, the context survived; "
              f"first: {refusals[0]}")
    else:
        print(f"cuda_preflight: {key}: ok ({ran} calls)")
    return EXIT_OK


def _spawn(key: str, timeout_s: float, large: bool = False) -> tuple[int | None, str]:
    """Runs ``probe(key)`` in a child process: (exit status, or None past the time limit; its last output)."""
    try:
        done = subprocess.run([sys.executable, "-m", "edgevla.cuda_preflight", key, *(["--large"] if large else [])],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def unsafe_variants(keys: Iterable[str], *, large: bool = False, timeout_s: float = 90.0, workers: int = 4,
                    spawn: Callable[..., tuple[int | None, str]] = _spawn) -> tuple[dict[str, str], dict[str, str]]:
    """Runs the probes ``keys``, ``workers`` at a time (each its own CUDA context on the same GPU).

    ``large``: also at the large shape (the benchmark's; a policy's tuning skips it).

    Returns (left out, not probed), each key -> why. Left out: the probe's process was killed by a
    signal, outlived ``timeout_s``, or lost its CUDA context: the kernel's doing. Not probed: the
    probe itself could not run (it exited with another status, a Python error before any kernel
    ran, say); the benchmark keeps those variants, since its own checks still guard each row.
    """
    keys = list(keys)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = list(pool.map(lambda key: spawn(key, timeout_s, large), keys))
    left_out, not_probed = {}, {}
    for key, (status, last) in zip(keys, outcomes):
        said = f" ({last})" if last else ""
        if status is None:
            left_out[key] = f"still running after {timeout_s:g} s (a hang?)"
        elif status == EXIT_CONTEXT_LOST:
            left_out[key] = last or "the CUDA context was unusable after it"
        elif status < 0:
            left_out[key] = f"killed by signal {-status}{said}"
        elif status != EXIT_OK:
            not_probed[key] = f"exit status {status}{said}"
    return left_out, not_probed


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) not in (1, 2) or arguments[1:] not in ([], ["--large"]):
        print("usage: python -m edgevla.cuda_preflight KEY [--large]", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(probe(arguments[0], large=arguments[1:] == ["--large"]))
