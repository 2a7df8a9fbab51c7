"""Time Algorithm 1 against Torch-Pruning's own progressive loop, side by side, on ResNet-50.

Both prune a fresh CIFAR ResNet-50 until it has at most 30% of its FLOPs (MACs):
- edgeprune: ``edgeprune.prune(model, "flops", 0.3)`` - the whole lottery runs on recorded
  layer shapes, then the dependency graph cuts each group once;
- Torch-Pruning: ``BasePruner`` + ``RandomImportance``, stepping (``pruner.step()``) and
  re-counting MACs with ``tp.utils.count_ops_and_params`` after each step until the target.
Runs are interleaved; medians are reported. Usage:

    .venv/bin/python benchmarks/prune_speed.py [--repeats 3] [--target 0.3] [--out docs/results/prune_speed.md]
        [--note "other work shared the CPU"]

The report records the machine's load average before and after the runs (other processes sharing the CPU slow
both methods; the ratio, measured side by side in one run, is what to compare) and the commit it ran at.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
import torch_pruning as tp
from common import git_commit, json_text, write_text
from common import parser as common_parser

import edgeprune
from edgeprune.trace import record_shapes


def run_edgeprune(target: float) -> tuple[float, int, int]:
    model = edgeprune.create("resnet50")
    t0 = time.perf_counter()
    result = edgeprune.prune(model, "flops", target, seed=0)
    seconds = time.perf_counter() - t0
    return seconds, result.report()["after"]["flops"], len(result.plan.steps)


def run_torch_pruning(target: float, iterative_steps: int) -> tuple[float, int, int]:
    model = edgeprune.create("resnet50")
    x = torch.zeros(1, 3, 32, 32)
    goal = target * record_shapes(model, x).total("flops")
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.RandomImportance(),
        pruning_ratio=0.95,
        iterative_steps=iterative_steps,
        ignored_layers=[model.fc],
    )
    steps = 0
    macs, _ = tp.utils.count_ops_and_params(model, x)
    while macs > goal and steps < iterative_steps:
        pruner.step()
        steps += 1
        macs, _ = tp.utils.count_ops_and_params(model, x)
    seconds = time.perf_counter() - t0
    return seconds, record_shapes(model, x).total("flops"), steps


def main() -> None:
    parser = common_parser(__doc__, out={"default": "docs/results/prune_speed.md"})
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--tp-steps", type=int, default=100, help="Torch-Pruning iterative_steps (granularity)")
    parser.add_argument("--note", default="", help="a line on the conditions of the run, written in the report")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {"edgeprune": [], "torch-pruning": []}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        rows["edgeprune"].append(run_edgeprune(args.target))
        rows["torch-pruning"].append(run_torch_pruning(args.target, args.tp_steps))
    load_after = os.getloadavg()[0]
    commit = git_commit(short=True)
    base = record_shapes(edgeprune.create("resnet50"), torch.zeros(1, 3, 32, 32)).total("flops")
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            "median_seconds": statistics.median(r[0] for r in runs),
            "all_seconds": [round(r[0], 3) for r in runs],
            "flops_after": runs[-1][1],
            "flops_fraction": runs[-1][1] / base,
            "steps": runs[-1][2],
        }
    ratio = summary["torch-pruning"]["median_seconds"] / summary["edgeprune"]["median_seconds"]
    cmd = f"python benchmarks/prune_speed.py --repeats {args.repeats} --target {args.target} --tp-steps {args.tp_steps}"
    lines = [
        "# Pruning speed: ResNet-50 to 30% of its FLOPs",
        "",
        f"Command: `{cmd}`  ",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"torch-pruning {metadata.version('torch-pruning')}; "
        f"{args.repeats} interleaved repeats, median shown.  ",
        f"Commit {commit['commit']}{' with uncommitted changes' if commit['dirty'] else ''}; load average (1 min) "
        f"{load_before:.2f} before and {load_after:.2f} after the runs, on {os.cpu_count()} CPUs."
        + (f"  \n{args.note}" if args.note else ""),
        "",
        f"Unpruned CIFAR ResNet-50: {base / 1e6:.1f}M FLOPs (MACs). Target: {args.target:.0%} of that.",
        "",
        "| method | median time (s) | all runs (s) | steps | FLOPs after | fraction of original |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['median_seconds']:.2f} | {s['all_seconds']} | {s['steps']} | "
            f"{s['flops_after'] / 1e6:.1f}M | {s['flops_fraction']:.3f} |"
        )
    lines += [
        "",
        f"Torch-Pruning's loop / edgeprune: **{ratio:.1f}x** the time.",
        "",
        "edgeprune records the layer shapes and builds Torch-Pruning's dependency graph from one forward pass, "
        "runs the lottery on the recorded shapes (no forward pass per step), cuts each channel group once at the "
        "end and checks the cut against the modules' shapes; Torch-Pruning's progressive loop cuts the model and "
        "re-counts "
        "its MACs with a forward pass at every step. Torch-Pruning's BasePruner prunes every layer by "
        "the same ratio per step (residual-tied channels included), so its result is a different "
        "network; this benchmark compares the cost of reaching the budget, not the networks.",
    ]
    out = Path(args.out)
    write_text(out, "\n".join(lines) + "\n")
    conditions = {"load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(), "note": args.note}
    record = {"command": cmd, **commit, "conditions": conditions, "ratio": ratio, **summary}
    write_text(out.with_suffix(".json"), json_text(record))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
