"""Files: atomic writes, locks (a read-modify-write lock, a folder's writer lock), checksums, --force cleaning.

Imports nothing of edgeprune but its error type.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError

LOCK_FILE = ".edgeprune.lock"
# What edgeprune writes into an output folder; --force removes these (and run subfolders made only of
# them) and nothing else, so a user's own files beside a run survive.
OWN_FILES = frozenset(
    {
        "model.json", "model.safetensors", "report.json", "train.json", "checkpoint.safetensors",
        "metrics.jsonl", "compare.json", "compare.csv", "compare.md", "compare.png", "curves.png", "results.json",
        "results.csv", "latency_vs_flops.png", "shares.png", "model.onnx", LOCK_FILE,
    }
)  # fmt: skip


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for a read-modify-write; no-op off POSIX."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


# -- one writer per folder -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0 probes without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class FolderLock:
    """``DIR/.edgeprune.lock``, created exclusively, naming the pid, host and command that writes ``DIR``."""

    def __init__(self, folder: str | Path, command: str) -> None:
        """Describe the lock of ``folder`` for ``command``; :meth:`acquire` takes it."""
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.note = ""  # said aloud by the CLI: a stale lock taken over
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> FolderLock:
        """Take the lock; refuse (one line) while a live process holds it; take over a dead one's, said in ``note``."""
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between the two calls
                pid, host = holder.get("pid"), holder.get("host")
                who = f"'{holder.get('command', '?')}' (pid {pid} on {host})"
                if isinstance(pid, int) and host == mine["host"] and not _alive(pid):
                    self.note = f"{self.folder}: took over the lock of {who}, which is no longer running"
                elif not holder:
                    self.note = f"{self.folder}: replaced an unreadable lock file {self.path.name}"
                elif host != mine["host"]:
                    raise EdgepruneError(
                        f"{self.folder} is being written by {who}; if that run is over, delete {self.path}"
                    ) from None
                else:
                    raise EdgepruneError(
                        f"{self.folder} is being written by {who}; wait for it or use another folder"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(mine) + "\n")
            self.held = True
            return self
        raise EdgepruneError(f"{self.folder}: could not take the lock {self.path} (another run keeps taking it)")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        """Acquire on entering a ``with`` block."""
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        """Release on leaving it."""
        self.release()


def _is_own(path: Path) -> bool:
    """An edgeprune file: a known name, or the temporary file of an interrupted atomic write of one."""
    name = path.name
    return name in OWN_FILES or any(name.startswith(f".{own}.") for own in OWN_FILES)


STASH_DIR = ".edgeprune-replaced"


def _all_own(folder: Path) -> bool:
    """True when every file under ``folder`` is edgeprune's (a run subfolder of a comparison, say)."""
    return all(_is_own(p) for p in folder.rglob("*") if not p.is_dir())


def stash_own_files(folder: str | Path) -> Path | None:
    """Move edgeprune's own files (and run subfolders made only of them) from ``folder`` into a stash in it.

    ``--force`` does this before a run: the new run never sees the old one's files, and if it fails
    :func:`restore_stash` puts them back, so nothing written before is lost. Returns the stash, or None.
    """
    folder = Path(folder)
    stash = folder / STASH_DIR
    if stash.exists():  # left by a --force run that was killed: it held the files that run replaced
        shutil.rmtree(stash)
    moving = [
        e
        for e in sorted(folder.iterdir())
        if e.name not in (LOCK_FILE, STASH_DIR)
        and ((e.is_dir() and not e.is_symlink() and _all_own(e)) or (not e.is_dir() and _is_own(e)))
    ]
    if not moving:
        return None
    stash.mkdir()
    for entry in moving:
        os.replace(entry, stash / entry.name)
    return stash


def restore_stash(folder: str | Path, stash: Path) -> None:
    """Put stashed files back in place of what a failed run wrote, and remove the stash."""
    for entry in sorted(stash.iterdir()):
        target = Path(folder) / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
    stash.rmdir()


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
    "LOCK_FILE",
    "OWN_FILES",
    "FolderLock",
    "atomic_write",
    "check_writable_file",
    "locked",
    "restore_stash",
    "remove_tree",
    "sha256_file",
    "stash_own_files",
    "tensors_digest",
    "write_json",
]
