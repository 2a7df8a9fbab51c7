"""Quiet re-timing of a comparison's pipelines (issue 13): the training-time saving with nothing else running.

A long comparison (``edgeprune compare``) runs for hours beside other work, so the epoch times it records are
taken on a shared CPU. Its accuracies do not depend on that; its time ratios do. This re-times what decides
them: for each finished run of the comparison (its saved architecture, ``<run>/model.json``), the training
step at the comparison's batch size, one thread, rounds interleaved over all networks (medians), nothing else
on the CPU. A pipeline's training time is then its epochs x steps per epoch x its step time, stage by stage:

- direct (and unweighted, uniform): ``epochs`` x step(pruned network);
- l1 / nuclear: ``epochs`` x step(full model of the same seed) + ``finetune_epochs`` x step(pruned network).

The saving against l1 (``1 - direct / l1``) is written beside the saving from the run's own epoch times
(``pipelines.steady_seconds``), so the two can be compared. Writes ``quiet_times.json`` and ``quiet_times.md``
into ``--out``; ``benchmarks/verdict.py`` reads the JSON. Pause background work first. A study carried over
between machines in its records (``benchmarks/carry_records.py``) keeps only the networks trained on this one;
the others are rebuilt from the comparison's settings (the full model fresh; the direct network pruned at
initialisation, which is deterministic; an l1 / nuclear network with the direct one's layer sizes, the same
lottery's) and timed only when their parameters and FLOPs equal the run's record. Step time depends on the
layer sizes, not the weights.

    .venv/bin/python benchmarks/pipeline_time.py runs/conv_vgg16_w025 --data ../shared/data/cifar10-mini.tar.gz \\
        --out docs/results/convergence_vgg16_w025  # --steps 4 --rounds 12 by default
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
from common import parser, runs_provenance, write_report
from torch import nn

import edgeprune
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.measure import machine_info
from edgeprune.pipelines import CompareSettings, RunContext, make_context, pruned_at_init
from edgeprune.records import run_tag, steady_seconds
from edgeprune.trace import record_shapes
from edgeprune.train import TrainConfig, TrainStep

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("full", "direct", "l1", "nuclear")  # the methods the time claim compares


def step_seconds(steps: dict[str, TrainStep], n: int, rounds: int, batch: int) -> dict[str, float]:
    """Median seconds per training step of each network, over ``rounds`` interleaved rounds of ``n`` steps."""
    gen = torch.Generator().manual_seed(0)
    size = len(next(iter(steps.values())).labels)
    for step in steps.values():  # warm-up: the first steps allocate and pick kernels
        for _ in range(2):
            step(torch.randint(size, (batch,), generator=gen), 0.01)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            index = [torch.randint(size, (batch,), generator=gen) for _ in range(n)]
            start = time.perf_counter()
            for i in index:
                step(i, 0.01)
            times[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(t) for name, t in times.items()}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far, all cores (idle, iowait and steal not counted)."""
    t = psutil.cpu_times()
    return t.user + t.system + sum(getattr(t, k, 0.0) for k in ("nice", "irq", "softirq"))


def others_share(busy_before: float, own_before: float, wall_before: float) -> float:
    """The share of the machine's CPU time that other processes used since the marks (0 = a quiet machine)."""
    others = busy_seconds() - busy_before - (time.process_time() - own_before)
    return max(0.0, others / ((time.perf_counter() - wall_before) * (os.cpu_count() or 1)))


Networks = tuple[dict[str, dict], dict[str, nn.Module], list[str]]  # runs, their networks, the tags rebuilt


def networks(compare: dict, folder: Path, data: ImageDataset) -> Networks:
    """The comparison's finished runs of the timed methods by run folder name, each one's network (loaded from its
    folder, else rebuilt and checked against its record; a run whose network cannot be had is left out), and the
    names of those rebuilt."""
    ctx = make_context(CompareSettings(**compare["settings"]), data, folder, progress=False)
    runs, models, rebuilt = {}, {}, []
    for r in compare["runs"]:
        tag = run_tag(r["method"], r["mode"], r["seed"])
        if r["method"] not in TIMED:
            continue
        if (folder / tag / "model.json").is_file():
            models[tag] = edgeprune.load(folder / tag)
        elif (model := rebuild(ctx, r)) is not None:
            models[tag] = model
            rebuilt.append(tag)
        else:
            continue
        runs[tag] = r
    return runs, models, rebuilt


def rebuild(ctx: RunContext, run: dict) -> nn.Module | None:
    """The run's network rebuilt from the comparison's settings (the full model fresh, any other the direct
    network's layer sizes), when its parameters and FLOPs come out as the run recorded; else None."""
    seed = run["seed"]
    model = ctx.fresh(seed) if run["method"] == "full" else pruned_at_init(ctx, "direct", run["mode"], seed)
    totals = record_shapes(model, torch.zeros(1, *ctx.shape)).totals()
    return model if (totals["params"], totals["flops"]) == (run["params"], run["flops"]) else None


