"""Structured pruning: dependency groups, exact removal of zero channels, predicted parameter counts,
and a user's model (fused qkv, post-norm) that prunes with every structure and still exports."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.prune import DependencyGraph, kept_units, prune_structured, residual_blocks
from edgevla.spec import PolicySpec, TensorSpec

from user_policies import FrozenBatchNorm2d


class FusedAttention(nn.Module):
    """One fused qkv projection, heads split by a 5-D view and unbound — not the zoo's layout."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class PostNormBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, hidden: int):
        super().__init__()
        self.attn = FusedAttention(width, num_heads)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class PointPolicy(nn.Module):
    """A user's policy: point tokens in, a class token read out, a 4-step chunk of 2-D actions."""

    def __init__(self, width: int = 32, heads: int = 4, hidden: int = 48, depth: int = 3):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("points", (6, 3)),),
                               action=TensorSpec("actions", (4, 2), "float32", -1.0, 1.0))
        self.embed = nn.Linear(3, width)
        self.pos = nn.Parameter(torch.randn(1, 6, width) * 0.1)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.blocks = nn.ModuleList(PostNormBlock(width, heads, hidden) for _ in range(depth))
        self.head = nn.Linear(width, 8)

    def forward(self, points):
        x = self.embed(points) + self.pos
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x[:, 0]).view(-1, 4, 2)


