"""MobileNetV2 for 32x32 inputs (Sandler et al. 2018, CIFAR variant).

Stem conv3x3 32 with stride 1 (not 2), then inverted-residual stages (t, c, n, s):
(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
(6, 320, 1, 1) - the second stage's stride lowered from 2 to 1 for CIFAR - then conv1x1 1280,
global average pool, dropout and fc. Each block is expand 1x1 -> depthwise 3x3 -> project 1x1,
with BatchNorm after every conv and ReLU6 after the first two; a block with stride 1 and equal
widths adds its input. An expansion conv and the depthwise conv after it are pruned together.

Totals at 10 classes, batch 1 (SPEC conventions): 2,236,682 parameters, 88.0M FLOPs (MACs),
15.51 MB of weights plus output maps. At ``width`` 0.5: 587,178 parameters, 23.7M FLOPs, 5.63 MB; at
0.25: 160,802 parameters, 6.8M FLOPs, 2.28 MB.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register, scaled

CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1), with a residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = _conv_bn_act(c_in, hidden, 1) if expand != 1 else []
        layers += _conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn_act(hidden, c_out, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted residual block."""
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with CIFAR strides."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2, width: float = 1.0):
        super().__init__()
        c = scaled(32, width)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn_act(in_channels, c, 3))]
        for t, channels, n, s in CFG:
            for i in range(n):
                layers.append(InvertedResidual(c, scaled(channels, width), s if i == 0 else 1, t))
                c = scaled(channels, width)
        last = scaled(1280, width)
        layers.append(nn.Sequential(*_conv_bn_act(c, last, 1)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenetv2", "MobileNetV2 (CIFAR strides), 2.24M params, 88.0M FLOPs")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs; ``width`` scales every conv (the expansion factor stays)."""
    return MobileNetV2(num_classes, in_channels, width=width)
