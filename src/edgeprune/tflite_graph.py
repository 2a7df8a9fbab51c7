"""Complexity of a LiteRT (.tflite) file, counted from its flatbuffer with the SPEC formulas.

``tflite_profile`` reads the CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED operators of the first (main) subgraph
(a file with more, whose other subgraphs run only through control flow, is profiled with a warning saying so)
and turns them into ``LayerShape`` rows, as ``edgeprune.onnx_graph`` does for an .onnx file:

- CONV_2D: filter ``[C_out, k_h, k_w, C_in / g]``, output ``[1, H, W, C_out]``; ``g`` is the input's channels over
  the filter's;
- DEPTHWISE_CONV_2D: filter ``[1, k_h, k_w, C_out]``, ``g = C_in`` (``C_out = C_in x multiplier``);
- FULLY_CONNECTED: weights ``[C_out, C_in]``, one output position per row of the output at batch 1.

A bias is the operator's third input when it is present and not all zeros (the converter gives a bias-free
conv a zero bias). A BatchNorm folded into a conv by the converter counts
as that conv's bias (C_out values), as for ONNX. A weight stored as int8 (or reached through a DEQUANTIZE of an
int8 or float16 tensor) counts at its stored width. The flatbuffer is read with the schema reader that
``ai-edge-litert`` ships (the ``litert`` extra), imported only when a file is profiled.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from edgeprune.complexity import BYTES_PER_VALUE, LayerShape, Profile
from edgeprune.errors import EdgepruneError

# TensorType codes of the schema -> bytes per value (FLOAT32 0, FLOAT16 1, INT32 2, UINT8 3, INT64 4, INT8 9, ...)
TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 7: 2, 9: 1, 10: 8, 16: 8, 17: 2}
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, DEQUANTIZE = 3, 4, 9, 6
MAX_TFLITE_BYTES = 4 << 30  # flatbuffers address 2 GiB; larger files keep weights outside and are refused


def _schema() -> Any:
    """The LiteRT flatbuffer schema reader, or a one-line error naming the extra."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise EdgepruneError(
            "profiling a .tflite file needs the litert extra: pip install 'edgeprune[litert]'"
        ) from None
    return schema


def is_tflite_path(source: object) -> bool:
    """True for a path (or str) naming a .tflite file."""
    return isinstance(source, str | Path) and str(source).lower().endswith(".tflite")


