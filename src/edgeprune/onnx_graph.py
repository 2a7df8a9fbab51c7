"""Complexity of an ONNX file, counted from its graph with the SPEC formulas (see ``edgeprune.complexity``).

``onnx_profile`` reads the Conv, ConvTranspose, Gemm and constant-weight MatMul nodes of a single-input
graph and turns them into ``LayerShape`` rows. It needs the static shape of each such node's weight,
input and output at batch 1, found in three steps, each tried only if the one before left a shape
unknown:

1. onnx's own shape inference, non-strict and with data propagation (enough for most exports);
2. onnxruntime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``), which follows
   the ``Shape -> Gather -> Concat -> Reshape`` chains that torch writes for ``view``/``GroupNorm``;
3. one onnxruntime run on a zero input, with the still-missing values added as graph outputs.

A norm layer's affine vectors count with the layer before it, as in ``edgeprune.profile``: a
BatchNormalization, an InstanceNormalization or GroupNormalization with stored per-channel vectors,
and torch's GroupNorm export (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add). A
BatchNorm folded into a conv by the exporter counts as that conv's bias (C_out values, not 2 * C_out).
This module imports no torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError

Shape = tuple[int, ...]


def onnx_profile(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Profile:
    """Complexity profile of an ONNX file from its graph: Conv, ConvTranspose, Gemm and MatMul layers.

    ``input_shape`` (no batch dim) fills or checks the graph input's dims. Shapes come from onnx's
    inference, else onnxruntime's symbolic inference, else one onnxruntime run. A BatchNorm folded
    into a conv by the exporter counts as that conv's bias (C_out values, not 2 * C_out); a norm still
    in the graph (BatchNorm, InstanceNorm, GroupNorm) counts its two affine vectors, as in ``profile``.
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
    shapes: dict[str, Shape] = dict(stored)
    shapes[inputs[0].name] = (1, *shape)
    constants, params = set(stored), set(stored)
    for node in graph.node:  # weights can also come from Constant nodes, or through Identity nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
            constants.add(node.output[0])
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants.add(node.output[0])
            if node.input[0] in params:  # an initializer the exporter shared between equal tensors
                params.add(node.output[0])
            if node.input[0] in shapes:
                shapes[node.output[0]] = shapes[node.input[0]]
    needed = _needed(graph, constants)
    _infer(path, model, shapes, needed, inputs[0], shape)
    layers, synthetic = _onnx_layers(path, graph, shapes, constants, params)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    stats = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (3, 4) if i < len(n.input)}
    skip = stats | synthetic
    weights = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in float_types and t.name not in skip)
    attributed = sum(layer.params for layer in layers)
    return Profile(layers, shape, other_params=max(weights - attributed, 0))


def _fix_input(path: str | Path, value: Any, input_shape: tuple[int, ...] | None) -> Shape:
    """Set the graph input to batch 1 and ``input_shape`` (checked against its static dims)."""
    dims = value.type.tensor_type.shape.dim
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


def _counted(node: Any, constants: set[str]) -> bool:
    """True for the nodes counted as layers: Conv, ConvTranspose, Gemm and MatMul with a constant weight."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return True
    return node.op_type == "MatMul" and node.input[1] in constants


def _needed(graph: Any, constants: set[str]) -> list[str]:
    """The values whose shapes the counted layers need: weights, outputs, and inputs of convs."""
    names: list[str] = []
    for node in graph.node:
        if _counted(node, constants):
            data = [node.input[0]] if node.op_type in ("Conv", "ConvTranspose") else []
            names += [*data, node.input[1], node.output[0]]
    return list(dict.fromkeys(names))


def _static(value: Any) -> Shape | None:
    """The dims of a ValueInfoProto when all are known and positive, else None."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim)
    return None if 0 in dims else dims


def _read(model: Any, shapes: dict[str, Shape]) -> None:
    """Add the fully known shapes of a (shape-inferred) model's values to ``shapes``."""
    graph = model.graph
    for value in [*graph.value_info, *graph.input, *graph.output]:
        dims = _static(value)
        if dims is not None and value.name not in shapes:
            shapes[value.name] = dims


