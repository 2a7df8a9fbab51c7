"""The two pipelines of the paper, and the baselines, run side by side on one model and data set.

- ``direct`` (the paper's): build the model, prune it at initialisation with Algorithm 1 (random
  filters, layers drawn by complexity share), train the pruned network once.
- ``unweighted``: the same, but the layer lottery ignores complexity (uniform), which measures
  what the complexity weighting itself is worth.
- ``uniform``: uniform width scaling - every layer keeps the same fraction of its filters, the
  smallest fraction that fits - trained from scratch.
- ``l1`` / ``nuclear`` (conventional): train the full model, rank filters by weight l1 norm or by
  the nuclear norm of their feature maps, prune to the same target, fine-tune.

Training time counts every epoch a pipeline runs: a conventional pipeline's includes the full
model's pre-training, which the run trains once and shares between them.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeprune.complexity import MODES, reduction
from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.io import ModelRef, is_folder_ref, resolve
from edgeprune.pruning import check_seed, prune
from edgeprune.trace import record_shapes
from edgeprune.train import TrainConfig, TrainResult, train

DIRECT = "direct"
MATCHED = "direct-matched"  # the direct pipeline trained as long as the conventional one
AT_INIT = {DIRECT: "weighted", "unweighted": "uniform", "uniform": "ratio", MATCHED: "weighted"}  # -> layer selection
CONVENTIONAL = ("l1", "nuclear")
BASELINES = ("l1", "nuclear", "uniform", "unweighted")
KEYS = {"params": "params", "flops": "flops", "memory": "memory_bytes"}


@dataclass
class RunRecord:
    """What one pipeline run measured: accuracy, complexity, and every second of training."""

    method: str
    mode: str
    seed: int
    target: float
    test_accuracy: float
    params: int
    flops: int
    memory_bytes: int
    train_seconds: float  # all epochs of this pipeline, pre-training included
    pretrain_seconds: float
    epochs: int  # all epochs of this pipeline, pre-training included
    history: list[dict]


@dataclass
class CompareSettings:
    """One comparison: model, targets per mode, methods, epochs and seeds.

    ``model`` is a reference (zoo name, ``package.module:factory``, ``path/file.py:factory``) built
    fresh, after seeding, for every run, with ``model_args`` and the data set's classes and channels.
    """

    model: str
    targets: dict[str, float]
    baselines: tuple[str, ...] = BASELINES
    epochs: int = 10
    finetune_epochs: int = 5
    seeds: tuple[int, ...] = (0,)
    step: float = 0.1
    conventional_layers: str = "weighted"  # Algorithm 1's lottery, or "ratio" (one ratio for every layer)
    num_classes: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128
    calibration_images: int = 256
    time_matched: bool = False  # also train the direct network for the conventional pipeline's training time
    width: float = 1.0  # the zoo's width multiplier (a factory gets it only when it is not 1)
    model_args: dict = field(default_factory=dict)  # keyword arguments of the reference's factory
    threads: int | None = None  # CPU threads per training run (default: all cores)


def _totals(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    return record_shapes(model, torch.zeros(1, *shape)).totals()


def calibration_batch(data: ImageDataset, n: int, seed: int) -> torch.Tensor:
    """``n`` training images chosen by ``seed``, normalised as in training (for the nuclear criterion)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[: min(n, len(data.train_y))]
    x = data.train_x[idx].float() / 255
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _record(method: str, mode: str, seed: int, target: float, model: nn.Module, shape: tuple, runs: list[TrainResult]):
    totals = _totals(model, shape)
    history = [dict(h, stage=i) for i, r in enumerate(runs) for h in r.history]
    return RunRecord(
        method, mode, seed, target, runs[-1].test_accuracy, totals["params"], totals["flops"], totals["memory_bytes"],
        sum(r.train_seconds for r in runs), runs[0].train_seconds if len(runs) > 1 else 0.0, len(history), history,
    )  # fmt: skip


