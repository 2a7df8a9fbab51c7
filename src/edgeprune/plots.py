"""Figures: per-layer complexity shares (the paper's Fig. 1) and accuracy/complexity trade-offs (Figs. 3-4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgeprune.complexity import Profile  # noqa: E402
from edgeprune.costs import PAPER_MODES as MODES  # noqa: E402
from edgeprune.costs import STATIC  # noqa: E402
from edgeprune.files import atomic_write  # noqa: E402

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
        cost = STATIC[mode]
        total = cost.total(prof)
        shares = [100 * cost.layer(layer) / total for layer in prof.layers]
        ax.bar(x + (i - 1) * width, shares, width, label=MODE_NAMES[mode])
    ax.set_xticks(x, [str(i + 1) for i in range(n)], fontsize=7 if n > 30 else 9)
    ax.set_xlabel("layer (execution order; see the profile table for names)")
    ax.set_ylabel("share of the model's total (%)")
    ax.set_title(title or "Per-layer share of complexity")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


# -- trade-off plots (the paper's Figs. 3-4) --------------------------------------------------

SERIES_STYLE = {
    "params": {"color": "tab:blue", "marker": "o", "label": "PA (params mode)"},
    "flops": {"color": "tab:orange", "marker": "s", "label": "FA (FLOPs mode)"},
    "memory": {"color": "tab:green", "marker": "^", "label": "MA (memory mode)"},
    "unpruned": {"color": "black", "marker": "*", "label": "unpruned"},
}
_OTHER_MARKERS = "DvP<>hX"


def _scatter_series(ax: plt.Axes, xs: list, ys: list, series: str, st: dict) -> object:
    """One series' points, the unpruned reference drawn larger; returns the legend handle."""
    return ax.scatter(
        xs, ys, s=150 if series == "unpruned" else 50, c=st["color"], marker=st["marker"], label=st["label"],
        zorder=3, edgecolors="white", linewidths=0.5,
    )  # fmt: skip


def _style(series: str, i: int) -> dict:
    if series in SERIES_STYLE:
        return SERIES_STYLE[series]
    return {"color": f"C{(i + 3) % 10}", "marker": _OTHER_MARKERS[i % len(_OTHER_MARKERS)], "label": series}


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal x and higher or equal y, one strictly), by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    front: list[int] = []
    best = -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


def plot_tradeoffs(
    rows: list[dict],
    path: str | Path,
    y_key: str,
    *,
    y_label: str,
    panels: list[tuple],
    title: str = "",
    y_scale: float = 1.0,
) -> None:
    """A grid of y (accuracy or a complexity) against cost panels, one series per mode, Pareto front marked.

    ``rows`` are result rows with a ``mode`` key (``unpruned`` for the reference); ``panels`` lists
    (x key, x label) or (x key, x label, (x min, x max)). In every panel lower x and higher y are
    better; the Pareto front of all points is drawn as a dashed step line with its points ringed.
    """
    n = len(panels)
    cols = 2 if n > 1 else 1
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.4 * nrows), squeeze=False)
    series = list(dict.fromkeys(r["mode"] for r in rows))
    handles: dict[str, object] = {}
    for ax, (x_key, x_label, *x_range) in zip(axes.flat, panels):
        pts = [
            (r[x_key], r[y_key] * y_scale, r["mode"])
            for r in rows
            if r.get(x_key) is not None and r.get(y_key) is not None
        ]
        for i, s in enumerate(series):
            sx = [p[0] for p in pts if p[2] == s]
            sy = [p[1] for p in pts if p[2] == s]
            if not sx:
                continue
            st = _style(s, i)
            handles.setdefault(st["label"], _scatter_series(ax, sx, sy, s, st))
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            front = pareto_front(xs, ys)
            fx, fy = [xs[i] for i in front], [ys[i] for i in front]
            (line,) = ax.step(fx, fy, where="post", color="0.35", linestyle="--", linewidth=1, zorder=2)
            ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
            handles.setdefault("Pareto front (dashed, ringed)", line)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.margins(0.08)
        if x_range and x_range[0]:
            ax.set_xlim(*x_range[0])
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(5, len(handles)),
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)


