from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgevla.errors import EdgevlaError
from edgevla.quant.smoothquant import find_smooth_groups, smooth_quant


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.ln3 = nn.LayerNorm(d)  # also feeds the residual: refused
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.ln(x)
        x = x + self.q(h) * self.k(h) + self.v(h)
        x = x + self.fc(self.ln2(x))
        y = self.ln3(x)
        return self.head(y) + y[..., :4]


def test_smoothquant_folds_exactly_and_refuses_others():
    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():  # non-trivial affine params and an outlier channel
        for ln in (m.ln, m.ln2, m.ln3):
            ln.weight.uniform_(0.5, 2.0)
            ln.bias.uniform_(-0.5, 0.5)
        m.ln.weight[3] = 30.0
    xs = [(torch.randn(8, 5, 16),) for _ in range(2)]
    groups, refused = find_smooth_groups(m, xs[0])
    assert {(g.norm, g.linears) for g in groups} == {("ln", ("q", "k", "v")), ("ln2", ("fc",))}
    assert [r.norm for r in refused] == ["ln3"]
    with torch.no_grad():
        before = m(*xs[0])
        act_before = m.ln(xs[0][0]).abs().amax(dim=(0, 1))
    result = smooth_quant(m, xs, alpha=0.5)
    with torch.no_grad():
        after = m(*xs[0])
        act_after = m.ln(xs[0][0]).abs().amax(dim=(0, 1))
    assert torch.allclose(before, after, atol=1e-5)
    # The outlier channel's range shrank relative to the others.
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median()
    assert set(result["scales"]) == {"ln", "ln2"}


class LlamaBlock(nn.Module):
    """A pre-RMSNorm SwiGLU block: the scales fold into the RMSNorm's weight (it has no bias)."""

    def __init__(self, d=16):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, 32, bias=False), nn.Linear(d, 32, bias=False), nn.Linear(32, d)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def test_smoothquant_folds_into_an_rms_norm():
    torch.manual_seed(1)
    m = LlamaBlock().eval()
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 2.0)
        m.norm.weight[5] = 25.0  # an outlier channel
    xs = [(torch.randn(4, 6, 16),) for _ in range(2)]
    groups, refused = find_smooth_groups(m, xs[0])
    assert [(g.norm, g.linears) for g in groups] == [("norm", ("gate", "up")), ("up", ("down",))] and refused == []
    with torch.no_grad():
        before, act_before = m(*xs[0]), m.norm(xs[0][0]).abs().amax(dim=(0, 1))
    smooth_quant(m, xs, alpha=0.5)
    with torch.no_grad():
        after, act_after = m(*xs[0]), m.norm(xs[0][0]).abs().amax(dim=(0, 1))
    assert torch.allclose(before, after, atol=1e-5)
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median()


def _input_amax(layer, m, x):
    """The per-channel max |input| of ``layer`` when ``m`` runs on ``x``."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].abs().amax(dim=(0, 1))))
    with torch.no_grad():
        m(x)
    handle.remove()
    return seen[0]


def test_smoothquant_smooths_a_gated_mlps_down_projection_through_its_value_rows():
    """down(silu(gate(h)) * up(h)): the product's outlier channel (an LLM's down_proj input carries the
    largest) is divided out of up's row and multiplied into down's column, exactly; an up layer also read
    elsewhere, or called twice, is refused."""
    torch.manual_seed(3)
    m = LlamaBlock().eval()
    with torch.no_grad():
        m.up.weight[7] *= 40.0  # one product channel 40x the others
        m.up.bias = None
    xs = [(torch.randn(4, 6, 16),) for _ in range(2)]
    with torch.no_grad():
        before = m(*xs[0])
    up_before, act_before = m.up.weight.detach().clone(), _input_amax(m.down, m, xs[0][0])
    result = smooth_quant(m, xs, alpha=0.5)
    torch.testing.assert_close(m(*xs[0]).detach(), before, rtol=0, atol=2e-5)
    s = result["scales"]["up"]
    torch.testing.assert_close(m.up.weight, up_before * result["scales"]["norm"][None, :] / s[:, None])
    act_after = _input_amax(m.down, m, xs[0][0])
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median() / 3


class ValueReadTwice(LlamaBlock):
    def forward(self, x):
        h = self.norm(x)
        u = self.up(h)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * u) + u[..., :16]


def test_a_value_layer_read_elsewhere_is_not_smoothed():
    groups, _ = find_smooth_groups(ValueReadTwice().eval(), (torch.randn(2, 3, 16),))
    assert [g.norm for g in groups] == ["norm"]


class SpelledRMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm (``gemma``: GemmaRMSNorm, which scales by ``1 + w``), written as ops."""

    def __init__(self, d, gemma=False):
        super().__init__()
        self.weight, self.gemma = nn.Parameter(torch.zeros(d) if gemma else torch.ones(d)), gemma

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (h * (1.0 + self.weight.float())).type_as(x) if self.gemma else self.weight * h.to(x.dtype)


