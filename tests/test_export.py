from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgevla.errors import EdgevlaError, GateFailed
from edgevla.export import InitializerRef, compare, export_onnx, initializer_map, match_initializers, verify_onnx
from edgevla.spec import PolicySpec, TensorSpec


class TinyPolicy(nn.Module):
    """Two observations, token embedding, one attention block, two LayerNorms, an action head."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.spec = PolicySpec(
            observations=(TensorSpec("image", (3, 12), "float32", -1.0, 1.0),
                          TensorSpec("instruction", (5,), "int64", 0, 9)),
            action=TensorSpec("action", (4, 2)),
            action_mean=(0.5, -1.0), action_std=(2.0, 0.25), control_rate_hz=10.0)
        self.patch = nn.Linear(12, width)
        self.embed = nn.Embedding(10, width)
        self.norm1 = nn.LayerNorm(width)  # both norms start as ones/zeros: identical values
        self.norm2 = nn.LayerNorm(width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.head = nn.Linear(width, 2)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, image: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        x = self.norm1(torch.cat([self.patch(image), self.embed(instruction)], dim=1))
        attn = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * self.scale, dim=-1)
        x = self.norm2(x + attn @ self.v(x))
        return self.head(x[:, :4])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    policy = TinyPolicy()
    policy.train()  # export must switch to eval and then give the mode back
    path = export_onnx(policy, tmp_path_factory.mktemp("onnx") / "policy.onnx")
    return policy, path, policy.training


def _torch_actions(policy, obs):
    policy.eval()
    with torch.no_grad():
        return policy(*(torch.from_numpy(obs[n]) for n in policy.spec.input_names)).numpy()


def test_export_writes_a_checked_graph_with_spec_names(exported):
    policy, path, _ = exported
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    graph = model.graph
    assert [i.name for i in graph.input] == ["image", "instruction"]
    assert [o.name for o in graph.output] == ["action"]
    for value, shape in zip([*graph.input, *graph.output], [(3, 12), (5,), (4, 2)], strict=True):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert tuple(d.dim_value for d in dims[1:]) == shape
    ops = {n.op_type for n in graph.node}
    assert {"LayerNormalization", "Softmax", "Gather"} <= ops
    assert ops & {"MatMul", "Gemm"}
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert model.opset_import[0].version == 18
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.onnx"]  # no temp file left behind


def test_export_restores_training_mode(exported):
    assert exported[2] is True


@pytest.mark.parametrize("batch", [1, 7])
def test_onnxruntime_matches_torch_at_any_batch(exported, batch):
    policy, path, _ = exported
    obs = policy.spec.example(batch=batch, seed=batch)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["action"], obs)
    want = _torch_actions(policy, obs)
    assert got.shape == (batch, 4, 2)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(want).max() > 0.05  # a real signal, not a degenerate all-zero output


def test_every_parameter_maps_to_an_initializer_holding_its_value(exported):
    policy, path, _ = exported
    model = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    refs = match_initializers(model, policy)
    params = dict(policy.named_parameters())
    assert set(refs) == set(params)
    for name, ref in refs.items():
        value = params[name].detach().numpy()
        np.testing.assert_array_equal(arrays[ref.name], value.T if ref.transposed else value)
    # Folded Linear weights carry the parameter's name; equal-valued norms are not merged.
    assert refs["head.weight"].name == "head.weight.T" and refs["head.weight"].transposed
    assert refs["norm1.weight"].name != refs["norm2.weight"].name
    assert initializer_map(path, policy) == {name: ref.name for name, ref in refs.items()}


def test_match_initializers_by_name_value_and_transpose_skipping_ambiguity():
    import ml_dtypes

    torch.manual_seed(4)
    model = nn.Module()
    model.a = nn.Linear(3, 4)
    model.b = nn.Linear(4, 2, bias=False)
    model.z1, model.z2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.z1.weight)
    nn.init.zeros_(model.z2.weight)
    model.c = nn.Parameter(torch.randn(3).to(torch.bfloat16))
    bf16 = model.c.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    inits = {"a.weight": model.a.weight, "val_1": model.a.bias, "val_2": model.b.weight.T,
             "val_3": torch.zeros(2, 2), "val_4": torch.zeros(2, 2)}
    graph = onnx.helper.make_graph(
        [], "g", [], [],
        initializer=[numpy_helper.from_array(t.detach().numpy().copy(), n) for n, t in inits.items()]
        + [numpy_helper.from_array(bf16, "val_5")])
    refs = match_initializers(onnx.helper.make_model(graph), model)
    assert refs == {"a.weight": InitializerRef("a.weight", False), "a.bias": InitializerRef("val_1", False),
                    "b.weight": InitializerRef("val_2", True), "c": InitializerRef("val_5", False)}


class Twins(nn.Module):
    """Two layers with equal weights (nn.TransformerEncoder's clones before training), biases apart."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (5, 8)),), action=TensorSpec("a", (5, 8)))
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)
        self.second.weight.data.copy_(self.first.weight.data)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_equal_weights_are_told_apart_by_the_bias_added_to_their_product(tmp_path):
    torch.manual_seed(5)
    policy = Twins().eval()
    path = export_onnx(policy, tmp_path / "twins.onnx")
    refs = match_initializers(path, policy)
    model = onnx.load(str(path))
    for layer in ("first", "second"):
        weight = refs[f"{layer}.weight"].name
        product = next(n for n in model.graph.node if weight in n.input)
        if product.op_type == "Gemm":
            assert product.input[2] == refs[f"{layer}.bias"].name
        else:
            add = next(n for n in model.graph.node if product.output[0] in n.input)
            assert refs[f"{layer}.bias"].name in add.input
    assert refs["first.weight"].name != refs["second.weight"].name


