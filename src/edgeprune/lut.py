"""Latency tables: each layer's measured latency at a grid of widths, for pruning to milliseconds.

SPEC, "Beyond the paper": a table for a model, a backend (torch or onnxruntime), a thread count and a
CPU holds, for every conv and linear layer *with its norm and activation, as the backend runs them*
(onnxruntime folds the norm into the conv and fuses the activation), the median batch-1 latency
measured in isolation at a grid of input and output widths. Between grid points it is interpolated
(bilinearly in input and output width; a depthwise conv along its one width). A model's predicted
latency = the sum of its layers' values + the rest of the model, the parent's measured latency minus its
layers' values at full width (pooling, adds, copies and per-call overhead).

Layers timed alone mislead as a sum (each pays conversions and cold caches a model pays once), so a table
also holds a *calibration*: whole models cut uniformly (width scaling at the table's ``round_to``) and the
smallest network a plan can reach (every prunable group at its floor), each timed beside the parent. A
model's predicted latency is its table sum mapped through those (table sum, measured) points, piecewise
linearly; the smallest network's measurement is the floor below which a latency target is refused.

The grid is chosen to be cheap and where it matters: every ``round_to`` step for the first ``near``
steps below full width (where pruning to a latency budget lands most often), then a geometric grid
(``ratio``) down to the narrowest width a group may keep. Widths are multiples of ``round_to`` (the
channel counts a plan with that ``round_to`` produces), so a table made with ``round_to`` 8 predicts
the widths a plan made with ``round_to`` 8 gives.

Every measurement runs in fresh processes through ``edgeprune.backends`` (the same loaders ``bench``
uses): all grid points of one layer timed round-robin in one process, so that they share conditions.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import limits
from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError

FORMAT = 1
KIND = "edgeprune latency table"
ACTIVATIONS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "silu": "silu", "hardswish": "hardswish",
               "sigmoid": "sigmoid", "gelu": "gelu", "leaky_relu": "leaky_relu", "hardtanh": "relu6"}  # fmt: skip
# Measured (docs/results/latency_budget.md): FA at 50 % FLOPs realises 0.90 of its FLOPs cut on onnxruntime for
# MobileNetV2 at round_to 8 0.90-0.93, at 16 0.92-0.94, at 32 0.96-0.98 (0.41-0.45 at 1); 16 keeps targets finer
DEFAULT_ROUND_TO = 16
# What a table read from a file may hold (load_table): every number typed, finite and in range.
MAX_MS = 1e9  # any latency in a table (11 days): finite sums, never an overflow to inf
MAX_THREADS = limits.MAX_THREADS  # a table's thread count (the measuring processes run that many)
MAX_PROCESSES = 1000  # settings.processes: how many fresh processes a recalibration starts
MAX_GRID = 4096  # widths per axis of one layer's grid
_TABLE_KEYS = ({"format", "kind", "model", "input_shape", "backend", "backend_version", "threads", "cpu", "round_to",
                "parent_ms", "rest_ms", "layers"}, {"settings", "build_seconds", "created", "calibration"})  # fmt: skip
_LAYER_KEYS = ({"kind", "c_in", "c_out", "ms"}, {"depthwise", "calls", "block"})


@dataclass
class LayerTable:
    """One layer's measured latencies (ms) on a grid of input widths x output widths."""

    kind: str  # "conv" or "linear"
    c_in: list[int]
    c_out: list[int]
    ms: list[list[float]]  # ms[i][j] at c_in[i], c_out[j]; a depthwise conv has one row, along c_out = c_in
    depthwise: bool = False
    calls: int = 1
    block: dict = field(default_factory=dict)  # the layer block spec measured (edgeprune.backends)

    def at(self, c_in: int, c_out: int) -> float:
        """Interpolated latency of one call at these widths (clamped to the grid's range)."""
        if self.depthwise:
            return _interp(self.c_out, self.ms[0], c_out)
        row = [_interp(self.c_out, r, c_out) for r in self.ms]
        return _interp(self.c_in, row, c_in)