def _inputs(policy, batch=3, seed=5):
    return tuple(torch.from_numpy(a) for a in policy.spec.example(batch=batch, seed=seed).values())


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _removing_changes_nothing(model, graph, couplings) -> None:
    """Apply ``couplings`` and check the model's output on example inputs stayed what it was."""
    x = _inputs(model)
    with torch.no_grad():
        before = model(*x)
    graph.apply(couplings)
    with torch.no_grad():
        after = model(*x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    from edgevla.models.zoo import load_policy
    return load_policy("tiny-vla").policy.eval()


def _zero(model, couplings):
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for c in couplings:
            tensors[c.tensor].index_fill_(c.dim, torch.tensor(c.indices), 0.0)


def test_groups_couple_the_right_tensors(tiny):
    graph = DependencyGraph(tiny)
    heads = {g.name: g for g in graph.head_groups()}
    g = heads["trunk.1.attn"]
    assert (g.units, g.unit_width) == (4, 24)
    got = {(c.tensor, c.dim, c.indices) for c in g.couplings([2])}
    rows = tuple(range(48, 72))
    assert got == {(f"trunk.1.attn.{p}.{t}", 0, rows) for p in "qkv" for t in ("weight", "bias")} | {
        ("trunk.1.attn.out.weight", 1, rows)}
    mlp = {g.name: g for g in graph.hidden_groups()}["trunk.0.mlp.fc1"]
    assert {(c.tensor, c.dim) for c in mlp.couplings([7])} == {
        ("trunk.0.mlp.fc1.weight", 0), ("trunk.0.mlp.fc1.bias", 0), ("trunk.0.mlp.fc2.weight", 1)}
    (width,) = graph.width_groups()
    touched = {(c.tensor, c.dim) for c in width.couplings([0])}
    norms = {n for n, m in tiny.named_modules() if isinstance(m, nn.LayerNorm)}
    assert {(f"{n}.weight", 0) for n in norms} <= touched
    assert {("vision.pos", 2), ("modality", 2), ("text.tok.weight", 1), ("trunk.2.mlp.fc2.bias", 0)} <= touched
    # A FiLM layer's output is chunked into scale and shift: both halves lose the channel.
    film = [c.indices for c in width.couplings([5]) if c.tensor == "vision.film.0.weight" and c.dim == 0]
    assert film == [(5, 101)]
    with pytest.raises(EdgevlaError, match="cannot prune"):  # it reaches the action output
        graph.channel_group("action_head").couplings([0])


def test_removing_zeroed_neurons_and_heads_leaves_outputs_unchanged(tiny):
    model = copy.deepcopy(tiny)
    graph = DependencyGraph(model)
    mlp = {g.name: g for g in graph.hidden_groups()}["trunk.2.mlp.fc1"]
    head = {g.name: g for g in graph.head_groups()}["trunk.0.attn"]
    couplings = mlp.couplings([3, 50, 200, 383]) + head.couplings([1])
    _zero(model, couplings)
    x = _inputs(model)
    with torch.no_grad():
        before = model(*x)
    predicted = graph.removed_parameters(couplings)
    params = _params(model)
    graph.apply(couplings)
    with torch.no_grad():
        after = model(*x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert params - _params(model) == predicted
    assert model.trunk[0].attn.n_heads == 3 and model.trunk[2].mlp.fc1.out_features == 380


def test_user_model_zeroed_heads_prune_exactly():
    torch.manual_seed(0)
    model = PointPolicy().eval()
    graph = DependencyGraph(model)
    (head,) = [g for g in graph.head_groups() if g.name == "blocks.1.attn"]
    couplings = head.couplings([0, 2])
    # A fused qkv loses the head's rows in each of its q, k and v thirds.
    qkv_rows = [c.indices for c in couplings if c.tensor == "blocks.1.attn.qkv.weight"][0]
    assert qkv_rows == tuple(r for part in range(3) for h in (0, 2) for r in range(part * 32 + h * 8,
                                                                                        part * 32 + h * 8 + 8))
    _zero(model, couplings)
    x = _inputs(model)
    with torch.no_grad():
        before = model(*x)
    graph.apply(couplings)
    with torch.no_grad():
        torch.testing.assert_close(model(*x), before, rtol=0, atol=1e-6)
    assert model.blocks[1].attn.num_heads == 2 and model.blocks[1].attn.qkv.out_features == 48


@pytest.mark.parametrize("structure,amount", [("neurons", 0.5), ("heads", 0.5), ("width", 0.4), ("blocks", 0.34)])
def test_user_model_prunes_with_each_structure(structure, amount):
    torch.manual_seed(1)
    model = PointPolicy().eval()
    result = prune_structured(model, structure, amount, round_to=8)
    assert result.groups and result.removed > 0
    assert result.removed == result.predicted_removed == result.params_before - _params(model)
    out = model(*_inputs(model))
    assert out.shape == (3, 4, 2) and torch.isfinite(out).all()
    if structure == "neurons":
        assert all(b.ffn[0].out_features == 24 for b in model.blocks)
    if structure == "heads":
        assert all(b.attn.num_heads == 2 and b.attn.qkv.out_features == 48 for b in model.blocks)
    if structure == "width":
        assert model.embed.out_features == 24 and model.pos.shape == (1, 6, 24)  # 32 - 40% = 19.2 -> 24
    if structure == "blocks":
        assert sum(isinstance(b, nn.Identity) for b in model.blocks) == 1


def test_user_model_pruned_every_way_exports_to_onnx(tmp_path):
    torch.manual_seed(2)
    model = PointPolicy().eval()
    assert residual_blocks(model) == ["blocks.0", "blocks.1", "blocks.2"]
    for structure, amount in (("width", 0.25), ("heads", 0.5), ("neurons", 0.5), ("blocks", 0.34)):
        prune_structured(model, structure, amount, round_to=8)
    path = export_onnx(model, tmp_path / "user.onnx")
    x = model.spec.example(batch=2, seed=3)
    got = ort.InferenceSession(str(path)).run(None, x)[0]
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in x.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_tiny_vla_half_the_trunk_mlp_neurons_still_runs_and_exports(tiny, tmp_path):
    model = copy.deepcopy(tiny)
    result = prune_structured(model, "neurons", 0.5, round_to=16, scope="trunk")
    assert [g.name for g in result.groups] == ["trunk.0.mlp.fc1", "trunk.1.mlp.fc1", "trunk.2.mlp.fc1"]
    assert all(blk.mlp.fc1.out_features == 192 and blk.mlp.fc2.in_features == 192 for blk in model.trunk)
    assert model.text.blocks[0].mlp.fc1.out_features == 384  # outside the scope
    assert result.params_after == _params(model) < _params(tiny)
    assert result.removed == result.predicted_removed == 3 * 192 * (96 + 1 + 96)
    assert model.spec == tiny.spec
    path = export_onnx(model, tmp_path / "tiny-pruned.onnx")
    x = model.spec.example(batch=2, seed=4)
    got = ort.InferenceSession(str(path)).run(None, x)[0]
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in x.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_kept_units_round_to_the_multiple():
    assert kept_units(384, 0.5, 1, 16) == 192
    assert kept_units(100, 0.55, 1, 8) == 48       # 45 kept -> 48
    assert kept_units(4, 0.5, 24, 16) == 2         # 2 heads x 24 = 48, a multiple of 16
    assert kept_units(4, 0.75, 12, 16) == 4        # 1 x 12, 2 x 12, 3 x 12 are not multiples of 16
    assert kept_units(10, 0.99, 1, 1) == 1         # never empty
    with pytest.raises(EdgevlaError, match="round_to"):
        kept_units(8, 0.5, 1, 0)


def test_bad_requests_are_one_line_errors():
    model = PointPolicy()
    with pytest.raises(EdgevlaError, match="structure must be one of"):
        prune_structured(model, "filters", 0.5)
    with pytest.raises(EdgevlaError, match=r"\[0, 1\)"):
        prune_structured(model, "neurons", 1.0)
    with pytest.raises(EdgevlaError, match="no nn.Linear or convolution named"):
        DependencyGraph(model).channel_group("missing")


class OpaqueResidual(nn.Module):
    """A residual stream through an op the analysis does not model: its width must not be pruned."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("points", (6, 3)),), action=TensorSpec("actions", (4, 2)))
        self.embed = nn.Linear(3, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, points):
        x = torch.flip(self.embed(points), dims=[-1])
        x = x + self.down(torch.relu(self.up(x)))
        return self.head(x.mean(dim=1)).view(-1, 4, 2)


def test_what_the_analysis_cannot_prove_is_never_pruned():
    model = OpaqueResidual()
    graph = DependencyGraph(model)
    assert graph.width_groups() == []
    assert [g.name for g in graph.hidden_groups()] == ["up"]
    with pytest.raises(EdgevlaError, match="no prunable width groups"):
        prune_structured(model, "width", 0.5)
    with pytest.raises(EdgevlaError, match="flip is not understood"):
        graph.channel_group("embed").couplings([0])


class DataDependent(PointPolicy):
    def forward(self, points):
        if points.sum() > 0:  # control flow on values: torch.fx cannot trace it
            points = points * 2
        return super().forward(points)


def test_an_untraceable_model_is_a_clear_error():
    with pytest.raises(EdgevlaError, match="cannot trace DataDependent"):
        DependencyGraph(DataDependent())


def test_masked_models_must_be_baked_before_structured_pruning():
    from edgevla.prune import apply_masks, nm_masks, remove_masks
    model = PointPolicy()
    apply_masks(model, nm_masks(model, 2, 4))
    with pytest.raises(EdgevlaError, match="remove_masks"):
        DependencyGraph(model)
    remove_masks(model)
    assert DependencyGraph(model).hidden_groups()



class BufferedPolicy(PointPolicy):
    """Reads a buffer of its own in forward and expands it to the batch, as a diffusion policy's sampler does
    its fixed starting noise: torch.fx hands a buffer over as a plain tensor unless told to trace it."""

    def __init__(self):
        super().__init__(depth=1)
        self.register_buffer("offset", torch.randn(1, 1, 32))

    def forward(self, points):
        x = self.embed(points) + self.pos + self.offset.expand(points.shape[0], -1, -1)
        x = self.blocks[0](x)
        return self.head(x[:, 0]).view(-1, 4, 2)


def test_a_buffer_expanded_to_the_batch_is_traced_and_pruned_with_its_channels():
    model = BufferedPolicy().eval()
    graph = DependencyGraph(model)
    (width,) = graph.width_groups()
    couplings = width.couplings([4, 9])
    assert ("offset", 2, (4, 9)) in {(c.tensor, c.dim, c.indices) for c in couplings}
    kept = [i for i in range(32) if i not in (4, 9)]
    offset = model.offset[..., kept].clone()
    graph.apply(couplings)
    assert model.embed.out_features == 30 and torch.equal(model.offset, offset)
    with torch.no_grad():
        assert model(*_inputs(model)).shape == (3, 4, 2)



class SizedByItsInput(PointPolicy):
    """Makes a tensor sized by its input's batch, as a diffusion sampler makes its starting actions."""

    def __init__(self):
        super().__init__(depth=1)

    def forward(self, points):
        start = torch.zeros(points.shape[0], 4, 2) + torch.full((points.shape[0], 1, 1), 0.5)
        return super().forward(points) + start


def test_a_tensor_factory_sized_by_the_input_is_traced():
    factories = (torch.zeros, torch.full)
    graph = DependencyGraph(SizedByItsInput().eval())
    assert [g.name for g in graph.hidden_groups()] == ["blocks.0.ffn.0"]
    assert (torch.zeros, torch.full) == factories  # swapped for the trace only

class SwiGLUPolicy(nn.Module):
    """A Llama-style policy: a patch-embedding convolution, RMSNorm, and a SwiGLU MLP (``silu(gate(x)) * up(x)``
    into ``down``), as Llama- and Gemma-style VLA trunks have."""

    def __init__(self, width: int = 32, hidden: int = 48):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("image", (3, 16, 16)),),
                               action=TensorSpec("actions", (4, 2), "float32", -1.0, 1.0))
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.norm = nn.RMSNorm(width)
        self.gate, self.up = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.head = nn.Linear(width, 8)

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)
        h = self.norm(x)
        x = x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(x.mean(dim=1)).view(-1, 4, 2)