def plot_latency_flops(rows: list[dict], path: str | Path, backends: list[str], title: str = "") -> None:
    """Measured median latency against FLOPs (MACs), one panel per backend, one series per mode.

    A dashed line through the origin and the unpruned model shows the latency if it scaled with FLOPs;
    points above it realise less of their FLOPs saving than that.
    """
    fig, axes = plt.subplots(1, len(backends), figsize=(6.2 * len(backends), 4.6), squeeze=False)
    series = list(dict.fromkeys(r["mode"] for r in rows))
    handles: dict[str, object] = {}
    for ax, backend in zip(axes.flat, backends):
        key = f"{backend}_latency_median_ms"
        for i, s in enumerate(series):
            pts = [(r["flops"] / 1e6, r[key]) for r in rows if r["mode"] == s and r.get(key) is not None]
            if not pts:
                continue
            st = _style(s, i)
            handles.setdefault(st["label"], _scatter_series(ax, [p[0] for p in pts], [p[1] for p in pts], s, st))
        refs = [r for r in rows if r["mode"] == "unpruned" and r.get(key) is not None]
        if refs:
            f0 = refs[0]["flops"] / 1e6
            t0 = float(np.median([r[key] for r in refs]))
            (line,) = ax.plot([0, f0], [0, t0], color="0.5", linestyle="--", linewidth=1, zorder=1)
            handles.setdefault("latency proportional to FLOPs", line)
        ax.set_xlabel("FLOPs (MACs, millions)")
        ax.set_ylabel("median latency (ms, batch 1)")
        ax.set_title(backend)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=len(handles), frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path)


def plot_accuracy_vs_time(summary: dict, path: str | Path) -> None:
    """Accuracy against total training time, one colour per mode and one marker per method."""
    from matplotlib.lines import Line2D

    markers = {"direct": "o", "direct-matched": "P", "unweighted": "v", "uniform": "s", "l1": "^", "nuclear": "D",
               "searched": "*", "searched-matched": "X", "uniform-matched": "p", "unweighted-matched": "h"}  # fmt: skip
    colours = {"params": "tab:blue", "flops": "tab:orange", "memory": "tab:green"}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in summary["rows"]:
        ax.errorbar(
            r["train_seconds"][0], r["accuracy_pct"][0], xerr=r["train_seconds"][1], yerr=r["accuracy_pct"][1],
            marker=markers.get(r["method"], "x"), color=colours.get(r["mode"], "black"), markersize=8, capsize=3,
            linestyle="none",
        )  # fmt: skip
    b = summary["baseline"]
    ax.axhline(b["accuracy_pct"][0], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("total training time (s, every epoch counted)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary['settings']['model']}: accuracy against training time")
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=f"mode: {m}") for m, c in colours.items()
               if any(r["mode"] == m for r in summary["rows"])]  # fmt: skip
    handles += [Line2D([], [], color="black", marker=mk, linestyle="none", label=meth) for meth, mk in markers.items()
                if any(r["method"] == meth for r in summary["rows"])]  # fmt: skip
    handles.append(Line2D([], [], color="grey", linestyle="--", label="full model (baseline)"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def accuracy_curve(record: dict) -> list[float]:
    """Test accuracy (%) after each epoch of a run's whole pipeline (pre-training, then fine-tuning)."""
    return [100 * h["test_acc"] for h in record.get("history", []) if h.get("test_acc") is not None]


def plot_learning_curves(runs: list[dict], path: str | Path, title: str = "") -> None:
    """Test accuracy per epoch, one panel per mode and one line per method (the mean over seeds, min-max shaded).

    ``runs`` are the run records of a comparison (``compare.json``'s ``"runs"``). A conventional pipeline's
    epochs are counted over the whole pipeline: its pre-training (the full model's curve) then its
    fine-tuning, so a reader sees at which epoch count each network got where it is.
    """
    modes = list(dict.fromkeys(r["mode"] for r in runs if r["mode"] != "-"))
    if not modes:
        raise ValueError("no pruned runs to plot")
    methods = list(dict.fromkeys(r["method"] for r in runs if r["mode"] != "-"))
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    full = [accuracy_curve(r) for r in runs if r["mode"] == "-"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), squeeze=False, sharey=True)
    for ax, mode in zip(axes.flat, modes):
        if full:
            _mean_band(ax, full, "full model", "0.2", linestyle="--", zorder=3)
        for method in methods:
            curves = [accuracy_curve(r) for r in runs if r["mode"] == mode and r["method"] == method]
            if curves:
                _mean_band(ax, curves, method, colours[method])
        ax.set_title(f"mode: {mode}")
        ax.set_xlabel("epoch (conventional: pre-training, then fine-tuning)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test accuracy (%)")
    axes.flat[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _mean_band(
    ax: plt.Axes, curves: list[list[float]], label: str, colour: str, linestyle: str = "-", zorder: int = 2
) -> None:
    """One line: the mean over the curves, over the epochs every curve reached, with its min-max band."""
    n = min(len(c) for c in curves)
    if n == 0:
        return
    values = np.array([c[:n] for c in curves])
    x = np.arange(1, n + 1)
    seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
    ax.plot(
        x, values.mean(axis=0), color=colour, linestyle=linestyle, linewidth=1.4, label=label + seeds, zorder=zorder
    )
    if len(curves) > 1:
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15, linewidth=0)