def matched_epochs(runs: list[RunRecord]) -> int:
    """Epochs of the direct network that fit in the conventional pipeline's measured time (l1 first), at least 1."""
    direct = next(r for r in runs if r.method == DIRECT)
    reference = next(r for m in CONVENTIONAL for r in runs if r.method == m)
    return max(1, int(reference.train_seconds // (direct.train_seconds / direct.epochs)))


def run_comparison(
    settings: CompareSettings, data: ImageDataset, out_dir: str | Path, progress: bool = True, resume: bool = False
) -> dict:
    """Run every method x mode x seed; write records and tables; return the summary.

    With ``resume``, runs finished in ``out_dir`` are read back from their checkpoints (their measured
    training seconds included) and an interrupted one continues from its last epoch. The tables are
    rewritten after every mode, so a long comparison shows its finished part while it runs.
    """
    if settings.time_matched and not set(settings.baselines) & set(CONVENTIONAL):
        raise EdgepruneError("time-matched training needs a conventional pipeline (l1 or nuclear) among the baselines")
    if not settings.seeds:
        raise EdgepruneError("no seeds given")
    for seed in settings.seeds:
        check_seed(seed)
    unknown = set(settings.baselines) - set(BASELINES)
    if unknown:
        raise EdgepruneError(f"unknown baseline(s) {sorted(unknown)}; choose from: {', '.join(BASELINES)}")
    for mode in settings.targets:
        if mode not in MODES:
            raise EdgepruneError(f"unknown mode '{mode}'; choose from: {', '.join(MODES)}")
    if is_folder_ref(settings.model):
        raise EdgepruneError(f"{settings.model}: compare trains from scratch; give a zoo name or a model reference")
    out = Path(out_dir)
    shape = data.input_shape()
    classes = settings.num_classes or data.num_classes
    ref = ModelRef(
        settings.model, dict(settings.model_args), width=settings.width if settings.width != 1 else None
    ).with_data(classes, shape)
    records: list[RunRecord] = []
    baseline: dict[int, RunRecord] = {}

    def config(epochs: int, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs, seed=seed, optimizer=settings.optimizer, lr=settings.lr, batch_size=settings.batch_size
        )

    def fresh() -> nn.Module:
        return resolve(ref).model

    def log(text: str) -> None:
        if progress:
            print(text, flush=True)

    def at_init(method: str, mode: str, target: float, seed: int, epochs: int) -> RunRecord:
        torch.manual_seed(seed)
        pruned = prune(fresh(), mode, target, settings.step, seed, "random", input_shape=shape,
                       selection=AT_INIT[method]).model  # fmt: skip
        log(f"[seed {seed}] {method} {mode}: pruned at init, training {epochs} epochs")
        result = train(pruned, data, config(epochs, seed), out / f"{method}-{mode}-s{seed}", resume, progress,
                       threads=settings.threads)  # fmt: skip
        return _record(method, mode, seed, target, pruned, shape, [result])

    for seed in settings.seeds:
        torch.manual_seed(seed)
        full = fresh()
        log(f"[seed {seed}] training the full {settings.model} for {settings.epochs} epochs (baseline, pre-training)")
        pre = train(full, data, config(settings.epochs, seed), out / f"full-s{seed}", resume, progress,
                    threads=settings.threads)  # fmt: skip
        baseline[seed] = _record("full", "-", seed, 1.0, full, shape, [pre])
        calibration = calibration_batch(data, settings.calibration_images, seed)
        for mode, target in settings.targets.items():
            methods = [m for m in AT_INIT if m in (DIRECT, *settings.baselines)]
            mine = [at_init(m, mode, target, seed, settings.epochs) for m in methods]
            for method in [b for b in settings.baselines if b in CONVENTIONAL]:
                pruned = prune(
                    copy.deepcopy(full), mode, target, settings.step, seed, method, input_shape=shape,
                    selection=settings.conventional_layers, calibration=calibration,
                ).model  # fmt: skip
                log(f"[seed {seed}] {method} {mode}: ranked and pruned the trained model, fine-tuning "
                    f"{settings.finetune_epochs} epochs")  # fmt: skip
                tune = train(pruned, data, config(settings.finetune_epochs, seed), out / f"{method}-{mode}-s{seed}",
                             resume, progress, threads=settings.threads)  # fmt: skip
                mine.append(_record(method, mode, seed, target, pruned, shape, [pre, tune]))
            if settings.time_matched:
                mine.append(at_init(MATCHED, mode, target, seed, matched_epochs(mine)))
            records.extend(mine)
            done = list(baseline.values())
            write_outputs(summarise(records, done, settings), records, done, out)
    summary = summarise(records, list(baseline.values()), settings)
    write_outputs(summary, records, list(baseline.values()), out)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def summarise(records: list[RunRecord], baselines: list[RunRecord], settings: CompareSettings) -> dict:
    """The paper's table: baseline figures, then per method and mode the changes, mean and std over seeds."""
    base_acc = {b.seed: b.test_accuracy for b in baselines}
    b0 = baselines[0]
    rows = []
    for mode in settings.targets:
        reference = [r for r in records if r.mode == mode and r.method == "l1"] or [
            r for r in records if r.mode == mode and r.method in CONVENTIONAL
        ]
        ref_seconds = _mean_std([r.train_seconds for r in reference])[0] if reference else None
        for method in dict.fromkeys(r.method for r in records if r.mode == mode):
            runs = [r for r in records if r.mode == mode and r.method == method]
            delta = _mean_std([100 * (r.test_accuracy - base_acc[r.seed]) for r in runs])
            acc = _mean_std([100 * r.test_accuracy for r in runs])
            seconds = _mean_std([r.train_seconds for r in runs])
            row = {
                "method": method,
                "mode": mode,
                "target": runs[0].target,
                "seeds": [r.seed for r in runs],
                "accuracy_pct": acc,
                "accuracy_change_pts": delta,
                "flops_reduction_pct": _mean_std([reduction(b0.flops, r.flops) for r in runs]),
                "memory_reduction_pct": _mean_std([reduction(b0.memory_bytes, r.memory_bytes) for r in runs]),
                "params_reduction_pct": _mean_std([reduction(b0.params, r.params) for r in runs]),
                "epochs": _span([r.epochs for r in runs]),
                "train_seconds": seconds,
                "time_ratio_to_conventional": seconds[0] / ref_seconds if ref_seconds else None,
            }
            rows.append(row)
    return {
        "settings": asdict(settings),
        "baseline": {
            "accuracy_pct": _mean_std([100 * b.test_accuracy for b in baselines]),
            "flops": b0.flops,
            "memory_mb": b0.memory_bytes / 1e6,
            "params_m": b0.params / 1e6,
            "train_seconds": _mean_std([b.train_seconds for b in baselines]),
            "epochs": b0.epochs,
        },
        "rows": rows,
        "conventions": "accuracy change in points against the full model trained as long as the direct pipeline; "
        "reductions against the full model; time ratio = mean training seconds / the l1 conventional pipeline's "
        "(pre-training included), measured in the same run; FLOPs = multiply-adds (MACs); MB = 10^6 bytes"
        + (f"; {MATCHED} = the direct pipeline's network trained for as many epochs as fit in the conventional "
           "pipeline's measured time" if settings.time_matched else ""),
    }  # fmt: skip


def _span(values: list[int]) -> int | str:
    """One number when every seed agrees, else 'min-max'."""
    return values[0] if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _pm(pair: tuple[float, float] | list[float], digits: int = 2) -> str:
    mean, std = pair
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if digits else f"{mean:.0f} ± {std:.0f}"


def markdown_table(summary: dict) -> str:
    """The comparison as a Markdown table in the paper's form."""
    b = summary["baseline"]
    acc, acc_sd = b["accuracy_pct"]
    lines = [
        f"Baseline (full model, {b['epochs']} epochs): accuracy {acc:.2f}% ± {acc_sd:.2f}, "
        f"FLOPs {b['flops'] / 1e6:.1f}M (MACs), memory {b['memory_mb']:.2f} MB, parameters {b['params_m']:.3f}M, "
        f"training {b['train_seconds'][0]:.0f} s",
        "",
        "| method | mode | target | accuracy (%) | Δ accuracy (pts) | FLOPs ↓ (%) | memory ↓ (%) | params ↓ (%) "
        "| epochs | training time (s) | time / conventional |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        ratio = f"{r['time_ratio_to_conventional']:.2f}" if r["time_ratio_to_conventional"] is not None else "-"
        lines.append(
            f"| {r['method']} | {r['mode']} | {r['target']} | {r['accuracy_pct'][0]:.2f} ± {r['accuracy_pct'][1]:.2f} "
            f"| {_pm(r['accuracy_change_pts'])} | {r['flops_reduction_pct'][0]:.2f} "
            f"| {r['memory_reduction_pct'][0]:.2f} | {r['params_reduction_pct'][0]:.2f} | {r['epochs']} "
            f"| {_pm(r['train_seconds'], 0)} | {ratio} |"
        )
    return "\n".join(lines) + "\n\n" + summary["conventions"] + "\n"


CSV_COLUMNS = (
    "method", "mode", "target", "accuracy_pct", "accuracy_pct_std", "accuracy_change_pts", "accuracy_change_pts_std",
    "flops_reduction_pct", "memory_reduction_pct", "params_reduction_pct", "epochs", "train_seconds",
    "train_seconds_std", "time_ratio_to_conventional",
)  # fmt: skip


def csv_rows(summary: dict) -> list[list]:
    """The rows of the CSV, means and standard deviations in separate columns."""
    rows = []
    for r in summary["rows"]:
        rows.append(
            [r["method"], r["mode"], r["target"], *r["accuracy_pct"], *r["accuracy_change_pts"],
             r["flops_reduction_pct"][0], r["memory_reduction_pct"][0], r["params_reduction_pct"][0], r["epochs"],
             *r["train_seconds"], r["time_ratio_to_conventional"]]
        )  # fmt: skip
    return rows


def write_outputs(summary: dict, records: list[RunRecord], baselines: list[RunRecord], out: Path) -> None:
    """compare.md, compare.csv, compare.json (with every run's record) and compare.png."""
    import csv
    import io

    from edgeprune.files import atomic_write
    from edgeprune.plots import plot_accuracy_vs_time

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(summary))
    atomic_write(out / "compare.csv", lambda p: p.write_text(buf.getvalue()))
    atomic_write(out / "compare.md", lambda p: p.write_text(markdown_table(summary)))
    write_json(out / "compare.json", {**summary, "runs": [asdict(r) for r in baselines + records]})
    plot_accuracy_vs_time(summary, out / "compare.png")