def test_a_swiglu_mlps_neurons_are_one_group_of_both_producers_and_prune_exactly():
    torch.manual_seed(6)
    model = SwiGLUPolicy().eval()
    graph = DependencyGraph(model)
    (mlp,) = graph.hidden_groups()
    couplings = mlp.couplings([2, 30])
    assert {(c.tensor, c.dim) for c in couplings} == {("gate.weight", 0), ("up.weight", 0), ("down.weight", 1)}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    assert (model.gate.out_features, model.up.out_features, model.down.in_features) == (46, 46, 46)


class FusedGatedPolicy(nn.Module):
    """Gated MLPs with the gate and value from one Linear, chunked: SwiGLU (``silu(a) * b``) and GEGLU
    (``a * gelu(b)``); optionally the fused output is also read whole, which must keep it whole."""

    def __init__(self, width: int = 32, hidden: int = 48, read_whole: bool = False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (6, 8)),),
                               action=TensorSpec("actions", (6, 4), "float32", -1.0, 1.0))
        self.inp, self.norm = nn.Linear(8, width), nn.LayerNorm(width)
        self.w12, self.w3 = nn.Linear(width, 2 * hidden), nn.Linear(hidden, width)
        self.proj, self.out = nn.Linear(width, 2 * hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, 4)
        self.read_whole = read_whole

    def forward(self, state):
        x = self.norm(self.inp(state))
        h = self.w12(x)
        a, b = h.chunk(2, dim=-1)
        x = x + self.w3(torch.nn.functional.silu(a) * b) + (h.square().mean(-1, keepdim=True) if self.read_whole
                                                            else 0.0)
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.head(x + self.out(value * torch.nn.functional.gelu(gate)))