def tflite_profile(path: str | Path) -> Profile:
    """Complexity profile of a .tflite file: its Conv2D, DepthwiseConv2D and FullyConnected layers."""
    schema = _schema()
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"{path}: no such file")
    if path.stat().st_size > MAX_TFLITE_BYTES:
        raise EdgepruneError(f"{path}: over {MAX_TFLITE_BYTES >> 30} GiB; not a .tflite file edgeprune reads")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise EdgepruneError(f"{path}: not a LiteRT (.tflite) flatbuffer (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(buf, 0)
        if model.SubgraphsLength() < 1:
            raise EdgepruneError(f"{path}: has no subgraph")
        if model.SubgraphsLength() > 1:  # others run only through control flow (WHILE, IF, CALL) from the main one
            warnings.warn(f"{path}: {model.SubgraphsLength()} subgraphs; only the main one (0) is counted: layers "
                          "inside control-flow bodies are not", stacklevel=2)  # fmt: skip
        return _profile(path, model, model.Subgraphs(0))
    except EdgepruneError:
        raise
    except Exception as e:  # a truncated or corrupt flatbuffer raises from the generated reader
        raise EdgepruneError(f"{path}: not a readable .tflite file ({type(e).__name__})") from None


def _profile(path: Path, model: Any, graph: Any) -> Profile:
    """The layers of one subgraph, the input's shape (no batch dim) and the weights outside the layers."""
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    shapes = [tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else () for t in tensors]
    stored = {i for i, t in enumerate(tensors) if _has_data(model, t)}
    dequantized = {}  # a DEQUANTIZE's output -> its stored input
    layers: list[LayerShape] = []
    used: set[int] = set()
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = _builtin(model.OperatorCodes(op.OpcodeIndex()))
        ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
        if code == DEQUANTIZE and ins and ins[0] in stored:
            dequantized[outs[0]] = ins[0]
            stored.add(outs[0])
        elif code in (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED):
            used.update(dequantized.get(i, i) for i in ins[1:] if i >= 0)
            if len(ins) > 2 and ins[2] >= 0 and _all_zero(model, tensors[ins[2]]):
                ins[2] = -1  # a zero bias the converter added to a bias-free layer
            layer = _layer(code, ins, outs, shapes, stored)
            if layer is None:
                raise EdgepruneError(f"{path}: operator {k} has a weight or shape edgeprune cannot read")
            weight = dequantized.get(ins[1], ins[1])
            bytes_ = TYPE_BYTES.get(tensors[weight].Type(), BYTES_PER_VALUE)
            layers.append(LayerShape(name=f"{_name(tensors[outs[0]]) or f'op{k}'}", weight_bytes=bytes_, **layer))
    inputs = [int(i) for i in graph.InputsAsNumpy()] if graph.InputsLength() else []
    if len(inputs) != 1:
        raise EdgepruneError(f"{path}: has {len(inputs)} inputs; only single-input models can be profiled")
    weights = sum(math.prod(shapes[i]) for i in stored - used - set(dequantized) if tensors[i].Type() in (0, 1, 3, 9))
    return Profile(layers, shapes[inputs[0]][1:], other_params=weights)


def _layer(code: int, ins: list[int], outs: list[int], shapes: list[tuple], stored: set[int]) -> dict | None:
    """The LayerShape fields of one operator, None when its weight or shapes are not static."""
    if len(ins) < 2 or not outs or ins[1] not in stored:
        return None
    x, w, y = shapes[ins[0]], shapes[ins[1]], shapes[outs[0]]
    bias = len(ins) > 2 and ins[2] >= 0
    if code == FULLY_CONNECTED:
        if len(w) != 2 or not y:
            return None
        rows = math.prod(y[:-1]) if len(y) > 1 else 1
        return {"kind": "linear", "c_in": w[1], "c_out": w[0], "spatial": max(rows, 1), "bias": bias}
    if len(w) != 4 or len(x) != 4 or len(y) != 4:
        return None
    spatial = y[1] * y[2]
    if code == DEPTHWISE_CONV_2D:
        c_in = x[3]
        return {"kind": "conv", "c_in": c_in, "c_out": w[3], "groups": c_in, "kernel": w[1] * w[2],
                "spatial": spatial, "bias": bias}  # fmt: skip
    groups = x[3] // w[3] if w[3] and x[3] % w[3] == 0 else 1
    return {"kind": "conv", "c_in": x[3], "c_out": w[0], "groups": groups, "kernel": w[1] * w[2],
            "spatial": spatial, "bias": bias}  # fmt: skip


def _has_data(model: Any, tensor: Any) -> bool:
    """Whether a tensor is stored in the file (a weight or a constant), in the flatbuffer or after it."""
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 or buffer.Size() > 0


def _all_zero(model: Any, tensor: Any) -> bool:
    """Whether a tensor stored in the flatbuffer holds only zero bytes (a bias the converter made up)."""
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 and not buffer.DataAsNumpy().any()


def _builtin(opcode: Any) -> int:
    """An operator code's builtin number (the deprecated byte field holds it for codes under 127)."""
    return max(int(opcode.BuiltinCode()), int(opcode.DeprecatedBuiltinCode()))


def _name(tensor: Any) -> str:
    """A layer's name from its output tensor's: litert-torch's ``Net/torch...Conv2d_a;1`` gives ``a``."""
    name = tensor.Name()
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")
    path = max(name.split(";"), key=lambda part: part.count("/"))
    pieces = [p.rpartition(".")[2].partition("_")[2] for p in path.split("/")[1:]]
    return ".".join(pieces) if pieces and all(pieces) else name
