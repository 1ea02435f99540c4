from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.quant.calibrate import (
    ActivationObserver,
    calibrate,
    clip_value,
    iter_batches,
    load_observation_dir,
)
from edgevla.spec import PolicySpec, TensorSpec


def _observer(x: torch.Tensor) -> ActivationObserver:
    obs = ActivationObserver()
    for chunk in x.split(len(x) // 4):
        obs.observe(chunk)
    return obs


@pytest.fixture(scope="module")
def laplace() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    u = torch.rand((40_000, 4), generator=g) - 0.5  # inverse CDF: seeded, unlike Distribution.sample
    x = -torch.sign(u) * torch.log1p(-2.0 * u.abs())
    x[0, 0] = 60.0  # one outlier
    return x


def test_minmax_is_exact(laplace):
    assert clip_value(_observer(laplace), "minmax") == pytest.approx(float(laplace.abs().max()))


def test_percentile_matches_numpy(laplace):
    obs = _observer(laplace)
    got = clip_value(obs, "percentile", percentile=99.9)
    assert got == pytest.approx(np.percentile(laplace.abs().numpy().astype(np.float64), 99.9), rel=1e-6)


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_histogram_calibrators_clip_outliers(laplace, method):
    obs = _observer(laplace)
    amax = clip_value(obs, method)
    # The outlier (60) must not set the range; the bulk (|x| < ~10 for Laplace(1)) must stay inside.
    assert 3.0 < amax < obs.amax
    if method == "entropy":  # KL ignores a single outlier's mass entirely
        assert amax < 30.0


def test_mse_picks_lower_error_than_minmax(laplace):
    obs = _observer(laplace)
    def err(a):
        s = a / 127
        return float(((laplace - torch.clamp(torch.round(laplace / s), -128, 127) * s) ** 2).mean())
    assert err(clip_value(obs, "mse")) < err(clip_value(obs, "minmax"))


def test_observer_memory_is_bounded():
    obs = ActivationObserver(max_samples=1000)
    for i in range(20):
        obs.observe(torch.randn(500, generator=torch.Generator().manual_seed(i)))
    assert len(obs.samples) <= 1000 and obs.count == 10_000


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_calibrate_hooks_see_linear_inputs():
    torch.manual_seed(0)
    m = Two()
    xs = [torch.randn(16, 4) for _ in range(3)]
    got = calibrate(m, [(x,) for x in xs], "minmax")
    assert got["a"] == pytest.approx(float(torch.cat(xs).abs().max()))
    with torch.no_grad():
        hidden = torch.relu(m.a(torch.cat(xs)))
    assert got["b"] == pytest.approx(float(hidden.abs().max()))
    assert not m.a._forward_pre_hooks  # hooks removed
    with pytest.raises(EdgevlaError):
        calibrate(m, [(xs[0],)], "kl")
    with pytest.raises(EdgevlaError):
        calibrate(m, [], "minmax")


def _spec() -> PolicySpec:
    return PolicySpec(observations=(TensorSpec("obs", (4,)), TensorSpec("token", (2,), "int64", 0, 5)),
                      action=TensorSpec("act", (1, 3)))


def test_observation_directory(tmp_path):
    spec = _spec()
    rng = np.random.default_rng(0)
    a = {"obs": rng.normal(size=(5, 4)).astype(np.float32), "token": rng.integers(0, 5, (5, 2))}
    np.savez(tmp_path / "a.npz", **a)
    from safetensors.numpy import save_file
    b = {"obs": rng.normal(size=(3, 4)).astype(np.float32), "token": rng.integers(0, 5, (3, 2))}
    save_file(b, str(tmp_path / "b.safetensors"))
    obs = load_observation_dir(spec, tmp_path)
    assert np.array_equal(obs["obs"], np.concatenate([a["obs"], b["obs"]]))
    batches = list(iter_batches(spec, obs, 4))
    assert [t[0].shape[0] for t in batches] == [4, 4]
    np.savez(tmp_path / "c.npz", obs=rng.normal(size=(2, 5)).astype(np.float32), token=a["token"][:2])
    with pytest.raises(EdgevlaError, match="c.npz"):
        load_observation_dir(spec, tmp_path)
    with pytest.raises(EdgevlaError):
        load_observation_dir(spec, tmp_path / "missing")
