"""Trade-off sweeps: prune a model in every mode to every target, measure each, plot the trade-offs.

For each seed, mode (params = PA, flops = FA, memory = MA) and target (a fraction of the model's
own complexity in that mode), the model is pruned at initialization with Algorithm 1
(``edgeprune.prune``), optionally trained once from scratch (``--data`` and ``--epochs``), and
measured with ``edgeprune.measure.bench`` on each backend, every measurement in a fresh process.
The unpruned model is measured (and trained) the same way as the reference point. CPU use and
memory come from each model's own measuring process; the latency columns and plots come from a
final pass that times all the sweep's models round-robin in one process per backend, so that every
model sees the same machine conditions (the own-process median is kept as
``<backend>_latency_isolated_median_ms``).

Written to the output folder: ``results.json`` (settings, machine, conventions and one row per
model), ``results.csv`` (the same rows), and the figures in the form of the paper's Figs. 3-4:
``tradeoffs_<backend>.png`` - accuracy when trained, otherwise the parameters kept (a capacity
proxy) - against median latency, estimated energy, CPU utilisation and the inference process's
memory increase, one series per mode, with the Pareto front (lower cost, higher y) marked; and
``latency_vs_flops.png``, measured latency against FLOPs (MACs) per backend, with the line of
latency proportional to FLOPs.
"""

from __future__ import annotations

import copy
import csv
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from edgeprune.complexity import MODES, check_mode
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.io import ModelRef, Resolved, is_folder_ref, resolve
from edgeprune.measure import (
    BACKENDS,
    ENERGY_NOTE,
    Prepared,
    check_backends,
    default_threads,
    latency_interleaved,
    machine_info,
    measure_prepared,
    prepare,
)
from edgeprune.pruning import check_seed
from edgeprune.trace import record_shapes

DEFAULT_TARGETS = (0.9, 0.7, 0.5, 0.3)
DEFAULT_RUNS = 30  # timed runs per model and backend: VGG-16's 13 models x 2 backends in a few minutes
DEFAULT_WARMUP = 5
Y_CHOICES = ("accuracy", "params", "flops", "memory")
_Y_LABEL = {  # (row key, axis label, scale, what the title calls it)
    "accuracy": ("accuracy", "test accuracy (%)", 100.0, "test accuracy"),
    "params": ("params", "parameters kept (millions)", 1e-6, "parameters kept (untrained: capacity proxy)"),
    "flops": ("flops", "FLOPs kept (MACs, millions)", 1e-6, "FLOPs kept (untrained: capacity proxy)"),
    "memory": ("memory_bytes", "memory kept (MB)", 1e-6, "memory kept (weights + maps; capacity proxy)"),
}
_BACKEND_FIELDS = {
    "latency_median_ms": lambda b: b["latency_ms"]["median"],  # replaced by the interleaved timing
    "latency_p90_ms": lambda b: b["latency_ms"]["p90"],
    "latency_mean_ms": lambda b: b["latency_ms"]["mean"],
    "latency_isolated_median_ms": lambda b: b["latency_ms"]["median"],
    "cpu_pct": lambda b: b["cpu"]["utilisation_pct"],
    "rss_peak_mb": lambda b: b["memory"]["rss_peak_mb"],
    "rss_increase_mb": lambda b: b["memory"]["rss_increase_mb"],
    "size_mb": lambda b: b["size"]["mb"],
}


def columns(backends: Sequence[str]) -> list[str]:
    """The CSV columns, in order, for the given backends."""
    cols = [
        "model",
        "mode",
        "target",
        "seed",
        "params",
        "flops",
        "memory_bytes",
        "params_pct",
        "flops_pct",
        "memory_pct",
        "energy_uj",
        "energy_compute_uj",
        "energy_dram_uj",
    ]
    for b in backends:
        cols += [f"{b}_{f}" for f in _BACKEND_FIELDS]
    return cols + ["accuracy", "train_seconds", "prune_seconds", "bench_seconds"]


