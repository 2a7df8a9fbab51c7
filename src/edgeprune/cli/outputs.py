"""The folders a command writes: locked, listed in a manifest, and put back as they were if it fails."""

from __future__ import annotations

import sys
from pathlib import Path

from edgeprune.cli.signals import _signals_deferred
from edgeprune.errors import EdgepruneError


class Outputs:
    """The folders a command writes: each locked while it runs (one writer per folder and its subtree); a folder
    the command created (and the parents it created) is removed again if it fails before writing anything
    resumable (a training checkpoint); files that --force replaces come back if it fails; every file it writes is
    listed in the folder's manifest, which is all a later --force removes (see edgeprune.files.OutputFolder)."""

    def __init__(self) -> None:
        self.locks: list = []
        self.created: list[list[Path]] = []  # per --out, deepest first: the folder, then the parents made for it
        self.folders: list = []  # edgeprune.files.OutputFolder

    def lock(self, path: Path, command: str) -> None:
        """Hold ``path``'s writer lock until the command ends; say so when a dead run's lock is taken over."""
        from edgeprune.locks import FolderLock

        lock = FolderLock(path, command).acquire()
        self.locks.append(lock)
        if lock.note:
            sys.stderr.write(f"edgeprune {command}: note: {lock.note}\n")

    def adopt(self, path: Path, command: str) -> None:
        """Lock a folder the command continues in place (training a model folder); list what it writes there."""
        self.lock(path, command)
        self._open(path, command, str(path), force=False, keep=True)

    def _open(self, path: Path, command: str, label: str, force: bool, keep: bool) -> None:
        from edgeprune.files import OutputFolder

        folder = OutputFolder(path, command, label)
        self.folders.append(folder)  # before it moves anything: close() finishes whatever open() did
        with _signals_deferred():  # files moving in and out of the stash: never stopped half-way
            folder.open(force=force, keep=keep)
        for note in folder.notes:
            sys.stderr.write(f"edgeprune {command}: note: {note}\n")
        folder.notes = []

    def prepare(self, out: str, force: bool, command: str, keep: bool = False) -> Path:
        """Create or lock ``out``; it must be empty unless ``force`` (the files an earlier edgeprune command listed
        in its manifest are set aside, removed when the command succeeds and put back if it fails) or ``keep``
        (resume: its files are continued)."""
        import os

        path = Path(out)
        if path.exists() and not path.is_dir():
            raise EdgepruneError(f"--out {out}: exists and is not a folder")
        if not path.exists():
            missing = [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(parents=True)
            except OSError as e:
                raise EdgepruneError(f"--out {out}: cannot create folder ({e.strerror})") from None
            self.created.append(missing)
        if not os.access(path, os.W_OK):
            raise EdgepruneError(f"--out {out}: folder is not writable")
        self.lock(path, command)
        self._open(path, command, f"--out {out}", force=force, keep=keep)
        return path

    def close(self, failed: bool) -> None:
        """Release the locks; after a failure, put back what --force set aside and remove the folders this command
        created that hold nothing resumable."""
        from edgeprune.files import remove_tree

        with _signals_deferred(raise_after=False):  # a signal must not stop the files going back; main() reports it
            for folder in self.folders:
                for note in folder.close(failed):
                    sys.stderr.write(f"edgeprune: note: {note}\n")
            for path, *parents in self.created if failed else []:
                if path.is_dir() and not any(path.rglob("checkpoint.safetensors")):
                    remove_tree(path)
                for parent in parents:
                    try:
                        parent.rmdir()  # only while empty: something else may have been put there meanwhile
                    except OSError:
                        break
            for lock in reversed(self.locks):
                lock.release()
            self.locks, self.created, self.folders = [], [], []


OUTPUTS = Outputs()  # the one command a process runs: main() closes it


def prepare_out_dir(out: str, force: bool, command: str = "edgeprune", keep: bool = False) -> Path:
    """Check, create and lock ``out`` for this command (see :class:`Outputs`)."""
    return OUTPUTS.prepare(out, force, command, keep)
