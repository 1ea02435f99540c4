"""ResNet-18 image encoder + MLP action head (Diffusion Policy / ACT style), for `edgevla bench e2e` of conv policies.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target jetson-orin --policy resnet18_policy:bn -o rn_bn`
(`:gn` for the GroupNorm variant, as Diffusion Policy uses). Random init: for latency and for
accuracy against ONNX Runtime, not for closed-loop success.
"""

import torch
import torch.nn as nn

from edgevla.spec import PolicySpec, TensorSpec


def norm(channels: int, group: bool) -> nn.Module:
    return nn.GroupNorm(channels // 16, channels) if group else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group: bool):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout, group)
        self.c2, self.n2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout, group)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout, group))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.n1(self.c1(x)))
        return torch.relu(self.n2(self.c2(y)) + self.down(x))


class ResNetPolicy(nn.Module):
    def __init__(self, group: bool = False, size: int = 96):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("rgb", (3, size, size), low=0, high=1),
                                             TensorSpec("state", (7,), low=-1, high=1)),
                               action=TensorSpec("actions", (8, 7)))
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), norm(64, group), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride, group), BasicBlock(cout, cout, 1, group)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(512 + 7, 512), nn.ReLU(), nn.Linear(512, 56))

    def forward(self, rgb, state):
        features = self.pool(self.layers(self.stem(rgb))).flatten(1)
        return self.head(torch.cat([features, state], 1)).view(-1, 8, 7)


def bn() -> ResNetPolicy:
    torch.manual_seed(0)
    return ResNetPolicy(group=False).eval()


def gn() -> ResNetPolicy:
    torch.manual_seed(0)
    return ResNetPolicy(group=True).eval()
