"""Int8 --target-cpu: the cost of `any` (7-bit weights) against `native` on this CPU, and what `native` loses on AVX2.

x86 CPUs without VNNI (AVX2-only) multiply uint8 activations by int8 weights with VPMADDUBSW, whose pairwise
16-bit sums saturate; ``--target-cpu any`` therefore quantizes weights to 7 bits (onnxruntime's
``reduce_range``), while ``native`` keeps full 8-bit weights where this CPU accumulates in 32 bits (VNNI, AMX,
ARM). This measures both sides of that choice for each model (``--models``):

- the zoo's ``tiny`` CNN (width 1) pruned at initialisation to FA 0.5 (``edgeprune.prune(model, "flops", 0.5)``,
  seed ``--seed``) and trained ``--tiny-epochs`` (default 3) on CIFAR-10-mini: the case from the issue (on an
  AVX2-only EPYC: fp32 43.7%, 8-bit S8S8 39.6%, reduce_range 43.5%);
- ``vgg16``, ``resnet56`` and ``mobilenetv2`` at ``--width`` (default 0.25), pruned the same way and trained
  ``--epochs`` (default 8, chosen so that the first run stays well under 25 min on one thread of this shared
  2-core machine at any load: measured 16 min at load 6, of it training 7 min and the emulation 8 min).

Each trained model is exported to fp32 ONNX (``edgeprune.export.export_onnx``) and quantized twice with
``edgeprune.quantize.quantize_onnx`` (QDQ S8S8, per-channel weights, minmax calibration on
``--calibration-images`` training images): ``--target-cpu any`` and ``--target-cpu native`` (what native
resolves to on this CPU, ``edgeprune.cpu.cpu_class()``, is in the file name and the report). Then:

- test top-1 of the fp32, any and native files on this CPU (``edgeprune.quantize.int8_check``, all test
  images, ``--threads`` threads);
- the same three files on an emulated AVX2-only CPU: the test images, normalised exactly as edgeprune does
  (``edgeprune.train.Normalizer``), are saved as .npy and run in onnxruntime by a small program in a fresh
  process under ``qemu-x86_64 -cpu CPU`` (``--emulate CPU``, default Haswell: AVX2 and FMA, no AVX-512, no
  VNNI); the same program also runs unemulated, so every file's predictions here and there are compared image by
  image. Sanity checks, reported: the unemulated program's top-1 equals int8_check's (the saved images are
  edgeprune's), and the emulated fp32 top-1 equals this CPU's (fp32 does not saturate). The CPU features numpy
  sees (cpuid) are recorded from both runs;
- onnxruntime latency at batch 1 and ``--threads`` threads of the fp32, any and native files, timed interleaved
  (round-robin) in one process (``edgeprune.measure.latency_interleaved``), ``--runs`` rounds after
  ``--warmup``, in ``--processes`` fresh processes; ms = median over the processes of each process's median;
  any/native = median of the per-process ratios (min-max in the JSON).

Resumable: trained models, .onnx files and quantization records are kept in ``--work`` (default
runs/int8-target-cpu), one folder per model, width, data set, target, epochs and seed; whatever is there is
reused (an interrupted training run resumes from its last epoch). Emulation is slow (minutes per fp32 file) and
deterministic, so each file's emulated logits are kept in ``--work``/emulated under the SHA-256 of the file and
of the images, the CPU model and the qemu and onnxruntime versions, and reused (``--re-emulate``: run them all
again). Accuracy on this CPU, the unemulated runner, the comparison with the emulated logits and latency are
measured afresh on every run, so a cached re-run takes a few minutes.

Writes ``--results``/int8_target_cpu.md and .json (default docs/results): the exact command, date, commit,
machine (with ``edgeprune.cpu.cpu_summary()``), settings, a summary table, a table per model, and a "what it
shows" paragraph computed from the numbers. ``--quick`` is a smoke run (tiny only, 1 epoch, 5 timing rounds)
that writes to runs/int8-target-cpu-quick instead.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_target_cpu.py            # ~16 min first, ~25 s cached
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_target_cpu.py --quick    # ~4 min first (qemu), ~15 s cached
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import git_commit, parser, run_locked, write_report
from torch import nn

import edgeprune
from edgeprune.cpu import cpu_class, cpu_summary, reduce_range_for
from edgeprune.data import ImageDataset, Normalizer, load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.files import atomic_write, sha256_file, write_json
from edgeprune.measure import latency_interleaved, machine_info, prepare
from edgeprune.quantize import int8_check, quantize_onnx
from edgeprune.trace import record_shapes
from edgeprune.train import CHECKPOINT_FILE, SUMMARY_FILE, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
MB = 1e6
FILES = ("fp32", "any", "native")  # the three files of a model, in table order
TARGETS = ("any", "native")  # the --target-cpu of each int8 file
EVAL_BATCH = 256  # edgeprune.evaluate's default batch, used by the runner too
EMULATION_TIMEOUT_S = 3600
FULL = {
    "models": ["tiny", "vgg16", "resnet56", "mobilenetv2"],
    "epochs": 8,
    "tiny_epochs": 3,
    "runs": 100,
    "warmup": 10,
    "processes": 3,
    "work": str(ROOT / "runs/int8-target-cpu"),
    "results": str(ROOT / "docs/results"),
}
QUICK = {
    "models": ["tiny"],
    "epochs": 1,
    "tiny_epochs": 1,
    "runs": 5,
    "warmup": 2,
    "processes": 2,
    "work": str(ROOT / "runs/int8-target-cpu-quick"),
    "results": str(ROOT / "runs/int8-target-cpu-quick"),
}

# Runs .onnx files on saved normalised images in onnxruntime, batch by batch as edgeprune.evaluate does, in a
# fresh process (under qemu for the emulated CPU); writes each file's logits and the CPU features numpy sees.
RUNNER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
try:
    from numpy._core._multiarray_umath import __cpu_features__ as features
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as features
x_path, out_dir, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.load(x_path)
seconds = []
for i, path in enumerate(sys.argv[5:]):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else batch
    t0, outs = time.perf_counter(), []
    for start in range(0, len(x), step):
        part = x[start : start + step]
        n = len(part)
        if n < step:
            part = np.concatenate([part, np.zeros((step - n, *x.shape[1:]), dtype=np.float32)])
        outs.append(np.asarray(session.run(None, {inp.name: part})[0])[:n])
    np.save(f"{out_dir}/{i}.npy", np.concatenate(outs))
    seconds.append(time.perf_counter() - t0)
keys = ("AVX2", "FMA3", "AVX512F", "AVX512VNNI", "AVX512BF16")
info = {"seconds": seconds, "cpu_features": {k: bool(features.get(k)) for k in keys}, "onnxruntime": ort.__version__}
with open(f"{out_dir}/run.json", "w") as f:
    json.dump(info, f)
"""


