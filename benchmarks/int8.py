"""Int8 for the edge: fp32 against int8 on onnxruntime for VGG-16, MobileNetV2 and ResNet-56, unpruned and pruned.

For each model (``--models``, default vgg16 mobilenetv2 resnet56, built at ``--width``, default 1) four variants
are trained from scratch on CIFAR-10 (``--data``) for the same ``--epochs`` (default 3) with the same settings
and ``--seed``: the unpruned model, and the model pruned at initialisation (``edgeprune.prune``, Algorithm 1,
random criterion, same seed) in each mode to ``--target`` (default 0.5) *of its own cost in that mode*:
``prune(model, "params", 0.5)`` halves the parameters, ``prune(model, "flops", 0.5)`` the FLOPs and
``prune(model, "memory", 0.5)`` the memory. So only the flops variant is at 50% of the FLOPs; the params and
memory variants land wherever halving their own cost takes them (the tables give every variant's parameters
and FLOPs as a share of the unpruned model's). This is not latency_realisation.py's bisection, which puts
every mode at 50% FLOPs.

Each trained variant is exported to fp32 ONNX (``edgeprune.export.export_onnx``, checked against PyTorch in
onnxruntime), quantized to int8 (``edgeprune.quantize.quantize_onnx``: onnxruntime static quantization, QDQ,
int8 weights per output channel and int8 activations, ``--calibration-method`` minmax on
``--calibration-images`` 256 training images) and measured:

- test top-1 accuracy of both files in onnxruntime and the drop in points (``edgeprune.quantize.int8_check``);
- size on disk of both files;
- onnxruntime latency at batch 1 for each of ``--threads`` (default 1 and 2): all the fp32 and int8 files of one
  model (every variant) are timed interleaved, round-robin, in one process per thread count
  (``edgeprune.measure.latency_interleaved``, as in latency_realisation.py), ``--runs`` rounds after
  ``--warmup``, repeated in ``--processes`` fresh processes; latency = median over the processes of each
  process's median, speed-up = median over the processes of fp32 median / int8 median of the same variant;
- the energy estimate per inference of both files, ``energy_estimate(onnx_profile(file))`` (45 nm figures,
  fp32 or int8 by what the graph stores; see ``edgeprune.measure``).

The CPU's integer dot-product instructions (``lscpu`` flags avx512f, avx512_vnni, avx_vnni, amx_tile, amx_int8)
and the onnxruntime version are recorded with the results.

Resumable: trained models, their .onnx files and accuracy checks are kept in ``--work`` (default
runs/int8-bench), one folder per model, width, data set, epochs, seed and training limit, one subfolder per
variant; whatever is already there is reused, and a training run that was interrupted resumes from its last
epoch's checkpoint. Latency is measured afresh on every run, so that all the files of a model are timed
under the same conditions.

Writes ``--results``/int8.md and int8.json (default docs/results; int8-w0.5.md and int8-w0.5.json at ``--width
0.5``, so runs at two widths do not overwrite each other): the exact command, date, commit, machine,
settings, a table per model and a TODO line for the interpretation, which whoever ran it writes.
``--quick`` is a smoke test (tiny CNN, 256 training images, 1 epoch, 5 timing rounds) that writes to
runs/int8-quick instead.

    .venv/bin/python benchmarks/int8.py --data /work/shared/data/cifar10.tar.gz    # about 2 h on 2 quiet cores
    .venv/bin/python benchmarks/int8.py --data /work/shared/data/cifar10.tar.gz --width 0.5   # about 1 h
    .venv/bin/python benchmarks/int8.py --quick                                   # under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import git_commit, parser, run_locked, write_report
from torch import nn

import edgeprune
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.energy import energy_estimate
from edgeprune.export import export_onnx
from edgeprune.files import write_json
from edgeprune.measure import Prepared, latency_interleaved, machine_info, prepare
from edgeprune.onnx_graph import onnx_profile
from edgeprune.quantize import DEFAULT_METHOD, METHODS, int8_check, quantize_onnx
from edgeprune.trace import record_shapes
from edgeprune.train import CHECKPOINT_FILE, SUMMARY_FILE, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
MODES = ("params", "flops", "memory")
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
MB = 1e6
TODO = "TODO - interpretation: written by whoever ran it."
FULL = {
    "models": ["vgg16", "mobilenetv2", "resnet56"],
    "limit_train": None,
    "limit_test": None,
    "epochs": 3,
    "runs": 100,
    "warmup": 10,
    "processes": 3,
    "work": str(ROOT / "runs/int8-bench"),
    "results": str(ROOT / "docs/results"),
}
QUICK = {
    "models": ["tiny"],
    "limit_train": 256,
    "limit_test": 1000,
    "epochs": 1,
    "runs": 5,
    "warmup": 2,
    "processes": 2,
    "work": str(ROOT / "runs/int8-quick"),
    "results": str(ROOT / "runs/int8-quick"),
}


# -- settings and machine -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--quick`` or full-run defaults filled in where an option was not given."""
    p = parser(
        __doc__,
        threads={"nargs": "+", "default": [1, 2], "help": "onnxruntime threads (default: 1 2)"},
        results={"help": "folder for int8.md and int8.json (default docs/results; --quick: the work one)"},
        quick="smoke test: tiny CNN, 256 images, 1 epoch, 5 timing rounds",
    )
    p.add_argument("--models", nargs="+", help="zoo names (default: vgg16 mobilenetv2 resnet56; --quick: tiny)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of every model (default 1)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="pruning modes (default: all)")
    p.add_argument("--target", type=float, default=0.5, help="each mode's target, of its own cost (default 0.5)")
    p.add_argument("--data", default="/work/shared/data/cifar10.tar.gz", help="CIFAR-10 (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="training epochs of every variant (default 3; --quick: 1)")
    p.add_argument("--limit-train", type=int, help="use only this many training images (smoke runs)")
    p.add_argument("--limit-test", type=int, help="use only this many test images (default: all; --quick: 1000)")
    p.add_argument("--seed", type=int, default=0, help="model initialisation, pruning, training and calibration")
    p.add_argument("--calibration-method", choices=METHODS, default=DEFAULT_METHOD)
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--runs", type=int, help="timed rounds per process (default 100; --quick: 5)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 10; --quick: 2)")
    p.add_argument("--processes", type=int, help="fresh timing processes per thread count (default 3; --quick: 2)")
    p.add_argument("--no-spin", action="store_true", help="idle onnxruntime threads sleep instead of spin-waiting")
    p.add_argument("--work", help="trained models and .onnx files (default runs/int8-bench; --quick: runs/int8-quick)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.models if m not in edgeprune.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(edgeprune.list_models())}")
    if not 0 < args.width <= 16:
        p.error(f"--width must be in (0, 16], got {args.width}")
    if not 0 < args.target < 1:
        p.error(f"--target must be in (0, 1), got {args.target}")
    for name in ("epochs", "runs", "warmup", "processes", "calibration_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if min(args.threads) < 1:
        p.error("--threads must be positive")
    args.threads = sorted(set(args.threads))
    return args


def cpu_int8_flags() -> dict:
    """Which of ``CPU_FLAGS`` the CPU reports (``lscpu``'s Flags line, else /proc/cpuinfo), and from where."""
    flags, source = None, "lscpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags:")), None)
    except OSError:
        pass
    if flags is None:
        source = "/proc/cpuinfo"
        try:
            text = Path("/proc/cpuinfo").read_text()
            flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        except OSError:
            source, flags = "unknown", []
    return {"source": source, **{flag: flag in flags for flag in CPU_FLAGS}}


