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
from pathlib import Path

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


# -- ONNX files -------------------------------------------------------------------------------


def onnx_profile(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Profile:
    """Complexity profile of an ONNX file from its graph: Conv, Gemm and MatMul layers with the SPEC formulas.

    ``input_shape`` (no batch dim) fills or checks the graph input's dims. A BatchNorm folded into
    a conv by the exporter counts as that conv's bias (C_out values, not 2 * C_out); one still in
    the graph counts its two affine vectors, as in ``profile``.
    """
    import onnx

    if not Path(path).is_file():
        raise EdgepruneError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, OSError, ValueError... for a bad file
        raise EdgepruneError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    graph = model.graph
    stored = {t.name: tuple(t.dims) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in stored]
    if len(inputs) != 1:
        raise EdgepruneError(f"{path}: has {len(inputs)} inputs; only single-input models can be measured")
    shape = _fix_input(path, inputs[0], input_shape)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    except Exception as e:  # InferenceError names the failing node
        raise EdgepruneError(f"{path}: shape inference failed: {str(e).splitlines()[0]}") from None
    shapes = dict(stored)
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        shapes[value.name] = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
    constants = set(stored)
    for node in graph.node:  # weights can also come from Constant nodes, or through Identity nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
            constants.add(node.output[0])
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants.add(node.output[0])
    layers = _onnx_layers(path, graph, shapes, constants)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    stats = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (3, 4) if i < len(n.input)}
    weights = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in float_types and t.name not in stats)
    attributed = sum(layer.params for layer in layers)
    return Profile(layers, shape, other_params=max(weights - attributed, 0))


def _fix_input(path: str | Path, value: object, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Set the graph input to batch 1 and ``input_shape`` (checked against its static dims)."""
    dims = value.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    shown = "x".join(str(d or "?") for d in declared)
    if input_shape is None:
        if None in declared or not declared:
            raise EdgepruneError(f"{path}: the input's size is not fixed ({shown}); give it (--input-size)")
        input_shape = tuple(declared)  # type: ignore[arg-type]
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != len(declared) or any(d not in (None, s) for d, s in zip(declared, input_shape)):
        wanted = "x".join(map(str, input_shape))
        raise EdgepruneError(f"{path}: the model takes {shown} inputs, not {wanted}")
    for dim, size in zip(dims, (1, *input_shape)):
        dim.dim_value = size  # clears a symbolic dim_param too
    return input_shape


def _onnx_layers(path: str | Path, graph: object, shapes: dict, constants: set[str]) -> list[LayerShape]:
    """LayerShapes of a graph's Conv, Gemm and constant-weight MatMul nodes; a BatchNorm after one is its ``bn``."""
    layers: list[LayerShape] = []
    by_output: dict[str, int] = {}

    def dims(name: str, node: object) -> tuple[int, ...]:
        found = shapes.get(name)
        if not found or 0 in found:
            raise EdgepruneError(f"{path}: cannot read the shape of '{name}' (node {node.name or node.op_type})")
        return found

    for node in graph.node:  # type: ignore[attr-defined]
        attrs = {a.name: a for a in node.attribute}
        name = node.name or node.output[0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type == "Conv":
            w, out = dims(node.input[1], node), dims(node.output[0], node)
            groups = attrs["group"].i if "group" in attrs else 1
            layer = LayerShape(name, "conv", w[1] * groups, w[0], groups, _prod(w[2:]), _prod(out[2:]), has_bias)
        elif node.op_type == "Gemm" or (node.op_type == "MatMul" and node.input[1] in constants):
            w, out = dims(node.input[1], node), dims(node.output[0], node)
            if len(w) != 2:
                continue  # a batched MatMul of two activations has no weights
            transposed = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
            c_in, c_out = (w[1], w[0]) if transposed else (w[0], w[1])
            layer = LayerShape(name, "linear", c_in, c_out, spatial=_prod(out[1:-1]), bias=has_bias)
        elif node.op_type == "BatchNormalization" and node.input[0] in by_output:
            i = by_output[node.input[0]]
            if layers[i].bn is None and layers[i].c_out == dims(node.input[1], node)[0]:
                layers[i] = replace(layers[i], bn=name)
            continue
        else:
            continue
        by_output[node.output[0]] = len(layers)
        layers.append(layer)
    return layers
