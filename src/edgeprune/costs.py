"""Costs: what a budget can limit. One class per cost, and everything else reads the costs from here.

A cost maps a layer shape to a number and sums over layers (SPEC, "Beyond the paper"):

- ``params``: parameters (the paper's PA mode), a count;
- ``flops``: multiply-adds counted once (FA), a count of MACs;
- ``memory``: bytes of weights plus output maps (MA);
- ``energy``: the 45 nm estimate per layer, 4.6 pJ x MACs + 640 pJ x (memory / 4 B), in microjoules
  (int8 layers at 0.23 pJ per MAC, memory at its stored width);
- ``latency``: milliseconds measured on a backend, looked up per layer in a latency table
  (``edgeprune.lut``) plus the rest of the model; it exists only with a table;
- ``peak_memory`` (microcontroller SRAM): bytes of the largest set of activations alive at once at batch 1,
  from the liveness of the traced forward pass (``edgeprune.liveness``); not a sum over layers;
- ``flash`` (microcontroller flash): bytes of weights, biases and norm parameters at their stored width
  (fp32 4 B; int8 1 B per weight + 4 B per per-channel scale and 4 B per zero point + int32 biases 4 B).

Each cost has a name (CLI and Python), a JSON key (reports, sweeps), a unit and a label (tables, plots),
its per-layer value, how to format a value and how to parse a limit (``0.5`` = a fraction of the model's
own cost, else an amount in the cost's units: ``2M`` params, ``150M`` MACs, ``4MB``, ``50uJ``, ``3ms``).
Adding a cost is one class here plus an entry in ``STATIC`` (or ``MCU``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from edgeprune.complexity import BYTES_PER_VALUE, LayerShape, Profile
from edgeprune.errors import EdgepruneError

# 45 nm figures (Horowitz 2014), the same as the energy estimate of ``bench``
PJ_PER_MAC = 4.6  # fp32 multiply 3.7 pJ + add 0.9 pJ
PJ_PER_INT8_MAC = 0.23  # 8-bit integer multiply 0.2 pJ + add 0.03 pJ
PJ_PER_DRAM_BYTE = 640.0 / 4  # one 32-bit DRAM access, per byte stored

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)"
_COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class LayerTimes(Protocol):
    """What the latency cost needs of a latency table (``edgeprune.lut.LatencyTable``)."""

    parent_ms: float

    def rest(self) -> float:
        """The model's latency outside its layers' table values."""
        ...

    def layer_ms(self, layer: LayerShape) -> float:
        """One layer's latency at its current widths."""
        ...