# -- settings and machine -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--quick`` or full-run defaults filled in where an option was not given."""
    p = parser(
        __doc__,
        threads={"default": 1, "help": "threads for training, evaluation and latency (default 1)"},
        results={"help": "folder for int8_target_cpu.md/.json (default docs/results)"},
        quick="smoke run: tiny only, 1 epoch, 5 timing rounds",
    )
    p.add_argument("--models", nargs="+", help="zoo names (default: tiny vgg16 resnet56 mobilenetv2; --quick: tiny)")
    p.add_argument("--width", type=float, default=0.25, help="width of every model but tiny (default 0.25)")
    p.add_argument("--tiny-width", type=float, default=1.0, help="width of the tiny CNN (default 1)")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs kept by pruning at initialisation (default 0.5)")
    p.add_argument("--data", default=str(ROOT / "data/cifar10-mini.tar.gz"), help="data set (default: CIFAR-10-mini)")
    p.add_argument("--epochs", type=int, help="training epochs of every model but tiny (default 8; --quick: 1)")
    p.add_argument("--tiny-epochs", type=int, help="training epochs of the tiny CNN (default 3; --quick: 1)")
    p.add_argument("--seed", type=int, default=0, help="model initialisation, pruning, training and calibration")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--emulate", default="Haswell", help="qemu CPU model without VNNI (default Haswell: AVX2 only)")
    p.add_argument("--no-emulate", action="store_true", help="skip the emulated-CPU accuracy")
    p.add_argument("--re-emulate", action="store_true", help="run every file under qemu again, reusing nothing")
    p.add_argument("--runs", type=int, help="timed rounds per process (default 100; --quick: 5)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 10; --quick: 2)")
    p.add_argument("--processes", type=int, help="fresh timing processes (default 3; --quick: 2)")
    p.add_argument("--work", help="trained models and .onnx files (default runs/int8-target-cpu)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.models if m not in edgeprune.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(edgeprune.list_models())}")
    for name in ("width", "tiny_width"):
        if not 0 < getattr(args, name) <= 16:
            p.error(f"--{name.replace('_', '-')} must be in (0, 16], got {getattr(args, name)}")
    if not 0 < args.target < 1:
        p.error(f"--target must be in (0, 1), got {args.target}")
    for name in ("epochs", "tiny_epochs", "runs", "warmup", "processes", "calibration_images", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def width_of(name: str, args: argparse.Namespace) -> float:
    return args.tiny_width if name == "tiny" else args.width


def epochs_of(name: str, args: argparse.Namespace) -> int:
    return args.tiny_epochs if name == "tiny" else args.epochs


def run_folder(args: argparse.Namespace, name: str, data: ImageDataset) -> Path:
    """The work folder of one model: everything that changes the trained weights is in its name."""
    label = f"{name}-w{width_of(name, args):g}-{data.name}-fa{args.target:g}-e{epochs_of(name, args)}-s{args.seed}"
    return Path(args.work) / label


# -- one model: train, export, quantize, check here ------------------------------------------------


def build(name: str, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """The untrained model pruned at initialisation to ``args.target`` of its FLOPs, and the pruning report."""
    torch.manual_seed(args.seed)
    model = edgeprune.create(name, num_classes=10, width=width_of(name, args))
    result = edgeprune.prune(model, "flops", args.target, seed=args.seed, input_shape=SHAPE)
    return result.model, result.report()


def train_model(folder: Path, name: str, args: argparse.Namespace, data: ImageDataset) -> dict:
    """Train the model into ``folder`` (resuming an interrupted run) unless it is trained already; its train.json."""
    summary = folder / SUMMARY_FILE
    if not (summary.is_file() and (folder / "model.safetensors").is_file()):
        model, report = build(name, args)
        write_json(folder / "prune.json", report)
        resume = (folder / CHECKPOINT_FILE).is_file()
        print(f"  training {folder.name} ({'resumed' if resume else 'from scratch'})", flush=True)
        config = TrainConfig(epochs=epochs_of(name, args), seed=args.seed)
        train(model, data, config, out_dir=folder, resume=resume, progress=sys.stderr.isatty(), threads=args.threads)
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # only an unfinished run needs it
    return json.loads(summary.read_text())


def export_model(folder: Path) -> Path:
    """The model's checked fp32 .onnx file, exported unless it is there."""
    path = folder / "fp32.onnx"
    if not path.is_file():
        export_onnx(edgeprune.load(folder), path, SHAPE)
    return path


def int8_name(target: str, args: argparse.Namespace) -> str:
    """The file stem of an int8 file; ``native`` names the CPU class it resolved to, so another CPU re-quantizes."""
    where = f"-{cpu_class()}" if target == "native" else ""
    return f"int8-{target}{where}-c{args.calibration_images}"


def quantize_model(folder: Path, fp32: Path, target: str, args: argparse.Namespace, data: ImageDataset) -> dict:
    """The model's int8 file for ``target``, quantized unless it is there, and how it was made."""
    stem = int8_name(target, args)
    path, record = folder / f"{stem}.onnx", folder / f"{stem}.json"
    if not (path.is_file() and record.is_file()):
        t0 = time.perf_counter()
        info = quantize_onnx(fp32, path, data, images=args.calibration_images, seed=args.seed, target_cpu=target)
        write_json(record, {**info, "seconds": time.perf_counter() - t0})
    return json.loads(record.read_text())


def complexity(folder: Path) -> dict:
    """Parameters, FLOPs (MACs) and memory bytes of the trained PyTorch model (batch 1)."""
    return record_shapes(edgeprune.load(folder), torch.zeros(1, *SHAPE)).totals()


def prepare_model(name: str, args: argparse.Namespace, data: ImageDataset) -> dict:
    """Training, files and accuracy on this CPU of one model (everything but emulation and latency)."""
    folder = run_folder(args, name, data)
    print(f"{name} (width {width_of(name, args):g}, {count(epochs_of(name, args), 'epoch')}) in {folder}", flush=True)
    t0 = time.perf_counter()
    built = [folder / SUMMARY_FILE, folder / "fp32.onnx", *(folder / f"{int8_name(t, args)}.json" for t in TARGETS)]
    reused = all(path.is_file() for path in built)
    trained = train_model(folder, name, args, data)
    fp32 = export_model(folder)
    quantized = {target: quantize_model(folder, fp32, target, args, data) for target in TARGETS}
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    checks = {
        t: int8_check(fp32, quantized[t]["path"], data, max_drop=100.0, batch_size=EVAL_BATCH, threads=args.threads)
        for t in TARGETS
    }
    check_s = time.perf_counter() - t0
    fp32_top1 = {checks[t]["fp32"]["top1"] for t in TARGETS}
    if len(fp32_top1) != 1:
        raise EdgepruneError(f"{fp32}: two evaluations of the fp32 file disagree ({sorted(fp32_top1)})")
    n = len(data.test_y)
    files = {"fp32": {"path": str(fp32), "bytes": fp32.stat().st_size, "weights": "fp32"}}
    here = {"fp32": {"top1": checks["any"]["fp32"]["top1"], "correct": round(checks["any"]["fp32"]["top1"] * n)}}
    for t in TARGETS:
        q = quantized[t]
        bits = "7-bit" if q["target_cpu"]["reduce_range"] else "8-bit"
        files[t] = {"path": q["path"], "bytes": q["bytes"], "weights": bits, "target_cpu": q["target_cpu"]}
        here[t] = {
            "top1": checks[t]["int8"]["top1"],
            "correct": round(checks[t]["int8"]["top1"] * n),
            "drop_points": checks[t]["drop_points"],
        }
    line = ", ".join(f"{k} {100 * here[k]['top1']:.1f}%" for k in FILES)
    print(f"  here ({checks['any']['cpu']['class']}): {line}", flush=True)
    return {
        "model": name,
        "width": width_of(name, args),
        "epochs": epochs_of(name, args),
        "folder": str(folder),
        "reused": reused,
        "complexity": complexity(folder),
        "unpruned_flops": json.loads((folder / "prune.json").read_text()).get("before", {}).get("flops"),
        "train": {k: trained.get(k) for k in ("test_accuracy", "epochs", "train_seconds")},
        "files": files,
        "quantization": {t: {k: v for k, v in quantized[t].items() if k != "path"} for t in TARGETS},
        "here": {**here, "cpu": checks["any"]["cpu"]},
        "seconds": {"cached_or_built": prepare_s, "check_here": check_s},
    }


# -- the emulated AVX2 CPU --------------------------------------------------------------------------


def save_test_images(work: Path, data: ImageDataset) -> Path:
    """The test split normalised exactly as edgeprune evaluates it (Normalizer), float32 NCHW, as .npy."""
    x = Normalizer(data.mean, data.std)(data.test_x)
    path = work / f"test-{data.name}-{len(data.test_y)}.npy"
    save_npy(path, np.ascontiguousarray(x.numpy(), dtype=np.float32))
    return path


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, renamed into place."""

    def write(out: Path) -> None:
        with out.open("wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def run_files(paths: list[str], images: Path, threads: int, emulate: str | None) -> tuple[list[np.ndarray], dict]:
    """Each file's logits on the saved images from ``RUNNER`` in a fresh process, under qemu if ``emulate``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="edgeprune-target-cpu-") as tmp:
        cmd = [sys.executable, "-c", RUNNER, str(images), tmp, str(threads), str(EVAL_BATCH), *paths]
        if emulate:
            cmd = [shutil.which("qemu-x86_64") or "qemu-x86_64", "-cpu", emulate, *cmd]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=EMULATION_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "TCG doesn't support" not in line]
            raise EdgepruneError(f"the runner failed{' under qemu' if emulate else ''}: {' / '.join(errors[-3:])}")
        info = json.loads((Path(tmp) / "run.json").read_text())
        logits = [np.load(Path(tmp) / f"{i}.npy") for i in range(len(paths))]
    return logits, {**info, "wall_s": seconds}


def predictions(logits: np.ndarray) -> torch.Tensor:
    """Top-1 class per image, by torch's topk as edgeprune.evaluate picks it."""
    return torch.from_numpy(logits).float().topk(1, dim=1).indices[:, 0]


def qemu_version() -> str:
    """The first line of ``qemu-x86_64 --version``."""
    out = subprocess.run(["qemu-x86_64", "--version"], capture_output=True, text=True).stdout.strip()
    return out.splitlines()[0] if out else "unknown"


def emulation_key(path: str, images_sha: str, args: argparse.Namespace, versions: dict) -> str:
    """What decides a file's emulated logits: its bytes, the images, the emulated CPU, the runner and versions."""
    blob = {"file": sha256_file(path), "images": images_sha, "cpu": args.emulate, "threads": args.threads}
    blob.update(batch=EVAL_BATCH, runner=hashlib.sha256(RUNNER.encode()).hexdigest(), **versions)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def emulated_logits(paths: list[str], images: Path, args: argparse.Namespace) -> tuple[list[np.ndarray], dict]:
    """Each file's logits on the emulated CPU: run under qemu, or reused from ``--work``/emulated where the same
    file, images, CPU model, qemu and onnxruntime gave them before (emulation is deterministic; --re-emulate)."""
    import onnxruntime

    versions = {"qemu": qemu_version(), "onnxruntime": onnxruntime.__version__}
    cache = Path(args.work) / "emulated"
    images_sha = sha256_file(images)
    keys = [emulation_key(p, images_sha, args, versions) for p in paths]
    todo = [i for i, k in enumerate(keys) if args.re_emulate or not (cache / f"{k}.json").is_file()]
    run_info: dict = {}
    if todo:
        print(f"  {len(todo)} of {len(paths)} files on the emulated {args.emulate} (slow: fp32 most)", flush=True)
        logits, run_info = run_files([paths[i] for i in todo], images, args.threads, args.emulate)
        for j, i in enumerate(todo):
            save_npy(cache / f"{keys[i]}.npy", logits[j])
            info = {"file": paths[i], "seconds": run_info["seconds"][j], "cpu_features": run_info["cpu_features"]}
            write_json(cache / f"{keys[i]}.json", {**info, **versions, "cpu": args.emulate})
    records = [json.loads((cache / f"{k}.json").read_text()) for k in keys]
    summary = {
        "cpu": args.emulate,
        **versions,
        "cpu_features": records[0]["cpu_features"],
        "files_run": len(todo),
        "files_reused": len(paths) - len(todo),
        "wall_s": run_info.get("wall_s", 0.0),
        "seconds_per_file": [r["seconds"] for r in records],
    }
    return [np.load(cache / f"{k}.npy") for k in keys], summary


def emulate_all(records: list[dict], images: Path, args: argparse.Namespace, data: ImageDataset) -> dict:
    """All files of all models run here and on the emulated CPU (one process each); adds ``emulated``."""
    paths = [r["files"][k]["path"] for r in records for k in FILES]
    print(f"running {len(paths)} files here and on an emulated {args.emulate} (qemu)", flush=True)
    here, here_info = run_files(paths, images, args.threads, None)
    there, there_info = emulated_logits(paths, images, args)
    y, n = data.test_y, len(data.test_y)
    i = 0
    for r in records:
        r["emulated"] = {}
        for k in FILES:
            p_here, p_there = predictions(here[i]), predictions(there[i])
            correct_here, correct_there = int((p_here == y).sum()), int((p_there == y).sum())
            r["emulated"][k] = {
                "top1": correct_there / n,
                "correct": correct_there,
                "runner_here_correct": correct_here,
                "runner_matches_int8_check": correct_here == r["here"][k]["correct"],
                "changed_predictions": int((p_here != p_there).sum()),
                "max_abs_logit_diff": float(np.abs(here[i] - there[i]).max()),
                "seconds": there_info["seconds_per_file"][i],
            }
            i += 1
        fp32 = r["emulated"]["fp32"]["correct"]
        for k in TARGETS:
            r["emulated"][k]["drop_points"] = 100.0 * (fp32 - r["emulated"][k]["correct"]) / n
        line = ", ".join(f"{k} {100 * r['emulated'][k]['top1']:.1f}%" for k in FILES)
        print(f"  {r['model']} on emulated {args.emulate}: {line}", flush=True)
    return {"cpu": args.emulate, "here_run": here_info, "emulated_run": there_info}


# -- latency --------------------------------------------------------------------------------------


def time_model(record: dict, args: argparse.Namespace) -> None:
    """Time the fp32, any and native files of one model interleaved, in fresh processes; adds ``latency``."""
    prepared = {k: prepare(Path(record["files"][k]["path"]), Path(record["folder"]), ("onnxruntime",)) for k in FILES}
    medians: dict[str, list[float]] = {k: [] for k in FILES}
    t0 = time.perf_counter()
    for _ in range(args.processes):
        lat = latency_interleaved(
            prepared, "onnxruntime", runs=args.runs, warmup=args.warmup, threads=args.threads, seed=args.seed
        )
        for k in FILES:
            medians[k].append(lat[k]["latency_ms"]["median"])
    ratios = [a / b for a, b in zip(medians["any"], medians["native"], strict=True)]
    record["latency"] = {
        **{f"{k}_ms": statistics.median(medians[k]) for k in FILES},
        "any_over_native": statistics.median(ratios),
        "any_over_native_min": min(ratios),
        "any_over_native_max": max(ratios),
        "per_process_ms": medians,
        "seconds": time.perf_counter() - t0,
    }
    lat = record["latency"]
    print(
        f"  {record['model']} latency: fp32 {lat['fp32_ms']:.3f} ms, any {lat['any_ms']:.3f} ms, "
        f"native {lat['native_ms']:.3f} ms, any/native {lat['any_over_native']:.3f}",
        flush=True,
    )


# -- report ---------------------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table, first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def yes_no(flags: dict) -> str:
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())


