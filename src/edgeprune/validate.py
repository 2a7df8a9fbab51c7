"""Checks of numbers from options, files and callers: one place, one wording, one-line errors.

Each ``check_*`` returns the value (converted where that is safe) or raises ``EdgepruneError`` naming
``what``. Booleans are never numbers here (``True`` is an int to Python, not a count to a user).
"""

from __future__ import annotations

import math
import numbers

from edgeprune.errors import EdgepruneError

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are 32-bit


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(value: object, what: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high] (either end open when None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EdgepruneError(f"{what} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise EdgepruneError(f"{what} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise EdgepruneError(f"{what} must be at most {high}, got {value}")
    return value


def check_positive_int(value: object, what: str, *, high: int | None = None) -> int:
    """An integer >= 1 (and <= high)."""
    return check_int(value, what, low=1, high=high)


def check_seed(value: object, what: str = "seed") -> int:
    """A seed in 0..2^32-1: a Python or numpy integer, never a bool; one message for every way to miss (numpy
    refuses negative seeds, torch overflows on larger ones)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        raise EdgepruneError(f"{what} must be an integer from 0 to {MAX_SEED}, got {value!r}")
    return int(value)


def check_count(value: object, what: str, *, zero: bool = False) -> int:
    """A count: a positive integer (or 0 with ``zero``, as warm-up runs may be)."""
    check_int(value, what)
    if value < (0 if zero else 1):  # type: ignore[operator]
        raise EdgepruneError(f"{what} must be {'>= 0' if zero else 'positive'}, got {value}")
    return value  # type: ignore[return-value]


def shown(value: object, limit: int = 40) -> str:
    """A value from a file or a caller for a one-line message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_in(
    value: object, what: str, low: float, high: float, *, integer: bool = False, error: type[Exception] = EdgepruneError
) -> float:
    """A file's field: a finite number (an integer with ``integer``; never a bool) in [low, high].

    ``error`` is the exception raised: a file reader that adds the file's name to the message catches ValueError.
    A float comes back as a float, an integer as an int.
    """
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        if not ok:
            raise error(f"{what} must be an integer in [{low}, {high}], got {shown(value)}")
        return value  # type: ignore[return-value]
    # an int of 400 digits is finite (math.isfinite would overflow on it): only a float can be nan or infinite
    ok = is_number(value) and (not isinstance(value, float) or math.isfinite(value)) and low <= value <= high
    if not ok:
        raise error(f"{what} must be a finite number in [{low:g}, {high:g}], got {shown(value)}")
    return float(value)  # type: ignore[arg-type]


def parse_number(
    text: str,
    what: str,
    kind: type = float,
    *,
    low: float | None = None,
    high: float | None = None,
    span: str | None = None,
    error: type[Exception] = EdgepruneError,
) -> int | float:
    """A number written as text (an option's value): ``kind`` (int or float), finite, in [low, high].

    Out of range, the message says the bound missed ("at least 1"), or with ``span`` the whole range ("from 1 to
    64", ``span`` the unit after it: "" or " pixels"). ``what`` names the option ("" when argparse names it:
    ``error`` is then ``argparse.ArgumentTypeError``); the text is quoted as it was typed.
    """
    try:
        value = kind(text)
    except ValueError:  # also an integer of more than 4,300 digits
        raise error(_named(what, f"must be {'an integer' if kind is int else 'a number'}, got '{text}'")) from None
    if kind is float and not math.isfinite(value):
        raise error(_named(what, f"must be a finite number, got '{text}'"))
    if span is not None and not low <= value <= high:  # type: ignore[operator]
        raise error(_named(what, f"must be from {low} to {high}{span}, got '{text}'"))
    if low is not None and not value >= low:
        raise error(_named(what, f"must be at least {low}, got '{text}'"))
    if high is not None and not value <= high:  # 1e308 warm-up epochs overflowed the schedule's step count
        raise error(_named(what, f"must be at most {high:g}, got '{text}'"))
    return value


def _named(what: str, rest: str) -> str:
    return f"{what} {rest}" if what else rest


def check_finite(value: object, what: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite number in [low, high]."""
    if not is_number(value) or not math.isfinite(value):
        raise EdgepruneError(f"{what} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise EdgepruneError(f"{what} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise EdgepruneError(f"{what} must be at most {high:g}, got {value:g}")
    return float(value)


def check_fraction(value: object, what: str, *, closed: bool = False) -> float:
    """A number in (0, 1) (or [0, 1] with ``closed``)."""
    number = check_finite(value, what)
    if not (0.0 <= number <= 1.0 if closed else 0.0 < number < 1.0):
        interval = "[0, 1]" if closed else "(0, 1)"
        raise EdgepruneError(f"{what} must be in {interval}, got {number:g}")
    return number


__all__ = [
    "MAX_SEED",
    "check_count",
    "check_finite",
    "check_fraction",
    "check_in",
    "check_int",
    "check_positive_int",
    "check_seed",
    "is_number",
    "parse_number",
    "shown",
]
