"""Mask math: thresholds, N:M patterns, masks that survive fine-tuning and export as exact zeros."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from edgevla.errors import EdgevlaError
from edgevla.export import export_onnx
from edgevla.export.onnx_export import match_initializers
from edgevla.prune import (MagnitudeImportance, apply_masks, baked_copy, follows_nm, from_nm_rows, nm_mask, nm_masks,
                           nm_rows, remove_masks, sparsity_report, sparsity_threshold, threshold_mask,
                           unstructured_masks)
from edgevla.spec import PolicySpec, TensorSpec


class TwoLayerPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("state", (16,)),), action=TensorSpec("actions", (2, 2)))
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, state):
        return self.fc2(torch.relu(self.fc1(state))).view(-1, 2, 2)


def test_threshold_mask_hand_computed():
    scores = torch.tensor([[0.5, -2.0, 0.1], [3.0, -0.2, 1.0]])
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(threshold_mask(scores, 0.4), expected)
    # W' = W * Mask(|W| > theta)
    assert torch.equal(scores * threshold_mask(scores, 0.4), torch.tensor([[0.5, -2.0, 0.0], [3.0, 0.0, 1.0]]))


def test_sparsity_threshold_is_the_kth_smallest_magnitude():
    s = torch.tensor([0.3, -0.1, 0.7, -0.5, 0.2, 0.9, -0.4, 0.6])
    theta = sparsity_threshold([s], 0.5)
    assert theta == pytest.approx(0.4)  # sorted |s|: .1 .2 .3 .4 | .5 .6 .7 .9
    assert int(threshold_mask(s, theta).sum()) == 4
    assert sparsity_threshold([s], 0.0) == float("-inf")


def test_per_layer_and_global_thresholds_match_numpy():
    torch.manual_seed(0)
    model = TwoLayerPolicy()
    with torch.no_grad():
        model.fc2.weight.mul_(0.01)  # a layer of tiny weights: global ranking should hit it hardest
    per_layer = unstructured_masks(model, 0.75, scope="layer")
    for name, layer in (("fc1", model.fc1), ("fc2", model.fc2)):
        w = layer.weight.detach().abs().numpy().ravel()
        theta = np.sort(w)[int(round(0.75 * w.size)) - 1]
        np.testing.assert_array_equal(per_layer[name].numpy().ravel(), (w > theta).astype(np.float32))
        assert per_layer[name].numel() - per_layer[name].sum() == round(0.75 * w.size)
    glob = unstructured_masks(model, 0.5, scope="global")
    everything = np.concatenate([model.fc1.weight.detach().abs().numpy().ravel(),
                                 model.fc2.weight.detach().abs().numpy().ravel()])
    theta = np.sort(everything)[int(round(0.5 * everything.size)) - 1]
    for name, layer in (("fc1", model.fc1), ("fc2", model.fc2)):
        expected = (layer.weight.detach().abs().numpy() > theta).astype(np.float32)
        np.testing.assert_array_equal(glob[name].numpy(), expected)
    assert glob["fc2"].sum() == 0  # every tiny weight ranks below the big layer's median


def test_nm_mask_hand_computed_row():
    scores = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.3]])
    assert nm_mask(scores, 2, 4).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert nm_mask(scores, 4, 8).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert nm_mask(scores, 1, 4).tolist() == [[0, 1, 0, 0, 0, 1, 0, 0]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_pattern_keeps_the_n_largest_of_every_m(n, m):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(n))
    mask = nm_mask(w, n, m)
    groups = mask.reshape(24, -1, m)
    assert bool((groups.sum(-1) == n).all())  # exactly N kept, so M - N zeros in every group
    mags = w.abs().numpy().reshape(24, -1, m)
    kept_min = np.where(groups.numpy() == 1, mags, np.inf).min(-1)
    dropped_max = np.where(groups.numpy() == 0, mags, -np.inf).max(-1)
    assert (kept_min > dropped_max).all()
    assert follows_nm(w * mask, n, m)
    assert not follows_nm(w, n, m)


def test_nm_mask_rejects_bad_shapes_and_ratios():
    with pytest.raises(EdgevlaError, match="divide by 4"):
        nm_mask(torch.randn(3, 6), 2, 4)
    with pytest.raises(EdgevlaError, match="0 < N < M"):
        nm_mask(torch.randn(3, 8), 4, 4)
    with pytest.raises(EdgevlaError, match="fraction"):
        unstructured_masks(TwoLayerPolicy(), 1.5)



class ConvStack(nn.Module):
    """A plain 2-D convolution, a grouped 1-D one (4 channels a group) and a depthwise one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 12, 3)
        self.grouped = nn.Conv1d(16, 8, 3, groups=4)
        self.depthwise = nn.Conv1d(8, 8, 5, groups=8)
        self.up = nn.ConvTranspose1d(8, 8, 2)


