"""model.json's schema: what it records of a model (builder, arguments, input shape, widths) and its validation.

Format ``edgeprune-model/2`` names the model's builder (see ``edgeprune.refs``), its keyword arguments, the
input shape, every conv, linear and norm layer's widths and the shape of any other parameter or buffer; format 1
(a zoo ``arch`` and conv/linear/BatchNorm widths) is read in format 2's shape. Validation checks exact keys,
types and bounds (groups dividing channels) before anything is built; every failure is one ``EdgepruneError``
line. Reading and writing model folders is ``edgeprune.io.files``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune import limits
from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file
from edgeprune.refs import FILE, builder_of, check_kwargs, parse_reference

FORMAT = "edgeprune-model/2"
FORMAT_V1 = "edgeprune-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_SIZE = 32
_STANDARD = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
MAX_WIDTH = 1 << 24  # any recorded width, and a LayerNorm's normalized size
MAX_DIMS = 8  # dimensions of a recorded tensor shape
# every input shape, from a file or an option, meets the same caps (edgeprune.limits)
MAX_INPUT_DIMS = limits.MAX_INPUT_DIMS  # (C,), (C, L), (C, H, W) or (C, D, H, W)
MAX_INPUT_ELEMENTS = limits.MAX_INPUT_ELEMENTS  # C x H x W of one input
# model.json keys by format: (required, optional)
_SPEC_KEYS = {
    FORMAT: (frozenset({"format", "builder", "kwargs", "input_shape", "layers"}), frozenset({"tensors", "sha256"})),
    FORMAT_V1: (frozenset({"format", "arch", "kwargs", "input_shape", "layers"}), frozenset()),
}
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
        "edgeprune.models.build.build_model / edgeprune.models.build.set_builder"
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
        input_shape = info.get("input_shape") or default_shape(model)
    if not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise EdgepruneError(f"input_shape must be positive integers (C, H, W), got {tuple(input_shape)}")
    spec["input_shape"] = [int(d) for d in input_shape]
    spec["layers"] = layer_widths(model)
    spec["tensors"] = other_tensors(model)
    return spec


def default_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, 32, 32), with C the first conv's input channels (3 when there is none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return (first.in_channels if first is not None else 3, DEFAULT_SIZE, DEFAULT_SIZE)


def show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages about untrusted content."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_count(value: object, low: int = 1, high: int = MAX_WIDTH) -> bool:
    """True for an int (not a bool) in ``[low, high]``: a recorded width, by default."""
    return limits.is_int(value, low, high)


def _is_shape(value: object, low: int = 0, max_dims: int = MAX_DIMS) -> bool:
    """True for a list of at most ``max_dims`` ints in ``[low, MAX_WIDTH]``."""
    return isinstance(value, list) and len(value) <= max_dims and all(is_count(d, low) for d in value)


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
            f"{path}: unknown key {show(extra[0])} (a {spec['format']} file has {sorted(required | optional)})"
        )
    legacy = spec["format"] == FORMAT_V1
    if legacy:
        if not isinstance(spec["arch"], str):
            raise EdgepruneError(f"{path}: 'arch' must be a zoo model name, got {show(spec['arch'])}")
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
        raise EdgepruneError(f"{hint}, got {show(text)}")
    try:
        ref = parse_reference(text)
    except EdgepruneError:
        raise EdgepruneError(f"{hint}, got {show(text)}") from None
    if text != ref.builder:
        raise EdgepruneError(f"{hint}, got {show(text)}")
    sha = spec.get("sha256")
    if ref.kind == FILE and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise EdgepruneError(f"{path}: a file: builder needs its 'sha256' (64 hex digits), got {show(sha)}")
    if ref.kind != FILE and "sha256" in spec:
        raise EdgepruneError(f"{path}: 'sha256' belongs to a file: builder only, not {show(text)}")


def _check_kwargs_field(kwargs: object, path: str | Path) -> dict[str, Any]:
    """``kwargs`` is a JSON object with string keys and finite JSON values."""
    if not isinstance(kwargs, dict):
        raise EdgepruneError(f"{path}: 'kwargs' must be a JSON object, got {show(kwargs)}")
    try:
        return check_kwargs(kwargs)
    except EdgepruneError as e:
        raise EdgepruneError(f"{path}: 'kwargs': {e}") from None


def _check_input_shape(shape: object, path: str | Path) -> None:
    """``input_shape`` is 1 to MAX_INPUT_DIMS positive ints, within the caps of every input (edgeprune.limits)."""
    if not (_is_shape(shape, 1, MAX_INPUT_DIMS) and shape):
        raise EdgepruneError(
            f"{path}: 'input_shape' must be a list of 1 to {MAX_INPUT_DIMS} positive integers such as [3, 32, 32], "
            f"got {show(shape)}"
        )
    problem = limits.input_shape_problem(shape)
    if problem is not None:  # [3, 9000, 9000] passes the element count but not --input-size's side
        raise EdgepruneError(f"{path}: 'input_shape' {show(shape)} {problem} (the caps of --input-size)")


def _check_layers(layers: object, legacy: bool, path: str | Path) -> None:
    """``layers`` maps module names to one known set of widths each, within bounds, groups dividing channels."""
    if not isinstance(layers, dict):
        raise EdgepruneError(f"{path}: 'layers' must be a JSON object, got {show(layers)}")
    kinds = (_CONV, _LINEAR, _NORM) if legacy else (_CONV, _LINEAR, _NORM, _GROUP_NORM, _LAYER_NORM)
    for name, widths in layers.items():
        problem = _layer_problem(widths, kinds)
        if problem:
            raise EdgepruneError(f"{path}: layer {show(name)}: {problem}")


def _layer_problem(widths: object, kinds: tuple[frozenset[str], ...]) -> str | None:
    """What is wrong with one layer's recorded widths, or None."""
    if not isinstance(widths, dict) or frozenset(widths) not in kinds:
        return f"expected one of {[sorted(k) for k in kinds]}, got {show(widths)}"
    if "normalized_shape" in widths:
        shape = widths["normalized_shape"]
        if not (_is_shape(shape, 1) and shape and math.prod(shape) <= MAX_WIDTH):
            return f"normalized_shape must be 1 to {MAX_DIMS} positive integers, got {show(shape)}"
        return None
    for key, value in widths.items():
        if not is_count(value):
            return f"{key} must be a positive integer (at most {MAX_WIDTH}), got {show(value)}"
    if "groups" in widths and (widths["in_channels"] % widths["groups"] or widths["out_channels"] % widths["groups"]):
        return f"{widths['groups']} groups do not divide {widths['in_channels']} -> {widths['out_channels']} channels"
    if "num_groups" in widths and widths["num_channels"] % widths["num_groups"]:
        return f"{widths['num_groups']} groups do not divide {widths['num_channels']} channels"
    return None


def _check_tensors_field(tensors: object, path: str | Path) -> None:
    """``tensors`` maps parameter/buffer names to shapes (lists of non-negative ints)."""
    if not isinstance(tensors, dict):
        raise EdgepruneError(f"{path}: 'tensors' must be a JSON object, got {show(tensors)}")
    for name, shape in tensors.items():
        if not _is_shape(shape):
            raise EdgepruneError(
                f"{path}: tensor {show(name)}: shape must be a list of at most {MAX_DIMS} integers in "
                f"[0, {MAX_WIDTH}], got {show(shape)}"
            )


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a model.json."""
    return (Path(path) / SPEC_FILE).is_file()


__all__ = [
    "DEFAULT_SIZE",
    "FORMAT",
    "FORMAT_V1",
    "MAX_DIMS",
    "MAX_INPUT_DIMS",
    "MAX_INPUT_ELEMENTS",
    "MAX_WIDTH",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "default_shape",
    "is_count",
    "is_model_dir",
    "layer_widths",
    "model_spec",
    "other_tensors",
    "show",
    "validate_spec",
]