class Cost:
    """A budgetable cost: name, JSON key, unit, label, per-layer value, formatting and limit parsing."""

    name: ClassVar[str]
    key: ClassVar[str]  # JSON key in totals, reports and sweeps
    unit: ClassVar[str]
    label: ClassVar[str]  # column and axis title
    help: ClassVar[str]  # one line for --help
    integer: ClassVar[bool] = True  # counts and bytes are whole numbers; energy and latency are not
    additive: ClassVar[bool] = True  # the total is the sum of ``layer`` plus ``extra``; peak memory's is not
    units: ClassVar[dict[str, float]] = _COUNT_UNITS  # the amounts a limit may be given in
    example: ClassVar[str] = "2M"

    def layer(self, layer: LayerShape) -> float:
        """This layer's value of the cost."""
        raise NotImplementedError

    def extra(self, prof: Profile) -> float:
        """What the model costs outside its conv and linear layers (never pruned)."""
        return 0

    def total(self, prof: Profile) -> float:
        """The model's total of this cost."""
        value = sum(self.layer(layer) for layer in prof.layers) + self.extra(prof)
        return int(value) if self.integer else float(value)

    def available(self, prof: Profile) -> bool:
        """Whether ``prof`` holds what this cost is computed from (peak memory needs a traced forward pass)."""
        return True

    def share(self, prof: Profile, group: Any) -> float:
        """A channel group's lottery weight (SPEC, multi-budget): the cost of the layers whose filters it removes."""
        shapes = prof.by_name()
        return sum(self.layer(shapes[name]) for name in set(group.out_layers))

    def human(self, value: float) -> str:
        """A value with its unit, scaled for reading."""
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{unit}"
        return f"{value:.0f}"

    def parse(self, text: str | float, current: float) -> float:
        """An absolute limit from a fraction of ``current`` (``0.5``) or an amount in this cost's units."""
        raw = str(text).strip()
        match = re.fullmatch(_NUMBER, raw)
        if not match:
            raise EdgepruneError(
                f"{self.name} target '{raw}' is not a number, a fraction like 0.5, or an amount like {self.example}"
            )
        value, unit = float(match.group(1)), match.group(2)
        absolute = self._amount(raw, value, unit, current)
        if absolute <= 0:
            raise EdgepruneError(f"{self.name} target must be positive, got '{raw}'")
        if absolute >= current:
            raise EdgepruneError(
                f"{self.name} target {self.human(absolute)} is not below the model's current {self.human(current)}"
            )
        return int(absolute) if self.integer else absolute

    def _amount(self, raw: str, value: float, unit: str, current: float) -> float:
        """The limit in base units: a bare number below 1 is a fraction, one above is an amount."""
        key = unit.upper() if self.units is _COUNT_UNITS or self.units is _BYTE_UNITS else unit
        if not unit:
            if value <= 1:  # 1 itself is the whole model, refused as "not below"
                return value * current
            if self.integer and not value.is_integer():
                raise EdgepruneError(
                    f"{self.name} target '{raw}': a fraction must be in (0, 1), an amount a whole number"
                )
            if not self.integer:
                raise EdgepruneError(f"{self.name} target '{raw}' needs a unit, e.g. {self.example}")
            return value
        if key not in self.units:
            if self.units is _BYTE_UNITS and key in _COUNT_UNITS:
                raise EdgepruneError(f"{self.name} targets need a byte unit (e.g. {raw}B or {raw}iB), got '{raw}'")
            if self.units is not _BYTE_UNITS and unit.upper() in _BYTE_UNITS:
                raise EdgepruneError(f"target '{raw}' is in bytes, but {self.name} counts {self.unit}")
            raise EdgepruneError(
                f"{self.name} target '{raw}': unknown unit '{unit}' for {self.name} ({self.unit}); "
                f"use {', '.join(u for u in self.units if u)}"
            )
        return value * self.units[key]

    def describe(self) -> str:
        """``name (unit): help`` for --help texts."""
        return f"{self.name} ({self.unit}): {self.help}"


