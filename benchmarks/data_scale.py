"""Data sets larger than memory: memory-mapped images against in-memory ones, and resident memory on a set 1.5x RAM.

Two measurements in one run (issue 29, item 2):

(1) throughput: one generated CIFAR-shaped set (50,000 training images of 3x32x32, written in the image cache's
    file format) is opened twice, once held in memory and once memory-mapped (``read_cache_file`` with an
    in-memory budget above and below its size). The same training step (``edgeprune.train.TrainStep``: seeded
    indices, random crop + flip, normalisation, forward, backward, SGD on the zoo's tiny CNN, one thread) runs on
    each, interleaved in rounds whose order alternates; images/s per round, the ratio mapped / memory per round
    (paired: both paths see the same load), and their medians. Goal: mapped / memory >= 0.9. The input pipeline
    alone (``TrainStep.batch``: gather, augment, normalise) is timed the same way, for the record.
(2) resident memory: a set of ``--scale`` x this machine's RAM (default 1.5; uint8 3x32x32 images generated
    straight into the cache file format, no PNGs) is opened in a fresh process as ``edgeprune train`` would open
    it (the switch decides: over half the memory available, so memory-mapped; its checksum verified in chunks)
    and a tiny model trains ``--steps`` steps of 128 shuffled images on it. The process's resident memory
    (VmRSS, its anonymous and file-backed parts) is sampled every 10 steps, and its peak (VmHWM) kept. Goal: flat,
    far under RAM. If the disk lacks room for the set, the largest set that fits (leaving 4 GB) is used, and the
    report says so. The generated file is deleted at the end.

The machine may be shared with other work: the report says so, and (1) is paired per round for that reason.

    .venv/bin/python benchmarks/data_scale.py [--rounds 7] [--steps 300] [--scale 1.5] [--work runs/data_scale]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, provenance, run_locked, write_report
from common import parser as common_parser

import edgeprune
from edgeprune.data import ImageDataset, channel_stats
from edgeprune.data.bounds import FACTS, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, Caps
from edgeprune.data.cache import cache_meta, default_max_data_bytes, read_cache_file
from edgeprune.data.memmap import is_mapped, storage_note, write_image_file
from edgeprune.files import atomic_write
from edgeprune.train import TrainConfig, TrainStep

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
BATCH = 128
CLASSES = [str(i) for i in range(10)]
CAPS = Caps(MAX_IMAGE_PIXELS, MAX_FILE_BYTES, 1 << 50)  # the benchmark's own generated files
DISK_SPARE = 4 << 30  # bytes left free on the disk when the large set is sized to fit
BLOCK = 32768  # images generated (and written) at a time


def _rss() -> dict:
    """This process's resident memory now (bytes): VmRSS, VmHWM (peak), RssAnon, RssFile."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(line.split()[1]) * 1024
    return fields


