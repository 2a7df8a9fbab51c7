"""Model files that never unpickle: how to rebuild the architecture as JSON, the weights in safetensors.

``DIR/model.json`` (format ``edgeprune-model/2``) names the model's builder - ``zoo:NAME``,
``py:package.module:factory`` or ``file:/path/file.py:factory`` with the file's SHA-256 (see
``edgeprune.builders``) - its keyword arguments, the input shape, every conv (ConvTranspose and
1d/3d included), linear and norm layer's widths (BatchNorm/InstanceNorm ``num_features``,
GroupNorm ``num_groups``/``num_channels``, LayerNorm ``normalized_shape``) and the shape of any
other parameter or buffer; ``DIR/model.safetensors`` holds the weights and buffers. ``load`` calls
the builder, resizes those layers to the recorded widths and loads the weights strictly, so a
missing, truncated or mismatched file is a one-line error, never a pickle. Format 1 files (a zoo
``arch`` and conv/linear/BatchNorm widths) still load.

Nothing corrupt gets in: ``save`` records a checksum of every tensor (``tensors_sha256`` in the
safetensors metadata) and ``load`` verifies it. Before anything is built or allocated, ``load``
checks model.json against its format's schema (exact keys, types, bounds, groups dividing
channels) and every recorded width against the safetensors header (read on its own: its length
and each tensor's offsets against the file's size), and a zoo model's arguments against its
factory's signature; a zoo model is then built on the meta device, so memory is only taken for the
tensors the file holds. Weights of another dtype than the model's are refused unless
``allow_cast``. Every failure is one ``EdgepruneError`` line; loading writes nothing.

A ``py:``/``file:`` builder is code: ``load`` runs it only when the user vouched for what it resolves
to (the trust list records the file and its hash; naming it again with ``builder=``; ``trust_code=True``),
never importing it from the current folder or the model folder unless named now (see ``edgeprune.builders``).
A file the user edited after vouching is refused until they vouch again once (naming it, or
``allow_changed=True``); a ``file:`` builder whose file changed since saving loads once the user vouched
for its content, with a warning that it still builds the recorded architecture.

``resolve`` is the one rule for what a command's model argument means: a model folder, or a
reference (zoo name, ``package.module:factory``, ``path/file.py:factory``) with its arguments.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from edgeprune import limits
from edgeprune.builders import (
    BUILDER_ATTR,
    FILE,
    PY,
    REFERENCE_HELP,
    ZOO,
    CodeFile,
    Reference,
    build_model,
    builder_of,
    check_kwargs,
    check_trusted,
    locate,
    module_at,
    parse_reference,
    record_trust,
    trust_status,
)
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, save_safetensors, sha256_file, tensors_digest, write_json

FORMAT = "edgeprune-model/2"
FORMAT_V1 = "edgeprune-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_SIZE = 32
_STANDARD = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
CHECKSUM_KEY = "tensors_sha256"  # safetensors metadata: files.tensors_digest of every tensor
MAX_SPEC_BYTES = 16 << 20  # a model.json larger than this is refused unread
MAX_HEADER_BYTES = 64 << 20  # a safetensors header larger than this is refused unread
MAX_WIDTH = 1 << 24  # any recorded width, and a LayerNorm's normalized size
MAX_DIMS = 8  # dimensions of a recorded tensor shape
# every input shape, from a file or an option, meets the same caps (edgeprune.limits)
MAX_INPUT_DIMS = limits.MAX_INPUT_DIMS  # (C,), (C, L), (C, H, W) or (C, D, H, W)
MAX_INPUT_ELEMENTS = limits.MAX_INPUT_ELEMENTS  # C x H x W of one input
MAX_UNSTORED = 1 << 24  # elements of recorded custom tensors the weights file does not hold (non-persistent buffers)
# safetensors dtype -> (bytes per element, torch dtype name)
_DTYPES = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"), "U8": (1, "uint8"),
    "U16": (2, "uint16"), "U32": (4, "uint32"), "U64": (8, "uint64"), "BOOL": (1, "bool"), "C64": (8, "complex64"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"), "F8_E4M3FNUZ": (1, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (1, "float8_e5m2fnuz"),
}  # fmt: skip
# model.json keys by format: (required, optional)
_SPEC_KEYS = {
    FORMAT: (frozenset({"format", "builder", "kwargs", "input_shape", "layers"}), frozenset({"tensors", "sha256"})),
    FORMAT_V1: (frozenset({"format", "arch", "kwargs", "input_shape", "layers"}), frozenset()),
}
_DTYPE_NAMES = {getattr(torch, name): key for key, (_, name) in _DTYPES.items() if hasattr(torch, name)}
_CONV = frozenset({"in_channels", "out_channels", "groups"})
_LINEAR = frozenset({"in_features", "out_features"})
_NORM = frozenset({"num_features"})
_GROUP_NORM = frozenset({"num_groups", "num_channels"})
_LAYER_NORM = frozenset({"normalized_shape"})
_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def layer_widths(model: nn.Module, legacy: bool = False) -> dict[str, dict[str, Any]]:
    """Widths of every conv, linear and norm layer, by module name (``legacy``: format 1's conv/linear/BatchNorm)."""
    widths: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            widths[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) or (
            not legacy and isinstance(m, nn.modules.batchnorm._NormBase)
        ):
            widths[name] = {"num_features": m.num_features}
        elif legacy:
            continue
        elif isinstance(m, nn.GroupNorm):
            widths[name] = {"num_groups": m.num_groups, "num_channels": m.num_channels}
        elif isinstance(m, nn.LayerNorm):
            widths[name] = {"normalized_shape": list(m.normalized_shape)}
    return widths


def other_tensors(model: nn.Module) -> dict[str, list[int]]:
    """Shapes of the parameters and buffers that ``layer_widths`` does not describe (a custom module's own)."""
    shapes: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        known = isinstance(m, _LAYER_TYPES)
        tensors = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        for key, t in tensors:
            if t is not None and not (known and key in _STANDARD):
                shapes[f"{name}.{key}" if name else key] = list(t.shape)
    return shapes


def _missing_builder() -> EdgepruneError:
    return EdgepruneError(
        "this model has no known builder: pass builder='package.module:factory' or 'path/file.py:factory' (and "
        "kwargs={...}, input_shape=(C, H, W)) to edgeprune.save, or build it with "
        "edgeprune.builders.build_model / edgeprune.builders.set_builder"
    )


def model_spec(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    builder: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> dict:
    """The JSON description of ``model`` (possibly pruned): its builder, arguments, input shape and widths."""
    known = builder_of(model)
    if builder is None:
        if known is None:
            raise _missing_builder()
        ref, info = parse_reference(known["builder"]), known
    else:
        ref = parse_reference(builder)
        info = known if known is not None and parse_reference(known["builder"]) == ref else {}
    spec: dict[str, Any] = {"format": FORMAT, "builder": ref.builder}
    spec["kwargs"] = check_kwargs(kwargs if kwargs is not None else info.get("kwargs", {}))
    if ref.kind == FILE:
        sha = info.get("sha256")
        if sha is None:
            if not Path(ref.target).is_file():
                raise EdgepruneError(f"{ref.target}: no such file (builder {ref.short})")
            sha = sha256_file(ref.target)
        spec["sha256"] = sha
    if input_shape is None:
        input_shape = info.get("input_shape") or _default_shape(model)
    if not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise EdgepruneError(f"input_shape must be positive integers (C, H, W), got {tuple(input_shape)}")
    spec["input_shape"] = [int(d) for d in input_shape]
    spec["layers"] = layer_widths(model)
    spec["tensors"] = other_tensors(model)
    return spec


def _default_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, 32, 32), with C the first conv's input channels (3 when there is none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return (first.in_channels if first is not None else 3, DEFAULT_SIZE, DEFAULT_SIZE)


def save(
    model: nn.Module,
    directory: str | Path,
    input_shape: tuple[int, ...] | None = None,
    *,
    builder: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.json`` and ``model.safetensors`` for ``model`` into ``directory``.

    A model built from a reference (``edgeprune.create``, ``builders.build_model``, a loaded folder, or
    a pruned copy of one) knows its builder; any other needs ``builder`` (and its ``kwargs``). The input
    shape defaults to the one the model was built for, else (C, 32, 32). Naming ``builder`` here records it in
    the user's trust list, as naming it anywhere does.
    """
    directory = Path(directory)
    spec = validate_spec(model_spec(model, input_shape, builder, kwargs))  # never write what load would refuse
    if builder is not None:
        record_trust(parse_reference(spec["builder"]), spec.get("sha256"))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, CHECKSUM_KEY: tensors_digest(tensors)}
    # sorted metadata keys: identical runs write identical bytes (safetensors' own order changes call to call)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_safetensors(tensors, p, metadata))
    write_json(directory / SPEC_FILE, spec)
    return directory


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages about untrusted content."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _brief(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _is_count(value: object, low: int = 1, high: int = MAX_WIDTH) -> bool:
    """True for an int (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_shape(value: object, low: int = 0, max_dims: int = MAX_DIMS) -> bool:
    """True for a list of at most ``max_dims`` ints in ``[low, MAX_WIDTH]``."""
    return isinstance(value, list) and len(value) <= max_dims and all(_is_count(d, low) for d in value)


def _read_json(path: Path) -> object:
    """Parse a JSON file of at most MAX_SPEC_BYTES; a one-line error for anything else."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise EdgepruneError(f"{path}: {size} bytes, too large for a model.json (at most {MAX_SPEC_BYTES})")
        return json.loads(path.read_bytes())
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too-long integers
        raise EdgepruneError(f"{path}: not valid JSON ({_brief(e)})") from None


def read_spec(directory: str | Path) -> dict:
    """Read and validate ``model.json``; a format 1 file comes back in format 2's shape (``builder`` zoo:ARCH)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found (is '{directory}' a model folder written by edgeprune?)")
    return validate_spec(_read_json(path), path)


def validate_spec(spec: object, path: str | Path = SPEC_FILE) -> dict:
    """Check a parsed model.json against its format's schema (keys, types, bounds); format 1 comes back as 2."""
    if not isinstance(spec, dict) or not isinstance(spec.get("format"), str) or spec["format"] not in _SPEC_KEYS:
        raise EdgepruneError(f"{path}: not an {FORMAT} (or {FORMAT_V1}) file")
    spec, (required, optional) = dict(spec), _SPEC_KEYS[spec["format"]]
    missing, extra = sorted(required - set(spec)), sorted(set(spec) - required - optional, key=str)
    if missing:
        raise EdgepruneError(f"{path}: missing '{missing[0]}'")
    if extra:
        raise EdgepruneError(
            f"{path}: unknown key {_show(extra[0])} (a {spec['format']} file has {sorted(required | optional)})"
        )
    legacy = spec["format"] == FORMAT_V1
    if legacy:
        if not isinstance(spec["arch"], str):
            raise EdgepruneError(f"{path}: 'arch' must be a zoo model name, got {_show(spec['arch'])}")
        spec = {**spec, "builder": f"zoo:{spec['arch']}", "tensors": {}, "legacy": True}
    _check_builder_field(spec, path)
    spec["kwargs"] = _check_kwargs_field(spec["kwargs"], path)
    _check_input_shape(spec["input_shape"], path)
    _check_layers(spec["layers"], legacy, path)
    _check_tensors_field(spec.get("tensors", {}), path)
    return spec


def _check_builder_field(spec: dict, path: str | Path) -> None:
    """``builder`` is a canonical reference; a ``file:`` one comes with its ``sha256``, no other does."""
    text = spec["builder"]
    hint = f"{path}: 'builder' must be zoo:NAME, py:module:factory or file:/path.py:factory"
    if not isinstance(text, str) or not text or len(text) > 4096:
        raise EdgepruneError(f"{hint}, got {_show(text)}")
    try:
        ref = parse_reference(text)
    except EdgepruneError:
        raise EdgepruneError(f"{hint}, got {_show(text)}") from None
    if text != ref.builder:
        raise EdgepruneError(f"{hint}, got {_show(text)}")
    sha = spec.get("sha256")
    if ref.kind == FILE and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise EdgepruneError(f"{path}: a file: builder needs its 'sha256' (64 hex digits), got {_show(sha)}")
    if ref.kind != FILE and "sha256" in spec:
        raise EdgepruneError(f"{path}: 'sha256' belongs to a file: builder only, not {_show(text)}")


def _check_kwargs_field(kwargs: object, path: str | Path) -> dict[str, Any]:
    """``kwargs`` is a JSON object with string keys and finite JSON values."""
    if not isinstance(kwargs, dict):
        raise EdgepruneError(f"{path}: 'kwargs' must be a JSON object, got {_show(kwargs)}")
    try:
        return check_kwargs(kwargs)
    except EdgepruneError as e:
        raise EdgepruneError(f"{path}: 'kwargs': {e}") from None


def _check_input_shape(shape: object, path: str | Path) -> None:
    """``input_shape`` is 1 to MAX_INPUT_DIMS positive ints, within the caps of every input (edgeprune.limits)."""
    if not (_is_shape(shape, 1, MAX_INPUT_DIMS) and shape):
        raise EdgepruneError(
            f"{path}: 'input_shape' must be a list of 1 to {MAX_INPUT_DIMS} positive integers such as [3, 32, 32], "
            f"got {_show(shape)}"
        )
    problem = limits.input_shape_problem(shape)
    if problem is not None:  # [3, 9000, 9000] passes the element count but not --input-size's side
        raise EdgepruneError(f"{path}: 'input_shape' {_show(shape)} {problem} (the caps of --input-size)")


def _check_layers(layers: object, legacy: bool, path: str | Path) -> None:
    """``layers`` maps module names to one known set of widths each, within bounds, groups dividing channels."""
    if not isinstance(layers, dict):
        raise EdgepruneError(f"{path}: 'layers' must be a JSON object, got {_show(layers)}")
    kinds = (_CONV, _LINEAR, _NORM) if legacy else (_CONV, _LINEAR, _NORM, _GROUP_NORM, _LAYER_NORM)
    for name, widths in layers.items():
        problem = _layer_problem(widths, kinds)
        if problem:
            raise EdgepruneError(f"{path}: layer {_show(name)}: {problem}")


def _layer_problem(widths: object, kinds: tuple[frozenset[str], ...]) -> str | None:
    """What is wrong with one layer's recorded widths, or None."""
    if not isinstance(widths, dict) or frozenset(widths) not in kinds:
        return f"expected one of {[sorted(k) for k in kinds]}, got {_show(widths)}"
    if "normalized_shape" in widths:
        shape = widths["normalized_shape"]
        if not (_is_shape(shape, 1) and shape and math.prod(shape) <= MAX_WIDTH):
            return f"normalized_shape must be 1 to {MAX_DIMS} positive integers, got {_show(shape)}"
        return None
    for key, value in widths.items():
        if not _is_count(value):
            return f"{key} must be a positive integer (at most {MAX_WIDTH}), got {_show(value)}"
    if "groups" in widths and (widths["in_channels"] % widths["groups"] or widths["out_channels"] % widths["groups"]):
        return f"{widths['groups']} groups do not divide {widths['in_channels']} -> {widths['out_channels']} channels"
    if "num_groups" in widths and widths["num_channels"] % widths["num_groups"]:
        return f"{widths['num_groups']} groups do not divide {widths['num_channels']} channels"
    return None


def _check_tensors_field(tensors: object, path: str | Path) -> None:
    """``tensors`` maps parameter/buffer names to shapes (lists of non-negative ints)."""
    if not isinstance(tensors, dict):
        raise EdgepruneError(f"{path}: 'tensors' must be a JSON object, got {_show(tensors)}")
    for name, shape in tensors.items():
        if not _is_shape(shape):
            raise EdgepruneError(
                f"{path}: tensor {_show(name)}: shape must be a list of at most {MAX_DIMS} integers in "
                f"[0, {MAX_WIDTH}], got {_show(shape)}"
            )


# -- the weights file's header, read without reading any tensor --------------------------------------------------


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
        raise EdgepruneError(f"{path}: corrupt header (not valid JSON: {_brief(e)})") from None
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
            raise EdgepruneError(f"{path}: corrupt or truncated header (tensor {_show(name)}: {span})")
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
        return None, f"unsupported dtype {_show(dtype)}"
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_count(d, 0, 1 << 62) for d in shape)):
        return None, f"bad shape {_show(shape)}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o, 0, data_bytes) for o in offsets)):
        return None, f"data_offsets {_show(offsets)} outside the {data_bytes} data bytes"
    begin, end = offsets
    if end - begin != math.prod(shape) * _DTYPES[dtype][0]:
        return None, f"{dtype} {shape} takes {math.prod(shape) * _DTYPES[dtype][0]} bytes, data_offsets {offsets}"
    return TensorInfo(dtype, tuple(shape)), (begin, end)


def _join(module: str, key: str) -> str:
    """A state_dict key: ``module.key`` (just ``key`` for the root module)."""
    return f"{module}.{key}" if module else key


def check_against_header(spec: dict, header: WeightsHeader, where: str = "") -> None:
    """Every recorded width and tensor shape in a validated spec agrees with the weights header (before building)."""
    for name, widths in spec["layers"].items():
        problem = _header_problem(name, widths, header)
        if problem:
            raise EdgepruneError(f"{where}model.json layer {_show(name)} {problem} ({header.path.name} disagrees)")
    unstored = 0
    for name, shape in spec.get("tensors", {}).items():
        info = header.tensors.get(name)
        if info is None:
            unstored += math.prod(shape)
        elif list(info.shape) != shape:
            raise EdgepruneError(
                f"{where}model.json says tensor {_show(name)} is {shape}, {header.path.name} has {list(info.shape)}"
            )
    if unstored > MAX_UNSTORED:
        raise EdgepruneError(f"{where}model.json records {unstored} elements of tensors the weights file does not hold")
    if parse_reference(spec["builder"]).kind == ZOO:
        _check_input_channels(spec, where)


def _header_problem(name: str, w: dict[str, Any], header: WeightsHeader) -> str | None:
    """How layer ``name``'s recorded widths contradict the header's tensor shapes, or None."""

    def shape(key: str) -> tuple[int, ...] | None:
        info = header.tensors.get(_join(name, key))
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
                f"{where}model.json {what} says {_show(c)} input channels, the first conv takes {first['in_channels']}"
            )


