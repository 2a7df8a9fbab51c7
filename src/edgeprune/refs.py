"""Model references: what they name, where their code is (found without running it), and the trust list.

A reference names where a model comes from:

- ``zoo:NAME`` (or just ``NAME``): edgeprune's own zoo (``edgeprune models``); no user code runs;
- ``py:package.module:factory`` (or ``package.module:factory``): an importable callable (when the user
  names it, the current folder is importable, as for uvicorn's ``module:app``);
- ``file:path/to/file.py:factory`` (or ``path/to/file.py:factory``): a Python file the user points at.

``py:`` and ``file:`` run the user's own code, named explicitly by them, as ``torch.hub``, uvicorn's
``module:app`` and timm's entry points do. The factory takes keyword arguments (JSON values) and
returns an ``nn.Module``. A built model carries ``model.edgeprune_builder`` = ``{"builder": canonical
reference, "kwargs": {...}, "sha256": file hash (file: only), "input_shape": [C, H, W] when known}``;
``copy.deepcopy`` keeps it, so a model pruned by ``edgeprune.prune`` remembers how to rebuild it. Building
(importing and running the code) is ``edgeprune.models.build``.

Trust (SPEC "Loading user code"): a model folder names its builder, and a folder from elsewhere
could name any code. Its ``py:``/``file:`` builder runs only when this user vouched for it: the
reference is in the per-user trust list (``$EDGEPRUNE_CONFIG/trusted.json``, default
``~/.config/edgeprune/trusted.json``), or it is named again now, or the caller passes ``trust_code``.
Trust is in what a reference resolves to, not its name: naming a reference to build a model records
the file it resolved to (a ``py:`` module's file, found without running it) and that file's SHA-256.
A folder's ``py:`` builder is then imported from the folder recorded for it, never from the current
folder or the model folder (those are kept off ``sys.path`` unless the user names the reference in
this command), and a module found elsewhere, or a file that changed, is not the trusted one. A user
who edits their own trusted file vouches again once: by naming it, or with ``allow_changed``.
Nothing in a folder vouches for itself.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import types
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import sha256_file, write_json
from edgeprune.locks import locked

ZOO, PY, FILE = "zoo", "py", "file"
BUILDER_ATTR = "edgeprune_builder"
CONFIG_ENV = "EDGEPRUNE_CONFIG"
TRUST_FILE = "trusted.json"
TRUST_FORMAT = "edgeprune-trust/1"
MAX_TRUST_BYTES = 4 << 20  # a trust list larger than this is refused unread
MAX_ARGS_DEPTH = 64  # nesting of a factory's JSON arguments: deeper is refused before anything recurses over it
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


def _too_deep(value: object, limit: int = MAX_ARGS_DEPTH) -> bool:
    """True when lists and dicts nest deeper than ``limit``; walked with a stack, so no depth can overflow it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments (``None`` -> ``{}``)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"--model-args is not valid JSON ({e.msg} at character {e.pos}): {text[:200]!r}") from None
    except RecursionError:  # the parser recurses per nesting level: thousands of '[' exhaust the stack
        raise EdgepruneError(f"--model-args nests too deeply (at most {MAX_ARGS_DEPTH} levels)") from None
    except ValueError as e:  # an integer too long to convert
        raise EdgepruneError(f"--model-args cannot be read ({first_line(e, with_type=True)})") from None
    if not isinstance(value, dict):
        raise EdgepruneError(
            f"--model-args must be a JSON object such as '{{\"num_classes\": 100}}', got {type(value).__name__}"
        )
    if _too_deep(value):
        raise EdgepruneError(f"--model-args nests too deeply (at most {MAX_ARGS_DEPTH} levels)")
    return value


