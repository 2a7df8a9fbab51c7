"""A safetensors file's header, read and validated on its own (its length, each tensor's dtype, shape and offsets
against the file's size) without reading any tensor, and checked against a model.json's recorded widths.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.io.spec import MAX_DIMS, is_count, show
from edgeprune.refs import ZOO, parse_reference

MAX_HEADER_BYTES = 64 << 20  # a safetensors header larger than this is refused unread
MAX_UNSTORED = 1 << 24  # elements of recorded custom tensors the weights file does not hold (non-persistent buffers)
# safetensors dtype -> (bytes per element, torch dtype name)
_DTYPES = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"), "U8": (1, "uint8"),
    "U16": (2, "uint16"), "U32": (4, "uint32"), "U64": (8, "uint64"), "BOOL": (1, "bool"), "C64": (8, "complex64"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"), "F8_E4M3FNUZ": (1, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (1, "float8_e5m2fnuz"),
}  # fmt: skip
DTYPE_NAMES = {getattr(torch, name): key for key, (_, name) in _DTYPES.items() if hasattr(torch, name)}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it: its dtype (safetensors' name) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> str:
        """The dtype as torch names it (``float32``)."""
        return _DTYPES[self.dtype][1]


@dataclass(frozen=True)
class WeightsHeader:
    """A safetensors file's validated header: its tensors by name, its metadata, its data size in bytes."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_bytes: int


def read_header(path: str | Path) -> WeightsHeader:
    """Read and validate a safetensors header against the file's size, reading no tensor data."""
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise EdgepruneError(f"{path}: truncated ({size} bytes, shorter than a safetensors header)")
            length = struct.unpack("<Q", prefix)[0]
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise EdgepruneError(
                    f"{path}: corrupt or truncated (header length {length} bytes, the file has {size - 8} after it; "
                    f"at most {MAX_HEADER_BYTES})"
                )
            raw = f.read(length)
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise EdgepruneError(f"{path}: corrupt header (not valid JSON: {first_line(e, with_type=True)})") from None
    return _check_header(path, header, size - 8 - length)