def savings(compare: dict, runs: dict[str, dict], step: dict[str, float]) -> list[dict]:
    """Per mode and seed: the direct and l1 pipelines' quiet seconds per training image, and both savings."""
    epochs, finetune = compare["settings"]["epochs"], compare["settings"]["finetune_epochs"]
    rows = []
    for tag, r in sorted(runs.items()):
        full, l1 = run_tag("full", "-", r["seed"]), run_tag("l1", r["mode"], r["seed"])
        if r["method"] != "direct" or full not in runs or l1 not in runs:
            continue
        direct_s = epochs * step[tag]
        l1_s = epochs * step[full] + finetune * step[l1]
        in_run = 1 - steady_seconds(r["history"]) / steady_seconds(runs[l1]["history"])
        rows.append({"mode": r["mode"], "seed": r["seed"], "direct_step_s": step[tag], "full_step_s": step[full],
                     "l1_step_s": step[l1], "quiet_saving": 1 - direct_s / l1_s, "in_run_saving": in_run})  # fmt: skip
    return rows


def repeatability(step: dict[str, float]) -> list[str]:
    """The full models of all seeds share one architecture: how far apart their step times came out."""
    full = [v for k, v in step.items() if k.startswith("full-")]
    if len(full) < 2:
        return []
    spread = 100 * (max(full) - min(full)) / min(full)
    return [f"Repeatability: the full models of {len(full)} seeds (one architecture) differ by {spread:.1f}%.", ""]


def markdown(meta: dict, step: dict[str, float], rows: list[dict]) -> str:
    """The report."""
    lines = [
        f"# Quiet re-timing of `{meta['runs']}`",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']}, commit {meta['commit']}, {meta['machine']['processor']}, torch "
        f"{meta['machine'].get('torch')}, other processes' share of the CPU while timing: "
        f"{100 * meta['others_cpu_share']:.1f}%, one thread, batch "
        f"{meta['batch']}, {meta['rounds']} interleaved rounds of {meta['steps']} steps (medians). "
        "Pipeline time = epochs x step time per stage (the comparison's epochs: "
        f"{meta['epochs']} + {meta['finetune_epochs']} of fine-tuning).",
        "",
        "| mode | seed | direct step (ms) | full step (ms) | l1 network step (ms) | saving, quiet | saving, in run |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['mode']} | {r['seed']} | {1e3 * r['direct_step_s']:.1f} | {1e3 * r['full_step_s']:.1f} | "
          f"{1e3 * r['l1_step_s']:.1f} | {100 * r['quiet_saving']:.0f}% | {100 * r['in_run_saving']:.0f}% |"
          for r in rows),
        "",
        "Every network's step (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(step.items())),
        "",
        *([f"Rebuilt from the comparison's settings (their folders are gone; parameters and FLOPs checked against "
           f"the records): {', '.join(meta['rebuilt'])}.", ""] if meta.get("rebuilt") else []),
        *repeatability(step),
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Re-time one comparison's networks and write quiet_times.json/.md."""
    p = parser(__doc__, out={"required": True, "help": "folder for quiet_times.json and quiet_times.md"})
    p.add_argument("runs", help="the comparison's --out folder (with compare.json and a folder per run)")
    p.add_argument("--data", required=True, help="a data set of the comparison's image size (the mini set will do)")
    # short rounds, many of them: a slow stretch of a shared VM then spreads over every network alike
    p.add_argument("--steps", type=int, default=4, help="steps per network per round (default 4)")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds (default 12)")
    args = p.parse_args()
    folder = Path(args.runs)
    compare = json.loads((folder / "compare.json").read_text())
    torch.set_num_threads(1)
    data: ImageDataset = load_dataset(args.data)
    runs, models, rebuilt = networks(compare, folder, data)
    if not runs:
        sys.exit(f"{folder}: no finished full/direct/l1/nuclear runs whose network could be loaded or rebuilt")
    batch = compare["settings"]["batch_size"]
    config = TrainConfig(epochs=1, batch_size=batch, seed=0)
    steps = {tag: TrainStep(model, data, config, torch.Generator().manual_seed(0)) for tag, model in models.items()}
    marks = busy_seconds(), time.process_time(), time.perf_counter()
    step = step_seconds(steps, args.steps, args.rounds, batch)
    others = others_share(*marks)
    rows = savings(compare, runs, step)
    meta = {
        **runs_provenance(folder), "machine": machine_info(), "others_cpu_share": others,
        "batch": batch, "steps": args.steps, "rebuilt": rebuilt,
        "rounds": args.rounds,
        "epochs": compare["settings"]["epochs"], "finetune_epochs": compare["settings"]["finetune_epochs"],
    }  # fmt: skip
    record = {**meta, "step_seconds": step, "savings": rows}
    write_report(Path(args.out) / "quiet_times", markdown(meta, step, rows), record, indent=1, newline=False, echo=True)


if __name__ == "__main__":
    main()
