"""ResNets for 32x32 inputs (He et al. 2016): ResNet-50 (bottleneck) and ResNet-56 (basic).

ResNet-50: 3x3 stem conv 64 with no max-pool, then bottleneck stages [3, 4, 6, 3] of widths
64/128/256/512 (expansion 4, stride 2 on the 3x3 conv of the first block of stages 2-4),
1x1 conv + BatchNorm projection shortcuts where shapes change, global average pool, fc.
Totals at 10 classes, batch 1: 23,520,842 parameters, 1,297.8M FLOPs (MACs), 107.81 MB; at 100 classes
(CIFAR-100) and ``width`` 0.5: 5,991,300 parameters, 325.0M FLOPs, 30.83 MB; at 0.25: 1,530,356
parameters, 81.5M FLOPs, 9.55 MB.

ResNet-56: 3x3 stem conv 16, three stages of nine basic blocks (16/32/64 channels, stride 2
at stages 2-3), projection shortcuts (1x1 conv + BatchNorm, "option B") where shapes change,
global average pool, fc. Totals at 10 classes, batch 1: 855,770 parameters, 125.7M FLOPs (MACs), 5.60 MB;
at ``width`` 0.5: 215,282 parameters, 31.5M FLOPs, 1.95 MB; at 0.25: 54,494 parameters, 7.9M FLOPs, 0.76 MB.

Channels tied to a residual addition are left alone by default when pruning; the inner
channels of every block (and the stem-independent ones) are prunable.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register, scaled


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _conv_bn(c_in, width, 1, stride) if stride != 1 or c_in != width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), and a shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem without max-pool, residual stages, average pool, fc."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ):
        super().__init__()
        stem = scaled(widths[0] if block is BasicBlock else 64, width)
        widths = [scaled(w, width) for w in widths]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        c = self.conv1.out_channels
        stages = []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(c, width, stride))
                c = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages[:3]
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet50", "ResNet-50 (bottleneck, 3x3 stem, no max-pool), 23.5M params, 1.30G FLOPs")
def resnet50(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ResNet-50 for 32x32 inputs; ``width`` scales every conv."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, width)


@register("resnet56", "ResNet-56 (basic blocks, 16/32/64), 0.86M params, 126M FLOPs")
def resnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ResNet-56 for 32x32 inputs; ``width`` scales every conv."""
    return ResNet(BasicBlock, [9, 9, 9], [16, 32, 64], num_classes, in_channels, width)
