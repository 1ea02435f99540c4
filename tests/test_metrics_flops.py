"""FLOP counts per layer against hand-computed 2·MACs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevla.errors import EdgevlaError
from edgevla.metrics.flops import ROOT_NAME, FlopReport, flop_report


def _rows(report: FlopReport) -> dict[str, tuple[str, int, int, int]]:
    return {r.name: (r.type, r.flops, r.params, r.weight_bytes) for r in report.per_layer}


def test_mlp_flops_are_two_in_out_per_token_and_counted_at_batch_one():
    d_in, hidden, d_out, tokens = 13, 37, 5, 7
    model = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d_out))
    x = torch.randn(3, tokens, d_in)  # batch 3: the report must still be per batch-1 inference
    report = flop_report(model, (x,))
    first, second = 2 * tokens * d_in * hidden, 2 * tokens * hidden * d_out
    assert report.total == first + second
    assert _rows(report) == {
        "0": ("Linear", first, d_in * hidden + hidden, 4 * (d_in * hidden + hidden)),
        "2": ("Linear", second, hidden * d_out + d_out, 4 * (hidden * d_out + d_out)),
    }
    assert flop_report(model, x[:1]) == report
    assert flop_report(model, x.numpy()) == report  # arrays are accepted too


class SelfAttention(torch.nn.Module):
    """Explicit attention: score and value matmuls run in this module, not in a leaf."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("fused", [False, True])
def test_attention_matmuls_stay_on_the_attention_module(fused):
    dim, heads, tokens = 24, 3, 9
    block = torch.nn.Sequential(torch.nn.LayerNorm(dim), SelfAttention(dim, heads, fused))
    report = flop_report(block, torch.randn(2, tokens, dim))
    qkv, proj = 2 * tokens * dim * 3 * dim, 2 * tokens * dim * dim
    # q·kᵀ and a·v: per head 2·T·T·d_head each, over all heads 2 · 2·T²·dim.
    scores = 2 * (2 * heads * tokens * tokens * (dim // heads))
    rows = _rows(report)
    assert rows["1"] == ("SelfAttention", scores, 0, 0)
    assert rows["1.qkv"][1] == qkv and rows["1.proj"][1] == proj
    assert rows["0"] == ("LayerNorm", 0, 2 * dim, 4 * 2 * dim)  # no FLOP formula, but its weights are listed
    assert report.total == qkv + proj + scores
    assert report.top(1)[0].name == "1.qkv"


class Wrapped(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, self_attention: bool):
        super().__init__()
        self.inner, self.self_attention = inner, self_attention

    def forward(self, x):
        return self.inner(x, x, x, need_weights=False)[0] if self.self_attention else self.inner(x)


def test_blocks_called_from_a_module_list_keep_their_flops():
    """nn.ModuleList is never called itself; the blocks' work must not fall to the encoder."""
    dim, tokens, depth = 12, 5, 3

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(SelfAttention(dim, 2, fused=False) for _ in range(depth))
            self.head = torch.nn.Linear(dim, 4)

        def forward(self, x):
            for blk in self.blocks:
                x = blk(x)
            return self.head(x.mean(1))  # head over one pooled token

    report = flop_report(Encoder(), torch.randn(1, tokens, dim))
    per_block = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * tokens * dim
    rows = _rows(report)
    assert report.total == depth * per_block + 2 * dim * 4
    assert ROOT_NAME not in rows and "blocks" not in rows
    assert [rows[f"blocks.{i}"][1] for i in range(depth)] == [2 * 2 * tokens * tokens * dim] * depth
    assert sum(r.flops for r in report.per_layer) == report.total


def test_multihead_attention_fast_path_is_counted_on_the_module():
    dim, heads, tokens = 16, 4, 6
    model = Wrapped(torch.nn.MultiheadAttention(dim, heads, batch_first=True), self_attention=True).eval()
    report = flop_report(model, torch.randn(1, tokens, dim))
    projections = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim
    attention = 2 * 2 * tokens * tokens * dim
    rows = _rows(report)
    assert report.total == projections + attention
    assert rows["inner"] == ("MultiheadAttention", projections + attention, 3 * dim * dim + 3 * dim,
                             4 * (3 * dim * dim + 3 * dim))
    # out_proj's weights are used functionally: listed, with no FLOPs of its own.
    assert rows["inner.out_proj"] == ("NonDynamicallyQuantizableLinear", 0, dim * dim + dim, 4 * (dim * dim + dim))
    # The unfused path (training mode: F.multi_head_attention_forward) gives the same count.
    assert flop_report(model.train(), torch.randn(1, tokens, dim)).total == projections + attention


def test_transformer_encoder_layer_fast_path_is_counted():
    dim, heads, ff, tokens = 32, 4, 48, 5
    layer = torch.nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff, dropout=0.0, batch_first=True).eval()
    report = flop_report(Wrapped(layer, self_attention=False).eval(), torch.randn(1, tokens, dim))
    expected = (2 * tokens * dim * 3 * dim + 2 * 2 * tokens * tokens * dim + 2 * tokens * dim * dim
                + 2 * tokens * dim * ff + 2 * tokens * ff * dim)
    assert report.total == expected
    assert _rows(report)["inner"][1] == expected


def test_convolution_and_buffers_and_root_parameters():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Parameter(torch.randn(1, 4, 6, 6))  # owned by the root itself
            self.conv = torch.nn.Conv2d(3, 4, kernel_size=3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, img):
            return self.bn(self.conv(img) + self.pos)

    net = Net().eval()
    report = flop_report(net, {"img": torch.randn(2, 3, 8, 8)})
    conv = 2 * 4 * 6 * 6 * 3 * 3 * 3  # 2 · C_out · H_out · W_out · C_in · k · k
    rows = _rows(report)
    assert report.total == conv
    assert rows["conv"][1] == conv
    assert rows[ROOT_NAME] == ("Net", 0, 144, 144 * 4)
    assert rows["bn"][3] == 4 * 4 * 4 + 8  # weight, bias, running mean/var (fp32) and an int64 counter
    total_bytes = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    assert sum(r.weight_bytes for r in report.per_layer) == total_bytes
    assert sum(r.flops for r in report.per_layer) == report.total



def test_learned_queries_expanded_to_the_batch_are_counted_and_keep_their_grad():
    """A DETR/ACT decoder's learned queries, a parameter viewed to the batch and handed to a submodule: a view
    taken without grad still requires it, with no grad_fn to hook, which the counter must get past."""
    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.queries = torch.nn.Parameter(torch.randn(5, 8))
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, memory):
            q = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
            return self.head(self.attn(q, memory, memory, need_weights=False)[0])

    net = Decoder().eval()
    report = flop_report(net, (torch.randn(2, 7, 8),))
    rows = _rows(report)
    assert rows["head"][1] == 2 * 5 * 8 * 3
    # q, k, v and out projections (5 queries, 7 memory tokens) and the two attention matmuls
    projections = 2 * 8 * 8 * (5 + 7 + 7 + 5)
    assert rows["attn"][1] == projections + 2 * (2 * 5 * 7 * 8)
    assert report.total == rows["head"][1] + rows["attn"][1]
    assert all(p.requires_grad for p in net.parameters())

