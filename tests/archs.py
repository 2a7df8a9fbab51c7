"""User-style architectures for the end-to-end tests: plain torch modules, written here and not in the package.

Each factory takes keyword arguments and returns an ``nn.Module``, as a user's ``models.py`` would, so a
test can name one as ``file:tests/archs.py:resnet18``. ``ARCHS`` lists the architectures of issue 10 item 6
(``name: (factory, kwargs, input_shape)``); ``EXTRA`` lists the small nets that reproduce the failures at the
top of that issue (dense-concat + grouped conv floor, a conv called twice, a functional conv, an auxiliary
head that runs last, split/chunk, Upsample, nested containers, a channel shuffle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


# -- ResNet-18 (torchvision layout) -----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs, a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet for ImageNet-sized inputs (7x7 stride-2 stem, max-pool, four stages)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision-style ResNet-18 (11.7M parameters, 1.82 GMACs at 3x224x224 with 1000 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


# -- UNet ---------------------------------------------------------------------------------------------------


def _double(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(c_in, c_out), *_conv_bn(c_out, c_out))


class UNet(nn.Module):
    """Two down levels, ConvTranspose2d up-sampling, skip concatenation, a dense per-pixel output."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.enc1 = _double(in_channels, w1)
        self.enc2 = _double(w1, w2)
        self.bottleneck = _double(w2, w3)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _double(2 * w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _double(2 * w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def unet(num_classes: int = 2, in_channels: int = 3) -> nn.Module:
    """A small UNet for 3x64x64 inputs: output (N, num_classes, 64, 64)."""
    return UNet(num_classes, in_channels)


# -- ResNeXt ------------------------------------------------------------------------------------------------


class ResNeXtBlock(nn.Module):
    """Bottleneck 1x1 -> grouped 3x3 -> 1x1, with a projection shortcut when the shape changes."""

    def __init__(self, c_in: int, width: int, c_out: int, groups: int, stride: int = 1):
        super().__init__()
        self.reduce = _conv_bn(c_in, width, 1)
        self.grouped = _conv_bn(width, width, 3, stride, groups)
        self.expand = nn.Sequential(nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    """A CIFAR-sized ResNeXt: stem, three bottleneck blocks with grouped 3x3 convs (cardinality 8), fc."""

    def __init__(self, num_classes: int = 10, groups: int = 8):
        super().__init__()
        self.stem = _conv_bn(3, 32)
        self.blocks = nn.Sequential(
            ResNeXtBlock(32, 128, 64, groups),
            ResNeXtBlock(64, 128, 64, groups, stride=2),
            ResNeXtBlock(64, 256, 128, groups, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def resnext(num_classes: int = 10, groups: int = 8) -> nn.Module:
    """ResNeXt bottlenecks with grouped 3x3 convs for 3x32x32."""
    return ResNeXt(num_classes, groups)


# -- GroupNorm + squeeze-and-excitation ---------------------------------------------------------------------


def _conv_gn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU())


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid -> channel multiply."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = torch.sigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))
        return x * s


class GroupNormSE(nn.Module):
    """Conv + GroupNorm(8, C) blocks, an SE block, a linear head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(_conv_gn(3, 64, 2), _conv_gn(64, 128), _conv_gn(128, 256, 2))
        self.se = SqueezeExcite(256)
        self.tail = _conv_gn(256, 256)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.tail(self.se(self.features(x)))
        return self.fc(self.pool(x).flatten(1))


def gn_se(num_classes: int = 10) -> nn.Module:
    """GroupNorm(8) blocks and a squeeze-and-excitation block, 3x32x32."""
    return GroupNormSE(num_classes)


# -- grayscale 28x28 ----------------------------------------------------------------------------------------


def gray28(num_classes: int = 10) -> nn.Module:
    """A LeNet-style net for 1x28x28 (MNIST-sized) inputs: conv blocks, flatten, two linear layers."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 96, 3, padding=1),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(96 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


# -- two heads ----------------------------------------------------------------------------------------------


class TwoHead(nn.Module):
    """A shared trunk and two linear heads; forward returns (main logits, auxiliary logits)."""

    def __init__(self, num_classes: int = 10, aux_classes: int = 5):
        super().__init__()
        self.trunk = nn.Sequential(_conv_bn(3, 32), _conv_bn(32, 64, stride=2), _conv_bn(64, 128, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, num_classes)
        self.aux = nn.Linear(128, aux_classes)

    def forward(self, x):
        z = self.pool(self.trunk(x)).flatten(1)
        return self.head(z), self.aux(z)


def two_head(num_classes: int = 10, aux_classes: int = 5) -> nn.Module:
    """Shared trunk, two heads returning a tuple, 3x32x32."""
    return TwoHead(num_classes, aux_classes)


# -- nets for the failures listed in issue 10 ---------------------------------------------------------------


class DenseMixed(nn.Module):
    """Two dense-concat blocks, a grouped conv, a depthwise-separable block and a residual add.

    The grouped conv reads the concatenation of everything before it, so while grouped convs are
    never pruned, every layer that feeds it is frozen and FLOPs cannot go below 0.656.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.d1a = _conv_bn(16, 16)
        self.d1b = _conv_bn(32, 16)
        self.grouped = _conv_bn(48, 48, 3, 2, groups=4)
        self.dw = _conv_bn(48, 48, 3, 1, groups=48)
        self.pw = nn.Sequential(nn.Conv2d(48, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.d2a = _conv_bn(48, 20)
        self.d2b = _conv_bn(68, 20)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(88, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.d1a(x)], 1)
        x = torch.cat([x, self.d1b(x)], 1)
        x = self.grouped(x)
        x = F.relu(x + self.pw(self.dw(x)))
        x = torch.cat([x, self.d2a(x)], 1)
        x = torch.cat([x, self.d2b(x)], 1)
        return self.fc(self.pool(x).flatten(1))


def dense_mixed(num_classes: int = 10) -> nn.Module:
    """Dense-concat + grouped + depthwise + residual net, 3x32x32 (FLOPs were stuck at 0.66)."""
    return DenseMixed(num_classes)


class Twice(nn.Module):
    """One conv module called twice in forward (weight sharing)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.head(x)


def twice(num_classes: int = 10) -> nn.Module:
    """A conv module called twice (was counted once: -45.7% FLOPs), 3x32x32."""
    return Twice(num_classes)


class FunctionalWeight(nn.Module):
    """A conv layer whose weight is applied with ``F.conv2d`` in forward; the module itself is never called."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.post = _conv_bn(32, 32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(F.conv2d(x, self.conv.weight, self.conv.bias, padding=1))
        return self.head(self.post(x))


def functional_weight(num_classes: int = 10) -> nn.Module:
    """``F.conv2d(x, self.conv.weight)`` outside the module (was not counted: FLOPs 0.5 landed at 0.543)."""
    return FunctionalWeight(num_classes)


class AuxLast(nn.Module):
    """An auxiliary head on intermediate features, computed after the main head; returns (main, aux)."""

    def __init__(self, num_classes: int = 10, aux_classes: int = 4):
        super().__init__()
        self.block1 = _conv_bn(3, 16)
        self.block2 = _conv_bn(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)
        self.aux_conv = _conv_bn(16, 16, stride=2)
        self.aux_fc = nn.Linear(16, aux_classes)

    def forward(self, x):
        mid = self.block1(x)
        main = self.fc(self.pool(self.block2(mid)).flatten(1))
        aux = self.aux_fc(self.pool(self.aux_conv(mid)).flatten(1))
        return main, aux


def aux_last(num_classes: int = 10, aux_classes: int = 4) -> nn.Module:
    """An auxiliary head that runs last (was taken for the output layer), 3x32x32."""
    return AuxLast(num_classes, aux_classes)


class ChunkNet(nn.Module):
    """A conv whose output is split with ``torch.chunk`` into two branches, concatenated again."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 32)
        self.left = _conv_bn(16, 16)
        self.right = _conv_bn(16, 24, stride=1)
        self.post = _conv_bn(40, 32, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        return self.head(self.post(torch.cat([self.left(a), self.right(b)], 1)))


def chunk_net(num_classes: int = 10) -> nn.Module:
    """split/chunk of a conv's output channels, 3x32x32."""
    return ChunkNet(num_classes)


def upsample_net(num_classes: int = 3) -> nn.Module:
    """Down with strided convs, up with ``nn.Upsample`` (nearest, bilinear) + conv; (N, classes, 32, 32) out."""
    return nn.Sequential(
        *_conv_bn(3, 16, stride=2),
        *_conv_bn(16, 32, stride=2),
        nn.Upsample(scale_factor=2, mode="nearest"),
        *_conv_bn(32, 16),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        *_conv_bn(16, 8),
        nn.Conv2d(8, num_classes, 1),
    )


class Nested(nn.Module):
    """Stages in an ``nn.ModuleList`` of ``nn.ModuleDict``s of ``nn.Sequential``s."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        widths = [(3, 16), (16, 32), (32, 32)]
        self.stages = nn.ModuleList(
            nn.ModuleDict({"body": nn.Sequential(_conv_bn(a, b, stride=2)), "extra": nn.ModuleList([_conv_bn(b, b)])})
            for a, b in widths
        )
        self.heads = nn.ModuleDict({"cls": nn.Linear(32, num_classes)})

    def forward(self, x):
        for stage in self.stages:
            x = stage["body"](x)
            for layer in stage["extra"]:
                x = layer(x)
        return self.heads["cls"](x.mean((2, 3)))


def nested(num_classes: int = 10) -> nn.Module:
    """``nn.ModuleList`` / ``nn.ModuleDict`` / nested ``nn.Sequential`` containers, 3x32x32."""
    return Nested(num_classes)


class Shuffle(nn.Module):
    """A ShuffleNet channel shuffle (view, transpose, reshape) between two convs: it permutes the channels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.mix = _conv_bn(16, 32)
        self.post = _conv_bn(32, 32, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.mix(self.stem(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.post(x))


def shuffle(num_classes: int = 10) -> nn.Module:
    """A channel shuffle after ``mix``: a coupling Torch-Pruning's graph does not follow, 3x32x32."""
    return Shuffle(num_classes)


ARCHS = {
    "resnet18": (resnet18, {"num_classes": 1000}, (3, 224, 224)),
    "unet": (unet, {"num_classes": 2, "in_channels": 3}, (3, 64, 64)),
    "resnext": (resnext, {"num_classes": 10}, (3, 32, 32)),
    "gn_se": (gn_se, {"num_classes": 10}, (3, 32, 32)),
    "gray28": (gray28, {"num_classes": 10}, (1, 28, 28)),
    "two_head": (two_head, {"num_classes": 10, "aux_classes": 5}, (3, 32, 32)),
}

EXTRA = {
    "dense_mixed": (dense_mixed, {}, (3, 32, 32)),
    "twice": (twice, {}, (3, 32, 32)),
    "functional_weight": (functional_weight, {}, (3, 32, 32)),
    "aux_last": (aux_last, {}, (3, 32, 32)),
    "chunk_net": (chunk_net, {}, (3, 32, 32)),
    "upsample_net": (upsample_net, {}, (3, 32, 32)),
    "nested": (nested, {}, (3, 32, 32)),
    "shuffle": (shuffle, {}, (3, 32, 32)),
}

ALL = {**ARCHS, **EXTRA}