def _check_header(path: Path, header: object, data_bytes: int) -> WeightsHeader:
    """Every entry names a known dtype and a shape whose bytes fill its offsets, the whole data and no more."""
    if not isinstance(header, dict):
        raise EdgepruneError(f"{path}: corrupt header (not a JSON object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EdgepruneError(f"{path}: corrupt header ('__metadata__' must map strings to strings)")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info, span = _header_entry(entry, data_bytes)
        if info is None:
            raise EdgepruneError(f"{path}: corrupt or truncated header (tensor {show(name)}: {span})")
        tensors[name] = info
        spans.append(span)
    covered = 0
    for begin, end in sorted(spans):
        covered = end if begin == covered else -1
    if covered != data_bytes:
        raise EdgepruneError(
            f"{path}: corrupt or truncated (its tensors do not cover its {data_bytes} data bytes end to end)"
        )
    return WeightsHeader(path, tensors, metadata, data_bytes)


def _header_entry(entry: object, data_bytes: int) -> tuple[TensorInfo | None, Any]:
    """A header entry as (TensorInfo, (begin, end)), or (None, what is wrong with it)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        return None, "not {dtype, shape, data_offsets}"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES or not hasattr(torch, _DTYPES[dtype][1]):
        return None, f"unsupported dtype {show(dtype)}"
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(is_count(d, 0, 1 << 62) for d in shape)):
        return None, f"bad shape {show(shape)}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o, 0, data_bytes) for o in offsets)):
        return None, f"data_offsets {show(offsets)} outside the {data_bytes} data bytes"
    begin, end = offsets
    if end - begin != math.prod(shape) * _DTYPES[dtype][0]:
        return None, f"{dtype} {shape} takes {math.prod(shape) * _DTYPES[dtype][0]} bytes, data_offsets {offsets}"
    return TensorInfo(dtype, tuple(shape)), (begin, end)


def state_key(module: str, key: str) -> str:
    """A state_dict key: ``module.key`` (just ``key`` for the root module)."""
    return f"{module}.{key}" if module else key


def check_against_header(spec: dict, header: WeightsHeader, where: str = "") -> None:
    """Every recorded width and tensor shape in a validated spec agrees with the weights header (before building)."""
    for name, widths in spec["layers"].items():
        problem = _header_problem(name, widths, header)
        if problem:
            raise EdgepruneError(f"{where}model.json layer {show(name)} {problem} ({header.path.name} disagrees)")
    unstored = 0
    for name, shape in spec.get("tensors", {}).items():
        info = header.tensors.get(name)
        if info is None:
            unstored += math.prod(shape)
        elif list(info.shape) != shape:
            raise EdgepruneError(
                f"{where}model.json says tensor {show(name)} is {shape}, {header.path.name} has {list(info.shape)}"
            )
    if unstored > MAX_UNSTORED:
        raise EdgepruneError(f"{where}model.json records {unstored} elements of tensors the weights file does not hold")
    if parse_reference(spec["builder"]).kind == ZOO:
        _check_input_channels(spec, where)


def _header_problem(name: str, w: dict[str, Any], header: WeightsHeader) -> str | None:
    """How layer ``name``'s recorded widths contradict the header's tensor shapes, or None."""

    def shape(key: str) -> tuple[int, ...] | None:
        info = header.tensors.get(state_key(name, key))
        return None if info is None else info.shape

    if "in_channels" in w:
        c_in, c_out, groups = w["in_channels"], w["out_channels"], w["groups"]
        weight = shape("weight")
        if weight is None or weight[:2] not in ((c_out, c_in // groups), (c_in, c_out // groups)):
            return f"has {c_in} -> {c_out} channels in {groups} groups, its weight is {_shape_text(weight)}"
        wanted = {"bias": (c_out,)}
    elif "in_features" in w:
        weight = shape("weight")
        if weight != (w["out_features"], w["in_features"]):
            return f"has {w['in_features']} -> {w['out_features']} features, its weight is {_shape_text(weight)}"
        wanted = {"bias": (w["out_features"],)}
    elif "num_features" in w:
        wanted = dict.fromkeys(("weight", "bias", "running_mean", "running_var"), (w["num_features"],))
    elif "num_channels" in w:
        wanted = dict.fromkeys(("weight", "bias"), (w["num_channels"],))
    else:
        wanted = dict.fromkeys(("weight", "bias"), tuple(w["normalized_shape"]))
    for key, want in wanted.items():
        got = shape(key)
        if got is not None and got != want:
            return f"has width {list(want)}, its {key} is {_shape_text(got)}"
    return None


def _shape_text(shape: tuple[int, ...] | None) -> str:
    """A header shape for a message: ``[4, 3, 3, 3]``, or ``missing``."""
    return "missing" if shape is None else str(list(shape))


def _check_input_channels(spec: dict, where: str) -> None:
    """A zoo model's first conv takes the recorded input's channels (and its ``in_channels`` argument's)."""
    first = next((w for w in spec["layers"].values() if "in_channels" in w), None)
    if first is None:
        return
    channels = [("input_shape", spec["input_shape"][0])]
    if "in_channels" in spec["kwargs"]:
        channels.append(("kwargs in_channels", spec["kwargs"]["in_channels"]))
    for what, c in channels:
        if c != first["in_channels"]:
            raise EdgepruneError(
                f"{where}model.json {what} says {show(c)} input channels, the first conv takes {first['in_channels']}"
            )


__all__ = [
    "DTYPE_NAMES",
    "MAX_HEADER_BYTES",
    "MAX_UNSTORED",
    "TensorInfo",
    "WeightsHeader",
    "check_against_header",
    "read_header",
    "state_key",
]