def test_a_fused_gated_mlps_neurons_are_row_pairs_of_the_fused_layer_and_prune_exactly():
    torch.manual_seed(8)
    model = FusedGatedPolicy().eval()
    graph = DependencyGraph(model)
    groups = {g.name: g for g in graph.hidden_groups()}
    assert set(groups) == {"w12", "proj"} and groups["w12"].units == 48 and groups["w12"].unit_width == 1
    couplings = groups["w12"].couplings([2, 30]) + groups["proj"].couplings([0, 47])
    assert {(c.tensor, c.dim, c.indices) for c in couplings} == {
        ("w12.weight", 0, (2, 30, 50, 78)), ("w12.bias", 0, (2, 30, 50, 78)), ("w3.weight", 1, (2, 30)),
        ("proj.weight", 0, (0, 47, 48, 95)), ("proj.bias", 0, (0, 47, 48, 95)), ("out.weight", 1, (0, 47))}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    assert (model.w12.out_features, model.w3.in_features, model.proj.out_features) == (92, 46, 92)
    assert [g.name for g in DependencyGraph(FusedGatedPolicy(read_whole=True)).hidden_groups()] == ["proj"]


def test_a_patch_convolution_and_rms_norm_ride_along_the_width():
    torch.manual_seed(7)
    model = SwiGLUPolicy().eval()
    graph = DependencyGraph(model)
    (width,) = graph.width_groups()
    got = {(c.tensor, c.dim) for c in width.couplings([5])}
    assert {("patch.weight", 0), ("patch.bias", 0), ("norm.weight", 0), ("gate.weight", 1), ("up.weight", 1),
            ("down.weight", 0), ("head.weight", 1)} == got
    graph.apply(width.couplings([5]))
    assert model.patch.out_channels == 31 and model.norm.normalized_shape == (31,)
    with torch.no_grad():
        assert model(*_inputs(model)).shape == (3, 4, 2)
    grouped = SwiGLUPolicy()
    grouped.patch = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Conv2d(32, 32, 4, stride=4, groups=4))
    assert DependencyGraph(grouped).width_groups() == []  # a grouped convolution's channels are not followed


class SpelledNorm(nn.Module):
    """Norms as Hugging Face's modeling files write them: ``rms`` LlamaRMSNorm (a float32 upcast, ``w * x *
    rsqrt(mean(x²) + ε)``), ``gemma`` GemmaRMSNorm (``x * (1 + w)``), ``layer`` a LayerNorm (``w * (x - μ) / σ +
    b``); ``module`` the ``nn`` module each is."""

    def __init__(self, kind, width):
        super().__init__()
        self.kind, self.eps = kind, 1e-5
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.bias = nn.Parameter(torch.randn(width) * 0.1) if kind == "layer" else None

    def forward(self, x):
        if self.kind == "layer":
            u = x.mean(-1, keepdim=True)
            return self.weight * (x - u) / torch.sqrt((x - u).pow(2).mean(-1, keepdim=True) + self.eps) + self.bias
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x) if self.kind == "gemma" else self.weight * h.to(x.dtype)

    def module(self):
        width = self.weight.shape[0]
        norm = nn.LayerNorm(width, eps=self.eps) if self.kind == "layer" else nn.RMSNorm(width, eps=self.eps)
        with torch.no_grad():
            norm.weight.copy_(1.0 + self.weight if self.kind == "gemma" else self.weight)
            if self.bias is not None:
                norm.bias.copy_(self.bias)
        return norm


@pytest.mark.parametrize("kind", ["rms", "gemma", "layer"])
def test_a_norm_written_as_ops_rides_along_the_width_as_its_module_does(kind):
    """The statistic a written-out norm takes over the channels it rescales shrinks with them: the width is
    offered, its weight (and bias) ride along, and the pruned model computes what the same model with the
    ``nn`` norm computes after the same pruning."""
    torch.manual_seed(9)
    spelled = SwiGLUPolicy().eval()
    spelled.norm = SpelledNorm(kind, 32)
    reference = SwiGLUPolicy().eval()
    reference.load_state_dict({k: v for k, v in spelled.state_dict().items() if not k.startswith("norm.")},
                              strict=False)
    reference.norm = spelled.norm.module()
    removed = [1, 5, 30]
    for model in (spelled, reference):
        graph = DependencyGraph(model)
        (width,) = graph.width_groups()
        assert {("norm.weight", 0), ("patch.weight", 0), ("head.weight", 1)} <= {
            (c.tensor, c.dim) for c in width.couplings([5])}
        graph.apply(width.couplings(removed))
    assert spelled.norm.weight.shape == (29,) and reference.norm.weight.shape == (29,)
    x = _inputs(spelled)
    with torch.no_grad():
        torch.testing.assert_close(spelled(*x), reference(*x), rtol=1e-5, atol=1e-5)


class ChannelStatisticReadElsewhere(SwiGLUPolicy):
    """A mean over the channels that is not a norm (a feature of its own, or x rescaled by another tensor's
    statistic): the width stays blocked."""

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)
        h = self.norm(x)
        x = x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)) * x.mean(-1, keepdim=True)
        return self.head(x.mean(dim=1)).view(-1, 4, 2)


def test_a_channel_statistic_that_is_not_a_norm_blocks_the_width():
    assert DependencyGraph(ChannelStatisticReadElsewhere().eval()).width_groups() == []