def count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_table(records: list[dict], emulated: bool) -> str:
    """One row per model: top-1 of the three files here and emulated, and the any/native latency ratio."""
    headers = ["model", "fp32 here", "any here", "native here"]
    if emulated:
        headers += ["fp32 AVX2", "any AVX2", "native AVX2"]
    headers += ["any / native latency"]
    rows = []
    for r in records:
        row = [f"{r['model']} (w{r['width']:g}, {r['epochs']} ep)", *(pct(r["here"][k]["top1"]) for k in FILES)]
        if emulated:
            row += [pct(r["emulated"][k]["top1"]) for k in FILES]
        row.append(f"{r['latency']['any_over_native']:.3f}")
        rows.append(row)
    return md_table(headers, rows)


def model_table(r: dict, emulated: bool) -> str:
    """One model's table: a row per file, accuracy here and emulated, the drops, latency and size."""
    headers = ["file", "weights", "MB", "top-1 here", "drop here (pts)"]
    if emulated:
        headers += ["top-1 emulated AVX2", "drop AVX2 (pts)", "predictions changed on AVX2"]
    headers += ["latency ms", "/ native"]
    rows = []
    for k in FILES:
        f, here = r["files"][k], r["here"][k]
        row = [f"`{k}`", f["weights"], f"{f['bytes'] / MB:.3f}", pct(here["top1"])]
        row.append("-" if k == "fp32" else f"{here['drop_points']:+.1f}")
        if emulated:
            e = r["emulated"][k]
            drop = "-" if k == "fp32" else f"{e['drop_points']:+.1f}"
            row += [pct(e["top1"]), drop, str(e["changed_predictions"])]
        ms = r["latency"][f"{k}_ms"]
        row += [f"{ms:.3f}", f"{ms / r['latency']['native_ms']:.3f}"]
        rows.append(row)
    return md_table(headers, rows)


