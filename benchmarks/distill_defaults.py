"""Distillation defaults (issue 26, item 4): which alpha and temperature help a pruned student most, small scale.

A trained full model (the teacher: ``edgeprune train vgg16 --width 0.25 ...``, a model folder) teaches the direct
network of the paper pruned from the same architecture at initialisation (Algorithm 1, flops target, one seed per
run), trained from scratch with ``edgeprune.train.train(..., teacher=..., distill=...)``; every (alpha,
temperature) of the grid, and alpha 0 without a teacher (plain training), for each seed, with the same data order
and augmentation. Reports the test accuracy of every run, the mean over seeds per setting and its gain over plain
training, and the load each run trained under (edgeprune.train.busy). Writes ``distill_defaults.md`` and
``.json`` into ``--results``; the run folders go to ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_defaults.py --teacher runs/distill_defaults/teacher \\
        --data data/cifar10-mini.tar.gz --out runs/distill_defaults --threads 1
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from common import RESULTS, parser, provenance, write_report

import edgeprune
from edgeprune.data import load_dataset
from edgeprune.io import load
from edgeprune.pruning import prune
from edgeprune.train import Distill, TrainConfig, train
from edgeprune.train.busy import load_figures


def _student(args, seed: int, shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    """The direct network: the architecture built after ``seed``, pruned at initialisation to the flops target."""
    torch.manual_seed(seed)
    model = edgeprune.create(args.model, num_classes=classes, width=args.width)
    return prune(model, budget={"flops": args.target}, seed=seed, input_shape=shape).model


def _settings(args) -> list[tuple[float, float]]:
    """(alpha, temperature) of every run: alpha 0 (no teacher) once, then the grid."""
    return [(0.0, 1.0)] + [(a, t) for a in args.alphas for t in args.temperatures]


def _run(args, data, teacher, seed: int, alpha: float, temperature: float) -> dict:
    """Train one student (resumed when its folder holds a finished run) and return what it measured."""
    out = Path(args.out) / f"s{seed}-a{alpha:g}-t{temperature:g}"
    done = out / "train.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        accuracy, seconds = summary["test_accuracy"], summary["train_seconds"]
    else:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed)
        kd = {"teacher": teacher, "distill": Distill(alpha, temperature)} if alpha > 0 else {}
        student = _student(args, seed, data.input_shape(), data.num_classes)
        result = train(student, data, config, out, progress=False, threads=args.threads, **kd)
        accuracy, seconds, history = result.test_accuracy, result.train_seconds, result.history
    print(f"seed {seed} alpha {alpha:g} T {temperature:g}: {100 * accuracy:.2f}% in {seconds:.0f} s", flush=True)
    return {"seed": seed, "alpha": alpha, "temperature": temperature, "test_accuracy": accuracy,
            "train_seconds": seconds, **load_figures([history])}  # fmt: skip


def _table(runs: list[dict], seeds: list[int]) -> tuple[str, list[dict]]:
    """The markdown table per setting (mean over seeds, gain over plain training), and its rows."""
    plain = {r["seed"]: r["test_accuracy"] for r in runs if r["alpha"] == 0}
    rows = []
    for key in dict.fromkeys((r["alpha"], r["temperature"]) for r in runs):
        mine = [r for r in runs if (r["alpha"], r["temperature"]) == key]
        gains = [100 * (r["test_accuracy"] - plain[r["seed"]]) for r in mine]
        rows.append({"alpha": key[0], "temperature": key[1],
                     "accuracy_pct": statistics.mean(100 * r["test_accuracy"] for r in mine),
                     "per_seed_pct": [round(100 * r["test_accuracy"], 2) for r in mine],
                     "gain_pts": statistics.mean(gains), "under_load": any(r["under_load"] for r in mine)})  # fmt: skip
    lines = ["| alpha | T | accuracy (%) | per seed | gain over plain (pts) |", "|---|---|---|---|---|"]
    for r in rows:
        name = ("0 (no teacher)", "-") if r["alpha"] == 0 else (f"{r['alpha']:g}", f"{r['temperature']:g}")
        seeds_text = " / ".join(f"{a:.2f}" for a in r["per_seed_pct"])
        lines.append(f"| {name[0]} | {name[1]} | {r['accuracy_pct']:.2f} | {seeds_text} | {r['gain_pts']:+.2f} |")
    return "\n".join(lines), rows


def main() -> None:
    """Run the grid and write the report."""
    p = parser(__doc__, out={"required": True, "help": "folder of the runs"},
               results={"default": str(RESULTS), "help": "folder of distill_defaults.md/.json"},
               threads={"default": 1, "help": "threads per run (default 1)"})  # fmt: skip
    p.add_argument("--teacher", required=True, help="the trained full model (a model folder)")
    p.add_argument("--data", default="data/cifar10-mini.tar.gz")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--target", default="0.25", help="the student's flops target (default 0.25)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    args = p.parse_args()
    data = load_dataset(args.data)
    teacher = load(args.teacher)
    teacher_summary = json.loads((Path(args.teacher) / "train.json").read_text())
    runs = [_run(args, data, teacher, s, a, t) for s in args.seeds for a, t in _settings(args)]
    table, rows = _table(runs, args.seeds)
    best = max((r for r in rows if r["alpha"] > 0), key=lambda r: r["accuracy_pct"])
    loaded = sum(r["under_load"] for r in runs)
    md = "\n".join([
        "# Distillation defaults (small-scale measurement)", "",
        f"Command: `OMP_NUM_THREADS=1 {provenance()['command']}`", "",
        f"Teacher: `{args.teacher}` ({args.model} width {args.width}, {teacher_summary['epochs']} epochs, "
        f"test accuracy {100 * teacher_summary['test_accuracy']:.2f}%). Student: the same architecture pruned "
        f"at initialisation to {args.target} of its FLOPs (Algorithm 1, the run's seed), trained from scratch "
        f"{args.epochs} epochs, batch {args.batch_size}, on {data.name} ({len(data.train_y)} train / "
        f"{len(data.test_y)} test images); seeds {', '.join(map(str, args.seeds))}. Gains are against the same "
        "student trained without a teacher "
        "(same seed, data order and augmentation).", "",
        table, "",
        f"Best setting here: alpha {best['alpha']:g}, T {best['temperature']:g} ({best['gain_pts']:+.2f} points).",
        f"Runs taken under load (edgeprune.train.busy): {loaded} of {len(runs)} (times only; accuracy is unaffected).",
        "",
        "This is a small-scale measurement (a mini data set of 5,000 training images, a few epochs, "
        f"{len(args.seeds)} seeds, a 1,000-image test set whose standard error is about 1.4 points per run): it "
        "chooses sensible defaults, it does not establish the best setting for other models, data or budgets.",
    ])  # fmt: skip
    record = {**provenance(), "args": vars(args), "teacher": teacher_summary, "runs": runs, "settings": rows,
              "best": best}  # fmt: skip
    write_report(Path(args.results) / "distill_defaults", md + "\n", record, echo=True)


if __name__ == "__main__":
    main()