class FilterPolicy(nn.Module):
    """A CNN encoder: convolutions with BatchNorm and ReLU, max pooling, a depthwise convolution, global average
    pooling flattened into a Linear head."""

    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("image", (3, 16, 16)),),
                               action=TensorSpec("actions", (4, 2), "float32", -1.0, 1.0))
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                nn.MaxPool2d(2))
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.c3 = nn.Conv2d(24, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, 8)
        with torch.no_grad():  # statistics that are not the identity
            for bn in (self.c1[1], self.c2[1]):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, image):
        x = self.c3(self.dw(self.c2(self.c1(image))))
        return self.head(torch.flatten(self.pool(x), 1)).view(-1, 4, 2)


def test_a_cnns_filters_are_neurons_with_their_batch_norm_and_depthwise_channels(tmp_path):
    torch.manual_seed(8)
    model = FilterPolicy().eval()
    graph = DependencyGraph(model)
    groups = {g.name: g for g in graph.hidden_groups()}
    assert sorted(groups) == ["c1.0", "c2.0", "c3"]
    couplings = groups["c2.0"].couplings([3, 17])
    assert {(c.tensor, c.dim) for c in couplings} == {
        ("c2.0.weight", 0), ("c2.0.bias", 0), ("c2.1.weight", 0), ("c2.1.bias", 0), ("c2.1.running_mean", 0),
        ("c2.1.running_var", 0), ("dw.weight", 0), ("dw.bias", 0), ("c3.weight", 1)}
    assert {(c.tensor, c.dim) for c in groups["c3"].couplings([0])} == {
        ("c3.weight", 0), ("c3.bias", 0), ("head.weight", 1)}  # through the pool and the flatten
    # Exact for what reads the channels: with their columns in c3 zeroed, removing them changes nothing.
    with torch.no_grad():
        model.c3.weight[:, [3, 17]] = 0.0
    _removing_changes_nothing(model, graph, couplings)
    assert (model.c2[0].out_channels, model.c2[1].num_features, model.c3.in_channels) == (22, 22, 22)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (22, 22, 22)
    # A quarter of every group's filters by importance, then ONNX Runtime agrees with the pruned model.
    result = prune_structured(model, "neurons", 0.25, round_to=2)
    assert (model.c1[0].out_channels, model.c2[0].out_channels, model.c3.out_channels) == (12, 18, 24)  # 22 - 25 %
    assert result.params_after == _params(model)
    path = export_onnx(model, tmp_path / "cnn.onnx")
    obs = model.spec.example(batch=2, seed=3)
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in obs.values())).numpy()
    np.testing.assert_allclose(ort.InferenceSession(str(path)).run(None, obs)[0], want, rtol=1e-4, atol=1e-5)


class GroupNormPolicy(FilterPolicy):
    """FilterPolicy with GroupNorm (4 groups of 4 channels) after its first convolution, as ResNets trained for
    Diffusion Policy have."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        with torch.no_grad():
            self.c1[1].weight.uniform_(0.5, 1.5)
            self.c1[1].bias.uniform_(-0.2, 0.2)


def test_group_norm_channels_go_in_whole_groups():
    torch.manual_seed(9)
    model = GroupNormPolicy().eval()
    graph = DependencyGraph(model)
    groups = {g.name: g for g in graph.hidden_groups()}
    c1 = groups["c1.0"]
    assert (c1.units, c1.unit_width) == (4, 4)  # units are the GroupNorm's groups
    couplings = c1.couplings([1])
    assert {(c.tensor, c.dim, c.indices) for c in couplings} == {
        (t, d, (4, 5, 6, 7)) for t, d in (("c1.0.weight", 0), ("c1.0.bias", 0), ("c1.1.weight", 0), ("c1.1.bias", 0),
                                          ("c2.0.weight", 1))}
    with pytest.raises(EdgevlaError, match="cannot prune part of a 4 x 4"):
        graph.channel_group("c1.0").couplings([5])  # a single channel of a group
    with torch.no_grad():
        model.c2[0].weight[:, 4:8] = 0.0
    _removing_changes_nothing(model, graph, couplings)
    assert (model.c1[1].num_groups, model.c1[1].num_channels, model.c2[0].in_channels) == (3, 12, 12)


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.7])
def test_one_pruning_step_removes_what_the_plan_predicts_when_groups_differ(fraction):
    """Groups of different units (4 GroupNorm groups of 4 channels, 24 and 32 single filters): the build sizes
    the unit fraction by the plan's prediction, and a one-shot step must remove exactly that."""
    from edgevla.prune import MagnitudeImportance, gradual_prune, plan

    torch.manual_seed(9)
    model = GroupNormPolicy().eval()
    inputs = _inputs(model)
    predicted = plan(DependencyGraph(model, inputs), "neurons", fraction, MagnitudeImportance(), 4, None)[2]
    before = _params(model)
    gradual_prune(model, "neurons", fraction, 1, schedule="oneshot", round_to=4, example_inputs=inputs)
    assert before - _params(model) == predicted > 0

