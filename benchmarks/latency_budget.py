"""Budgets a device understands (issue 11): pruning to measured milliseconds, and round_to chosen by measurement.

For each model (``--models``, default vgg16 mobilenetv2 resnet56, built by ``edgeprune.create`` at ``--width``,
default 1, input 3x32x32) and backend (``--backends``, default onnxruntime torch), at ``--threads`` 1 with idle
threads sleeping (``spin=False``) everywhere:

1. Latency table (``edgeprune.latency.build_table``: every conv/linear layer at a grid of widths, multiples of
   ``--round-to``, default 8; ``--table-runs`` rounds in ``--table-processes`` fresh processes), its build time
   and grid points; the parent's latency is the one the table measured (``measure_latency``). Each table is
   calibrated (``--calibrate``, default 0.75 0.5 0.3: uniform cuts and the smallest network timed whole beside
   the parent); a table reused from ``--work`` without a calibration gets one.
2. Latency mode at each of ``--targets`` (default 0.5 0.3) of the parent's measured latency:
   ``prune(model, budget={"latency": f}, table=table)`` (default measure, re-plans up to 4 times): target,
   predicted and measured ms, attempts, met (at or under) and within 5% under; the table's prediction error
   |predicted - measured| / measured, first attempt and final, with its median over every (model, backend, target),
   and the first attempt's error by the table's plain sum (before calibration).
3. round_to by measurement: FA at ``--flops-fraction`` 0.5 (``prune(model, "flops", 0.5, round_to=N)``) for each
   N in ``--round-tos`` (default 1 4 8 16 32), the parent and every variant of a model timed interleaved
   (``latency_interleaved``) in one process per backend, ``--runs`` rounds after ``--warmup``, in ``--processes``
   fresh processes; realisation = (parent / pruned latency) / (parent / pruned FLOPs), speed-up per process, median.
   The best N of a backend has the highest median realisation over the models: it chooses edgeprune's default
   round_to. Goal (issue 11): realisation >= 0.9 on onnxruntime for MobileNetV2 and VGG-16 with that N.
4. Equal measured latency: the FA network (flops mode, the table's round_to, same seed) whose measured latency
   matches the latency-mode network at ``--match-target`` (0.5) within ``--match-tolerance`` (3%), else the
   closest at or under it, found by bisection on the FLOPs fraction; every probe is measured as prune's default
   measure measured the latency-mode network (``measure_latency``, 100 rounds, the table's processes). Both
   networks are then timed interleaved with the parent: params, FLOPs and latency of both, and whether their
   widths are the same (same seed: the two lotteries can pick alike). For ``--train-models`` (default vgg16) at
   ``--train-width`` (default 0.25, onnxruntime, tables of their own) both networks are trained from scratch
   (fresh PyTorch-default initialisation per seed, ``TrainConfig(epochs=--train-epochs, seed=s)``,
   ``--train-threads`` 2) on ``--data`` for each of ``--train-seeds``: test accuracy, mean over seeds.
5. A plot of measured latency against FLOPs of every variant, one panel per model, a marker per backend, the
   target lines at each target fraction of the parent.

Resumable: ``--work`` (default runs/latency-budget) keeps, per model, width and backend, the latency table, the
latency-mode and matched FA networks (model files plus a JSON record) and the trained networks (an interrupted
training run resumes from its last epoch's checkpoint); whatever is there is reused. The round_to timings and the
equal-latency timings are measured afresh on every run, so that the variants they compare share conditions.

Writes ``--results``/latency_budget.md, .json and .png (default docs/results; latency_budget-w0.5.* at ``--width
0.5``): the exact command, date, commit, machine, settings, every table and a TODO line for the interpretation,
which whoever ran it writes. ``--quick`` is a smoke test (tiny CNN, onnxruntime, 3-round 1-process grid, round_to 1
and 8, no training unless ``--train-epochs`` is given, then on 256 + 256 images) that writes to
runs/latency-budget-quick.

    .venv/bin/python benchmarks/latency_budget.py            # about 1.5-2 h on 2 quiet cores (estimate), tables ~1 h
    .venv/bin/python benchmarks/latency_budget.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import git_commit, parser, run_locked, write_report
from torch import nn

import edgeprune
from edgeprune.backends import BACKENDS
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.latency import build_table, calibrate, measure_latency
from edgeprune.lut import CALIBRATION, DEFAULT_ROUND_TO, LatencyTable, TableSettings, load_table
from edgeprune.measure import Prepared, latency_interleaved, machine_info, prepare
from edgeprune.plots import plt, save_figure
from edgeprune.trace import record_shapes
from edgeprune.train import CHECKPOINT_FILE, SUMMARY_FILE, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
TODO = "TODO - interpretation: written by whoever ran it."
GOAL = 0.9  # issue 11: realisation on onnxruntime for MobileNetV2 and VGG-16 with the chosen round_to
GOAL_MODELS = ("vgg16", "mobilenetv2")
WITHIN = 0.05  # "landed": at or under the target and within 5% of it (prune's own stopping rule)
FULL = {
    "models": ["vgg16", "mobilenetv2", "resnet56"],
    "backends": ["onnxruntime", "torch"],
    "round_tos": [1, 4, 8, 16, 32],
    "table_runs": 20,
    "table_warmup": 3,
    "table_processes": 3,
    "runs": 100,
    "warmup": 10,
    "processes": 3,
    "train_epochs": 3,
    "train_models": ["vgg16"],
    "train_width": 0.25,
    "work": str(ROOT / "runs/latency-budget"),
    "results": str(ROOT / "docs/results"),
}
QUICK = {
    "models": ["tiny"],
    "backends": ["onnxruntime"],
    "round_tos": [1, 8],
    "table_runs": 3,
    "table_warmup": 1,
    "table_processes": 1,
    "runs": 10,
    "warmup": 2,
    "processes": 1,
    "train_epochs": 0,  # no training unless asked for
    "train_models": ["tiny"],
    "limit_train": 256,
    "limit_test": 256,
    "work": str(ROOT / "runs/latency-budget-quick"),
    "results": str(ROOT / "runs/latency-budget-quick"),
}


# -- settings and machine -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--quick`` or full-run defaults filled in where an option was not given."""
    p = parser(
        __doc__,
        threads={"default": 1, "help": "intra-op threads of every timing (default 1)"},
        results={"help": "folder for latency_budget.md/.json/.png (default docs/results)"},
        quick="smoke test: tiny CNN, onnxruntime, a tiny grid",
    )
    p.add_argument("--models", nargs="+", help="zoo names (default: vgg16 mobilenetv2 resnet56; --quick: tiny)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: onnxruntime torch; --quick: onnxruntime")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of every model (default 1)")
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3], help="latency targets, of the parent's")
    p.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, help="the latency tables' round_to (default 8)")
    p.add_argument("--near", type=int, default=2, help="table grid: round_to steps just below full width (default 2)")
    p.add_argument("--ratio", type=float, default=0.7, help="table grid: geometric ratio below those (default 0.7)")
    p.add_argument("--table-runs", type=int, help="timed rounds per grid point (default 20; --quick: 3)")
    p.add_argument("--table-warmup", type=int, help="untimed rounds per grid point (default 3; --quick: 1)")
    p.add_argument("--table-processes", type=int, help="fresh processes per table (default 3; --quick: 1)")
    p.add_argument("--calibrate", nargs="*", type=float, default=list(CALIBRATION),
                   help="the tables' calibration cuts (edgeprune lut --calibrate; a reused table without one gets "
                   "it); none: uncalibrated")  # fmt: skip
    p.add_argument("--round-tos", nargs="+", type=int, help="round_to values of FA (default 1 4 8 16 32; --quick: 1 8)")
    p.add_argument("--flops-fraction", type=float, default=0.5, help="FA target of the round_to study (default 0.5)")
    p.add_argument("--runs", type=int, help="timed rounds per process, interleaved timings (default 100; --quick: 10)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 10; --quick: 2)")
    p.add_argument("--processes", type=int, help="fresh timing processes (default 3; --quick: 1)")
    p.add_argument("--match-target", type=float, default=0.5, help="latency target whose network FA is matched to")
    p.add_argument("--match-tolerance", type=float, default=0.03, help="equal latency within this (default 0.03)")
    p.add_argument("--match-steps", type=int, default=8, help="bisection probes at most (default 8)")
    p.add_argument("--train-models", nargs="+", help="models trained at equal latency (default vgg16; --quick: tiny)")
    p.add_argument("--train-width", type=float, help="their width (default 0.25; --quick: --width)")
    p.add_argument("--train-epochs", type=int, help="epochs, 0 = no training (default 3; --quick: 0)")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1], help="training seeds (default 0 1)")
    p.add_argument("--train-threads", type=int, default=2, help="training threads (default 2)")
    p.add_argument("--data", default="/work/shared/data/cifar10.tar.gz", help="CIFAR-10 (default: %(default)s)")
    p.add_argument("--limit-train", type=int, help="use only this many training images (--quick: 256)")
    p.add_argument("--limit-test", type=int, help="use only this many test images (--quick: 256)")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and pruning seed (default 0)")
    p.add_argument("--prune-residual", action="store_true",
                   help="latency mode and the matched FA network may also prune channels tied to residual adds "
                   "(ResNet-56 cannot reach half its latency without)")  # fmt: skip
    p.add_argument("--work", help="tables, networks, trained models (default runs/latency-budget)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.train_width is None:
        args.train_width = args.width
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse settings the run cannot use (one line each, through ``p.error``)."""
    unknown = [m for m in [*args.models, *args.train_models] if m not in edgeprune.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(edgeprune.list_models())}")
    for name in ("width", "train_width"):
        if not 0 < getattr(args, name) <= 16:
            p.error(f"--{name.replace('_', '-')} must be in (0, 16]")
    if not all(0 < v < 1 for v in [*args.targets, args.flops_fraction]):
        p.error("--targets and --flops-fraction must be in (0, 1)")
    if args.match_target not in args.targets:
        p.error(f"--match-target {args.match_target:g} must be one of --targets")
    positive = ("threads", "round_to", "table_runs", "table_processes", "runs", "warmup", "processes",
                "match_steps", "train_threads")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if min(args.round_tos) < 1 or args.train_epochs < 0 or args.near < 0 or not 0 < args.ratio < 1:
        p.error("--round-tos must be positive, --train-epochs >= 0, --near >= 0 and --ratio in (0, 1)")
    args.round_tos = sorted(set(args.round_tos))


def say(line: str) -> None:
    """A progress line, at once (the run takes hours; its log is read while it runs)."""
    print(line, flush=True)


# -- models and folders ---------------------------------------------------------------------------


def parent_model(name: str, width: float, seed: int) -> nn.Module:
    """The unpruned model, initialised from ``seed`` (so cached networks match it on every run)."""
    torch.manual_seed(seed)
    return edgeprune.create(name, num_classes=10, width=width).eval()


def totals(model: nn.Module) -> dict:
    """Parameters, FLOPs (MACs) and memory bytes at batch 1 (SPEC counts)."""
    return record_shapes(model, torch.zeros(1, *SHAPE)).totals()


def study_folder(args: argparse.Namespace, name: str, width: float, backend: str) -> Path:
    """One model, width and backend's folder: everything that changes its table is in its name."""
    grid = f"r{args.round_to}-near{args.near}-ratio{args.ratio:g}-runs{args.table_runs}-p{args.table_processes}"
    return Path(args.work) / f"{name}-w{width:g}-s{args.seed}" / f"{backend}-t{args.threads}-{grid}"


# -- 1. latency tables ----------------------------------------------------------------------------


def get_table(folder: Path, parent: nn.Module, name: str, backend: str, args: argparse.Namespace) -> LatencyTable:
    """The folder's latency table, built and saved unless it is there (checked against this machine)."""
    path = folder / "table.json"
    if path.is_file():
        table = load_table(path)
        try:
            table.check_machine(backend, args.threads)  # a table from another CPU or version would mislead
        except EdgepruneError as e:
            raise EdgepruneError(f"{path}: {str(e).split(':')[0]}; delete it or use another --work") from None
        say(f"  {backend}: table reused ({table.settings['points']} points, built in {table.build_seconds:.0f} s)")
        if args.calibrate and not table.calibration:
            t0 = time.perf_counter()
            table = calibrate(table, parent, tuple(args.calibrate))
            table.settings["calibration_seconds"] = time.perf_counter() - t0
            table.save(path)
            say(f"  {backend}: calibrated in {table.settings['calibration_seconds']:.0f} s: {table.calibration}")
        return table
    say(f"  {backend}: building the latency table")
    settings = TableSettings(
        backend=backend, threads=args.threads, round_to=args.round_to, near=args.near, ratio=args.ratio,
        runs=args.table_runs, warmup=args.table_warmup, processes=args.table_processes, spin=False,
        calibration=tuple(args.calibrate),
    )  # fmt: skip
    table = build_table(parent, SHAPE, settings, source=name, progress=lambda s: say(f"    {s}"))
    table.save(path)
    grid, seconds = table.settings["points"], table.build_seconds
    say(f"  {backend}: {grid} points in {seconds:.0f} s, parent {table.parent_ms:.3f} ms")
    return table


def table_record(table: LatencyTable, path: Path) -> dict:
    """What the report says of a table."""
    return {
        "path": str(path),
        "layers": len(table.layers),
        "points": table.settings["points"],
        "build_seconds": table.build_seconds,
        "parent_ms": table.parent_ms,
        "rest_ms": table.rest_ms,
        "calibration": table.calibration,
        "floor_ms": table.floor_ms,
        "round_to": table.round_to,
        "created": table.created,
        "settings": table.settings,
    }


# -- 2. latency mode ------------------------------------------------------------------------------


def latency_mode(
    folder: Path, parent: nn.Module, table: LatencyTable, fraction: float, args: argparse.Namespace
) -> dict:
    """The latency-mode network at ``fraction`` of the parent's latency: pruned and saved unless it is there."""
    out = folder / f"latency-{fraction:g}"
    record = out / "result.json"
    if record.is_file():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    try:
        result = edgeprune.prune(parent, budget={"latency": fraction}, table=table, seed=args.seed, input_shape=SHAPE,
                                 prune_residual=args.prune_residual)  # fmt: skip
    except EdgepruneError as e:  # an unreachable target is a result too
        write_json(record, {"fraction": fraction, "error": str(e)})
        return json.loads(record.read_text())
    edgeprune.save(result.model, out)
    write_json(record, latency_record(fraction, result.plan.latency, totals(result.model), time.perf_counter() - t0))
    return json.loads(record.read_text())


def latency_record(fraction: float, lat: dict, counts: dict, seconds: float) -> dict:
    """Target, predicted and measured ms, attempts, met, within 5% and the prediction errors of one prune."""
    first = next((a for a in lat["attempts"] if "measured_ms" in a), None)
    limit, measured = lat["limit_ms"], lat["measured_ms"]
    return {
        "fraction": fraction,
        "target_ms": limit,
        "predicted_ms": lat["predicted_ms"],
        "measured_ms": measured,
        "attempts": len(lat["attempts"]),
        "met": lat["met"],
        "within_5pct": limit * (1 - WITHIN) <= measured <= limit,
        "first_error": abs(first["predicted_ms"] - first["measured_ms"]) / first["measured_ms"] if first else None,
        # the same cut by the table's plain sum, before calibration (tables without one: the same number)
        "first_table_error": abs(first.get("table_ms", first["predicted_ms"]) - first["measured_ms"])
        / first["measured_ms"]
        if first
        else None,
        "final_error": abs(lat["predicted_ms"] - measured) / measured,
        "log": lat["attempts"],
        **counts,
        "seconds": seconds,
    }


# -- 4. the FA network at equal measured latency --------------------------------------------------


def fa_network(parent: nn.Module, fraction: float, round_to: int, seed: int, prune_residual: bool = False) -> nn.Module:
    """FA (flops mode) at ``fraction`` of the parent's FLOPs."""
    return edgeprune.prune(parent, "flops", fraction, round_to=round_to, seed=seed, input_shape=SHAPE,
                           prune_residual=prune_residual).model  # fmt: skip


def measure(model: nn.Module, table: LatencyTable) -> float:
    """One network's latency (ms), measured exactly as prune's default measure does for the latency mode."""
    processes = table.settings.get("processes", 3)
    return measure_latency(model, SHAPE, table.backend, threads=table.threads, processes=processes, spin=False)


def widths(model: nn.Module) -> list[int]:
    """Output widths of every conv and linear layer, in order."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]  # fmt: skip


def match_fa(folder: Path, parent: nn.Module, table: LatencyTable, goal: dict, args: argparse.Namespace) -> dict:
    """The FA network whose measured latency matches ``goal``'s (a latency-mode record), saved unless it is there."""
    out = folder / f"matched-fa-{goal['fraction']:g}"
    record = out / "match.json"
    if record.is_file():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    probes = bisect_fa(parent, table, goal["measured_ms"], goal["flops"] / totals(parent)["flops"], args)
    best = pick_probe(probes, goal["measured_ms"], args.match_tolerance)
    model = fa_network(parent, best["fraction"], table.round_to, args.seed, args.prune_residual)
    edgeprune.save(model, out)
    result = {**best, "goal_ms": goal["measured_ms"], "probes": probes, "seconds": time.perf_counter() - t0}
    write_json(record, result)
    return result


def bisect_fa(parent: nn.Module, table: LatencyTable, goal_ms: float, start: float, args: argparse.Namespace) -> list:
    """Probe FLOPs fractions, from the latency-mode network's own, until one lands within tolerance of ``goal_ms``."""
    lo, hi, fraction, probes = 0.0, 1.0, min(start, 0.999), []
    seen: dict[tuple[int, ...], float] = {}  # nearby fractions often give the same widths: measure those once
    for _ in range(args.match_steps):
        try:
            model = fa_network(parent, fraction, table.round_to, args.seed, args.prune_residual)
        except EdgepruneError:  # below the smallest reachable FLOPs: only wider networks are left
            lo, fraction = fraction, (fraction + hi) / 2
            continue
        key = tuple(widths(model))
        ms = seen[key] if key in seen else measure(model, table)
        seen[key] = ms
        probes.append({"fraction": fraction, "measured_ms": ms, **totals(model)})
        say(f"    FA at {fraction:.4f} of the FLOPs: {ms:.3f} ms (goal {goal_ms:.3f} ms)")
        if abs(ms - goal_ms) <= args.match_tolerance * goal_ms:
            break
        lo, hi = (fraction, hi) if ms < goal_ms else (lo, fraction)
        # latency is near proportional to FLOPs here: scale, unless that leaves the bracket (then halve it)
        guess = fraction * goal_ms / ms
        fraction = guess if lo < guess < hi else (lo + hi) / 2
    if not probes:
        raise EdgepruneError(f"no FA network of {table.model} could be built near {goal_ms:.3f} ms")
    return probes


def pick_probe(probes: list[dict], goal_ms: float, tolerance: float) -> dict:
    """The probe within tolerance, else the slowest at or under the goal, else the closest."""
    within = [p for p in probes if abs(p["measured_ms"] - goal_ms) <= tolerance * goal_ms]
    under = [p for p in probes if p["measured_ms"] <= goal_ms]
    if within:
        best = min(within, key=lambda p: abs(p["measured_ms"] - goal_ms))
    elif under:
        best = max(under, key=lambda p: p["measured_ms"])
    else:
        best = min(probes, key=lambda p: abs(p["measured_ms"] - goal_ms))
    return {**best, "within_tolerance": bool(within)}


def time_together(models: dict[str, nn.Module], backend: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Each model's median latency per fresh process, all timed interleaved (round-robin) in each process."""
    with tempfile.TemporaryDirectory(prefix="latency-budget-") as tmp:
        prepared: dict[str, Prepared] = {
            label: prepare(model, Path(tmp) / f"m{i}", (backend,), SHAPE)
            for i, (label, model) in enumerate(models.items())
        }
        medians: dict[str, list[float]] = {label: [] for label in models}
        for p in range(args.processes):
            options = {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "spin": False}
            lat = latency_interleaved(prepared, backend, seed=p, **options)
            for label in models:
                medians[label].append(lat[label]["latency_ms"]["median"])
    return medians


def equal_latency(
    folder: Path, parent: nn.Module, goal: dict, matched: dict, backend: str, args: argparse.Namespace
) -> dict:
    """The latency-mode and matched FA networks timed interleaved with the parent: ms, params, FLOPs of each."""
    models = {"parent": parent, "latency": edgeprune.load(folder / f"latency-{goal['fraction']:g}"),
              "fa": edgeprune.load(folder / f"matched-fa-{goal['fraction']:g}")}  # fmt: skip
    medians = time_together(models, backend, args)
    out = {
        label: {"ms": statistics.median(ms), "ms_per_process": ms, **totals(models[label])}
        for label, ms in medians.items()
    }
    out["fa"]["fraction"] = matched["fraction"]
    out["same_widths"] = widths(models["latency"]) == widths(models["fa"])  # the lotteries can coincide
    out["latency_over_fa"] = statistics.median(a / b for a, b in zip(medians["latency"], medians["fa"]))
    return out


def study(name: str, width: float, backend: str, args: argparse.Namespace) -> dict:
    """Parts 1, 2 and 4 (without training) for one model, width and backend."""
    folder = study_folder(args, name, width, backend)
    folder.mkdir(parents=True, exist_ok=True)
    parent = parent_model(name, width, args.seed)
    table = get_table(folder, parent, name, backend, args)
    record = {"model": name, "width": width, "backend": backend, "folder": str(folder), "parent": totals(parent),
              "table": table_record(table, folder / "table.json"), "match_target": args.match_target,
              "latency": []}  # fmt: skip
    for fraction in args.targets:
        r = latency_mode(folder, parent, table, fraction, args)
        record["latency"].append(r)
        say(f"  {backend}: latency {fraction:g} -> " + latency_line(r))
    goal = next(r for r in record["latency"] if r["fraction"] == args.match_target)
    if "error" in goal:
        return record
    record["match"] = match_fa(folder, parent, table, goal, args)
    record["equal"] = equal_latency(folder, parent, goal, record["match"], backend, args)
    eq = record["equal"]
    say(f"  {backend}: equal latency: latency mode {eq['latency']['ms']:.3f} ms, {eq['latency']['flops'] / 1e6:.1f}M "
        f"FLOPs; FA {eq['fa']['ms']:.3f} ms, {eq['fa']['flops'] / 1e6:.1f}M FLOPs")  # fmt: skip
    return record


def latency_line(r: dict) -> str:
    """One latency-mode result in a line."""
    if "error" in r:
        return f"not reached: {r['error']}"
    return (f"target {r['target_ms']:.3f} ms, predicted {r['predicted_ms']:.3f}, measured {r['measured_ms']:.3f} "
            f"({r['attempts']} attempt(s), {'met' if r['met'] else 'MISSED'})")  # fmt: skip


# -- 3. round_to by measurement -------------------------------------------------------------------


def round_to_study(name: str, args: argparse.Namespace) -> list[dict]:
    """FA at ``--flops-fraction`` for each round_to, timed interleaved with the parent on each backend."""
    parent = parent_model(name, args.width, args.seed)
    base = totals(parent)
    variants: dict[str, nn.Module] = {"parent": parent}
    counts: dict[str, dict] = {"parent": base}
    for n in args.round_tos:
        try:
            variants[f"r{n}"] = fa_network(parent, args.flops_fraction, n, args.seed)
        except EdgepruneError as e:
            say(f"  round_to {n}: {e}")
            continue
        counts[f"r{n}"] = totals(variants[f"r{n}"])
    rows = []
    for backend in args.backends:
        medians = time_together(variants, backend, args)
        for label in variants:
            rows.append(realisation_row(name, backend, label, medians, counts[label], base))
            r = rows[-1]
            say(f"  {backend} {label}: {r['ms']:.3f} ms, FLOPs {100 * r['flops'] / base['flops']:.1f}%, "
                f"realisation {r['realisation']:.2f}")  # fmt: skip
    return rows


def realisation_row(name: str, backend: str, label: str, medians: dict, counts: dict, base: dict) -> dict:
    """Speed-up (median over processes of parent / variant) against the FLOPs ratio, for one variant."""
    speedups = [p / v for p, v in zip(medians["parent"], medians[label])]
    flops_speedup = base["flops"] / counts["flops"]
    speedup = statistics.median(speedups)
    return {
        "model": name,
        "backend": backend,
        "variant": label,
        "round_to": None if label == "parent" else int(label[1:]),
        **counts,
        "ms": statistics.median(medians[label]),
        "ms_per_process": medians[label],
        "speedup": speedup,
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "flops_speedup": flops_speedup,
        "realisation": speedup / flops_speedup,
    }


def best_round_to(rows: list[dict], backends: list[str]) -> dict:
    """Per backend: each round_to's median realisation over the models, and the best round_to."""
    out = {}
    for backend in backends:
        by_n: dict[int, list[float]] = {}
        for r in rows:
            if r["backend"] == backend and r["round_to"] is not None:
                by_n.setdefault(r["round_to"], []).append(r["realisation"])
        medians = {n: statistics.median(v) for n, v in sorted(by_n.items())}
        if medians:
            out[backend] = {"median_realisation": medians, "best": max(medians, key=medians.get)}
    return out


def goal_check(rows: list[dict], best: dict) -> dict:
    """Issue 11's goal: realisation >= 0.9 on onnxruntime for VGG-16 and MobileNetV2 with the best round_to."""
    if "onnxruntime" not in best:
        return {}
    n = best["onnxruntime"]["best"]
    found = {r["model"]: r["realisation"] for r in rows if r["backend"] == "onnxruntime" and r["round_to"] == n}
    checks = {m: {"realisation": found[m], "met": found[m] >= GOAL} for m in GOAL_MODELS if m in found}
    return {"round_to": n, "goal": GOAL, "models": checks}


# -- 4. training at equal latency -----------------------------------------------------------------


def reinit(model: nn.Module, seed: int) -> nn.Module:
    """Fresh PyTorch-default weights from ``seed`` (the zoo's own initialisation): training from scratch."""
    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def train_network(arch: Path, out: Path, seed: int, args: argparse.Namespace, data: ImageDataset) -> dict:
    """Train the network saved in ``arch`` from scratch into ``out`` (resuming) unless it is trained; train.json."""
    summary = out / SUMMARY_FILE
    if not (summary.is_file() and (out / "model.safetensors").is_file()):
        resume = (out / CHECKPOINT_FILE).is_file()
        say(f"    training {out.parent.name}/{out.name} ({'resumed' if resume else 'from scratch'})")
        model = reinit(edgeprune.load(arch), seed)
        config = TrainConfig(epochs=args.train_epochs, seed=seed)
        train(model, data, config, out_dir=out, resume=resume, progress=sys.stderr.isatty(), threads=args.train_threads)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # only an unfinished run needs it
    return json.loads(summary.read_text())


def train_pair(record: dict, args: argparse.Namespace, data: ImageDataset) -> dict:
    """Both equal-latency networks of one study trained for every seed: accuracies and their means."""
    folder, f = Path(record["folder"]), args.match_target
    name = f"train-{data.name}-e{args.train_epochs}" + (f"-n{args.limit_train}" if args.limit_train else "")
    archs = {"latency": folder / f"latency-{f:g}", "fa": folder / f"matched-fa-{f:g}"}
    out: dict = {"data": data.name, "train_images": len(data.train_y), "test_images": len(data.test_y)}
    for label, arch in archs.items():
        runs = {s: train_network(arch, folder / name / f"seed{s}" / label, s, args, data) for s in args.train_seeds}
        accs = [r["test_accuracy"] for r in runs.values()]
        out[label] = {"accuracy": {str(s): r["test_accuracy"] for s, r in runs.items()},
                      "mean": statistics.mean(accs), "train_seconds": sum(r["train_seconds"] for r in runs.values()),
                      **totals(edgeprune.load(arch))}  # fmt: skip
        each = ", ".join(f"{100 * a:.2f}%" for a in accs)
        say(f"    {label}: test accuracy {each} (mean {100 * out[label]['mean']:.2f}%)")
    return out


# -- 5. the plot ----------------------------------------------------------------------------------


def points(result: dict) -> list[dict]:
    """Every measured variant: model, backend, kind, FLOPs and ms."""
    out = []
    for s in result["studies"]:
        if s["width"] != result["settings"]["width"]:
            continue
        m, b = s["model"], s["backend"]
        out.append(
            {"model": m, "backend": b, "kind": "parent", "flops": s["parent"]["flops"], "ms": s["table"]["parent_ms"]}
        )
        for r in s["latency"]:
            if "error" not in r:
                out.append({"model": m, "backend": b, "kind": f"latency {r['fraction']:g}", "flops": r["flops"],
                            "ms": r["measured_ms"]})  # fmt: skip
        if "equal" in s:
            # measured alone (measure_latency), as the latency-mode networks were: the two are compared
            out.append({"model": m, "backend": b, "kind": "FA, equal latency", "flops": s["match"]["flops"],
                        "ms": s["match"]["measured_ms"]})  # fmt: skip
    for r in result["round_to"]:
        if r["round_to"] is not None:
            out.append({"model": r["model"], "backend": r["backend"], "kind": f"FA r{r['round_to']}",
                        "flops": r["flops"], "ms": r["ms"]})  # fmt: skip
    return out


def plot(result: dict, path: Path) -> None:
    """Measured latency against FLOPs, one panel per model, a marker per backend, the target lines."""
    models = result["settings"]["models"]
    pts, markers = points(result), dict(zip(result["settings"]["backends"], "os^"))
    kinds = list(dict.fromkeys(p["kind"] for p in pts))
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for p in (p for p in pts if p["model"] == model):
            ax.scatter(p["flops"] / 1e6, p["ms"], marker=markers[p["backend"]], color=colours[p["kind"]], s=40)
        for s in result["studies"]:
            if s["model"] == model and s["width"] == result["settings"]["width"]:
                for f, style in zip(result["settings"]["targets"], ("--", ":", "-.")):  # per backend's parent
                    ax.axhline(f * s["table"]["parent_ms"], color="grey", linestyle=style, linewidth=0.8)
        ax.set_title(f"{model} (width {result['settings']['width']:g})")
        ax.set_xlabel("FLOPs (M MACs)")
        ax.set_ylabel(f"measured latency (ms, batch 1, {result['settings']['threads']} thread)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[k], label=k) for k in kinds]
    handles += [plt.Line2D([], [], marker=m, linestyle="", color="black", label=b) for b, m in markers.items()]
    styles = zip(result["settings"]["targets"], ("--", ":", "-."))
    handles += [plt.Line2D([], [], color="grey", linestyle=st, label=f"{f:g} x parent's ms") for f, st in styles]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), bbox_to_anchor=(0.5, -0.12))
    save_figure(fig, path)


# -- report ---------------------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table, first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def pct(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``."""
    return f"{100 * part / whole:.1f}%"


def tables_md(studies: list[dict]) -> str:
    """Part 1: each table's size, build time and the parent's latency."""
    rows = [[s["model"], f"{s['width']:g}", s["backend"], str(s["table"]["layers"]), str(s["table"]["points"]),
             f"{s['table']['build_seconds']:.0f}", f"{s['table']['parent_ms']:.3f}", f"{s['table']['rest_ms']:+.3f}",
             calibration_text(s["table"])]
            for s in studies]  # fmt: skip
    return md_table(["model", "width", "backend", "layers", "grid points", "build s", "parent ms", "rest ms",
                     "calibration: table sum -> measured ms (the first: every group at its floor)"], rows)  # fmt: skip


def calibration_text(table: dict) -> str:
    """A table's calibration points, smallest first."""
    points = table.get("calibration") or []
    return ", ".join(f"{a:.3f}->{b:.3f}" for a, b in points) or "none"


def latency_md(studies: list[dict]) -> str:
    """Part 2: each latency-mode result."""
    headers = ["model", "width", "backend", "target", "target ms", "predicted ms", "measured ms", "attempts", "met",
               "within 5%", "error, 1st", "table sum error, 1st", "error, final", "params", "FLOPs"]  # fmt: skip
    rows = []
    for s in studies:
        for r in s["latency"]:
            head = [s["model"], f"{s['width']:g}", s["backend"], f"{r['fraction']:g}"]
            if "error" in r:
                rows.append(head + [f"not reached: {r['error']}"] + [""] * (len(headers) - 5))
                continue
            first, raw = (
                "" if r.get(k) is None else f"{100 * r[k]:.1f}%" for k in ("first_error", "first_table_error")
            )
            rows.append(head + [f"{r['target_ms']:.3f}", f"{r['predicted_ms']:.3f}", f"{r['measured_ms']:.3f}",
                                str(r["attempts"]), "yes" if r["met"] else "NO", "yes" if r["within_5pct"] else "no",
                                first, raw, f"{100 * r['final_error']:.1f}%", pct(r["params"], s["parent"]["params"]),
                                pct(r["flops"], s["parent"]["flops"])])  # fmt: skip
    return md_table(headers, rows)


def prediction_errors(studies: list[dict]) -> dict:
    """Median absolute prediction error of the tables over every (model, backend, target), first and final."""
    done = [r for s in studies for r in s["latency"] if "error" not in r]
    first = [r["first_error"] for r in done if r["first_error"] is not None]
    raw = [r["first_table_error"] for r in done if r.get("first_table_error") is not None]
    return {"cases": len(done), "first": statistics.median(first) if first else None,
            "first_table_sum": statistics.median(raw) if raw else None,
            "final": statistics.median([r["final_error"] for r in done]) if done else None}  # fmt: skip


def round_to_md(rows: list[dict], best: dict) -> str:
    """Part 3: every FA round_to variant per model and backend, and the median realisation per round_to."""
    headers = ["model", "backend", "variant", "FLOPs", "params", "ms", "speed-up", "FLOPs speed-up", "realisation"]
    base = {(r["model"], r["backend"]): r for r in rows if r["round_to"] is None}
    lines = [md_table(headers, [
        [r["model"], r["backend"], r["variant"], pct(r["flops"], base[(r["model"], r["backend"])]["flops"]),
         pct(r["params"], base[(r["model"], r["backend"])]["params"]), f"{r['ms']:.3f}",
         f"{r['speedup']:.2f} ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})", f"{r['flops_speedup']:.2f}",
         f"{r['realisation']:.2f}"] for r in rows])]  # fmt: skip
    ns = sorted({n for b in best.values() for n in b["median_realisation"]})
    summary = [[b] + [f"{v['median_realisation'].get(n, float('nan')):.2f}" for n in ns] + [str(v["best"])]
               for b, v in best.items()]  # fmt: skip
    lines += [
        "",
        "Median realisation over the models:",
        "",
        md_table(["backend", *(f"r{n}" for n in ns), "best"], summary),
    ]
    return "\n".join(lines)


def equal_md(studies: list[dict]) -> str:
    """Part 4: the latency-mode and the matched FA network, timed together."""
    headers = ["model", "width", "backend", "network", "params", "FLOPs", "ms (together)", "ms (alone)", "FA fraction",
               "same widths"]  # fmt: skip
    rows = []
    for s in (s for s in studies if "equal" in s):
        eq, goal = (
            s["equal"],
            next(r for r in s["latency"] if "measured_ms" in r and r["fraction"] == s["match_target"]),
        )
        alone = {"parent": s["table"]["parent_ms"], "latency": goal["measured_ms"], "fa": s["match"]["measured_ms"]}
        for label in ("parent", "latency", "fa"):
            e = eq[label]
            rows.append([s["model"], f"{s['width']:g}", s["backend"], label, f"{e['params'] / 1e6:.3f}M",
                         f"{e['flops'] / 1e6:.2f}M", f"{e['ms']:.3f}", f"{alone[label]:.3f}",
                         f"{e['fraction']:.4f}" if label == "fa" else "",
                         ("yes" if eq["same_widths"] else "no") if label == "fa" else ""])  # fmt: skip
    return md_table(headers, rows)


def train_md(trained: list[dict]) -> str:
    """Part 4, trained: accuracy of both equal-latency networks, per seed and mean."""
    headers = [
        "model",
        "width",
        "network",
        "params",
        "FLOPs",
        "ms (together)",
        "top-1 per seed",
        "mean top-1",
        "train min",
    ]
    rows = []
    for t in trained:
        for label in ("latency", "fa"):
            r = t["train"][label]
            rows.append([t["model"], f"{t['width']:g}", label, f"{r['params'] / 1e6:.3f}M", f"{r['flops'] / 1e6:.2f}M",
                         f"{t['equal'][label]['ms']:.3f}", ", ".join(f"{100 * a:.2f}%" for a in r["accuracy"].values()),
                         f"{100 * r['mean']:.2f}%", f"{r['train_seconds'] / 60:.1f}"])  # fmt: skip
    return md_table(headers, rows)


def markdown(result: dict) -> str:
    """The whole report: provenance, machine, method, every table, and the interpretation slot."""
    s, m, after = result["settings"], result["machine_before"], result["machine_after"]
    err, goal = result["prediction_error"], result["goal"]
    lines = [
        "# Budgets a device understands: pruning to measured latency, and round_to by measurement",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['date']} ({result['elapsed_s'] / 60:.1f} min). Commit: `{result['commit']['commit']}`"
        + (" (the working tree had uncommitted changes)." if result["commit"]["dirty"] else "."),
        "",
        f"Machine: {m['processor']} ({m['machine']}), {m['usable_cores']} usable cores, Python {m['python']}, "
        f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; load average (1 min) "
        f"{m.get('load_average_1m', 0):.2f} before and {after.get('load_average_1m', 0):.2f} after the run.",
        "",
        f"Settings: {', '.join(s['models'])} at width {s['width']:g} (seed {s['seed']}), backends "
        f"{', '.join(s['backends'])}, {s['threads']} thread(s), idle threads sleep (`spin=False`), batch 1, 3x32x32. "
        f"Latency tables: round_to {s['round_to']}, near {s['near']}, ratio {s['ratio']:g}, {s['table_runs']} rounds "
        f"after {s['table_warmup']} warm-up per grid point in {s['table_processes']} fresh process(es); the parent's "
        "latency is the table's (`measure_latency`, 100 rounds). Latency mode: `prune(model, budget={'latency': f}, "
        "table=table)`, default measure, up to 4 attempts. Interleaved timings: "
        f"{s['runs']} rounds after {s['warmup']} warm-up, in {s['processes']} fresh process(es), medians. "
        f"Equal latency: FA within {100 * s['match_tolerance']:g}% of the latency-mode network at "
        f"{s['match_target']:g} (at most {s['match_steps']} probes). The full settings are in the JSON.",
        "",
        "## 1. Latency tables",
        "",
        tables_md(result["studies"]),
        "",
        "## 2. Latency mode",
        "",
        latency_md(result["studies"]),
        "",
        f"Median |predicted - measured| / measured over {err['cases']} result(s): first attempt "
        + (f"{100 * err['first']:.1f}%" if err["first"] is not None else "-")
        + ", final "
        + (f"{100 * err['final']:.1f}%" if err["final"] is not None else "-")
        + "; the first attempt by the table's plain sum (before calibration) "
        + (f"{100 * err['first_table_sum']:.1f}%." if err.get("first_table_sum") is not None else "-."),
        "",
        f"## 3. round_to by measurement (FA at {s['flops_fraction']:g} of the FLOPs)",
        "",
        round_to_md(result["round_to"], result["best_round_to"]),
        "",
    ]
    if goal:
        checks = ", ".join(
            f"{k} {v['realisation']:.2f} ({'met' if v['met'] else 'NOT met'})" for k, v in goal["models"].items()
        )
        lines += [
            f"Goal (realisation >= {GOAL} on onnxruntime with round_to {goal['round_to']}): "
            f"{checks or 'no goal model in this run'}.",
            "",
        ]
    lines += [
        "## 4. Equal measured latency: latency mode against FA",
        "",
        "`latency`: the latency-mode network at the match target; `fa`: the FA network (flops mode, the table's "
        "round_to) whose latency measured alone (`measure_latency`, as prune measures) matched it. ms (alone): those "
        "measurements (the parent's: the table's); ms (together): the three timed interleaved afresh.",
        "",
        equal_md(result["studies"]),
        "",
    ]
    if result["trained"]:
        lines += [f"Trained from scratch on {result['trained'][0]['train']['data']} "
                  f"({result['trained'][0]['train']['train_images']:,} training, "
                  f"{result['trained'][0]['train']['test_images']:,} test images), {s['train_epochs']} epoch(s), seeds "
                  f"{', '.join(map(str, s['train_seeds']))}, {s['train_threads']} threads, on onnxruntime tables:", "",
                  train_md(result["trained"]), ""]  # fmt: skip
    lines += [
        "## 5. Plot",
        "",
        f"![measured latency against FLOPs]({result['plot']})",
        "",
        "Parents, latency-mode and equal-latency FA networks: measured alone (`measure_latency`); FA rN: the "
        "interleaved timings of part 3. Lines: each target fraction of each backend's parent latency.",
        "",
        "## Interpretation",
        "",
        TODO,
        "",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict:
    """Every part for every model; the JSON-ready result."""
    started, before = time.perf_counter(), machine_info()
    studies, rows = [], []
    for name in args.models:
        say(f"{name} (width {args.width:g})")
        studies += [study(name, args.width, backend, args) for backend in args.backends]
        say(f"{name}: round_to study")
        rows += round_to_study(name, args)
    trained = train_all(args, studies)
    best = best_round_to(rows, args.backends)
    for backend, b in best.items():
        say(f"best round_to on {backend}: {b['best']} (median realisations {b['median_realisation']})")
    return {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "elapsed_s": time.perf_counter() - started,
        "settings": vars(args),
        "machine_before": before,
        "machine_after": machine_info(),
        "nproc": os.cpu_count(),
        "interpretation": TODO,
        "studies": studies,
        "prediction_error": prediction_errors(studies),
        "round_to": rows,
        "best_round_to": best,
        "goal": goal_check(rows, best),
        "trained": trained,
    }


def train_all(args: argparse.Namespace, studies: list[dict]) -> list[dict]:
    """Part 4's training on onnxruntime at ``--train-width`` (its own study when the width differs)."""
    if not args.train_epochs:
        return []
    data = load_dataset(args.data, args.limit_train, args.limit_test, progress=sys.stderr.isatty())
    say(data.summary())
    trained = []
    for name in args.train_models:
        say(f"{name} (width {args.train_width:g}): training at equal latency")
        key = (name, args.train_width, "onnxruntime")
        s = next((s for s in studies if (s["model"], s["width"], s["backend"]) == key), None)
        s = s or study(name, args.train_width, "onnxruntime", args)
        if s not in studies:
            studies.append(s)
        if "equal" in s:
            trained.append(
                {"model": name, "width": args.train_width, "equal": s["equal"], "train": train_pair(s, args, data)}
            )
    return trained


def write_results(result: dict, folder: Path) -> None:
    """latency_budget.md, .json and .png into ``folder`` (latency_budget-w0.5.* at another width), atomically."""
    width = result["settings"]["width"]
    stem = "latency_budget" if width == 1 else f"latency_budget-w{width:g}"
    result["plot"] = f"{stem}.png"
    plot(result, folder / f"{stem}.png")
    text = markdown(result)
    write_report(folder / stem, text, result)
    print(f"\n{text}\nwrote {folder / stem}.md, .json and .png")


def main() -> None:
    """Parse the options, hold the work folder's lock, run everything, write the report."""
    args = parse_args()
    run_locked(
        __file__, args.work, lambda command: run(args, command), lambda r: write_results(r, Path(args.results)), say=say
    )


if __name__ == "__main__":
    main()