def test_verify_passes_on_the_faithful_export(exported):
    policy, path, _ = exported
    obs = policy.spec.example(batch=37, seed=11)
    result = verify_onnx(policy, path, obs, atol=1e-5, min_cosine=0.99999, batch_size=16)
    assert result.passed and result.samples == 37
    assert result.max_abs_error < 1e-5 and result.mean_abs_error <= result.max_abs_error
    assert result.cosine > 0.99999
    result.raise_if_failed()


def test_verify_detects_a_perturbed_initializer(exported, tmp_path):
    policy, path, _ = exported
    model = onnx.load(str(path))
    (init,) = [i for i in model.graph.initializer if i.name == "head.weight.T"]
    # Random, not constant: a constant shift is invisible after LayerNorm (zero-mean rows).
    noise = np.random.default_rng(0).normal(0.0, 0.05, size=tuple(init.dims)).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + noise, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = verify_onnx(policy, broken, policy.spec.example(batch=20, seed=3), atol=1e-4, min_cosine=0.9999)
    assert not result.passed
    assert result.max_abs_error > 1e-3
    with pytest.raises(GateFailed, match="FAILED"):
        result.raise_if_failed()


def test_compare_against_hand_computed_values():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    cand = np.array([[1.0, 1.0], [0.0, 2.0]], np.float32)
    r = compare(ref, cand, atol=0.5, min_cosine=0.5)
    assert r.max_abs_error == 1.0 and r.mean_abs_error == 0.25
    assert r.cosine == pytest.approx(5.0 / (math.sqrt(5.0) * math.sqrt(6.0)))
    assert not r.passed  # max error 1.0 > atol 0.5
    assert compare(ref, cand, atol=1.0, min_cosine=0.9).passed
    assert not compare(ref, cand, atol=1.0, min_cosine=0.95).passed  # cosine 0.913 < 0.95
    nan = cand.copy()
    nan[0, 0] = np.nan
    r = compare(ref, nan, atol=10.0, min_cosine=-1.0)
    assert r.max_abs_error == math.inf and not r.passed