def check_kwargs(kwargs: object) -> dict[str, Any]:
    """Keyword arguments that model.json can hold: a dict with string keys and JSON values."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise EdgepruneError(f"model arguments must be a dict with string keys, got {type(kwargs).__name__}")
    if _too_deep(kwargs):  # json.dumps, deepcopy and printing all recurse per level
        raise EdgepruneError(f"model arguments nest more than {MAX_ARGS_DEPTH} levels deep")
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise EdgepruneError(f"model arguments must be JSON values (numbers, strings, lists, dicts): {e}") from None


# -- finding and importing user code -------------------------------------------------------------


@dataclass(frozen=True)
class CodeFile:
    """What a ``py:``/``file:`` reference resolves to, found without running any of it.

    ``path``: the file's absolute, symlink-free path (a ``py:`` module's file, or its origin such as
    ``built-in`` when it has none); ``sha256``: the file's hash (None without a file); ``first``: the
    folder put first on ``sys.path`` while the code is imported and its factory runs; ``hide``: folders
    kept off ``sys.path`` meanwhile; ``shadow``: a different module of the same name in a hidden folder.
    """

    path: str
    sha256: str | None
    first: str | None = None
    hide: tuple[str, ...] = ()
    shadow: str | None = None


def _real(path: object) -> str | None:
    """The absolute, symlink-free form of a ``sys.path`` entry ('' is the current folder); None for odd entries."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        return os.path.realpath(os.fspath(path) or os.curdir)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def import_scope(first: str | None, hide: Iterable[str] = ()) -> Iterator[None]:
    """``first`` first on ``sys.path`` and the ``hide`` folders off it, for the duration (as torch.hub does).

    Entries the user's code adds meanwhile are kept afterwards; the ones hidden come back.
    """
    saved = list(sys.path)
    hidden = {_real(h) for h in hide} - {_real(first), None}
    scope = [first] if first else []
    scope += [p for p in saved if p != first and (_real(p) not in hidden)]
    sys.path[:] = scope
    try:
        yield
    finally:
        added = [p for p in sys.path if p not in scope and p not in saved]
        sys.path[:] = saved + added


def _find_spec(name: str, top_path: list[str] | None = None) -> importlib.machinery.ModuleSpec | None:
    """Where module ``name`` would be imported from, running none of it (not even a parent package's __init__).

    ``top_path`` None: the import system as configured (``sys.path``, installed finders); else only those folders.
    """
    parts = name.split(".")
    try:
        if top_path is None:
            spec = importlib.util.find_spec(parts[0])
        else:
            spec = importlib.machinery.PathFinder.find_spec(parts[0], top_path)
        for i in range(1, len(parts)):
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), spec.submodule_search_locations)
    except (ImportError, ValueError, OSError):
        return None
    return spec


def origin_of(spec: importlib.machinery.ModuleSpec | None, module: types.ModuleType | None = None) -> str | None:
    """A module's file as an absolute, symlink-free path, or its origin (``built-in``, ``frozen``) when it has none."""
    origin = getattr(spec, "origin", None) if module is None else getattr(module, "__file__", None)
    if origin is None and module is not None:
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if not isinstance(origin, str):
        return None
    return _real(origin) if getattr(spec, "has_location", True) and os.path.isfile(origin) else str(origin)


def _root_of(path: str, module: str) -> str | None:
    """The ``sys.path`` folder from which ``path`` is module ``module`` (``/r`` for ``/r/pkg/mod.py`` and
    ``pkg.mod``); None when the file's place does not fit the dotted name."""
    parts, file = module.split("."), Path(path)
    if file.name.split(".")[0] == "__init__":
        folder, names = file.parent, parts
    elif file.name.split(".")[0] == parts[-1]:
        folder, names = file.parent, parts[:-1]
    else:
        return None
    for name in reversed(names):
        if folder.name != name:
            return None
        folder = folder.parent
    return str(folder)


def _hidden(folder: str | Path | None) -> tuple[str, ...]:
    """Folders a model folder's code is never imported from unless named now: the current one and the model's."""
    return (os.getcwd(),) if folder is None else (os.getcwd(), str(folder))


