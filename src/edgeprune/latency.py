"""Latency joins measurement and planning: tables built and calibrated, and models timed against their parent.

A latency table (``edgeprune.lut``) is built here (``build_table``): every conv/linear layer timed at its grid of
widths in fresh processes (``edgeprune.backends``), then *calibrated* (``calibrate``): whole models cut uniformly
(plans from ``edgeprune.pruning``) and the smallest network a plan can reach, each timed beside the parent. A
pruned model is judged the same way (``measure_relative``, ``default_measure``): its latency as the parent's
times their ratio, both timed interleaved, in the table's milliseconds.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeprune.complexity import Profile
from edgeprune.errors import EdgepruneError
from edgeprune.lut import (
    CALIBRATION,
    LatencyTable,
    LayerTable,
    ModelTimer,
    TableSettings,
    Timer,
    block_at,
    environment,
    layer_blocks,
    layer_grid,
    ms_text,
    table_from_dict,
    varying_layers,
)

Measure = Callable[[Any], float]  # a pruned model -> its latency (ms), in the table's units
# a progress hook, (layer, stage): stage "layer" once per grid point of ``layer`` as it is measured (ExecuTorch and
# LiteRT: as it is exported, the slow part) or its probe file written; then, layer "", "whole model" before the
# parent is timed and "calibration" before the calibration networks are timed (or written)
OnPoint = Callable[[str, str], None]
PointTimer = Callable[[dict[str, dict], Callable[[], None]], dict[str, float]]  # a Timer calling done() per block


def build_table(
    model: Any,
    input_shape: tuple[int, ...],
    settings: TableSettings | None = None,
    *,
    source: str = "",
    timer: Timer | None = None,
    parent_ms: float | None = None,
    progress: Callable[[str], None] | None = None,
    model_timer: ModelTimer | None = None,
    on_point: OnPoint | None = None,
    **changes: Any,
) -> LatencyTable:
    """Measure every conv/linear layer of ``model`` at a grid of widths on ``settings.backend``; the latency table.

    ``settings`` (``TableSettings()`` when None) says how; keywords named after its fields (``round_to=8``)
    change those fields. ``timer`` replaces the measuring processes (tests inject one); ``parent_ms`` the
    parent's measured latency. ``settings.calibration`` gives the uniform cuts timed whole (see ``calibrate``;
    ``()`` for none), ``model_timer`` replaces their measuring processes. ``progress`` gets a line per layer;
    ``on_point`` (a progress bar) is called as ``OnPoint`` says, once per grid point (``grid_points`` counts them).
    """
    settings = dataclasses.replace(settings or TableSettings(), **changes)
    settings.validate()
    started = time.perf_counter()
    model = model.eval()
    prof, grid = _grid_blocks(model, input_shape, settings)
    timing = _point_timer(timer or _ProcessTimer(settings))
    layers = _measure_layers(prof, grid, timing, on_point or _ignore, progress)
    if parent_ms is None:
        if on_point:
            on_point("", "whole model")
        # measured as prune measures a cut model, so that "latency=0.5" is half of what that measurement says
        parent_ms = measure_latency(model, input_shape, settings.backend, threads=settings.threads,
                                    processes=settings.processes, spin=settings.spin)  # fmt: skip
    full = sum(layers[layer.name].calls * layers[layer.name].at(layer.c_in, layer.c_out) for layer in prof.layers)
    table = _table(model, input_shape, settings, layers, (parent_ms, parent_ms - full), source)
    if settings.calibration:
        if progress:
            progress(f"calibration: uniform cuts at {', '.join(f'{f:g}' for f in settings.calibration)} and the floor")
        if on_point:
            on_point("", "calibration")
        table = calibrate(table, model, settings.calibration, timer=model_timer, processes=settings.processes)
    table.build_seconds = time.perf_counter() - started
    return table


def grid_points(model: Any, input_shape: tuple[int, ...], settings: TableSettings | None = None) -> dict[str, int]:
    """Each layer's count of grid points, in the order ``build_table`` and ``write_probe`` go through them."""
    settings = settings or TableSettings()
    settings.validate()  # before the grid is drawn: a ratio of 1 or more would never end it
    _, grid = _grid_blocks(model, input_shape, settings)
    return {name: len(keys) for name, (_, _, _, keys) in grid.items()}


