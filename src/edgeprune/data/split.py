"""Held-out splits of a training set (stratified per class, by seed) and the centre crop of evaluation images.

One split function, :func:`stratified_holdout`, serves ``--val-fraction`` (``dataset.with_validation``) and any
proxy or early stopping that ranks on held-out training images (``dataset.holdout``).
"""

from __future__ import annotations

import math

import torch

from edgeprune.errors import EdgepruneError


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre ``height`` x ``width`` of every image of [N, C, H, W], starting at ``(H - height) // 2``."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width].contiguous()


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out), each sorted: ``round(fraction * n)`` images held out, the same share of every class.

    Each class's images are put in a seeded random order; the k-th of a class of n_c gets the quantile
    (k + 0.5) / n_c, and the images of the lowest quantiles are held out (ties in the seeded order), so every
    class gives ``fraction`` of its images to within one. A class's last image is never held out.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise EdgepruneError(f"the held-out fraction must be between 0 and 1, got {fraction!r}")
    n = len(labels)
    if n < 2:
        raise EdgepruneError(f"a held-out split needs at least 2 training images, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm].long()
    counts = torch.bincount(shuffled)
    order = torch.argsort(shuffled, stable=True)  # grouped by class, the seeded order kept within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[shuffled[order]]
    size = counts[shuffled]
    quantile = (rank.double() + 0.5) / size.double()
    quantile[rank == size - 1] = math.inf  # every class keeps at least one training image
    take = torch.argsort(quantile, stable=True)[: min(n - 1, max(1, round(fraction * n)))]
    take = take[torch.isfinite(quantile[take])]
    if len(take) == 0:
        raise EdgepruneError("cannot hold out images: every class has a single training image")
    held = torch.zeros(n, dtype=torch.bool)
    held[perm[take]] = True
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()


__all__ = ["center_crop", "stratified_holdout"]
