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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgeprune.backends import BACKENDS, check_backends
from edgeprune.cluster import MAX_RETRIES, RayOptions, node_info
from edgeprune.costs import MCU, STATIC, check_cost
from edgeprune.costs import PAPER_MODES as MODES
from edgeprune.data.progress import Counter, Waiter, echo
from edgeprune.energy import ENERGY_NOTE
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.io import ModelRef, Resolved, is_folder_ref, resolve
from edgeprune.measure import Prepared, latency_interleaved, machine_info, measure_prepared, prepare
from edgeprune.pruning import check_seed
from edgeprune.runtime import default_threads
from edgeprune.trace import record_shapes

if TYPE_CHECKING:
    from edgeprune.data import ImageDataset

RAY_NOTE = (
    "each point was pruned, trained and benched in its own Ray task on the node named in 'node': its "
    "<backend>_latency_isolated_median_ms, cpu_pct, rss_* and train/prune/bench seconds were measured on that node, "
    "and such figures from different nodes are not comparable with each other; <backend>_latency_median/p90/mean_ms "
    "come from the interleaved pass on the machine that ran the command: comparable with each other"
)
DEFAULT_TARGETS = (0.9, 0.7, 0.5, 0.3)
DEFAULT_RUNS = 30  # timed runs per model and backend: VGG-16's 13 models x 2 backends in a few minutes
DEFAULT_WARMUP = 5
_Y_SCALE = {"params": (1e-6, "millions"), "flops": (1e-6, "millions"), "memory": (1e-6, "MB"), "energy": (1.0, "uJ")}
_Y_LABEL = {  # (row key, axis label, scale, what the title calls it): every static cost, from edgeprune.costs
    "accuracy": ("accuracy", "test accuracy (%)", 100.0, "test accuracy"),
    **{name: (c.key, f"{c.label} kept ({_Y_SCALE[name][1]})", _Y_SCALE[name][0],
              f"{c.label} kept (untrained: capacity proxy)") for name, c in STATIC.items()},
}  # fmt: skip
Y_CHOICES = tuple(_Y_LABEL)
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


def columns(backends: Sequence[str], nodes: bool = False, mcu: Sequence[str] = (), search: bool = False) -> list[str]:
    """The CSV columns, in order, for the given backends (and, for a sweep on Ray, where each point ran); ``mcu``:
    the microcontroller costs profiled (peak_memory, flash); ``search``: points searched (``--candidates``)."""
    cols = [
        "model",
        "mode",
        "target",
        "seed",
        "precision",
        "params",
        "flops",
        "memory_bytes",
        "params_pct",
        "flops_pct",
        "memory_pct",
        "energy_uj",
        "energy_compute_uj",
        "energy_dram_uj",
        *(col for name in mcu for col in (MCU[name].key, f"{name}_pct")),
    ]
    for b in backends:
        cols += [f"{b}_{f}" for f in _BACKEND_FIELDS]
    timing = ["accuracy", "train_seconds", "prune_seconds", *(["search_seconds"] * search), "bench_seconds"]
    return cols + timing + (["node", "ray_node_id"] * nodes)


def _check_args(modes: Sequence[str], targets: Sequence[float], seeds: Sequence[int], epochs: int | None,
                data: str | None) -> None:  # fmt: skip
    if not modes:
        raise EdgepruneError("no modes given")
    for m in modes:
        check_cost(m)
        if m == "latency":
            raise EdgepruneError("a sweep prunes to proxy costs; for a latency target use 'edgeprune prune --lut'")
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


def _dataset(
    data: str | Path | object | None, limit_train: int | None = None, limit_test: int | None = None
) -> ImageDataset | None:
    """The data set to train on: one the caller loaded (the CLI, with its size caps) as it is, else ``data`` loaded."""
    if data is None:
        return None
    try:
        from edgeprune.data import load_dataset
        from edgeprune.train import train  # noqa: F401 - training must be there
    except ImportError as e:
        raise EdgepruneError(f"training is not available in this installation ({e})") from None
    return data if not isinstance(data, (str, Path)) else load_dataset(data, limit_train, limit_test)