def _ignore(layer: str, stage: str) -> None:
    """No hook given: nothing to tell."""


def _table(model: Any, input_shape: tuple[int, ...], settings: TableSettings, layers: dict[str, LayerTable],
           parent_and_rest: tuple[float, float], source: str) -> LatencyTable:  # fmt: skip
    """The uncalibrated table of measured layers, with the parent's latency (ms) and the rest beside its layers."""
    parent_ms, rest_ms = parent_and_rest
    env = environment(settings.backend)
    s = settings
    return LatencyTable(
        model=source or type(model).__name__, input_shape=list(input_shape), backend=s.backend,
        backend_version=env["backend_version"], threads=s.threads, cpu=env["cpu"], round_to=s.round_to,
        parent_ms=parent_ms, rest_ms=rest_ms, layers=layers,
        settings={"grid": {"round_to": s.round_to, "near": s.near, "ratio": s.ratio}, "runs": s.runs,
                  "warmup": s.warmup, "processes": s.processes, "spin": s.spin, "order": s.order,
                  "points": sum(len(t.c_out) * (1 if t.depthwise else len(t.c_in)) for t in layers.values())},
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )  # fmt: skip


def _measure_layers(prof: Profile, grid: dict, timing: PointTimer, on_point: OnPoint,
                    progress: Callable[[str], None] | None) -> dict[str, LayerTable]:  # fmt: skip
    """Every layer's grid (``_grid_blocks``), timed; ``on_point(layer, "layer")`` once per point."""
    layers: dict[str, LayerTable] = {}
    for layer in prof.layers:
        spec, c_in, c_out, keys = grid[layer.name]
        times = timing(keys, functools.partial(on_point, layer.name, "layer"))
        if layer.depthwise:
            ms = [[times[f"{w}"] for w in c_out]]
        else:
            ms = [[times[f"{i}x{o}"] for o in c_out] for i in c_in]
        layers[layer.name] = LayerTable(spec["kind"], c_in, c_out, ms, layer.depthwise, spec["calls"],
                                        block_at(spec, layer.c_in, layer.c_out))  # fmt: skip
        if progress:
            low, high = min(min(r) for r in ms), max(max(r) for r in ms)
            within = " (all within the per-call overhead)" if high == 0 else ""
            progress(f"{layer.name}: {len(keys)} widths, {ms_text(high, low)}{within}")
    return layers


def _point_timer(timer: Timer) -> PointTimer:
    """``timer`` as a ``PointTimer``: the measuring processes call ``done`` as each block is exported (ExecuTorch,
    LiteRT) or measured; any other timer (a test's) once per block after it has timed them all."""
    if isinstance(timer, _ProcessTimer):
        return timer.time

    def timed(blocks: dict[str, dict], done: Callable[[], None]) -> dict[str, float]:
        times = timer(blocks)
        for _ in blocks:
            done()
        return times

    return timed


