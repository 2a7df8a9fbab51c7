"""How busy the machine was while a run trained: honest times (issue 26, item 5).

Every training epoch records the 1-minute load average at its end and the cores the process may use
(``machine_load``). An epoch was taken *under load* when the load average exceeds those cores by more than
half a core: more threads wanted to run than there were cores, so other processes took CPU time from the run
(a run's own threads count in the load, which is why the limit is the cores, not zero). The rule is ``bench``'s
(its note on a load average above the cores), with half a core of slack for the run's own spin-waiting threads.
A 1-minute average lags: it also counts the minute before a short epoch, so it errs towards marking.
"""

from __future__ import annotations

import os

from edgeprune.runtime import default_threads

LOAD_SLACK = 0.5  # cores of load above the usable cores still taken as the run's own


def machine_load() -> dict:
    """``{"load_1m", "cores"}`` now, for an epoch's record; {} where the OS keeps no load average."""
    if not hasattr(os, "getloadavg"):
        return {}
    return {"load_1m": round(os.getloadavg()[0], 2), "cores": default_threads()}


def loaded_epochs(history: list[dict]) -> list[dict]:
    """The epochs of ``history`` taken under load (those without a load reading are not)."""
    return [
        h
        for h in history
        if isinstance(h.get("load_1m"), (int, float)) and isinstance(h.get("cores"), int)
        and h["load_1m"] > h["cores"] + LOAD_SLACK
    ]  # fmt: skip


def peak_load(history: list[dict]) -> tuple[float, int] | None:
    """The highest load average of ``history`` relative to its cores, as (load, cores); None without readings."""
    readings = [(h["load_1m"], h["cores"]) for h in history if "load_1m" in h and "cores" in h]
    return max(readings, key=lambda r: r[0] - r[1]) if readings else None


def load_figures(histories: list[list[dict]]) -> dict:
    """Of some runs' epoch ``histories``: whether any epoch was taken under load, how many, and the highest load as
    [load, cores] (None when no epoch carries a load reading: a run recorded before epochs did)."""
    history = [h for run in histories for h in run]
    peak = peak_load(history)
    loaded = loaded_epochs(history)
    return {"under_load": bool(loaded), "loaded_epochs": len(loaded), "peak_load": list(peak) if peak else None}


__all__ = ["LOAD_SLACK", "load_figures", "loaded_epochs", "machine_load", "peak_load"]