def test_int8_matmuls_are_counted_and_buffer_weights_costed():
    tokens, k, n = 17, 24, 40

    class Int8Linear(torch.nn.Module):
        """Weights stored as int8 buffers, as a quantized layer keeps them."""

        def __init__(self):
            super().__init__()
            self.register_buffer("w_kn", torch.randint(-128, 128, (k, n), dtype=torch.int8))
            self.register_buffer("w_nk", torch.randint(-128, 128, (n, k), dtype=torch.int8))
            self.register_buffer("scale", torch.rand(n))

        def forward(self, x):
            a = torch._int_mm(x[0].to(torch.int8), self.w_kn)
            b = torch.ops.aten._weight_int8pack_mm(x[0].float(), self.w_nk, self.scale)
            return a, b

    report = flop_report(Int8Linear(), torch.randint(-5, 5, (1, tokens, k)))
    assert report.total == 2 * (2 * tokens * k * n)
    assert _rows(report) == {ROOT_NAME: ("Int8Linear", 2 * (2 * tokens * k * n), 0, k * n + n * k + 4 * n)}


def test_report_round_trips_through_a_dict():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    report = flop_report(model, [np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)])
    assert FlopReport.from_dict(report.to_dict()) == report


@pytest.mark.parametrize("inputs", [(), torch.tensor(1.0), ("text",), (torch.zeros(0, 3),)])
def test_bad_inputs_are_user_errors(inputs):
    with pytest.raises(EdgevlaError, match="flop_report"):
        flop_report(torch.nn.Linear(3, 3), inputs)


def test_non_module_is_a_user_error():
    with pytest.raises(EdgevlaError, match="torch.nn.Module"):
        flop_report(lambda x: x, (torch.randn(1, 3),))


@pytest.mark.parametrize("fmt, weight_bytes", [("w8a8", 1.0), ("w8a16", 1.0), ("w4a16", 0.5), ("fp8", 1.0)])
def test_quantized_linears_cost_their_shipped_bytes_not_the_float_weight_they_keep(fmt, weight_bytes):
    from user_policies import SmallPolicy

    from edgevla.quant import quantize_policy

    torch.manual_seed(0)
    policy = SmallPolicy().eval()
    q = quantize_policy(policy, fmt, batches=[(torch.rand(16, 6, 32) * 2 - 1,)], group_size=32).model
    row = {r.name: r for r in flop_report(q, torch.rand(1, 6, 32)).per_layer}["fc1"]  # Linear(32, 64)
    scales = {"w8a8": 4 * 64 + 4, "w8a16": 4 * 64, "w4a16": 4 * 64, "fp8": 4 * 64 + 4}[fmt]  # fp32 each
    assert row.params == 32 * 64 + 64  # the layer still has as many weights
    assert row.weight_bytes == int(32 * 64 * weight_bytes) + scales + 4 * 64  # codes, scales, fp32 bias