class _ProcessTimer:
    """Time block specs in fresh processes (edgeprune.backends.time_artifacts): median over processes."""

    def __init__(self, settings: TableSettings):
        s = settings
        self.options = {"threads": s.threads, "runs": s.runs, "warmup": s.warmup, "spin": s.spin, "order": s.order}
        self.backend, self.processes = s.backend, s.processes

    def _block_file(self, block: dict, stem: Path) -> Path:
        """The file a measuring process loads for a block: its spec (.json), or for ExecuTorch and LiteRT, which
        take no specs, the block exported to .pte / .tflite (checked against PyTorch)."""
        from edgeprune.backends import EDGE_BACKENDS

        if self.backend in EDGE_BACKENDS:
            from edgeprune.backends.probe import SUFFIX, write_block

            return write_block(self.backend, block, stem.with_suffix(SUFFIX[self.backend]))
        path = stem.with_suffix(".json")
        path.write_text(json.dumps(block))
        return path

    def __call__(self, blocks: dict[str, dict]) -> dict[str, float]:
        """Median ms of each block, the per-call overhead taken off."""
        return self.time(blocks)

    def time(self, blocks: dict[str, dict], done: Callable[[], None] | None = None) -> dict[str, float]:
        """Median ms of each block, the per-call overhead taken off; ``done()`` once per block, as its file is
        exported (ExecuTorch and LiteRT: the slow part) or, for the other backends, as it is measured."""
        from edgeprune.backends import EDGE_BACKENDS, time_artifacts

        exported = self.backend in EDGE_BACKENDS
        out: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp:
            for chunk in _chunks(blocks):
                artifacts = {}
                for key in chunk:
                    path = self._block_file(blocks[key], Path(tmp) / f"b{len(out) + len(artifacts)}")
                    artifacts[key] = (path, tuple(blocks[key]["input_shape"]))
                    if exported and done:
                        done()
                path = self._block_file(OVERHEAD_BLOCK, Path(tmp) / "overhead")
                artifacts[OVERHEAD] = (path, tuple(OVERHEAD_BLOCK["input_shape"]))
                rounds = [
                    time_artifacts(artifacts, self.backend, seed=p, **self.options) for p in range(self.processes)
                ]
                # A layer timed alone pays the backend's per-call cost (session.run, module call, output
                # allocation) that a whole model pays once; the rest of the model keeps it once.
                overhead = [r[OVERHEAD]["median"] for r in rounds]
                out.update(
                    {key: statistics.median(max(0.0, r[key]["median"] - o) for r, o in zip(rounds, overhead))
                     for key in chunk}
                )  # fmt: skip
                if done and not exported:
                    for _ in chunk:
                        done()
        return out


OVERHEAD = "__overhead__"
# the cheapest call a backend can make: a 1x1 conv on one value, timed beside the layers and subtracted
OVERHEAD_BLOCK = {"kind": "conv", "c_in": 1, "c_out": 1, "kernel": [1, 1], "stride": [1, 1], "padding": [0, 0],
                  "dilation": [1, 1], "groups": 1, "bias": False, "norm": False, "act": None,
                  "input_shape": [1, 1, 1]}  # fmt: skip
CHUNK_BYTES = 256 * 2**20  # weights held by one measuring process at a time (a 4096x4096 layer is 64 MiB)


def _chunks(blocks: dict[str, dict]) -> list[list[str]]:
    """Split the blocks so that one process never holds more than CHUNK_BYTES of weights."""
    chunks: list[list[str]] = [[]]
    held = 0
    for key, b in blocks.items():
        size = 4 * b["c_in"] // b["groups"] * b["c_out"] * math.prod(b.get("kernel", [1]))
        if chunks[-1] and held + size > CHUNK_BYTES:
            chunks.append([])
            held = 0
        chunks[-1].append(key)
        held += size
    return chunks


def _medians(models: dict[str, Any], input_shape: tuple[int, ...], backend: str, threads: int, runs: int,
             warmup: int, processes: int, spin: bool) -> list[dict[str, float]]:  # fmt: skip
    """Per fresh process, each model's median latency (ms), the models timed interleaved in that process."""
    from edgeprune.measure import latency_interleaved, prepare

    with tempfile.TemporaryDirectory(prefix="edgeprune-lut-models-") as tmp:
        ready = {name: prepare(m, Path(tmp) / name, (backend,), tuple(input_shape)) for name, m in models.items()}
        options = {"runs": runs, "warmup": warmup, "threads": threads, "spin": spin}
        rounds = [latency_interleaved(ready, backend, seed=p, **options) for p in range(processes)]
    return [{name: r[name]["latency_ms"]["median"] for name in models} for r in rounds]


def measure_latency(
    model: Any,
    input_shape: tuple[int, ...],
    backend: str,
    *,
    threads: int,
    runs: int = 100,
    warmup: int = 10,
    processes: int = 3,
    spin: bool = False,
) -> float:
    """A whole model's batch-1 latency (ms) on ``backend``: median over ``processes`` fresh processes' medians."""
    rounds = _medians({"model": model}, input_shape, backend, threads, runs, warmup, processes, spin)
    return statistics.median(r["model"] for r in rounds)


