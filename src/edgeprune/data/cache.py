"""The decoded-image cache (one safetensors file per data set, with a checksum) and the memory a load may use.

``max_data_bytes``'s default, half the memory available, lives here with the cache because a cache hit is
checked against the same caps as a first load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edgeprune.data.bounds import FACTS, MAX_BATCH_BYTES, Arrays, Caps, printable, reason
from edgeprune.files import atomic_write

CACHE_FORMAT = "edgeprune-images/2"  # 2: the metadata holds a checksum and the facts the caps are checked on
CONTENT_FORMAT = "edgeprune-dataset/1"
DATA_MEMORY_SHARE = 0.5  # default max_data_bytes: this share of the memory available when loading


def content_digest(
    classes: list[str], train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> str:
    """SHA-256 (hex) over the class names, then each tensor's name, dtype, shape and bytes (little-endian)."""
    h = hashlib.sha256(f"{CONTENT_FORMAT}\0{json.dumps(list(classes))}\0".encode())
    for name, t in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
        a = t.detach().cpu().contiguous().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # the same hash on any machine; no copy on x86/ARM
        head = json.dumps([name, str(a.dtype), list(a.shape)]).encode()
        h.update(len(head).to_bytes(8, "little") + head)
        h.update(a.reshape(-1).view(np.uint8))  # hashed in place: no copy of a data set's worth of bytes
    return h.hexdigest()


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


def _cache_file(key: str) -> Path:
    return cache_dir() / "decoded" / f"{key}.safetensors"


def _cache_checksum(content: str, meta: dict[str, str]) -> str:
    """SHA-256 over the content digest and every other metadata entry: what a cache file is verified by."""
    rest = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps([content, rest], sort_keys=True).encode()).hexdigest()


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
    """
    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            heads = {name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())) for name in f.keys()}
        problem = _cache_problem(meta, heads)
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
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged cache file only costs a rebuild
        _damaged(path, reason(e))
        return None
    arrays = (t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes)
    content = content_digest(classes, *arrays[:4])
    if meta["sha256"] != _cache_checksum(content, meta):
        _damaged(path, "checksum mismatch")
        return None
    for y in arrays[1], arrays[3]:  # only an edit that also forged the checksum gets here with bad labels
        if int(y.min()) < 0 or int(y.max()) >= len(classes):
            _damaged(path, "labels out of range")
            return None
    return arrays, content


def store_cache(key: str, arrays: Arrays, source: object, facts: dict[str, int]) -> str:
    """Write ``arrays`` to the cache under ``key``; return their content digest.

    A cache that cannot be written (read-only, disk full, file size limit) costs only speed: one warning line.
    """
    train_x, train_y, test_x, test_y, classes = arrays
    content = content_digest(classes, train_x, train_y, test_x, test_y)
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    meta = {
        "format": CACHE_FORMAT,
        "classes": json.dumps(classes),
        "source": str(source),
        "facts": json.dumps({k: int(facts[k]) for k in FACTS}, sort_keys=True),
    }
    meta["sha256"] = _cache_checksum(content, meta)
    path = _cache_file(key)
    try:
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write (EFBIG, ENOSPC) as its own error
        why = reason(e).removeprefix(f"{path}: ")  # a write error may name the file already
        print(printable(f"warning: cannot write the image cache {path} ({why})"), file=sys.stderr)
    return content


__all__ = ["CACHE_FORMAT", "cache_dir", "content_digest", "default_max_data_bytes", "read_cache", "store_cache"]
