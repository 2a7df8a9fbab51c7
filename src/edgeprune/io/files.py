"""Model folders on disk: ``save`` writes model.json and model.safetensors, ``load`` rebuilds the model from them.

Nothing corrupt gets in: ``save`` records a checksum of every tensor (``tensors_sha256`` in the safetensors
metadata) and ``load`` verifies it. Before anything is built or allocated, ``load`` checks model.json against its
schema (``edgeprune.io.spec``), every recorded width against the safetensors header (``edgeprune.io.header``) and a
zoo model's arguments against its factory's signature; a zoo model is then built on the meta device, so memory is
only taken for the tensors the file holds. A ``py:``/``file:`` builder runs only when the user vouched for what it
resolves to (``edgeprune.refs``). Every failure is one ``EdgepruneError`` line; loading writes nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from edgeprune import limits
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import atomic_write, save_safetensors, tensors_digest, write_json
from edgeprune.io.header import DTYPE_NAMES, WeightsHeader, check_against_header, read_header, state_key
from edgeprune.io.spec import (
    FORMAT,
    FORMAT_V1,
    MAX_WIDTH,
    SPEC_FILE,
    WEIGHTS_FILE,
    is_count,
    layer_widths,
    model_spec,
    show,
    validate_spec,
)
from edgeprune.models.build import build_model
from edgeprune.models.registry import _entry, create
from edgeprune.refs import (
    FILE,
    PY,
    ZOO,
    CodeFile,
    Reference,
    check_trusted,
    locate,
    module_at,
    parse_reference,
    record_trust,
    trust_status,
)
from edgeprune.validate import is_number

CHECKSUM_KEY = "tensors_sha256"  # safetensors metadata: files.tensors_digest of every tensor
MAX_SPEC_BYTES = 16 << 20  # a model.json larger than this is refused unread


def save(
    model: nn.Module,
    directory: str | Path,
    input_shape: tuple[int, ...] | None = None,
    *,
    builder: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.json`` and ``model.safetensors`` for ``model`` into ``directory``.

    A model built from a reference (``edgeprune.create``, ``models.build.build_model``, a loaded folder, or
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
        raise EdgepruneError(f"{path}: not valid JSON ({first_line(e, with_type=True)})") from None


def read_spec(directory: str | Path) -> dict:
    """Read and validate ``model.json``; a format 1 file comes back in format 2's shape (``builder`` zoo:ARCH)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found (is '{directory}' a model folder written by edgeprune?)")
    return validate_spec(_read_json(path), path)


def input_shape_of(directory: str | Path) -> tuple[int, ...]:
    """The input shape (C, H, W) recorded in a model folder."""
    return tuple(read_spec(directory)["input_shape"])


def check_zoo_kwargs(name: str, kwargs: dict[str, Any], where: str = "") -> None:
    """Check a zoo model's recorded arguments against its factory's signature and types before building it."""
    fn = _entry(name).fn
    params = {**inspect.signature(create).parameters, **inspect.signature(fn).parameters}
    params = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "name"}
    for key, value in kwargs.items():
        if key not in params:
            raise EdgepruneError(f"{where}zoo model '{name}' takes no argument {show(key)} (it takes {sorted(params)})")
        kind = _param_kind(params[key])
        if kind is int and not is_count(value):
            raise EdgepruneError(
                f"{where}zoo model '{name}': {key} must be a positive integer (at most {MAX_WIDTH}), got {show(value)}"
            )
        if kind is float and not _is_positive_number(value):
            raise EdgepruneError(f"{where}zoo model '{name}': {key} must be a positive number, got {show(value)}")


def _param_kind(p: inspect.Parameter) -> type | None:
    """``int`` or ``float`` for a parameter annotated (or defaulting to) one, else None."""
    for kind in (int, float):
        if p.annotation in (kind, kind.__name__) or (p.annotation is p.empty and type(p.default) is kind):
            return kind
    return None


def _is_positive_number(value: object) -> bool:
    """True for a finite int or float above zero (not a bool)."""
    return is_number(value) and math.isfinite(value) and value > 0


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
            full = state_key(name, key)
            info = weights.tensors.get(full)
            if full in stored and (info is None or info.shape != shape):
                have = "nothing" if info is None else list(info.shape)
                raise EdgepruneError(
                    f"{where}model.json layer {show(name)} makes '{full}' {list(shape)}, {weights.path.name} has {have}"
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
        raise EdgepruneError(f"{where}building {use.builder} raised {first_line(e, with_type=True)}") from None
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
    reference resolves to without the current folder and the model ``folder`` (``refs.check_trusted``).
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
    current = layer_widths(model, legacy=spec["format"] == FORMAT_V1)  # format 1: conv/linear/BatchNorm
    if set(layers) != set(current):
        missing, extra = sorted(set(current) - set(layers)), sorted(set(layers) - set(current))
        raise EdgepruneError(
            f"{where}model.json layers do not match what {use.builder} builds (not in model.json: "
            f"{show(missing[:3])}, not in the model: {show(extra[:3])})"
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
        raise EdgepruneError(f"{where}model.json has invalid layer widths ({first_line(e, with_type=True)})") from None


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
        raise EdgepruneError(
            f"{header.path}: weights do not fit the model ({first_line(e, with_type=True)}){why}"
        ) from None
    if note:
        warnings.warn(f"{where}{note} and still builds the recorded architecture", stacklevel=2)
    return model.eval()


def _check_state(model: nn.Module, header: WeightsHeader, allow_cast: bool) -> list[str]:
    """The model's state_dict names and shapes are the header's; returns the names whose dtype differs."""
    expected, path = model.state_dict(), header.path
    missing, extra = sorted(set(expected) - set(header.tensors)), sorted(set(header.tensors) - set(expected))
    if missing or extra:
        raise EdgepruneError(
            f"{path}: weights do not match model.json (missing {show(missing[:3])}, unexpected {show(extra[:3])})"
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
        raise EdgepruneError(f"{path}: unreadable or truncated ({first_line(e, with_type=True)})") from None
    found = {k: (DTYPE_NAMES.get(v.dtype), tuple(v.shape)) for k, v in tensors.items()}
    if found != {k: (v.dtype, v.shape) for k, v in header.tensors.items()}:
        raise EdgepruneError(f"{path}: its tensors do not match its header (corrupt, or changed while being read)")
    recorded = header.metadata.get(CHECKSUM_KEY)
    if recorded is not None and tensors_digest(tensors) != recorded:
        raise EdgepruneError(
            f"{path}: checksum mismatch (the file is corrupt: its tensors do not hash to the {CHECKSUM_KEY} "
            "recorded when it was saved)"
        )
    return tensors


__all__ = [
    "CHECKSUM_KEY",
    "MAX_SPEC_BYTES",
    "build",
    "check_zoo_kwargs",
    "input_shape_of",
    "load",
    "read_spec",
    "save",
    "vouched",
]