def spread(values: list[float], fmt: str) -> str:
    """'a' for one value or equal ones, else 'a to b'."""
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)} to {fmt.format(hi)}"


def what_it_shows(result: dict) -> str:
    """The interpretation paragraph, every number taken from the result."""
    records, here_cpu, n = result["models"], result["cpu"]["class"], result["test_images"]
    native_bits = " / ".join(sorted({r["files"]["native"]["weights"] for r in records}))
    pts = "{:+.1f}"
    any_minus_native = [100 * (r["here"]["any"]["top1"] - r["here"]["native"]["top1"]) for r in records]
    ratios = [r["latency"]["any_over_native"] for r in records]
    parts = [
        f"On this CPU (class `{here_cpu}`), `native` resolved to {native_bits} weights. `any` (7-bit weights) "
        "minus `native` top-1, in points: "
        + ", ".join(f"{r['model']} {d:+.1f}" for r, d in zip(records, any_minus_native))
        + f" (one test image is {100 / n:.1f} point). The drop from fp32 (fp32 - int8) is "
        f"{spread([r['here']['any']['drop_points'] for r in records], pts)} points for `any` and "
        f"{spread([r['here']['native']['drop_points'] for r in records], pts)} for `native`. `any` takes "
        f"{spread(ratios, '{:.3f}')} times `native`'s latency at {count(result['settings']['threads'], 'thread')} "
        f"(median {statistics.median(ratios):.3f} over the models; the load average was "
        f"{result['machine_before'].get('load_average_1m', 0):.1f} before the run, so differences of a few "
        "percent are within the noise)."
    ]
    if result.get("emulation"):
        cpu = result["emulation"]["cpu"]
        native_drop = [r["emulated"]["native"]["drop_points"] for r in records]
        any_drop = [r["emulated"]["any"]["drop_points"] for r in records]
        worst = max(records, key=lambda r: r["emulated"]["native"]["drop_points"])
        wn = worst["emulated"]["native"]
        fp32_equal = [r for r in records if r["emulated"]["fp32"]["correct"] == r["here"]["fp32"]["correct"]]
        differing = ", ".join(
            f"{r['model']} {r['emulated']['fp32']['correct'] - r['here']['fp32']['correct']:+d} images"
            for r in records
            if r not in fp32_equal
        )
        any_same = sum(r["emulated"]["any"]["changed_predictions"] == 0 for r in records)
        native_changed = [r["emulated"]["native"]["changed_predictions"] for r in records]
        parts.append(
            f"On the emulated {cpu} (AVX2, no VNNI) the `native` files drop {spread(native_drop, pts)} points from "
            f"fp32 (worst {worst['model']}: {pct(worst['here']['native']['top1'])} here, {pct(wn['top1'])} there) "
            f"and change {spread(native_changed, '{:d}')} of {n:,} predictions; the `any` files drop "
            f"{spread(any_drop, pts)} points, and their predictions equal this CPU's for {any_same} of "
            f"{len(records)} models. Sanity check: the emulated fp32 top-1 equals this CPU's for {len(fp32_equal)} "
            f"of {len(records)} models" + (f" (differing: {differing})." if differing else ".")
        )
        if "8-bit" in native_bits:
            gap = [nd - ad for nd, ad in zip(native_drop, any_drop)]
            parts.append(
                f"So, on this VNNI machine, `any` is within {max(abs(d) for d in any_minus_native):.1f} points of "
                + ("(and never below) " if min(any_minus_native) >= 0 else "")
                + f"`native` at {spread(ratios, '{:.2f}')}x its latency, while a `native` (8-bit) file taken to an "
                f"AVX2-only CPU drops {spread(gap, '{:.1f}')} points more than the `any` file of the same model."
            )
    return " ".join(parts)


