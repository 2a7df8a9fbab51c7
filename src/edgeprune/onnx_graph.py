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

Quantized graphs count the same layers with the same parameters (values) and FLOPs (MACs):

- QDQ (``onnxruntime.quantization`` with ``QuantFormat.QDQ``): a Conv, Gemm or MatMul whose weight
  comes from a DequantizeLinear of a stored int8 tensor;
- QOperator: QLinearConv, QLinearMatMul and onnxruntime's QGemm; dynamic quantization's ConvInteger
  and MatMulInteger.

Memory counts bytes at their stored width: int8 weights 1 B, int32 or fp32 bias 4 B, an output map
1 B when it is stored quantized (a QLinear op's output, or a float output that goes straight, or
through a Relu/Clip, into QuantizeLinear), 4 B for an int32 (ConvInteger) or float output. The scales
and zero points of the quantization are metadata, counted neither as parameters nor as memory.
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

from edgeprune import limits
from edgeprune.complexity import BYTES_PER_VALUE, LayerShape, Profile
from edgeprune.errors import EdgepruneError, first_line

Shape = tuple[int, ...]


def onnx_profile(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Profile:
    """Complexity profile of an ONNX file from its graph: Conv, ConvTranspose, Gemm and MatMul layers, or quantized.

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
    dtypes = {t.name: t.data_type for t in graph.initializer}  # the element type each constant is stored in
    for node in graph.node:  # weights can also come from Constant nodes, or through Identity/DequantizeLinear
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
            dtypes[node.output[0]] = node.attribute[0].t.data_type
            constants.add(node.output[0])
        elif node.op_type in ("Identity", "DequantizeLinear") and node.input[0] in constants:
            constants.add(node.output[0])
            dtypes[node.output[0]] = dtypes.get(node.input[0], 0)  # a dequantized weight: stored as int8
            if node.input[0] in params:  # an initializer the exporter shared, or a quantized weight
                params.add(node.output[0])
            if node.input[0] in shapes:
                shapes[node.output[0]] = shapes[node.input[0]]
    needed = _needed(graph, constants)
    _infer(path, model, shapes, needed, inputs[0], shape)
    layers, synthetic = _onnx_layers(path, graph, shapes, constants, params, dtypes)
    stats = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (3, 4) if i < len(n.input)}
    weights = sum(math.prod(t.dims) for t in _parameters(graph, stats | synthetic))
    attributed = sum(layer.params for layer in layers)
    prof = Profile(layers, shape, other_params=max(weights - attributed, 0))
    # activations at 4 B each: right for fp32 graphs; a quantized graph's tensors change width between its
    # Quantize/Dequantize nodes, so its peak memory is left uncounted rather than guessed
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in graph.node)
    prof.liveness = None if quantized else onnx_liveness(graph, shapes, constants)
    return prof


# ops whose output shares its input's buffer, as torch's views do (``view``, ``flatten``, ``squeeze``)
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def onnx_liveness(graph: Any, shapes: dict[str, Shape], constants: set[str]) -> Any:
    """The activations alive at each op of the graph at batch 1 (``edgeprune.liveness``'s definition), None
    when an activation's shape is unknown.

    Ops run in the graph's (topological) order; nodes computing from constants alone are weights, not ops.
    A view op's output shares its input's buffer; a buffer lives from the op that makes it (the graph's input
    from the first op) to the last op that reads it (a graph output to the last op); values count 4 B each.
    """
    import numpy as np

    from edgeprune.liveness import Liveness

    constants = set(constants)
    ops: list[Any] = []
    for node in graph.node:
        if node.op_type == "Constant" or all(not i or i in constants for i in node.input):
            constants.update(node.output)
        else:
            ops.append(node)
    owner: dict[str, str] = {}  # a value -> the value whose buffer it lives in
    born: dict[str, int] = {}
    last: dict[str, int] = {}
    for value in graph.input:
        if value.name not in constants:
            owner[value.name] = value.name
            born[value.name] = last[value.name] = 0
    for i, node in enumerate(ops):
        for name in node.input:
            if name in owner:
                last[owner[name]] = i
        for k, name in enumerate(node.output):
            if not name:
                continue
            if node.op_type in VIEW_OPS and k == 0 and node.input[0] in owner:
                owner[name] = owner[node.input[0]]
                continue
            owner[name] = name
            born[name] = last[name] = i
    for value in graph.output:
        if value.name in owner:
            last[owner[value.name]] = len(ops) - 1
    buffers = sorted(born, key=lambda b: born[b])
    if not ops or any(b not in shapes for b in buffers):
        return None
    size = np.array([BYTES_PER_VALUE * math.prod(shapes[b]) for b in buffers], float)
    live = np.array([[born[b] <= r <= last[b] for b in buffers] for r in range(len(ops))], float)
    return Liveness(layers=(), traced=np.zeros(0), const=size, coef=np.zeros((len(buffers), 0)), live=live,
                    rows=tuple(range(len(ops))), ops=tuple(f"{n.name or n.op_type} ({n.op_type})" for n in ops),
                    row_of=tuple(range(len(ops))), alive=tuple(int(row.sum()) for row in live))  # fmt: skip


def _fix_input(path: str | Path, value: Any, input_shape: tuple[int, ...] | None) -> Shape:
    """Set the graph input to batch 1 and ``input_shape`` (checked against its static dims)."""
    dims = value.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    shown = "x".join("?" if d is None else str(d) for d in declared)
    if input_shape is None:
        if None in declared or not declared:
            raise EdgepruneError(f"{path}: the input's size is not fixed ({shown}); give it (--input-size)")
        input_shape = tuple(declared)  # type: ignore[arg-type]
    # the file's own dims meet the caps of --input-size (a declared 3x100000x100000 is 112 GiB; a 0 divides by 0)
    input_shape = limits.check_input_shape([int(d) for d in input_shape], f"{path}: the input")
    if len(input_shape) != len(declared) or any(d not in (None, s) for d, s in zip(declared, input_shape)):
        wanted = "x".join(map(str, input_shape))
        raise EdgepruneError(f"{path}: the model takes {shown} inputs, not {wanted}")
    for dim, size in zip(dims, (1, *input_shape)):
        dim.dim_value = size  # clears a symbolic dim_param too
    return input_shape


# Layer ops: (weight input, bias input or None); the data input is input 0 of each.
LAYER_OPS: dict[str, tuple[int, int | None]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1, None),
    "QLinearConv": (3, 8),
    "QLinearMatMul": (3, None),
    "QGemm": (3, 6),  # com.microsoft
    "ConvInteger": (1, None),
    "MatMulInteger": (1, None),
}
CONV_OPS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")
MATMUL_OPS = ("MatMul", "QLinearMatMul", "MatMulInteger")  # layers only with a constant weight
# Inputs that hold scales and zero points: quantization metadata, not parameters.
QUANT_META: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "QGemm": (1, 2, 4, 5, 7, 8),
    "ConvInteger": (2, 3),
    "MatMulInteger": (2, 3),
}
# Stored width in bytes of the narrow element types; every other type counts 4 B (SPEC's fp32 convention).
NARROW_BYTES = {
    2: 1,  # UINT8
    3: 1,  # INT8
    4: 2,  # UINT16
    5: 2,  # INT16
    17: 1,  # FLOAT8E4M3FN (and the other float8 types, 18-20)
    18: 1,
    19: 1,
    20: 1,
    21: 1,  # UINT4, two to a byte: counted as one byte each
    22: 1,  # INT4
}


def _counted(node: Any, constants: set[str]) -> bool:
    """True for the nodes counted as layers: convs, Gemms, and MatMuls with a constant weight, float or quantized."""
    if node.op_type not in LAYER_OPS:
        return False
    return node.op_type not in MATMUL_OPS or node.input[LAYER_OPS[node.op_type][0]] in constants


def _needed(graph: Any, constants: set[str]) -> list[str]:
    """The values whose shapes the counted layers need: weights, outputs, and inputs of convs."""
    names: list[str] = []
    for node in graph.node:
        if _counted(node, constants):
            data = [node.input[0]] if node.op_type in CONV_OPS else []
            names += [*data, node.input[LAYER_OPS[node.op_type][0]], node.output[0]]
    return list(dict.fromkeys(names))


def _parameters(graph: Any, skip: set[str]) -> list[Any]:
    """The initializers that are model parameters: float tensors, and quantized weights and biases.

    Left out: ``skip``, the scales and zero points of a quantization, and other integer tensors
    (shapes, indices). The float constants a dynamic quantization multiplies with a
    DynamicQuantizeLinear scale (its weight scales), and every input of other QLinear ops (QLinearAdd,
    QLinearGlobalAveragePool...), count as metadata too.
    """
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    integers = {*NARROW_BYTES, onnx.TensorProto.INT32}
    meta, quantized = set(skip), set()
    dynamic_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    for node in graph.node:
        inputs = list(node.input)
        meta.update(inputs[i] for i in QUANT_META.get(node.op_type, ()) if i < len(inputs))
        if node.op_type == "DequantizeLinear":
            quantized.add(inputs[0])  # a constant input is a stored int8 weight or int32 bias
        elif node.op_type in LAYER_OPS:
            quantized.update(inputs[i] for i in LAYER_OPS[node.op_type] if i is not None and i < len(inputs))
        elif node.op_type.startswith("QLinear") or (node.op_type == "Mul" and dynamic_scales & set(inputs)):
            meta.update(inputs)

    def counted(t: Any) -> bool:
        if t.name in meta:
            return False
        return t.data_type in floats or (t.name in quantized and t.data_type in integers)

    return [t for t in graph.initializer if counted(t)]


def _widths(node: Any, consumers: dict[str, list[Any]], dtypes: dict[str, int]) -> dict[str, int]:
    """A layer's stored widths: ``weight_bytes`` from its weight's element type, ``output_bytes`` (see below)."""
    weight = node.input[LAYER_OPS[node.op_type][0]]
    return {
        "weight_bytes": NARROW_BYTES.get(dtypes.get(weight, 0), BYTES_PER_VALUE),
        "output_bytes": _output_bytes(node, consumers, dtypes),
    }


def _output_bytes(node: Any, consumers: dict[str, list[Any]], dtypes: dict[str, int]) -> int:
    """Stored width of a layer's output values: 1 B when quantized (8-bit), 4 B for int32 or float."""
    op, inputs = node.op_type, list(node.input)
    if op in ("ConvInteger", "MatMulInteger"):
        return 4  # int32 accumulators
    if op in ("QLinearConv", "QLinearMatMul", "QGemm"):
        scale = 7 if op == "QGemm" else 6
        if len(inputs) <= scale or not inputs[scale]:
            return 4  # QGemm without an output scale writes float
        zero = inputs[scale + 1] if len(inputs) > scale + 1 else ""
        return NARROW_BYTES.get(dtypes.get(zero, 2), BYTES_PER_VALUE)  # no zero point: uint8
    value = node.output[0]
    for _ in range(4):  # through a Relu or Clip that the quantized kernel fuses
        after = consumers.get(value, [])
        if after and all(c.op_type == "QuantizeLinear" for c in after):
            return max(_quantized_bytes(c, dtypes) for c in after)
        if len(after) != 1 or after[0].op_type not in ("Relu", "Clip"):
            return 4
        value = after[0].output[0]
    return 4


def _quantized_bytes(node: Any, dtypes: dict[str, int]) -> int:
    """Width of a QuantizeLinear's output: its zero point's type, else its output_dtype attribute, else uint8."""
    if len(node.input) > 2 and node.input[2] in dtypes:
        return NARROW_BYTES.get(dtypes[node.input[2]], 4)
    attrs = {a.name: a.i for a in node.attribute}
    return NARROW_BYTES.get(attrs.get("output_dtype", 2) or 2, 4)


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
        _check_graph_memory(path, model, shapes)  # the run below allocates every value the graph computes
        shapes.update(_measure(path, model, missing(), input_value, shape))


def _check_graph_memory(path: str | Path, model: Any, shapes: dict[str, Shape]) -> None:
    """Refuse a graph whose known values at batch 1 (its weights, input and every inferred output, 4 B each)
    exceed the memory available, before onnxruntime allocates them."""
    stored = {t.name for t in model.graph.initializer}
    sizes = {name: BYTES_PER_VALUE * math.prod(s) for name, s in shapes.items()}
    weights = sum(size for name, size in sizes.items() if name in stored)
    limits.check_memory(str(path), weights, sum(sizes.values()) - weights)


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
        raise EdgepruneError(
            f"{path}: cannot read the shape of '{names[0]}': onnxruntime failed ({first_line(e)})"
        ) from None
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values)}


