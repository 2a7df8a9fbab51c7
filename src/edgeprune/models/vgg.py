"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2015, CIFAR variant).

Layers: 13 conv3x3 (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M), each followed
by BatchNorm and ReLU; after five 2x2 max-pools the map is 512x1x1, then fully connected
512 -> 4096 -> 4096 -> num_classes (ReLU + dropout between), the wide hidden layers of the
original VGG, which is why parameter- and FLOP-driven pruning pick different layers.

Totals at 10 classes, batch 1 (SPEC conventions): 33,642,442 parameters (14.7M in conv,
18.9M in the classifier), 332.1M FLOPs (MACs), 135.71 MB of weights plus output maps. At ``width`` 0.5:
8,425,450 parameters, 83.5M FLOPs, 34.27 MB; at 0.25: 2,113,786 parameters, 21.1M FLOPs, 8.74 MB.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register, scaled

CFG_16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm: a conv feature stack and a three-layer classifier."""

    def __init__(
        self,
        cfg: list,
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 4096,
        dropout: float = 0.5,
        width: float = 1.0,
    ):
        super().__init__()
        cfg = [v if v == "M" else scaled(v, width) for v in cfg]
        hidden = scaled(hidden, width)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images."""
        return self.classifier(torch.flatten(self.features(x), 1))


@register("vgg16", "VGG-16 with BatchNorm, 13 conv + 3 FC (4096 hidden), 33.6M params, 332M FLOPs")
def vgg16(num_classes: int = 10, in_channels: int = 3, hidden: int = 4096, width: float = 1.0) -> VGG:
    """VGG-16 (BN) for 32x32 inputs; ``width`` scales every conv and hidden layer."""
    return VGG(CFG_16, num_classes, in_channels, hidden, width=width)