def check_zoo_kwargs(name: str, kwargs: dict[str, Any], where: str = "") -> None:
    """Check a zoo model's recorded arguments against its factory's signature and types before building it."""
    from edgeprune.models.registry import _entry, create

    fn = _entry(name).fn
    params = {**inspect.signature(create).parameters, **inspect.signature(fn).parameters}
    params = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "name"}
    for key, value in kwargs.items():
        if key not in params:
            raise EdgepruneError(
                f"{where}zoo model '{name}' takes no argument {_show(key)} (it takes {sorted(params)})"
            )
        kind = _param_kind(params[key])
        if kind is int and not _is_count(value):
            raise EdgepruneError(
                f"{where}zoo model '{name}': {key} must be a positive integer (at most {MAX_WIDTH}), got {_show(value)}"
            )
        if kind is float and not _is_positive_number(value):
            raise EdgepruneError(f"{where}zoo model '{name}': {key} must be a positive number, got {_show(value)}")


def _param_kind(p: inspect.Parameter) -> type | None:
    """``int`` or ``float`` for a parameter annotated (or defaulting to) one, else None."""
    for kind in (int, float):
        if p.annotation in (kind, kind.__name__) or (p.annotation is p.empty and type(p.default) is kind):
            return kind
    return None


def _is_positive_number(value: object) -> bool:
    """True for a finite int or float above zero (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _planned(m: nn.Module, w: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes ``_resize`` gives layer ``m``'s own weight, bias and running statistics (those it has)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        c_in, c_out, groups = (int(w[k]) for k in ("in_channels", "out_channels", "groups"))
        if min(c_in, c_out, groups) < 1 or c_in % groups or c_out % groups:
            raise ValueError(f"{c_in} -> {c_out} channels in {groups} groups")
        k = tuple(m.kernel_size)
        weight = (c_in, c_out // groups, *k) if m.transposed else (c_out, c_in // groups, *k)
        shapes = {"weight": weight, "bias": (c_out,)}
    elif isinstance(m, nn.Linear):
        shapes = {"weight": (int(w["out_features"]), int(w["in_features"])), "bias": (int(w["out_features"]),)}
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        shapes = dict.fromkeys(("weight", "bias", "running_mean", "running_var"), (int(w["num_features"]),))
    elif isinstance(m, nn.GroupNorm):
        groups, channels = int(w["num_groups"]), int(w["num_channels"])
        if min(groups, channels) < 1 or channels % groups:
            raise ValueError(f"{channels} channels in {groups} groups")
        shapes = dict.fromkeys(("weight", "bias"), (channels,))
    elif isinstance(m, nn.LayerNorm):
        shapes = dict.fromkeys(("weight", "bias"), tuple(int(d) for d in w["normalized_shape"]))
    else:
        raise ValueError(f"a {type(m).__name__} cannot take layer widths")
    return {key: shape for key, shape in shapes.items() if isinstance(getattr(m, key, None), torch.Tensor)}


def _resize(m: nn.Module, w: dict[str, Any]) -> None:
    """Give layer ``m`` the recorded widths in place (fresh parameters of the new shapes, its own class kept)."""
    shapes = _planned(m, w)
    for key, value in w.items():  # in_channels, out_features, num_groups, normalized_shape, ...
        setattr(m, key, tuple(int(d) for d in value) if key == "normalized_shape" else int(value))
    for key, shape in shapes.items():
        old = getattr(m, key)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        setattr(m, key, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)
    if hasattr(m, "reset_parameters"):
        m.reset_parameters()


def _check_planned(model: nn.Module, layers: dict, current: dict, weights: WeightsHeader, where: str) -> None:
    """Every layer to resize gets exactly the shapes the weights header holds, so resizing allocates no more."""
    modules, stored = dict(model.named_modules()), set(model.state_dict())
    for name, widths in layers.items():
        if widths == current[name]:
            continue
        for key, shape in _planned(modules[name], widths).items():
            full = _join(name, key)
            info = weights.tensors.get(full)
            if full in stored and (info is None or info.shape != shape):
                have = "nothing" if info is None else list(info.shape)
                raise EdgepruneError(
                    f"{where}model.json layer {_show(name)} makes '{full}' {list(shape)}, "
                    f"{weights.path.name} has {have}"
                )


def _reshape_tensor(model: nn.Module, name: str, shape: list[int]) -> None:
    """Give a custom parameter or buffer the recorded shape (uninitialised; the weights file fills it)."""
    owner_name, _, key = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    old = getattr(owner, key)
    if not isinstance(old, torch.Tensor):
        raise KeyError(name)
    if list(old.shape) == list(shape):
        return
    new = torch.zeros(tuple(int(d) for d in shape), dtype=old.dtype, device=old.device)
    setattr(owner, key, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def build(
    spec: dict,
    *,
    trust_code: bool = False,
    allow_changed: bool = False,
    builder: str | None = None,
    where: str = "",
    weights: WeightsHeader | None = None,
    meta: bool = False,
) -> nn.Module:
    """Build the (possibly pruned) architecture a spec describes, with fresh weights; checks trust first.

    ``builder`` names the reference again now (vouching for it, or pointing at a moved file); ``where``
    prefixes messages (the folder). ``weights`` (the folder's validated safetensors header) must hold
    every resized layer's shapes before it is resized; ``meta`` builds a zoo model on the meta device
    (shapes only, no memory: ``load`` materializes it once the weights file agrees).
    """
    use, code, _ = _vouch(spec, trust_code=trust_code, allow_changed=allow_changed, builder=builder, where=where)
    return _build(spec, use, code, named=builder is not None, where=where, weights=weights, meta=meta)


def _build(
    spec: dict,
    use: Reference,
    code: CodeFile | None,
    *,
    named: bool,
    where: str,
    weights: WeightsHeader | None,
    meta: bool = False,
) -> nn.Module:
    """Build a vetted spec with ``use``, which resolved to ``code`` (see :func:`_vouch`); see :func:`build`."""
    on_meta = meta and use.kind == ZOO
    if use.kind == ZOO:
        check_zoo_kwargs(use.target, spec["kwargs"], where)
    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = build_model(
                use,
                spec["kwargs"],
                input_shape=tuple(spec["input_shape"]),
                code=code,
                remember=named,
            )
    except EdgepruneError as e:
        raise EdgepruneError(f"{where}{e}") from None
    except Exception as e:  # a zoo constructor given odd (but well-typed) arguments
        raise EdgepruneError(f"{where}building {use.builder} raised {_brief(e)}") from None
    _apply_widths(model, spec, use, where, weights)
    return model


def vouched(
    spec: dict,
    *,
    trust_code: bool = False,
    allow_changed: bool = False,
    builder: str | None = None,
    where: str = "",
    folder: str | Path | None = None,
) -> tuple[Reference, str | None]:
    """The reference to build a spec with and its file's SHA-256 now; refuses code the user has not vouched for."""
    use, code, _ = _vouch(
        spec, trust_code=trust_code, allow_changed=allow_changed, builder=builder, where=where, folder=folder
    )
    return use, code.sha256 if code is not None else None


def _vouch(
    spec: dict,
    *,
    trust_code: bool,
    allow_changed: bool,
    builder: str | None,
    where: str,
    folder: str | Path | None = None,
) -> tuple[Reference, CodeFile | None, str | None]:
    """The reference to build a spec with, what it resolves to, and a note when its file changed; or one line why not.

    Named now (``builder``), it is what the user vouches for (recorded once built); ``--model PATH/mod.py:fn``
    for a folder's ``py:mod:fn`` names that module at that file. Otherwise the trust list decides, on what the
    reference resolves to without the current folder and the model ``folder`` (``builders.check_trusted``).
    A ``file:`` builder whose file changed since saving is built once the user vouched for its content now
    (trust list, naming it, ``allow_changed``); the note says so, for ``load`` to report.
    """
    recorded = parse_reference(spec["builder"])
    named = parse_reference(builder) if builder is not None else None
    use, code = named or recorded, None
    if named is not None and named.kind == FILE and recorded.kind == PY and named.attr == recorded.attr:
        code = module_at(recorded, named.target)  # the folder's module, at the file the user points at
        use = recorded if code is not None else named
    if not use.is_code:
        return use, None, None
    code = code or locate(use, named=named is not None, folder=folder)
    if code is None and use.kind == FILE:
        raise EdgepruneError(
            f"{where}builder {use.builder}: {use.target} does not exist; if it moved, name its new place "
            f"(--model NEW/PATH.py:{use.attr}; Python: builder=...)"
        )
    if code is None and named is not None:
        raise EdgepruneError(f"{where}{use.short}: cannot import module '{use.target}' (is it installed or here?)")
    note = None
    if named is None:
        note = check_trusted(use, code, trust_code=trust_code, allow_changed=allow_changed, where=where, folder=folder)
    else:
        status, entry = trust_status(use, code)
        if status == "changed" and entry is not None:
            note = f"{code.path} changed since you vouched for it (sha256 {entry.get('sha256', '')[:16]}... then, "
            note += f"{str(code.sha256)[:16]}... now: vouched for now)"
    saved = spec.get("sha256")
    if use.kind == FILE and saved is not None and saved != code.sha256:
        if not (named is not None or allow_changed or trust_status(use, code)[0] == "trusted"):
            raise EdgepruneError(
                f"{where}{use.target} has changed since the model was saved (sha256 {saved} then, {code.sha256} "
                "now); if it still builds the same architecture, pass --allow-changed-code (allow_changed=True)"
            )
        note = f"{code.path} changed since the model was saved (sha256 {saved[:16]}... then, {code.sha256[:16]}... now)"
    return use, code, note


def _apply_widths(model: nn.Module, spec: dict, use: Reference, where: str, weights: WeightsHeader | None) -> None:
    """Resize the built model's layers and custom tensors to the spec's (checked against ``weights`` first)."""
    layers = spec["layers"]
    current = layer_widths(model, legacy=spec.get("legacy", False))
    if set(layers) != set(current):
        missing, extra = sorted(set(current) - set(layers)), sorted(set(layers) - set(current))
        raise EdgepruneError(
            f"{where}model.json layers do not match what {use.builder} builds (not in model.json: "
            f"{_show(missing[:3])}, not in the model: {_show(extra[:3])})"
        )
    try:
        if weights is not None:
            _check_planned(model, layers, current, weights, where)
        modules = dict(model.named_modules())
        for name, widths in layers.items():
            if widths != current[name]:
                _resize(modules[name], widths)
        for name, shape in spec.get("tensors", {}).items():
            _reshape_tensor(model, name, shape)
    except EdgepruneError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise EdgepruneError(f"{where}model.json has invalid layer widths ({_brief(e)})") from None


def load(
    directory: str | Path,
    *,
    trust_code: bool = False,
    allow_changed: bool = False,
    builder: str | None = None,
    allow_cast: bool = False,
) -> nn.Module:
    """Rebuild a saved model from ``DIR/model.json`` and ``DIR/model.safetensors``; no pickle, no write.

    A ``py:``/``file:`` builder runs only if the user vouched for what it resolves to: the file and hash
    in their trust list, ``builder`` names it now, or ``trust_code=True``; ``allow_changed=True`` vouches
    again for a file of theirs they edited. A ``file:`` builder whose file changed since saving loads
    once its content is vouched for (a warning says it still builds the recorded architecture). Both
    files are validated against each other before anything is built or allocated; weights of another
    dtype than the model's are refused unless ``allow_cast=True`` (then cast, with a warning); a
    checksum mismatch is refused.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgepruneError(f"{directory}: no such model folder")
    where = f"{directory}: "
    spec = read_spec(directory)
    # first: a folder naming code the user never vouched for is refused as such
    use, code, note = _vouch(
        spec, trust_code=trust_code, allow_changed=allow_changed, builder=builder, where=where, folder=directory
    )
    why = f" ({note})" if note else ""  # a build that fails after the code changed says so
    header = read_header(directory / WEIGHTS_FILE)
    check_against_header(spec, header, where)
    # the model holds what the weights file holds: a file larger than the memory is refused before any of it is read
    limits.check_memory(str(directory), header.data_bytes, None)
    options: dict[str, Any] = {"named": builder is not None, "where": where, "weights": header}
    try:
        model = _build(spec, use, code, **options, meta=True)
        expected = {k: v.dtype for k, v in model.state_dict().items()}
        casts = _check_state(model, header, allow_cast)
        model = _materialize(model, lambda: _build(spec, use, code, **options))
    except EdgepruneError as e:
        raise EdgepruneError(f"{e}{why}") from None
    tensors = _read_tensors(header)
    if casts:
        tensors.update({k: tensors[k].to(expected[k]) for k in casts})
        first = casts[0]
        warnings.warn(
            f"{header.path}: cast {len(casts)} tensor(s) to the model's dtypes ('{first}' "
            f"{header.tensors[first].torch_dtype} -> {str(expected[first]).removeprefix('torch.')})",
            stacklevel=2,
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        raise EdgepruneError(f"{header.path}: weights do not fit the model ({_brief(e)}){why}") from None
    if note:
        warnings.warn(f"{where}{note} and still builds the recorded architecture", stacklevel=2)
    return model.eval()


def _check_state(model: nn.Module, header: WeightsHeader, allow_cast: bool) -> list[str]:
    """The model's state_dict names and shapes are the header's; returns the names whose dtype differs."""
    expected, path = model.state_dict(), header.path
    missing, extra = sorted(set(expected) - set(header.tensors)), sorted(set(header.tensors) - set(expected))
    if missing or extra:
        raise EdgepruneError(
            f"{path}: weights do not match model.json (missing {_show(missing[:3])}, unexpected {_show(extra[:3])})"
        )
    casts = []
    for key, value in expected.items():
        info = header.tensors[key]
        if info.shape != tuple(value.shape):
            raise EdgepruneError(f"{path}: '{key}' has shape {info.shape}, model.json says {tuple(value.shape)}")
        if info.torch_dtype != str(value.dtype).removeprefix("torch."):
            casts.append(key)
    if casts and not allow_cast:
        key, dtype = casts[0], str(expected[casts[0]].dtype).removeprefix("torch.")
        raise EdgepruneError(
            f"{path}: '{key}' is {header.tensors[key].torch_dtype}, the model takes {dtype} ({len(casts)} tensor(s) "
            "differ; load(..., allow_cast=True) casts them)"
        )
    return casts


def _materialize(model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module:
    """A meta-device model with real (uninitialised) storage; ``rebuild()`` when it has non-persistent buffers."""
    if not any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return model
    if {name for name, _ in model.named_buffers()} - set(model.state_dict()):
        return rebuild()  # the weights file cannot fill those
    return model.to_empty(device="cpu")


def _read_tensors(header: WeightsHeader) -> dict[str, torch.Tensor]:
    """The tensors of a validated weights file, verified against the header and its checksum."""
    path = header.path
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise EdgepruneError(f"{path}: unreadable or truncated ({_brief(e)})") from None
    found = {k: (_DTYPE_NAMES.get(v.dtype), tuple(v.shape)) for k, v in tensors.items()}
    if found != {k: (v.dtype, v.shape) for k, v in header.tensors.items()}:
        raise EdgepruneError(f"{path}: its tensors do not match its header (corrupt, or changed while being read)")
    recorded = header.metadata.get(CHECKSUM_KEY)
    if recorded is not None and tensors_digest(tensors) != recorded:
        raise EdgepruneError(
            f"{path}: checksum mismatch (the file is corrupt: its tensors do not hash to the {CHECKSUM_KEY} "
            "recorded when it was saved)"
        )
    return tensors


def input_shape_of(directory: str | Path) -> tuple[int, ...]:
    """The input shape (C, H, W) recorded in a model folder."""
    return tuple(read_spec(directory)["input_shape"])


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a model.json."""
    return (Path(path) / SPEC_FILE).is_file()


# -- memory: what a model needs, computed from shapes before anything is allocated --------------------------------


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a shared tensor once); meta-device tensors count their size."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Bytes of the input and of every leaf module's output at batch 1, from one forward pass on the meta device
    (shapes only: nothing is allocated, the model's own tensors stay where they are); None when the model cannot
    run there (data-dependent code, an op without a meta kernel): the caller then goes on without the estimate."""
    floats = [t.dtype for t in model.parameters() if t.is_floating_point()]
    x = torch.empty((1, *input_shape), dtype=floats[0] if floats else torch.float32, device="meta")
    sizes = [x.numel() * x.element_size()]

    def hook(_module: nn.Module, _args: tuple, out: object) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    tensors = {n: torch.empty_like(t, device="meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
    was_training = model.training
    try:
        model.eval()  # a BatchNorm in training mode refuses batch 1 after a global pool
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.func.functional_call(model, tensors, (x,))
    except Exception:  # noqa: BLE001 - any failure only means no estimate; the real forward reports its own error
        return None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sum(sizes)


def check_model_memory(model: nn.Module, input_shape: tuple[int, ...], what: str, batch: int = 1) -> None:
    """Refuse a model whose parameters plus ``batch`` x (input + every layer's output) exceed the memory available
    now (``edgeprune.limits.check_memory``); outputs are estimated on the meta device."""
    limits.check_memory(what, parameter_bytes(model), activation_bytes(model, tuple(input_shape)), batch)


def _meta_build(parsed: Reference, kwargs: dict[str, Any], hints: dict[str, Any]) -> nn.Module | None:
    """A zoo model built on the meta device (shapes only, nothing allocated), the random stream left as it was (the
    real build after it gets the seed's weights); None for user code, which runs once, as named: a module it imports
    under the meta device would keep meta tensors for the real build (it is sized once built, before any forward
    pass), and None when the zoo model cannot be built there (the real build reports its own error)."""
    if parsed.is_code:
        return None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_model(parsed, dict(kwargs), hints=hints, remember=False)
    except Exception:  # noqa: BLE001 - the real build that follows raises the error, as one line
        return None


def _check_ref_sizes(ref: ModelRef) -> None:
    """The sizes a command's options give a reference within the caps of edgeprune.limits, before anything is built
    (a class count of a billion is 768 GB of one linear layer)."""
    caps = (("num-classes", ref.num_classes, limits.MAX_CLASSES), ("in-channels", ref.in_channels,
            limits.MAX_INPUT_CHANNELS), ("input-size", ref.input_size, limits.MAX_INPUT_SIZE))  # fmt: skip
    for option, value, high in caps:
        if value is not None and not limits.is_int(value, 1, high):
            raise EdgepruneError(f"--{option} must be from 1 to {high}, got {_show(value)}")
    if ref.input_shape is not None:
        limits.check_input_shape(list(ref.input_shape), "the input shape")


def _reference_shape(ref: ModelRef, channels: int | None, model: nn.Module, is_code: bool) -> tuple[int, ...]:
    """The input shape of a built reference: ``input_shape``, else (channels, size, size), checked against the caps."""
    if ref.input_shape is not None:
        return tuple(int(d) for d in ref.input_shape)
    channels = channels or (_default_shape(model)[0] if is_code else 3)
    size = ref.input_size or DEFAULT_SIZE
    return limits.check_input_shape((channels, size, size), "the input shape")


# -- what a command's model argument means --------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A model as a command names it: a folder or a reference, its arguments, and how the user vouches for code.

    ``num_classes``/``in_channels`` go to a zoo model, and to a factory that has such a parameter;
    ``width`` is the zoo's width multiplier (a factory gets it only if it takes ``width``); a built
    reference takes ``input_shape`` (C, H, W), else (channels, input_size, input_size) with size 32 and
    channels from ``in_channels`` or the first conv (a folder keeps its recorded shape); ``builder``
    names a folder's builder again (vouching for it); ``remember`` records a reference named here in
    the trust list; ``allow_cast`` lets a folder's weights of another dtype be cast (see :func:`load`).
    """

    ref: str
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_channels: int | None = None
    width: float | None = None
    input_size: int | None = None
    input_shape: tuple[int, ...] | None = None
    trust_code: bool = False
    allow_changed: bool = False
    builder: str | None = None
    remember: bool = True
    allow_cast: bool = False

    def with_data(self, num_classes: int, input_shape: tuple[int, ...]) -> ModelRef:
        """The same reference sized for a data set's classes and images (a folder keeps its own sizes)."""
        shape = tuple(int(d) for d in input_shape)
        return replace(self, num_classes=num_classes, in_channels=shape[0], input_shape=shape)


@dataclass
class Resolved:
    """A model ready to use: the module, the input shape (C, H, W) it takes, what was named, its folder if any."""

    model: nn.Module
    input_shape: tuple[int, ...]
    source: str
    folder: Path | None = None


def is_folder_ref(ref: str | Path | ModelRef) -> bool:
    """True when a model argument names a model folder (a folder holding model.json)."""
    return is_model_dir(ref.ref if isinstance(ref, ModelRef) else ref)


def classify(text: str | Path) -> Reference | None:
    """What a model argument names, without running any code: None for a model folder, else its reference.

    A one-line error for neither (a path that is no model folder, an .onnx file, an unknown zoo name, a
    malformed reference).
    """
    text = str(text)
    if is_model_dir(text):
        return None
    if text.lower().endswith(".onnx"):
        raise EdgepruneError(f"{text}: an .onnx file can be profiled and benched, not used here; give a model folder")
    if ":" not in text and text.endswith(".py"):
        raise EdgepruneError(f"'{text}': name the factory too, as {text}:FACTORY")
    if ":" not in text and (Path(text).exists() or "/" in text or "\\" in text):
        why = "no model.json" if Path(text).is_dir() else "no such folder" if not Path(text).exists() else "a file"
        raise EdgepruneError(f"{text}: not a model folder ({why}) and not a model reference ({REFERENCE_HELP})")
    ref = parse_reference(text)
    if not ref.is_code:
        from edgeprune.models import describe

        describe(ref.target)  # unknown model 'NAME'; choose from: ...
    return ref


def resolve_for_data(
    ref: str | ModelRef, num_classes: int, input_shape: tuple[int, ...], data_name: str = "the data set"
) -> Resolved:
    """A model for a data set: a folder as saved (it must take the data's images), or a reference built to fit.

    A reference is built with the data's classes and input channels (for a zoo model, or a factory
    with such parameters) and takes the data's image size.
    """
    ref = ref if isinstance(ref, ModelRef) else ModelRef(str(ref))
    shape = tuple(int(d) for d in input_shape)
    if is_folder_ref(ref):
        saved = input_shape_of(ref.ref)
        if saved != shape:
            raise EdgepruneError(
                f"{ref.ref} was built for {'x'.join(map(str, saved))} images, "
                f"the data set '{data_name}' has {'x'.join(map(str, shape))} images"
            )
        return resolve(ref)
    return resolve(ref.with_data(num_classes, shape))


def resolve(model: str | Path | ModelRef | nn.Module | Resolved, **options: Any) -> Resolved:
    """Turn a command's model argument into a model: a model folder (trust-checked) or a built reference.

    ``options`` are :class:`ModelRef` fields for a string. An ``nn.Module`` is taken as it is (its
    recorded input shape, else (C, 32, 32)). Sizes from options and files meet the caps of ``edgeprune.limits``,
    and a model whose parameters, input and layer outputs at batch 1 exceed the memory available is refused
    before any forward pass (a zoo model before it is built: it is sized on the meta device first).
    """
    if isinstance(model, Resolved):
        return model
    if isinstance(model, nn.Module):
        info = builder_of(model) or {}
        shape = tuple(options.get("input_shape") or info.get("input_shape") or _default_shape(model))
        return Resolved(model, shape, info.get("builder", type(model).__name__))
    ref = model if isinstance(model, ModelRef) else ModelRef(str(model), **options)
    text = ref.ref
    _check_ref_sizes(ref)
    parsed = classify(text)
    if parsed is None:
        if ref.model_args or ref.width is not None:
            raise EdgepruneError(f"{text}: a model folder keeps its own arguments (no --model-args or --width)")
        loaded = load(
            text,
            trust_code=ref.trust_code,
            allow_changed=ref.allow_changed,
            builder=ref.builder,
            allow_cast=ref.allow_cast,
        )
        shape = input_shape_of(text)
        check_model_memory(loaded, shape, text)  # before any forward pass at the recorded input shape
        return Resolved(loaded, shape, text, Path(text))
    if ref.builder is not None and parse_reference(ref.builder) != parsed:
        raise EdgepruneError(f"--model {ref.builder} names a model folder's builder; the model here is {text}")
    kwargs = dict(ref.model_args)
    channels = ref.in_channels or (ref.input_shape[0] if ref.input_shape else None)
    hints: dict[str, Any] = {"num_classes": ref.num_classes, "in_channels": channels}
    if parsed.is_code:
        if ref.width is not None:
            kwargs.setdefault("width", ref.width)
    else:
        hints["width"] = ref.width
    if not parsed.is_code:
        check_zoo_kwargs(parsed.target, kwargs)  # integers within MAX_WIDTH: torch's overflow errors run to pages
    probe = _meta_build(parsed, kwargs, hints)  # a zoo model is sized on the meta device: refused before allocating
    if probe is not None:
        check_model_memory(probe, _reference_shape(ref, channels, probe, parsed.is_code), text)
    built = build_model(parsed, kwargs, hints=hints, remember=ref.remember)
    shape = _reference_shape(ref, channels, built, parsed.is_code)
    if probe is None:
        check_model_memory(built, shape, text)  # its parameters are there; its forward pass is not yet
    getattr(built, BUILDER_ATTR)["input_shape"] = list(shape)
    return Resolved(built, shape, text)


def resolve_model(
    name_or_dir: str | Path | ModelRef, num_classes: int | None = None, in_channels: int | None = None, **options: Any
) -> nn.Module:
    """A model from a saved folder or a reference (zoo name, ``package.module:factory``, ``file.py:factory``)."""
    if isinstance(name_or_dir, ModelRef):
        return resolve(name_or_dir).model
    return resolve(name_or_dir, num_classes=num_classes, in_channels=in_channels, **options).model


__all__ = [
    "CHECKSUM_KEY",
    "ModelRef",
    "Resolved",
    "TensorInfo",
    "WeightsHeader",
    "atomic_write",
    "activation_bytes",
    "build",
    "check_against_header",
    "check_model_memory",
    "check_zoo_kwargs",
    "classify",
    "input_shape_of",
    "is_folder_ref",
    "is_model_dir",
    "layer_widths",
    "load",
    "model_spec",
    "parameter_bytes",
    "read_header",
    "read_spec",
    "resolve",
    "resolve_for_data",
    "resolve_model",
    "save",
    "validate_spec",
    "vouched",
    "write_json",
]