def _infer(
    path: str | Path, model: Any, shapes: dict[str, Shape], needed: list[str], input_value: Any, shape: Shape
) -> None:
    """Fill ``shapes`` for ``needed``: onnx inference, then onnxruntime's symbolic inference, then one run."""
    import onnx

    def missing() -> list[str]:
        return [n for n in needed if n not in shapes]

    try:
        _read(onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), shapes)
    except Exception:  # an op onnx cannot type: try the next step
        pass
    if missing():
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            with _in_temp_dir():  # on a partial result it saves "sym_shape_infer_temp.onnx" in the working folder
                inferred = SymbolicShapeInference.infer_shapes(copy, auto_merge=True, verbose=0)
            _read(inferred, shapes)
        except Exception:  # not installed, or an op it does not know
            pass
    if missing():
        shapes.update(_measure(path, model, missing(), input_value, shape))


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[None]:
    """Run the block in a fresh temporary working folder, removed afterwards."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgeprune-shapes-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(here)


def _measure(path: str | Path, model: Any, names: list[str], input_value: Any, shape: Shape) -> dict[str, Shape]:
    """Shapes of ``names`` measured by one onnxruntime run on a zero input, the names added as graph outputs."""
    import numpy as np
    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgepruneError(f"{path}: cannot read the shape of '{names[0]}' (onnxruntime is not installed)") from None
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elem = input_value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = np.zeros((1, *shape), dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
        values = session.run(names, {input_value.name: x})
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgepruneError(f"{path}: cannot read the shape of '{names[0]}': onnxruntime failed ({first})") from None
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values)}


def _onnx_layers(
    path: str | Path, graph: Any, shapes: dict[str, Shape], constants: set[str], params: set[str]
) -> tuple[list[LayerShape], set[str]]:
    """LayerShapes of a graph's counted nodes, each with the norm that follows it; also the synthetic norm constants.

    The second value names the initializers that are no parameters of the source model: the scale and
    bias that torch's GroupNorm export gives its InstanceNormalization (ones and zeros per group).
    """
    layers: list[LayerShape] = []
    by_output: dict[str, int] = {}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    synthetic: set[str] = set()

    def dims(name: str, node: Any) -> Shape:
        found = shapes.get(name)
        if not found or 0 in found:
            raise EdgepruneError(f"{path}: cannot read the shape of '{name}' (node {node.name or node.op_type})")
        return found

    def size(name: str) -> int:
        return math.prod(shapes[name]) if name in shapes else -1

    def only(name: str, op: str) -> Any:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def affine(node: Any, c_out: int) -> bool:
        """True when a Mul -> Add pair after ``node`` scales and shifts by stored per-channel vectors."""
        mul = only(node.output[0], "Mul")
        add = mul and only(mul.output[0], "Add")
        if not add:
            return False
        vectors = [[n for n in op.input if n != src][:1] for op, src in ((mul, node.output[0]), (add, mul.output[0]))]
        return all(v and v[0] in params and size(v[0]) == c_out for v in vectors)

    def attach(i: int, norm: str, c: int) -> None:
        if layers[i].bn is None and layers[i].c_out == c:
            layers[i] = replace(layers[i], bn=norm)

    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        name = node.name or node.output[0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type in ("Conv", "ConvTranspose"):
            w, x, out = dims(node.input[1], node), dims(node.input[0], node), dims(node.output[0], node)
            groups = attrs["group"].i if "group" in attrs else 1
            if node.op_type == "Conv":  # weight (C_out, C_in / g, k...)
                kind, c_in, c_out = "conv", w[1] * groups, w[0]
            else:  # weight (C_in, C_out / g, k...)
                kind, c_in, c_out = "conv_transpose", w[0], w[1] * groups
            kernel, spatial, in_spatial = math.prod(w[2:]), math.prod(out[2:]), math.prod(x[2:])
            layer = LayerShape(name, kind, c_in, c_out, groups, kernel, spatial, has_bias, in_spatial=in_spatial)
        elif node.op_type in ("Gemm", "MatMul") and _counted(node, constants):
            w, out = dims(node.input[1], node), dims(node.output[0], node)
            if len(w) != 2:
                continue  # a batched MatMul of two activations has no weights
            transposed = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
            c_in, c_out = (w[1], w[0]) if transposed else (w[0], w[1])
            layer = LayerShape(name, "linear", c_in, c_out, spatial=math.prod(out[1:-1]), bias=has_bias)
        elif node.op_type == "BatchNormalization" and node.input[0] in by_output:
            attach(by_output[node.input[0]], name, dims(node.input[1], node)[0])
            continue
        elif node.op_type in ("InstanceNormalization", "GroupNormalization"):
            source = producer.get(node.input[0])
            if node.input[0] in by_output and len(node.input) > 2 and {node.input[1], node.input[2]} <= params:
                attach(by_output[node.input[0]], name, size(node.input[1]))  # the norm's own per-channel vectors
            elif node.op_type == "InstanceNormalization" and source is not None and source.op_type == "Reshape":
                synthetic.update(node.input[1:3])  # torch's GroupNorm: ones and zeros per group, no parameters
                back = only(node.output[0], "Reshape")
                c_out = layers[by_output[source.input[0]]].c_out if source.input[0] in by_output else -1
                if back is not None and source.input[0] in by_output and affine(back, c_out):
                    attach(by_output[source.input[0]], name, c_out)
            continue
        else:
            continue
        by_output[node.output[0]] = len(layers)
        layers.append(layer)
    return layers, synthetic