@pytest.mark.parametrize("layer,groups", [("conv", 1), ("grouped", 4)])
def test_a_convolutions_nm_groups_run_along_its_input_channels(layer, groups):
    """For each output channel and kernel position, every 4 consecutive input channels of a group keep their
    2 largest weights: TensorRT's sparse convolution layout, and the native runtime's rows (kernel x channels)."""
    torch.manual_seed(3)
    conv = getattr(ConvStack(), layer)
    w = conv.weight.detach()
    mask = nm_mask(w, 2, 4)
    assert mask.shape == w.shape
    out, per_group = w.shape[:2]
    for o in range(out):
        for position in np.ndindex(*w.shape[2:]):
            for c in range(0, per_group, 4):
                kept = [mask[(o, c + i, *position)].item() for i in range(4)]
                mags = [abs(w[(o, c + i, *position)].item()) for i in range(4)]
                assert sum(kept) == 2
                assert min(m for m, k in zip(mags, kept) if k) > max(m for m, k in zip(mags, kept) if not k)
    assert follows_nm(w * mask, 2, 4) and not follows_nm(w, 2, 4)
    rows = nm_rows(w)
    assert rows.shape == (out, w[0].numel()) and torch.equal(from_nm_rows(rows, w.shape), w)
    # the native runtime's matrix for the convolution: the same rows
    from edgevla.runtime.conv import conv_matrix
    np.testing.assert_array_equal(conv_matrix(w.numpy()), rows.numpy())


def test_nm_masks_take_every_layer_whose_channels_divide():
    model = ConvStack()
    assert sorted(nm_masks(model, 2, 4)) == ["conv", "grouped"]  # depthwise: 1 channel a group; transposed: never
    with pytest.raises(EdgevlaError, match="input channels per group to divide by 4, got 1"):
        nm_masks(model, 2, 4, layers=["depthwise"])
    with pytest.raises(EdgevlaError, match="no nn.Linear or convolution named 'up'"):
        nm_masks(model, 2, 4, layers=["up"])
    masks = unstructured_masks(model, 0.5)
    assert sorted(masks) == ["conv", "depthwise", "grouped"]
    for name, mask in masks.items():
        assert mask.shape == model.get_submodule(name).weight.shape
        assert float(1 - mask.mean()) == pytest.approx(0.5, abs=0.02)

def test_masks_survive_fine_tuning_and_bake_into_zeros():
    torch.manual_seed(1)
    model = TwoLayerPolicy()
    masks = nm_masks(model, 2, 4)
    assert set(masks) == {"fc1", "fc2"}
    apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.rand(8, 16), torch.randn(8, 2, 2)
    for _ in range(3):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        original = model.fc1.parametrizations.weight.original
        assert bool((original.grad[masks["fc1"] == 0] == 0).all())  # pruned weights get no gradient
        opt.step()
    assert follows_nm(model.fc1.weight, 2, 4) and follows_nm(model.fc2.weight, 2, 4)
    before = model(x).detach()
    assert remove_masks(model) == 2
    assert isinstance(model.fc1.weight, nn.Parameter) and "fc1.weight" in dict(model.named_parameters())
    torch.testing.assert_close(model(x).detach(), before, rtol=0, atol=0)
    report = {r.layer: r for r in sparsity_report(model)}
    assert report["fc1"].pattern == "2:4" and report["fc1"].sparsity == pytest.approx(0.5)


def test_a_baked_copy_leaves_the_masked_model_masked():
    torch.manual_seed(4)
    model = TwoLayerPolicy()
    apply_masks(model, nm_masks(model, 2, 4))
    x = torch.rand(8, 16)
    before = model(x).detach()
    plain = baked_copy(model)
    assert type(plain.fc1) is nn.Linear and isinstance(plain.fc1.weight, nn.Parameter)
    assert set(dict(plain.named_parameters())) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    torch.testing.assert_close(plain(x).detach(), before, rtol=0, atol=0)
    assert follows_nm(plain.fc1.weight, 2, 4)
    # The original is untouched: still masked, still computing its weight (a deep copy then remove_masks
    # would have deleted the property from the class both share, leaving it without a weight).
    torch.testing.assert_close(model(x).detach(), before, rtol=0, atol=0)
    assert remove_masks(model) == 2
    with torch.no_grad():
        plain.fc1.weight.add_(1.0)  # and the copy owns its weights
    torch.testing.assert_close(model(x).detach(), before, rtol=0, atol=0)


def test_a_baked_copy_refuses_parametrizations_it_does_not_know():
    model = TwoLayerPolicy()
    torch.nn.utils.parametrize.register_parametrization(model.fc1, "weight", nn.Identity())
    with pytest.raises(EdgevlaError, match="parametrizations other than weight masks"):
        baked_copy(model)


def test_masking_twice_multiplies_masks():
    model = TwoLayerPolicy()
    first = unstructured_masks(model, 0.5, layers=["fc1"])
    apply_masks(model, first)
    second = unstructured_masks(model, 0.75, layers=["fc1"], criterion=MagnitudeImportance())
    apply_masks(model, second)
    assert int((model.fc1.weight == 0).sum()) == round(0.75 * model.fc1.weight.numel())
    with pytest.raises(EdgevlaError, match="no layer"):
        apply_masks(model, {"nope": first["fc1"]})


def test_two_four_sparsity_is_exact_in_the_exported_weights(tmp_path):
    torch.manual_seed(2)
    model = TwoLayerPolicy()
    apply_masks(model, nm_masks(model, 2, 4))
    remove_masks(model)
    path = export_onnx(model, tmp_path / "sparse.onnx")
    proto = onnx.load(path)
    arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    refs = match_initializers(proto, model)
    for name in ("fc1.weight", "fc2.weight"):
        ref = refs[name]
        w = arrays[ref.name].T if ref.transposed else arrays[ref.name]
        assert follows_nm(torch.tensor(w), 2, 4)
        assert (w == 0).mean() == pytest.approx(0.5)
