"""The progress bar long loops show on stderr (decoding, training; latency tables, comparisons and sweeps too).

On a terminal it is a tqdm bar, redrawn in place; in a log (not a terminal) it is a plain line a minute and a
final one, because a VGG-16 epoch here takes 15 minutes and a job run under nohup or CI should not look hung for
that long. It lives in the data layer, the lowest that has a long loop, so every layer above can use it.

``Counter`` is the bar over a study's items (a latency table's grid points, a comparison's runs, a sweep's
points): a terminal only, nothing in a log. While one is open, a training bar below it is drawn under it and
cleared when it ends (its last state written as a line), and ``echo`` prints a stdout line above the bars.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_OPEN: list[Counter] = []  # the counters drawn now (a terminal only): bars opened below them do not stay


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal (where bars are drawn); tests replace it to draw on a capture."""
    return hasattr(stream, "isatty") and bool(stream.isatty())


def echo(text: str) -> None:
    """Print ``text`` on stdout, above any bar being drawn (which is redrawn below it), as ``print`` would."""
    if _OPEN:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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
        self.tty = enabled and is_terminal(self.stream)
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
            # under a Counter (a comparison's runs) the bar is drawn below it and cleared when it ends
            self._bar = tqdm(total=total, desc=label, file=self.stream, leave=not _OPEN, dynamic_ncols=True,
                             mininterval=0)  # fmt: skip
            self._label = label
        now = self.clock()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        self._bar.n = done
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()
        if final:
            if not self._bar.leave:  # its last state stays, as a line above the bars
                tqdm.write(str(self._bar), file=self.stream)
            self._bar.close()
            self._bar = None

    def line(self, text: str) -> None:
        """Print a line of its own (above a bar being drawn)."""
        if not self.enabled:
            return
        if self._bar is not None or (self.tty and _OPEN):
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


class Counter:
    """A bar over ``total`` items on stderr, a terminal only (nothing in a log or with ``enabled`` False).

    ``advance(n)`` counts items done, ``describe(text)`` names the one under way (after ``label``); a context
    manager, closed on leaving. ``n`` is the count so far, kept whether or not a bar is drawn.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream: object = None, unit: str = "it"):
        self.total, self.label, self.n = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and is_terminal(self.stream)
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.stream, unit=unit, leave=True, dynamic_ncols=True,
                             mininterval=0)  # fmt: skip
            _OPEN.append(self)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        """Name the item under way: the bar reads ``label text``."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self.label} {text}" if text else self.label)

    def close(self) -> None:
        """End the bar (left on the terminal at its count, under its label alone)."""
        if self._bar is not None:
            self._bar.set_description_str(self.label, refresh=False)
            self._bar.close()
            self._bar = None
            _OPEN.remove(self)

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Waiter:
    """Advances a counter as tasks finish, in whatever order (``wait``: Ray's ``ray.wait``), while their results
    are taken in another: ``until(refs)`` returns once those are done, having counted every task that finished."""

    def __init__(self, wait: Callable, refs: Iterable, counter: Counter, weight: int = 1):
        self.wait, self.counter, self.weight = wait, counter, weight
        self.pending = list(dict.fromkeys(refs)) if counter.enabled else []  # distinct, in order

    def until(self, refs: Iterable) -> None:
        """Wait for ``refs`` (any not among the pending ones count as done), counting each task as it finishes."""
        needed = set(refs)
        while self.pending and any(r in needed for r in self.pending):
            ready, self.pending = self.wait(self.pending, num_returns=1)
            self.counter.advance(len(ready) * self.weight)


__all__ = ["Counter", "Progress", "Waiter", "echo", "is_terminal"]
