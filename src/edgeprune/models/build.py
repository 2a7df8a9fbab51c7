"""Building a model from a reference: a zoo model by name, or the user's ``py:``/``file:`` factory, imported or run.

A built model carries ``model.edgeprune_builder`` (see ``edgeprune.refs``), so it can be saved and rebuilt.
Naming a code reference to build a model is vouching for it: the file it resolved to and that file's hash go
into the user's trust list.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import sha256_file
from edgeprune.models.registry import create
from edgeprune.refs import (
    BUILDER_ATTR,
    FILE,
    PY,
    CodeFile,
    Reference,
    check_kwargs,
    import_scope,
    locate,
    missing_error,
    origin_of,
    parse_reference,
    record_trust,
)


def _import_module(ref: Reference, code: CodeFile) -> types.ModuleType:
    """Import a ``py:`` module, or run a ``file:`` (the bytes hashed are the bytes run), cached per hash."""
    if ref.kind == PY:
        try:
            with import_scope(code.first, code.hide):
                module = importlib.import_module(ref.target)
        except ModuleNotFoundError as e:
            if e.name and (ref.target == e.name or ref.target.startswith(e.name + ".")):
                raise missing_error(ref) from None
            raise EdgepruneError(
                f"{ref.short}: importing '{ref.target}' raised {first_line(e, with_type=True)}"
            ) from None
        except KeyboardInterrupt:  # Ctrl-C: the user stops the command (the CLI says "interrupted")
            raise
        except BaseException as e:  # SystemExit and any BaseException subclass the user's code raises
            raise EdgepruneError(
                f"{ref.short}: importing '{ref.target}' raised {first_line(e, with_type=True)}"
            ) from None
        found = origin_of(None, module)
        if code.sha256 is not None and found != code.path:  # imported earlier in this process from elsewhere
            raise EdgepruneError(
                f"{ref.short}: module '{ref.target}' is already imported from {found}, not {code.path}"
            )
        return module
    path = Path(ref.target)
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise missing_error(ref) from None
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
    digest = hashlib.sha256(source).hexdigest()
    if code.sha256 is not None and digest != code.sha256:
        raise EdgepruneError(f"{path}: changed while it was being read; run the command again")
    name = "edgeprune_file_" + re.sub(r"\W", "_", path.stem) + "_" + digest[:16]
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        with import_scope(code.first, code.hide):
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own file, vouched for
    except KeyboardInterrupt:
        del sys.modules[name]
        raise
    except BaseException as e:
        del sys.modules[name]
        raise EdgepruneError(f"{path}: running it raised {first_line(e, with_type=True)}") from None
    return module


def load_factory(
    ref: str | Reference, sha256: str | None = None, *, code: CodeFile | None = None
) -> Callable[..., Any]:
    """The callable a ``py:``/``file:`` reference names (imports or runs the user's code).

    ``code``: where it resolved to (see :func:`locate`); by default it is looked up as a reference the user
    names now. ``sha256`` pins a ``file:`` reference to that content.
    """
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    if not ref.is_code:
        raise EdgepruneError(f"'{ref.short}' is a zoo model, not a factory")
    if code is None:
        code = locate(ref)
        if code is None:
            raise missing_error(ref)
    if sha256 is not None and ref.kind == FILE and code.sha256 != sha256:
        code = CodeFile(code.path, sha256, code.first, code.hide)  # _import_module refuses other bytes
    obj: Any = _import_module(ref, code)
    where = ref.target if ref.kind == PY else Path(ref.target).name
    try:
        for part in ref.attr.split("."):
            if not hasattr(obj, part):
                raise EdgepruneError(f"{ref.short}: '{where}' has no attribute '{ref.attr}'")
            obj = getattr(obj, part)
    except (EdgepruneError, KeyboardInterrupt):
        raise
    except BaseException as e:  # a module __getattr__ or a descriptor of the user's raised
        raise EdgepruneError(f"{ref.short}: getting '{ref.attr}' raised {first_line(e, with_type=True)}") from None
    if isinstance(obj, nn.Module) or not callable(obj):
        what = "an nn.Module instance" if isinstance(obj, nn.Module) else f"a {type(obj).__name__}"
        raise EdgepruneError(f"{ref.short}: '{ref.attr}' is {what}; name a function or class that returns a model")
    return obj


def factory_parameters(factory: Callable[..., Any]) -> tuple[set[str], bool] | None:
    """The keyword parameter names of ``factory`` and whether it takes ``**kwargs``; None when unknown."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _check_signature(ref: Reference, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise EdgepruneError(f"{ref.short} does not accept these arguments ({e}); its signature is {sig}") from None


def build_model(
    ref: str | Reference,
    kwargs: dict[str, Any] | None = None,
    *,
    hints: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    sha256: str | None = None,
    remember: bool = True,
    code: CodeFile | None = None,
) -> nn.Module:
    """Build a model from a reference with keyword arguments; it carries ``edgeprune_builder`` for saving.

    ``hints`` (``num_classes``, ``in_channels``, ``width``) go to a zoo model, and to a factory only
    when it has a parameter of that name that ``kwargs`` leaves out. ``sha256`` pins a ``file:``
    reference to that content. ``code`` is where the reference resolved to (a model folder's vetted
    builder); without it, the reference is one the user names now (the current folder comes first for a
    ``py:`` module). ``remember`` records a ``py:``/``file:`` reference in the user's trust list, with the
    file it resolved to and that file's hash: naming it is vouching for it.
    """
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    kwargs = check_kwargs(kwargs)
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    if not ref.is_code:
        merged = {**hints, **kwargs}
        try:
            model = create(ref.target, **merged)
        except TypeError as e:
            raise EdgepruneError(f"zoo model '{ref.target}' does not accept these arguments ({e})") from None
    else:
        if code is None:
            code = locate(ref)
            if code is None:
                raise missing_error(ref)
        if ref.kind == FILE and sha256 is not None and code.sha256 != sha256:
            raise EdgepruneError(f"{ref.target}: changed (sha256 {sha256[:16]}... expected, {code.sha256[:16]}... now)")
        factory = load_factory(ref, code=code)
        params = factory_parameters(factory)
        for key, value in hints.items():
            if key not in kwargs and params is not None and key in params[0]:
                kwargs[key] = value
        _check_signature(ref, factory, kwargs)
        try:
            with import_scope(code.first, code.hide):  # imports inside the factory resolve as the module's did
                model = factory(**kwargs)
        except KeyboardInterrupt:  # Ctrl-C: the user stops the command (the CLI says "interrupted", exits 130)
            raise
        except BaseException as e:  # SystemExit, GeneratorExit, a user's BaseException subclass: one line
            raise EdgepruneError(f"{ref.short} raised {first_line(e, with_type=True)}") from None
        if not isinstance(model, nn.Module):
            raise EdgepruneError(f"{ref.short} returned {type(model).__name__}, not a torch.nn.Module")
        info: dict[str, Any] = {"builder": ref.builder, "kwargs": kwargs}
        if ref.kind == FILE:
            info["sha256"] = code.sha256
        setattr(model, BUILDER_ATTR, info)
        if remember:
            record_trust(ref, code=code)
    if input_shape is not None:
        getattr(model, BUILDER_ATTR)["input_shape"] = [int(d) for d in input_shape]
    return model


def set_builder(
    model: nn.Module,
    ref: str | Reference,
    kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    remember: bool = True,
) -> nn.Module:
    """Record on ``model`` that ``ref(**kwargs)`` builds its architecture, so it can be saved and benched.

    ``remember`` records the reference in the user's trust list: naming it is vouching for it.
    """
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    info: dict[str, Any] = {"builder": ref.builder, "kwargs": check_kwargs(kwargs)}
    if ref.kind == FILE:
        if not Path(ref.target).is_file():
            raise EdgepruneError(f"{ref.target}: no such file (model reference {ref.short})")
        info["sha256"] = sha256_file(ref.target)
    if input_shape is not None:
        info["input_shape"] = [int(d) for d in input_shape]
    setattr(model, BUILDER_ATTR, info)
    if remember:
        record_trust(ref, info.get("sha256"))
    return model


__all__ = ["build_model", "factory_parameters", "load_factory", "set_builder"]
