"""Filter criteria: which filters of a group to remove first.

``random`` draws uniformly; ``l1`` / ``l2`` rank a group's filters by the norm of their weights
(Li et al. 2017); ``nuclear`` ranks them by the nuclear norm of each channel's output feature
maps over a batch of real inputs (energy-aware pruning, Yeom et al. 2021). For every ranking
criterion a higher score means more important, so the lowest scores go first. Scores are
computed once, on the unpruned model, from the layer that names the group (its root).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError

CRITERIA = ("random", "l1", "l2", "nuclear")


def check_criterion(criterion: str, calibration: torch.Tensor | None) -> None:
    """Raise a one-line error for an unknown criterion or a data-driven one without data."""
    if criterion not in CRITERIA:
        raise EdgepruneError(f"unknown criterion '{criterion}'; choose from: {', '.join(CRITERIA)}")
    if criterion == "nuclear" and calibration is None:
        raise EdgepruneError("criterion 'nuclear' needs a batch of real inputs (calibration data)")


def weight_norms(module: nn.Module, p: int) -> np.ndarray:
    """The l_p norm of each filter (output row) of a conv or linear layer's weight."""
    w = module.weight.detach().flatten(1)
    return torch.linalg.vector_norm(w, ord=p, dim=1).double().numpy()


def nuclear_norms(feature_maps: torch.Tensor) -> np.ndarray:
    """Per channel, the nuclear norm of its N x (H*W) matrix of feature maps over a batch."""
    n, c = feature_maps.shape[:2]
    per_channel = feature_maps.detach().double().reshape(n, c, -1).transpose(0, 1)  # C x N x HW
    return torch.linalg.svdvals(per_channel).sum(dim=1).numpy()


def _scored_module(model: nn.Module, root: str, bn: str | None) -> nn.Module:
    modules = dict(model.named_modules())
    return modules[bn] if bn else modules[root]


def filter_scores(
    model: nn.Module,
    roots: Iterable[tuple[str, str | None]],
    criterion: str,
    calibration: torch.Tensor | None = None,
) -> dict[str, np.ndarray] | None:
    """Scores per filter for each root layer (name, its BatchNorm or None); None for ``random``."""
    check_criterion(criterion, calibration)
    roots = list(roots)
    if criterion == "random":
        return None
    modules = dict(model.named_modules())
    if criterion in ("l1", "l2"):
        return {name: weight_norms(modules[name], 1 if criterion == "l1" else 2) for name, _ in roots}
    return _nuclear_scores(model, roots, calibration)


def _nuclear_scores(
    model: nn.Module, roots: list[tuple[str, str | None]], batch: torch.Tensor
) -> dict[str, np.ndarray]:
    """One forward pass with hooks; each root's (post-BatchNorm) output map is scored."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, bn in roots:

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, name: str = name) -> None:
            outputs[name] = out.detach().clone()  # clone: an in-place ReLU would rewrite it

        handles.append(_scored_module(model, name, bn).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: nuclear_norms(outputs[name]) for name, _ in roots}
