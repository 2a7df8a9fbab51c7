"""The ``edgeprune`` command line: a thin layer over the library, one subcommand per module.

Each subcommand module has ``add(subparsers)`` (its options, mostly from the shared groups in
``edgeprune.cli.options``) and ``run(args)`` (calls the library, prints; returns the exit status or None).
Building the parser imports no torch: ``edgeprune --help`` and every ``COMMAND --help`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from edgeprune import __version__
from edgeprune.cli import bench, compare, evaluate, export, lut, models, profile, prune, sweep, train
from edgeprune.cli.outputs import OUTPUTS
from edgeprune.cli.signals import DEFERRED, _catch_signals, restore_signals, signal_name
from edgeprune.errors import EdgepruneError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line usage error and exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


# command -> (add, run), in the order --help lists them
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    module.__name__.rpartition(".")[2]: (module.add, module.run)
    for module in (models, profile, prune, bench, export, lut, sweep, train, evaluate, compare)
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
        prog="edgeprune",
        description="Compress CNNs to fit a parameter, FLOP or memory budget, train them, and measure them on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure a user can cause is one line on stderr and a non-zero status."""
    failed = True
    try:
        code = COMMANDS[args.command][1](args) or 0  # 1: written, but short of what was asked
        failed = False
        return code
    except EdgepruneError as e:
        sys.stderr.write(f"edgeprune {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)
        by = f" ({signal_name(signum)})" if signum != 2 else ""
        sys.stderr.write(f"edgeprune {args.command}: interrupted{by}\n")
        return 128 + signum
    except OSError as e:  # a file the library did not expect to fail (disk full, a folder vanished): one line
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"edgeprune {args.command}: error: {e.strerror or e}{where}\n")
        return 2
    finally:
        OUTPUTS.close(failed)


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """A warning as one line on stderr ("warning: ..."), not Python's file:line plus source line."""
    return f"warning: {' '.join(str(message).split())}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return a non-zero status."""
    warnings.formatwarning = _one_line_warning  # the CLI prints; the library only warns
    try:
        args = build_parser().parse_args(argv)
    except EdgepruneError as e:  # a number parsed at parse time (options.number): one line, as the library's
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not str(a).startswith("-")]
        sys.stderr.write(f"edgeprune {words[0] if words else ''}: error: {e}\n".replace(" :", ":"))
        return 2
    DEFERRED.update(depth=0, pending=None)
    previous = _catch_signals()  # SIGTERM and SIGHUP clean up as Ctrl-C does; exit status 128 + the signal
    try:
        code = _run(args)
    finally:
        restore_signals(previous)
    if DEFERRED["pending"]:  # it came as the command finished: its output is complete, but it was asked to stop
        sys.stderr.write(f"edgeprune {args.command}: {signal_name(DEFERRED['pending'])} as it finished\n")
        return 128 + DEFERRED["pending"]
    return code


__all__ = ["COMMANDS", "build_parser", "main"]