def locate(ref: Reference, *, named: bool = True, folder: str | Path | None = None) -> CodeFile | None:
    """What a code reference resolves to now, running none of it; None when there is no such file or module.

    ``named``: the user names the reference in this command, so a ``py:`` module is looked up with the
    current folder first (as uvicorn does). Otherwise (a model folder's builder) it is looked up in the
    folder the trust list recorded for it, then on ``sys.path`` without the current folder and the model
    ``folder``, and a different module of that name in those two is reported as ``shadow``.
    """
    if not ref.is_code:
        raise EdgepruneError(f"'{ref.short}' is a zoo model, not code")
    hide = () if named else _hidden(folder)
    importlib.invalidate_caches()  # a file written a moment ago (same mtime second) is seen
    if ref.kind == FILE:
        path = Path(ref.target)
        if not path.is_file():
            return None
        return CodeFile(_real(path) or str(path), sha256_file(path), str(path.parent), hide)
    first = os.getcwd() if named else _recorded_root(ref)
    module = sys.modules.get(ref.target)
    if module is not None:
        path = origin_of(None, module)
    else:
        with import_scope(first, hide):
            path = origin_of(_find_spec(ref.target))
    if path is None:
        return None
    sha = sha256_file(path) if os.path.isfile(path) else None
    first = first or (_root_of(path, ref.target) if sha is not None else None)
    return CodeFile(path, sha, first, hide, None if named else _shadow(ref, path, hide))


def _recorded_root(ref: Reference) -> str | None:
    """The ``sys.path`` folder of the file the trust list recorded for a ``py:`` reference, if it is still there."""
    entry = _trust_entry(ref)
    file = entry.get("file") if entry else None
    return _root_of(file, ref.target) if file and os.path.isfile(file) else None


def _shadow(ref: Reference, path: str, hide: tuple[str, ...]) -> str | None:
    """A module of ``ref``'s name in a hidden folder that is not ``path``: code a user might think runs."""
    for folder in dict.fromkeys(hide):
        found = origin_of(_find_spec(ref.target, [folder]))
        if found is not None and found != path:
            return found
    return None


def module_at(ref: Reference, file: str | Path) -> CodeFile | None:
    """The ``py:`` module ``ref`` names, as found at ``file`` (``pkg/mod.py`` for ``pkg.mod``); None if it is not."""
    path = _real(Path(file).expanduser())
    root = _root_of(path, ref.target) if ref.kind == PY and path and os.path.isfile(path) else None
    if root is None or origin_of(_find_spec(ref.target, [root])) != path:
        return None
    return CodeFile(path, sha256_file(path), root)


def missing_error(ref: Reference) -> EdgepruneError:
    """The one-line error for a reference that resolves to nothing."""
    if ref.kind == FILE:
        return EdgepruneError(f"{ref.target}: no such file (model reference {ref.short})")
    return EdgepruneError(
        f"{ref.short}: cannot import module '{ref.target}' (no module named '{ref.target}'; is it installed or in "
        "the current folder?)"
    )


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


def _read_trust(path: Path) -> list[dict[str, str]]:
    """The trust list's well-formed entries (``builder``, and ``file``, ``sha256``, ``added`` when strings); [] if none.

    Whatever else the file holds (it is the user's, but any content must end in one line) is left out.
    """
    try:
        if not path.is_file():
            return []
        size = path.stat().st_size
        if size > MAX_TRUST_BYTES:
            raise EdgepruneError(
                f"{path}: {size} bytes, too large for a trust list (at most {MAX_TRUST_BYTES}); fix or delete it"
            )
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read the trust list ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # not JSON or UTF-8, an overlong integer, nested too deeply to parse
        raise EdgepruneError(
            f"{path}: unreadable trust list ({first_line(e, with_type=True)}); fix or delete it"
        ) from None
    if not isinstance(data, dict) or data.get("format") != TRUST_FORMAT or not isinstance(data.get("trusted"), list):
        raise EdgepruneError(f"{path}: not an {TRUST_FORMAT} trust list; fix or delete it")
    return [
        {"builder": e["builder"], **{k: e[k] for k in ("file", "sha256", "added") if isinstance(e.get(k), str)}}
        for e in data["trusted"]
        if isinstance(e, dict) and isinstance(e.get("builder"), str)
    ]


def _trust_entries(ref: Reference) -> list[dict[str, str]]:
    return [e for e in _read_trust(trust_path()) if e["builder"] == ref.builder]


def _trust_entry(ref: Reference) -> dict[str, str] | None:
    """The entry for ``ref`` the user recorded last, if any."""
    entries = _trust_entries(ref)
    return entries[-1] if entries else None


