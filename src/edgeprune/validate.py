"""Checks of numbers from options, files and callers: one place, one wording, one-line errors.

Each ``check_*`` returns the value (converted where that is safe) or raises ``EdgepruneError`` naming
``what``. Booleans are never numbers here (``True`` is an int to Python, not a count to a user).
"""

from __future__ import annotations

import math

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
    """A seed in 0..2^32-1."""
    return check_int(value, what, low=0, high=MAX_SEED)


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
    "check_finite",
    "check_fraction",
    "check_int",
    "check_positive_int",
    "check_seed",
    "is_number",
]