def calibrate(
    table: LatencyTable,
    model: Any,
    fractions: tuple[float, ...] = CALIBRATION,
    *,
    prune_residual: bool = True,
    timer: ModelTimer | None = None,
    runs: int = 100,
    warmup: int = 10,
    processes: int | None = None,
) -> LatencyTable:
    """``table`` with its calibration: uniform cuts of ``model`` at ``fractions`` of its table sum and the smallest
    network (every prunable group at its floor), each measured beside the parent (in the table's ms).

    ``timer`` replaces the measuring processes (tests inject one).
    """
    if any(not 0 < f < 1 for f in fractions):
        raise EdgepruneError(f"calibration fractions must be in (0, 1), got {list(fractions)}")
    parent_sum, cuts = _calibration_cuts(table, model, fractions, prune_residual)
    if timer is None:
        settings = table.settings or {}
        timer = _relative_timer(table, runs, warmup, processes or settings.get("processes", 3),
                                settings.get("spin", False))  # fmt: skip
    ms = timer({"parent": model, **{name: cut for name, (cut, _) in cuts.items()}})
    points = [[parent_sum, table.parent_ms]] + [[s, ms[name]] for name, (_, s) in cuts.items()]
    return dataclasses.replace(table, calibration=sorted(points))


def _calibration_cuts(table: LatencyTable, model: Any, fractions: tuple[float, ...],
                      prune_residual: bool) -> tuple[float, dict[str, tuple[Any, float]]]:  # fmt: skip
    """The parent's table sum, and the calibration networks by name: (the cut model, its table sum)."""
    import torch

    from edgeprune.graph import analyse
    from edgeprune.pruning import apply_plan, floor_plan, make_budget_plan

    example = torch.zeros(1, *table.input_shape)
    prof, _ = analyse(copy.deepcopy(model), example, prune_residual)
    table.check_model(prof)
    plans = {"floor": floor_plan(prof, prof.groups, round_to=table.round_to)}
    for f in fractions:
        try:
            budget = {"latency": f * table.parent_ms}
            plans[f"uniform {f:g}"] = make_budget_plan(prof, prof.groups, budget, selection="ratio",
                                                       round_to=table.round_to, table=table)  # fmt: skip
        except EdgepruneError:  # below the floor: the floor stands for it
            continue
    cuts = {}
    for name, plan in plans.items():
        cut = copy.deepcopy(model)
        apply_plan(cut, plan, example, analyse(cut, example, prune_residual)[1])
        cuts[name] = (cut, table.table_sum(plan.after))
    return table.table_sum(prof), cuts


def _relative_timer(table: LatencyTable, runs: int, warmup: int, processes: int, spin: bool) -> ModelTimer:
    """Time models interleaved with the parent in fresh processes, in the table's ms."""
    return lambda models: _relative(models, tuple(table.input_shape), table.backend, table.threads, table.parent_ms,
                                    runs, warmup, processes, spin)  # fmt: skip


def _relative(models: dict[str, Any], input_shape: tuple[int, ...], backend: str, threads: int, parent_ms: float,
              runs: int, warmup: int, processes: int, spin: bool) -> dict[str, float]:  # fmt: skip
    """Each model as ``parent_ms`` x its median ratio to ``models["parent"]``, timed interleaved per fresh process."""
    rounds = _medians(models, input_shape, backend, threads, runs, warmup, processes, spin)
    return {n: parent_ms * statistics.median(r[n] / r["parent"] for r in rounds) for n in models}


def measure_relative(
    model: Any,
    parent: Any,
    input_shape: tuple[int, ...],
    *,
    backend: str,
    threads: int,
    parent_ms: float,
    runs: int = 100,
    warmup: int = 10,
    processes: int = 3,
    spin: bool = False,
) -> float:
    """``model``'s latency as ``parent_ms`` x its ratio to ``parent``, both timed interleaved in each fresh process.

    On a shared machine absolute latency drifts by tens of % within an hour (docs/results/lut_timing_order.md);
    the ratio of two models timed side by side does not, so a cut is judged against the parent under the same
    conditions, in the units of the table it was planned with.
    """
    models = {"parent": parent, "model": model}
    return _relative(models, input_shape, backend, threads, parent_ms, runs, warmup, processes, spin)["model"]


