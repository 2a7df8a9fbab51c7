"""The channel multiple this CPU's kernels prefer: ``--round-to auto``, and the warning on widths off it.

A pruned width that is not a multiple of the vector width the backend's kernels tile by can run slower than
a wider one (a MobileNetV3-like net at FA 0.5, ``--round-to 1``: 1.204 ms against its parent's 0.852 ms on
onnxruntime; 0.594 ms at ``--round-to 8``). ``preferred_multiple`` times a small conv and a depthwise conv
at a ragged width ``w`` and at ``w`` rounded up to each candidate multiple, interleaved, and picks the
smallest multiple beyond which the latency per kept multiply-add stops improving. The choice is cached per
(CPU model, ISA flags, backend, runtime version, threads) in the user cache folder as a JSON file, written
atomically and range-checked when read back; a corrupt cache is ignored and rewritten.

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
IMPROVEMENT = 0.05  # a larger multiple must cut the latency per kept MAC by over 5% to be worth it
RAGGED = 37  # the odd width the candidates round up from (37 -> 40, 48, 64)
CACHE_VERSION = 1

# A measurement: (multiple, width) -> seconds per run of the probe at that width
Measure = Callable[[int, int], float]


@dataclass(frozen=True)
class Preference:
    """The multiple chosen, why, and where it came from (measured now, or read from the cache)."""

    multiple: int
    reason: str
    backend: str
    threads: int
    cached: bool
    per_mac: dict[int, float]  # candidate multiple -> seconds per kept multiply-add (relative units)

    def as_dict(self) -> dict:
        """The report's and the metadata's form."""
        return {"multiple": self.multiple, "reason": self.reason, "backend": self.backend,
                "threads": self.threads, "cached": self.cached,
                "per_mac": {str(k): v for k, v in sorted(self.per_mac.items())}}  # fmt: skip


def rounded_width(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple``."""
    return -(-width // multiple) * multiple


def choose_multiple(per_mac: Mapping[int, float], improvement: float = IMPROVEMENT) -> tuple[int, str]:
    """The smallest multiple no larger multiple beats by over ``improvement`` per kept MAC, and why."""
    if not per_mac or any(not (v > 0 and v < float("inf")) for v in per_mac.values()):
        raise EdgepruneError("choose_multiple: every candidate needs a positive, finite time per MAC")
    ordered = sorted(per_mac)
    for m in ordered:
        better = [b for b in ordered if b > m and per_mac[b] < per_mac[m] * (1 - improvement)]
        if not better:
            worst = per_mac[ordered[0]] / per_mac[m]
            reason = (f"multiples above {m} cut the time per kept MAC by under {100 * improvement:.0f}%; "
                      f"{m} runs {worst:.2f}x as fast per MAC as multiple {ordered[0]}")  # fmt: skip
            return m, reason
    raise AssertionError("unreachable: the largest multiple has none larger")


def probe_per_mac(measure: Measure, width: int = RAGGED, candidates: tuple[int, ...] = CANDIDATES) -> dict[int, float]:
    """Seconds per kept MAC at ``width`` rounded to each candidate (the MACs of a probe grow with the width)."""
    return {m: measure(m, rounded_width(width, m)) / rounded_width(width, m) for m in candidates}


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
            per_mac = {int(k): float(v) for k, v in entry["per_mac"].items()}
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
        if (isinstance(multiple, int) and not isinstance(multiple, bool) and multiple in CANDIDATES
                and isinstance(reason, str) and len(reason) < 500 and set(per_mac) <= set(CANDIDATES)
                and all(0 < v < float("inf") for v in per_mac.values())):  # fmt: skip
            good[key] = {"multiple": multiple, "reason": reason, "per_mac": per_mac}
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
        return Preference(e["multiple"], e["reason"], backend, threads, True, e["per_mac"])
    per_mac = probe_per_mac(measure or default_measure(backend, threads))
    multiple, reason = choose_multiple(per_mac)
    entries[key] = {"multiple": multiple, "reason": reason, "per_mac": {str(k): v for k, v in per_mac.items()}}
    for e in entries.values():
        e["per_mac"] = {str(k): v for k, v in e["per_mac"].items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
    return Preference(multiple, reason, backend, threads, False, per_mac)


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


def default_measure(backend: str, threads: int, *, size: int = 28, repeats: int = 15) -> Measure:
    """Times a 1x1 conv, a depthwise 3x3 conv and a 1x1 conv back at a width (a MobileNet block), interleaved."""
    import torch
    from torch import nn

    def block(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(32, width, 1), nn.Conv2d(width, width, 3, padding=1, groups=width),
                             nn.Conv2d(width, 32, 1)).eval()  # fmt: skip

    x = torch.randn(1, 32, size, size)
    runners: dict[int, Callable[[], object]] = {}

    def runner(width: int) -> Callable[[], object]:
        if width not in runners:
            runners[width] = _runner(block(width), x, backend, threads)
        return runners[width]

    times: dict[int, list[float]] = {}

    def measure(multiple: int, width: int) -> float:
        if not times:  # the first call times every candidate, interleaved round by round
            widths = sorted({rounded_width(RAGGED, m) for m in CANDIDATES} | {width})
            for _ in range(repeats):
                for w in widths:
                    run = runner(w)
                    start = time.perf_counter()
                    run()
                    times.setdefault(w, []).append(time.perf_counter() - start)
        if width not in times:
            run = runner(width)
            times[width] = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times[width].append(time.perf_counter() - start)
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