@dataclass
class SweepContext:
    """What every sweep point needs: the model, how to train and measure it, where its files go."""

    model: ModelRef
    name: str
    input_shape: tuple[int, ...]
    backends: list[str]
    runs: int
    warmup: int
    threads: int
    spin: bool
    step: float
    work: Path  # the points' prepared models (m<index>/) and training folders (train/<tag>/)
    dataset: ImageDataset | None = None
    epochs: int | None = None
    train_threads: int | None = None  # None: all cores
    device: str = "cpu"  # where training runs (edgeprune.train.resolve_device)
    int8: bool = False  # also quantize each point to int8 (onnxruntime QDQ), calibrated on the data set
    resume: bool = False  # a point Ray retries continues its training from the checkpoint
    also: dict = field(default_factory=dict)  # limits every point meets besides its mode's target (cost -> limit)
    round_to: int = 1  # every pruned width a multiple of this
    mcu: tuple[str, ...] = ()  # the microcontroller costs profiled for every point (peak_memory, flash)
    search: dict | None = None  # the candidate search's settings (candidates > 1), as edgeprune.search.prune takes


def mcu_costs(model: torch.nn.Module, input_shape: tuple[int, ...], names: Sequence[str]) -> dict[str, float]:
    """The microcontroller costs ``names`` (peak_memory, flash) of ``model``, keyed as in the JSON output."""
    from edgeprune.liveness import attach

    example = torch.zeros(1, *input_shape)
    prof = record_shapes(model, example)
    if "peak_memory" in names:
        attach(prof, model, example)
    return {MCU[n].key: MCU[n].total(prof) for n in names}


def _prune_point(ctx: SweepContext, base: torch.nn.Module, budget: dict, seed: int) -> tuple[torch.nn.Module, dict]:
    """A point's pruned model, the best of the candidates when searching (its candidate table, else {})."""
    from edgeprune.search import prune

    options = {"step": ctx.step, "seed": seed, "input_shape": ctx.input_shape, "round_to": ctx.round_to}
    if ctx.search is None:
        return prune(base, budget=budget, **options).model, {}
    t0 = time.perf_counter()
    result = prune(base, budget=budget, data=ctx.dataset, **ctx.search, **options)
    return result.model, {**(result.plan.search or {}), "search_seconds": round(time.perf_counter() - t0, 3)}


def _train_point(ctx: SweepContext, model: torch.nn.Module, seed: int, tag: str) -> tuple[float, float]:
    """Train a point's model from scratch; its test accuracy in [0, 1] and training seconds."""
    from edgeprune.train import TrainConfig, train

    result = train(model, ctx.dataset, TrainConfig(epochs=ctx.epochs, seed=seed), out_dir=ctx.work / "train" / tag,
                   resume=ctx.resume, progress=False, threads=ctx.train_threads, device=ctx.device)  # fmt: skip
    return float(result.test_accuracy), float(result.train_seconds)


def _point(
    ctx: SweepContext, base: torch.nn.Module, ref_totals: dict, seed: int, mode: str, target: float, index: int
) -> list[tuple[dict, Prepared]]:
    """One sweep point: ``base`` pruned (or kept: ``unpruned``), trained if asked, measured in fresh processes;
    with ``ctx.int8`` its int8 export is a second row (mode ``MODE int8``)."""
    t0, searched = time.perf_counter(), {}
    if mode == "unpruned":
        # Train a copy of the unpruned model: the pruned ones are cut from the untrained base.
        candidate = copy.deepcopy(base) if ctx.dataset is not None else base
    else:
        budget = {mode: target, **{k: v for k, v in ctx.also.items() if k != mode}}
        candidate, searched = _prune_point(ctx, base, budget, seed)
    prune_s = time.perf_counter() - t0
    mcu = mcu_costs(candidate, ctx.input_shape, ctx.mcu) if ctx.mcu else {}  # before training: eval-mode trace
    acc = train_s = None
    if ctx.dataset is not None:
        acc, train_s = _train_point(ctx, candidate, seed, f"{mode}-{target:g}-s{seed}")
        train_s += searched.get("search_seconds", 0.0)  # the search's seconds count in the training time
    t1 = time.perf_counter()
    ready = prepare(candidate, ctx.work / f"m{index}", ctx.backends, ctx.input_shape)
    measured = measure_prepared(
        ready, ctx.backends, runs=ctx.runs, warmup=ctx.warmup, threads=ctx.threads, spin=ctx.spin
    )
    row = _row(ctx.name, mode, target, seed, measured, ref_totals)
    for name in ctx.mcu:
        key = MCU[name].key
        row.update({key: mcu[key], f"{name}_pct": 100.0 * mcu[key] / ref_totals[key]})
    row.update(accuracy=acc, train_seconds=train_s, prune_seconds=prune_s, bench_seconds=time.perf_counter() - t1)
    if searched:
        row.update(search_seconds=searched["search_seconds"], search=searched)
    points = [(row, ready)]
    if ctx.int8:
        points.append(_int8_point(ctx, ready, row, ref_totals, index))
    return points