def default_measure(table: Any, input_shape: tuple[int, ...], parent: Any) -> Measure:
    """Measure on the table's backend and threads: a cut's latency relative to the parent timed beside it, in
    the table's milliseconds (``measure_relative``: robust to the machine's drift). A probe's table (measured on
    another device) cannot be checked here: its cuts are judged by the table's calibrated prediction."""
    settings = getattr(table, "settings", {}) or {}
    if isinstance(settings.get("probe"), dict):
        return predicted_measure(table, input_shape)

    def measure(model: Any) -> float:
        return measure_relative(model, parent, input_shape, backend=table.backend, threads=table.threads,
                                parent_ms=table.parent_ms, processes=settings.get("processes", 3),
                                spin=settings.get("spin", False))  # fmt: skip

    return measure


# -- the probe: the same grid and calibration networks, timed on the device ---------------------


def _grid_blocks(model: Any, input_shape: tuple[int, ...], settings: TableSettings) -> tuple[Profile, dict]:
    """The model's profile and each layer's grid: name -> (spec, c_in, c_out, {key: block spec})."""
    import torch

    from edgeprune.graph import analyse

    prof, _ = analyse(model.eval(), torch.zeros(1, *input_shape), prune_residual=True)
    blocks = layer_blocks(model, input_shape)
    ins, outs = varying_layers(prof)
    grid = {"near": settings.near, "ratio": settings.ratio}
    out = {}
    for layer in prof.layers:
        if layer.name not in blocks:
            raise EdgepruneError(f"layer {layer.name} is not a Conv2d or Linear module: no latency table for it")
        spec = blocks[layer.name]
        c_in, c_out = layer_grid(spec, layer, ins, outs, settings.round_to, grid)
        if layer.depthwise:
            keys = {f"{w}": block_at(spec, w, w) for w in c_out}
        else:
            keys = {f"{i}x{o}": block_at(spec, i, o) for i in c_in for o in c_out}
        out[layer.name] = (spec, c_in, c_out, keys)
    return prof, out


