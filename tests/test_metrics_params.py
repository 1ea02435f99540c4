"""Parameter counts and artifact sizes against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevla.errors import EdgevlaError
from edgevla.metrics.params import ParamCount, count_parameters, file_size


def test_counts_total_and_nonzero_of_a_pruned_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    with torch.no_grad():
        mask = torch.rand_like(model[0].weight) < 0.4
        model[0].weight[mask] = 0.0
    expected_total = 13 * 7 + 7 + 7 * 3 + 3
    expected_nonzero = sum(int(np.count_nonzero(p.detach().numpy())) for p in model.parameters())
    count = count_parameters(model)
    assert count == ParamCount(total=expected_total, nonzero=expected_nonzero)
    assert count.nonzero == expected_total - int(mask.sum())
    assert count.sparsity == pytest.approx(int(mask.sum()) / expected_total)


def test_tied_parameters_count_once():
    emb = torch.nn.Embedding(11, 5)
    head = torch.nn.Linear(5, 11, bias=False)
    head.weight = emb.weight
    assert count_parameters(torch.nn.ModuleList([emb, head])).total == 55


def test_count_parameters_rejects_non_modules():
    with pytest.raises(EdgevlaError, match="torch.nn.Module"):
        count_parameters(np.zeros(3))


def test_file_size_of_a_file_and_of_a_directory(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a.bin").write_bytes(rng.bytes(1234))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(rng.bytes(77))
    assert file_size(tmp_path / "a.bin") == 1234
    assert file_size(tmp_path) == 1234 + 77


def test_file_size_of_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(EdgevlaError, match="no such file"):
        file_size(tmp_path / "nope.onnx")