def _check_args(modes: Sequence[str], targets: Sequence[float], seeds: Sequence[int], epochs: int | None,
                data: str | None) -> None:  # fmt: skip
    if not modes:
        raise EdgepruneError("no modes given")
    for m in modes:
        check_mode(m)
    if not targets:
        raise EdgepruneError("no targets given")
    for t in targets:
        if not isinstance(t, (int, float)) or not 0 < t < 1:
            raise EdgepruneError(f"sweep targets are fractions of the model's own complexity in (0, 1), got {t}")
    if not seeds:
        raise EdgepruneError("no seeds given")
    for seed in seeds:
        check_seed(seed)
    if (epochs is None) != (data is None):
        raise EdgepruneError("training needs both --data and --epochs (or neither, for an untrained sweep)")
    if epochs is not None and epochs < 1:
        raise EdgepruneError(f"epochs must be positive, got {epochs}")


def _base_model(ref: ModelRef, seed: int) -> Resolved:
    """The unpruned model: a saved folder as is, or a reference (zoo or user factory) built after seeding ``seed``."""
    torch.manual_seed(seed)
    return resolve(ref)


def _trainer(
    data: str | Path | object | None,
    epochs: int | None,
    work: Path,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[object, Callable | None]:
    """The data set and a function (model, seed, tag) -> (accuracy in [0, 1], seconds); (None, None) untrained."""
    if data is None:
        return None, None
    try:
        from edgeprune.data import load_dataset
        from edgeprune.train import TrainConfig, train
    except ImportError as e:
        raise EdgepruneError(f"training is not available in this installation ({e})") from None
    # a data set the caller loaded (the CLI, with its size caps) is used as it is
    dataset = data if not isinstance(data, (str, Path)) else load_dataset(data, limit_train, limit_test)

    def run(model: torch.nn.Module, seed: int, tag: str) -> tuple[float, float]:
        result = train(model, dataset, TrainConfig(epochs=epochs, seed=seed), out_dir=work / tag, progress=False)
        return float(result.test_accuracy), float(result.train_seconds)

    return dataset, run


def _row(name: str, mode: str, target: float, seed: int, measured: dict, ref: dict | None) -> dict:
    c = measured["complexity"]
    row: dict = {
        "model": name,
        "mode": mode,
        "target": target,
        "seed": seed,
        "params": c["params"],
        "flops": c["flops"],
        "memory_bytes": c["memory_bytes"],
    }
    ref = ref or c
    for k, key in (("params", "params"), ("flops", "flops"), ("memory", "memory_bytes")):
        row[f"{k}_pct"] = 100.0 * c[key] / ref[key]
    e = measured["energy"]
    row.update(energy_uj=e["total_uj"], energy_compute_uj=e["compute_uj"], energy_dram_uj=e["dram_uj"])
    for b, fig in measured["backends"].items():
        for f, get in _BACKEND_FIELDS.items():
            row[f"{b}_{f}"] = get(fig)
    return row


def write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    """Write result rows as CSV atomically (empty cells for missing figures)."""
    from edgeprune.files import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})
    atomic_write(path, lambda p: p.write_text(buf.getvalue()))