def _entry_file(ref: Reference, entry: dict[str, str]) -> str | None:
    """The file an entry vouches for: the recorded one (None in an older ``py:`` entry), a ``file:`` one's path."""
    return entry.get("file", ref.target if ref.kind == FILE else None)


def _same_file(recorded: str | None, path: str) -> bool:
    return recorded is not None and (recorded == path or _real(recorded) == path)


def trust_status(ref: Reference, code: CodeFile | None) -> tuple[str, dict[str, str] | None]:
    """How the trust list stands on a code reference that resolves to ``code`` (None: to nothing), and its entry.

    ``trusted`` (this file with this hash), ``changed`` (this file, another hash), ``moved`` (a ``py:``
    module vouched for at another file), ``gone`` (resolves to nothing now), ``old`` (a ``py:`` entry of
    an older edgeprune, by name only) or ``none``.
    """
    if not ref.is_code:
        return "trusted", None
    entries = _trust_entries(ref)
    if not entries:
        return "none", None
    for entry in entries:
        if code is not None and _same_file(_entry_file(ref, entry), code.path) and entry.get("sha256") == code.sha256:
            return "trusted", entry
    entry = entries[-1]
    if _entry_file(ref, entry) is None:
        return "old", entry
    if code is None:
        return "gone", entry
    return ("changed" if _same_file(_entry_file(ref, entry), code.path) else "moved"), entry


def is_trusted(ref: Reference, sha256: str | None = None, *, code: CodeFile | None = None) -> bool:
    """True for a zoo reference, or a code reference in the trust list with the file and hash it resolves to now.

    ``code`` is what it resolves to (:func:`locate`); for a ``file:`` reference ``sha256`` may stand for it.
    """
    if not ref.is_code:
        return True
    if code is None:
        code = CodeFile(_real(ref.target) or ref.target, sha256) if ref.kind == FILE else locate(ref, named=False)
    return trust_status(ref, code)[0] == "trusted"