class UnusedAndInPlace(PointPolicy):
    """Computes a value it drops (a mean over a hidden layer's neurons), and adds a parameter onto them in place."""

    def __init__(self, in_place: bool):
        super().__init__(depth=1)
        self.in_place = in_place
        self.shift = nn.Parameter(torch.randn(48) * 0.1)

    def forward(self, points):
        x = self.embed(points) + self.pos
        up, down = self.blocks[0].ffn[0], self.blocks[0].ffn[2]
        h = torch.relu(up(x))
        h.mean(dim=-1)  # dead: nothing uses it
        if self.in_place:
            h.add_(self.shift)  # its result is unused, but it changes h
        x = x + down(h)
        return self.head(x[:, 0]).view(-1, 4, 2)


def test_dead_values_constrain_nothing_but_in_place_writes_count():
    free = DependencyGraph(UnusedAndInPlace(in_place=False))
    assert [g.name for g in free.hidden_groups()] == ["blocks.0.ffn.0"]  # the dropped mean blocks nothing
    coupled = DependencyGraph(UnusedAndInPlace(in_place=True))
    assert coupled.hidden_groups() == []  # the in-place add stayed in the graph, and guards the neurons
    with pytest.raises(EdgevlaError, match="add_ is not understood"):
        coupled.channel_group("blocks.0.ffn.0").couplings([0])


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention as Llama writes it: 4 query heads read 2 key/value heads, repeated by
    ``repeat_interleave``, the counts in the attributes Llama names them by."""

    def __init__(self, enable_gqa=False):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(16, 16)
        self.num_heads, self.num_key_value_heads, self.head_dim = 4, 2, 4
        self.enable_gqa = enable_gqa  # SDPA repeats the key/value heads itself

    def forward(self, x):
        b, t, _ = x.shape
        groups = self.num_heads // self.num_key_value_heads
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        if self.enable_gqa:
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2)
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.o(a.reshape(b, t, self.num_heads * self.head_dim))


class GroupedQueryPolicy(nn.Module):
    def __init__(self, enable_gqa=False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 16)),), action=TensorSpec("a", (6, 16)))
        self.attn = GroupedQueryAttention(enable_gqa)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("enable_gqa", [False, True])
def test_a_grouped_query_head_goes_with_its_query_heads_and_prunes_exactly(enable_gqa):
    """Removing key/value head g removes query heads 2g and 2g + 1 (those its repeat, or SDPA's enable_gqa,
    feeds) and their output columns; zeroing those tensors first, the removal changes nothing. The head counts
    follow."""
    torch.manual_seed(9)
    model = GroupedQueryPolicy(enable_gqa).eval()
    graph = DependencyGraph(model)
    (heads,) = graph.head_groups()
    assert (heads.units, heads.unit_width) == (2, 4)
    couplings = heads.couplings([1])
    assert {(c.tensor, c.dim, c.indices) for c in couplings if c.tensor.endswith("weight")} == {
        ("attn.k.weight", 0, tuple(range(4, 8))), ("attn.v.weight", 0, tuple(range(4, 8))),
        ("attn.q.weight", 0, tuple(range(8, 16))), ("attn.o.weight", 1, tuple(range(8, 16)))}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    attn = model.attn
    assert (attn.num_heads, attn.num_key_value_heads, attn.q.out_features, attn.k.out_features) == (2, 1, 8, 4)


def test_a_repeat_is_removed_only_whole():
    """Query heads alone (half of a key/value head's copies) are not a group: the copies go together."""
    graph = DependencyGraph(GroupedQueryPolicy().eval())
    assert [g.units for g in graph.head_groups()] == [2] and [g.name for g in graph.hidden_groups()] == ["fc1"]


class EagerGroupedQueryAttention(nn.Module):
    """Grouped-query attention as Hugging Face's modeling files write it, which plain ``torch.fx`` cannot trace:
    shapes unpacked with ``*`` and ``len``, a branch on a size, a mask of ``finfo(x.dtype).min`` on
    ``x.device``, ``repeat_kv`` by ``x[:, :, None]`` and expand,
    rotary tables computed in the forward (cos, sin), ``rotate_half`` sliced at ``shape[-1] // 2``."""

    def __init__(self, kv_heads=2):
        super().__init__()
        self.head_dim, self.num_key_value_groups = 4, 4 // kv_heads
        self.q_proj, self.k_proj = nn.Linear(16, 16, bias=False), nn.Linear(16, 4 * kv_heads, bias=False)
        self.v_proj, self.o_proj = nn.Linear(16, 4 * kv_heads, bias=False), nn.Linear(16, 16, bias=False)
        self.register_buffer("inv_freq", 1.0 / 100 ** (torch.arange(0, 4, 2).float() / 4), persistent=False)

    @staticmethod
    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)

    @staticmethod
    def repeat_kv(x, n_rep):
        batch, heads, slen, head_dim = x.shape
        return x[:, :, None, :, :].expand(batch, heads, n_rep, slen, head_dim).reshape(batch, heads * n_rep, slen,
                                                                                        head_dim)

    def forward(self, x):
        input_shape = x.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(x).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(x).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(x).view(hidden_shape).transpose(1, 2)
        freqs = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q, k = q * cos + self.rotate_half(q) * sin, k * cos + self.rotate_half(k) * sin
        k, v = self.repeat_kv(k, self.num_key_value_groups), self.repeat_kv(v, self.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5
        if len(x.shape) == 3 and x.shape[1] > 1:  # a causal mask over more than one token
            scores = scores + torch.full((x.shape[1], x.shape[1]), torch.finfo(x.dtype).min, device=x.device).triu(1)
        p = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.o_proj(torch.matmul(p, v).transpose(1, 2).reshape(*input_shape, -1).contiguous())


def test_hugging_face_attention_traces_and_its_grouped_heads_prune_exactly():
    """What plain fx refuses (``*x.shape``, ``len``, a branch on a size) takes the example's values; the
    key/value heads repeated by ``repeat_kv`` are groups with their query heads, removed exactly."""
    torch.manual_seed(10)
    model = GroupedQueryPolicy().eval()
    model.attn = EagerGroupedQueryAttention()
    with pytest.raises(Exception, match="Proxy"):
        torch.fx.symbolic_trace(model)
    graph = DependencyGraph(model)
    (heads,) = graph.head_groups()
    assert (heads.units, heads.unit_width) == (2, 4)
    couplings = heads.couplings([0])
    assert {(c.tensor, c.dim, c.indices) for c in couplings} == {
        ("attn.k_proj.weight", 0, tuple(range(0, 4))), ("attn.v_proj.weight", 0, tuple(range(0, 4))),
        ("attn.q_proj.weight", 0, tuple(range(0, 8))), ("attn.o_proj.weight", 1, tuple(range(0, 8)))}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    assert (model.attn.q_proj.out_features, model.attn.k_proj.out_features) == (8, 4)


def test_multi_query_heads_are_not_groups():
    """One key/value head for all query heads: ``repeat_kv``'s expand to ``n_rep``, an attribute, is not a size
    pruning can change, so query heads alone are no group (they were offered, and broke the model)."""
    model = GroupedQueryPolicy().eval()
    model.attn = EagerGroupedQueryAttention(kv_heads=1)
    graph = DependencyGraph(model)
    assert graph.head_groups() == [] and [g.name for g in graph.hidden_groups()] == ["fc1"]


class DecoderLayer(nn.Module):
    """A Hugging Face decoder layer's calling convention: the stream first, then what it only reads (a mask and
    rotary-like tables); ``stream_last`` puts the stream after them, which a skipped block cannot return."""

    def __init__(self, stream_last=False):
        super().__init__()
        self.attn, self.mlp = EagerGroupedQueryAttention(), nn.Sequential(nn.Linear(16, 32), nn.GELU(),
                                                                          nn.Linear(32, 16))
        self.stream_last = stream_last

    def forward(self, *args):
        x, mask, table = (args[2], args[0], args[1]) if self.stream_last else args
        x = x + self.attn(x + table) * mask
        return x + self.mlp(x)


class DecoderPolicy(nn.Module):
    def __init__(self, stream_last=False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 16)),), action=TensorSpec("a", (6, 16)))
        self.layers = nn.ModuleList(DecoderLayer(stream_last) for _ in range(3))
        self.register_buffer("mask", torch.ones(1, 6, 1))
        self.register_buffer("table", torch.linspace(0, 1, 16))
        self.stream_last = stream_last

    def forward(self, x):
        for layer in self.layers:
            x = layer(self.mask, self.table, x) if self.stream_last else layer(x, self.mask, self.table)
        return x


