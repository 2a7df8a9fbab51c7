"""The progress bar long loops show on stderr (decoding, training; latency tables, comparisons and sweeps too).

On a terminal it is a tqdm bar, redrawn in place; in a log (not a terminal) it is a plain line a minute and a
final one, because a VGG-16 epoch here takes 15 minutes and a job run under nohup or CI should not look hung for
that long. It lives in the data layer, the lowest that has a long loop, so every layer above can use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """A one-line progress bar on stderr: tqdm on a terminal; in a log, a line a minute and at the end.

    ``update(label, done, total, text)`` moves the bar (a new ``label`` starts a new bar), ``final=True`` ends
    it; ``line(text)`` prints a line of its own; ``track(items, label)`` counts an iterable. With
    ``tty_only`` nothing is written unless the stream is a terminal (the data loaders' decoding counters).
    """

    def __init__(
        self,
        enabled: bool,
        stream: object = None,
        log_interval: float = 60.0,
        clock: Callable[[], float] = time.perf_counter,
        *,
        tty_only: bool = False,
    ):
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and bool(self.stream.isatty())
        self.enabled = enabled and (self.tty or not tty_only)
        self.interval = 0.25 if self.tty else log_interval
        self.clock = clock
        self.last = 0.0 if self.tty else clock()
        self._bar = None  # the tqdm bar being drawn (terminal only)
        self._label = ""

    def update(self, label: str, done: int, total: int, text: str, final: bool = False) -> None:
        """Show ``done``/``total`` steps of ``label`` with ``text``."""
        if not self.enabled:
            return
        if self.tty:
            self._draw(label, done, total, text, final)
            return
        now = self.clock()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"{label} [{bar}] {done}/{total} {text}\n")
        self.stream.flush()

    def _draw(self, label: str, done: int, total: int, text: str, final: bool) -> None:
        """The terminal's tqdm bar: started for a new label, moved to ``done``, closed when ``final``."""
        from tqdm import tqdm

        if self._bar is not None and (label != self._label or self._bar.total != total):
            self._bar.close()
            self._bar = None
        if self._bar is None:
            self._bar = tqdm(total=total, desc=label, file=self.stream, leave=True, dynamic_ncols=True, mininterval=0)
            self._label = label
        now = self.clock()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        self._bar.n = done
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()
        if final:
            self._bar.close()
            self._bar = None

    def line(self, text: str) -> None:
        """Print a line of its own (above a bar being drawn)."""
        if not self.enabled:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def track(self, items: Iterable[T], label: str, total: int | None = None, unit: str = "") -> Iterator[T]:
        """Yield ``items``, counting them on the bar (``total`` defaults to ``len(items)``)."""
        count = total if total is not None else len(items)  # type: ignore[arg-type]
        done = 0
        for item in items:
            yield item
            done += 1
            self.update(label, done, count, unit, final=done == count)
        if done != count:
            self.update(label, done, count, unit, final=True)


__all__ = ["Progress"]
