"""The one-line progress bar training shows on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal; in a log, a line a minute and at the end.

    A log (not a terminal) gets periodic lines because a VGG-16 epoch here takes 15 minutes, and
    a job run under nohup or CI should not look hung for that long.
    """

    def __init__(
        self,
        enabled: bool,
        stream: object = None,
        log_interval: float = 60.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.25 if self.tty else log_interval
        self.clock = clock
        self.last = 0.0 if self.tty else clock()

    def update(self, label: str, done: int, total: int, text: str, final: bool = False) -> None:
        """Show ``done``/``total`` steps of ``label`` with ``text``."""
        if not self.enabled:
            return
        now = self.clock()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"{label} [{bar}] {done}/{total} {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """Print a line of its own."""
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


__all__ = ["Progress"]
