"""Scale-out: one small comparison run serially and as Ray tasks on a local Ray instance; wall times and their ratio.

The comparison: the tiny CNN on the shipped CIFAR-10-mini, 2 seeds x 3 modes (params, flops, memory) at
target 0.5, the direct pipeline and the l1 conventional pipeline, so 2 x (1 full + 3 x 2) = 14 training runs.
It runs twice, each as its own ``edgeprune compare`` process, timed from outside (start-up included):

- serial: the runs one after the other, each with ``--serial-threads`` threads (default: all cores);
- Ray: ``--ray --cpus-per-run 1 --threads 1``: a local Ray instance with as many 1-thread workers as cores.

Written to ``--results`` (default docs/results): scaleout.md and scaleout.json (commands, date, machine, wall
times, their ratio, the summed training seconds, and whether the two runs' accuracies agree). ``--quick``
shrinks the data and epochs so that the whole thing takes a minute or two (a check that it works, not a
measurement) and writes to runs/scaleout-quick instead.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scaleout.py            # a few minutes; quiet machine
    .venv/bin/python benchmarks/scaleout.py --quick
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import parser, utc_date, write_report

from edgeprune.measure import machine_info

ROOT = Path(__file__).resolve().parents[1]
FULL = {"epochs": 3, "finetune_epochs": 1, "limit_train": 2048, "limit_test": 1000}
QUICK = {"epochs": 1, "finetune_epochs": 1, "limit_train": 128, "limit_test": 64}


def compare_args(size: dict, data: str, out: Path) -> list[str]:
    return [
        "compare", "tiny", "--data", data, "--target", "0.5", "--modes", "params", "flops", "memory",
        "--baselines", "l1", "--seeds", "0", "1", "--epochs", str(size["epochs"]),
        "--finetune-epochs", str(size["finetune_epochs"]), "--limit-train", str(size["limit_train"]),
        "--limit-test", str(size["limit_test"]), "--batch-size", "64", "--out", str(out), "--force", "--quiet",
    ]  # fmt: skip


def timed(argv: list[str]) -> float:
    """Run ``python -m edgeprune ARGV``; its wall time in seconds."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgeprune", *argv], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"edgeprune {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def runs_of(out: Path) -> dict:
    """Each run's record in compare.json, by method, mode and seed."""
    runs = json.loads((out / "compare.json").read_text())["runs"]
    return {f"{r['method']}/{r['mode']}/s{r['seed']}": r for r in runs}


def training_seconds(runs: dict) -> float:
    """Seconds of training in all runs, a conventional run's shared pre-training counted once (with its full run)."""
    return sum(r["train_seconds"] - r["pretrain_seconds"] for r in runs.values())


