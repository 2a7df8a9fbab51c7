"""The decoded-image cache (one safetensors file per data set, with a checksum) and the memory a load may use.

``max_data_bytes``'s default, half the memory available, lives here with the cache because a cache hit is
checked against the same caps as a first load. The same figure is the in-memory budget: a cached set whose
images fit it is loaded into memory; a larger one (a ``max_data_bytes`` raised above it) is memory-mapped
from the cache file, its checksum verified in chunks (:mod:`edgeprune.data.memmap`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgeprune.data.bounds import FACTS, MAX_BATCH_BYTES, Arrays, Caps, printable, reason
from edgeprune.data.memmap import (
    CONTENT_FORMAT,
    cache_checksum,
    channel_sums,
    choose_storage,
    content_digest,
    file_content_digest,
    map_images,
    read_labels,
    read_layout,
)
from edgeprune.files import atomic_write

CACHE_FORMAT = "edgeprune-images/2"  # 2: the metadata holds a checksum and the facts the caps are checked on
DATA_MEMORY_SHARE = 0.5  # default max_data_bytes: this share of the memory available when loading
LOUD_CHECK_BYTES = 1 << 30  # a cache file this large says, in one line, that its checksum is being verified
_STORAGE: contextvars.ContextVar[str] = contextvars.ContextVar("edgeprune_data_storage", default="auto")
_cache_checksum = cache_checksum  # the name the cache's tests know


def cache_dir() -> Path:
    """The cache folder: ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``."""
    env = os.environ.get("EDGEPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeprune"


def default_max_data_bytes() -> int:
    """The default ``max_data_bytes``: half the memory available now (within a cgroup's limit, if lower)."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no reading of the memory: a fixed cap rather than none
        available = 8 * 2**30
    return max(1, int(min(available, _cgroup_room()) * DATA_MEMORY_SHARE))


def _cgroup_room() -> int:
    """Memory a cgroup v2 limit still allows this process (containers: psutil sees the host's memory)."""
    try:
        base = Path("/sys/fs/cgroup")
        limit = (base / "memory.max").read_text().strip()
        if limit != "max":
            return max(0, int(limit) - int((base / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return 2**62


@contextlib.contextmanager
def storage_preference(storage: str) -> Iterator[None]:
    """Within the block, cache reads hold images ``storage`` ("auto": by size, "memory" or "mapped")."""
    choose_storage(0, 0, storage)  # a one-line error for an unknown name
    token = _STORAGE.set(storage)
    try:
        yield
    finally:
        _STORAGE.reset(token)


def cache_file(key: str) -> Path:
    """The cache file of the data set ``key``."""
    return cache_dir() / "decoded" / f"{key}.safetensors"


_cache_file = cache_file


_CACHE_TENSORS = {"train_x": ("U8", 4), "train_y": ("I64", 1), "test_x": ("U8", 4), "test_y": ("I64", 1)}


def _cache_problem(meta: dict[str, str], heads: dict[str, tuple[str, list[int]]]) -> str:
    """What is wrong with a cache file's metadata and tensor headers ("" when nothing is)."""
    if meta.get("format") != CACHE_FORMAT:
        return f"format {meta.get('format')!r}, not {CACHE_FORMAT!r}"
    if not isinstance(meta.get("sha256"), str) or "classes" not in meta or "facts" not in meta:
        return "metadata incomplete"
    if set(heads) != set(_CACHE_TENSORS):
        return f"tensors {sorted(heads)}"
    for name, (dtype, ndim) in _CACHE_TENSORS.items():
        if heads[name][0] != dtype or len(heads[name][1]) != ndim:
            return f"{name} is {heads[name][0]} of shape {heads[name][1]}"
    for split in ("train", "test"):
        n = heads[f"{split}_x"][1][0]
        if n < 1 or n != heads[f"{split}_y"][1][0] or heads[f"{split}_x"][1][1] not in (1, 3):
            return f"{split} tensors of shapes {heads[f'{split}_x'][1]} and {heads[f'{split}_y'][1]}"
    if heads["train_x"][1][1:] != heads["test_x"][1][1:]:
        return "train and test images of different shapes"
    return ""


def _facts_fit(facts: dict[str, int], tensor_bytes: int, caps: Caps) -> bool:
    """Whether a cached data set is within today's caps, by what its first load read and decoded."""
    return (
        facts["image_pixels"] <= caps.image_pixels
        and facts["image_file_bytes"] <= caps.file_bytes
        and facts["batch_file_bytes"] <= max(caps.file_bytes, MAX_BATCH_BYTES)
        and max(facts["source_bytes"], facts["scan_bytes"], facts["decoded_bytes"], tensor_bytes) <= caps.data_bytes
    )


def _damaged(path: Path, why: str) -> None:
    print(printable(f"warning: ignoring the damaged image cache {path} ({why}); decoding again"), file=sys.stderr)


def read_cache(key: str, caps: Caps) -> tuple[Arrays, str] | None:
    """The arrays cached under ``key`` and their content digest, or None (then the data set is read again).

    A damaged file (unreadable, inconsistent, or failing its checksum) is reported in one warning line;
    one made under larger caps than today's is passed over quietly, so the caps refuse the data set as
    on a first load. Nothing is loaded before the tensor headers are checked against ``max_data_bytes``.
    Images over the in-memory budget (half the memory available) are memory-mapped, not loaded.
    """
    return read_cache_file(cache_file(key), caps)


def read_cache_file(path: Path, caps: Caps, budget: int | None = None) -> tuple[Arrays, str] | None:
    """:func:`read_cache` of one file; ``budget`` (default half the memory available) decides memory or mapped."""
    if not path.is_file():
        return None
    try:
        meta, layout = read_layout(path)  # the header alone: safetensors' safe_open maps the file privately,
        heads = {name: (dtype, list(shape)) for name, (dtype, shape, _, _) in layout.items()}  # refused over RAM
        problem = "metadata" if not all(isinstance(v, str) for v in meta.values()) else _cache_problem(meta, heads)
        if not problem:
            classes = json.loads(meta["classes"])
            facts = json.loads(meta["facts"])
            if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
                problem = "class names"
            elif not isinstance(facts, dict) or not all(isinstance(facts.get(k), int) for k in FACTS):
                problem = "facts"
        if problem:
            _damaged(path, problem)
            return None
        tensor_bytes = sum(math.prod(shape) * (1 if dtype == "U8" else 8) for dtype, shape in heads.values())
        if not _facts_fit(facts, tensor_bytes, caps):
            return None
        budget = default_max_data_bytes() if budget is None else budget
        if choose_storage(tensor_bytes, budget, _STORAGE.get()) == "mapped":
            return _read_mapped(path, meta, classes, _why_mapped(tensor_bytes, budget))
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged cache file only costs a rebuild
        _damaged(path, reason(e))
        return None
    arrays = (t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes)
    content = content_digest(classes, *arrays[:4])
    if meta["sha256"] != _cache_checksum(content, meta):
        _damaged(path, "checksum mismatch")
        return None
    return _labels_checked(path, arrays, content)


def _labels_checked(path: Path, arrays: Arrays, content: str) -> tuple[Arrays, str] | None:
    for y in arrays[1], arrays[3]:  # only an edit that also forged the checksum gets here with bad labels
        if int(y.min()) < 0 or int(y.max()) >= len(arrays[4]):
            _damaged(path, "labels out of range")
            return None
    return arrays, content


def _why_mapped(tensor_bytes: int, budget: int) -> str:
    if _STORAGE.get() == "mapped":
        return f"{tensor_bytes / 1e9:.2f} GB; memory-mapped as asked"
    return f"{tensor_bytes / 1e9:.2f} GB, over the in-memory budget of {budget / 1e9:.2f} GB, half the memory available"


def _read_mapped(path: Path, meta: dict[str, str], classes: list[str], note: str) -> tuple[Arrays, str] | None:
    """The cached arrays with the images memory-mapped, after a checksum read in chunks (never the file at once)."""
    size = path.stat().st_size
    if size >= LOUD_CHECK_BYTES:
        print(f"checking the image cache {path} ({size / 1e9:.1f} GB) against its checksum", file=sys.stderr)
    _, layout = read_layout(path)  # read again: the layout the checksum covers is the one mapped
    content = file_content_digest(path, layout, classes)
    if meta["sha256"] != _cache_checksum(content, meta):
        _damaged(path, "checksum mismatch")
        return None
    sums = json.loads(meta["sums"]) if "sums" in meta else None
    train_x = map_images(path, layout, "train_x", note, sums)
    test_x = map_images(path, layout, "test_x", note)
    arrays = (train_x, read_labels(path, layout, "train_y"), test_x, read_labels(path, layout, "test_y"), classes)
    return _labels_checked(path, arrays, content)


def cache_meta(classes: list[str], source: object, facts: dict[str, int]) -> dict[str, str]:
    """A cache file's metadata but its sums and checksum."""
    return {
        "format": CACHE_FORMAT,
        "classes": json.dumps(classes),
        "source": str(source),
        "facts": json.dumps({k: int(facts[k]) for k in FACTS}, sort_keys=True),
    }


def current_storage() -> str:
    """Where cache reads put images now: "auto", "memory" or "mapped" (:func:`storage_preference`)."""
    return _STORAGE.get()


def store_cache(key: str, arrays: Arrays, source: object, facts: dict[str, int]) -> str:
    """Write ``arrays`` to the cache under ``key``; return their content digest.

    A cache that cannot be written (read-only, disk full, file size limit) costs only speed: one warning line.
    """
    train_x, train_y, test_x, test_y, classes = arrays
    content = content_digest(classes, train_x, train_y, test_x, test_y)
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    meta = cache_meta(classes, source, facts)
    meta["sums"] = json.dumps(channel_sums(train_x))  # a mapped set is normalised without reading it all
    meta["sha256"] = _cache_checksum(content, meta)
    path = cache_file(key)
    try:
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write (EFBIG, ENOSPC) as its own error
        why = reason(e).removeprefix(f"{path}: ")  # a write error may name the file already
        print(printable(f"warning: cannot write the image cache {path} ({why})"), file=sys.stderr)
    return content


__all__ = [
    "CACHE_FORMAT",
    "CONTENT_FORMAT",
    "cache_dir",
    "cache_file",
    "cache_meta",
    "content_digest",
    "current_storage",
    "default_max_data_bytes",
    "read_cache",
    "read_cache_file",
    "storage_preference",
    "store_cache",
]
