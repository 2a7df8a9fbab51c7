"""Files: atomic writes, checksums, and the output folders a command writes (their manifests, and what --force
sets aside and puts back). The names edgeprune writes in a folder, its lock file's among them, are here; the locks
themselves are in ``edgeprune.locks``.

Imports nothing of edgeprune but its error type.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from edgeprune.errors import EdgepruneError, first_line

LOCK_FILE = ".edgeprune.lock"
MANIFEST_FILE = ".edgeprune-manifest.json"  # the files an edgeprune command wrote in a folder: all --force removes
MANIFEST_FORMAT = 1
STASH_DIR = ".edgeprune-replaced"
# Names edgeprune writes into output folders. A name alone proves nothing (a user's results.csv looks the same):
# --force removes only what a manifest lists, and refuses, naming them, where such names stand unlisted.
OWN_FILES = frozenset(
    {
        "model.json", "model.safetensors", "report.json", "train.json", "checkpoint.safetensors",
        "metrics.jsonl", "compare.json", "compare.csv", "compare.md", "compare.png", "curves.png", "results.json",
        "results.csv", "latency_vs_flops.png", "shares.png", "model.onnx", "record.json", "metrics.csv",
        "mlflow_run.json", LOCK_FILE,
    }
)  # fmt: skip
OWN_PATTERNS = ("tradeoffs_*.png",)
# The top-level files each command writes: --force refuses before any work when one of them is there unlisted,
# rather than overwriting it (or failing at the write, hours into a training).
COMMAND_FILES = {
    "prune": ("model.json", "model.safetensors", "report.json"),
    "train": ("model.json", "model.safetensors", "report.json", "train.json", "checkpoint.safetensors",
              "metrics.jsonl", "metrics.csv", "mlflow_run.json"),
    "sweep": ("results.csv", "results.json", "latency_vs_flops.png", "tradeoffs_*.png"),
    "compare": ("compare.json", "compare.csv", "compare.md", "compare.png", "curves.png"),
}  # fmt: skip


class WriteError(EdgepruneError, OSError):
    """A file that could not be written (disk full, a file size limit, no permission), in one line.

    Also an ``OSError``, so code that carries on without an optional file (the image cache) still catches it.
    """

    def __init__(self, path: str | Path, reason: str, code: int | None = None) -> None:
        """``path: cannot write (reason)``; ``code`` is the errno when known."""
        super().__init__(f"{path}: cannot write ({reason})")
        self.errno, self.strerror, self.filename = code, reason, str(path)

    def __str__(self) -> str:
        """The one-line message (not OSError's ``[Errno N] ...`` form)."""
        return str(self.args[0])


def _reason(code: int | None, text: str) -> str:
    if code == _errno.EFBIG:  # ulimit -f, or the file system's own limit
        return f"{text}: over the file size limit (ulimit -f) or the file system's"
    if code == _errno.ENOSPC:
        return f"{text}: the disk is full"
    return text


def _write_failure(path: Path, e: BaseException) -> WriteError | None:
    """The one-line error of a failed write, or None for an error that is not about writing (a bug, a bad model).

    Follows explicit chaining only (``raise ... from``): an unrelated OSError a library caught on the way is no
    reason to blame the disk.
    """
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, WriteError):
            return cur
        if isinstance(cur, OSError):
            text = cur.strerror or str(cur) or type(cur).__name__
            return WriteError(path, _reason(cur.errno, text), cur.errno)
        if type(cur).__name__ == "SafetensorError":  # safetensors' own type (not an OSError), e.g. on a full disk
            found = re.search(r"os error (\d+)", str(cur))
            if found:
                code = int(found[1])
                return WriteError(path, _reason(code, os.strerror(code)), code)
            return WriteError(path, first_line(cur))
        cur = cur.__cause__
    return None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    Any failure to write (an ``OSError``, safetensors' ``SafetensorError``: disk full, ``ulimit -f``) is one
    :class:`WriteError` line; the file in place is untouched and the temporary file removed, also on an interrupt.
    Inside an output folder a command is writing (:class:`OutputFolder`), the file is listed in the folder's
    manifest, and a file the command did not own is refused.
    """
    path = Path(path)
    _note_write(path)
    _replace_atomically(path, write)


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        failure = _write_failure(path, e) if isinstance(e, Exception) and not isinstance(e, EdgepruneError) else None
        if failure is None:
            raise
        raise failure from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_digest(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (stored in safetensors metadata)."""
    import torch  # lazily: this module stays light for the CLI's --help

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        header = json.dumps([name, str(t.dtype), list(t.shape)]).encode()
        digest.update(struct.pack("<Q", len(header)) + header)
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- deterministic safetensors files ---------------------------------------------------------------


def save_safetensors(tensors: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str]) -> None:
    """``safetensors.torch.save_file`` with the metadata keys in sorted order, so equal inputs give equal bytes.

    safetensors keeps the metadata in a Rust hash map, whose order changes from call to call; the header is
    written again here with the keys sorted (the tensors' bytes are not touched).
    """
    from safetensors.torch import save_file

    path = Path(path)
    save_file(dict(tensors), str(path), metadata=dict(metadata))
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
        if len(text) == size:  # the same keys in another order: the same length, rewritten in place
            f.seek(8)
            f.write(text)
            return
        f.seek(8 + size)
        copy = path.with_name(path.name + ".sorted")
        try:
            with open(copy, "wb") as out:  # a key escaped otherwise than safetensors did: a new header, then copy
                out.write(struct.pack("<Q", len(text)) + text)
                shutil.copyfileobj(f, out, 1 << 20)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise
    os.replace(copy, path)


