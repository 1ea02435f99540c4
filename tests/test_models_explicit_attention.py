"""PyTorch's fused attention modules rewritten as Linear layers: same function, and reachable by compression."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgevla.models.explicit_attention import (MASKED, ExplicitMultiheadAttention, attention_bias, explicit_attention,
                                               reference_attention)
from edgevla.prune.graph import DependencyGraph
from edgevla.prune.structured import prune_structured
from edgevla.quant import quantize_policy
from edgevla.spec import PolicySpec, TensorSpec
from user_policies import make_padded_history

TOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> float:
    diff = float((a - b).abs().max())
    assert diff <= tol * max(1.0, float(b.detach().abs().max())), diff
    return diff


def _batch(first: bool, b: int, length: int, width: int) -> torch.Tensor:
    return torch.randn(b, length, width) if first else torch.randn(length, b, width)


@pytest.mark.parametrize("kw", [{"batch_first": True}, {"batch_first": False}, {"batch_first": True, "bias": False},
                                {"batch_first": True, "kdim": 12, "vdim": 20}], ids=["bf", "seq-first", "no-bias",
                                                                                    "kdim-vdim"])
@pytest.mark.parametrize("masks", ["none", "padding-bool", "attn-bool", "attn-float-per-head", "both-float",
                                   "per-head-weights", "no-weights"])
def test_multihead_attention_same_function(kw, masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, **kw).eval()
    ours = ExplicitMultiheadAttention.from_fused(mha).eval()
    first, b, lq, lk = kw["batch_first"], 3, 5, 7
    q = _batch(first, b, lq, 32)
    k, v = _batch(first, b, lk, kw.get("kdim", 32)), _batch(first, b, lk, kw.get("vdim", 32))
    padding = torch.rand(b, lk) < 0.3
    padding[:, 0] = False  # no row fully masked (NaN either way)
    attn = torch.rand(lq, lk) < 0.3
    attn[:, 0] = False
    args = {"none": {}, "padding-bool": {"key_padding_mask": padding}, "attn-bool": {"attn_mask": attn},
            "attn-float-per-head": {"attn_mask": torch.randn(b * 4, lq, lk)},
            "both-float": {"attn_mask": torch.randn(lq, lk), "key_padding_mask": torch.randn(b, lk)},
            "per-head-weights": {"average_attn_weights": False, "key_padding_mask": padding},
            "no-weights": {"need_weights": False, "attn_mask": attn}}[masks]
    with torch.no_grad():
        want, got = mha(q, k, v, **args), ours(q, k, v, **args)
    _close(got[0], want[0])
    if want[1] is None:
        assert got[1] is None
    else:
        assert got[1].shape == want[1].shape
        _close(got[1], want[1])


def test_causal_flag_without_a_mask_masks_the_future():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    ours = ExplicitMultiheadAttention.from_fused(mha).eval()
    x = torch.randn(2, 6, 16)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    with torch.no_grad():
        _close(ours(x, x, x, is_causal=True)[0], mha(x, x, x, attn_mask=future)[0])
    bias = attention_bias(None, None, True, 2, 2, 3, 3, torch.float32, torch.device("cpu"))
    assert bias.shape == (1, 1, 3, 3)
    assert torch.equal(bias[0, 0] == MASKED, torch.ones(3, 3, dtype=torch.bool).triu(1))


def test_weights_are_copied_into_separate_projections():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    ours = ExplicitMultiheadAttention.from_fused(mha)
    stacked = torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
    assert torch.equal(stacked, mha.in_proj_weight) and torch.equal(ours.out_proj.weight, mha.out_proj.weight)
    assert type(ours.out_proj) is nn.Linear  # not MHA's NonDynamicallyQuantizableLinear
    ours.q_proj.weight.data.add_(1.0)
    assert not torch.equal(ours.q_proj.weight, mha.in_proj_weight[:8])  # a copy, not a view


class EncoderPolicy(nn.Module):
    """ACT-style: token embeddings through nn.TransformerEncoder (and optionally a decoder), a Linear head."""

    def __init__(self, norm_first: bool = False, activation="relu", decoder: bool = False, mask: bool = False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("tokens", (6, 16), low=-1, high=1),),
                               action=TensorSpec("actions", (4, 3)))
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.embed = nn.Linear(16, 32)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(32), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, dropout=0.1, batch_first=True),
                                             num_layers=1) if decoder else None
        self.queries = nn.Parameter(torch.randn(1, 4, 32))
        self.mask = mask
        self.head = nn.Linear(32, 3)
        for p in self.parameters():  # no two layers alike (nn.TransformerEncoder clones its layer)
            nn.init.normal_(p, std=0.2)

    def forward(self, tokens):
        x = self.embed(tokens)
        mask = torch.zeros(6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf")) \
            if self.mask else None
        memory = self.encoder(x, mask=mask)
        q = self.queries.expand(x.shape[0], -1, -1)
        y = self.decoder(q, memory) if self.decoder is not None else memory[:, :4]
        return self.head(y)


def _inputs(model: nn.Module, batch: int = 3) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in model.spec.example(batch=batch, seed=0).values()]


@pytest.mark.parametrize("options", [{}, {"norm_first": True, "activation": "gelu"}, {"activation": nn.SiLU()},
                                     {"decoder": True}, {"mask": True}],
                         ids=["post-norm", "pre-norm-gelu", "module-activation", "decoder", "causal-mask"])
def test_transformer_modules_rewritten_same_function(options):
    torch.manual_seed(0)
    model = EncoderPolicy(**options).eval()
    inputs = _inputs(model)
    result = explicit_attention(model, inputs)
    assert result.left_fused is None
    assert "encoder" in result.rewritten and "encoder.layers.0.self_attn" in result.rewritten
    assert result.model is not model
    assert not any(isinstance(m, nn.MultiheadAttention) for m in result.model.modules())
    assert any(isinstance(m, nn.MultiheadAttention) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        want = model(*inputs)  # eval mode: PyTorch's fused fast path where it applies
        _close(result.model(*inputs), want)
    # Training mode (distillation recovers a pruned policy in it): dropout is live in ours...
    result.model.train()
    with torch.no_grad():
        assert not torch.equal(result.model(*inputs), result.model(*inputs))
    # ... and with it off, the training-mode forward is the same function too.
    for m in (model, result.model):
        m.train()
        for sub in m.modules():
            if isinstance(sub, nn.Dropout):
                sub.p = 0.0
            if isinstance(sub, (nn.MultiheadAttention, ExplicitMultiheadAttention)):
                sub.dropout = 0.0
    with torch.no_grad():
        _close(result.model(*inputs), model(*inputs))


def test_nothing_to_rewrite_returns_the_model_itself():
    model = nn.Sequential(nn.Linear(4, 4))
    result = explicit_attention(model, [torch.randn(2, 4)])
    assert result.model is model and result.rewritten == [] and result.left_fused is None


class Unbatched(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.attn(x[0], x[0], x[0])[0]  # 2-D: one unbatched sequence


@pytest.mark.parametrize("model, reason", [
    (nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True)), "add_bias_kv"),
    (Unbatched(), "does not run"),
])
def test_what_cannot_be_rewritten_is_left_as_it_is(model, reason):
    result = explicit_attention(model, [torch.randn(1, 5, 8)])
    assert result.model is model and result.rewritten == []
    assert reason in result.left_fused and "\n" not in result.left_fused


def test_heads_and_neurons_are_visible_to_the_dependency_analysis():
    torch.manual_seed(0)
    model = EncoderPolicy()
    inputs = _inputs(model, batch=2)
    before = DependencyGraph(model, tuple(inputs))
    assert before.head_groups() == [] and before.hidden_groups() == []  # nn.TransformerEncoder: one opaque call
    explicit = explicit_attention(model, inputs).model
    graph = DependencyGraph(explicit, tuple(inputs))
    assert sorted(g.name for g in graph.head_groups()) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert {g.name for g in graph.hidden_groups()} >= {"encoder.layers.0.linear1", "encoder.layers.1.linear1"}


def _pruned_encoder(structure: str, **options):
    """An EncoderPolicy rewritten, half its ``structure`` under ``encoder`` removed; (model, result), checked to run."""
    torch.manual_seed(0)
    model = EncoderPolicy(**options)
    inputs = _inputs(model, batch=2)
    explicit = explicit_attention(model, inputs).model
    result = prune_structured(explicit, structure, 0.5, scope="encoder", example_inputs=inputs)
    with torch.no_grad():
        assert explicit(*inputs).shape == (2, 4, 3)
    return explicit, result


def test_pruning_heads_of_a_rewritten_encoder():
    explicit, result = _pruned_encoder("heads", decoder=True)
    attn = explicit.encoder.layers[0].self_attn
    assert attn.num_heads == 2 and attn.q_proj.out_features == 16 and attn.out_proj.in_features == 16
    assert explicit.decoder.layers[0].self_attn.num_heads == 4  # out of scope
    assert result.params_after < result.params_before


def test_a_removed_encoder_layer_takes_the_masks_it_is_called_with():
    explicit, result = _pruned_encoder("blocks", mask=True)
    assert [g.name for g in result.groups] in (["encoder.layers.0"], ["encoder.layers.1"])
    assert sum(isinstance(layer, nn.TransformerEncoderLayer) for layer in explicit.encoder.layers) == 1


def test_calibration_reaches_every_projection():
    torch.manual_seed(0)
    model = EncoderPolicy(decoder=True).eval()
    inputs = _inputs(model, batch=4)
    with pytest.raises(Exception, match="never ran"):  # out_proj is read, not called, by nn.MultiheadAttention
        quantize_policy(copy.deepcopy(model), "w8a8", batches=[tuple(inputs)])
    explicit = explicit_attention(model, inputs).model
    result = quantize_policy(explicit, "w8a8", batches=[tuple(inputs)])
    linears = {n for n, m in explicit.named_modules() if isinstance(m, nn.Linear)}
    assert {"encoder.layers.0.self_attn.q_proj", "decoder.layers.0.multihead_attn.out_proj"} <= linears
    assert set(result.formats) == linears


def test_a_query_whose_keys_are_all_masked_stays_finite_as_on_the_reference_path():
    """PyTorch's eval fast path returns NaN for the padded samples (softmax over no key, carried on by the values);
    its reference path, which the model trained on, and the rewrite do not, and agree."""
    model = make_padded_history()
    obs = model.spec.example(batch=6, seed=2)
    obs["valid"] = torch.tensor([[1], [2], [3], [1], [2], [3]]).numpy()
    inputs = [torch.from_numpy(obs[k]) for k in model.spec.input_names]
    with torch.no_grad():
        if torch.backends.mha.get_fastpath_enabled():
            assert torch.isnan(model(*inputs)).any()  # the fast path's NaN (if PyTorch ever fixes it, fine)
        with reference_attention():
            want = model(*inputs)
    assert torch.isfinite(want).all() and torch.backends.mha.get_fastpath_enabled()  # and the flag is restored
    result = explicit_attention(model, inputs)
    assert result.left_fused is None, result.left_fused
    with torch.no_grad():
        _close(result.model(*inputs), want)


def test_a_padded_history_policy_exports_in_the_explicit_form(tmp_path):
    """torch.export cannot trace the fused fast path nor nn.TransformerEncoder's causal-mask detection on a mask
    buffer; export_onnx traces the explicit form, which ONNX Runtime runs as the reference path computes."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgevla.export import export_onnx

    model = make_padded_history()
    path = export_onnx(model, tmp_path / "padded.onnx")
    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    assert "encoder.layers.0.self_attn.q_proj.weight" in names or "encoder.layers.0.self_attn.q_proj.weight.T" in names
    obs = model.spec.example(batch=5, seed=9)
    obs["valid"] = np.array([[1], [2], [3], [1], [3]])
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, obs)
    with torch.no_grad(), reference_attention():
        want = model(*[torch.from_numpy(obs[k]) for k in model.spec.input_names]).numpy()
    assert np.isfinite(got).all() and np.abs(got - want).max() < 1e-5