def _proxy_table(model: Any, input_shape: tuple[int, ...], settings: TableSettings) -> LatencyTable:
    """A table of multiply-adds in place of milliseconds: where the probe's calibration cuts are chosen."""

    def macs(blocks: dict[str, dict]) -> dict[str, float]:
        out = {}
        for key, b in blocks.items():
            positions = math.prod(b["input_shape"][1:]) if b["kind"] == "conv" else 1
            stride = math.prod(b.get("stride", [1])) if b["kind"] == "conv" else 1
            kernel = math.prod(b.get("kernel", [1])) if b["kind"] == "conv" else 1
            out[key] = 1e-6 * (1 + b["c_in"] // b["groups"] * b["c_out"] * kernel * positions / stride)
        return out

    quiet = dataclasses.replace(settings, calibration=())
    table = build_table(model, input_shape, quiet, timer=macs, parent_ms=1.0)
    full = table.parent_ms - table.rest_ms
    return dataclasses.replace(table, parent_ms=full, rest_ms=0.0)


def write_probe(
    model: Any,
    input_shape: tuple[int, ...],
    folder: str | Path,
    settings: TableSettings | None = None,
    *,
    source: str = "",
    force: bool = False,
    on_point: OnPoint | None = None,
) -> dict:
    """Write a probe bundle for ``settings.backend``: the table's grid of layer blocks, the overhead block, the
    parent and its calibration cuts (chosen by multiply-adds), and probe.py; its manifest. ``on_point(layer,
    "layer")`` is called after each grid point's file is written, ``on_point("", "calibration")`` before the
    calibration networks are (``OnPoint``: a progress bar).

    ``table_from_probe`` turns the device's measurements of it into the table ``build_table`` would measure there.
    """
    from edgeprune.backends.probe import Bundle

    settings = settings or TableSettings()
    settings.validate()
    bundle = Bundle(folder, settings.backend, force=force)
    prof, grid = _grid_blocks(model, input_shape, settings)
    layers = {}
    for name, (spec, c_in, c_out, keys) in grid.items():
        group = bundle.group(f"layer {name}")
        for key, block in keys.items():
            bundle.add_block(group, key, block)
            if on_point is not None:
                on_point(name, "layer")
        bundle.add_block(group, OVERHEAD, OVERHEAD_BLOCK)
        depthwise = next(layer.depthwise for layer in prof.layers if layer.name == name)
        layers[name] = {"kind": spec["kind"], "c_in": c_in, "c_out": c_out, "depthwise": depthwise,
                        "calls": spec["calls"], "block": block_at(spec, spec["c_in"], spec["c_out"])}  # fmt: skip
    cuts: dict[str, dict] = {}
    if on_point is not None:
        on_point("", "calibration")
    if settings.calibration:
        group = bundle.group("calibration")
        bundle.add_model(group, "parent", model, input_shape)
        _, nets = _calibration_cuts(_proxy_table(model, input_shape, settings), model, settings.calibration, True)
        for name, (cut, _) in nets.items():
            bundle.add_model(group, name, cut, input_shape)
            cuts[name] = {layer.name: [layer.c_in, layer.c_out] for layer in _profile(cut, input_shape).layers}
    else:
        bundle.add_model(bundle.group("calibration"), "parent", model, input_shape)
    s = settings
    return bundle.finish(
        model=source or type(model).__name__, input_shape=list(input_shape), round_to=s.round_to,
        grid={"round_to": s.round_to, "near": s.near, "ratio": s.ratio}, layers=layers, calibration=cuts,
        timing={"runs": s.runs, "warmup": s.warmup, "rounds": s.processes},
    )  # fmt: skip


def predicted_measure(table: Any, input_shape: tuple[int, ...]) -> Measure:
    """A cut's latency as ``table`` predicts it: its layers' table sum, calibrated (no timing)."""
    from edgeprune.costs import get_cost

    return lambda model: table.calibrated(get_cost("latency", table).total(_profile(model, input_shape)))


def _profile(model: Any, input_shape: tuple[int, ...]) -> Profile:
    import torch

    from edgeprune.graph import analyse

    return analyse(model, torch.zeros(1, *input_shape), prune_residual=True)[0]


def table_from_probe(model: Any, measurements: str | Path, folder: str | Path, *, source: str = "") -> LatencyTable:
    """The latency table of a probe bundle (``folder``) from the device's ``measurements``: the layers' grid, the
    parent, the rest and the calibration as ``build_table`` makes them, recording the device's CPU, runtime
    version and threads. ``model`` must be the one the bundle was written for (its layers and grid)."""
    from edgeprune.backends.probe import read_bundle, read_measurements

    manifest, digest = read_bundle(folder)
    measured = read_measurements(measurements, manifest, digest)
    _check_probe_model(model, manifest)
    if {g["name"] for g in manifest["groups"]} != {f"layer {n}" for n in manifest["layers"]} | {"calibration"}:
        raise EdgepruneError(f"{folder}: not a latency table's probe bundle (its groups of files)")
    try:
        table = _probe_table(manifest, measured, source)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EdgepruneError(f"{folder}: malformed probe manifest ({type(e).__name__}: {e})") from None
    return table_from_dict(table.to_dict(), "the table from the probe")


def _probe_table(manifest: dict, measured: dict, source: str) -> LatencyTable:
    """The table of checked measurements, unchecked itself (``table_from_probe`` checks it)."""
    groups, layers = measured["groups"], {}
    for name, entry in manifest["layers"].items():
        timed = groups[f"layer {name}"]
        overhead = timed[OVERHEAD]
        ms = {k: statistics.median(max(0.0, v - o) for v, o in zip(r, overhead)) for k, r in timed.items()}
        if entry["depthwise"]:
            grid = [[ms[f"{w}"] for w in entry["c_out"]]]
        else:
            grid = [[ms[f"{i}x{o}"] for o in entry["c_out"]] for i in entry["c_in"]]
        layers[name] = LayerTable(entry["kind"], entry["c_in"], entry["c_out"], grid, entry["depthwise"],
                                  entry["calls"], entry["block"])  # fmt: skip
    models = groups["calibration"]
    parent_ms = statistics.median(models["parent"])
    full = {n: [max(t.c_in), max(t.c_out)] for n, t in layers.items()}
    device, timing = measured["device"], manifest["timing"]
    table = LatencyTable(
        model=source or manifest["model"], input_shape=list(manifest["input_shape"]), backend=manifest["backend"],
        backend_version=device["runtime_version"], threads=device["threads"], cpu=device["cpu"],
        round_to=manifest["round_to"], parent_ms=parent_ms, rest_ms=0.0, layers=layers,
        settings={"grid": manifest["grid"], "runs": timing["runs"], "warmup": timing["warmup"],
                  "processes": timing["rounds"], "spin": False, "order": "round_robin",
                  "points": sum(len(t.c_out) * (1 if t.depthwise else len(t.c_in)) for t in layers.values()),
                  "probe": {"platform": device["platform"], "machine": device["machine"], "python": device["python"]}},
        created=datetime.datetime.now().isoformat(timespec="seconds"), build_seconds=measured["seconds"],
    )  # fmt: skip
    table.rest_ms = parent_ms - _widths_sum(table, full, scaled=False)
    points = [[_widths_sum(table, full), parent_ms]]
    for name, widths in manifest["calibration"].items():
        ratio = statistics.median(c / p for c, p in zip(models[name], models["parent"]))
        points.append([_widths_sum(table, widths), parent_ms * ratio])
    table.calibration = sorted(points) if len(points) > 1 else []
    return table


def _widths_sum(table: LatencyTable, widths: dict[str, list[int]], scaled: bool = True) -> float:
    """The table's sum (``table_sum``) of a network given as layer -> [c_in, c_out]; unscaled: the layers only."""
    if not scaled:
        return sum(t.calls * t.at(*widths[n]) for n, t in table.layers.items())
    return sum(table.scale * t.calls * t.at(*widths[n]) for n, t in table.layers.items()) + table.rest()


def _check_probe_model(model: Any, manifest: dict) -> None:
    """Refuse a model other than the bundle's: its layers and grid, derived again, must be the manifest's."""
    grid = manifest.get("grid", {})
    if not isinstance(grid, dict) or not isinstance(manifest.get("layers"), dict):
        raise EdgepruneError("not a latency table's probe bundle (no grid or layers): read bench's with 'bench'")
    try:
        settings = TableSettings(backend="onnxruntime", round_to=grid["round_to"], near=grid["near"],
                                 ratio=grid["ratio"])  # fmt: skip
        settings.validate()
        shape = tuple(manifest["input_shape"])
        _, derived = _grid_blocks(model, shape, settings)
    except (KeyError, TypeError) as e:
        raise EdgepruneError(f"the probe manifest is malformed ({e!r})") from None
    recorded = manifest.get("layers", {})
    if list(derived) != list(recorded):
        raise EdgepruneError("the probe bundle was written for another model (its layers differ)")
    for name, (_, c_in, c_out, _) in derived.items():
        if [c_in, c_out] != [recorded[name].get("c_in"), recorded[name].get("c_out")]:
            raise EdgepruneError(f"the probe bundle was written for another model or grid (layer {name})")
    for name, widths in manifest.get("calibration", {}).items():
        if not isinstance(widths, dict) or set(widths) != set(recorded):
            raise EdgepruneError(f"the probe manifest's calibration network {name!r} names other layers")
        if not all(isinstance(w, list) and len(w) == 2 and all(isinstance(c, int) for c in w) for w in widths.values()):
            raise EdgepruneError(f"the probe manifest's calibration network {name!r} has malformed widths")


__all__ = [
    "Measure",
    "OnPoint",
    "build_table",
    "calibrate",
    "default_measure",
    "grid_points",
    "measure_latency",
    "measure_relative",
    "predicted_measure",
    "table_from_probe",
    "write_probe",
]
