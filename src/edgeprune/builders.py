"""Model references: build a model from the zoo, an importable factory or a user's Python file; the trust list.

A reference names where a model comes from:

- ``zoo:NAME`` (or just ``NAME``): edgeprune's own zoo (``edgeprune models``); no user code runs;
- ``py:package.module:factory`` (or ``package.module:factory``): an importable callable (the current
  folder is importable, as for uvicorn's ``module:app``);
- ``file:path/to/file.py:factory`` (or ``path/to/file.py:factory``): a Python file the user points at.

``py:`` and ``file:`` run the user's own code, named explicitly by them, as ``torch.hub``, uvicorn's
``module:app`` and timm's entry points do. The factory takes keyword arguments (JSON values) and
returns an ``nn.Module``. A built model carries ``model.edgeprune_builder`` = ``{"builder": canonical
reference, "kwargs": {...}, "sha256": file hash (file: only), "input_shape": [C, H, W] when known}``;
``copy.deepcopy`` keeps it, so a model pruned by ``edgeprune.prune`` remembers how to rebuild it.

Trust (SPEC "Loading user code"): a model folder names its builder, and a folder from elsewhere
could name any code. Its ``py:``/``file:`` builder runs only when this user vouched for it: the
reference is in the per-user trust list (``$EDGEPRUNE_CONFIG/trusted.json``, default
``~/.config/edgeprune/trusted.json``; naming a reference to build a model records it there, with
the file's SHA-256 for ``file:``), or it is named again now, or the caller passes ``trust_code``.
Nothing in a folder vouches for itself.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import inspect
import json
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import locked, sha256_file, write_json

ZOO, PY, FILE = "zoo", "py", "file"
BUILDER_ATTR = "edgeprune_builder"
CONFIG_ENV = "EDGEPRUNE_CONFIG"
TRUST_FILE = "trusted.json"
TRUST_FORMAT = "edgeprune-trust/1"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
REFERENCE_HELP = "NAME (zoo), package.module:factory or path/to/file.py:factory (your own code: it is imported and run)"


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``kind`` zoo/py/file, ``target`` the zoo name, module or absolute file path."""

    kind: str
    target: str
    attr: str = ""

    @property
    def builder(self) -> str:
        """The canonical form recorded in model.json: ``zoo:NAME``, ``py:mod:fn`` or ``file:/abs/path.py:fn``."""
        return f"{ZOO}:{self.target}" if self.kind == ZOO else f"{self.kind}:{self.target}:{self.attr}"

    @property
    def short(self) -> str:
        """The form a user types: ``NAME``, ``mod:fn`` or ``path.py:fn``."""
        return self.target if self.kind == ZOO else f"{self.target}:{self.attr}"

    @property
    def is_code(self) -> bool:
        """True for ``py:`` and ``file:`` references, which run the user's code."""
        return self.kind != ZOO


def parse_reference(text: str) -> Reference:
    """Parse a model reference (see the module docstring); a one-line EdgepruneError when it is none."""
    text = str(text).strip()
    hint = f"'{text}' is not a model reference; use {REFERENCE_HELP}"
    if not text:
        raise EdgepruneError("empty model reference; use " + REFERENCE_HELP)
    kind, sep, rest = text.partition(":")
    if sep and kind == ZOO:
        if not rest or ":" in rest:
            raise EdgepruneError(hint)
        return Reference(ZOO, rest)
    if sep and kind in (PY, FILE):
        text = rest
    else:
        kind = ""
    left, sep, attr = text.rpartition(":")
    if not sep:
        if kind or text.endswith(".py"):
            raise EdgepruneError(f"'{text}': name the factory too, as {text}:FACTORY")
        if os.sep in text or (os.altsep and os.altsep in text) or not _DOTTED.match(text):
            raise EdgepruneError(hint)
        return Reference(ZOO, text)
    if not _DOTTED.match(attr):
        raise EdgepruneError(f"{hint} ('{attr}' is not a Python name)")
    if kind == FILE or (not kind and left.endswith(".py")):
        if not left:
            raise EdgepruneError(hint)
        return Reference(FILE, str(Path(left).expanduser().resolve()), attr)
    if not _DOTTED.match(left):
        raise EdgepruneError(f"{hint} ('{left}' is neither a module name nor a .py file)")
    return Reference(PY, left, attr)


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments (``None`` -> ``{}``)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"--model-args is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise EdgepruneError(
            f"--model-args must be a JSON object such as '{{\"num_classes\": 100}}', got {type(value).__name__}"
        )
    return value


