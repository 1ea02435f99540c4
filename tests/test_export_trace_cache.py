"""export_onnx's TraceCache: a policy that differs in weights only is written into the graph traced before, and
that graph is the one a new trace gives; whatever the kept graph cannot hold exactly is traced again."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from test_export import TinyPolicy
from torch import nn

from edgevla.export import export_onnx
from edgevla.export import trace_cache
from edgevla.export.trace_cache import TraceCache, structure_key
from edgevla.spec import PolicySpec, TensorSpec

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class EncoderPolicy(nn.Module):
    """nn.TransformerEncoderLayer (traced in its explicit form: q/k/v split out of in_proj_weight) and a head."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (5, 16), low=-1, high=1),), action=TensorSpec("a", (2, 3)))
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        return self.head(self.layer(x).mean(dim=1)).reshape(-1, 2, 3)


class SlicedPolicy(nn.Module):
    """A learned table read in slices the exporter folds into initializers of their own: a position table cut
    to the sequence, and one row added to the pooled features (as VLAPolicy's modality embeddings are)."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (5, 16), low=-1, high=1),), action=TensorSpec("a", (2, 3)))
        self.table = nn.Parameter(torch.randn(1, 8, 16))
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        h = torch.relu(self.proj(x + self.table[:, :5])).mean(dim=1) + self.table[0, 7]
        return self.head(h).reshape(-1, 2, 3)


class FoldedPolicy(nn.Module):
    """A weight used only as ``w * gain``: the exporter folds the product into one initializer holding neither."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (12,), low=-1, high=1),), action=TensorSpec("a", (2, 4)))
        self.w = nn.Parameter(torch.randn(8, 12))
        self.gain = nn.Parameter(torch.rand(8) + 0.5)
        self.bias = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return (x @ (self.w * self.gain[:, None]).T + self.bias).reshape(-1, 2, 4)


class GainPolicy(TinyPolicy):
    """Reads a class attribute, which no module's own attributes show."""

    GAIN = 1.0

    def forward(self, image, instruction):
        return super().forward(image, instruction) * GainPolicy.GAIN


def _pruned(policy: nn.Module) -> nn.Module:
    """Half of each weight matrix zeroed by magnitude and every norm's scale moved: new values, same structure."""
    pruned = copy.deepcopy(policy)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Linear):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
            if isinstance(m, nn.LayerNorm):
                m.weight.mul_(torch.linspace(0.5, 1.5, m.weight.numel()))
        if isinstance(pruned, SlicedPolicy):
            pruned.table.mul_(1.5)  # recovery training moves such tables too
    return pruned


