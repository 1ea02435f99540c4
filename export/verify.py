"""Prove an exported graph computes what the PyTorch policy computes.

Both run on the same held-out observations (in batches, so large sets fit in
memory); we compare the normalized actions. Two numbers decide: the largest
absolute difference catches a single wrong element, the cosine similarity of
the flattened outputs (in float64) catches a small but systematic drift that
stays under ``atol`` everywhere. Non-finite outputs count as infinitely wrong.
A quantized file against its fake-quant model differs where an activation sat on
a rounding tie, in a few samples only: there ``atol`` bounds the typical
sample's largest error (:func:`compare`'s ``tie_flips``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backends import OnnxRuntimeRunner, TorchRunner
from ..errors import EdgevlaError, GateFailed
from ..spec import spec_of


@dataclass(frozen=True)
class VerifyResult:
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    atol: float
    min_cosine: float
    passed: bool
    samples: int
    typical_max_abs_error: float = 0.0  # the median over samples of each sample's largest error
    tie_flips: bool = False  # atol bounds typical_max_abs_error, not max_abs_error (compare)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        gated = (f"typical sample's max |err| {self.typical_max_abs_error:.3g} (atol {self.atol:g}), max |err| "
                 f"{self.max_abs_error:.3g}" if self.tie_flips
                 else f"max |err| {self.max_abs_error:.3g} (atol {self.atol:g})")
        return (f"ONNX verification {verdict} on {self.samples} samples: {gated}, "
                f"mean |err| {self.mean_abs_error:.3g}, "
                f"cosine {self.cosine:.6f} (min {self.min_cosine:g})")

    def raise_if_failed(self) -> None:
        """Turn a failed comparison into the build gate's exit status."""
        if not self.passed:
            raise GateFailed(self.summary())


def verify_onnx(policy, onnx_path: str | os.PathLike, observations: Mapping[str, np.ndarray], *,
                atol: float, min_cosine: float, batch_size: int = 64,
                threads: int | None = None) -> VerifyResult:
    """Compare ``policy`` (PyTorch) with ``onnx_path`` (ONNX Runtime) on ``observations``.

    ``observations`` holds arrays with a leading sample axis, as the policy takes them.
    """
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise EdgevlaError(f"atol must be a finite number >= 0, got {atol!r}")
    if not (isinstance(min_cosine, (int, float)) and -1.0 <= min_cosine <= 1.0):
        raise EdgevlaError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgevlaError(f"batch_size must be a positive integer, got {batch_size!r}")
    spec = spec_of(policy)
    samples = spec.validate(observations)
    if samples == 0:
        raise EdgevlaError("verification needs at least one observation")

    reference, exported = [], []
    with TorchRunner(policy, threads=threads) as torch_run, \
            OnnxRuntimeRunner(onnx_path, spec, threads=threads) as ort_run:
        for start in range(0, samples, batch_size):
            batch = {name: np.asarray(a)[start:start + batch_size] for name, a in observations.items()}
            reference.append(torch_run(batch))
            exported.append(ort_run(batch))
    return compare(np.concatenate(reference), np.concatenate(exported), atol=atol, min_cosine=min_cosine)


def compare(reference: np.ndarray, candidate: np.ndarray, *, atol: float, min_cosine: float,
            tie_flips: bool = False) -> VerifyResult:
    """The verification numbers for two equally shaped output arrays (first axis: samples).

    ``tie_flips``: both sides round activations to the same int8 codes, so a sample whose activation lies
    within float noise of a rounding tie can take the neighbouring code there, and the difference that
    follows is that sample's alone. ``atol`` then bounds the *typical* sample's largest error (the median
    over samples): a wrong export shows in every sample, a tie flip in a few (a 4-layer Llama-style
    policy, w8a8: 3 to 8 of 64 samples off by up to 0.055, the rest within 4e-7). The largest error is
    reported either way, and the cosine gates either way."""
    if reference.shape != candidate.shape:
        raise EdgevlaError(f"cannot compare outputs of shapes {reference.shape} and {candidate.shape}")
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    err = np.abs(ref - cand)
    err[~np.isfinite(err)] = np.inf
    cosine = _cosine(ref, cand)
    max_err = float(err.max()) if err.size else 0.0
    mean_err = float(err.mean()) if err.size else 0.0
    per_sample = err.reshape(reference.shape[0], -1).max(axis=1) if err.size else np.zeros(1)
    typical = float(np.median(per_sample))
    passed = bool((typical if tie_flips else max_err) <= atol and cosine >= min_cosine)
    return VerifyResult(max_abs_error=max_err, mean_abs_error=mean_err, cosine=cosine, atol=float(atol),
                        min_cosine=float(min_cosine), passed=passed, samples=int(reference.shape[0]),
                        typical_max_abs_error=typical, tie_flips=tie_flips)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return -1.0  # cannot be trusted: the worst possible similarity
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0  # two zero outputs agree; a zero and a non-zero do not
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))
