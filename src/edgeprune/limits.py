"""Size caps on what files and options may make edgeprune allocate, and strict reading of small JSON files.

One set of caps holds every input shape, wherever it comes from: ``--input-size`` and ``--in-channels``, a
model.json's ``input_shape``, an .onnx file's declared input, a latency table's ``input_shape``. An input
is 1 to ``MAX_INPUT_DIMS`` positive dimensions (C,), (C, L), (C, H, W) or (C, D, H, W): at most
``MAX_INPUT_CHANNELS`` channels, every side of an image or volume at most ``MAX_INPUT_SIZE``, and at most
``MAX_INPUT_ELEMENTS`` values in all (the 3 x 4096 x 4096 the largest ``--input-size`` gives, 200 MB of fp32).

A model within those caps can still need more memory than the machine has (a class count of a billion, a
4096 x 4096 input through a wide network). ``check_memory`` refuses a model whose estimated bytes (parameters
and buffers, plus the input and every layer's output, computed from shapes on the meta device or from an ONNX
graph's inferred shapes, before anything is allocated) exceed the memory available now (within a cgroup's
limit or this process's ``ulimit -d``/``-v``, if lower).

``read_json`` reads a record or a table: at most ``MAX_JSON_BYTES``, nested at most ``MAX_JSON_DEPTH`` deep,
and every failure one ``EdgepruneError`` line (a 5,000-deep document is a RecursionError inside ``json``).
This module imports neither torch nor numpy: the ONNX reader and the argument parser use it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError, first_line

MAX_INPUT_SIZE = 4096  # pixels a side: a 3x4096x4096 input is 200 MB before any activation
MAX_INPUT_CHANNELS = 4096  # channels of one input (hyperspectral images have a few hundred)
MAX_INPUT_DIMS = 4  # (C,), (C, L), (C, H, W) or (C, D, H, W)
MAX_INPUT_ELEMENTS = 3 * MAX_INPUT_SIZE * MAX_INPUT_SIZE  # values of one input: the most --input-size gives
MAX_CLASSES = 1 << 24  # --num-classes (model.json's widths have the same bound)
MAX_EPOCHS = 1_000_000  # --epochs and --warmup-epochs: far above any run, far below float overflow
MAX_THREADS = 4096  # --threads, and a latency table's threads: more than any machine's cores, far below int32
MAX_JSON_BYTES = 64 << 20  # a run record or latency table larger than this is refused unread
MAX_JSON_DEPTH = 32  # nesting of a run record or latency table (theirs is at most 5)
UNKNOWN_MEMORY = 8 << 30  # what check_memory allows when the memory available cannot be read


def is_int(value: object, low: int, high: int) -> bool:
    """True for an int (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    """True for a finite int or float (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):  # an int of 400 digits is finite, math.isfinite overflows
        return False
    return low <= value <= high


def input_shape_problem(shape: object) -> str | None:
    """What is wrong with an input shape (no batch dimension) under the caps, or None."""
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= MAX_INPUT_DIMS:
        return f"must be 1 to {MAX_INPUT_DIMS} dimensions such as [3, 32, 32]"
    if not all(is_int(d, 1, MAX_INPUT_ELEMENTS) for d in shape):
        return "must be positive integers (a dimension of 0 holds no input)"
    if len(shape) >= 2 and shape[0] > MAX_INPUT_CHANNELS:
        return f"has {shape[0]} channels, more than {MAX_INPUT_CHANNELS}"
    if len(shape) >= 3 and max(shape[1:]) > MAX_INPUT_SIZE:
        return f"has a side of {max(shape[1:])}, more than {MAX_INPUT_SIZE} pixels"
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        most = f"{MAX_INPUT_ELEMENTS:,} (3 x {MAX_INPUT_SIZE} x {MAX_INPUT_SIZE})"
        return f"holds {math.prod(shape):,} values, more than {most}"
    return None


def check_input_shape(shape: object, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple when it is within the caps; else a one-line error that names ``what`` it is."""
    problem = input_shape_problem(shape)
    if problem is not None:
        text = repr(shape) if len(repr(shape)) <= 60 else repr(shape)[:57] + "..."
        raise EdgepruneError(f"{what} {text} {problem}")
    return tuple(shape)  # type: ignore[arg-type]


def available_memory() -> int:
    """Bytes of memory available now; less when a cgroup v2 limit (containers) or this process's own limits
    (``ulimit -d``, ``ulimit -v``) leave less room."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no reading of the memory: a fixed cap rather than none
        available = UNKNOWN_MEMORY
    try:
        base = Path("/sys/fs/cgroup")
        limit = (base / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, max(0, int(limit) - int((base / "memory.current").read_text())))
    except (OSError, ValueError):
        pass
    return min(available, _rlimit_room())


def _rlimit_room() -> int:
    """What this process's data and address-space limits still allow (psutil sees the machine, not them)."""
    try:
        import resource

        status = Path("/proc/self/status").read_text()
    except (ImportError, OSError):  # not on Linux
        return 2**62
    used = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("Vm")}
    room = 2**62
    for limit, key in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and key in used:
            room = min(room, max(0, soft - used[key]))
    return room


def human_bytes(n: float) -> str:
    """Bytes for a message: ``768.0 GB``, ``12.3 MB`` (10^9, 10^6)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_memory(what: str, params: int, activations: int | None, batch: int = 1) -> None:
    """Refuse ``what`` when its parameters plus ``batch`` x its input-and-outputs bytes exceed the memory
    available now; ``activations`` None (not estimated) counts parameters alone."""
    need = params + batch * (activations or 0)
    limit = available_memory()
    if need > limit:
        outputs = "not estimated" if activations is None else human_bytes(batch * activations)
        raise EdgepruneError(
            f"{what} needs about {human_bytes(need)} of memory at batch {batch} (parameters and buffers "
            f"{human_bytes(params)}, input and every layer's output {outputs}), more than the "
            f"{human_bytes(limit)} of memory available now: refused before allocating it"
        )


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (0 for a scalar), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # deeper than that is refused anyway: no need to walk it all
            stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file of at most MAX_JSON_BYTES and MAX_JSON_DEPTH levels; one-line errors naming ``what``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise EdgepruneError(f"{path}: {size:,} bytes, too large for {what} (at most {MAX_JSON_BYTES:,})")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EdgepruneError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    try:
        value = json.loads(raw)
    except RecursionError:  # json recurses per nesting level: a deep document exhausts the stack
        raise EdgepruneError(f"{path}: not {what} (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of too many digits
        raise EdgepruneError(f"{path}: not {what} (not valid JSON: {first_line(e, limit=120)})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise EdgepruneError(f"{path}: not {what} (nested more than {MAX_JSON_DEPTH} levels deep)")
    return value