def test_tie_flips_gate_the_typical_sample_and_a_systematic_error_still_fails():
    """A quantized file's rounding-tie flips touch a few samples: the median sample's largest error is gated.
    An error in every sample (a wrong export), however small its share of samples' worst, still fails."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, (9, 4, 3)).astype(np.float32)
    flipped = ref.copy()
    flipped[[2, 5], 1, 0] += 0.3  # two samples off by 0.3: a neighbouring code early in the network
    r = compare(ref, flipped, atol=0.05, min_cosine=0.99, tie_flips=True)
    assert r.passed and r.max_abs_error == pytest.approx(0.3) and r.typical_max_abs_error == 0.0
    assert not compare(ref, flipped, atol=0.05, min_cosine=0.99).passed  # without tie flips the max is gated
    assert "typical sample's max |err| 0 (atol 0.05), max |err| 0.3" in r.summary()
    skewed = ref.copy()
    skewed[:, 3, 2] += 0.06  # every sample: one output element off
    r = compare(ref, skewed, atol=0.05, min_cosine=0.99, tie_flips=True)
    assert not r.passed and r.typical_max_abs_error == pytest.approx(0.06)
    r = compare(ref, -ref, atol=10.0, min_cosine=0.99, tie_flips=True)  # under atol everywhere, cosine -1
    assert not r.passed


def test_verify_rejects_bad_thresholds_and_observations(exported):
    policy, path, _ = exported
    obs = policy.spec.example(batch=2)
    with pytest.raises(EdgevlaError, match="atol"):
        verify_onnx(policy, path, obs, atol=-1.0, min_cosine=0.9)
    with pytest.raises(EdgevlaError, match="min_cosine"):
        verify_onnx(policy, path, obs, atol=1e-5, min_cosine=1.5)
    with pytest.raises(EdgevlaError, match="image"):
        verify_onnx(policy, path, {**obs, "image": obs["image"][:, :2]}, atol=1e-5, min_cosine=0.9)


class BranchyPolicy(TinyPolicy):
    """Control flow on data: torch.export cannot capture it."""

    def forward(self, image, instruction):
        out = super().forward(image, instruction)
        if out.sum() > 0:
            return out
        return -out


class FixedBatchPolicy(TinyPolicy):
    """Broadcasts against a constant of batch 2: only batch 2 works."""

    def forward(self, image, instruction):
        return super().forward(image, instruction) + torch.ones(2, 4, 2)


class WrongShapePolicy(TinyPolicy):
    def forward(self, image, instruction):
        return super().forward(image, instruction)[:, :3]


def test_export_failures_are_one_line_errors_and_leave_no_file(tmp_path):
    target = tmp_path / "p.onnx"
    with pytest.raises(EdgevlaError, match="ONNX export of BranchyPolicy failed: .*data-dependent") as err:
        export_onnx(BranchyPolicy(), target)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    with pytest.raises(EdgevlaError, match="forward fixes the batch size.*dynamic_batch=False"):
        export_onnx(FixedBatchPolicy(), target)
    with pytest.raises(EdgevlaError, match=r"returned shape \(2, 3, 2\)"):
        export_onnx(WrongShapePolicy(), target)
    with pytest.raises(EdgevlaError, match="opset"):
        export_onnx(TinyPolicy(), target, opset=13)
    with pytest.raises(EdgevlaError, match="PolicySpec"):
        export_onnx(nn.Linear(2, 2), target)
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary file


def test_static_batch_export(tmp_path):
    torch.manual_seed(3)
    policy = TinyPolicy()
    path = export_onnx(policy, tmp_path / "static.onnx", dynamic_batch=False)
    graph = onnx.load(str(path)).graph
    assert [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]] == [
        [1, 3, 12], [1, 5], [1, 4, 2]]
    obs = policy.spec.example(batch=1, seed=5)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, obs)
    assert np.abs(got - _torch_actions(policy, obs)).max() < 1e-5


class HalvesPolicy(nn.Module):
    """adaLN / FiLM: one Linear's output halved along the last axis (``chunk(2, -1)``), conditioned on a
    mean over tokens (a ``ReduceMean`` whose axes are constant only once folded)."""

    def __init__(self, width: int = 10):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (3, width)),), action=TensorSpec("a", (3, width)))
        self.film = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        scale, shift = self.film(x.mean(1)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


@pytest.mark.parametrize("opset", [17, 18])
def test_a_halved_output_exports_as_a_split_the_opset_knows(tmp_path, opset):
    torch.manual_seed(4)
    policy = HalvesPolicy().eval()
    path = export_onnx(policy, tmp_path / "halves.onnx", opset=opset)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    splits = [n for n in model.graph.node if n.op_type == "Split"]
    assert splits, "the rewriter's Slice pair -> Split is what this test covers"
    for split in splits:
        assert ({a.name for a in split.attribute} >= {"num_outputs"}) == (opset >= 18)
    obs = policy.spec.example(batch=5, seed=2)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, obs)
    assert np.abs(got - _torch_actions(policy, obs)).max() < 1e-5


class LoopPolicy(nn.Module):
    """An integrator (flow matching, diffusion sampling): the same layers applied at every step."""

    def __init__(self, steps: int = 4):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 5)),), action=TensorSpec("a", (6, 5)))
        self.inp, self.out = nn.Linear(5, 16), nn.Linear(16, 5)
        self.steps = steps

    def forward(self, x):
        for _ in range(self.steps):
            x = x + self.out(torch.tanh(self.inp(x))) / self.steps
        return x


def test_a_layer_applied_in_a_loop_is_stored_once_and_matched(tmp_path):
    torch.manual_seed(6)
    policy = LoopPolicy().eval()
    path = export_onnx(policy, tmp_path / "loop.onnx")
    model = onnx.load(str(path))
    refs = match_initializers(model, policy)
    assert set(refs) == {n for n, _ in policy.named_parameters()}
    matrices = [i.name for i in model.graph.initializer if len(i.dims) == 2]
    assert sorted(matrices) == sorted(refs[f"{layer}.weight"].name for layer in ("inp", "out"))
    for layer in ("inp", "out"):
        readers = [n for n in model.graph.node if refs[f"{layer}.weight"].name in n.input]
        assert len(readers) == policy.steps
    obs = policy.spec.example(batch=3, seed=1)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, obs)
    assert np.abs(got - _torch_actions(policy, obs)).max() < 1e-5


class MishPolicy(nn.Module):
    """Diffusion Policy's activation: ``Mish`` entered ONNX in opset 18, with no earlier form."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (2, 6)),), action=TensorSpec("a", (2, 6)))
        self.net = nn.Sequential(nn.Linear(6, 12), nn.Mish(), nn.Linear(12, 6))

    def forward(self, x):
        return self.net(x)


def test_an_op_born_in_opset_18_exports_by_default_and_is_named_when_17_is_asked(tmp_path):
    torch.manual_seed(8)
    policy = MishPolicy().eval()
    path = export_onnx(policy, tmp_path / "mish.onnx")
    assert "Mish" in {n.op_type for n in onnx.load(str(path)).graph.node}
    obs = policy.spec.example(batch=4, seed=3)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, obs)
    assert np.abs(got - _torch_actions(policy, obs)).max() < 1e-5
    with pytest.raises(EdgevlaError, match=r"cannot be written in opset 17 \(.*Mish.*\); set export.opset to 18") as err:
        export_onnx(policy, tmp_path / "mish17.onnx", opset=17)
    assert "\n" not in str(err.value) and not (tmp_path / "mish17.onnx").exists()