def _bytes(value: float) -> str:
    """Bytes in B, kB, MB or GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


class Params(Cost):
    """Parameters: weights, biases and norm vectors (the paper's PA)."""

    name, key, unit, label = "params", "params", "parameters", "params"
    help = "weights + biases + norm vectors; 0.5 or an amount like 1.2M"

    def layer(self, layer: LayerShape) -> float:
        """Weights, bias and norm vectors."""
        return layer.params

    def extra(self, prof: Profile) -> float:
        """Parameters outside conv and linear layers."""
        return prof.other_params


class Flops(Cost):
    """Multiply-adds counted once (the paper's FA)."""

    name, key, unit, label = "flops", "flops", "MACs", "FLOPs (MACs)"
    help = "multiply-adds for one input, counted once; 0.5 or an amount like 150M"
    example = "150M"

    def layer(self, layer: LayerShape) -> float:
        """Multiply-adds of the layer."""
        return layer.flops


class Memory(Cost):
    """Bytes of weights plus output feature maps (the paper's MA)."""

    name, key, unit, label = "memory", "memory_bytes", "bytes", "memory"
    help = "bytes of weights + output maps (4 B per fp32 value); 0.5 or an amount like 4MB or 3MiB"
    units = _BYTE_UNITS
    example = "4MB"

    def layer(self, layer: LayerShape) -> float:
        """Weight and output-map bytes at their stored widths."""
        return layer.memory

    def extra(self, prof: Profile) -> float:
        """Parameters outside conv and linear layers, as fp32."""
        return BYTES_PER_VALUE * prof.other_params

    def human(self, value: float) -> str:
        """Bytes in B, kB, MB or GB."""
        return _bytes(value)


class Energy(Cost):
    """The 45 nm energy estimate per inference: compute plus DRAM traffic, in microjoules."""

    name, key, unit, label = "energy", "energy_uj", "uJ", "energy (uJ, estimate)"
    help = "estimate, 4.6 pJ x MACs + 640 pJ x memory / 4 B (Horowitz 2014, 45 nm); 0.5 or an amount like 50uJ"
    integer = False
    units = {"pJ": 1e-6, "nJ": 1e-3, "uJ": 1.0, "µJ": 1.0, "mJ": 1e3, "J": 1e6}
    example = "50uJ"

    def layer(self, layer: LayerShape) -> float:
        """The layer's MACs at their precision's figure plus its bytes moved once."""
        pj_mac = PJ_PER_INT8_MAC if layer.weight_bytes == 1 else PJ_PER_MAC
        return (pj_mac * layer.flops + PJ_PER_DRAM_BYTE * layer.memory) * 1e-6

    def extra(self, prof: Profile) -> float:
        """Parameters outside conv and linear layers, read once as fp32."""
        return PJ_PER_DRAM_BYTE * BYTES_PER_VALUE * prof.other_params * 1e-6

    def human(self, value: float) -> str:
        """Microjoules, or millijoules from 1000 uJ."""
        return f"{value / 1e3:.2f} mJ" if value >= 1e3 else f"{value:.2f} uJ"


class Latency(Cost):
    """Measured latency on one backend: the table's per-layer values plus the rest of the model."""

    name, key, unit, label = "latency", "latency_ms", "ms", "latency (ms, table)"
    help = "batch-1 latency measured on a backend (needs --lut TABLE); 0.5 of the parent's, or 3ms / 800us"
    integer = False
    units = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
    example = "3ms"

    def __init__(self, table: LayerTimes):
        self.table = table

    def layer(self, layer: LayerShape) -> float:
        """The table's latency of the layer at its widths."""
        return self.table.layer_ms(layer)

    def extra(self, prof: Profile) -> float:
        """Everything the table does not time one layer at a time (input, pooling, adds, overhead)."""
        return self.table.rest()

    def human(self, value: float) -> str:
        """Milliseconds with three decimals."""
        return f"{value:.3f} ms"


INT8_CHANNEL_BYTES = 4 + 4  # an int8 layer's per-output-channel scale (fp32) and zero point, 4 B each
VECTOR_BYTES = 4  # a bias (fp32, or int32 beside int8 weights) or norm value


class Flash(Cost):
    """What a microcontroller's flash must hold: weights, biases and norm parameters at their stored width.

    fp32 (and any width but int8): ``weight_bytes`` per weight, 4 B per bias and norm value, so an fp32 model's
    flash is 4 B x its parameters. int8 (``weight_bytes`` 1, a quantized ONNX graph): 1 B per weight, 4 B per
    per-channel scale and 4 B per zero point, an int32 bias of 4 B per filter; a BatchNorm is folded into the
    conv by then and counts as its bias. Parameters outside conv and linear layers count 4 B each.
    """

    name, key, unit, label = "flash", "flash_bytes", "bytes", "flash"
    help = "bytes of weights + biases + norm vectors at their stored width (fp32 4 B; int8 1 B + per-channel "
    help += "scale and zero point); 0.5 or an amount like 1MB"
    units = _BYTE_UNITS
    example = "1MB"

    def layer(self, layer: LayerShape) -> float:
        """The layer's stored weights, biases and norm vectors (and quantization parameters), in bytes."""
        if layer.weight_bytes == 1:
            folded = layer.bias or layer.bn is not None  # BN folded into the conv: one int32 bias per filter
            return layer.weights + layer.c_out * (INT8_CHANNEL_BYTES + VECTOR_BYTES * folded)
        return layer.weight_bytes * layer.weights + VECTOR_BYTES * (layer.params - layer.weights)

    def extra(self, prof: Profile) -> float:
        """Parameters outside conv and linear layers, as fp32."""
        return BYTES_PER_VALUE * prof.other_params

    def human(self, value: float) -> str:
        """Bytes in B, kB, MB or GB."""
        return _bytes(value)


class PeakMemory(Cost):
    """What a microcontroller's SRAM must hold: the largest set of activations alive at once (batch 1).

    Over the traced forward pass in execution order, the bytes of the current op's inputs and outputs plus every
    earlier output a later op still needs (skip connections, concatenations), at the stored width (the traced
    tensors' own: 4 B fp32); weights are not counted (``edgeprune.liveness``). It is a maximum, not a sum over
    layers: the total is recomputed from the liveness at the current widths. A group's lottery weight
    (``share``) is its share of the activations alive at the peak: the bytes there that are its layers'
    channels (its filters' outputs, and a depthwise conv that follows them). ``layer`` is a layer's output map,
    for per-layer tables only.
    """

    name, key, unit, label = "peak_memory", "peak_memory_bytes", "bytes", "peak memory"
    help = "bytes of the activations alive at once at batch 1 (SRAM; fp32 4 B); 0.5 or an amount like 256KB"
    units = _BYTE_UNITS
    example = "256KB"
    additive = False

    def layer(self, layer: LayerShape) -> float:
        """The layer's output maps in bytes (per-layer tables only: the total is the liveness peak)."""
        return layer.output_bytes * layer.c_out * layer.spatial

    def available(self, prof: Profile) -> bool:
        """True when ``prof`` was traced with its liveness (``edgeprune.liveness.attach``)."""
        return prof.liveness is not None

    def total(self, prof: Profile) -> float:
        """The largest number of activation bytes alive at once at ``prof``'s widths."""
        return self._liveness(prof).peak(prof.by_name())

    def share(self, prof: Profile, group: Any) -> float:
        """Bytes alive at the peak that are channels the group removes (its filters, a depthwise conv it feeds)."""
        shapes = prof.by_name()
        layers = {*group.out_layers, *(m.layer for m in group.members if shapes[m.layer].depthwise)}
        return float(self._liveness(prof).held(shapes, layers))

    def where(self, prof: Profile) -> dict:
        """The peak, the op it happens at and how many tensors are alive there."""
        return self._liveness(prof).where(prof.by_name())

    def _liveness(self, prof: Profile) -> Any:
        if prof.liveness is None:
            raise EdgepruneError(
                "peak_memory needs the traced forward pass of a PyTorch model (edgeprune profile/prune MODEL); "
                "an ONNX file's profile has no activation liveness"
            )
        return prof.liveness

    def human(self, value: float) -> str:
        """Bytes in B, kB, MB or GB."""
        return _bytes(value)


STATIC = {"params": Params(), "flops": Flops(), "memory": Memory(), "energy": Energy()}
MCU = {"peak_memory": PeakMemory(), "flash": Flash()}  # microcontroller costs: SRAM and flash
NAMES = (*STATIC, *MCU, "latency")
PAPER_MODES = ("params", "flops", "memory")  # PA, FA, MA: the costs the paper's modes prune to


def get_cost(name: str, table: LayerTimes | None = None) -> Cost:
    """The cost called ``name``; latency needs its table."""
    if name == "latency":
        if table is None:
            raise EdgepruneError("a latency budget needs a latency table: build one with 'edgeprune lut' (--lut FILE)")
        return Latency(table)
    if name in MCU:
        return MCU[name]
    if name not in STATIC:
        raise EdgepruneError(f"unknown cost '{name}'; choose from: {', '.join(NAMES)}")
    return STATIC[name]


def human(value: float, name: str) -> str:
    """A value of cost ``name`` with its unit (no table needed to format a latency)."""
    check_cost(name)
    return f"{value:.3f} ms" if name == "latency" else get_cost(name).human(value)


def label(name: str) -> str:
    """The column title of cost ``name``."""
    check_cost(name)
    return Latency.label if name == "latency" else get_cost(name).label


def by_key() -> dict[str, str]:
    """Cost names by their JSON keys (``memory_bytes`` -> ``memory``)."""
    return {**{c.key: name for name, c in {**STATIC, **MCU}.items()}, Latency.key: "latency"}


def check_cost(name: str) -> None:
    """Raise a one-line error for an unknown cost name."""
    if name not in NAMES:
        raise EdgepruneError(f"unknown cost '{name}'; choose from: {', '.join(NAMES)}")


def totals(prof: Profile, table: LayerTimes | None = None) -> dict[str, float]:
    """Every cost's total keyed by its JSON key (latency only with a table, peak memory only with a liveness)."""
    out: dict[str, Any] = {cost.key: cost.total(prof) for cost in (*STATIC.values(), *MCU.values())
                           if cost.available(prof)}  # fmt: skip
    if table is not None:
        out[Latency.key] = Latency(table).total(prof)
    return out


_EMPTY_BUDGET = "a budget is a non-empty mapping of cost to limit, e.g. {'flops': 0.5, 'memory': '4MB'}"


def parse_target(target: str | float, mode: str, current: float, table: LayerTimes | None = None) -> float:
    """Absolute limit from a fraction of ``current`` (``0.5``) or an amount with a unit (``2M``, ``4MB``, ``3ms``)."""
    return get_cost(mode, table).parse(target, current)


def parse_budget(budget: dict[str, str | float], prof: Profile, table: LayerTimes | None = None) -> dict[str, float]:
    """``{"flops": 0.5, "memory": "4MB"}`` -> absolute limits, each parsed like a single target."""
    if not isinstance(budget, dict) or not budget:
        raise EdgepruneError(_EMPTY_BUDGET)
    costs = {name: get_cost(name, table) for name in budget}
    return {name: cost.parse(budget[name], cost.total(prof)) for name, cost in costs.items()}


@dataclass(frozen=True)
class Budget:
    """What a plan must meet: (cost, limit) pairs, every cost at or under its limit after the cut."""

    # cost name (``NAMES``) -> limit: a fraction of the parent's total (``0.5``) or an amount in the cost's units
    # (``"2M"`` params, ``"4MB"``, ``"3ms"``), parsed against the model by ``parse_budget``
    limits: dict[str, str | float]

    @classmethod
    def of(cls, mode: str, target: str | float) -> Budget:
        """The one-cost budget of the paper's modes: ``target`` in ``mode``."""
        return cls({mode: target})

    @classmethod
    def from_args(cls, mode: str | None, target: str | float | None,
                  budget: Budget | Mapping[str, str | float] | None) -> Budget:  # fmt: skip
        """The budget of a call that gives ``mode`` and ``target`` or ``budget`` (a Budget or a mapping), not both."""
        if (budget is None) == (mode is None or target is None):
            raise EdgepruneError("give either mode and target, or a budget of several costs (not both)")
        if isinstance(budget, Budget):
            return budget
        return cls(dict(budget)) if budget is not None else cls.of(mode, target)  # type: ignore[arg-type]

    def validate(self, table: LayerTimes | None = None) -> None:
        """Every cost known, and a latency limit only with ``table``: a one-line EdgepruneError otherwise."""
        for cost in self.limits:
            check_cost(cost)
            get_cost(cost, table)
        if not isinstance(self.limits, dict) or not self.limits:
            raise EdgepruneError(_EMPTY_BUDGET)

    def absolute(self, prof: Profile, table: LayerTimes | None = None) -> dict[str, float]:
        """Every limit as an absolute amount of ``prof``'s model (``parse_budget``)."""
        return parse_budget(dict(self.limits), prof, table)


MCU_CONVENTIONS = (
    "batch 1; peak_memory = the largest total of activation bytes alive at once over the forward pass in execution "
    "order (the op's inputs and outputs plus earlier outputs a later op still needs), at the traced width, weights "
    "not counted; flash = weights + biases + norm vectors at their stored width (fp32 4 B; int8 1 B + 4 B scale and "
    "4 B zero point per output channel + 4 B int32 bias, BatchNorm folded as the bias)"
)


def mcu_totals(prof: Profile) -> dict[str, Any]:
    """The microcontroller costs of ``prof``, JSON-ready: flash, and peak memory with where it is (when traced)."""
    out: dict[str, Any] = {"flash_bytes": MCU["flash"].total(prof), "precision": prof.precision}
    peak: PeakMemory = MCU["peak_memory"]  # type: ignore[assignment]
    if peak.available(prof):
        out["peak_memory_bytes"] = peak.total(prof)
        out["peak"] = peak.where(prof)
    else:
        out["peak_memory_bytes"] = None
        out["peak"] = "not available: needs a PyTorch model's traced forward pass, not an ONNX file"
    out["flash_bytes_by_layer"] = {layer.name: MCU["flash"].layer(layer) for layer in prof.layers}
    out["conventions"] = MCU_CONVENTIONS
    return out


def mcu_line(prof: Profile) -> str:
    """One line for tables: peak memory (and where) and flash, with what they count."""
    mcu = mcu_totals(prof)
    flash = f"flash {_bytes(mcu['flash_bytes'])} ({prof.precision} weights + biases + norm vectors)"
    if mcu["peak_memory_bytes"] is None:
        return f"microcontroller: peak memory n/a ({mcu['peak'][15:]}); {flash}"
    at = mcu["peak"]
    where = f"batch 1, activations alive at once; peak at op {at['op_index']} {at['op']}, {at['tensors_alive']} tensors"
    return f"microcontroller: peak memory {_bytes(mcu['peak_memory_bytes'])} ({where} alive); {flash}"


def cost_help() -> str:
    """One line per cost with its unit, for --help."""
    costs = [c.describe() for c in (*STATIC.values(), *MCU.values())]
    return "; ".join([*costs, f"latency ({Latency.unit}): {Latency.help}"])
