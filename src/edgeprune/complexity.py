"""Complexity accounting: parameters, FLOPs (multiply-adds counted once) and memory per layer.

Definitions follow SPEC.md (fp32, batch 1). For a conv with C_in inputs, C_out filters, kernel
k_h x k_w, g groups and an H x W output map:

    P = (C_in / g) * k_h * k_w * C_out  (+ C_out bias, + 2 * C_out for a following BatchNorm)
    F = (C_in / g) * k_h * k_w * C_out * H * W
    M = 4 bytes * (P + C_out * H * W)

A linear layer is the same with k = H = W = 1. Shapes are recorded once with a forward pass;
after that every number is computed from the recorded shapes alone, which is what lets the
pruning loop recompute complexity after each removal without running the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from edgeprune.errors import EdgepruneError

MODES = ("params", "flops", "memory")
BYTES_PER_VALUE = 4  # fp32
CONVENTIONS = "fp32, batch 1; flops = multiply-adds counted once (MACs); memory_bytes = 4 B x (params + output map)"


@dataclass(frozen=True)
class LayerShape:
    """The recorded shape of one conv or linear layer (plus the BatchNorm that follows it)."""

    name: str
    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    groups: int = 1
    kernel: int = 1  # product of kernel dimensions
    spatial: int = 1  # product of output spatial dimensions (H * W)
    bias: bool = False
    bn: str | None = None  # name of the BatchNorm whose affine vectors are counted here

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv, whose inputs, outputs and groups shrink together."""
        return self.groups > 1 and self.groups == self.c_in == self.c_out

    @property
    def params(self) -> int:
        """Weights, bias and BatchNorm affine vectors."""
        return (self.c_in // self.groups) * self.kernel * self.c_out + self.c_out * (int(self.bias) + 2 * bool(self.bn))

    @property
    def flops(self) -> int:
        """Multiply-adds for one input, counted once."""
        return (self.c_in // self.groups) * self.kernel * self.c_out * self.spatial

    @property
    def memory(self) -> int:
        """Bytes of weights plus the output feature map."""
        return BYTES_PER_VALUE * (self.params + self.c_out * self.spatial)

    def measure(self, mode: str) -> int:
        """This layer's complexity in ``mode`` (params, flops or memory)."""
        return getattr(self, mode)

    def resized(self, c_in: int | None = None, c_out: int | None = None) -> LayerShape:
        """A copy with new channel counts; a depthwise conv keeps inputs = outputs = groups."""
        c_in = self.c_in if c_in is None else c_in
        c_out = self.c_out if c_out is None else c_out
        if self.depthwise:
            width = min(c_in, c_out)
            return replace(self, c_in=width, c_out=width, groups=width)
        return replace(self, c_in=c_in, c_out=c_out)


@dataclass
class Profile:
    """Complexity of a model: its layers' shapes plus parameters outside conv/linear/BN."""

    layers: list[LayerShape]
    input_shape: tuple[int, ...]
    other_params: int = 0  # parameters not attributed to any conv or linear layer
    prunable: dict[str, bool] = field(default_factory=dict)
    groups: list = field(default_factory=list)  # ChannelGroup list, filled by profile()

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
            "conventions": CONVENTIONS,
            "layers": rows,
            "other_params": self.other_params,
            "groups": [g.to_dict() for g in self.groups],
            "total": self.totals(),
        }


def check_mode(mode: str) -> None:
    """Raise a one-line error for an unknown complexity mode."""
    if mode not in MODES:
        raise EdgepruneError(f"unknown mode '{mode}'; choose from: {', '.join(MODES)}")


def _prod(values: Iterable[int]) -> int:
    return math.prod(int(v) for v in values)


def record_shapes(model: nn.Module, example_input: torch.Tensor) -> Profile:
    """Run one forward pass and record every conv/linear layer's shape, in execution order."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[nn.Module, torch.Size]] = []

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        order.append((module, out.shape))

    watched = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, watched)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    layers: list[LayerShape] = []
    counted: set[nn.Module] = set()
    last: nn.Module | None = None
    for module, shape in order:
        if module in counted:
            continue  # a module called twice is counted once, at its first call
        counted.add(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # A BatchNorm right after the layer with the same width is that layer's.
            if last is not None and layers and layers[-1].c_out == module.num_features and module.affine:
                layers[-1] = replace(layers[-1], bn=names[module])
            last = None
            continue
        batch_spatial = _prod(shape[2:]) if not isinstance(module, nn.Linear) else _prod(shape[1:-1])
        if isinstance(module, nn.Linear):
            layer = LayerShape(
                names[module],
                "linear",
                module.in_features,
                module.out_features,
                spatial=batch_spatial,
                bias=module.bias is not None,
            )
        else:
            layer = LayerShape(
                names[module],
                "conv",
                module.in_channels,
                module.out_channels,
                module.groups,
                _prod(module.kernel_size),
                batch_spatial,
                module.bias is not None,
            )
        layers.append(layer)
        last = module

    attributed = sum(layer.params for layer in layers)
    total = sum(p.numel() for p in model.parameters())
    return Profile(layers, tuple(example_input.shape[1:]), other_params=total - attributed)


def profile(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32), prune_residual: bool = False) -> Profile:
    """Complexity profile of any ``nn.Module`` for one input of ``input_shape`` (no batch dim)."""
    example = torch.zeros(1, *input_shape)
    prof = record_shapes(model, example)
    # Prunability needs the dependency graph; imported here to keep this module free of it.
    from edgeprune.graph import build_graph, find_groups

    prof.groups = find_groups(build_graph(model, example), model, prof, prune_residual=prune_residual)
    prof.prunable = {name: g.prunable for g in prof.groups for name in g.out_layers}
    return prof
