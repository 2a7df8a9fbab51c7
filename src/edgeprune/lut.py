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
This module holds the table (its format, grid and prediction); ``edgeprune.latency`` builds and calibrates
it, since calibration needs pruning's plans.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import limits
from edgeprune.backends import BACKENDS, EDGE_BACKENDS, ORDERS, check_backends, check_counts
from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError
from edgeprune.validate import check_in, shown

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


def table_from_dict(data: dict, what: str = "the latency table") -> LatencyTable:
    """A table from its JSON-ready form, every field checked as ``load_table`` checks a file's (one-line errors)."""
    try:
        return _table_from(data)
    except ValueError as e:
        raise EdgepruneError(f"{what}: malformed ({e})") from None


def ms_text(ms: float, low: float | None = None) -> str:
    """Milliseconds with digits enough to tell them from zero: ``1.234 ms``, or in µs to 3 significant digits below
    0.1 ms (``45.6 µs``, ``0.0123 µs``); with ``low``, a range ``low-ms`` in one unit."""
    top = ms if low is None else max(ms, low)
    if top < 0.1:
        body = f"{ms * 1e3:.3g}" if low is None else f"{low * 1e3:.3g}-{ms * 1e3:.3g}"
        return f"{body} µs"
    return (f"{ms:.3f}" if low is None else f"{low:.3f}-{ms:.3f}") + " ms"


def _keys(what: str, data: dict, keys: tuple[set[str], set[str]]) -> None:
    """``data`` has every required key of ``keys`` and no key outside both sets; ValueError naming the first."""
    required, optional = keys
    missing, extra = sorted(required - set(data)), sorted(set(data) - required - optional, key=str)
    if missing or extra:
        raise ValueError(f"{what}: missing '{missing[0]}'" if missing else f"{what}: unknown key {extra[0]!r}")


def _number(what: str, value: object, low: float, high: float = MAX_MS) -> float:
    """A JSON number (not a bool, not NaN or infinite) in [low, high], as a float; ValueError naming ``what``."""
    return check_in(value, what, low, high, error=ValueError)


def _integer(what: str, value: object, low: int, high: int) -> int:
    """A JSON integer (not a bool) in [low, high]; ValueError naming ``what``."""
    return int(check_in(value, what, low, high, integer=True, error=ValueError))


