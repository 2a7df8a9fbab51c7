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

A ``py:``/``file:`` builder is code: ``load`` runs it only when the user vouched for it (the trust
list, naming it again with ``builder=``, or ``trust_code=True``), and refuses a ``file:`` builder
whose file changed since saving unless ``allow_changed=True``.

``resolve`` is the one rule for what a command's model argument means: a model folder, or a
reference (zoo name, ``package.module:factory``, ``path/file.py:factory``) with its arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeprune.builders import (
    BUILDER_ATTR,
    FILE,
    REFERENCE_HELP,
    Reference,
    build_model,
    builder_of,
    check_kwargs,
    check_trusted,
    parse_reference,
    record_trust,
)
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, sha256_file, write_json

FORMAT = "edgeprune-model/2"
FORMAT_V1 = "edgeprune-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_SIZE = 32
_STANDARD = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
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
    spec = model_spec(model, input_shape, builder, kwargs)
    if builder is not None:
        record_trust(parse_reference(spec["builder"]), spec.get("sha256"))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    write_json(directory / SPEC_FILE, spec)
    return directory


def read_spec(directory: str | Path) -> dict:
    """Read and validate ``model.json``; a format 1 file comes back in format 2's shape (``builder`` zoo:ARCH)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found (is '{directory}' a model folder written by edgeprune?)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgepruneError(f"{path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, FORMAT_V1):
        raise EdgepruneError(f"{path}: not an {FORMAT} (or {FORMAT_V1}) file")
    legacy = spec["format"] == FORMAT_V1
    for key in ("arch" if legacy else "builder", "kwargs", "layers", "input_shape"):
        if key not in spec:
            raise EdgepruneError(f"{path}: missing '{key}'")
    if legacy:
        spec = {**spec, "builder": f"zoo:{spec['arch']}", "tensors": {}, "legacy": True}
    if not isinstance(spec["kwargs"], dict) or not isinstance(spec["layers"], dict):
        raise EdgepruneError(f"{path}: 'kwargs' and 'layers' must be JSON objects")
    shape = spec["input_shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise EdgepruneError(f"{path}: 'input_shape' must be a list of positive integers")
    if not isinstance(spec.get("tensors", {}), dict):
        raise EdgepruneError(f"{path}: 'tensors' must be a JSON object")
    ref = parse_reference(spec["builder"]) if isinstance(spec["builder"], str) else None
    if ref is None or spec["builder"] != ref.builder:
        raise EdgepruneError(f"{path}: 'builder' must be zoo:NAME, py:module:factory or file:/path.py:factory")
    if ref.kind == FILE and not isinstance(spec.get("sha256"), str):
        raise EdgepruneError(f"{path}: a file: builder needs its 'sha256'")
    return spec


def _resize(m: nn.Module, w: dict[str, Any]) -> None:
    """Give layer ``m`` the recorded widths in place (fresh parameters of the new shapes, its own class kept)."""

    def param(shape: tuple[int, ...], old: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)

    def per_channel(n: int, names: tuple[str, ...] = ("weight", "bias")) -> None:
        for key in names:
            old = getattr(m, key, None)
            if isinstance(old, nn.Parameter):
                setattr(m, key, param((n,), old))
        for key in ("running_mean", "running_var"):
            old = getattr(m, key, None)
            if isinstance(old, torch.Tensor):
                setattr(m, key, torch.empty(n, dtype=old.dtype, device=old.device))

    if isinstance(m, nn.modules.conv._ConvNd):
        c_in, c_out, groups = (int(w[k]) for k in ("in_channels", "out_channels", "groups"))
        if min(c_in, c_out, groups) < 1 or c_in % groups or c_out % groups:
            raise ValueError(f"{c_in} -> {c_out} channels in {groups} groups")
        m.in_channels, m.out_channels, m.groups = c_in, c_out, groups
        k = tuple(m.kernel_size)
        m.weight = param((c_in, c_out // groups, *k) if m.transposed else (c_out, c_in // groups, *k), m.weight)
        per_channel(c_out, ("bias",))
    elif isinstance(m, nn.Linear):
        m.in_features, m.out_features = int(w["in_features"]), int(w["out_features"])
        m.weight = param((m.out_features, m.in_features), m.weight)
        per_channel(m.out_features, ("bias",))
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        m.num_features = int(w["num_features"])
        per_channel(m.num_features)
    elif isinstance(m, nn.GroupNorm):
        groups, channels = int(w["num_groups"]), int(w["num_channels"])
        if min(groups, channels) < 1 or channels % groups:
            raise ValueError(f"{channels} channels in {groups} groups")
        m.num_groups, m.num_channels = groups, channels
        per_channel(channels)
    elif isinstance(m, nn.LayerNorm):
        shape = tuple(int(d) for d in w["normalized_shape"])
        m.normalized_shape = shape
        for key in ("weight", "bias"):
            old = getattr(m, key, None)
            if isinstance(old, nn.Parameter):
                setattr(m, key, param(shape, old))
    else:
        raise ValueError(f"a {type(m).__name__} cannot take layer widths")
    if hasattr(m, "reset_parameters"):
        m.reset_parameters()


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
) -> nn.Module:
    """Build the (possibly pruned) architecture a spec describes, with fresh weights; checks trust first.

    ``builder`` names the reference again now (vouching for it, or pointing at a moved file); ``where``
    prefixes messages (the folder).
    """
    recorded = parse_reference(spec["builder"])
    named = parse_reference(builder) if builder is not None else None
    use: Reference = named or recorded
    sha_now = None
    if use.kind == FILE:
        if not Path(use.target).is_file():
            raise EdgepruneError(
                f"{where}builder {use.builder}: {use.target} does not exist; if it moved, name its new place "
                f"(--model NEW/PATH.py:{use.attr}; Python: builder=...)"
            )
        sha_now = sha256_file(use.target)
        saved = spec.get("sha256")
        if saved is not None and saved != sha_now and not allow_changed:
            raise EdgepruneError(
                f"{where}{use.target} has changed since the model was saved (sha256 {saved} then, {sha_now} now); "
                "if it still builds the same architecture, pass --allow-changed-code (allow_changed=True)"
            )
    if named is None:
        check_trusted(use, sha_now, trust_code=trust_code, where=where)
    try:
        model = build_model(
            use, spec["kwargs"], input_shape=tuple(spec["input_shape"]), sha256=sha_now, remember=named is not None
        )
    except EdgepruneError as e:
        raise EdgepruneError(f"{where}{e}") from None
    layers = spec["layers"]
    current = layer_widths(model, legacy=spec.get("legacy", False))
    if set(layers) != set(current):
        missing, extra = sorted(set(current) - set(layers)), sorted(set(layers) - set(current))
        raise EdgepruneError(
            f"{where}model.json layers do not match what {use.builder} builds (not in model.json: {missing[:3]}, "
            f"not in the model: {extra[:3]})"
        )
    modules = dict(model.named_modules())
    try:
        for name, widths in layers.items():
            if widths != current[name]:
                _resize(modules[name], widths)
        for name, shape in spec.get("tensors", {}).items():
            _reshape_tensor(model, name, shape)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"{where}model.json has invalid layer widths ({type(e).__name__}: {e})") from None
    return model


def load(
    directory: str | Path,
    *,
    trust_code: bool = False,
    allow_changed: bool = False,
    builder: str | None = None,
) -> nn.Module:
    """Rebuild a saved model from ``DIR/model.json`` and ``DIR/model.safetensors``; no pickle.

    A ``py:``/``file:`` builder runs only if the user vouched for it: it is in their trust list,
    ``builder`` names it now, or ``trust_code=True``. A ``file:`` builder whose file changed since
    saving is refused unless ``allow_changed=True``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgepruneError(f"{directory}: no such model folder")
    spec = read_spec(directory)
    model = build(spec, trust_code=trust_code, allow_changed=allow_changed, builder=builder, where=f"{directory}: ")
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgepruneError(f"{path}: unreadable or truncated ({str(e).splitlines()[0]})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise EdgepruneError(f"{path}: weights do not match model.json (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise EdgepruneError(
                f"{path}: '{key}' has shape {tuple(value.shape)}, model.json says {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def input_shape_of(directory: str | Path) -> tuple[int, ...]:
    """The input shape (C, H, W) recorded in a model folder."""
    return tuple(read_spec(directory)["input_shape"])


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a model.json."""
    return (Path(path) / SPEC_FILE).is_file()


# -- what a command's model argument means --------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A model as a command names it: a folder or a reference, its arguments, and how the user vouches for code.

    ``num_classes``/``in_channels`` go to a zoo model, and to a factory that has such a parameter;
    ``width`` is the zoo's width multiplier (a factory gets it only if it takes ``width``); a built
    reference takes ``input_shape`` (C, H, W), else (channels, input_size, input_size) with size 32 and
    channels from ``in_channels`` or the first conv (a folder keeps its recorded shape); ``builder``
    names a folder's builder again (vouching for it); ``remember`` records a reference named here in
    the trust list.
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
    recorded input shape, else (C, 32, 32)).
    """
    if isinstance(model, Resolved):
        return model
    if isinstance(model, nn.Module):
        info = builder_of(model) or {}
        shape = tuple(options.get("input_shape") or info.get("input_shape") or _default_shape(model))
        return Resolved(model, shape, info.get("builder", type(model).__name__))
    ref = model if isinstance(model, ModelRef) else ModelRef(str(model), **options)
    text = ref.ref
    if ref.input_size is not None and ref.input_size < 1:
        raise EdgepruneError(f"--input-size must be positive, got {ref.input_size}")
    parsed = classify(text)
    if parsed is None:
        if ref.model_args or ref.width is not None:
            raise EdgepruneError(f"{text}: a model folder keeps its own arguments (no --model-args or --width)")
        loaded = load(text, trust_code=ref.trust_code, allow_changed=ref.allow_changed, builder=ref.builder)
        return Resolved(loaded, input_shape_of(text), text, Path(text))
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
    built = build_model(parsed, kwargs, hints=hints, remember=ref.remember)
    if ref.input_shape is not None:
        shape = tuple(int(d) for d in ref.input_shape)
    else:
        channels = channels or (_default_shape(built)[0] if parsed.is_code else 3)
        size = ref.input_size or DEFAULT_SIZE
        shape = (channels, size, size)
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
    "ModelRef",
    "Resolved",
    "atomic_write",
    "build",
    "classify",
    "input_shape_of",
    "is_folder_ref",
    "is_model_dir",
    "layer_widths",
    "load",
    "model_spec",
    "read_spec",
    "resolve",
    "resolve_for_data",
    "resolve_model",
    "save",
    "write_json",
]