def sweep(
    model: str | ModelRef,
    out_dir: str | Path,
    modes: Sequence[str] = MODES,
    targets: Sequence[float] = DEFAULT_TARGETS,
    seeds: Sequence[int] = (0,),
    backends: Sequence[str] = BACKENDS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    threads: int | None = None,
    step: float = 0.1,
    epochs: int | None = None,
    data: str | Path | object | None = None,  # a path, or an ImageDataset already loaded
    y: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    log: Callable[[str], None] | None = print,
    spin: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> dict:
    """Prune ``model`` in every mode to every target (and seed), bench each, write results and plots."""
    _check_args(modes, targets, seeds, epochs, data)
    backends = list(check_backends(tuple(backends)))
    y = y or ("accuracy" if data else "params")
    if y not in Y_CHOICES:
        raise EdgepruneError(f"unknown y axis '{y}'; choose from: {', '.join(Y_CHOICES)}")
    if y == "accuracy" and not data:
        raise EdgepruneError("--y accuracy needs training (--data and --epochs)")
    if runs < 1 or warmup < 0:
        raise EdgepruneError(f"runs must be positive and warmup >= 0, got runs={runs}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise EdgepruneError(f"threads must be positive, got {threads}")
    threads = threads or default_threads()
    if not isinstance(model, ModelRef):
        model = ModelRef(str(model), num_classes=num_classes, in_channels=in_channels)
    resolve(model)  # fail early on a bad name, folder or reference
    say = log or (lambda _msg: None)
    from edgeprune.pruning import prune

    started = time.perf_counter()
    rows: list[dict] = []
    prepared: list[Prepared] = []
    total = len(seeds) * (1 + len(modes) * len(targets))
    with tempfile.TemporaryDirectory(prefix="edgeprune-sweep-") as tmp_name:
        tmp = Path(tmp_name)
        dataset, trainer = _trainer(data, epochs, tmp / "train", limit_train, limit_test)
        if dataset is not None and not is_folder_ref(model):
            model = model.with_data(dataset.num_classes, dataset.input_shape())
            input_shape = dataset.input_shape()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = Path(model.ref).name if is_folder_ref(model) else model.ref
        for seed in seeds:
            resolved = _base_model(model, seed)
            base, input_shape = resolved.model, tuple(input_shape or resolved.input_shape)
            ref_totals = record_shapes(base, torch.zeros(1, *input_shape)).totals()
            jobs: list[tuple[str, float]] = [("unpruned", 1.0)] + [(m, t) for m in modes for t in targets]
            for mode, target in jobs:
                t0 = time.perf_counter()
                if mode == "unpruned":
                    # Train a copy of the unpruned model: the pruned ones are cut from the untrained base.
                    candidate = copy.deepcopy(base) if trainer is not None else base
                else:
                    candidate = prune(base, mode, target, step=step, seed=seed, input_shape=input_shape).model
                prune_s = time.perf_counter() - t0
                acc = train_s = None
                if trainer is not None:
                    acc, train_s = trainer(candidate, seed, f"{mode}-{target:g}-s{seed}")
                t1 = time.perf_counter()
                ready = prepare(candidate, tmp / f"m{len(rows)}", backends, input_shape)
                measured = measure_prepared(ready, backends, runs, warmup, 1, threads, spin=spin)
                row = _row(name, mode, target, seed, measured, ref_totals)
                row.update(
                    accuracy=acc, train_seconds=train_s, prune_seconds=prune_s, bench_seconds=time.perf_counter() - t1
                )
                rows.append(row)
                prepared.append(ready)
                del candidate
                lat = ", ".join(f"{b} {row[f'{b}_latency_isolated_median_ms']:.2f} ms" for b in backends)
                acc_text = f", accuracy {100 * acc:.2f}%" if acc is not None else ""
                say(
                    f"[{len(rows)}/{total}] {mode} {target:g} seed {seed}: {row['params_pct']:.0f}% params, "
                    f"{row['flops_pct']:.0f}% FLOPs, {row['memory_pct']:.0f}% memory; own process: {lat}{acc_text}"
                )
        for b in backends:
            say(f"timing all {len(rows)} models interleaved in one {b} process ({runs} rounds)")
            lat = latency_interleaved(dict(enumerate(prepared)), b, runs, warmup, 1, threads, spin=spin)
            for i, row in enumerate(rows):
                stats = lat[str(i)]["latency_ms"]
                row.update({f"{b}_latency_median_ms": stats["median"], f"{b}_latency_p90_ms": stats["p90"],
                            f"{b}_latency_mean_ms": stats["mean"]})  # fmt: skip
    elapsed = time.perf_counter() - started
    result = {
        "model": name,
        "settings": {
            "modes": list(modes),
            "targets": list(targets),
            "seeds": list(seeds),
            "backends": backends,
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "spin_wait": spin,
            "batch_size": 1,
            "step": step,
            "epochs": epochs,
            "data": data if data is None or isinstance(data, (str, Path)) else data.name,
            "limit_train": limit_train,
            "limit_test": limit_test,
            "input_shape": list(input_shape),
            "y": y,
        },
        "conventions": {
            "complexity": "fp32, batch 1; flops = multiply-adds counted once (MACs); memory_bytes = 4 B x (params + "
            "output maps); *_pct relative to the unpruned model",
            "latency": "ms per inference at batch 1; <backend>_latency_median/p90/mean_ms: all models timed "
            "round-robin in one process per backend (same machine conditions for every model); "
            "<backend>_latency_isolated_median_ms: in the model's own measuring process",
            "cpu_pct": "process CPU time of all threads / wall time of the timed loop, % of one core",
            "rss": "MB (1e6 bytes) of the model's own measuring process; increase = peak minus RSS before the model "
            "was loaded",
            "size_mb": "model.safetensors (torch) or the exported .onnx file (onnxruntime), MB (1e6 bytes)",
            "energy": ENERGY_NOTE + "; microjoules per inference",
            "accuracy": "test accuracy in [0, 1] after training the pruned model from scratch" if data else None,
        },
        "elapsed_seconds": elapsed,
        "machine": machine_info(),
        "rows": rows,
    }
    write_csv(out / "results.csv", rows, columns(backends))
    result["plots"] = plot_sweep(result, out)
    write_json(out / "results.json", result)
    say(f"{len(rows)} models in {elapsed:.0f} s; wrote {out}/: results.csv, results.json, {', '.join(result['plots'])}")
    return result


def plot_sweep(result: dict, out: Path) -> list[str]:
    """Draw the trade-off figures of a sweep result into ``out``; returns the file names."""
    from edgeprune.plots import plot_latency_flops, plot_tradeoffs

    rows, s = result["rows"], result["settings"]
    y_key, y_label, y_scale, y_name = _Y_LABEL[s["y"]]
    files = []
    spin = "" if s.get("spin_wait", True) else ", no spin-wait"
    setting = f"{s['runs']} runs, batch 1, {s['threads']} thread(s){spin}"
    for b in s["backends"]:
        cpu_max = 1.08 * max([100.0 * s["threads"]] + [r[f"{b}_cpu_pct"] for r in rows if r.get(f"{b}_cpu_pct")])
        panels = [
            (f"{b}_latency_median_ms", f"median latency (ms), {b}"),
            ("energy_uj", "energy per inference (uJ, 45 nm estimate, Horowitz 2014)"),
            (f"{b}_cpu_pct", f"CPU utilisation (% of one core; {s['threads']} thread(s)), {b}", (0, cpu_max)),
            (f"{b}_rss_increase_mb", f"inference memory: RSS increase (MB), {b}"),
        ]
        title = (
            f"{result['model']} on {b} ({setting}): {y_name} against cost, one series per pruning mode\n"
            "lower x and higher y are better; latency timed interleaved, CPU and memory per model process"
        )
        file = f"tradeoffs_{b}.png"
        plot_tradeoffs(rows, out / file, y_key, y_label, panels, title, y_scale)
        files.append(file)
    plot_latency_flops(
        rows,
        out / "latency_vs_flops.png",
        s["backends"],
        f"{result['model']}: measured latency against FLOPs ({setting}), timed interleaved",
    )
    files.append("latency_vs_flops.png")
    return files


__all__ = ["DEFAULT_RUNS", "DEFAULT_TARGETS", "columns", "plot_sweep", "sweep", "write_csv"]