class SpelledLayerNorm(nn.Module):
    """A LayerNorm written out, as older repositories (and ConvNeXt's) do: ``w * (x - μ) / σ + b``."""

    def __init__(self, d):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt((x - u).pow(2).mean(-1, keepdim=True) + 1e-6) + self.bias


class SpelledBlock(nn.Module):
    def __init__(self, norm, d=16):
        super().__init__()
        self.norm, self.norm2, self.norm3 = norm(d), norm(d), norm(d)
        self.q, self.k, self.fc, self.head = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 32), nn.Linear(d, 4)
        self.gain = nn.Parameter(torch.ones(d))  # a per-channel scale, also read by the residual: not foldable

    def forward(self, x):
        h = self.norm(x)
        x = x + self.q(h) * self.k(h)
        x = x + self.fc(self.norm2(x))[..., :16]
        y = self.norm3(x) * self.gain
        return self.head(y) + y[..., :4]


@pytest.mark.parametrize("kind", ["llama", "gemma", "layer_norm"])
def test_smoothquant_folds_into_a_norm_written_as_ops(kind):
    """Hugging Face's hand-written norms fold like nn.RMSNorm: γ (Gemma's 1 + γ) and β divided by s, exactly; a
    per-channel product whose output also reaches the residual is refused."""
    torch.manual_seed(2)
    norm = {"llama": SpelledRMSNorm, "gemma": lambda d: SpelledRMSNorm(d, gemma=True),
            "layer_norm": SpelledLayerNorm}[kind]
    m = SpelledBlock(norm).eval()
    with torch.no_grad():
        for n in (m.norm, m.norm2, m.norm3):
            n.weight.uniform_(0.5, 2.0)
        m.norm.weight[3] = 30.0
        if kind == "layer_norm":
            m.norm.bias.uniform_(-0.5, 0.5)
    xs = [(torch.randn(4, 6, 16),) for _ in range(2)]
    groups, refused = find_smooth_groups(m, xs[0])
    assert sorted((g.norm, g.linears) for g in groups) == [("norm", ("q", "k")), ("norm2", ("fc",))]
    assert {(g.weight, g.bias, g.offset) for g in groups if g.norm == "norm"} == {
        ("norm.weight", "norm.bias" if kind == "layer_norm" else None, 1.0 if kind == "gemma" else 0.0)}
    assert [r.norm for r in refused] == ["gain"] and "also feeds" in refused[0].reason
    with torch.no_grad():
        before, act_before = m(*xs[0]), m.norm(xs[0][0]).abs().amax(dim=(0, 1))
    weight_before = m.norm.weight.detach().clone()
    result = smooth_quant(m, xs, alpha=0.5)
    with torch.no_grad():
        after, act_after = m(*xs[0]), m.norm(xs[0][0]).abs().amax(dim=(0, 1))
    torch.testing.assert_close(after, before, rtol=0, atol=2e-5)
    offset = 1.0 if kind == "gemma" else 0.0
    torch.testing.assert_close(offset + m.norm.weight, (offset + weight_before) / result["scales"]["norm"])
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median()


