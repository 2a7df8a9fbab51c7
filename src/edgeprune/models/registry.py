"""Name -> constructor registry, so models can be built from a name stored in model.json.

The zoo's names and descriptions are also listed in ``ZOO`` without importing torch, so ``edgeprune
models`` and ``--help`` stay light; a zoo model's file (and torch) is imported when it is first built.
A test checks that ``ZOO`` and the files' ``@register`` lines agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from torch import nn

# name -> (module that registers it, description); the same text as its @register line
ZOO: dict[str, tuple[str, str]] = {
    "alexnet": ("alexnet", "AlexNet, 5 conv (BN) + 3 FC (4096 hidden), 35.9M params, 200M FLOPs"),
    "mobilenetv2": ("mobilenetv2", "MobileNetV2 (CIFAR strides), 2.24M params, 88.0M FLOPs"),
    "resnet50": ("resnet", "ResNet-50 (bottleneck, 3x3 stem, no max-pool), 23.5M params, 1.30G FLOPs"),
    "resnet56": ("resnet", "ResNet-56 (basic blocks, 16/32/64), 0.86M params, 126M FLOPs"),
    "tiny": ("tiny", "tiny CNN for tests: 3 conv (BN) + 1 hidden FC, 248k params, 22.6M FLOPs"),
    "vgg16": ("vgg", "VGG-16 with BatchNorm, 13 conv + 3 FC (4096 hidden), 33.6M params, 332M FLOPs"),
}


@dataclass(frozen=True)
class ModelEntry:
    """A registered model constructor and its one-line description."""

    name: str
    fn: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model constructor under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, fn, description)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of all zoo and registered models, sorted."""
    return sorted(set(ZOO) | set(_REGISTRY))


def describe(name: str) -> str:
    """One-line description of a zoo or registered model."""
    if name in _REGISTRY:
        return _REGISTRY[name].description
    if name in ZOO:
        return ZOO[name][1]
    return _entry(name).description  # the one-line error


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY and name in ZOO:
        importlib.import_module(f"edgeprune.models.{ZOO[name][0]}")  # registers it
    if name not in _REGISTRY:
        raise EdgepruneError(f"unknown model '{name}'; choose from: {', '.join(list_models())}")
    return _REGISTRY[name]


def scaled(channels: int, width: float) -> int:
    """A layer's width under the width multiplier: ``round(width * channels)``, at least 1."""
    return max(1, round(width * channels))


def create(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, **kwargs: object) -> nn.Module:
    """Build a registered model by name; ``width`` scales every conv and hidden linear layer.

    The arguments are recorded on the model as ``edgeprune_builder`` for saving (``width`` only when it is not 1).
    """
    if num_classes < 1 or in_channels < 1:
        raise EdgepruneError("num_classes and in_channels must be positive integers")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 16:
        raise EdgepruneError(f"width must be a number in (0, 16], got {width!r}")
    if width != 1:
        kwargs["width"] = float(width)
    model = _entry(name).fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    model.edgeprune_builder = {"builder": f"zoo:{name}", "kwargs": kwargs}  # how edgeprune.save rebuilds it
    return model
