"""What a command's model argument means: a model folder, or a reference (zoo name, ``package.module:factory``,
``path/file.py:factory``) with its arguments, turned into a model sized for its input (``resolve``).

Sizes from options and files meet the caps of ``edgeprune.limits``, and a model whose parameters, input and layer
outputs at batch 1 exceed the memory available is refused before any forward pass, computed from shapes before
anything is allocated (a zoo model is sized on the meta device before it is built).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune import limits
from edgeprune.errors import EdgepruneError
from edgeprune.io.files import check_zoo_kwargs, input_shape_of, load
from edgeprune.io.spec import DEFAULT_SIZE, default_shape, is_model_dir, show
from edgeprune.models.build import build_model
from edgeprune.models.registry import describe
from edgeprune.refs import BUILDER_ATTR, REFERENCE_HELP, Reference, builder_of, parse_reference


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
            raise EdgepruneError(f"--{option} must be from 1 to {high}, got {show(value)}")
    if ref.input_shape is not None:
        limits.check_input_shape(list(ref.input_shape), "the input shape")


def _reference_shape(ref: ModelRef, channels: int | None, model: nn.Module, is_code: bool) -> tuple[int, ...]:
    """The input shape of a built reference: ``input_shape``, else (channels, size, size), checked against the caps."""
    if ref.input_shape is not None:
        return tuple(int(d) for d in ref.input_shape)
    channels = channels or (default_shape(model)[0] if is_code else 3)
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
        shape = tuple(options.get("input_shape") or info.get("input_shape") or default_shape(model))
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
    "ModelRef",
    "Resolved",
    "activation_bytes",
    "check_model_memory",
    "classify",
    "is_folder_ref",
    "parameter_bytes",
    "resolve",
    "resolve_for_data",
    "resolve_model",
]
