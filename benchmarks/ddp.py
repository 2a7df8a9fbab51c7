"""Multi-process training: torchrun with 2 processes x 1 thread against 1 process x 2 threads, images/s.

Both train the same model on the same images for the same epochs and seed (``edgeprune train``, fresh
folders); the images/s of each is training images x epochs / the training seconds it records in
train.json (start-up, data loading and test passes excluded). Each configuration runs ``--repeats`` times,
alternating, and the medians are compared. Written to ``--results`` (default docs/results): ddp.md and
ddp.json with the commands, date, commit, machine and every run's figures.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ddp.py            # quiet machine, a few minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import commit_id, utc_date, write_report
from common import parser as common_parser

from edgeprune.measure import machine_info

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(args: argparse.Namespace, out: Path, threads: int) -> list[str]:
    """The ``edgeprune train`` arguments of one run."""
    return [
        "train", args.model, "--data", args.data, "--epochs", str(args.epochs), "--limit-train", str(args.limit_train),
        "--limit-test", "256", "--batch-size", str(args.batch_size), "--threads", str(threads), "--seed", "0",
        "--quiet", "--out", str(out),
    ]  # fmt: skip


def command(kind: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The full command line of one configuration: ``ddp`` (torchrun, 2 x 1 thread) or ``single`` (1 x 2)."""
    if kind == "ddp":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "edgeprune"]  # fmt: skip
        return launcher + train_args(args, out, 1)
    return [sys.executable, "-m", "edgeprune", *train_args(args, out, 2)]


def run(kind: str, args: argparse.Namespace, work: Path, i: int) -> dict:
    """Train once; its images/s, training seconds and test accuracy from train.json."""
    out = work / f"{kind}-{i}"
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(command(kind, args, out), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{kind} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads((out / "train.json").read_text())
    images = record["data"]["train"] * record["epochs"]
    return {
        "images_per_s": images / record["train_seconds"],
        "train_seconds": record["train_seconds"],
        "test_accuracy": record["test_accuracy"],
        "processes": record.get("processes", 1),
    }


def render(result: dict) -> str:
    """The markdown report."""
    a, s = result["ddp"], result["single"]
    lines = [
        "# Multi-process training on this CPU: torchrun 2 x 1 thread against 1 process x 2 threads",
        "",
        f"Measured {result['date']} at commit `{result['commit'][:10]}` on {result['machine']['cpu_count']} cores "
        f"(load average {result['machine']['load_average_1m']:.1f} at the start), torch {result['machine']['torch']}.",
        "",
        "```sh",
        f"OMP_WAIT_POLICY=PASSIVE .venv/bin/python {' '.join(result['command'])}",
        "```",
        "",
        f"Model `{result['settings']['model']}`, {result['settings']['limit_train']:,} training images, "
        f"{result['settings']['epochs']} epochs, global batch {result['settings']['batch_size']}, seed 0; "
        f"{result['settings']['repeats']} runs of each, alternating.",
        "",
        "| configuration | images/s (median) | runs | test accuracy |",
        "|---|---|---|---|",
        f"| 1 process x 2 threads | {s['median']:.0f} | {', '.join(f'{r:.0f}' for r in s['runs'])} | "
        f"{s['accuracy']:.4f} |",
        f"| torchrun 2 processes x 1 thread (gloo) | {a['median']:.0f} | {', '.join(f'{r:.0f}' for r in a['runs'])} | "
        f"{a['accuracy']:.4f} |",
        "",
        f"**Ratio (2 x 1 over 1 x 2): {result['ratio']:.2f}.**",
        "",
        "The test accuracies differ because BatchNorm normalises each process's share of a batch on its own "
        "(no SyncBatchNorm on gloo/CPU), so the two are different trainings of the same data stream; the "
        "images, their order and augmentation are the same (tests/test_distributed.py).",
        "",
        "What two cores can show: whether data parallelism over processes costs or gains against the same two "
        "cores used as threads inside one process (gradient all-reduce over gloo and two copies of the model "
        "against one process's intra-op threading). What they cannot show: the case DDP exists for, more "
        "cores or machines than one process can use; on a cluster each process brings its own cores, so "
        "the images/s add up while one process stays where it is.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both configurations, write ddp.md and ddp.json."""
    parser = common_parser(__doc__, results={"default": str(ROOT / "docs" / "results")})
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--data", default=str(ROOT / "data" / "cifar10-mini.tar.gz"))
    parser.add_argument("--limit-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = machine_info()
    figures: dict[str, list[dict]] = {"ddp": [], "single": []}
    with tempfile.TemporaryDirectory(prefix="edgeprune-ddp-") as tmp:
        for i in range(args.repeats):
            for kind in ("single", "ddp"):
                figures[kind].append(run(kind, args, Path(tmp), i))
                print(kind, i, f"{figures[kind][-1]['images_per_s']:.0f} img/s", flush=True)
    summary = {
        k: {
            "median": statistics.median(r["images_per_s"] for r in v),
            "runs": [r["images_per_s"] for r in v],
            "accuracy": v[0]["test_accuracy"],
        }
        for k, v in figures.items()
    }
    commit = commit_id()
    result = {
        "date": utc_date("iso"),
        "commit": commit,
        "machine": info,
        "command": ["benchmarks/ddp.py", *sys.argv[1:]],
        "settings": vars(args),
        **summary,
        "ratio": summary["ddp"]["median"] / summary["single"]["median"],
        "runs": figures,
    }
    results = Path(args.results)
    write_report(results / "ddp", render(result), result)
    print(render(result))


if __name__ == "__main__":
    main()
