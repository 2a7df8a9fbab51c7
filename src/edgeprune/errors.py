"""The one exception type the CLI turns into a one-line error and a non-zero exit, and how to shorten others."""

MAX_MESSAGE = 200  # characters of another library's message kept in one of ours


class EdgepruneError(Exception):
    """A user-facing error: bad input, unreachable target, corrupt file."""


class UnreachableError(EdgepruneError):
    """A budget no network the plan's settings allow can meet (a coarser ``round_to`` may be why)."""


def first_line(e: BaseException, *, with_type: bool = False, limit: int = MAX_MESSAGE) -> str:
    """An exception's first non-blank line of text, cut to ``limit`` characters, or its type's name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0][:limit]
    return f"{type(e).__name__}: {text}" if with_type else text


__all__ = ["MAX_MESSAGE", "EdgepruneError", "UnreachableError", "first_line"]