def render(result: dict) -> str:
    s, w = result["settings"], result["wall_seconds"]
    m = result["machine"]
    ratio = result["speedup_serial_over_ray"]
    lines = [
        "# Scale-out: a comparison run serially and as Ray tasks",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['date']}. Machine: {m.get('processor')}, {m.get('usable_cores')} usable cores, Python "
        f"{m.get('python')}, Ray {result['ray_version']}; load average {result['load_average'][0]:.1f} at the start "
        f"and {result['load_average'][1]:.1f} at the end.",
        "",
        f"The comparison: `tiny` on cifar10-mini ({s['limit_train']} training / {s['limit_test']} test images), "
        f"seeds 0 1, modes params flops memory at target 0.5, methods direct and l1, {s['epochs']} epoch(s) and "
        f"{s['finetune_epochs']} fine-tuning epoch(s): {result['runs']} training runs. Each way is one "
        "`python -m edgeprune compare` process timed from outside (start-up, data loading and, for Ray, starting "
        "a local instance and its workers included).",
        "",
        "| way | command options | wall time (s) | training seconds, all runs |",
        "|---|---|---|---|",
        f"| serial | `--threads {s['serial_threads']}` | {w['serial']:.1f} | {result['train_seconds']['serial']:.1f} |",
        f"| Ray | `--ray --cpus-per-run 1 --threads 1` | {w['ray']:.1f} | {result['train_seconds']['ray']:.1f} |",
        "",
        f"Wall-time ratio serial / Ray: **{ratio:.2f}**. Accuracies of the two runs "
        + ("agree run for run." if result["same_accuracies"] else f"differ by up to {result['max_accuracy_diff']:.4f}")
        + (
            ""
            if s["serial_threads"] == 1 or result["same_accuracies"]
            else " (expected: the serial runs used a different thread count, and float sums depend on it; with "
            "`--serial-threads 1` they agree exactly)."
        ),
        "",
        "What two cores can show: whether two 1-thread runs side by side finish sooner than the same runs one "
        "after the other with all cores each (small convolutions use a second thread poorly, so running runs side "
        "by side can win even here); what Ray's fixed costs are (starting the instance, a worker process per task "
        "slot that imports torch, shipping the data set and each baseline's weights through the object store) "
        "against runs this short; and that the results are the same.",
        "",
        "What they cannot show: scaling beyond two workers or one machine; shared storage and network costs "
        "between nodes; a node lost mid-run; GPUs.",
    ]
    if result["load_average"][0] > 1.5:
        lines += ["", "Another job shared the cores while this ran (see the load average): neither way had both "
                  "cores to itself, and single timings are noisy."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(
        __doc__,
        quick="tiny sizes: a check that it runs, in a minute or two",
        results={
            "default": None,
            "help": "where scaleout.md/.json go (default docs/results; runs/scaleout-quick with --quick)",
        },
    )
    ap.add_argument("--data", default=str(ROOT / "data" / "cifar10-mini.tar.gz"))
    ap.add_argument("--serial-threads", type=int, default=os.cpu_count() or 1, help="threads of the serial runs")
    ap.add_argument("--work", default=None, help="folder for the two comparisons (default runs/scaleout[-quick])")
    args = ap.parse_args()
    import ray

    size = QUICK if args.quick else FULL
    work = Path(args.work or ROOT / "runs" / ("scaleout-quick" if args.quick else "scaleout"))
    results = Path(args.results or (ROOT / "runs" / "scaleout-quick" if args.quick else ROOT / "docs" / "results"))
    shutil.rmtree(work / "serial", ignore_errors=True)
    shutil.rmtree(work / "ray", ignore_errors=True)
    serial_argv = [*compare_args(size, args.data, work / "serial"), "--threads", str(args.serial_threads)]
    ray_argv = [*compare_args(size, args.data, work / "ray"), "--ray", "--cpus-per-run", "1", "--threads", "1"]
    load = [os.getloadavg()[0]]
    print("serial:", " ".join(serial_argv), flush=True)
    wall = {"serial": timed(serial_argv)}
    print(f"  {wall['serial']:.1f} s\nray:", " ".join(ray_argv), flush=True)
    wall["ray"] = timed(ray_argv)
    print(f"  {wall['ray']:.1f} s", flush=True)
    load.append(os.getloadavg()[0])
    serial, on_ray = runs_of(work / "serial"), runs_of(work / "ray")
    diffs = [abs(serial[k]["test_accuracy"] - on_ray[k]["test_accuracy"]) for k in serial]
    result = {
        "command": " ".join(["python", "benchmarks/scaleout.py", *sys.argv[1:]]),
        "date": utc_date(),
        "machine": machine_info(),
        "ray_version": ray.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": load,
        "settings": {**size, "serial_threads": args.serial_threads, "quick": args.quick},
        "commands": {"serial": ["edgeprune", *serial_argv], "ray": ["edgeprune", *ray_argv]},
        "runs": len(serial),
        "wall_seconds": wall,
        "speedup_serial_over_ray": wall["serial"] / wall["ray"],
        "train_seconds": {"serial": training_seconds(serial), "ray": training_seconds(on_ray)},
        "same_accuracies": set(serial) == set(on_ray) and max(diffs) == 0,
        "max_accuracy_diff": max(diffs),
    }
    write_report(results / "scaleout", render(result), result)
    print(f"serial / Ray wall time = {result['speedup_serial_over_ray']:.2f}; wrote {results}/scaleout.md, .json")


if __name__ == "__main__":
    main()