def _actions(policy: nn.Module, path) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's actions from the file at ``path`` and the policy's own, on a batch of 3."""
    spec = policy.spec
    obs = spec.example(batch=3, seed=7)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = policy.eval()(*(torch.from_numpy(obs[n]) for n in spec.input_names)).numpy()
    return session.run(None, obs)[0], want


@pytest.mark.parametrize("make", [TinyPolicy, EncoderPolicy, SlicedPolicy], ids=["tiny", "encoder-layer", "sliced"])
def test_a_pruned_copy_is_written_into_the_kept_graph_as_a_new_trace_writes_it(make, tmp_path):
    torch.manual_seed(0)
    policy = make()
    pruned = _pruned(policy)
    with TraceCache() as cache:
        export_onnx(policy, tmp_path / "original.onnx", cache=cache)
        export_onnx(pruned, tmp_path / "pruned.onnx", cache=cache)
        assert (cache.traced, cache.reused) == (1, 1)
        (kept,) = cache.graphs
    if make is SlicedPolicy:  # the table read in slices (1, 0:5) and a select (0: 0, 1: 7)
        assert not kept.pinned and [(r.axis, r.start, r.length) for r in kept.slices["table"]] == [(1, 0, 5), (1, 7, 1)]
    export_onnx(pruned, tmp_path / "traced.onnx")  # no cache: a trace of its own
    written, traced = onnx.load(str(tmp_path / "pruned.onnx")), onnx.load(str(tmp_path / "traced.onnx"))
    assert written.graph.node == traced.graph.node
    assert written.graph.input == traced.graph.input and written.graph.output == traced.graph.output
    values = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    expected = {i.name: numpy_helper.to_array(i) for i in traced.graph.initializer}
    assert values.keys() == expected.keys()
    changed = [n for n in values if not np.array_equal(values[n], numpy_helper.to_array(
        next(i for i in onnx.load(str(tmp_path / "original.onnx")).graph.initializer if i.name == n)))]
    assert len(changed) >= 3  # the pruned weights, the norms' scales, the table's slices did go in
    for name, value in values.items():
        assert value.dtype == expected[name].dtype and np.array_equal(value, expected[name]), name
    got, want = _actions(pruned, tmp_path / "pruned.onnx")
    np.testing.assert_allclose(got, want, atol=1e-5)


def _eps(policy):
    policy.norm2.eps = 1e-2  # a plain attribute of a module: another structure


def _hook(policy):
    policy.head.register_forward_hook(lambda module, inputs, output: output * 2.0)


def _gain(policy):
    with torch.no_grad():
        policy.gain.mul_(2.0)  # folded away with w: no initializer holds it


@pytest.mark.parametrize("make, change", [(TinyPolicy, _eps), (TinyPolicy, _hook), (FoldedPolicy, _gain)],
                         ids=["attribute", "forward-hook", "folded-parameter"])
def test_what_the_kept_graph_cannot_hold_is_traced_again(make, change, tmp_path):
    torch.manual_seed(1)
    policy = make()
    changed = copy.deepcopy(policy)
    change(changed)
    with TraceCache() as cache:
        export_onnx(policy, tmp_path / "original.onnx", cache=cache)
        export_onnx(changed, tmp_path / "changed.onnx", cache=cache)
        assert cache.reused == 0
    got, want = _actions(changed, tmp_path / "changed.onnx")
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, _actions(policy, tmp_path / "original.onnx")[0], atol=1e-3)  # the change shows


def test_a_parameter_folded_into_a_constant_must_keep_its_value(tmp_path, monkeypatch):
    """Neither w nor gain is in the graph as it is: the kept graph holds their values, so a new gain refuses it
    before any check on ONNX Runtime (switched off here to show it)."""
    torch.manual_seed(5)
    policy = FoldedPolicy()
    with TraceCache() as cache:
        export_onnx(policy, tmp_path / "original.onnx", cache=cache)
        (kept,) = cache.graphs
        assert set(kept.pinned) == {"w", "gain"} and set(kept.refs) == {"bias"}
        monkeypatch.setattr(trace_cache, "_reproduces", lambda *args: True)
        new_bias = copy.deepcopy(policy)
        with torch.no_grad():
            new_bias.bias.add_(1.0)
        export_onnx(new_bias, tmp_path / "bias.onnx", cache=cache)
        assert cache.reused == 1
        new_gain = copy.deepcopy(new_bias)
        _gain(new_gain)
        export_onnx(new_gain, tmp_path / "gain.onnx", cache=cache)
        assert (cache.traced, cache.reused) == (2, 1)
    for changed, path in ((new_bias, "bias.onnx"), (new_gain, "gain.onnx")):
        got, want = _actions(changed, tmp_path / path)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_keys_tell_structures_apart_and_describe_only_what_they_can():
    torch.manual_seed(2)
    spec, settings = TinyPolicy().spec, (18, True)
    policy = TinyPolicy()
    key = structure_key(policy, spec, settings)
    assert key is not None and key == structure_key(_pruned(policy), spec, settings)  # weights only
    assert key != structure_key(policy, spec, (17, True))  # another opset
    assert key != structure_key(TinyPolicy(width=24), spec, settings)
    odd = copy.deepcopy(policy)
    odd.helper = object()  # an attribute of a kind the key does not describe
    assert structure_key(odd, spec, settings) is None


def test_a_graph_that_no_longer_reproduces_the_policy_is_traced_again(tmp_path, monkeypatch):
    """A forward reading a class attribute: same structure key, but the kept graph holds the old value folded
    in. Run on ONNX Runtime, it gives other actions than the policy, so the policy is traced again."""
    torch.manual_seed(3)
    policy = GainPolicy()
    with TraceCache() as cache:
        export_onnx(policy, tmp_path / "original.onnx", cache=cache)
        monkeypatch.setattr(GainPolicy, "GAIN", 3.0)
        export_onnx(policy, tmp_path / "gain.onnx", cache=cache)
        assert (cache.traced, cache.reused) == (2, 0)
    got, want = _actions(policy, tmp_path / "gain.onnx")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_close_removes_the_kept_files(tmp_path):
    torch.manual_seed(4)
    cache = TraceCache()
    export_onnx(TinyPolicy(), tmp_path / "a.onnx", cache=cache)
    (kept,) = (graph.path for graph in cache.graphs)
    assert kept.is_file()
    cache.close()
    assert not kept.exists() and not kept.parent.exists()
