"""AlexNet for 32x32 inputs (Krizhevsky et al. 2012, CIFAR variant).

Layers: conv3x3 64 -> pool -> conv3x3 192 -> pool -> conv3x3 384 -> conv3x3 256 ->
conv3x3 256 -> pool (map 256x4x4), each conv followed by BatchNorm and ReLU (BatchNorm added
so it trains from scratch without the original's local response normalisation), then fully
connected 4096 -> 4096 -> 4096 -> num_classes with dropout: two wide hidden layers as in the
original, holding most of the parameters.

Totals at 10 classes, batch 1 (SPEC conventions): 35,856,330 parameters (2.25M in conv),
200.5M FLOPs (MACs), 144.15 MB of weights plus output maps. At 100 classes (CIFAR-100) and ``width``
0.5: 9,161,796 parameters, 50.8M FLOPs, 37.01 MB; at 0.25: 2,343,252 parameters, 13.0M FLOPs, 9.55 MB.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register, scaled


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    """Five conv layers and three fully connected layers."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 4096,
        dropout: float = 0.5,
        width: float = 1.0,
    ):
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
        hidden = scaled(hidden, width)
        self.features = nn.Sequential(
            *_conv(in_channels, c1),
            nn.MaxPool2d(2),
            *_conv(c1, c2),
            nn.MaxPool2d(2),
            *_conv(c2, c3),
            *_conv(c3, c4),
            *_conv(c4, c5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 32x32 images."""
        return self.classifier(torch.flatten(self.features(x), 1))


@register("alexnet", "AlexNet, 5 conv (BN) + 3 FC (4096 hidden), 35.9M params, 200M FLOPs")
def alexnet(num_classes: int = 10, in_channels: int = 3, hidden: int = 4096, width: float = 1.0) -> AlexNet:
    """AlexNet for 32x32 inputs; ``width`` scales every conv and hidden layer."""
    return AlexNet(num_classes, in_channels, hidden, width=width)