def markdown(result: dict) -> str:
    """The whole report: provenance, machine, method, summary, one table per model, what it shows."""
    s, m, after, cpu = result["settings"], result["machine_before"], result["machine_after"], result["cpu"]
    flags = yes_no(cpu["flags"])
    emu = result.get("emulation")
    records = result["models"]
    trained = ", ".join(f"{r['model']} (width {r['width']:g}, {count(r['epochs'], 'epoch')})" for r in records)
    lines = [
        "# Int8 `--target-cpu`: `any` (7-bit weights) against `native` here, and on an emulated AVX2-only CPU",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['date']} ({result['elapsed_s'] / 60:.1f} min"
        + (", trained models and .onnx files reused from the work folder" if result["all_cached"] else "")
        + f"). Commit: `{result['commit']['commit']}`"
        + (" (the working tree had uncommitted changes)." if result["commit"]["dirty"] else "."),
        "",
        f"Machine: {cpu['model']} ({cpu['machine']}), class `{cpu['class']}` (`edgeprune.cpu.cpu_summary()`: "
        f"{flags}), {m['usable_cores']} usable of {cpu['cores']} cores, Python {m['python']}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}; load average (1 min) {m.get('load_average_1m', 0):.2f} before and "
        f"{after.get('load_average_1m', 0):.2f} after the run (the machine was shared: latency is noisy).",
        "",
        f"Method: {trained}, "
        f"each pruned at initialisation to FA {s['target']:g} (`edgeprune.prune(model, 'flops', {s['target']:g}, "
        f"seed={s['seed']})`) and trained from scratch on {result['data']} ({result['train_images']:,} training "
        f"images) with edgeprune's default training settings, seed {s['seed']}, {count(s['threads'], 'thread')}. "
        "fp32: the ONNX export. `any` / `native`: `quantize_onnx(..., target_cpu=...)`, QDQ S8S8, per-channel "
        f"symmetric weights, minmax calibration on {s['calibration_images']} training images; `any` stores 7-bit "
        "weights (reduce_range), `native` what this CPU needs (see Machine). Top-1 on all "
        f"{result['test_images']:,} test images; drop = fp32 - int8 in points of the same CPU. Here: "
        "`edgeprune.quantize.int8_check`. "
        + (
            f"Emulated AVX2: `qemu-x86_64 -cpu {emu['cpu']}` running onnxruntime "
            f"{emu['emulated_run']['onnxruntime']} on the test images normalised by `edgeprune.train.Normalizer` "
            f"(saved as .npy), batches of {EVAL_BATCH}; numpy saw these CPU features (cpuid) there: "
            f"{yes_no(emu['emulated_run']['cpu_features'])} (here: {yes_no(emu['here_run']['cpu_features'])}). "
            f"qemu: {emu['emulated_run']['qemu']}; {emu['emulated_run']['files_run']} files run under qemu in "
            f"this invocation, {emu['emulated_run']['files_reused']} reused from `--work`/emulated (emulation is "
            "deterministic: a file's logits are kept under the SHA-256 of the file and of the images, the CPU "
            "model, the qemu and onnxruntime versions; `--re-emulate` runs all again). "
            "The same program run unemulated (every time) reproduces int8_check's top-1 for "
            f"{sum(r['emulated'][k]['runner_matches_int8_check'] for r in records for k in FILES)} of "
            f'{len(records) * len(FILES)} files; "predictions changed" counts test images whose top-1 class '
            "differs between this CPU and the emulated one. "
            if emu
            else "Emulated AVX2: skipped. "
        )
        + f"Latency: onnxruntime CPUExecutionProvider, batch 1, {count(s['threads'], 'thread')}, the three files of a "
        f"model timed interleaved (round-robin) in one process, {s['runs']} rounds after {s['warmup']} warm-up, "
        f"in {s['processes']} fresh processes; ms = median over the processes of each process's median; "
        "/ native = that file's ms over the native file's (the summary's any / native is the median of the "
        "per-process ratios). MB = 10^6 bytes on disk.",
        "",
        "## Summary (top-1)",
        "",
        summary_table(records, bool(emu)),
        "",
    ]
    for r in records:
        c, unpruned = r["complexity"], r.get("unpruned_flops")
        share = f" ({100 * c['flops'] / unpruned:.0f}% of the unpruned model's)" if unpruned else ""
        train_s = r["train"]["train_seconds"] or 0
        lines += [
            f"## {r['model']} (width {r['width']:g}, FA {s['target']:g}, {count(r['epochs'], 'epoch')})",
            "",
            f"{c['params'] / 1e6:.3g}M parameters, {c['flops'] / 1e6:.4g}M FLOPs (MACs){share}; PyTorch test "
            f"top-1 after training {pct(r['train']['test_accuracy'])}, trained in {train_s / 60:.1f} min.",
            "",
            model_table(r, bool(emu)),
            "",
        ]
    lines += ["## What it shows", "", result["what_it_shows"], ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict:
    """Train, export, quantize, check, emulate and time every model; the JSON-ready result."""
    started, before = time.perf_counter(), machine_info()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, progress=sys.stderr.isatty())
    print(data.summary(), flush=True)
    records = [prepare_model(name, args, data) for name in args.models]
    emulation = None
    if not args.no_emulate:
        if shutil.which("qemu-x86_64") is None:
            raise EdgepruneError("qemu-x86_64 not found (apt-get install qemu-user), or pass --no-emulate")
        images = save_test_images(Path(args.work), data)
        t0 = time.perf_counter()
        emulation = {**emulate_all(records, images, args, data), "seconds": time.perf_counter() - t0}
    for r in records:
        time_model(r, args)
    result = {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "elapsed_s": time.perf_counter() - started,
        "all_cached": all(r["reused"] for r in records),
        "settings": vars(args),
        "data": data.name,
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "machine_before": before,
        "machine_after": machine_info(),
        "cpu": cpu_summary(),
        "native_reduce_range_here": reduce_range_for("native"),
        "emulation": emulation,
        "models": records,
    }
    result["what_it_shows"] = what_it_shows(result)
    return result


def write_results(result: dict, folder: Path) -> None:
    """int8_target_cpu.md and .json into ``folder``, each written atomically."""
    text = markdown(result)
    write_report(folder / "int8_target_cpu", text, result)
    print(f"\n{text}\nwrote {folder / 'int8_target_cpu.md'} and {folder / 'int8_target_cpu.json'}")


def main() -> None:
    """Parse the options, hold the work folder's lock, run everything, write the report."""
    args = parse_args()
    run_locked(__file__, args.work, lambda command: run(args, command), lambda r: write_results(r, Path(args.results)))


if __name__ == "__main__":
    main()