def _ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def generate(path: Path, n_train: int, n_test: int, seed: int = 0) -> float:
    """Write a cache file of ``n_train`` + ``n_test`` images of SHAPE straight from numpy; return the seconds taken.

    Images: one random block of BLOCK images, each later block XOR-ed with its number and rolled, so no two
    blocks are alike; labels random.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (BLOCK, *SHAPE), dtype=np.uint8)

    def batches():
        k = 0
        for split, n in (("train", n_train), ("test", n_test)):
            for start in range(0, n, BLOCK):
                b = min(BLOCK, n - start)
                x = np.roll(base[:b] ^ np.uint8(k % 251), k % 7, axis=0)
                yield split, x, rng.integers(0, len(CLASSES), b)
                k += 1

    meta = cache_meta(CLASSES, "benchmarks/data_scale.py (generated)", dict.fromkeys(FACTS, 0))
    counts = {"train": n_train, "test": n_test}
    t0 = time.perf_counter()
    atomic_write(path, lambda p: write_image_file(p, CLASSES, SHAPE, counts, batches(), meta))
    return time.perf_counter() - t0


def open_set(path: Path, budget: int | None) -> ImageDataset:
    """The generated set as ``edgeprune train`` holds it: memory or mapped by ``budget`` (None: half the RAM free)."""
    hit = read_cache_file(path, CAPS, budget)
    if hit is None:
        raise RuntimeError(f"{path}: unreadable")
    (train_x, train_y, test_x, test_y, classes), content = hit
    mean, std = channel_stats(train_x)
    data = ImageDataset(path.stem, classes, train_x, train_y, test_x, test_y, mean, std)
    data._content_hash = content
    return data


# -- (1) throughput, interleaved ---------------------------------------------------------------------------------


def _stepper(data: ImageDataset, seed: int) -> TrainStep:
    torch.manual_seed(seed)
    model = edgeprune.create("tiny")
    config = TrainConfig(epochs=1, batch_size=BATCH, seed=seed)
    return TrainStep(model, data, config, torch.Generator().manual_seed(seed))


def _timed(stepper: TrainStep, perm: torch.Tensor, start: int, steps: int, full: bool) -> float:
    """Images per second over ``steps`` steps (``full``: training steps; else the input pipeline alone)."""
    t0 = time.perf_counter()
    for s in range(steps):
        index = perm[(start + s) * BATCH % (len(perm) - BATCH) :][:BATCH]
        if full:
            stepper(index, 0.05)
        else:
            stepper.batch(index)
    return steps * BATCH / (time.perf_counter() - t0)


def throughput(path: Path, rounds: int, steps: int) -> dict:
    """Training steps (and the input pipeline alone) on the same file held in memory and mapped, interleaved."""
    held, mapped = open_set(path, 1 << 50), open_set(path, 0)
    assert not is_mapped(held.train_x) and is_mapped(mapped.train_x)
    paths = {"memory": held, "mapped": mapped}
    out = {}
    for kind, full in (("train_step", True), ("input_only", False)):
        steppers = {name: _stepper(data, 0) for name, data in paths.items()}
        perm = torch.randperm(len(held.train_y), generator=torch.Generator().manual_seed(1))
        for stepper in steppers.values():
            _timed(stepper, perm, 0, 5, full)  # warm-up, not kept
        per_round = {name: [] for name in paths}
        for r in range(rounds):
            order = list(paths) if r % 2 == 0 else list(paths)[::-1]
            for name in order:
                per_round[name].append(round(_timed(steppers[name], perm, r * steps, steps, full), 1))
        ratios = [round(b / a, 4) for a, b in zip(per_round["memory"], per_round["mapped"], strict=True)]
        out[kind] = {
            "images_per_s": per_round,
            "median_images_per_s": {k: round(statistics.median(v), 1) for k, v in per_round.items()},
            "ratio_per_round": ratios,
            "median_ratio": round(statistics.median(ratios), 4),
        }
    return out


# -- (2) resident memory on a set larger than RAM, in a fresh process -----------------------------------------


def rss_child(path: Path, steps: int) -> dict:
    """Open ``path`` as train would and run ``steps`` training steps on it; resident memory along the way."""
    torch.set_num_threads(1)
    samples = [{"at": "started", **_rss()}]
    t0 = time.perf_counter()
    budget = default_max_data_bytes()
    data = open_set(path, None)
    opened = time.perf_counter() - t0
    samples.append({"at": "opened (checksum verified)", **_rss()})
    stepper = _stepper(data, 0)
    perm = torch.randperm(len(data.train_y), generator=stepper.generator)  # as one epoch of train draws it
    samples.append({"at": "epoch permutation drawn", **_rss()})
    t1 = time.perf_counter()
    for s in range(steps):
        stepper(perm[s * BATCH : (s + 1) * BATCH], 0.05)
        if (s + 1) % 10 == 0:
            samples.append({"at": f"step {s + 1}", **_rss()})
    seconds = time.perf_counter() - t1
    return {
        "file_bytes": path.stat().st_size,
        "train_images": len(data.train_y),
        "in_memory_budget_bytes": budget,
        "mapped": is_mapped(data.train_x),
        "storage": storage_note(data.train_x),
        "open_seconds": round(opened, 1),
        "steps": steps,
        "train_images_per_s": round(steps * BATCH / seconds, 1),
        "samples": samples,
        "peak_rss_bytes": _rss()["VmHWM"],
    }


def resident_memory(path: Path, steps: int) -> dict:
    """:func:`rss_child` in a fresh process (its peak is its own, not the generator's)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--rss-child", str(path), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the training process failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _large_size(work: Path, scale: float) -> tuple[int, str]:
    """Training images of the large set: ``scale`` x RAM of them, or as many as the disk holds (and why)."""
    ram = _ram()
    row = math.prod(SHAPE)
    want = math.ceil(scale * ram / row)
    free = shutil.disk_usage(work).free
    fits = max(0, (free - DISK_SPARE) // (row + 8))
    if want <= fits:
        return want, f"{scale:g} x RAM ({ram / 2**30:.1f} GiB)"
    return int(fits), (
        f"the largest set the disk holds: {fits * row / ram:.2f} x RAM, not {scale:g} x (free disk "
        f"{free / 2**30:.1f} GiB)"
    )


# -- the report --------------------------------------------------------------------------------------------------


def _markdown(result: dict) -> str:
    t, r = result["throughput"], result["rss"]
    gb = 1e9
    lines = [
        "# Data larger than memory: memory-mapped images (issue 29, item 2)",
        "",
        f"`{result['command']}` at {result['date']}, commit {result['commit']}"
        f"{' (uncommitted changes)' if result['dirty'] else ''}; machine: {result['machine']}.",
        "",
        "**The machine was shared** with other engineers' work (2 cores) while this ran, once; the throughput "
        "rounds interleave the two paths and alternate their order, and the ratio is taken within each round.",
        "",
        "## 1. Training throughput: memory-mapped against in memory, the same data",
        "",
        f"{result['small_images']:,} training images of 3x32x32 (a cache file of "
        f"{result['small_file_bytes'] / 1e6:.0f} MB, in the page cache), the zoo's tiny CNN, batch {BATCH}, one "
        f"thread, {result['rounds']} rounds of {result['round_steps']} steps per path.",
        "",
        "| measured | in memory, img/s (median) | mapped, img/s (median) | mapped / memory, per round | median ratio |",
        "|---|---|---|---|---|",
    ]
    for kind, label in (("train_step", "training step (goal >= 0.9)"), ("input_only", "input pipeline alone")):
        m = t[kind]
        ratios = ", ".join(f"{v:.2f}" for v in m["ratio_per_round"])
        lines.append(
            f"| {label} | {m['median_images_per_s']['memory']:,.0f} | {m['median_images_per_s']['mapped']:,.0f} | "
            f"{ratios} | **{m['median_ratio']:.3f}** |"
        )
    verdict = "met" if t["train_step"]["median_ratio"] >= 0.9 else "not met"
    lines += [
        "",
        f"Goal mapped / memory >= 0.9 on the training step: **{verdict}** ({t['train_step']['median_ratio']:.3f}).",
        "",
        "## 2. Resident memory training on a set larger than RAM",
        "",
        f"Set: {r['train_images']:,} training images, a {r['file_bytes'] / gb:.1f} GB file ({result['large_why']}); "
        f"RAM {result['ram_bytes'] / gb:.1f} GB. Generated straight into the file format in "
        f"{result['generate_seconds']:.0f} s.",
        "",
        f"- the switch: {'memory-mapped' if r['mapped'] else 'held in memory'} (in-memory budget, half the memory "
        f"available: {r['in_memory_budget_bytes'] / gb:.1f} GB); `{r['storage']}`",
        f"- opened (checksum verified in 16 MiB chunks) in {r['open_seconds']:.0f} s",
        f"- {r['steps']} training steps of {BATCH} shuffled images: {r['train_images_per_s']:,.0f} img/s "
        "(rows read from disk: the file does not fit the page cache)",
        f"- **peak resident memory (VmHWM): {r['peak_rss_bytes'] / 1e6:,.0f} MB**, "
        f"{100 * r['peak_rss_bytes'] / result['ram_bytes']:.1f}% of RAM, for a file "
        f"{r['file_bytes'] / result['ram_bytes']:.2f}x RAM",
        "",
        "| when | VmRSS MB | anonymous MB | file-backed MB |",
        "|---|---|---|---|",
    ]
    for s in r["samples"]:
        if not s["at"].startswith("step") or s["at"] in ("step 10", f"step {r['steps']}") or s["at"].endswith("00"):
            lines.append(
                f"| {s['at']} | {s['VmRSS'] / 1e6:,.0f} | {s['RssAnon'] / 1e6:,.0f} | {s['RssFile'] / 1e6:,.0f} |"
            )
    steps_rss = [s["VmRSS"] for s in r["samples"] if s["at"].startswith("step")]
    if steps_rss:
        lines += [
            "",
            f"During training VmRSS stayed between {min(steps_rss) / 1e6:,.0f} and {max(steps_rss) / 1e6:,.0f} MB "
            f"(every 10 steps in `data_scale.json`): a batch's rows are read with `pread`, not through the mapping "
            "(a page fault would map a whole large folio of the page cache into the process), so resident memory "
            "does not grow with the set; the file-backed part stays flat.",
        ]
    lines += ["", "The generated files were deleted after the run.", ""]
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run both measurements under the work folder's lock, write the report."""
    p = common_parser(
        __doc__,
        results={"default": str(RESULTS), "help": "where data_scale.md/.json go (default docs/results)"},
        quick="small sets (a 200 MB 'large' set), results in the work folder: a check of the script",
    )
    p.add_argument("--work", default=str(ROOT / "runs" / "data_scale"), help="where the generated files go")
    p.add_argument("--rounds", type=int, default=7, help="throughput rounds per path (default 7)")
    p.add_argument("--round-steps", type=int, default=30, help="steps per round (default 30)")
    p.add_argument("--steps", type=int, default=300, help="training steps on the large set (default 300)")
    p.add_argument("--scale", type=float, default=1.5, help="the large set's size, x RAM (default 1.5)")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # the fresh process of measurement (2)
    args = p.parse_args()
    if args.rss_child:
        print(json.dumps(rss_child(Path(args.rss_child), args.steps)))
        return
    work = Path(args.work)
    results = work if args.quick else Path(args.results)

    def run(command: str) -> dict:
        return measure(work, args, command)

    def write(result: dict) -> None:
        write_report(results / "data_scale", _markdown(result), result, echo=True)

    run_locked(__file__, work, run, write)


def measure(work: Path, args: object, command: str) -> dict:
    """Both measurements; the generated files removed whatever happens."""
    torch.set_num_threads(1)
    small, large = work / "small.safetensors", work / "large.safetensors"
    try:
        n_small = 4096 if args.quick else 50_000
        generate(small, n_small, 1000)
        result = {**provenance(__file__), "command": command, "ram_bytes": _ram()}
        result |= {"small_images": n_small, "small_file_bytes": small.stat().st_size}
        result |= {"rounds": args.rounds, "round_steps": args.round_steps}
        print(f"throughput: {args.rounds} rounds x {args.round_steps} steps per path", file=sys.stderr, flush=True)
        result["throughput"] = throughput(small, args.rounds, args.round_steps)
        small.unlink()
        n_large, why = (65536, "quick check: 0.2 GB") if args.quick else _large_size(work, args.scale)
        print(f"generating {n_large:,} images ({n_large * 3072 / 1e9:.1f} GB): {why}", file=sys.stderr, flush=True)
        result["generate_seconds"] = round(generate(large, n_large, 1000), 1)
        result["large_why"] = why
        print(f"training {args.steps} steps on it in a fresh process", file=sys.stderr, flush=True)
        result["rss"] = resident_memory(large, args.steps)
        return result
    finally:
        for path in (small, large):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
