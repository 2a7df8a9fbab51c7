"""A tiny CNN for tests and quick runs: three conv layers and one hidden fully connected layer.

Layers (w = channels x width, 48 by default): conv3x3 w -> pool -> conv3x3 2w -> pool -> conv3x3 4w -> global
average pool -> fc 4w -> num_classes; every conv has BatchNorm and ReLU.

Totals at 10 classes, batch 1 (width 48): 248,314 parameters, 22.6M FLOPs (MACs), 1.34 MB.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register, scaled


class TinyCNN(nn.Module):
    """Small enough to train on CIFAR-10 in seconds per epoch on two cores."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, channels: int = 48, width: float = 1.0):
        super().__init__()
        w = scaled(channels, width)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2), *block(2 * w, 4 * w)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, 4 * w)
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images."""
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.head(torch.relu(self.fc(x)))


@register("tiny", "tiny CNN for tests: 3 conv (BN) + 1 hidden FC, 248k params, 22.6M FLOPs")
def tiny(num_classes: int = 10, in_channels: int = 3, channels: int = 48, width: float = 1.0) -> TinyCNN:
    """The tiny test CNN: first conv ``channels`` wide (x ``width``)."""
    return TinyCNN(num_classes, in_channels, channels, width)