def _int8_point(ctx: SweepContext, ready: Prepared, row: dict, ref_totals: dict, index: int) -> tuple[dict, Prepared]:
    """The point's fp32 export quantized to int8 (calibrated on training images), measured and evaluated."""
    from edgeprune.evaluate import evaluate
    from edgeprune.quantize import quantize_onnx

    t0 = time.perf_counter()
    path = ctx.work / f"m{index}-int8.onnx"
    quantize_onnx(ready.onnx, path, ctx.dataset, seed=row["seed"])
    quantized = prepare(path, ctx.work / f"m{index}-int8", ("onnxruntime",), ctx.input_shape)
    measured = measure_prepared(
        quantized, ("onnxruntime",), runs=ctx.runs, warmup=ctx.warmup, threads=ctx.threads, spin=ctx.spin
    )
    int8 = _row(ctx.name, f"{row['mode']} int8", row["target"], row["seed"], measured, ref_totals)
    accuracy = evaluate(path, ctx.dataset)["top1"] if ctx.epochs else None
    int8.update(accuracy=accuracy, train_seconds=None, prune_seconds=None, bench_seconds=time.perf_counter() - t0)
    return int8, quantized


def _reference(ctx: SweepContext, seed: int) -> tuple[torch.nn.Module, dict]:
    """The unpruned model of ``seed`` and its complexity totals."""
    base = _base_model(ctx.model, seed).model
    totals = record_shapes(base, torch.zeros(1, *ctx.input_shape)).totals()
    return base, {**totals, **(mcu_costs(base, ctx.input_shape, ctx.mcu) if ctx.mcu else {})}


Job = tuple[int, str, float]  # seed, mode ("unpruned" for the reference point), target


def _points_here(ctx: SweepContext, jobs: list[Job]) -> Iterator[tuple[dict, Prepared]]:
    """Every point in this process, one after the other; each seed's unpruned model is built once."""
    bases: dict[int, tuple[torch.nn.Module, dict]] = {}
    for index, (seed, mode, target) in enumerate(jobs):
        if seed not in bases:
            bases = {seed: _reference(ctx, seed)}
        yield from _point(ctx, *bases[seed], seed, mode, target, index)


def _point_task(ctx: SweepContext, seed: int, mode: str, target: float, index: int) -> list[tuple[dict, Prepared]]:
    """Ray task: one point, its unpruned model built from the seed; the rows name the node they ran on."""
    points = _point(ctx, *_reference(ctx, seed), seed, mode, target, index)
    node = node_info(in_ray=True)
    for row, _ in points:
        row.update(node=node["hostname"], ray_node_id=node["ray_node_id"])
    return points


def _points_on_ray(ctx: SweepContext, jobs: list[Job], options: RayOptions,
                   bar: Counter) -> Iterator[tuple[dict, Prepared]]:  # fmt: skip
    """Every point as a Ray task, counted on ``bar`` as each finishes; yielded in the serial order."""
    from edgeprune import cluster

    with cluster.connected(options) as ray:
        cluster.check_shared_folder(ray, ctx.work.parent)
        shared = ray.put(ctx)
        point = cluster.task(ray, _point_task, options)
        refs = [point.remote(shared, seed, mode, target, i) for i, (seed, mode, target) in enumerate(jobs)]
        finished = Waiter(ray.wait, refs, bar, weight=2 if ctx.int8 else 1)  # a point's rows: fp32, int8
        for (seed, mode, target), ref in zip(jobs, refs):
            finished.until([ref])
            yield from cluster.get(ray, ref, f"the sweep point {mode} {target:g} seed {seed}")