def _text(what: str, value: object) -> str:
    """A JSON string; ValueError naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {shown(value)}")
    return value


def _table_from(data: dict) -> LatencyTable:
    """The table a parsed file describes, every field checked; ValueError (one line) names the first bad one."""
    _keys("the table", data, _TABLE_KEYS)
    backend = _text("backend", data["backend"])
    if backend not in BACKENDS + EDGE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS + EDGE_BACKENDS)}, got {shown(backend)}")
    problem = limits.input_shape_problem(data["input_shape"])
    if problem is not None:
        raise ValueError(f"input_shape {shown(data['input_shape'])} {problem}")
    layers = data["layers"]
    if not isinstance(layers, dict):
        raise ValueError(f"layers must be an object, got {shown(layers)}")
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
        raise ValueError(f"settings must be an object, got {shown(settings)}")
    settings = dict(settings)
    for key, high in (("processes", MAX_PROCESSES), ("runs", limits.MAX_CLASSES), ("warmup", limits.MAX_CLASSES),
                      ("points", limits.MAX_CLASSES)):  # fmt: skip
        if key in settings:
            _integer(f"settings.{key}", settings[key], 0 if key in ("warmup", "points") else 1, high)
    if "spin" in settings and not isinstance(settings["spin"], bool):
        raise ValueError(f"settings.spin must be true or false, got {shown(settings['spin'])}")
    settings.setdefault("points", sum(len(t.c_out) * (1 if t.depthwise else len(t.c_in)) for t in layers.values()))
    return settings


def _layer_from(name: str, entry: object) -> LayerTable:
    """One layer's entry, checked: sorted distinct widths in range and a finite non-negative latency per grid point
    (a point can measure 0: the per-call overhead taken off)."""
    what = f"layer {shown(name)}"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be an object, got {shown(entry)}")
    _keys(what, entry, _LAYER_KEYS)
    kind = entry["kind"]
    if kind not in ("conv", "linear"):
        raise ValueError(f"{what}: kind must be conv or linear, got {shown(kind)}")
    widths = []
    for key in ("c_in", "c_out"):
        values = entry[key]
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_GRID:
            raise ValueError(f"{what}: {key} must be a list of 1 to {MAX_GRID} widths, got {shown(values)}")
        if not all(limits.is_int(c, 1, limits.MAX_CLASSES) for c in values) or values != sorted(set(values)):
            raise ValueError(f"{what}: widths must be sorted, distinct and positive, got {shown(values)}")
        widths.append(values)
    depthwise = entry.get("depthwise", False)
    if not isinstance(depthwise, bool):
        raise ValueError(f"{what}: depthwise must be true or false, got {shown(depthwise)}")
    rows, ms = 1 if depthwise else len(widths[0]), entry["ms"]
    shaped = isinstance(ms, list) and len(ms) == rows
    if not shaped or any(not isinstance(r, list) or len(r) != len(widths[1]) for r in ms):
        raise ValueError(f"{what}: the latency grid does not match its widths")
    if not all(limits.is_number(v, 0, MAX_MS) for r in ms for v in r):
        raise ValueError(f"{what}: latencies must be finite and non-negative (at most {MAX_MS:g} ms)")
    block = entry.get("block", {})
    if not isinstance(block, dict):
        raise ValueError(f"{what}: block must be an object, got {shown(block)}")
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
    if backend in EDGE_BACKENDS:  # the runtime's distribution version, as a probe on a device records it
        from edgeprune.backends.probe_runner import runtime_version

        return {"cpu": info.get("processor", ""), "backend_version": runtime_version(backend)}
    return {"cpu": info.get("processor", ""), "backend_version": str(info.get(backend, "unknown"))}


def varying_layers(prof: Profile) -> tuple[set[str], set[str]]:
    """Layers whose input widths / output widths pruning can change (any prunable group, residual ones too)."""
    ins, outs = set(), set()
    for g in prof.groups:
        if g.prunable:
            outs.update(g.out_layers)
            ins.update(m.layer for m in g.members if m.dim == "in")
    return ins, outs


def layer_grid(spec: dict, layer: LayerShape, ins: set[str], outs: set[str], round_to: int,
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


def block_at(spec: dict, c_in: int, c_out: int) -> dict:
    """The block spec at other widths (a depthwise conv's groups follow its width)."""
    block = {k: v for k, v in spec.items() if k != "calls"}
    depthwise = spec["kind"] == "conv" and spec["groups"] == spec["c_in"] == spec["c_out"] and spec["groups"] > 1
    block.update(c_in=c_in, c_out=c_out, groups=c_in if depthwise else spec["groups"])
    block["input_shape"] = [c_in, *spec["input_shape"][1:]]
    return block


Timer = Callable[[dict[str, dict]], dict[str, float]]  # block specs by key -> median ms by key
ModelTimer = Callable[[dict[str, Any]], dict[str, float]]  # models by name (one is "parent") -> ms by name
CALIBRATION = (0.75, 0.5, 0.3)  # uniform cuts, as fractions of the parent's table sum; the floor is always added


@dataclass(frozen=True)
class TableSettings:
    """How a latency table is measured (``edgeprune.latency.build_table``); ``validate`` checks every field."""

    backend: str = "onnxruntime"  # the backend timed: torch, onnxruntime, executorch or litert
    threads: int = 1  # intra-op threads of each measuring process
    round_to: int = DEFAULT_ROUND_TO  # the grid's widths are multiples of it (the channel counts plans give)
    near: int = 2  # grid points one round_to step apart just below full width
    ratio: float = 0.7  # below those, each width is this fraction of the one above, down to round_to
    runs: int = 20  # timed runs of each grid point per process
    warmup: int = 3  # untimed runs of each grid point before timing
    processes: int = 3  # fresh processes per layer (and per calibration); the median over them is kept
    spin: bool = False  # let idle backend threads busy-wait (False: they sleep at once)
    order: str = "round_robin"  # grid points of one process timed round-robin, or "blocked" (back to back)
    calibration: tuple[float, ...] = CALIBRATION  # uniform cuts timed whole, as fractions of the table sum; () none

    def validate(self) -> None:
        """Raise a one-line EdgepruneError naming the first field that is wrong."""
        check_backends(self.backend)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise EdgepruneError(f"round_to must be a positive integer, got {self.round_to!r}")
        near_ok = isinstance(self.near, int) and not isinstance(self.near, bool) and self.near >= 0
        if not limits.is_number(self.ratio) or not 0 < self.ratio < 1 or not near_ok:
            raise EdgepruneError(
                f"the grid needs 0 < ratio < 1 and near >= 0, got ratio {self.ratio}, near {self.near}"
            )
        check_counts(threads=self.threads, runs=self.runs, warmup=self.warmup, processes=self.processes)
        if not isinstance(self.spin, bool):
            raise EdgepruneError(f"spin must be true or false, got {self.spin!r}")
        if self.order not in ORDERS:
            raise EdgepruneError(f"unknown timing order '{self.order}'; choose from: {', '.join(ORDERS)}")
        if any(not limits.is_number(f) or not 0 < f < 1 for f in self.calibration):
            raise EdgepruneError(f"calibration fractions must be in (0, 1), got {list(self.calibration)}")


__all__ = [
    "CALIBRATION",
    "DEFAULT_ROUND_TO",
    "LatencyTable",
    "LayerTable",
    "ModelTimer",
    "TableSettings",
    "Timer",
    "block_at",
    "environment",
    "grid_widths",
    "layer_blocks",
    "layer_grid",
    "load_table",
    "ms_text",
    "table_from_dict",
    "varying_layers",
]