def record_trust(ref: Reference, sha256: str | None = None, *, code: CodeFile | None = None) -> None:
    """Vouch for a ``py:``/``file:`` reference: record the file it resolves to and its hash, atomically.

    One entry per reference: naming it again (after editing the file, or for a module elsewhere) replaces
    the entry. ``code`` is what it resolved to; without it a ``py:`` module is looked up as named now.
    Warns when it cannot record.
    """
    if not ref.is_code:
        return
    if code is None and ref.kind == FILE:
        digest = sha256 or (sha256_file(ref.target) if os.path.isfile(ref.target) else None)
        code = CodeFile(_real(ref.target) or ref.target, digest)
    elif code is None:
        code = locate(ref)
        if code is None:
            warnings.warn(f"could not record {ref.short} in the trust list: no module '{ref.target}'", stacklevel=2)
            return
    if trust_status(ref, code)[0] == "trusted":
        return  # nothing to write: no lock file, no warning on a read-only config folder
    path = trust_path()
    try:
        with locked(path.with_name(TRUST_FILE + ".lock")):
            if trust_status(ref, code)[0] == "trusted":  # another process recorded it meanwhile
                return
            entries = [e for e in _read_trust(path) if e["builder"] != ref.builder]
            entry: dict[str, Any] = {"builder": ref.builder, "file": code.path, "sha256": code.sha256}
            entry["added"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_json(path, {"format": TRUST_FORMAT, "trusted": [*entries, entry]})
    except OSError as e:
        warnings.warn(f"could not record {ref.short} in the trust list {path} ({e.strerror})", stacklevel=2)


def _as_path(ref: Reference) -> str:
    """How a ``py:`` reference looks as a file reference (``PATH/pkg/mod.py:fn``), for messages."""
    return f"PATH/{ref.target.replace('.', '/')}.py:{ref.attr}"


def check_trusted(
    ref: Reference,
    code: CodeFile | str | None = None,
    *,
    trust_code: bool = False,
    allow_changed: bool = False,
    where: str = "",
    folder: str | Path | None = None,
) -> str | None:
    """Refuse (one line) to run a model folder's code builder unless the user vouched for what it resolves to.

    ``code``: what ``ref`` resolves to (:func:`locate` with ``named=False`` and the model ``folder``; for a
    ``file:`` reference its SHA-256 may stand for it). ``trust_code`` runs it anyway. ``allow_changed``
    vouches again for a file the user vouched for that changed since (they edited it): its new hash is
    recorded and a note saying so comes back; otherwise None.
    """
    if not ref.is_code:
        return None
    if isinstance(code, str):
        code = CodeFile(_real(ref.target) or ref.target, code)
    elif code is None:
        code = locate(ref, named=False, folder=folder)
    shadow = code.shadow if code is not None else None
    if code is None and ref.kind == PY:
        shadow = _shadow(ref, "", _hidden(folder))
    name_it = f"--model {ref.short}; Python: load(..., builder='{ref.short}')"
    status, entry = ("trusted", None) if trust_code else trust_status(ref, code)
    if status == "none":
        raise EdgepruneError(
            f"{where}builder {ref.builder} runs code you have not vouched for on this machine; if you trust it, name "
            f"it ({name_it}) or pass --trust-code (trust_code=True)"
        )
    if status == "old":
        raise EdgepruneError(
            f"{where}builder {ref.builder}: your trust list vouches for this name only (recorded by an older "
            f"edgeprune), not for a file; vouch once for the module you mean by naming it (--model {ref.short} in the "
            f"folder that holds it, or --model {_as_path(ref)})"
        )
    if shadow is not None:  # never imported; refused so that nobody believes it ran
        raise EdgepruneError(
            f"{where}builder {ref.builder}: {shadow} is not the module edgeprune would run"
            + ("" if code is None else f" ({code.path})" if trust_code else f" ({code.path}, which you vouched for)")
            + "; a model folder's code is never imported from the current folder or the model folder unless you "
            f"name it in the command: to run that one, name it from its folder (--model {ref.short})"
        )
    if code is None:
        if ref.kind == FILE:
            raise EdgepruneError(
                f"{where}builder {ref.builder}: {ref.target} does not exist; if it moved, name its new place "
                f"(--model NEW/PATH.py:{ref.attr}; Python: builder=...)"
            )
        gone = f"{_entry_file(ref, entry)}, the module you vouched for, is gone and " if entry else ""
        raise EdgepruneError(
            f"{where}builder {ref.builder}: {gone}no module '{ref.target}' is installed (a model folder's code is "
            f"never imported from the current folder or the model folder); name where it is (--model {ref.short} "
            f"in its folder, or --model {_as_path(ref)})"
        )
    if status == "trusted":
        return None
    # naming the file it resolves to vouches for it from any folder (a py: module too: io's --model PATH.py:fn)
    here = f"--model {code.path}:{ref.attr}" if os.path.isfile(code.path) else f"--model {ref.short}"
    if status == "moved":
        raise EdgepruneError(
            f"{where}builder {ref.builder}: module '{ref.target}' is {code.path}, not {_entry_file(ref, entry)} that "
            f"you vouched for; if you trust it, name it ({here})"
        )
    old = str((entry or {}).get("sha256"))[:16]
    if allow_changed:
        record_trust(ref, code=code)
        new = str(code.sha256)[:16]
        return f"{code.path} changed since you vouched for it (sha256 {old}... then, {new}... now: vouched for now)"
    raise EdgepruneError(
        f"{where}{code.path} changed since you vouched for it (sha256 {old}... then, {str(code.sha256)[:16]}... now); "
        f"if you edited it, vouch for this version once: pass --allow-changed-code (allow_changed=True) or name it "
        f"({here})"
    )


__all__ = [
    "BUILDER_ATTR",
    "FILE",
    "PY",
    "REFERENCE_HELP",
    "ZOO",
    "CodeFile",
    "Reference",
    "builder_of",
    "check_kwargs",
    "check_trusted",
    "config_dir",
    "import_scope",
    "is_trusted",
    "locate",
    "missing_error",
    "module_at",
    "origin_of",
    "parse_model_args",
    "parse_reference",
    "record_trust",
    "trust_path",
    "trust_status",
]
