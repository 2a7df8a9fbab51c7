"""One writer at a time: a read-modify-write lock on a file, and a writer lock over a folder and its subtree.

``FolderLock`` writes ``DIR/.edgeprune.lock`` naming the pid, host and command that writes ``DIR``; a lock whose
process is gone (on this host) is taken over, said in its ``note``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.files import LOCK_FILE, STASH_DIR


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


# -- one writer per folder and its subtree ---------------------------------------------------------------


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


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when that cannot be told."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing, no such process, access denied: unknown
        return None


def _running(holder: dict[str, Any]) -> bool:
    """True when the process a lock on this host names still runs: its pid is alive and, where the lock
    recorded when that process started, it is the same process (a pid reused since by another is not)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not _alive(pid):
        return False
    recorded = holder.get("pid_started")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        actual = _process_started(pid)
        if actual is not None and abs(actual - recorded) > 1.0:
            return False
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    """A lock file's holder; None when there is no lock file, {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _who(holder: dict[str, Any]) -> str:
    return f"'{holder.get('command', '?')}' (pid {holder.get('pid')} on {holder.get('host')})"


class FolderLock:
    """``DIR/.edgeprune.lock``, created exclusively, naming the pid, host and command that writes ``DIR``.

    It covers the folder's whole subtree: it is refused while a live process holds the lock of a folder
    above ``DIR`` or below it.
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        """Describe the lock of ``folder`` for ``command``; :meth:`acquire` takes it."""
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.note = ""  # said aloud by the CLI: a stale lock taken over
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        return _read_lock(self.path)

    def acquire(self) -> FolderLock:
        """Take the lock; refuse (one line) while a live process holds it or a lock above or below it; take over a
        dead one's, said in ``note``."""
        host = socket.gethostname()
        mine = {"pid": os.getpid(), "host": host, "command": self.command, "started": time.time(),
                "pid_started": _process_started(os.getpid())}  # fmt: skip
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between the two calls
                who = _who(holder)
                if holder and holder.get("host") == host and not _running(holder):
                    reused = _alive(holder["pid"]) if isinstance(holder.get("pid"), int) else False
                    self.note = f"{self.folder}: took over the lock of {who}, which is no longer running" + (
                        f" (pid {holder['pid']} is now another process)" if reused else ""
                    )
                elif not holder:
                    self.note = f"{self.folder}: replaced an unreadable lock file {self.path.name}"
                elif holder.get("host") != host:
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
            # Checked after taking the lock: of two commands racing for nested folders, at least one sees the other.
            conflict = self._subtree_conflict(host)
            if conflict:
                self.release()
                raise EdgepruneError(conflict)
            return self
        raise EdgepruneError(f"{self.folder}: could not take the lock {self.path} (another run keeps taking it)")

    def _blocks(self, holder: dict[str, Any] | None, host: str) -> bool:
        """True when a lock above or below this folder belongs to another command that may still run."""
        if not holder:  # none, or unreadable: an unreadable lock elsewhere is not ours to judge
            return False
        if holder.get("host") != host:
            return True  # cannot tell whether it still runs
        return holder.get("pid") != os.getpid() and _running(holder)

    def _subtree_conflict(self, host: str) -> str | None:
        """Why another command's lock on a folder above or below this one forbids writing here, or None."""
        me = self.folder.resolve()
        for parent in me.parents:
            holder = _read_lock(parent / LOCK_FILE)
            if self._blocks(holder, host):
                assert holder is not None
                return f"{self.folder} is inside {parent}, which is being written by {_who(holder)}; wait for it"
        for dirpath, dirnames, filenames in os.walk(me):  # symbolic links are not followed
            dirnames[:] = [d for d in dirnames if d != STASH_DIR]
            if dirpath != str(me) and LOCK_FILE in filenames:
                holder = _read_lock(Path(dirpath) / LOCK_FILE)
                if self._blocks(holder, host):
                    assert holder is not None
                    return f"{dirpath}, inside {self.folder}, is being written by {_who(holder)}; wait for it"
        return None

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


__all__ = ["FolderLock", "locked"]
