"""What quantization rounds as a table, and what it leaves to the layers that own it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgevla.quant.apply import round_tables, table_tensors


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(64, 16)                     # a table: looked up
        self.pos = nn.Parameter(torch.randn(1, 20, 16))        # a table: added
        self.lstm = nn.LSTM(16, 16)                            # weights: multiplied
        self.gru_cell = nn.GRUCell(16, 16)
        self.attn = nn.MultiheadAttention(16, 2)               # in_proj_weight: multiplied by F.linear
        self.bilinear = nn.Bilinear(16, 16, 4)
        self.conv = nn.Conv1d(16, 16, 3)
        self.head = nn.Linear(16, 16)


def test_only_lookup_and_added_tables_are_tables():
    assert set(table_tensors(Mixed())) == {"tokens.weight", "pos"}


def test_a_top_level_layer_owns_its_weight():
    assert table_tensors(nn.Linear(32, 32)) == {}


def test_round_tables_leaves_layer_weights_alone():
    torch.manual_seed(0)
    model = Mixed()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert sorted(round_tables(model)) == ["pos", "tokens.weight"]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name not in ("pos", "tokens.weight")), name


class Masked(nn.Module):
    """Causal masks as users register them: ``-inf`` above the diagonal, or ``finfo.min`` (Hugging Face)."""

    def __init__(self, fill):
        super().__init__()
        self.register_buffer("causal", torch.full((1, 1, 16, 16), fill).triu(1), persistent=False)
        self.pos = nn.Parameter(torch.randn(1, 16, 16))


@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float32).min])
def test_a_mask_the_int8_grid_cannot_hold_stays_float_and_exact(fill):
    model = Masked(fill)
    before = model.causal.clone()
    assert round_tables(model) == ["pos"]
    assert torch.equal(model.causal, before)


def test_a_table_just_inside_float32_is_still_a_table():
    model = Masked(-3.0e38)  # its grid's top, 127 * 2^121, is a float32
    assert set(table_tensors(model)) == {"causal", "pos"}
    round_tables(model)
    assert torch.isfinite(model.causal).all() and (model.causal.triu(1) < -2.9e38).sum() == 120
