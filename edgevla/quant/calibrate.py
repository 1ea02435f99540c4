"""Activation calibration: gather statistics of every quantizable layer's input, pick clip ranges.

Statistics come from forward pre-hooks on the ``nn.Linear`` and convolution
modules while the model runs over calibration batches. Each observer keeps the
exact running ``amax`` (for minmax), the per-input-channel ``amax`` (for
SmoothQuant; the last axis of a Linear's input, axis 1 of a convolution's) and a
bounded, deterministic sample of ``|x|`` (for percentile, entropy and MSE),
so memory stays fixed however many batches are fed.

Calibrators map the statistics of one tensor to a clip value ``amax``; the
static int8 scale is then ``amax / 127`` (symmetric, zero point 0):

* ``minmax``   — the largest ``|x|`` seen. Never clips; wastes range on outliers.
* ``percentile`` — the ``p``-th percentile of ``|x|`` (default 99.99).
* ``entropy``  — TensorRT's KL-divergence calibration: a 2048-bin histogram
  of ``|x|``; the threshold whose 128-level quantized distribution is closest
  (in KL) to the clipped original wins.
* ``mse``      — the threshold minimizing the expected squared error of
  int8 fake quantization (rounding noise inside, clipping error outside),
  estimated on the histogram.

Calibration data is the task's ``calibration`` split (never the held-out
split used for evaluation) or a directory of the user's observation files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgevlaError
from ..spec import PolicySpec
from .fakequant import is_any_convolution, quantizable_layers

METHODS = ("minmax", "percentile", "entropy", "mse")
MAX_SAMPLES = 1 << 18  # |x| values kept per observed tensor
HIST_BINS = 2048
QUANT_LEVELS = 128  # positive int8 levels (0..127) used by the entropy search


class ActivationObserver:
    """Running statistics of one tensor: global and per-channel ``amax`` (channels on ``channel_axis``),
    a sample of ``|x|``."""

    def __init__(self, max_samples: int = MAX_SAMPLES, channel_axis: int = -1):
        self.max_samples = max_samples
        self.channel_axis = channel_axis
        self.amax = 0.0
        self.channel_amax: torch.Tensor | None = None
        self._samples: list[torch.Tensor] = []
        self._kept = 0
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise EdgevlaError("calibration saw inf or NaN activations; check the calibration data")
        a = x.abs()
        self.amax = max(self.amax, float(a.max())) if a.numel() else self.amax
        channels = a.movedim(self.channel_axis, -1) if a.ndim > 1 else a
        ch = channels.reshape(-1, channels.shape[-1]).amax(dim=0)
        self.channel_amax = ch if self.channel_amax is None else torch.maximum(self.channel_amax, ch)
        flat = a.reshape(-1)
        self.count += flat.numel()
        room = self.max_samples - self._kept
        if room <= 0:
            # Keep the sample representative of all batches: thin what we hold, then add a share.
            merged = torch.cat(self._samples)
            self._samples = [merged[::2]]
            self._kept = self._samples[0].numel()
            room = self.max_samples - self._kept
        step = max(1, -(-flat.numel() // max(room, 1)))
        take = flat[::step]
        self._samples.append(take)
        self._kept += take.numel()

    @property
    def samples(self) -> np.ndarray:
        """The kept ``|x|`` values (float64), for percentile / histogram calibrators."""
        if not self._samples:
            raise EdgevlaError("an activation observer saw no data")
        return torch.cat(self._samples).double().numpy()


# --------------------------------------------------------------------------- calibrators


def minmax_amax(obs: ActivationObserver) -> float:
    return float(obs.amax)


def percentile_amax(obs: ActivationObserver, percentile: float = 99.99) -> float:
    if not 0 < percentile <= 100:
        raise EdgevlaError(f"percentile must be in (0, 100], got {percentile}")
    return float(np.percentile(obs.samples, percentile))


def _histogram(obs: ActivationObserver, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    hist, edges = np.histogram(obs.samples, bins=bins, range=(0.0, max(obs.amax, 1e-12)))
    return hist.astype(np.float64), edges


def entropy_amax(obs: ActivationObserver, bins: int = HIST_BINS, levels: int = QUANT_LEVELS) -> float:
    """TensorRT-style KL calibration on a histogram of ``|x|``.

    For each candidate threshold bin ``i`` (from ``levels`` to ``bins``): the
    reference distribution P is the first ``i`` bins with all outlier mass
    folded into bin ``i-1``; Q merges those ``i`` bins into ``levels`` groups
    and spreads each group's mass uniformly over its non-empty bins. The
    threshold with the smallest KL(P‖Q) is the clip value.
    """
    hist, edges = _histogram(obs, bins)
    if obs.amax == 0 or hist.sum() == 0:
        return 0.0
    best_kl, best_i = np.inf, bins
    total_tail = np.cumsum(hist[::-1])[::-1]  # mass in bins >= i
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        if i < bins:
            p[i - 1] += total_tail[i]
        nonzero = hist[:i] > 0
        # Split the i bins into `levels` contiguous groups (as equal as possible).
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        support = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(support[group], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p, q = p / ps, q / qs
        m = p > 0
        if np.any(m & (q == 0)):
            kl = np.inf
        else:
            kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def mse_amax(obs: ActivationObserver, bins: int = HIST_BINS, candidates: int = 128,
             qmax: int = 127) -> float:
    """The clip value minimizing E[(x − fake_quant(x))²], over thresholds in (0, amax]."""
    hist, edges = _histogram(obs, bins)
    if obs.amax == 0 or hist.sum() == 0:
        return 0.0
    centers = (edges[:-1] + edges[1:]) / 2
    thresholds = obs.amax * np.linspace(1.0 / candidates, 1.0, candidates)
    scale = thresholds[:, None] / qmax
    recon = np.clip(np.round(centers[None, :] / scale), 0, qmax) * scale
    err = ((centers[None, :] - recon) ** 2 * hist[None, :]).sum(axis=1)
    return float(thresholds[int(np.argmin(err))])


CALIBRATORS: dict[str, Callable[[ActivationObserver], float]] = {
    "minmax": minmax_amax, "percentile": percentile_amax, "entropy": entropy_amax, "mse": mse_amax,
}


def clip_value(obs: ActivationObserver, method: str = "minmax", **options) -> float:
    """The clip value ``amax`` the calibrator ``method`` picks for one observed tensor."""
    if method not in CALIBRATORS:
        raise EdgevlaError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        return CALIBRATORS[method](obs, **options)
    except TypeError as e:
        raise EdgevlaError(f"calibrator {method!r} does not take options {sorted(options)}") from e


# --------------------------------------------------------------------------- observing a model


def observe_layer_inputs(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]],
                         layers: Iterable[str] | None = None,
                         max_samples: int = MAX_SAMPLES) -> dict[str, ActivationObserver]:
    """Run ``model`` over ``batches`` and record the input of each chosen ``nn.Linear`` or convolution
    (:func:`~edgevla.quant.fakequant.quantizable_layers`)."""
    available = quantizable_layers(model)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EdgevlaError(f"no nn.Linear or convolution named {', '.join(unknown)} in {type(model).__name__}")
    observers = {n: ActivationObserver(max_samples, 1 if is_any_convolution(available[n]) else -1) for n in names}

    def hook_for(name: str):
        def hook(_module, args):
            observers[name].observe(args[0])
        return hook

    handles = [available[n].register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise EdgevlaError("calibration needs at least one batch")
    never = [n for n, o in observers.items() if o.count == 0]
    if never:
        raise EdgevlaError(f"calibration never ran layer(s) {', '.join(never[:5])}; they are not on the forward path")
    return observers


def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], method: str = "minmax",
              layers: Iterable[str] | None = None, **options) -> dict[str, float]:
    """``{layer name: input clip value}`` for every (or every chosen) ``nn.Linear`` and convolution."""
    if method not in CALIBRATORS:
        raise EdgevlaError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    observers = observe_layer_inputs(model, batches, layers)
    return {name: clip_value(obs, method, **options) for name, obs in observers.items()}


# --------------------------------------------------------------------------- calibration data


def calibration_observations(spec: PolicySpec, source: str | os.PathLike | None = None,
                             n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibration observations: the task's ``calibration`` split, or a user directory.

    A directory holds ``.npz`` or ``.safetensors`` files, each with one array
    per input name of the spec (leading batch axis); files are concatenated
    and at most ``n`` samples kept.
    """
    if source is None:
        from ..pipeline import task_for
        from ..task import fixed_split

        task = task_for(spec)
        if task is None:
            raise EdgevlaError("this policy is not a tabletop-task policy: give a calibration directory of "
                               ".npz or .safetensors observation files")
        return fixed_split(task, "calibration", n, seed).observations
    return load_observation_dir(spec, source, n)