def test_a_decoder_layer_with_side_inputs_is_a_residual_block_when_the_stream_comes_first():
    """Hugging Face decoder layers take masks and rotary tables besides the stream: still blocks to drop, the
    skipped one handing its first argument on; a layer taking the stream last is not offered."""
    torch.manual_seed(11)
    assert residual_blocks(DecoderPolicy().eval()) == ["layers.0", "layers.1", "layers.2"]
    assert residual_blocks(DecoderPolicy(stream_last=True).eval()) == []
    model = DecoderPolicy().eval()
    prune_structured(model, "blocks", 0.34)
    assert sum(type(layer).__name__ == "SkippedBlock" for layer in model.layers) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 6, 16)).shape == (2, 6, 16)


class TupleLayer(DecoderLayer):
    def forward(self, *args):  # older Hugging Face layers: outputs = (hidden_states,)
        return (super().forward(*args),)


class TuplePolicy(DecoderPolicy):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(TupleLayer() for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x, self.mask, self.table)[0]
        return x


def test_a_layer_returning_its_stream_in_a_tuple_is_skipped_by_a_tuple():
    """Hugging Face decoder layers before transformers 4.48 return ``(hidden_states,)`` and their caller takes
    ``[0]``: the skip returns ``(x,)`` too (not x, whose ``[0]`` would be the first batch row), and a rebuilt
    bundle's architecture says so."""
    from edgevla.prune.architecture import architecture_delta, rebuild

    torch.manual_seed(12)
    model = TuplePolicy().eval()
    assert residual_blocks(model) == ["layers.0", "layers.1", "layers.2"]
    prune_structured(model, "blocks", 0.34)
    (skipped,) = [layer for layer in model.layers if type(layer).__name__ == "SkippedBlock"]
    x = torch.randn(2, 6, 16)
    assert skipped(x, model.mask, model.table)[0] is x
    with torch.no_grad():
        want = model(x)
    delta = architecture_delta(model, TuplePolicy())
    assert list(delta["removed_outputs"].values()) == [1]
    fresh = rebuild(TuplePolicy().eval(), delta, model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=0, atol=0)


