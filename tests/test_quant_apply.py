"""What quantization rounds as a table, and what it leaves to the layers that own it."""

from __future__ import annotations

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
