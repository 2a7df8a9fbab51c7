"""Stop signals: SIGINT, SIGTERM and SIGHUP stop a command as Ctrl-C does, never while files are being moved."""

from __future__ import annotations


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the command is, as Ctrl-C is: the same clean-up runs (the files
    --force set aside go back, temporary files and the folders the command created go, locks are released)."""

    def __init__(self, signum: int) -> None:
        """The signal ``signum`` stopped the command."""
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
DEFERRED: dict = {"depth": 0, "pending": None}  # inside _signals_deferred: the first signal waits there


def _on_signal(signum: int, frame: object) -> None:
    """Stop the command by raising :class:`Interrupted`, unless files are being moved: then once they are."""
    if DEFERRED["depth"]:
        DEFERRED["pending"] = DEFERRED["pending"] or signum
        return
    raise Interrupted(signum)


class _signals_deferred:  # lower case: used as a function would be, in `with _signals_deferred():`
    """Hold a stop signal until the block ends (then raise it, if ``raise_after``)."""

    def __init__(self, raise_after: bool = True) -> None:
        self.raise_after = raise_after

    def __enter__(self) -> None:
        DEFERRED["depth"] += 1

    def __exit__(self, kind: object, *exc: object) -> None:
        DEFERRED["depth"] -= 1
        if kind is None and self.raise_after and not DEFERRED["depth"] and DEFERRED["pending"]:
            raise Interrupted(DEFERRED["pending"])


def _catch_signals() -> dict:
    """Install the stop-signal handlers (and ignore SIGXFSZ); return the handlers they replace."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return {}
    previous = {}
    for name in _STOP_SIGNALS:
        num = getattr(signal, name, None)
        if num is not None and signal.getsignal(num) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays so
            previous[num] = signal.signal(num, _on_signal)
    if hasattr(signal, "SIGXFSZ"):  # over 'ulimit -f' a write then fails (EFBIG, one line) instead of killing us
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return previous


def restore_signals(previous: dict) -> None:
    """Put back the handlers :func:`_catch_signals` replaced."""
    import signal

    for num, handler in previous.items():
        signal.signal(num, handler)


def signal_name(signum: int) -> str:
    """SIGTERM for 15, and so on."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