class StackedTokens(nn.Module):
    """Tokens stacked from two projections (``torch.stack``) plus a positional table read transposed (``.T``),
    as ACT builds its encoder input: the width runs through both."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (6,)), TensorSpec("goal", (6,))),
                               action=TensorSpec("actions", (2, 4), "float32", -1.0, 1.0))
        self.a, self.b = nn.Linear(6, width), nn.Linear(6, width)
        self.register_buffer("pos", torch.randn(width, 2))
        self.head = nn.Linear(width, 4)

    def forward(self, state, goal):
        tokens = torch.stack([self.a(state), self.b(goal)]) + self.pos.T[:, None]  # (2, batch, width)
        return self.head(tokens).transpose(0, 1)


def test_the_width_runs_through_stacked_tokens_and_a_transposed_table():
    torch.manual_seed(10)
    model = StackedTokens().eval()
    graph = DependencyGraph(model)
    (width,) = graph.width_groups()
    couplings = width.couplings([3, 17])
    assert {(c.tensor, c.dim, c.indices) for c in couplings} == {
        ("a.weight", 0, (3, 17)), ("a.bias", 0, (3, 17)), ("b.weight", 0, (3, 17)), ("b.bias", 0, (3, 17)),
        ("pos", 0, (3, 17)), ("head.weight", 1, (3, 17))}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    assert model.pos.shape == (30, 2) and model.head.in_features == 30


class QueriesOverZeros(nn.Module):
    """ACT's decoder input: zeros sized by the memory's batch and width (``x.shape[-1]``), plus a learned query
    table; ``constant`` sizes the zeros by a number instead, which pruning could not resize."""

    def __init__(self, width: int = 32, constant: bool = False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (6,)),),
                               action=TensorSpec("actions", (3, 4), "float32", -1.0, 1.0))
        self.embed, self.queries = nn.Linear(6, width), nn.Parameter(torch.randn(3, 1, width))
        self.read, self.head = nn.Linear(width, width), nn.Linear(width, 4)
        self.constant = constant

    def forward(self, state):
        x = self.embed(state)
        y = torch.zeros(3, x.shape[0], 32 if self.constant else x.shape[-1]) + self.queries
        return self.head(y + self.read(x)[None]).transpose(0, 1)


def test_a_tensor_sized_by_the_width_shrinks_with_it():
    torch.manual_seed(11)
    model = QueriesOverZeros().eval()
    graph = DependencyGraph(model)
    (width,) = graph.width_groups()
    couplings = width.couplings([0, 9])
    assert {(c.tensor, c.dim) for c in couplings} == {
        ("embed.weight", 0), ("embed.bias", 0), ("queries", 2), ("read.weight", 0), ("read.weight", 1),
        ("read.bias", 0), ("head.weight", 1)}
    _zero(model, couplings)
    _removing_changes_nothing(model, graph, couplings)
    assert DependencyGraph(QueriesOverZeros(constant=True).eval()).width_groups() == []


class FrozenBatchNormCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("image", (3, 16, 16)),),
                               action=TensorSpec("actions", (1, 4), "float32", -1.0, 1.0))
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), FrozenBatchNorm2d(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), FrozenBatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, image):
        x = torch.relu(self.n1(self.c1(image)))
        x = torch.relu(self.n2(self.c2(x)))
        return self.head(x.mean((2, 3)))[:, None]


def test_a_frozen_batch_norm_rides_along_its_filters_as_a_batch_norm_does():
    """Per-channel buffers met element-wise lose the channel like nn.BatchNorm2d's: the same filter groups,
    and the pruned model computes what the nn.BatchNorm2d model computes after the same pruning."""
    torch.manual_seed(12)
    frozen = FrozenBatchNormCNN().eval()
    batch_norm = copy.deepcopy(frozen)
    batch_norm.n1, batch_norm.n2 = frozen.n1.module(), frozen.n2.module()
    groups = [{g.name: g for g in DependencyGraph(m).hidden_groups()} for m in (frozen, batch_norm)]
    assert set(groups[0]) == set(groups[1]) == {"c1", "c2"}
    assert {(c.tensor, c.dim) for c in groups[0]["c1"].couplings([3])} == {
        ("c1.weight", 0), ("n1.weight", 0), ("n1.bias", 0), ("n1.running_mean", 0), ("n1.running_var", 0),
        ("c2.weight", 1)}
    for model, found in zip((frozen, batch_norm), groups):
        DependencyGraph(model).apply(found["c1"].couplings([3, 7]) + found["c2"].couplings([0]))
    x = _inputs(frozen)
    with torch.no_grad():
        torch.testing.assert_close(frozen(*x), batch_norm(*x), rtol=1e-5, atol=1e-6)
    assert frozen.n1.running_var.shape == (14,) and frozen.c2.out_channels == 15


def test_a_scope_without_groups_names_those_outside_it(tiny):
    """The residual width runs through the whole policy: under a scope there is none, and the error says how to
    reach it."""
    model = copy.deepcopy(tiny)
    with pytest.raises(EdgevlaError, match=r"no prunable width groups under 'trunk' \(1 outside it, the first "
                                           r"'.+': --set prune.scope=null lets them be pruned; the residual width"):
        prune_structured(model, "width", 0.25, scope="trunk")
