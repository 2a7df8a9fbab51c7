"""What the benchmark scripts share: provenance (commit, machine, date, the exact command), report files, options.

Every script writes a markdown report and most a JSON record beside it, each headed by where it came from: the
command line that made it, the UTC date, the git commit (and whether the tree had uncommitted changes) and the
machine. ``write_report`` writes the pair atomically; ``parser`` gives a script's argparse parser the options
the scripts have in common (``--out``/``--results``, ``--threads``, ``--quick``), each only where it is used.

Scripts import it as a sibling (``from common import ...``): Python puts the script's own folder first on the path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


# -- provenance --------------------------------------------------------------------------------------------------


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def git_commit(short: bool = False) -> dict:
    """The commit the benchmark ran at, and whether the work tree had uncommitted changes."""
    commit = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    return {"commit": commit or "unknown", "dirty": bool(_git("status", "--porcelain"))}


def commit_id(short: bool = False) -> str:
    """The bare commit hash (empty where git is not at hand), for reports that record only that."""
    return _git("rev-parse", *(["--short"] if short else []), "HEAD")


def utc_date(fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """Now, in UTC, as ``fmt`` writes it (``"iso"``: ISO 8601 to the second)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="seconds") if fmt == "iso" else now.strftime(fmt)


def command_line(script: str | None = None, prefix: str = "python", quote: bool = True) -> str:
    """The exact command that ran: ``prefix``, the script (``sys.argv[0]`` relative to the repository, or
    ``script``) and its arguments, shell-quoted unless ``quote`` is off."""
    path = script or os.path.relpath(sys.argv[0], ROOT)
    words = [*([prefix] if prefix else []), Path(path).as_posix(), *sys.argv[1:]]
    return shlex.join(words) if quote else " ".join(words)


def machine() -> dict:
    """The machine: CPU, cores, memory, library versions (edgeprune.measure's ``machine_info``)."""
    from edgeprune.measure import machine_info

    return machine_info()


def provenance(script: str | None = None, short: bool = False) -> dict:
    """The header of a result: the exact command, the date, the commit and its dirty flag, the machine."""
    return {"command": command_line(script), "date": utc_date(), **git_commit(short), "machine": machine()}


def runs_provenance(folder: Path) -> dict:
    """Which runs, the command line, the date and the short commit: the header of a re-measurement's files
    (pipeline_time.py's quiet_times, paired_accuracy.py's paired)."""
    return {
        "runs": str(folder),
        "command": command_line(sys.argv[0], quote=False),
        "date": utc_date(),
        "commit": commit_id(short=True),
    }


# -- report files ------------------------------------------------------------------------------------------------


def json_text(record: object, indent: int = 2, newline: bool = True) -> str:
    """A record as the JSON the reports keep: indented, with a final newline unless ``newline`` is off."""
    return json.dumps(record, indent=indent) + ("\n" if newline else "")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place), its folder made first."""
    from edgeprune.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(text))


def write_report(
    stem: Path,
    markdown: str | None,
    record: object | None = None,
    *,
    indent: int = 2,
    newline: bool = True,
    echo: bool | Callable[[str], None] = False,
) -> None:
    """Write ``stem``.md (the markdown) and ``stem``.json (the record, as ``json_text`` writes it), atomically.

    Either may be None to write only the other. ``echo`` prints the markdown after writing (or passes it to the
    function given)."""
    stem = Path(stem)
    if record is not None:
        write_text(stem.with_name(stem.name + ".json"), json_text(record, indent, newline))
    if markdown is not None:
        write_text(stem.with_name(stem.name + ".md"), markdown)
        if echo:
            (echo if callable(echo) else print)(markdown)


# -- options -----------------------------------------------------------------------------------------------------


def parser(
    doc: str | None,
    *,
    out: dict | None = None,
    results: dict | None = None,
    threads: dict | None = None,
    quick: str | None = None,
) -> argparse.ArgumentParser:
    """An ArgumentParser described by the first line of ``doc``, with the common options asked for.

    ``out``, ``results``, ``threads``: the keyword arguments of ``--out``, ``--results``, ``--threads`` (default,
    help, required; ``--threads`` is an int unless ``type`` says otherwise); ``quick``: the help of ``--quick``.
    """
    common = argparse.ArgumentParser(add_help=False)
    if out is not None:
        common.add_argument("--out", **out)
    if results is not None:
        common.add_argument("--results", **results)
    if threads is not None:
        common.add_argument("--threads", **{"type": int, **threads})
    if quick is not None:
        common.add_argument("--quick", action="store_true", help=quick)
    return argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None, parents=[common])


# -- the work folder ---------------------------------------------------------------------------------------------


def run_locked(
    script: str,
    work: str | Path,
    run: Callable[[str], dict],
    write: Callable[[dict], None],
    say: Callable[[str], None] | None = None,
) -> None:
    """Hold ``work``'s one-writer lock while ``run(command)`` measures, then ``write`` its result; errors in one line.

    ``command`` is the exact command line (``python benchmarks/SCRIPT ...``), as the reports record it.
    """
    from edgeprune.errors import EdgepruneError
    from edgeprune.locks import FolderLock

    command = shlex.join(["python", os.path.relpath(script, ROOT), *sys.argv[1:]])
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(work, command) as lock:
            if lock.note:
                (say or print)(lock.note)
            result = run(command)
        write(result)
    except EdgepruneError as e:
        sys.exit(f"{Path(script).name}: error: {e}")