def run_folder(args: argparse.Namespace, model: str, data: ImageDataset) -> Path:
    """The work folder of one model's variants: everything that changes the trained weights is in its name."""
    name = f"{model}-w{args.width:g}-{data.name}-e{args.epochs}-s{args.seed}"
    if args.limit_train:
        name += f"-n{args.limit_train}"
    return Path(args.work) / name


def variants(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(label, pruning mode) of each variant, the unpruned one first; the label is also its folder's name."""
    return [("unpruned", None), *((f"{mode}-{args.target:g}", mode) for mode in args.modes)]


# -- one variant: train, export, quantize, check ------------------------------------------------


def build(name: str, mode: str | None, args: argparse.Namespace) -> tuple[nn.Module, dict | None]:
    """The untrained model, pruned at initialisation in ``mode`` to ``args.target`` of its own cost (or not)."""
    torch.manual_seed(args.seed)
    model = edgeprune.create(name, num_classes=10, width=args.width)
    if mode is None:
        return model, None
    result = edgeprune.prune(model, mode, args.target, seed=args.seed, input_shape=SHAPE)
    return result.model, result.report()


def train_variant(folder: Path, name: str, mode: str | None, args: argparse.Namespace, data: ImageDataset) -> dict:
    """Train the variant into ``folder`` (resuming an interrupted run) unless it is trained already; its train.json."""
    summary = folder / SUMMARY_FILE
    if not (summary.is_file() and (folder / "model.safetensors").is_file()):
        model, report = build(name, mode, args)
        if report is not None:
            write_json(folder / "prune.json", report)
        resume = (folder / CHECKPOINT_FILE).is_file()
        print(f"  training {folder.name} ({'resumed' if resume else 'from scratch'})", flush=True)
        config = TrainConfig(epochs=args.epochs, seed=args.seed)
        train(model, data, config, out_dir=folder, resume=resume, progress=sys.stderr.isatty())
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # only an unfinished run needs it
    return json.loads(summary.read_text())


def export_variant(folder: Path) -> tuple[Path, float]:
    """The variant's checked fp32 .onnx file, exported unless it is there; seconds spent."""
    path = folder / "fp32.onnx"
    t0 = time.perf_counter()
    if not path.is_file():
        export_onnx(edgeprune.load(folder), path, SHAPE)
    return path, time.perf_counter() - t0


def quantize_variant(folder: Path, fp32: Path, args: argparse.Namespace, data: ImageDataset) -> tuple[Path, dict]:
    """The variant's int8 .onnx file, quantized unless it is there, and how it was made."""
    stem = f"int8-{args.calibration_method}-c{args.calibration_images}"
    path, record = folder / f"{stem}.onnx", folder / f"{stem}.json"
    if not (path.is_file() and record.is_file()):
        t0 = time.perf_counter()
        info = quantize_onnx(
            fp32, path, data, images=args.calibration_images, seed=args.seed, method=args.calibration_method
        )
        write_json(record, {**info, "seconds": time.perf_counter() - t0})
    return path, json.loads(record.read_text())


def check_variant(folder: Path, fp32: Path, int8: Path, args: argparse.Namespace, data: ImageDataset) -> dict:
    """fp32 and int8 test top-1 in onnxruntime (``int8_check``), computed unless recorded for these settings."""
    record = folder / f"check-{int8.stem}-t{args.limit_test or 'all'}.json"
    if not record.is_file():
        t0 = time.perf_counter()
        write_json(record, {**int8_check(fp32, int8, data), "seconds": time.perf_counter() - t0})
    return json.loads(record.read_text())


def complexity(folder: Path) -> dict:
    """Parameters, FLOPs (MACs) and memory bytes of the trained PyTorch model (SPEC counts, fp32, batch 1)."""
    return record_shapes(edgeprune.load(folder), torch.zeros(1, *SHAPE)).totals()


def energy(path: Path) -> dict:
    """Energy estimate per inference of an .onnx file, priced at the precision its graph stores."""
    return energy_estimate(onnx_profile(path))


def prepare_variant(
    root: Path, label: str, mode: str | None, name: str, args: argparse.Namespace, data: ImageDataset
) -> dict:
    """Everything about one variant except its latency: training, files, accuracy, sizes, complexity, energy."""
    folder = root / label
    trained = train_variant(folder, name, mode, args, data)
    fp32, export_s = export_variant(folder)
    int8, quantized = quantize_variant(folder, fp32, args, data)
    check = check_variant(folder, fp32, int8, args, data)
    print(
        f"  {label}: fp32 top-1 {100 * check['fp32']['top1']:.2f}%, int8 {100 * check['int8']['top1']:.2f}% "
        f"(drop {check['drop_points']:+.2f} pts), {fp32.stat().st_size / MB:.2f} -> {int8.stat().st_size / MB:.2f} MB",
        flush=True,
    )
    return {
        "variant": label,
        "mode": mode,
        "target": None if mode is None else args.target,
        "folder": str(folder),
        "complexity": complexity(folder),
        "train": {k: trained[k] for k in ("test_accuracy", "epochs", "train_seconds", "config", "data")},
        "fp32": {
            "path": str(fp32),
            "bytes": fp32.stat().st_size,
            "top1": check["fp32"]["top1"],
            "energy": energy(fp32),
        },
        "int8": {
            "path": str(int8),
            "bytes": int8.stat().st_size,
            "top1": check["int8"]["top1"],
            "energy": energy(int8),
        },
        "drop_points": check["drop_points"],
        "test_images": check["images"],
        "quantization": quantized,
        "seconds": {"export": export_s, "check": check["seconds"], "quantize": quantized["seconds"]},
    }


# -- latency --------------------------------------------------------------------------------------


def time_model(records: list[dict], args: argparse.Namespace) -> None:
    """Time all fp32 and int8 files of one model interleaved, per thread count; add ``latency`` to each record."""
    files = {f"{r['variant']}/{p}": Path(r[p]["path"]) for r in records for p in ("fp32", "int8")}
    prepared: dict[str, Prepared] = {k: prepare(path, path.parent, ("onnxruntime",)) for k, path in files.items()}
    for r in records:
        r["latency"] = {}
    for threads in args.threads:
        medians: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(args.processes):
            options = {"runs": args.runs, "warmup": args.warmup, "threads": threads, "spin": not args.no_spin}
            lat = latency_interleaved(prepared, "onnxruntime", seed=args.seed, **options)
            for k in files:
                medians[k].append(lat[k]["latency_ms"]["median"])
        for r in records:
            r["latency"][str(threads)] = latency_summary(
                medians[f"{r['variant']}/fp32"], medians[f"{r['variant']}/int8"]
            )


def latency_summary(fp32: list[float], int8: list[float]) -> dict:
    """Median latencies over the processes and the median, min and max of the per-process fp32/int8 ratios."""
    ratios = [f / q for f, q in zip(fp32, int8, strict=True)]
    return {
        "fp32_ms": statistics.median(fp32),
        "int8_ms": statistics.median(int8),
        "speedup": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "fp32_ms_per_process": fp32,
        "int8_ms_per_process": int8,
    }


# -- report ---------------------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table, first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def model_table(records: list[dict], threads: list[int]) -> str:
    """One model's table: complexity, accuracy, sizes, latency and energy of each variant, fp32 and int8."""
    base = records[0]["complexity"]
    headers = ["variant", "params", "FLOPs", "fp32 top-1", "int8 top-1", "drop (pts)", "fp32 MB", "int8 MB"]
    for t in threads:
        headers += [f"{t}t fp32 ms", f"{t}t int8 ms", f"{t}t speed-up"]
    headers += ["fp32 µJ", "int8 µJ"]
    rows = []
    for r in records:
        c = r["complexity"]
        row = [
            r["variant"],
            f"{c['params'] / 1e6:.3g}M ({100 * c['params'] / base['params']:.0f}%)",
            f"{c['flops'] / 1e6:.4g}M ({100 * c['flops'] / base['flops']:.0f}%)",
            f"{100 * r['fp32']['top1']:.2f}%",
            f"{100 * r['int8']['top1']:.2f}%",
            f"{r['drop_points']:+.2f}",
            f"{r['fp32']['bytes'] / MB:.2f}",
            f"{r['int8']['bytes'] / MB:.2f}",
        ]
        for t in threads:
            lat = r["latency"][str(t)]
            row += [f"{lat['fp32_ms']:.3f}", f"{lat['int8_ms']:.3f}", f"{lat['speedup']:.2f}x"]
        int8_energy = r["int8"]["energy"]
        mixed = "" if int8_energy["precision"] == "int8" else f" ({int8_energy['precision']})"
        row += [f"{r['fp32']['energy']['total_uj']:.1f}", f"{int8_energy['total_uj']:.1f}{mixed}"]
        rows.append(row)
    return md_table(headers, rows)


def markdown(result: dict) -> str:
    """The whole report: provenance, machine, method, one table per model, and the interpretation slot."""
    s, m, after, cpu = result["settings"], result["machine_before"], result["machine_after"], result["cpu_int8"]
    flags = ", ".join(f"{f} {'yes' if cpu[f] else 'no'}" for f in CPU_FLAGS)
    t = s["target"]
    limit = f"{result['train_images']:,} training images" + (" (--limit-train)" if s["limit_train"] else "")
    lines = [
        "# Int8 for the edge: fp32 against int8 on onnxruntime, unpruned and pruned",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['date']} ({result['elapsed_s'] / 60:.1f} min). Commit: `{result['commit']['commit']}`"
        + (" (the working tree had uncommitted changes)." if result["commit"]["dirty"] else "."),
        "",
        f"Machine: {m['processor']} ({m['machine']}), {m['usable_cores']} usable cores, Python {m['python']}, "
        f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; load average (1 min) "
        f"{m.get('load_average_1m', 0):.2f} before and {after.get('load_average_1m', 0):.2f} after the run. "
        f"Integer instructions ({cpu['source']} flags): {flags}.",
        "",
        f"Method: {', '.join(s['models'])} at width {s['width']:g}, each trained from scratch on {result['data']} "
        f"({limit}) for {s['epochs']} epoch(s), seed {s['seed']}, edgeprune's default training settings; "
        f"`unpruned`, and pruned at initialisation in each mode to {t:g} of its own cost in that mode "
        f"(`prune(model, mode, {t:g})`: params mode keeps {t:.0%} of the parameters, flops mode {t:.0%} of the "
        f"FLOPs, memory mode {t:.0%} of the memory; so only the flops variant is at {t:.0%} of the FLOPs; the "
        "percentages in the tables are of the unpruned model). "
        "fp32: the ONNX export (BatchNorm folded, checked against PyTorch). int8: onnxruntime static quantization, "
        f"QDQ, int8 weights per output channel and int8 activations, {s['calibration_method']} calibration on "
        f"{s['calibration_images']} training images. Top-1 on {result['test_images']:,} test images, both files "
        "in onnxruntime; drop = fp32 - int8 in points. MB = 10^6 bytes on disk. Latency: onnxruntime "
        "CPUExecutionProvider, batch 1, random 3x32x32 inputs; every fp32 and int8 file of a model timed "
        f"interleaved (round-robin) in one process per thread count, {s['runs']} rounds after {s['warmup']} "
        f"warm-up, in {s['processes']} fresh processes; ms = median over the processes of each process's median; "
        "speed-up = fp32 / int8 latency of the same variant (median of the per-process ratios; min-max in the "
        "JSON). Idle threads "
        + ("sleep (`--no-spin`)." if s["no_spin"] else "spin-wait (onnxruntime's default).")
        + " Energy: estimate per inference, `energy_estimate(onnx_profile(file))`, 45 nm figures (Horowitz 2014): "
        "fp32 4.6 pJ per MAC + 640 pJ per 32-bit DRAM word; int8 0.23 pJ per MAC + 160 pJ per DRAM byte at "
        "the stored width.",
        "",
    ]
    for name, records in result["models"].items():
        train_min = sum(r["train"]["train_seconds"] for r in records) / 60
        lines += [f"## {name}", "", model_table(records, s["threads"]), ""]
        lines += [f"Training time, all {len(records)} variants: {train_min:.1f} min (train.json).", ""]
    lines += ["## Interpretation", "", TODO, ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict:
    """Train, export, quantize, check and time every variant of every model; the JSON-ready result."""
    started, before = time.perf_counter(), machine_info()
    data = load_dataset(args.data, args.limit_train, args.limit_test, progress=sys.stderr.isatty())
    print(data.summary(), flush=True)
    models: dict[str, list[dict]] = {}
    for name in args.models:
        root = run_folder(args, name, data)
        print(f"{name} (width {args.width:g}) in {root}", flush=True)
        records = [prepare_variant(root, label, mode, name, args, data) for label, mode in variants(args)]
        t0 = time.perf_counter()
        time_model(records, args)
        for r in records:
            r["seconds"]["latency_model_total"] = time.perf_counter() - t0
            lat = ", ".join(f"{t}t x{v['speedup']:.2f}" for t, v in r["latency"].items())
            print(f"  {r['variant']}: int8 speed-up {lat}", flush=True)
        models[name] = records
    return {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "elapsed_s": time.perf_counter() - started,
        "settings": vars(args),
        "data": data.name,
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "machine_before": before,
        "machine_after": machine_info(),
        "nproc": os.cpu_count(),
        "cpu_int8": cpu_int8_flags(),
        "onnxruntime": before.get("onnxruntime"),
        "interpretation": TODO,
        "models": models,
    }


def write_results(result: dict, folder: Path) -> None:
    """int8.md and int8.json into ``folder`` (int8-w0.5.md... at another width), each written atomically."""
    width = result["settings"]["width"]
    stem = "int8" if width == 1 else f"int8-w{width:g}"
    text = markdown(result)
    write_report(folder / stem, text, result)
    print(f"\n{text}\nwrote {folder / stem}.md and {folder / stem}.json")


def main() -> None:
    """Parse the options, hold the work folder's lock, run everything, write the report."""
    args = parse_args()
    run_locked(__file__, args.work, lambda command: run(args, command), lambda r: write_results(r, Path(args.results)))


if __name__ == "__main__":
    main()
