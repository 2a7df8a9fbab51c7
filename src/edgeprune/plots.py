"""Figures: per-layer complexity shares (the paper's Fig. 1)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgeprune.complexity import MODES, Profile  # noqa: E402
from edgeprune.io import atomic_write  # noqa: E402

MODE_NAMES = {"params": "parameters", "flops": "FLOPs (MACs)", "memory": "memory (weights + output map)"}


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Save a figure atomically as PNG and close it."""
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def plot_shares(prof: Profile, path: str | Path, title: str = "") -> None:
    """Bar chart of each layer's share of the model's params, FLOPs and memory."""
    n = len(prof.layers)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * n + 3), 4.5))
    width = 0.27
    for i, mode in enumerate(MODES):
        total = prof.total(mode)
        shares = [100 * layer.measure(mode) / total for layer in prof.layers]
        ax.bar(x + (i - 1) * width, shares, width, label=MODE_NAMES[mode])
    ax.set_xticks(x, [str(i + 1) for i in range(n)], fontsize=7 if n > 30 else 9)
    ax.set_xlabel("layer (execution order; see the profile table for names)")
    ax.set_ylabel("share of the model's total (%)")
    ax.set_title(title or "Per-layer share of complexity")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