def load_observation_dir(spec: PolicySpec, directory: str | os.PathLike, n: int | None = None) -> dict[str, np.ndarray]:
    path = Path(directory)
    if not path.is_dir():
        raise EdgevlaError(f"calibration data {path} is not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".safetensors"))
    if not files:
        raise EdgevlaError(f"calibration directory {path} holds no .npz or .safetensors files")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in spec.input_names}
    for f in files:
        arrays = _read_arrays(f)
        try:
            spec.validate(arrays)
        except EdgevlaError as e:
            raise EdgevlaError(f"{f.name}: {e}") from e
        for k, v in spec.cast(arrays).items():
            parts[k].append(v)
    obs = {k: np.concatenate(v) for k, v in parts.items()}
    if n is not None:
        obs = {k: v[:n] for k, v in obs.items()}
    return obs


def _read_arrays(f: Path) -> dict[str, np.ndarray]:
    try:
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        from safetensors.numpy import load_file

        return load_file(str(f))
    except Exception as e:  # corrupt zip, bad header, pickled object: all "unreadable file"
        raise EdgevlaError(f"cannot read calibration file {f}: {type(e).__name__}: {e}") from e


def iter_batches(spec: PolicySpec, obs: Mapping[str, np.ndarray], batch_size: int = 32) -> Iterator[tuple[torch.Tensor, ...]]:
    """Observations as positional tensor tuples (spec order), ``batch_size`` rows at a time."""
    if batch_size <= 0:
        raise EdgevlaError(f"batch size must be positive, got {batch_size}")
    arrays = spec.cast(obs)
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        yield tuple(torch.from_numpy(np.ascontiguousarray(arrays[name][start:start + batch_size]))
                    for name in spec.input_names)