# -- output folders: manifests, --force -----------------------------------------------------------------


def _looks_own(name: str, names: Iterable[str] = OWN_FILES) -> bool:
    """A name edgeprune writes (``names``: exact names or glob patterns)."""
    return any(fnmatch.fnmatchcase(name, n) for n in names)


def _relative(entry: object) -> str | None:
    """A manifest entry as a path inside the folder, or None for anything that is not (never followed out)."""
    if not isinstance(entry, str) or not entry or "\\" in entry or "\0" in entry:
        return None
    rel = PurePosixPath(entry)
    if rel.is_absolute() or any(part in (".", "..") for part in rel.parts) or rel.as_posix() != entry:
        return None
    if rel.parts[0] == STASH_DIR or rel.name in (LOCK_FILE, MANIFEST_FILE):
        return None
    return entry


def read_manifest(folder: str | Path) -> set[str] | None:
    """The relative paths the manifest of ``folder`` lists, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), list):
        return None
    return {e for e in map(_relative, data["files"]) if e is not None}


def _is_file(folder: Path, rel: str) -> bool:
    """True when ``folder/rel`` is a file (or a link, not to a folder) reached without going through a linked
    folder: what a manifest lists is moved and put back as it is, never followed elsewhere."""
    path = folder
    for part in PurePosixPath(rel).parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return False
    path = path / PurePosixPath(rel).name
    return not path.is_dir() if path.is_symlink() else path.is_file()


def write_manifest(folder: str | Path, files: Iterable[str], existing: bool = True) -> None:
    """Write ``folder``'s manifest listing ``files`` (those that exist, with ``existing``), atomically; unchanged,
    it is not rewritten (identical runs leave identical folders)."""
    folder = Path(folder)
    listed = sorted(f for f in set(files) if _relative(f) is not None and (not existing or _is_file(folder, f)))
    if read_manifest(folder) == set(listed) and (folder / MANIFEST_FILE).is_file():
        return
    if not listed and not (folder / MANIFEST_FILE).exists():
        return
    text = json.dumps({"format": MANIFEST_FORMAT, "files": listed}, indent=1) + "\n"
    _replace_atomically(folder / MANIFEST_FILE, lambda p: p.write_text(text))


def _scan(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` (not the lock, manifest or stash): relative path -> (inode, size, mtime)."""
    found: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if dirpath == str(folder):
            dirnames[:] = [d for d in dirnames if d != STASH_DIR]
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(folder).as_posix()
            if _relative(rel) is None:
                continue
            with contextlib.suppress(OSError):
                st = full.lstat()
                found[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _prune_empty(folder: Path, start: Path) -> None:
    """Remove ``start`` and the folders above it, up to ``folder``, while they are empty."""
    while start != folder and folder in start.parents:
        try:
            start.rmdir()
        except OSError:
            return
        start = start.parent


def _files_under(root: Path) -> list[Path]:
    """The files and links under ``root``, in order, without following a link."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [Path(dirpath) / n for n in filenames]
        found += [Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink()]
    return sorted(found)


def restore_stash(folder: str | Path, stash: Path, also: Iterable[str] = ()) -> list[str]:
    """Put the files of ``stash`` back in ``folder`` in place of what a failed run wrote, and remove the stash.

    The manifest then lists the stashed files, the files the failed run's manifest listed and ``also``. A stashed
    file whose place a real folder now takes stays in the stash (nothing is deleted); those are returned.
    """
    folder, stash = Path(folder), Path(stash)
    listed = (read_manifest(stash) or set()) | (read_manifest(folder) or set()) | set(also)
    stuck: list[str] = []
    for path in _files_under(stash):
        rel = path.relative_to(stash).as_posix()
        if rel == MANIFEST_FILE:
            continue
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            stuck.append(rel)
            continue
        os.replace(path, target)
        listed.add(rel)
    if not stuck:
        if (folder / MANIFEST_FILE).exists():  # the failed run's: rewritten below with both lists
            (stash / MANIFEST_FILE).unlink(missing_ok=True)
        elif (stash / MANIFEST_FILE).exists():  # back as it was, byte for byte, unless the list must grow
            os.replace(stash / MANIFEST_FILE, folder / MANIFEST_FILE)
        for d in sorted((p for p in stash.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            stash.rmdir()
    write_manifest(folder, listed)
    return stuck


class _Watch:
    """The writes into one output folder while a command runs."""

    def __init__(self, folder: Path, listed: set[str], protected: frozenset[str]) -> None:
        self.folder = folder
        self.listed = set(listed)  # already edgeprune's (a resumed run's files): listed still
        self.protected = protected  # there before the command and not listed: never overwritten
        self.before = _scan(folder)
        self.written: set[str] = set()


_WATCHES: list[_Watch] = []
_WATCH_LOCK = threading.RLock()


def _note_write(path: Path) -> None:
    """Before ``path`` is written: refuse a file the command does not own, and list it in its folder's manifest
    first, so that even a killed command leaves its files listed (a later --force can remove them)."""
    if not _WATCHES:
        return
    full = path.parent.resolve() / path.name
    with _WATCH_LOCK:
        for watch in _WATCHES:
            try:
                rel = full.relative_to(watch.folder).as_posix()
            except ValueError:
                continue
            if _relative(rel) is None:
                continue
            if rel in watch.protected:
                raise EdgepruneError(
                    f"{path}: exists and no edgeprune manifest lists it (yours, or an older edgeprune's); "
                    "not overwriting it: move it away and run again"
                )
            if rel not in watch.written:
                watch.written.add(rel)
                write_manifest(watch.folder, watch.listed | watch.written, existing=False)  # it is not there yet


class OutputFolder:
    """A folder a command writes (its lock is taken by ``edgeprune.locks.FolderLock`` first).

    :meth:`open` puts back what an interrupted ``--force`` run had set aside, then with ``force`` moves the files
    the folder's manifest lists (and only those) into ``DIR/.edgeprune-replaced/``; :meth:`close` removes them
    when the command succeeded and puts them back when it failed. While it runs, every file the command writes
    is listed in ``DIR/.edgeprune-manifest.json``, and a file it did not own is never overwritten.
    """

    def __init__(self, folder: str | Path, command: str, label: str | None = None) -> None:
        """Describe the output folder ``folder`` of ``command`` (``prune``, ``train``, ...); messages name it
        ``label`` (``--out DIR``, say)."""
        self.folder = Path(folder)
        self.command = command
        self.label = label or str(folder)
        self.stash: Path | None = None
        self.watch: _Watch | None = None
        self.notes: list[str] = []

    def open(self, force: bool = False, keep: bool = False) -> OutputFolder:
        """Make the folder ready: ``keep`` continues its files (resume), ``force`` sets edgeprune's aside, and
        otherwise it must be empty. Refusals are one line and leave the folder as it was."""
        folder = self.folder
        stash = folder / STASH_DIR
        if stash.exists() or stash.is_symlink():
            if keep or not stash.is_dir() or stash.is_symlink():
                raise EdgepruneError(
                    f"{self.label}: {STASH_DIR}/ holds the files an interrupted --force run replaced; move them back "
                    f"(or delete it) and run again"
                )
            count = len([p for p in _files_under(stash) if p != stash / MANIFEST_FILE])
            stuck = restore_stash(folder, stash)
            if stuck:
                raise EdgepruneError(f"{self.label}: cannot put back {', '.join(stuck)} from {STASH_DIR}/ (a folder is "
                                     "in the way); move them back by hand")  # fmt: skip
            self.notes.append(f"{folder}: put back {count} file(s) an interrupted --force run had set aside")
        listed = read_manifest(folder)
        if keep:
            self._start(listed or set(), frozenset())
            return self
        if force:
            names = COMMAND_FILES.get(self.command, OWN_FILES) if listed is not None else OWN_FILES
            if listed:
                self.stash = self._set_aside(sorted(listed))
            unlisted = sorted(
                e.name for e in folder.iterdir()
                if e.name != LOCK_FILE and (e.is_symlink() or e.is_file()) and _looks_own(e.name, names)
            )  # fmt: skip
            if unlisted:
                why = f"{MANIFEST_FILE} does not list" if listed is not None else f"there is no {MANIFEST_FILE} listing"
                raise EdgepruneError(
                    f"{self.label}: {why} {', '.join(unlisted)} (yours, or an older edgeprune's), so --force leaves "
                    "them; move them away (or delete them) and run again"
                )
        else:
            others = [e.name for e in folder.iterdir() if e.name not in (LOCK_FILE, MANIFEST_FILE)]
            if others:
                raise EdgepruneError(
                    f"{self.label}: folder is not empty (use --force to replace the files an earlier edgeprune "
                    "command wrote there)"
                )
        self._start(set(), frozenset(_scan(folder)))
        return self

    def _set_aside(self, listed: list[str]) -> Path | None:
        """Move the listed files (and the manifest) into the stash, keeping their relative paths."""
        folder, stash = self.folder, self.folder / STASH_DIR
        moving = [rel for rel in listed if _is_file(folder, rel)]
        stash.mkdir()
        self.stash = stash  # before moving anything: an interruption puts back whatever moved
        for rel in moving:
            (stash / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / rel, stash / rel)
            _prune_empty(folder, (folder / rel).parent)  # a run folder held only the files listed
        os.replace(folder / MANIFEST_FILE, stash / MANIFEST_FILE)
        return stash

    def _start(self, listed: set[str], protected: frozenset[str]) -> None:
        self.watch = _Watch(self.folder.resolve(), listed, protected)
        with _WATCH_LOCK:
            _WATCHES.append(self.watch)

    def close(self, failed: bool) -> list[str]:
        """Finish: after a failure put the set-aside files back, else remove them; list what the command wrote.

        Returns notes for the user (a file that could not be put back, a manifest that could not be written);
        it never raises, so the caller's other clean-up still runs.
        """
        notes, self.notes = self.notes, []
        watch, self.watch = self.watch, None
        mine: set[str] = set()
        if watch is not None:
            with _WATCH_LOCK:
                if watch in _WATCHES:
                    _WATCHES.remove(watch)
            # Files other processes wrote (Ray workers) are found by their names, never a user's other files.
            after = _scan(self.folder) if self.folder.is_dir() else {}
            changed = {
                rel for rel, st in after.items()
                if watch.before.get(rel) != st and rel not in watch.protected and _looks_own(PurePosixPath(rel).name)
            }  # fmt: skip
            mine = watch.listed | watch.written | changed
        stash, self.stash = self.stash, None
        try:
            if stash is not None and failed:
                stuck = restore_stash(self.folder, stash, mine)
                if stuck:
                    notes.append(f"{stash}: kept {', '.join(stuck)}, which could not be put back (a folder is in the "
                                 "way)")  # fmt: skip
            elif stash is not None:
                shutil.rmtree(stash)  # made by this command: the files it replaced
                write_manifest(self.folder, mine)
            elif self.folder.is_dir():
                write_manifest(self.folder, mine)
        except (OSError, EdgepruneError) as e:
            notes.append(f"{self.folder}: could not finish its files ({e})")
        return notes


def check_writable_file(path: str | Path, option: str) -> Path:
    """A file path that can be written: its folder exists and is writable, and it is not a folder itself."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise EdgepruneError(f"{option} {path}: is a folder; give a file name")
    if not parent.is_dir():
        raise EdgepruneError(f"{option} {path}: folder {parent} does not exist")
    try:  # a real probe: os.access says yes to root even where nothing can be created (/proc)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise EdgepruneError(f"{option} {path}: cannot write in {parent} ({e.strerror})") from None
    return path


def remove_tree(folder: str | Path) -> None:
    """Remove a folder this process created (best effort: a failed command's output)."""
    shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "COMMAND_FILES",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "OWN_FILES",
    "STASH_DIR",
    "OutputFolder",
    "WriteError",
    "atomic_write",
    "check_writable_file",
    "read_manifest",
    "remove_tree",
    "restore_stash",
    "save_safetensors",
    "sha256_file",
    "tensors_digest",
    "write_json",
    "write_manifest",
]
