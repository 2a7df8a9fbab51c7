"""edgeprune: complexity-driven CNN compression for edge devices.

The public names load on first use (PEP 562), so ``import edgeprune`` and ``edgeprune --help`` import no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it; ``prune`` is the one place that says which prune is the package's
_HOMES = {
    "EdgepruneError": "edgeprune.errors",
    "Profile": "edgeprune.complexity",
    "PruneResult": "edgeprune.pruning",
    "create": "edgeprune.models",
    "list_models": "edgeprune.models",
    "load": "edgeprune.io",
    "profile": "edgeprune.graph",
    "prune": "edgeprune.search",  # the candidate search; K = 1 is edgeprune.pruning.prune, Algorithm 1
    "save": "edgeprune.io",
}

__all__ = ["EdgepruneError", "Profile", "PruneResult", "create", "list_models", "load", "profile", "prune", "save"]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is read."""
    if name == "train":  # the package is callable: edgeprune.train(model, train_data, test_data, ...)
        return importlib.import_module("edgeprune.train")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'edgeprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included."""
    return sorted({*globals(), *__all__})