def _row(name: str, mode: str, target: float, seed: int, measured: dict, ref: dict | None) -> dict:
    c = measured["complexity"]
    row: dict = {
        "model": name,
        "mode": mode,
        "target": target,
        "seed": seed,
        "precision": measured["complexity"].get("precision", "fp32"),
        "params": c["params"],
        "flops": c["flops"],
        "memory_bytes": c["memory_bytes"],
    }
    ref = ref or c
    for k in MODES:
        row[f"{k}_pct"] = 100.0 * c[STATIC[k].key] / ref[STATIC[k].key]
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


@dataclass
class SweepSettings:
    """What one sweep prunes, trains and measures, and where it writes (``sweep``'s one argument besides the model)."""

    out: str | Path  # the folder for results.csv, results.json and the plots
    modes: Sequence[str] = MODES  # the costs each point is pruned in (proxy costs only: no latency)
    targets: Sequence[float] = DEFAULT_TARGETS  # fractions of the model's own cost in (0, 1), one point per mode each
    seeds: Sequence[int] = (0,)  # every point once per seed (the model's initial weights and the lottery)
    backends: Sequence[str] = BACKENDS  # where each point is timed (edgeprune.measure)
    runs: int = DEFAULT_RUNS  # timed runs per model and backend
    warmup: int = DEFAULT_WARMUP  # untimed runs before them
    threads: int | None = None  # inference threads; None: the machine's default (a Ray run's CPUs with ``ray``)
    step: float = 0.1  # Algorithm 1's step
    epochs: int | None = None  # train each point this long from scratch (with ``data``); None: untrained
    data: str | Path | object | None = None  # a data set's path, or an ImageDataset already loaded
    y: str | None = None  # the plots' y axis (``Y_CHOICES``); None: accuracy when trained, else params
    num_classes: int | None = None  # the built model's classes (a zoo or ``py:`` reference)
    in_channels: int | None = None  # the built model's input channels
    input_shape: tuple[int, ...] | None = None  # the input (no batch dim); None: the model's own, or the data's
    log: Callable[[str], None] | None = echo  # one progress line at a time (stdout); None: quiet, no bar
    spin: bool = True  # spin-wait between timed runs (edgeprune.measure)
    limit_train: int | None = None  # training images read at most
    limit_test: int | None = None  # test images read at most
    ray: RayOptions | None = None  # run each point as a Ray task (edgeprune.cluster)
    device: str = "cpu"  # where training runs
    int8: bool = False  # also quantize every point to int8 (onnxruntime), calibrated on the training images
    also: dict[str, str | float] = field(default_factory=dict)  # limits every point meets besides its mode's target
    round_to: int = 1  # every pruned width a multiple of this
    candidates: int = 1  # K > 1: each point is the best of K candidate plans by ``proxy`` (edgeprune.search)
    candidate_kinds: Sequence[str] = ("weighted",)
    proxy: str = "flops"
    proxy_holdout: float = 0.1  # the share of the training split train:STEPS ranks on

    def validate(self) -> None:
        """Refuse settings no sweep can run, one line each, before any work."""
        for cost in self.also or {}:
            check_cost(cost)
            if cost == "latency":
                raise EdgepruneError("a sweep prunes to proxy costs; for a latency target use 'edgeprune prune --lut'")
        _check_args(self.modes, self.targets, self.seeds, self.epochs, self.data)
        backends = list(check_backends(tuple(self.backends)))
        if self.y_axis() not in Y_CHOICES:
            raise EdgepruneError(f"unknown y axis '{self.y_axis()}'; choose from: {', '.join(Y_CHOICES)}")
        if self.y_axis() == "accuracy" and not self.data:
            raise EdgepruneError("--y accuracy needs training (--data and --epochs)")
        if self.runs < 1 or self.warmup < 0:
            raise EdgepruneError(f"runs must be positive and warmup >= 0, got runs={self.runs}, warmup={self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise EdgepruneError(f"threads must be positive, got {self.threads}")
        if self.searching():
            from edgeprune.search import KINDS, get_proxy

            get_proxy(self.proxy)
            bad = [k for k in self.candidate_kinds if k not in KINDS]
            if bad or not 0 < self.proxy_holdout < 1 or not isinstance(self.candidates, int) or self.candidates < 1:
                raise EdgepruneError(f"bad candidate search: candidates {self.candidates!r}, kinds "
                                     f"{list(self.candidate_kinds)} (of {', '.join(KINDS)}), holdout "
                                     f"{self.proxy_holdout!r}")  # fmt: skip
        if self.int8 and (self.data is None or "onnxruntime" not in backends):
            raise EdgepruneError("--int8 needs --data (its training images calibrate) and the onnxruntime backend")

    def searching(self) -> bool:
        """Whether each point is a candidate search's kept plan (``candidates`` > 1)."""
        return self.candidates != 1

    def mcu(self) -> tuple[str, ...]:
        """The microcontroller costs the points are profiled in: those among the modes and ``also`` limits."""
        return tuple(n for n in MCU if n in self.modes or n in (self.also or {}))

    def y_axis(self) -> str:
        """The plots' y axis: ``y``, else accuracy when the points are trained, else params."""
        return self.y or ("accuracy" if self.data else "params")


def sweep(model: str | ModelRef, settings: SweepSettings) -> dict:
    """Prune ``model`` in every mode to every target (and seed), bench each, write results and plots.

    With ``settings.ray``, each point (prune, train if asked, bench) is a Ray task (see :mod:`edgeprune.cluster`)
    and ``threads`` defaults to the CPUs of a run; the final interleaved latency pass still runs here.
    ``settings.also`` holds limits every pruned point meets besides its mode's target (``{"memory": "4MB"}``: the
    same budget form as ``prune``), ``round_to`` the multiple every pruned width keeps.
    """
    s = settings
    s.validate()
    backends = list(check_backends(tuple(s.backends)))
    threads = s.threads or (s.ray.threads() if s.ray is not None else default_threads())
    if not isinstance(model, ModelRef):
        model = ModelRef(str(model), num_classes=s.num_classes, in_channels=s.in_channels)
    checked = resolve(model)  # fail early on a bad name, folder or reference
    say = s.log or (lambda _msg: None)
    started = time.perf_counter()
    out = Path(s.out)
    dataset = _dataset(s.data, s.limit_train, s.limit_test)
    input_shape = s.input_shape
    if dataset is not None and not is_folder_ref(model):
        model = model.with_data(dataset.num_classes, dataset.input_shape())
        input_shape = dataset.input_shape()
    out.mkdir(parents=True, exist_ok=True)
    # with Ray, the points' files go where every node and this process see them
    where = (
        {"prefix": ".edgeprune-sweep-", "dir": out.resolve()} if s.ray is not None else {"prefix": "edgeprune-sweep-"}
    )
    with tempfile.TemporaryDirectory(**where) as tmp_name:
        ctx = SweepContext(
            model, Path(model.ref).name if is_folder_ref(model) else model.ref,
            tuple(input_shape or checked.input_shape), backends, s.runs, s.warmup, threads, s.spin, s.step,
            Path(tmp_name), dataset, s.epochs, device=s.device, int8=s.int8, also=dict(s.also or {}),
            round_to=s.round_to, mcu=s.mcu(),
            search={"candidates": s.candidates, "candidate_kinds": tuple(s.candidate_kinds), "proxy": s.proxy,
                    "holdout": s.proxy_holdout} if s.searching() else None,
        )  # fmt: skip
        rows = _measure_points(ctx, s, say)
    result = _result(ctx, s, rows, time.perf_counter() - started)
    write_csv(out / "results.csv", rows, columns(backends, nodes=s.ray is not None, mcu=s.mcu(), search=s.searching()))
    result["plots"] = plot_sweep(result, out)
    write_json(out / "results.json", result)
    elapsed = result["elapsed_seconds"]
    say(f"{len(rows)} models in {elapsed:.0f} s; wrote {out}/: results.csv, results.json, {', '.join(result['plots'])}")
    return result


def _measure_points(ctx: SweepContext, s: SweepSettings, say: Callable[[str], None]) -> list[dict]:
    """Prune, train and bench every point (here or on Ray), then time them all interleaved per backend."""
    points = [("unpruned", 1.0)] + [(m, t) for m in s.modes for t in s.targets]
    jobs: list[Job] = [(seed, m, t) for seed in s.seeds for m, t in points]
    if s.ray is not None:
        from edgeprune.cluster import portable_ref

        ref = replace(ctx.model, ref=portable_ref(ctx.model.ref), remember=False)
        ctx = replace(ctx, model=ref, train_threads=ctx.threads, resume=True)
    rows: list[dict] = []
    prepared: list[Prepared] = []
    total = len(jobs) * (2 if s.int8 else 1)
    with Counter(total, "sweep", enabled=s.log is not None, unit="model") as bar:
        measured = _points_on_ray(ctx, jobs, s.ray, bar) if s.ray is not None else _points_here(ctx, jobs)
        for row, ready in measured:
            rows.append(row)
            prepared.append(ready)
            if s.ray is None:  # on Ray, the bar counts each task as it finishes
                bar.advance()
            say(_progress_line(row, len(rows), total, ctx.backends))
    for b in ctx.backends:
        runnable = {i: p for i, p in enumerate(prepared) if f"{b}_latency_isolated_median_ms" in rows[i]}
        say(f"timing all {len(runnable)} models interleaved in one {b} process ({s.runs} rounds)")
        lat = latency_interleaved(runnable, b, runs=s.runs, warmup=s.warmup, threads=ctx.threads, spin=s.spin)
        for i, row in enumerate(rows):
            if i not in runnable:  # an int8 file runs on onnxruntime only
                continue
            stats = lat[str(i)]["latency_ms"]
            row.update({f"{b}_latency_median_ms": stats["median"], f"{b}_latency_p90_ms": stats["p90"],
                        f"{b}_latency_mean_ms": stats["mean"]})  # fmt: skip
    return rows


def _result(ctx: SweepContext, s: SweepSettings, rows: list[dict], elapsed: float) -> dict:
    """results.json's content: the settings, the conventions of every column, the machine and the rows."""
    data = s.data
    result = {
        "model": ctx.name,
        "settings": {
            "modes": list(s.modes),
            "targets": list(s.targets),
            "seeds": list(s.seeds),
            "backends": ctx.backends,
            "runs": s.runs,
            "warmup": s.warmup,
            "threads": ctx.threads,
            "spin_wait": s.spin,
            "batch_size": 1,
            "step": s.step,
            "epochs": s.epochs,
            "data": data if data is None or isinstance(data, (str, Path)) else data.name,  # type: ignore[attr-defined]
            "limit_train": s.limit_train,
            "limit_test": s.limit_test,
            "input_shape": list(ctx.input_shape),
            "y": s.y_axis(),
            "int8": s.int8,
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
    if s.ray is not None:
        result["settings"]["ray"] = {**asdict(s.ray), "max_retries": MAX_RETRIES, "threads_per_run": ctx.threads}
        result["conventions"]["nodes"] = RAY_NOTE
    return result


def _progress_line(row: dict, done: int, total: int, backends: list[str]) -> str:
    """What a finished point measured, on one line."""
    lat = ", ".join(
        f"{b} {row[f'{b}_latency_isolated_median_ms']:.2f} ms"
        for b in backends
        if f"{b}_latency_isolated_median_ms" in row
    )
    acc = f", accuracy {100 * row['accuracy']:.2f}%" if row["accuracy"] is not None else ""
    where = f" on {row['node']}" if "node" in row else ""
    return (
        f"[{done}/{total}] {row['mode']} {row['target']:g} seed {row['seed']}{where}: {row['params_pct']:.0f}% params, "
        f"{row['flops_pct']:.0f}% FLOPs, {row['memory_pct']:.0f}% memory; own process: {lat}{acc}"
    )


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
        plot_tradeoffs(rows, out / file, y_key, y_label=y_label, panels=panels, title=title, y_scale=y_scale)
        files.append(file)
    plot_latency_flops(
        rows,
        out / "latency_vs_flops.png",
        s["backends"],
        f"{result['model']}: measured latency against FLOPs ({setting}), timed interleaved",
    )
    files.append("latency_vs_flops.png")
    return files


__all__ = ["DEFAULT_RUNS", "DEFAULT_TARGETS", "SweepSettings", "columns", "plot_sweep", "sweep", "write_csv"]