def _onnx_layers(
    path: str | Path,
    graph: Any,
    shapes: dict[str, Shape],
    constants: set[str],
    params: set[str],
    dtypes: dict[str, int],
) -> tuple[list[LayerShape], set[str]]:
    """LayerShapes of a graph's counted nodes, each with the norm that follows it; also the synthetic norm constants.

    The second value names the initializers that are no parameters of the source model: the scale and
    bias that torch's GroupNorm export gives its InstanceNormalization (ones and zeros per group).
    """
    reader = _LayerReader(path, graph, shapes, params, dtypes)
    for node in graph.node:
        if node.op_type in CONV_OPS:
            layer = reader.conv(node)
        elif node.op_type in LAYER_OPS and _counted(node, constants):
            layer = reader.linear(node)
            if layer is None:
                continue  # a batched MatMul of two activations has no weights
        elif node.op_type == "BatchNormalization" and node.input[0] in reader.by_output:
            reader.attach(
                reader.by_output[node.input[0]], node.name or node.output[0], reader.dims(node.input[1], node)[0]
            )
            continue
        elif node.op_type in ("InstanceNormalization", "GroupNormalization"):
            reader.instance_norm(node)
            continue
        else:
            continue
        reader.by_output[node.output[0]] = len(reader.layers)
        reader.layers.append(layer)
    return reader.layers, reader.synthetic