def check_kwargs(kwargs: object) -> dict[str, Any]:
    """Keyword arguments that model.json can hold: a dict with string keys and JSON values."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise EdgepruneError(f"model arguments must be a dict with string keys, got {type(kwargs).__name__}")
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise EdgepruneError(f"model arguments must be JSON values (numbers, strings, lists, dicts): {e}") from None


# -- importing user code -----------------------------------------------------------------------


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the duration (as torch.hub does for a hub's folder)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _code_folder(ref: Reference) -> str:
    return str(Path(ref.target).parent) if ref.kind == FILE else os.getcwd()


def _import_module(ref: Reference, sha256: str | None) -> types.ModuleType:
    """Import a ``py:`` module, or run a ``file:`` (the bytes hashed are the bytes run), cached per hash."""
    if ref.kind == PY:
        try:
            with _on_sys_path(os.getcwd()):
                return importlib.import_module(ref.target)
        except ModuleNotFoundError as e:
            if e.name and (ref.target == e.name or ref.target.startswith(e.name + ".")):
                raise EdgepruneError(
                    f"{ref.short}: cannot import module '{ref.target}' (no module named '{e.name}'; is it installed "
                    "or in the current folder?)"
                ) from None
            raise EdgepruneError(f"{ref.short}: importing '{ref.target}' raised {_first_line(e)}") from None
        except (Exception, SystemExit) as e:
            raise EdgepruneError(f"{ref.short}: importing '{ref.target}' raised {_first_line(e)}") from None
    path = Path(ref.target)
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise EdgepruneError(f"{path}: no such file (model reference {ref.short})") from None
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
    import hashlib

    digest = hashlib.sha256(source).hexdigest()
    if sha256 is not None and digest != sha256:
        raise EdgepruneError(f"{path}: changed while it was being read; run the command again")
    name = "edgeprune_file_" + re.sub(r"\W", "_", path.stem) + "_" + digest[:16]
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        with _on_sys_path(str(path.parent)):
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own file, named by them
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise EdgepruneError(f"{path}: running it raised {_first_line(e)}") from None
    return module


def load_factory(ref: str | Reference, sha256: str | None = None) -> Callable[..., Any]:
    """The callable a ``py:``/``file:`` reference names (imports or runs the user's code)."""
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    if not ref.is_code:
        raise EdgepruneError(f"'{ref.short}' is a zoo model, not a factory")
    obj: Any = _import_module(ref, sha256)
    where = ref.target if ref.kind == PY else Path(ref.target).name
    for part in ref.attr.split("."):
        if not hasattr(obj, part):
            raise EdgepruneError(f"{ref.short}: '{where}' has no attribute '{ref.attr}'")
        obj = getattr(obj, part)
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
) -> nn.Module:
    """Build a model from a reference with keyword arguments; it carries ``edgeprune_builder`` for saving.

    ``hints`` (``num_classes``, ``in_channels``, ``width``) go to a zoo model, and to a factory only
    when it has a parameter of that name that ``kwargs`` leaves out. ``sha256`` pins a ``file:``
    reference to that content. ``remember`` records a ``py:``/``file:`` reference in the user's
    trust list: naming it is vouching for it.
    """
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    kwargs = check_kwargs(kwargs)
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    if not ref.is_code:
        from edgeprune.models import create

        merged = {**hints, **kwargs}
        try:
            model = create(ref.target, **merged)
        except TypeError as e:
            raise EdgepruneError(f"zoo model '{ref.target}' does not accept these arguments ({e})") from None
    else:
        digest = sha256_file(ref.target) if ref.kind == FILE and Path(ref.target).is_file() else None
        if sha256 is not None and digest is not None and digest != sha256:
            raise EdgepruneError(f"{ref.target}: changed (sha256 {sha256[:16]}... expected, {digest[:16]}... now)")
        factory = load_factory(ref, digest)
        params = factory_parameters(factory)
        for key, value in hints.items():
            if key not in kwargs and params is not None and key in params[0]:
                kwargs[key] = value
        _check_signature(ref, factory, kwargs)
        try:
            with _on_sys_path(_code_folder(ref)):
                model = factory(**kwargs)
        except (Exception, SystemExit) as e:
            raise EdgepruneError(f"{ref.short} raised {_first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise EdgepruneError(f"{ref.short} returned {type(model).__name__}, not a torch.nn.Module")
        info: dict[str, Any] = {"builder": ref.builder, "kwargs": kwargs}
        if ref.kind == FILE:
            info["sha256"] = digest
        setattr(model, BUILDER_ATTR, info)
        if remember:
            record_trust(ref, info.get("sha256"))
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


def builder_of(model: nn.Module) -> dict[str, Any] | None:
    """How ``model`` can be rebuilt (``edgeprune_builder``, or an older zoo ``edgeprune_arch``); None if unknown."""
    info = getattr(model, BUILDER_ATTR, None)
    if isinstance(info, dict) and "builder" in info:
        return info
    arch = getattr(model, "edgeprune_arch", None)
    if isinstance(arch, dict) and "name" in arch:
        return {"builder": f"{ZOO}:{arch['name']}", "kwargs": dict(arch.get("kwargs", {}))}
    return None


# -- the trust list ----------------------------------------------------------------------------


def config_dir() -> Path:
    """The per-user config folder: ``$EDGEPRUNE_CONFIG``, else ``$XDG_CONFIG_HOME/edgeprune`` or ~/.config/edgeprune."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeprune"


def trust_path() -> Path:
    """The trust list: references this user named on this machine."""
    return config_dir() / TRUST_FILE


def _read_trust(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgepruneError(f"{path}: unreadable trust list ({_first_line(e)}); fix or delete it") from None
    if not isinstance(data, dict) or data.get("format") != TRUST_FORMAT or not isinstance(data.get("trusted"), list):
        raise EdgepruneError(f"{path}: not an {TRUST_FORMAT} trust list; fix or delete it")
    return [e for e in data["trusted"] if isinstance(e, dict)]


def is_trusted(ref: Reference, sha256: str | None = None) -> bool:
    """True for a zoo reference, or a code reference in the trust list (a ``file:`` one with this content)."""
    if not ref.is_code:
        return True
    return any(
        e.get("builder") == ref.builder and (ref.kind != FILE or e.get("sha256") == sha256)
        for e in _read_trust(trust_path())
    )


def record_trust(ref: Reference, sha256: str | None = None) -> None:
    """Add a ``py:``/``file:`` reference (and a file's hash) to the trust list, atomically; warn if it cannot."""
    if not ref.is_code or is_trusted(ref, sha256):
        return
    path = trust_path()
    try:
        with locked(path.with_name(TRUST_FILE + ".lock")):
            entries = _read_trust(path)
            entry: dict[str, Any] = {"builder": ref.builder}
            if ref.kind == FILE:
                entry["sha256"] = sha256
            entry["added"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_json(path, {"format": TRUST_FORMAT, "trusted": [*entries, entry]})
    except OSError as e:
        warnings.warn(f"could not record {ref.short} in the trust list {path} ({e.strerror})", stacklevel=2)


def check_trusted(ref: Reference, sha256: str | None, *, trust_code: bool = False, where: str = "") -> None:
    """Refuse (one line) to run a folder's code builder the user has not vouched for."""
    if not ref.is_code or trust_code or is_trusted(ref, sha256):
        return
    raise EdgepruneError(
        f"{where}builder {ref.builder} runs code you have not vouched for on this machine; if you trust it, name it "
        f"(--model {ref.short}; Python: load(..., builder='{ref.short}')) or pass --trust-code (trust_code=True)"
    )


__all__ = [
    "REFERENCE_HELP",
    "Reference",
    "build_model",
    "builder_of",
    "check_trusted",
    "config_dir",
    "factory_parameters",
    "is_trusted",
    "load_factory",
    "parse_model_args",
    "parse_reference",
    "record_trust",
    "set_builder",
    "trust_path",
]
