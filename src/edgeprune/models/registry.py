"""Name -> constructor registry, so models can be built from a name stored in model.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgeprune.errors import EdgepruneError


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
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One-line description of a registered model."""
    return _entry(name).description


def _entry(name: str) -> ModelEntry:
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