class _LayerReader:
    """What ``_onnx_layers`` reads a graph with: shapes, producers and consumers, and the layers found so far."""

    def __init__(self, path: str | Path, graph: Any, shapes: dict[str, Shape], params: set[str],
                 dtypes: dict[str, int]) -> None:  # fmt: skip
        self.path, self.shapes, self.params, self.dtypes = path, shapes, params, dtypes
        self.layers: list[LayerShape] = []
        self.by_output: dict[str, int] = {}  # a layer's output tensor -> its index in layers
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.synthetic: set[str] = set()

    def dims(self, name: str, node: Any) -> Shape:
        """The static shape of tensor ``name``; one line naming the node when it is unknown or empty."""
        found = self.shapes.get(name)
        if not found or 0 in found:
            raise EdgepruneError(f"{self.path}: cannot read the shape of '{name}' (node {node.name or node.op_type})")
        return found

    def size(self, name: str) -> int:
        """Number of values of tensor ``name``, -1 when its shape is unknown."""
        return math.prod(self.shapes[name]) if name in self.shapes else -1

    def only(self, name: str, op: str) -> Any:
        """The single consumer of ``name`` when it is an ``op`` node, else None."""
        found = self.consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def affine(self, node: Any, c_out: int) -> bool:
        """True when a Mul -> Add pair after ``node`` scales and shifts by stored per-channel vectors."""
        mul = self.only(node.output[0], "Mul")
        add = mul and self.only(mul.output[0], "Add")
        if not add:
            return False
        vectors = [[n for n in op.input if n != src][:1] for op, src in ((mul, node.output[0]), (add, mul.output[0]))]
        return all(v and v[0] in self.params and self.size(v[0]) == c_out for v in vectors)

    def attach(self, i: int, norm: str, c: int) -> None:
        """Record ``norm`` as layer ``i``'s norm, unless it has one or its width differs."""
        if self.layers[i].bn is None and self.layers[i].c_out == c:
            self.layers[i] = replace(self.layers[i], bn=norm)

    def conv(self, node: Any) -> LayerShape:
        """A Conv, ConvTranspose or quantized conv node's LayerShape."""
        attrs = {a.name: a for a in node.attribute}
        w_at, b_at = LAYER_OPS.get(node.op_type, (1, None))
        has_bias = b_at is not None and len(node.input) > b_at and bool(node.input[b_at])
        widths = _widths(node, self.consumers, self.dtypes)
        w, x, out = self.dims(node.input[w_at], node), self.dims(node.input[0], node), self.dims(node.output[0], node)
        groups = attrs["group"].i if "group" in attrs else 1
        if node.op_type != "ConvTranspose":  # weight (C_out, C_in / g, k...)
            kind, c_in, c_out = "conv", w[1] * groups, w[0]
        else:  # weight (C_in, C_out / g, k...)
            kind, c_in, c_out = "conv_transpose", w[0], w[1] * groups
        kernel, spatial, in_spatial = math.prod(w[2:]), math.prod(out[2:]), math.prod(x[2:])
        name = node.name or node.output[0]
        return LayerShape(name, kind, c_in, c_out, groups, kernel, spatial, has_bias, in_spatial=in_spatial, **widths)

    def linear(self, node: Any) -> LayerShape | None:
        """A Gemm or MatMul node's LayerShape; None for one whose weight is no matrix (two activations)."""
        attrs = {a.name: a for a in node.attribute}
        w_at, b_at = LAYER_OPS.get(node.op_type, (1, None))
        has_bias = b_at is not None and len(node.input) > b_at and bool(node.input[b_at])
        widths = _widths(node, self.consumers, self.dtypes)
        w, out = self.dims(node.input[w_at], node), self.dims(node.output[0], node)
        if len(w) != 2:
            return None
        transposed = node.op_type in ("Gemm", "QGemm") and "transB" in attrs and attrs["transB"].i == 1
        c_in, c_out = (w[1], w[0]) if transposed else (w[0], w[1])
        name = node.name or node.output[0]
        return LayerShape(name, "linear", c_in, c_out, spatial=math.prod(out[1:-1]), bias=has_bias, **widths)

    def instance_norm(self, node: Any) -> None:
        """Attach an InstanceNormalization or GroupNormalization to its layer (torch's GroupNorm export too)."""
        name, by_output = node.name or node.output[0], self.by_output
        source = self.producer.get(node.input[0])
        if node.input[0] in by_output and len(node.input) > 2 and {node.input[1], node.input[2]} <= self.params:
            self.attach(by_output[node.input[0]], name, self.size(node.input[1]))  # the norm's own per-channel vectors
        elif node.op_type == "InstanceNormalization" and source is not None and source.op_type == "Reshape":
            self.synthetic.update(node.input[1:3])  # torch's GroupNorm: ones and zeros per group, no parameters
            back = self.only(node.output[0], "Reshape")
            c_out = self.layers[by_output[source.input[0]]].c_out if source.input[0] in by_output else -1
            if back is not None and source.input[0] in by_output and self.affine(back, c_out):
                self.attach(by_output[source.input[0]], name, c_out)
