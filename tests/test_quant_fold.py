"""BatchNorm folding: exact in eval mode, and only where every reader of the convolution is the BatchNorm."""

import pytest
import torch
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.quant import FoldedNorm, fold_batch_norms
from edgevla.quant.fold import find_conv_batch_norms


def _randomize_statistics(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)


class Stack(nn.Module):
    """Conv2d (no bias) + BN, a depthwise Conv2d (bias) + BN without affine, Conv1d + BN1d, Conv3d + BN3d."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.an = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.c = nn.Conv1d(8, 6, 3, stride=2)
        self.cn = nn.BatchNorm1d(6)
        self.d = nn.Conv3d(1, 4, (1, 3, 3))
        self.dn = nn.BatchNorm3d(4)

    def forward(self, x):
        y = torch.relu(self.bn(self.b(torch.relu(self.an(self.a(x))))))
        z = self.cn(self.c(y.flatten(2)))
        w = self.dn(self.d(x[:, :1].unsqueeze(1)))
        return z.flatten(1).sum(1, keepdim=True) + w.flatten(1).mean(1, keepdim=True)


def test_fold_is_exact_and_replaces_the_norms():
    torch.manual_seed(0)
    model = Stack().eval()
    _randomize_statistics(model)
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        before = model(x)
    folded = fold_batch_norms(model, (x,))
    assert folded == [FoldedNorm("a", "an"), FoldedNorm("b", "bn"), FoldedNorm("c", "cn"), FoldedNorm("d", "dn")]
    assert all(isinstance(getattr(model, n), nn.Identity) for n in ("an", "bn", "cn", "dn"))
    assert model.a.bias is not None  # the fold gives a bias-free convolution one
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5)


def test_fold_matches_the_formula_per_channel():
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, eps=1e-3)
    model = nn.Sequential(conv, bn).eval()
    _randomize_statistics(model)
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    f = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    expected_b = (b - bn.running_mean) * f + bn.bias.detach()
    fold_batch_norms(model, (torch.randn(1, 2, 4, 4),))
    assert torch.allclose(model[0].weight, w * f.reshape(3, 1, 1, 1), rtol=1e-6)
    assert torch.allclose(model[0].bias, expected_b, rtol=1e-6, atol=1e-7)


class Shared(nn.Module):
    """The convolution's output also feeds a residual: folding would change what the residual adds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.other = nn.Conv2d(4, 4, 1)
        self.batch_stats = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y + self.batch_stats(self.other(x))


def test_unfoldable_pairs_are_left_alone():
    torch.manual_seed(2)
    model = Shared().eval()
    _randomize_statistics(model)
    x = torch.randn(2, 4, 6, 6)
    assert find_conv_batch_norms(model, (x,)) == []
    with torch.no_grad():
        before = model(x)
    assert fold_batch_norms(model, (x,)) == []
    assert isinstance(model.norm, nn.BatchNorm2d) and isinstance(model.batch_stats, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_untraceable_model_is_one_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return self.norm(self.conv(x))
            return self.conv(x)

    with pytest.raises(EdgevlaError, match="BatchNorm folding could not trace Branchy"):
        fold_batch_norms(Branchy().eval(), (torch.randn(1, 1, 3, 3),))
