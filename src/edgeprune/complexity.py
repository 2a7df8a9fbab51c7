"""Complexity accounting: parameters, FLOPs (multiply-adds counted once) and memory per layer.

Definitions follow SPEC.md (fp32, batch 1). For a conv with C_in inputs, C_out filters, kernel
k_h x k_w, g groups and an H x W output map:

    P = (C_in / g) * k_h * k_w * C_out  (+ C_out bias, + 2 * C_out for a following norm layer)
    F = (C_in / g) * k_h * k_w * C_out * H * W
    M = 4 bytes * (P + C_out * H * W)

A linear layer is the same with k = H = W = 1. A transposed conv has the same parameters, and
F = C_in * (C_out / g) * k_h * k_w * H_in * W_in (every input position is scattered through the
kernel). A layer called several times counts FLOPs and output maps once per call, parameters
once. This module holds the arithmetic only: shapes are recorded by ``edgeprune.trace`` (one
forward pass) or read from an ONNX graph, and every number after that comes from the shapes
alone, which is what lets the pruning loop recompute complexity without running the model.

A quantized ONNX graph (``edgeprune.onnx_graph``) keeps these parameter and FLOP counts (values and
MACs) but stores weights and outputs narrower: ``LayerShape.weight_bytes`` and ``output_bytes`` (4 by
default, 1 for int8) give M = weight_bytes * weights + 4 B * (bias + norm vectors) + output_bytes * C_out * H * W.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeprune.errors import EdgepruneError

MODES = ("params", "flops", "memory")
BYTES_PER_VALUE = 4  # fp32
CONVENTIONS = "fp32, batch 1; flops = multiply-adds counted once (MACs); memory_bytes = 4 B x (params + output map)"
QUANTIZED_CONVENTIONS = (
    "quantized graph, batch 1; flops = multiply-adds counted once (MACs); params = values; memory_bytes = "
    "weights at their stored width (int8: 1 B) + bias and norm vectors (4 B) + output map at its stored width"
)


@dataclass(frozen=True)
class LayerShape:
    """The recorded shape of one conv or linear layer (plus the BatchNorm that follows it)."""

    name: str
    kind: str  # "conv", "conv_transpose" or "linear"
    c_in: int
    c_out: int
    groups: int = 1
    kernel: int = 1  # product of kernel dimensions
    spatial: int = 1  # output positions (H * W), summed over the layer's calls
    bias: bool = False
    bn: str | None = None  # the norm layer (BatchNorm, GroupNorm...) whose affine vectors are counted here
    in_spatial: int = 0  # input positions, summed over calls (what a transposed conv's FLOPs scale with)
    calls: int = 1
    weight_bytes: int = BYTES_PER_VALUE  # stored width of one weight value (1 for int8)
    output_bytes: int = BYTES_PER_VALUE  # stored width of one output value (1 for a quantized activation)

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv, whose inputs, outputs and groups shrink together."""
        return self.groups > 1 and self.groups == self.c_in == self.c_out

    @property
    def weights(self) -> int:
        """Weight values, without bias or norm vectors."""
        return (self.c_in // self.groups) * self.kernel * self.c_out

    @property
    def params(self) -> int:
        """Weights, bias and BatchNorm affine vectors."""
        return self.weights + self.c_out * (int(self.bias) + 2 * bool(self.bn))

    @property
    def flops(self) -> int:
        """Multiply-adds for one input, counted once."""
        positions = self.in_spatial if self.kind == "conv_transpose" else self.spatial
        return (self.c_in // self.groups) * self.kernel * self.c_out * positions

    @property
    def memory(self) -> int:
        """Bytes of weights plus the output feature map, each at its stored width (4 B for fp32)."""
        vectors = BYTES_PER_VALUE * (self.params - self.weights)  # bias and norm vectors: fp32 or int32
        return self.weight_bytes * self.weights + vectors + self.output_bytes * self.c_out * self.spatial

    def measure(self, mode: str) -> int:
        """This layer's complexity in ``mode`` (params, flops or memory)."""
        return getattr(self, mode)

    def resized(self, c_in: int | None = None, c_out: int | None = None) -> LayerShape:
        """A copy with new channel counts; a depthwise conv keeps inputs = outputs = groups."""
        c_in = self.c_in if c_in is None else c_in
        c_out = self.c_out if c_out is None else c_out
        if self.depthwise:
            width = min(c_in, c_out)
            return self._with(c_in=width, c_out=width, groups=width)
        return self._with(c_in=c_in, c_out=c_out)

    def _with(self, **changes: int) -> LayerShape:
        # dataclasses.replace without its per-field __init__: the plan loop resizes thousands of shapes per prune,
        # and a LayerShape has no __post_init__ to run
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, **changes)
        return new


@dataclass
class Profile:
    """Complexity of a model: its layers' shapes plus parameters outside conv/linear/BN."""

    layers: list[LayerShape]
    input_shape: tuple[int, ...]
    other_params: int = 0  # parameters not attributed to any conv or linear layer
    prunable: dict[str, bool] = field(default_factory=dict)
    groups: list = field(default_factory=list)  # ChannelGroup list, filled by graph.analyse()
    outputs: tuple[str, ...] = ()  # layers whose outputs reach the model's outputs (never pruned)
    functional: tuple[str, ...] = ()  # parameters used by a conv/linear op outside their module (counted here)
    # the activations' liveness over the forward pass (an ``edgeprune.liveness.Liveness``), what ``peak_memory``
    # reads; None when the profile was not traced with it (an ONNX file, or shapes alone)
    liveness: Any = field(default=None, compare=False, repr=False)

    @property
    def precision(self) -> str:
        """The weights' precision: fp32 (no layer has 1-byte weights), int8 (all have) or mixed."""
        int8 = sum(layer.weight_bytes == 1 for layer in self.layers)
        return "fp32" if int8 == 0 else "int8" if int8 == len(self.layers) else "mixed"

    def total(self, mode: str) -> int:
        """The model's total complexity in ``mode``."""
        check_mode(mode)
        extra = self.other_params * (BYTES_PER_VALUE if mode == "memory" else 1) if mode != "flops" else 0
        return sum(layer.measure(mode) for layer in self.layers) + extra

    def totals(self) -> dict[str, int]:
        """All three totals, keyed as in the JSON output."""
        return {"params": self.total("params"), "flops": self.total("flops"), "memory_bytes": self.total("memory")}

    def by_name(self) -> dict[str, LayerShape]:
        """Layers keyed by module name."""
        return {layer.name: layer for layer in self.layers}

    def to_dict(self) -> dict:
        """A JSON-ready view: per-layer figures, shares and totals."""
        totals = {m: self.total(m) for m in MODES}
        rows = []
        for layer in self.layers:
            row = asdict(layer)
            row.update({m: layer.measure(m) for m in MODES})
            row["memory_bytes"] = row.pop("memory")
            row.update({f"{m}_share": layer.measure(m) / totals[m] if totals[m] else 0.0 for m in MODES})
            row["prunable"] = self.prunable.get(layer.name, False)
            rows.append(row)
        return {
            "input_shape": list(self.input_shape),
            "conventions": CONVENTIONS if self.precision == "fp32" else QUANTIZED_CONVENTIONS,
            "precision": self.precision,
            "layers": rows,
            "other_params": self.other_params,
            "output_layers": list(self.outputs),
            "functional": list(self.functional),
            "groups": [g.to_dict() for g in self.groups],
            "total": self.totals(),
        }


def check_mode(mode: str) -> None:
    """Raise a one-line error for an unknown complexity mode."""
    if mode not in MODES:
        raise EdgepruneError(f"unknown mode '{mode}'; choose from: {', '.join(MODES)}")


def reduction(before: float, after: float) -> float:
    """Percentage reduction from ``before`` to ``after``."""
    return 100.0 * (before - after) / before if before else 0.0
