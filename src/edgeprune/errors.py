"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class EdgepruneError(Exception):
    """A user-facing error: bad input, unreachable target, corrupt file."""
