"""The channel multiple this CPU's kernels prefer: ``--round-to auto`` (``prune``'s default), and the width warning.

A pruned width that is not a multiple of the vector width the backend's kernels tile by can run slower than
a wider one (a MobileNetV3-like net at FA 0.5, ``--round-to 1``: 1.204 ms against its parent's 0.852 ms on
onnxruntime; 0.594 ms at ``--round-to 8``). ``preferred_multiple`` times a probe network (a 3x3 conv, a
depthwise 3x3 conv and a 1x1 conv: the kernels of VGG/ResNet and MobileNet blocks) at ragged widths
(:data:`RAGGED`) and at each rounded up to every candidate multiple, interleaved, and at width 1, whose time
stands for the per-call overhead that does not grow with the width and is subtracted (left in, it made large
multiples look cheaper per filter than they are). From the smallest candidate up, a multiple is taken when
rounding the ragged widths up to it, instead of to the multiple taken so far, costs at most
:data:`WORTH` of the time its extra filters would at the rate of the widths they are added to: the kernels
then run those filters nearly free (a staircase at that multiple), so the budget can be spent on them. On a
kernel with no staircase the time grows with the filters and 1 is kept (the paper's widths).

The choice is cached per (CPU model, ISA flags, backend, runtime version, threads) in the user cache folder as a
JSON file, written atomically and range-checked when read back; a corrupt cache is ignored and rewritten.
The measuring function is injectable (``measure=``): the choice logic, the cache and the warning are tested
without timings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeprune.cpu import REPORTED_FLAGS, cpu_flags, cpu_model
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json

CANDIDATES = (1, 4, 8, 16, 32)
FALLBACK_MULTIPLE = 8  # the warning's multiple when nothing was measured on this machine yet
WORTH = 0.5  # a multiple is taken when its extra filters cost at most half their proportional time
# Ragged widths spread over the residues mod 32, so a staircase at any candidate shows in their sum
RAGGED = (33, 37, 41, 45, 49, 53, 57, 61)
OVERHEAD_WIDTH = 1  # the probe at width 1: its time is (nearly) all per-call overhead
CACHE_VERSION = 2  # 1 held times per MAC with the overhead left in

# A measurement: width -> seconds per run of the probe at that width
Measure = Callable[[int], float]


@dataclass(frozen=True)
class Preference:
    """The multiple chosen, why, and where it came from (measured now, or read from the cache)."""

    multiple: int
    reason: str
    backend: str
    threads: int
    cached: bool
    times: dict[int, float]  # probe width -> seconds per run (the overhead width included)

    def as_dict(self) -> dict:
        """The report's and the metadata's form."""
        return {"multiple": self.multiple, "reason": self.reason, "backend": self.backend,
                "threads": self.threads, "cached": self.cached,
                "times_us": {str(k): round(v * 1e6, 3) for k, v in sorted(self.times.items())}}  # fmt: skip


def rounded_width(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple``."""
    return -(-width // multiple) * multiple


def fallback_multiples(multiple: int) -> list[int]:
    """``multiple`` and the smaller candidates, largest first: where a budget out of reach at ``multiple`` goes."""
    return sorted({m for m in CANDIDATES if m <= multiple} | {multiple}, reverse=True)


def probe_widths(ragged: tuple[int, ...] = RAGGED, candidates: tuple[int, ...] = CANDIDATES) -> list[int]:
    """Every width the probe is timed at: the overhead width, the ragged ones and each rounded to each candidate."""
    return sorted({OVERHEAD_WIDTH} | {rounded_width(w, m) for w in ragged for m in candidates})


def _check_times(times: Mapping[int, float], widths: list[int]) -> None:
    """Every width timed, every time positive and finite."""
    if any(w not in times for w in widths):
        raise EdgepruneError("choose_multiple: every probe width needs a time")
    if any(not (0 < times[w] < float("inf")) for w in widths):
        raise EdgepruneError("choose_multiple: every probe width needs a positive, finite time")


def choose_multiple(times: Mapping[int, float], ragged: tuple[int, ...] = RAGGED,
                    candidates: tuple[int, ...] = CANDIDATES, worth: float = WORTH) -> tuple[int, str]:  # fmt: skip
    """The multiple to round widths to, from the probe's ``times`` per width (see the module), and why."""
    _check_times(times, probe_widths(ragged, candidates))
    floor = times[OVERHEAD_WIDTH]
    work = {w: max(t - floor, 1e-3 * t) for w, t in times.items()}  # the part that grows with the width

    def cost(m: int) -> float:
        return sum(work[rounded_width(w, m)] for w in ragged)

    chosen, notes = min(candidates), []
    for m in sorted(candidates):
        if m <= chosen:
            continue
        extra = cost(m) - cost(chosen)
        fair = sum(
            work[rounded_width(w, chosen)] * (rounded_width(w, m) / rounded_width(w, chosen) - 1) for w in ragged
        )
        share = extra / fair if fair > 0 else 0.0
        # a negative share (more filters, less time) reads as a plain "faster" rather than a bare minus sign
        notes.append(f"{chosen}->{m} " + (f"faster with more filters ({share:.2f})" if share < 0 else f"{share:.2f}"))
        if share <= worth:
            chosen = m
    ragged_cost = sum(work[w] / w for w in ragged) / len(ragged)
    rounded_cost = sum(work[rounded_width(w, chosen)] / rounded_width(w, chosen) for w in ragged) / len(ragged)
    reason = (f"per filter, ragged widths take {ragged_cost / rounded_cost:.2f}x the time of widths rounded up to "
              f"{chosen}; a larger multiple is taken when its extra filters cost at most {worth:g} of their "
              f"proportional time: {', '.join(notes)}")  # fmt: skip
    return chosen, reason


def cache_key(backend: str, version: str, threads: int) -> str:
    """The machine-and-runtime key a preference is cached under."""
    flags = ",".join(sorted(f for f in cpu_flags() if f in REPORTED_FLAGS or f.startswith(("avx", "sse", "neon"))))
    text = "\n".join([cpu_model(), flags, backend, version, str(threads)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(cache_dir: Path | None = None) -> Path:
    """The cache file: ``$EDGEPRUNE_CACHE`` (or ``~/.cache/edgeprune``) / ``granularity.json``."""
    if cache_dir is None:
        env = os.environ.get("EDGEPRUNE_CACHE")
        cache_dir = Path(env).expanduser() if env else Path.home() / ".cache" / "edgeprune"
    return Path(cache_dir) / "granularity.json"


def _read_cache(path: Path) -> dict:
    """The cache's entries, each range-checked; {} when the file is missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    good = {}
    for key, entry in data["entries"].items():
        try:
            multiple, reason = entry["multiple"], entry["reason"]
            times = {int(k): float(v) for k, v in entry["times"].items()}
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
        if (isinstance(multiple, int) and not isinstance(multiple, bool) and multiple in CANDIDATES
                and isinstance(reason, str) and len(reason) < 1000 and len(times) <= 4 * len(probe_widths())
                and all(0 < k <= 4096 and 0 < v < float("inf") for k, v in times.items())):  # fmt: skip
            good[key] = {"multiple": multiple, "reason": reason, "times": times}
    return good


def cached_multiple(backend: str, version: str, threads: int, cache_dir: Path | None = None) -> int | None:
    """The multiple cached for this machine and runtime, None if none was measured."""
    entry = _read_cache(cache_path(cache_dir)).get(cache_key(backend, version, threads))
    return entry["multiple"] if entry else None


def preferred_multiple(backend: str, threads: int = 1, *, measure: Measure | None = None,
                       cache_dir: Path | None = None, version: str | None = None) -> Preference:  # fmt: skip
    """The multiple this CPU's kernels want on ``backend`` (``torch`` or ``onnxruntime``), cached per machine."""
    if backend not in ("torch", "onnxruntime"):
        raise EdgepruneError(f"--round-to auto: unknown backend '{backend}' (torch or onnxruntime)")
    version = version if version is not None else runtime_version(backend)
    path, key = cache_path(cache_dir), cache_key(backend, version, threads)
    entries = _read_cache(path)
    if key in entries:
        e = entries[key]
        return Preference(e["multiple"], e["reason"], backend, threads, True, e["times"])
    times = probe_times(measure or default_measure(backend, threads))
    multiple, reason = choose_multiple(times)
    entries[key] = {"multiple": multiple, "reason": reason, "times": times}
    stored = {k: {**e, "times": {str(w): t for w, t in e["times"].items()}} for k, e in entries.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": CACHE_VERSION, "entries": stored})
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
    return Preference(multiple, reason, backend, threads, False, times)


def probe_times(measure: Measure, widths: list[int] | None = None) -> dict[int, float]:
    """Seconds per run of the probe at every width :func:`choose_multiple` needs."""
    return {w: float(measure(w)) for w in (widths or probe_widths())}


def runtime_version(backend: str) -> str:
    """The version of the backend's runtime (``torch`` or ``onnxruntime``)."""
    if backend == "onnxruntime":
        import onnxruntime

        return str(onnxruntime.__version__)
    import torch

    return str(torch.__version__)


def default_backend() -> str:
    """onnxruntime when installed, else torch."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def default_measure(backend: str, threads: int, *, size: int = 28, repeats: int = 50) -> Measure:
    """Times the probe (3x3 conv, depthwise 3x3, 1x1 back) at every width, interleaved round by round, at first call."""
    import torch
    from torch import nn

    def probe(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(32, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1, groups=width),
                             nn.Conv2d(width, 32, 1)).eval()  # fmt: skip

    x = torch.randn(1, 32, size, size)
    times: dict[int, list[float]] = {}

    def measure(width: int) -> float:
        if width not in times:  # the first call times every probe width, interleaved so drift hits all alike
            widths = sorted(set(probe_widths()) | {width})
            runners = {w: _runner(probe(w), x, backend, threads) for w in widths}
            for w in widths:
                times[w] = []
            for _ in range(repeats):
                for w in widths:
                    start = time.perf_counter()
                    runners[w]()
                    times[w].append(time.perf_counter() - start)
        return sorted(times[width])[len(times[width]) // 2]

    return measure


def _runner(model: object, x: object, backend: str, threads: int) -> Callable[[], object]:
    """One forward pass on the backend, warmed up."""
    import torch

    if backend == "onnxruntime":
        import io

        import onnxruntime as ort

        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}

        def run() -> object:
            return session.run(None, feed)
    else:

        def run() -> object:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.inference_mode():
                    return model(x)
            finally:
                torch.set_num_threads(previous)

    for _ in range(3):
        run()
    return run


def off_multiple(widths: Mapping[str, int], multiple: int) -> list[str]:
    """The layers whose width is not a multiple of ``multiple``."""
    return [name for name, w in widths.items() if multiple > 1 and w % multiple]


def width_warning(widths: Mapping[str, int], multiple: int, backend: str, measured: bool = True) -> str | None:
    """One line naming how many pruned layers are off the preferred multiple and the --round-to that fixes it."""
    off = off_multiple(widths, multiple)
    if not off:
        return None
    return (f"warning: {len(off)} of {len(widths)} pruned layers have widths that are not multiples of {multiple}, "
            f"which {backend}'s kernels {'on this CPU prefer' if measured else 'commonly prefer'}, and may run "
            f"slower than wider ones "
            f"(e.g. {off[0]}: {widths[off[0]]}); --round-to {multiple} (or auto) fixes it")  # fmt: skip