def _isotonic(ys: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``ys`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def _interp(xs: list[int] | list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation on sorted ``xs``; constant outside their range."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            t = (x - xs[i]) / (xs[i + 1] - xs[i]) if xs[i + 1] > xs[i] else 0.0
            return ys[i] + t * (ys[i + 1] - ys[i])
    raise AssertionError("unreachable: xs is sorted")  # pragma: no cover


@dataclass
class LatencyTable:
    """A model's latency table on one backend, thread count and CPU (see the module docstring)."""

    model: str
    input_shape: list[int]
    backend: str
    backend_version: str
    threads: int
    cpu: str
    round_to: int
    parent_ms: float  # the whole parent model, measured
    rest_ms: float  # parent_ms minus its layers' table values at full width
    layers: dict[str, LayerTable]
    settings: dict = field(default_factory=dict)  # grid, runs, warmup, processes, spin
    build_seconds: float = 0.0
    created: str = ""
    calibration: list[list[float]] = field(default_factory=list)  # [table sum, measured] ms of whole models

    @property
    def scale(self) -> float:
        """What the layers' isolated timings are multiplied by: 1, or less when they add up to more than the model.

        A layer timed alone pays what a whole model pays once (onnxruntime converts its input to and its output
        from the blocked layout, every call allocates): when the parent's layers sum to more than the parent,
        the model's latency is taken as that sum scaled down (the conversions scale with the maps, which shrink
        with the widths) rather than as the sum plus a negative rest (SPEC's rule, which can predict below zero).
        """
        full = self.parent_ms - self.rest_ms  # the parent's layers at full width, summed
        return self.parent_ms / full if full > self.parent_ms else 1.0

    def rest(self) -> float:
        """The rest of the model (ms): pooling, adds, copies and overhead the layers' values do not include."""
        return max(0.0, self.rest_ms)

    def layer_ms(self, layer: LayerShape) -> float:
        """The table's latency of ``layer`` at its current widths, all its calls."""
        entry = self.layers.get(layer.name)
        if entry is None:
            raise EdgepruneError(f"the latency table has no layer '{layer.name}': it was made for another model")
        return self.scale * entry.calls * entry.at(layer.c_in, layer.c_out)

    def table_sum(self, prof: Profile) -> float:
        """The table's own sum for these layer shapes: layers (scaled) plus the rest, before calibration."""
        return sum(self.layer_ms(layer) for layer in prof.layers) + self.rest()

    def predict(self, prof: Profile) -> float:
        """Predicted latency (ms) of a model with these layer shapes: its table sum, calibrated."""
        return self.calibrated(self.table_sum(prof))

    def _curve(self) -> tuple[list[float], list[float]]:
        """Calibration points by table sum, measurements fitted non-decreasing (so that noise cannot fold the map)."""
        points = sorted(self.calibration)
        return [p[0] for p in points], _isotonic([p[1] for p in points])

    def calibrated(self, table_ms: float) -> float:
        """The latency a model with this table sum measures, by the calibration (the sum itself without one)."""
        if len(self.calibration) < 2:
            return table_ms
        return _interp(*self._curve(), table_ms)

    def table_ms_for(self, ms: float) -> float:
        """The table sum at which the calibration reaches ``ms``: the planning limit for a measured limit."""
        if len(self.calibration) < 2:
            return ms
        sums, measured = self._curve()
        return _interp(measured, sums, ms)

    @property
    def floor_ms(self) -> float | None:
        """The least latency the calibration measured (its smallest network's, unless noise says otherwise): no
        plan at the table's round_to is expected below it."""
        return min(p[1] for p in self.calibration) if len(self.calibration) >= 2 else None

    def to_dict(self) -> dict:
        """JSON-ready, with the format marker."""
        return {"format": FORMAT, "kind": KIND, **asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically."""
        from edgeprune.files import write_json

        write_json(Path(path), self.to_dict())

    def check_model(self, prof: Profile) -> None:
        """Refuse a model whose layers are not the ones the table was made for (names and full widths)."""
        names = [layer.name for layer in prof.layers]
        missing = [n for n in names if n not in self.layers]
        if missing or len(names) != len(self.layers):
            extra = sorted(set(self.layers) - set(names))
            which = f"layer '{missing[0]}' is not in it" if missing else f"it has layer '{extra[0]}' the model lacks"
            raise EdgepruneError(f"the latency table was made for another model ({self.model}): {which}")
        for layer in prof.layers:
            entry = self.layers[layer.name]
            full = (max(entry.c_in), max(entry.c_out))
            if (layer.c_in, layer.c_out) != full:
                raise EdgepruneError(
                    f"the latency table was made for another model ({self.model}): layer {layer.name} is "
                    f"{layer.c_in}->{layer.c_out} here, {full[0]}->{full[1]} in the table"
                )

    def check_machine(self, backend: str | None = None, threads: int | None = None) -> None:
        """Refuse a table made on another CPU, backend version or thread count (one line naming the mismatch)."""
        here = environment(self.backend)
        wanted = {"backend": backend or self.backend, "threads": threads or self.threads}
        mismatches = [
            ("backend", self.backend, wanted["backend"]),
            ("threads", self.threads, wanted["threads"]),
            ("CPU", self.cpu, here["cpu"]),
            (f"{self.backend} version", self.backend_version, here["backend_version"]),
        ]
        for what, table, now in mismatches:
            if table != now:
                raise EdgepruneError(
                    f"the latency table was made for {what} '{table}', this run has '{now}': make a new table with "
                    "'edgeprune lut' (or accept it with --accept-table)"
                )


def load_table(path: str | Path) -> LatencyTable:
    """Read a latency table written by ``LatencyTable.save``: its schema (exact keys), every value's type, and every
    number finite and in range, checked before any of it is used (one-line errors)."""
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"{path}: no such latency table")
    data = limits.read_json(path, "a latency table")
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("format") != FORMAT:
        raise EdgepruneError(f"{path}: not an edgeprune latency table (format {FORMAT})")
    try:
        return _table_from(data)
    except ValueError as e:
        raise EdgepruneError(f"{path}: malformed latency table ({e})") from None


def _keys(what: str, data: dict, keys: tuple[set[str], set[str]]) -> None:
    """``data`` has every required key of ``keys`` and no key outside both sets; ValueError naming the first."""
    required, optional = keys
    missing, extra = sorted(required - set(data)), sorted(set(data) - required - optional, key=str)
    if missing or extra:
        raise ValueError(f"{what}: missing '{missing[0]}'" if missing else f"{what}: unknown key {extra[0]!r}")


def _number(what: str, value: object, low: float, high: float = MAX_MS) -> float:
    """A JSON number (not a bool, not NaN or infinite) in [low, high], as a float; ValueError naming ``what``."""
    if not limits.is_number(value, low, high):
        raise ValueError(f"{what} must be a finite number in [{low:g}, {high:g}], got {_shown(value)}")
    return float(value)  # type: ignore[arg-type]


def _integer(what: str, value: object, low: int, high: int) -> int:
    """A JSON integer (not a bool) in [low, high]; ValueError naming ``what``."""
    if not limits.is_int(value, low, high):
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {_shown(value)}")
    return value  # type: ignore[return-value]


def _text(what: str, value: object) -> str:
    """A JSON string; ValueError naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    """A value from the file for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _table_from(data: dict) -> LatencyTable:
    """The table a parsed file describes, every field checked; ValueError (one line) names the first bad one."""
    from edgeprune.backends import BACKENDS

    _keys("the table", data, _TABLE_KEYS)
    backend = _text("backend", data["backend"])
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {_shown(backend)}")
    problem = limits.input_shape_problem(data["input_shape"])
    if problem is not None:
        raise ValueError(f"input_shape {_shown(data['input_shape'])} {problem}")
    layers = data["layers"]
    if not isinstance(layers, dict):
        raise ValueError(f"layers must be an object, got {_shown(layers)}")
    parsed = {_text("a layer name", name): _layer_from(name, entry) for name, entry in layers.items()}
    calibration = data.get("calibration", [])
    if not isinstance(calibration, list) or not all(isinstance(p, list) and len(p) == 2 for p in calibration):
        raise ValueError("calibration must be a list of [table sum, measured] pairs")
    if not all(limits.is_number(v, 0, MAX_MS) and v > 0 for p in calibration for v in p):
        raise ValueError("calibration latencies must be positive")
    table = LatencyTable(
        model=_text("model", data["model"]), input_shape=list(data["input_shape"]), backend=backend,
        backend_version=_text("backend_version", data["backend_version"]),
        threads=_integer("threads", data["threads"], 1, MAX_THREADS), cpu=_text("cpu", data["cpu"]),
        round_to=_integer("round_to", data["round_to"], 1, limits.MAX_CLASSES),
        parent_ms=_number("parent_ms", data["parent_ms"], 0), rest_ms=_number("rest_ms", data["rest_ms"], -MAX_MS),
        layers=parsed, settings=_settings(data.get("settings", {}), parsed),
        build_seconds=_number("build_seconds", data.get("build_seconds", 0.0), 0),
        created=_text("created", data.get("created", "")), calibration=[[float(a), float(b)] for a, b in calibration],
    )  # fmt: skip
    if table.parent_ms <= 0:
        raise ValueError(f"parent_ms must be positive, got {table.parent_ms}")
    return table


def _settings(settings: object, layers: dict[str, LayerTable]) -> dict:
    """A table's settings: an object whose counts a recalibration uses are in range; ``points`` filled in if absent."""
    if not isinstance(settings, dict):
        raise ValueError(f"settings must be an object, got {_shown(settings)}")
    settings = dict(settings)
    for key, high in (("processes", MAX_PROCESSES), ("runs", limits.MAX_CLASSES), ("warmup", limits.MAX_CLASSES),
                      ("points", limits.MAX_CLASSES)):  # fmt: skip
        if key in settings:
            _integer(f"settings.{key}", settings[key], 0 if key in ("warmup", "points") else 1, high)
    if "spin" in settings and not isinstance(settings["spin"], bool):
        raise ValueError(f"settings.spin must be true or false, got {_shown(settings['spin'])}")
    settings.setdefault("points", sum(len(t.c_out) * (1 if t.depthwise else len(t.c_in)) for t in layers.values()))
    return settings


def _layer_from(name: str, entry: object) -> LayerTable:
    """One layer's entry, checked: sorted distinct widths in range and a finite non-negative latency per grid point
    (a point can measure 0: the per-call overhead taken off)."""
    what = f"layer {_shown(name)}"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be an object, got {_shown(entry)}")
    _keys(what, entry, _LAYER_KEYS)
    kind = entry["kind"]
    if kind not in ("conv", "linear"):
        raise ValueError(f"{what}: kind must be conv or linear, got {_shown(kind)}")
    widths = []
    for key in ("c_in", "c_out"):
        values = entry[key]
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_GRID:
            raise ValueError(f"{what}: {key} must be a list of 1 to {MAX_GRID} widths, got {_shown(values)}")
        if not all(limits.is_int(c, 1, limits.MAX_CLASSES) for c in values) or values != sorted(set(values)):
            raise ValueError(f"{what}: widths must be sorted, distinct and positive, got {_shown(values)}")
        widths.append(values)
    depthwise = entry.get("depthwise", False)
    if not isinstance(depthwise, bool):
        raise ValueError(f"{what}: depthwise must be true or false, got {_shown(depthwise)}")
    rows, ms = 1 if depthwise else len(widths[0]), entry["ms"]
    shaped = isinstance(ms, list) and len(ms) == rows
    if not shaped or any(not isinstance(r, list) or len(r) != len(widths[1]) for r in ms):
        raise ValueError(f"{what}: the latency grid does not match its widths")
    if not all(limits.is_number(v, 0, MAX_MS) for r in ms for v in r):
        raise ValueError(f"{what}: latencies must be finite and non-negative (at most {MAX_MS:g} ms)")
    block = entry.get("block", {})
    if not isinstance(block, dict):
        raise ValueError(f"{what}: block must be an object, got {_shown(block)}")
    calls = _integer(f"{what}: calls", entry.get("calls", 1), 1, limits.MAX_CLASSES)
    return LayerTable(kind, list(widths[0]), list(widths[1]), [[float(v) for v in r] for r in ms], depthwise, calls,
                      dict(block))  # fmt: skip


# -- the grid -----------------------------------------------------------------------------------


def grid_widths(full: int, round_to: int = DEFAULT_ROUND_TO, near: int = 2, ratio: float = 0.7,
                multiple: int = 1) -> list[int]:  # fmt: skip
    """Widths to measure below ``full``: ``near`` steps of ``round_to``, then geometric by ``ratio`` to the floor.

    ``multiple`` (a grouped conv's groups) makes every width a multiple of it as well.
    """
    step = math.lcm(round_to, multiple)
    if full <= step:
        return [full]
    points = {full, step}
    below = (full - 1) // step * step  # the widest a plan with this round_to keeps below full
    points.update(below - k * step for k in range(near) if below - k * step >= step)
    width = float(full)
    while width > step:
        width *= ratio
        points.add(max(step, round(width / step) * step))
    return sorted(p for p in points if p <= full)


# -- finding the blocks ---------------------------------------------------------------------------


def layer_blocks(model: Any, input_shape: tuple[int, ...]) -> dict[str, dict]:
    """Each conv/linear layer's block spec (module settings, its norm, the activation applied to its output).

    The activation is found by following tensors, not module order: the first activation function called on
    the layer's (or its norm's) output tensor, so ``torch.relu(bn(conv(x)))`` and ``nn.ReLU`` modules alike
    are found, and ``relu(bn(conv(x)) + shortcut)`` correctly has none of its own.
    """
    import torch
    from torch import nn
    from torch.overrides import TorchFunctionMode

    from edgeprune.trace import NORMS

    modules = dict(model.named_modules())
    seen: dict[str, dict] = {}
    outputs: dict[int, str] = {}  # id of an output tensor -> the layer it ends (the conv's, then its norm's)
    acts: dict[str, str] = {}
    last_layer: list[str] = []
    alive: list = []  # keep every tracked output alive, so no id() is reused by a later tensor

    class Acts(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in ACTIVATIONS and args and id(args[0]) in outputs:
                act = _activation(name, args, kwargs)
                if act is not None:
                    acts.setdefault(outputs[id(args[0])], act)
            return func(*args, **kwargs)

    def pre(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            shape = list(inputs[0].shape[1:])
            if name in seen:
                seen[name]["calls"] += 1
            else:
                seen[name] = {"module": module, "input_shape": shape, "calls": 1}

        return hook

    def post(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if isinstance(module, NORMS):
                src = outputs.get(id(inputs[0]))
                if src is not None and last_layer and src == last_layer[-1]:
                    seen[src]["norm"] = True
                    outputs[id(output)] = src
                    alive.append(output)
                return
            last_layer.append(name)
            outputs[id(output)] = name
            alive.append(output)

        return hook

    handles = []
    for name, module in modules.items():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
        elif isinstance(module, NORMS):
            handles.append(module.register_forward_hook(post(name)))
        elif isinstance(module, (nn.modules.conv._ConvNd,)):
            raise EdgepruneError(
                f"layer {name} is a {type(module).__name__}: latency tables cover Conv2d and Linear layers"
            )
    try:
        with torch.no_grad(), Acts():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return {name: _spec(info, acts.get(name)) for name, info in seen.items()}


def _activation(name: str, args: tuple, kwargs: dict) -> str | None:
    """The activation's spec name; hardtanh is one only as relu6 (bounds 0 and 6)."""
    if name == "hardtanh":
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        return "relu6" if (low, high) == (0.0, 6.0) else None
    return ACTIVATIONS[name]


def _spec(info: dict, act: str | None) -> dict:
    """A layer block spec (edgeprune.backends) at the module's full widths."""
    from torch import nn

    m = info["module"]
    common = {"bias": m.bias is not None, "norm": bool(info.get("norm")), "act": act, "calls": info["calls"]}
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "c_in": m.in_features, "c_out": m.out_features, "groups": 1,
                "input_shape": [m.in_features], **common}  # fmt: skip
    return {"kind": "conv", "c_in": m.in_channels, "c_out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "dilation": list(m.dilation), "groups": m.groups, "input_shape": info["input_shape"], **common}  # fmt: skip


# -- building a table -----------------------------------------------------------------------------


def environment(backend: str) -> dict:
    """The CPU model and the backend's version on this machine: what a table must match."""
    from edgeprune.measure import machine_info

    info = machine_info()
    return {"cpu": info.get("processor", ""), "backend_version": str(info.get(backend, "unknown"))}


def _varying(prof: Profile) -> tuple[set[str], set[str]]:
    """Layers whose input widths / output widths pruning can change (any prunable group, residual ones too)."""
    ins, outs = set(), set()
    for g in prof.groups:
        if g.prunable:
            outs.update(g.out_layers)
            ins.update(m.layer for m in g.members if m.dim == "in")
    return ins, outs


def _points(spec: dict, layer: LayerShape, ins: set[str], outs: set[str], round_to: int,
            grid: dict) -> tuple[list[int], list[int]]:  # fmt: skip
    """The (c_in, c_out) grid of one layer."""
    groups = spec["groups"]
    if layer.depthwise:
        varies = layer.name in outs or layer.name in ins
        widths = grid_widths(layer.c_out, round_to, **grid) if varies else [layer.c_out]
        return widths, widths
    multiple = groups if groups > 1 else 1
    c_in = grid_widths(layer.c_in, round_to, multiple=multiple, **grid) if layer.name in ins else [layer.c_in]
    c_out = grid_widths(layer.c_out, round_to, multiple=multiple, **grid) if layer.name in outs else [layer.c_out]
    return c_in, c_out


def _block_at(spec: dict, c_in: int, c_out: int) -> dict:
    """The block spec at other widths (a depthwise conv's groups follow its width)."""
    block = {k: v for k, v in spec.items() if k != "calls"}
    depthwise = spec["kind"] == "conv" and spec["groups"] == spec["c_in"] == spec["c_out"] and spec["groups"] > 1
    block.update(c_in=c_in, c_out=c_out, groups=c_in if depthwise else spec["groups"])
    block["input_shape"] = [c_in, *spec["input_shape"][1:]]
    return block


Timer = Callable[[dict[str, dict]], dict[str, float]]  # block specs by key -> median ms by key
ModelTimer = Callable[[dict[str, Any]], dict[str, float]]  # models by name (one is "parent") -> ms by name
CALIBRATION = (0.75, 0.5, 0.3)  # uniform cuts, as fractions of the parent's table sum; the floor is always added


def build_table(
    model: Any,
    input_shape: tuple[int, ...],
    backend: str = "onnxruntime",
    threads: int = 1,
    round_to: int = DEFAULT_ROUND_TO,
    near: int = 2,
    ratio: float = 0.7,
    runs: int = 20,
    warmup: int = 3,
    processes: int = 3,
    spin: bool = False,
    source: str = "",
    timer: Timer | None = None,
    parent_ms: float | None = None,
    progress: Callable[[str], None] | None = None,
    order: str = "round_robin",
    calibration: tuple[float, ...] = CALIBRATION,
    model_timer: ModelTimer | None = None,
) -> LatencyTable:
    """Measure every conv/linear layer of ``model`` at a grid of widths on ``backend``; the latency table.

    ``timer`` replaces the measuring processes (tests inject one); ``parent_ms`` the parent's measured latency.
    ``calibration`` gives the uniform cuts timed whole (see ``calibrate``; ``()`` for none), ``model_timer``
    replaces their measuring processes.
    """
    import torch

    from edgeprune.graph import analyse
    from edgeprune.measure import check_backends

    (backend,) = check_backends(backend)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise EdgepruneError(f"round_to must be a positive integer, got {round_to!r}")
    if not 0 < ratio < 1 or near < 0:
        raise EdgepruneError(f"the grid needs 0 < ratio < 1 and near >= 0, got ratio {ratio}, near {near}")
    started = time.perf_counter()
    model = model.eval()
    prof, _ = analyse(model, torch.zeros(1, *input_shape), prune_residual=True)
    blocks = layer_blocks(model, input_shape)
    ins, outs = _varying(prof)
    grid = {"near": near, "ratio": ratio}
    timer = timer or _ProcessTimer(backend, threads, runs, warmup, processes, spin, order)
    layers = _measure_layers(prof, blocks, timer, ins, outs, round_to, grid, progress)
    if parent_ms is None:
        # measured as prune measures a cut model, so that "latency=0.5" is half of what that measurement says
        parent_ms = measure_latency(model, input_shape, backend, threads, processes=processes, spin=spin)
    env = environment(backend)
    full = sum(layers[layer.name].calls * layers[layer.name].at(layer.c_in, layer.c_out) for layer in prof.layers)
    table = LatencyTable(
        model=source or type(model).__name__, input_shape=list(input_shape), backend=backend,
        backend_version=env["backend_version"], threads=threads, cpu=env["cpu"], round_to=round_to,
        parent_ms=parent_ms, rest_ms=parent_ms - full, layers=layers,
        settings={"grid": {"round_to": round_to, **grid}, "runs": runs, "warmup": warmup, "processes": processes,
                  "spin": spin, "order": order, "points": sum(len(t.c_out) * (1 if t.depthwise else len(t.c_in))
                                                for t in layers.values())},
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )  # fmt: skip
    if calibration:
        if progress:
            progress(f"calibration: uniform cuts at {', '.join(f'{f:g}' for f in calibration)} and the floor")
        table = calibrate(table, model, calibration, timer=model_timer, processes=processes)
    table.build_seconds = time.perf_counter() - started
    return table


def _measure_layers(prof: Profile, blocks: dict[str, dict], timer: Timer, ins: set[str], outs: set[str],
                    round_to: int, grid: dict,
                    progress: Callable[[str], None] | None) -> dict[str, LayerTable]:  # fmt: skip
    """Every layer's grid, timed."""
    layers: dict[str, LayerTable] = {}
    for layer in prof.layers:
        if layer.name not in blocks:
            raise EdgepruneError(f"layer {layer.name} is not a Conv2d or Linear module: no latency table for it")
        spec = blocks[layer.name]
        c_in, c_out = _points(spec, layer, ins, outs, round_to, grid)
        if layer.depthwise:
            keys = {f"{w}": _block_at(spec, w, w) for w in c_out}
            times = timer(keys)
            ms = [[times[f"{w}"] for w in c_out]]
        else:
            keys = {f"{i}x{o}": _block_at(spec, i, o) for i in c_in for o in c_out}
            times = timer(keys)
            ms = [[times[f"{i}x{o}"] for o in c_out] for i in c_in]
        layers[layer.name] = LayerTable(spec["kind"], c_in, c_out, ms, layer.depthwise, spec["calls"],
                                        _block_at(spec, layer.c_in, layer.c_out))  # fmt: skip
        if progress:
            low, high = min(min(r) for r in ms), max(max(r) for r in ms)
            progress(f"{layer.name}: {len(keys)} widths, {low:.3f}-{high:.3f} ms")
    return layers


class _ProcessTimer:
    """Time block specs in fresh processes (edgeprune.backends.time_artifacts): median over processes."""

    def __init__(self, backend: str, threads: int, runs: int, warmup: int, processes: int, spin: bool,
                 order: str = "round_robin"):  # fmt: skip
        self.options = {"threads": threads, "runs": runs, "warmup": warmup, "spin": spin, "order": order}
        self.backend, self.processes = backend, processes

    def __call__(self, blocks: dict[str, dict]) -> dict[str, float]:
        """Median ms of each block, the per-call overhead taken off."""
        from edgeprune.backends import time_artifacts

        out: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp:
            for chunk in _chunks(blocks):
                artifacts = {}
                for key in chunk:
                    path = Path(tmp) / f"b{len(out) + len(artifacts)}.json"
                    path.write_text(json.dumps(blocks[key]))
                    artifacts[key] = (path, tuple(blocks[key]["input_shape"]))
                path = Path(tmp) / "overhead.json"
                path.write_text(json.dumps(OVERHEAD_BLOCK))
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
        rounds = [latency_interleaved(ready, backend, runs, warmup, 1, threads, seed=p, spin=spin)
                  for p in range(processes)]  # fmt: skip
    return [{name: r[name]["latency_ms"]["median"] for name in models} for r in rounds]


def measure_latency(
    model: Any,
    input_shape: tuple[int, ...],
    backend: str,
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


__all__ = [
    "LatencyTable",
    "LayerTable",
    "build_table",
    "calibrate",
    "grid_widths",
    "layer_blocks",
    "load_table",
    "measure_latency",
    "measure_relative",
]