class Attention(nn.Module):
    """Self-attention into an output projection, its value written three ways: ``hf`` Hugging Face's (separate
    projections, ``repeat_kv`` by expand + reshape, eager ``softmax(q k^T) @ v``), ``gqa`` SDPA's
    ``enable_gqa``, ``stacked`` one qkv projection cut by ``view``/``permute``/``unbind``."""

    def __init__(self, kind, d=32, heads=4, kv_heads=2):
        super().__init__()
        self.kind, self.heads, self.head_dim = kind, heads, d // heads
        self.kv_heads = heads if kind == "stacked" else kv_heads
        self.norm = nn.LayerNorm(d)
        if kind == "stacked":
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k = nn.Linear(d, d), nn.Linear(d, self.kv_heads * self.head_dim)
            self.v = nn.Linear(d, self.kv_heads * self.head_dim)
        self.o = nn.Linear(d, d)

    def value_layer(self):
        return self.qkv if self.kind == "stacked" else self.v

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm(x)
        if self.kind == "stacked":
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            q = self.q(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            k = self.k(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            v = self.v(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            if self.kind == "gqa":
                a = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            else:
                rep = self.heads // self.kv_heads
                k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, self.heads, t, -1)
                v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, self.heads, t, -1)
                a = torch.matmul(torch.softmax(q @ k.transpose(2, 3) * self.head_dim ** -0.5, dim=-1), v)
        return x + self.o(a.transpose(1, 2).contiguous().reshape(b, t, d))


@pytest.mark.parametrize("kind", ["hf", "gqa", "stacked"])
def test_smoothquant_smooths_an_output_projection_through_the_value_rows(kind):
    """o(attention(..., v)): each o input channel (head h, j) is the value row (h's key/value head, j) mixed
    over tokens, so an outlier value row is divided out of v (the stacked projection's v rows only) and
    multiplied into o's columns, exactly; query heads sharing a key/value head share its scale."""
    torch.manual_seed(4)
    m = Attention(kind).eval()
    value, d, hd = m.value_layer(), 32, 8
    first = 2 * d if kind == "stacked" else 0  # v's rows in the layer
    with torch.no_grad():
        value.weight[first + 5] *= 30.0  # one value channel 30x the others
    xs = [(torch.randn(4, 6, d),) for _ in range(2)]
    groups, refused = find_smooth_groups(m, xs[0])
    group = next(g for g in groups if g.linears == ("o",))
    rep = m.heads // m.kv_heads
    assert group.norm == ("qkv" if kind == "stacked" else "v") and refused == []
    assert group.channels == tuple(first + (h // rep) * hd + j for h in range(m.heads) for j in range(hd))
    with torch.no_grad():
        before = m(*xs[0])
    rows_before, act_before = value.weight.detach().clone(), _input_amax(m.o, m, xs[0][0])
    result = smooth_quant(m, xs, alpha=0.5)
    torch.testing.assert_close(m(*xs[0]).detach(), before, rtol=0, atol=2e-5)
    s = result["scales"][group.norm]
    untouched = [r for r in range(value.out_features) if r not in group.channels]  # q and k rows
    assert torch.equal(s[untouched], torch.ones(len(untouched)))
    torch.testing.assert_close(value.weight, rows_before * result["scales"]["norm"][None, :] / s[:, None])
    act_after = _input_amax(m.o, m, xs[0][0])
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median() / 3


class ValueAlsoRead(Attention):
    """The value rows also reach the output another way (a cache handed back; here a residual)."""

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm(x)
        v = self.v(h)
        q, k = self.q(h).view(b, t, 4, 8).transpose(1, 2), self.k(h).view(b, t, 2, 8).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v.view(b, t, 2, 8).transpose(1, 2), enable_gqa=True)
        return self.o(a.transpose(1, 2).reshape(b, t, d)) + v.repeat(1, 1, 2)


class ValueWithPrefix(Attention):
    """Values concatenated with tokens from elsewhere, or gated after the attention: no row map."""

    def forward(self, x):
        b, t, d = x.shape
        v = torch.cat([x, self.v(self.norm(x)).repeat(1, 1, 2)], dim=1)
        a = F.scaled_dot_product_attention(self.q(x).view(b, t, 4, 8).transpose(1, 2),
                                           v.view(b, 2 * t, 4, 8).transpose(1, 2), v.view(b, 2 * t, 4, 8).transpose(1, 2))
        return self.o(a.transpose(1, 2).reshape(b, t, d) * torch.sigmoid(self.k(x)).repeat(1, 1, 2))


def test_value_rows_that_reach_anything_else_are_not_smoothed():
    x = torch.randn(2, 5, 32)
    groups, refused = find_smooth_groups(ValueAlsoRead("hf").eval(), (x,))
    assert "v" not in [g.norm for g in groups]
    assert [r.reason for r in refused if r.norm == "v"] == ["its rows also reach aten.repeat.default"]
    groups, refused = find_smooth_groups(ValueWithPrefix("hf").eval(), (x,))
    assert "v" not in [g.norm for g in groups] + [r.norm for r in refused]


def test_the_alpha_search_keeps_the_candidate_with_the_best_output_sqnr():
    """Every candidate (and SmoothQuant off) is quantized and measured on the probe; the best is kept, and on
    a block whose down projection reads a 40x outlier channel it is SmoothQuant, not off."""
    from edgevla.quant.alpha_search import search_alpha
    from edgevla.quant.apply import quantize_policy
    from edgevla.quant.mixed import model_sqnr

    from edgevla.spec import PolicySpec, TensorSpec

    torch.manual_seed(5)
    m = LlamaBlock().eval()
    m.spec = PolicySpec(observations=(TensorSpec("x", (6, 16)),), action=TensorSpec("y", (6, 16)))
    with torch.no_grad():
        m.up.weight[7] *= 40.0
    calibration = [(torch.randn(8, 6, 16),) for _ in range(2)]
    probe = [(torch.randn(8, 6, 16),)]

    def quantize(model, alpha):
        return quantize_policy(model, "w8a8", batches=calibration, smoothquant_alpha=alpha).model

    search = search_alpha(m, quantize, probe, alphas=(0.3, 0.6, 0.9))
    assert list(search.sqnr_db) == ["off", "0.3", "0.6", "0.9"]
    assert search.alpha is not None and search.sqnr_db[f"{search.alpha:g}"] == max(search.sqnr_db.values())
    assert search.sqnr_db[f"{search.alpha:g}"] > search.sqnr_db["off"] + 1.0
    assert search.sqnr_db["0.6"] == pytest.approx(model_sqnr(quantize(m, 0.6), probe), abs=1e-3)
    with pytest.raises(EdgevlaError, match="must be in"):
        search_alpha(m, quantize, probe, alphas=(1.5,))


def test_smoothquant_reuses_its_analysis_across_alphas():
    """With ``reuse`` the groups and ranges found on the first copy smooth the next copies: the same weights as
    a fresh analysis at that alpha, and no second trace."""
    import copy
    from unittest import mock

    from edgevla.quant import smoothquant

    torch.manual_seed(6)
    m = LlamaBlock().eval()
    xs = [(torch.randn(4, 6, 16),) for _ in range(2)]
    reuse: dict = {}
    smooth_quant(copy.deepcopy(m), xs, alpha=0.5, reuse=reuse)
    fresh, reused = copy.deepcopy(m), copy.deepcopy(m)
    smooth_quant(fresh, xs, alpha=0.8)
    with mock.patch.object(smoothquant, "find_smooth_groups", side_effect=AssertionError("traced again")):
        smooth_quant(reused, xs, alpha=0.8, reuse=reuse)
    for (name, a), b in zip(fresh.state_dict().items(), reused.state_dict().values()):
        assert torch.equal(a, b), name


class ReluFeedForward(nn.Module):
    """ACT's / DETR's post-norm feed-forward, ``linear2(dropout(relu(linear1(x))))``; ``act`` another
    activation."""

    def __init__(self, act=torch.relu, d=16):
        super().__init__()
        self.inp, self.linear1, self.linear2 = nn.Linear(d, d), nn.Linear(d, 48), nn.Linear(48, d)
        self.dropout, self.act = nn.Dropout(0.1), act

    def forward(self, x):
        h = self.inp(x)
        return self.linear2(self.dropout(self.act(self.linear1(h)))) + h


def test_smoothquant_smooths_a_relu_feed_forward_through_the_first_layers_rows():
    """relu(y / s) = relu(y) / s for s > 0: linear2's outlier input channel is divided out of linear1's row (and
    bias) and multiplied into linear2's column, exactly; GELU does not commute with scaling and is left alone."""
    torch.manual_seed(7)
    m = ReluFeedForward().eval()
    with torch.no_grad():
        m.linear1.weight[9] *= 30.0
        m.linear1.bias[9] = 2.0
    xs = [(torch.randn(4, 6, 16),) for _ in range(2)]
    groups, _ = find_smooth_groups(m, xs[0])
    assert [(g.norm, g.linears, g.bias) for g in groups] == [("linear1", ("linear2",), "linear1.bias")]
    with torch.no_grad():
        before = m(*xs[0])
    act_before = _input_amax(m.linear2, m, xs[0][0])
    smooth_quant(m, xs, alpha=0.5)
    torch.testing.assert_close(m(*xs[0]).detach(), before, rtol=0, atol=2e-5)
    act_after = _input_amax(m.linear2, m, xs[0][0])
    assert act_after.max() / act_after.median() < act_before.max() / act_before.median() / 3
    gelu = ReluFeedForward(torch.nn.functional.gelu).eval()
    assert find_smooth_groups(gelu, xs[0])[0] == []
