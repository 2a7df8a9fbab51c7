"""Image cache files read in place: the layout, a streaming writer, chunked checksums, and memory-mapped batches.

A cache file is a safetensors file (``train_x``, ``train_y``, ``test_x``, ``test_y`` and string metadata),
so each split's images are one contiguous little-endian uint8 block at an offset the header names. A set
that fits the in-memory budget is loaded as today; a larger one is memory-mapped (:func:`map_images`) and
trained from in batches (:func:`gather_rows`): a batch's rows are read in sorted order (locality on disk)
and put back in the batch's order, so a batch holds exactly what an in-memory gather gives.

A batch's rows are read with ``pread`` (no read-ahead), not through the mapping: touching a mapped row makes the
kernel map a whole large folio of the page cache (up to megabytes) into the process, where it counts as resident
memory. A pass over a mapped split here (:func:`channel_sums`) drops the mapped pages every ``RELEASE_BYTES``
(``MADV_DONTNEED``: the file's pages stay in the page cache), so resident memory stays flat however large the
file is.

:func:`write_image_file` writes such a file from batches (a generated or streamed set, never all in memory),
and :func:`file_content_digest` checks one against its checksum reading it in ``HASH_CHUNK`` pieces.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import platform
import sys
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from edgeprune.data.augment import ImageStore
from edgeprune.errors import EdgepruneError

CONTENT_FORMAT = "edgeprune-dataset/1"
TENSORS = ("train_x", "train_y", "test_x", "test_y")  # in the order the content digest hashes them
DTYPES = {"U8": ("uint8", 1), "I64": ("int64", 8)}
HASH_CHUNK = 16 << 20  # bytes read at a time when a file is checked: memory use is this, not the file
RELEASE_BYTES = 64 << 20  # mapped bytes read by a pass between two MADV_DONTNEED calls
MAX_HEADER_BYTES = 16 << 20  # a safetensors header longer than this is not an image cache file
HEADER_ROOM = 1024  # spaces reserved in a streamed file's header for what is known only at the end (sums, checksum)
STORAGES = ("auto", "memory", "mapped")
_MAP_NORESERVE = 0x4000  # Linux's MAP_NORESERVE on x86-64 and arm64 (Python's mmap module does not name it)

Layout = dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype, shape, first byte, end byte) in the file


# -- the content digest, in one piece or streamed ---------------------------------------------------------------


class ContentHasher:
    """SHA-256 over the class names, then each tensor's name, dtype, shape and bytes (little-endian), fed in pieces."""

    def __init__(self, classes: list[str]):
        self._h = hashlib.sha256(f"{CONTENT_FORMAT}\0{json.dumps(list(classes))}\0".encode())

    def begin(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        """Start tensor ``name`` (``dtype`` as numpy names it: uint8, int64)."""
        head = json.dumps([name, dtype, list(shape)]).encode()
        self._h.update(len(head).to_bytes(8, "little") + head)

    def update(self, data: object) -> None:
        """Hash the next bytes of the current tensor."""
        self._h.update(data)

    def hexdigest(self) -> str:
        """The digest (hex)."""
        return self._h.hexdigest()


def content_digest(
    classes: list[str], train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> str:
    """SHA-256 (hex) over the class names, then each tensor's name, dtype, shape and bytes (little-endian)."""
    h = ContentHasher(classes)
    for name, t in zip(TENSORS, (train_x, train_y, test_x, test_y), strict=True):
        a = t.detach().cpu().contiguous().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # the same hash on any machine; no copy on x86/ARM
        h.begin(name, str(a.dtype), tuple(a.shape))
        h.update(a.reshape(-1).view(np.uint8))  # hashed in place: no copy of a data set's worth of bytes
    return h.hexdigest()


def cache_checksum(content: str, meta: dict[str, str]) -> str:
    """SHA-256 over the content digest and every other metadata entry: what a cache file is verified by."""
    rest = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps([content, rest], sort_keys=True).encode()).hexdigest()


def channel_histogram(x: torch.Tensor) -> torch.Tensor:
    """How often each value 0..255 occurs in each channel of uint8 images [N, C, H, W]: int64 [C, 256]."""
    return torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])


def sums_of(histogram: torch.Tensor) -> list[list[int]]:
    """Per-channel sums and sums of squares (exact integers) from :func:`channel_histogram`."""
    values = torch.arange(256, dtype=torch.int64)
    return [(histogram @ values).tolist(), (histogram @ (values * values)).tolist()]


def channel_sums(x: torch.Tensor, chunk: int = 4096) -> list[list[int]]:
    """Per-channel sums and sums of squares of uint8 images [N, C, H, W] (exact integers), read ``chunk`` at a time."""
    histogram = torch.zeros(x.shape[1], 256, dtype=torch.int64)
    mapped, since = is_mapped(x), 0
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        histogram += channel_histogram(part)  # counting: 10x faster than summing squares
        since += part.numel()
        if mapped and since >= RELEASE_BYTES:
            release(x)  # a pass over a mapped file must not keep it resident
            since = 0
    return sums_of(histogram)


def stats_from_sums(sums: list[list[int]], count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation in [0, 1] pixel units, from :func:`channel_sums`
    over ``count`` values a channel."""
    total = torch.tensor(sums[0], dtype=torch.float64)
    squares = torch.tensor(sums[1], dtype=torch.float64)
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    std = var.sqrt() / 255.0
    return tuple(float(v) for v in mean / 255.0), tuple(max(float(v), 1e-3) for v in std)


# -- the file's layout ---------------------------------------------------------------------------------------------


def read_layout(path: Path) -> tuple[dict[str, str], Layout]:
    """A cache file's metadata and where each tensor lies in it (absolute byte offsets), read from its header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"header of {n:,} bytes")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    meta = header.pop("__metadata__", None) or {}
    start, layout, end = 8 + n, {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape, (first, last) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype not in DTYPES or first != end or last - first != math.prod(shape) * DTYPES[dtype][1]:
            raise ValueError(f"tensor {name} at bytes {first}..{last}")
        layout[name], end = (dtype, shape, start + first, start + last), last
    if start + end != size:
        raise ValueError(f"{size - start - end:,} bytes left over")
    return meta, layout


def file_content_digest(path: Path, layout: Layout, classes: list[str]) -> str:
    """The content digest of a cache file, read ``HASH_CHUNK`` bytes at a time (never the file at once)."""
    h = ContentHasher(classes)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for name in TENSORS:
            dtype, shape, first, last = layout[name]
            h.begin(name, DTYPES[dtype][0], shape)
            f.seek(first)
            left = last - first
            while left:
                got = f.readinto(view[: min(left, HASH_CHUNK)])
                if not got:
                    raise ValueError(f"{name} cut short")
                h.update(view[:got])
                left -= got
    return h.hexdigest()


def read_labels(path: Path, layout: Layout, name: str) -> torch.Tensor:
    """One label tensor of a cache file, read into memory (8 bytes an image)."""
    _, shape, first, last = layout[name]
    with open(path, "rb") as f:
        f.seek(first)
        a = np.frombuffer(f.read(last - first), dtype="<i8").astype(np.int64)
    if a.shape != shape:
        raise ValueError(f"{name} cut short")
    return torch.from_numpy(a)


# -- memory-mapped images ----------------------------------------------------------------------------------------


class _Map(mmap.mmap):
    """A private (copy-on-write) mapping of a cache file, with what a run says about it.

    A subclass so it can be weakly referenced: it lives as long as any tensor viewing it does.
    """

    path: str
    note: str
    sums: tuple[list[int], list[int]] | None
    read_since: int
    rows: int
    fd: int  # the same file, open for pread: batches are read with it, not through the mapping
    base: int  # the mapping's address


_MAPS: weakref.WeakValueDictionary[int, _Map] = weakref.WeakValueDictionary()  # storage address -> its mapping


def map_images(path: Path, layout: Layout, name: str, note: str, sums: object = None) -> torch.Tensor:
    """Tensor ``name`` (uint8 [N, C, H, W]) of a cache file, memory-mapped: nothing is read until used.

    ``note`` says why it is mapped (:func:`storage_note`); ``sums`` are the per-channel sums and sums of squares
    of the training images recorded in the file (so :func:`mapped_sums` need not read the file to normalise).
    """
    _, shape, first, last = layout[name]
    fd = os.open(path, os.O_RDONLY)
    try:
        m = _open_map(fd)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(m, os.close, fd)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # a batch reads scattered rows: no read-ahead
    m.path, m.note, m.read_since, m.rows, m.fd = str(path), note, 0, shape[0], fd
    m.sums = sums if _valid_sums(sums, shape[1] if len(shape) > 1 else 0) else None  # type: ignore[assignment]
    array = np.frombuffer(m, dtype=np.uint8, count=last - first, offset=first).reshape(shape)
    m.base = array.ctypes.data - first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only mapping (strict overcommit): never written
        tensor = torch.from_numpy(array)
    _MAPS[tensor.untyped_storage().data_ptr()] = m
    return tensor


def _open_map(fd: int) -> _Map:
    """A private, writable mapping of the whole file (so torch takes it; never written), charged to no memory.

    Linux counts a private writable mapping against its overcommit limit unless it is MAP_NORESERVE: without it a
    file larger than RAM is refused (ENOMEM). Where that is refused anyway (strict overcommit), a read-only
    shared mapping: torch then holds a tensor it must not write to, and nothing here does.
    """
    noreserve = _MAP_NORESERVE if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") else 0
    try:
        return _Map(fd, 0, flags=mmap.MAP_PRIVATE | noreserve, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        return _Map(fd, 0, access=mmap.ACCESS_READ)


def _valid_sums(sums: object, channels: int) -> bool:
    return (
        isinstance(sums, (list, tuple))
        and len(sums) == 2
        and all(isinstance(s, list) and len(s) == channels for s in sums)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 for s in sums for v in s)
    )


def _mapping(t: torch.Tensor) -> _Map | None:
    if t.device.type != "cpu":
        return None
    return _MAPS.get(t.untyped_storage().data_ptr())


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` views a memory-mapped cache file (rather than memory of its own)."""
    return _mapping(t) is not None


def storage_note(t: torch.Tensor) -> str:
    """One line saying where a data set's images are: in memory, or memory-mapped from which file and why."""
    m = _mapping(t)
    if m is None:
        return f"images held in memory ({t.numel() * t.element_size() / 1e9:.2f} GB)"
    return f"images memory-mapped from {m.path} ({m.note})"


def mapped_sums(t: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """The per-channel sums and sums of squares recorded for a whole mapped training split, or None."""
    m = _mapping(t)
    whole = m is not None and t.data_ptr() == t.untyped_storage().data_ptr() and len(t) == m.rows
    return m.sums if whole and m is not None else None


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(0, index)``; on a mapped ``x`` the rows are read in sorted order, then put back in order."""
    rows, where = gather_sorted(x, index)
    return rows if where is None else rows.index_select(0, where)


def gather_sorted(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``index`` of ``x`` and, for a mapped ``x``, read in sorted order (locality on disk) with the position
    of each ``index[b]`` among them (``rows[where]`` is the batch in order); ``where`` is None for ``x`` in memory.

    A mapped ``x``'s rows are read with ``pread``, not through the mapping: a page fault maps a whole large folio
    of the page cache (up to megabytes) into the process, a read copies just the row's bytes.
    """
    m = _mapping(x)
    if m is None:
        return x.index_select(0, index.to(x.device)), None
    ordered, order = torch.sort(index.cpu())
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))
    if not x.is_contiguous() or len(ordered) and not 0 <= int(ordered[0]) <= int(ordered[-1]) < len(x):
        return x.index_select(0, ordered), where  # a strided view, or out of range: torch's own gather and errors
    rows = torch.empty((len(ordered), *x.shape[1:]), dtype=torch.uint8)
    size = math.prod(x.shape[1:])
    view = memoryview(rows.numpy()).cast("B")
    start = x.data_ptr() - m.base  # where x's first row lies in the file
    for i, row in enumerate(ordered.tolist()):
        if os.preadv(m.fd, [view[i * size : (i + 1) * size]], start + row * size) != size:
            raise EdgepruneError(f"{m.path}: cut short while training (the cache file changed)")
    return rows, where


def read_range(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``x[start:stop]``; of a mapped ``x``, read with one ``pread`` rather than through the mapping (see module)."""
    m = _mapping(x)
    start, stop = max(0, start), min(stop, len(x))
    if m is None or not x.is_contiguous() or stop <= start:
        return x[start:stop]
    rows = torch.empty((stop - start, *x.shape[1:]), dtype=torch.uint8)
    size = rows.numel()
    at = x.data_ptr() - m.base + start * math.prod(x.shape[1:])
    if os.preadv(m.fd, [memoryview(rows.numpy()).cast("B")], at) != size:
        raise EdgepruneError(f"{m.path}: cut short (the cache file changed)")
    return rows


def release(x: torch.Tensor) -> None:
    """Drop the pages of ``x``'s mapping from this process's resident memory (no-op for a tensor in memory)."""
    m = _mapping(x)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED)  # clean pages of a private mapping: re-read from the page cache when used
        m.read_since = 0


class MappedStore(ImageStore):
    """An :class:`ImageStore` over mapped images: each batch is read (:func:`gather_rows`), moved to ``device``,
    then augmented there exactly as the in-memory store does it (the same draws, the same arithmetic)."""

    def __init__(self, x: torch.Tensor, device: torch.device, size: tuple[int, int] | None = None):
        super().__init__(x, size)
        self.target = device
        self._batch_grids: dict[int, torch.Tensor] = {}

    def _rows(self, index: torch.Tensor) -> tuple[ImageStore, torch.Tensor]:
        """A store of just the images ``index`` (read from the mapping, on the device), and their indices in it."""
        rows, where = gather_sorted(self.x, index)
        store = ImageStore(rows.to(self.target), (self.out_h, self.out_w))
        store._grids = self._batch_grids  # the grids depend on the image shapes and the device only
        return store, where if where is not None else torch.arange(len(index))  # the store's gather reorders

    def crop_flip(self, index: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """:meth:`ImageStore.crop_flip` of the mapped images ``index``."""
        rows, local = self._rows(index)
        return rows.crop_flip(local, *args, **kwargs)

    def resized_crop(self, index: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """:meth:`ImageStore.resized_crop` of the mapped images ``index``."""
        rows, local = self._rows(index)
        return rows.resized_crop(local, *args, **kwargs)


def image_store(x: torch.Tensor, device: torch.device, size: tuple[int, int] | None = None) -> ImageStore:
    """The training store for images ``x`` on ``device``: in memory there, or read in batches from a mapping."""
    return MappedStore(x, device, size) if is_mapped(x) else ImageStore(x.to(device), size)


def choose_storage(image_bytes: int, budget: int, storage: str = "auto") -> str:
    """``memory`` when a set's decoded images fit the in-memory ``budget`` (or ``storage`` says so), else ``mapped``."""
    if storage not in STORAGES:
        raise EdgepruneError(f"unknown data storage '{storage}'; choose from: {', '.join(STORAGES)}")
    if storage != "auto":
        return storage
    return "memory" if image_bytes <= budget else "mapped"


# -- writing a file from batches ---------------------------------------------------------------------------------


def _header_json(meta: dict[str, str], layout: Layout) -> bytes:
    """The safetensors header's JSON for ``layout`` (offsets relative to the data) and ``meta``."""
    body: dict[str, object] = {"__metadata__": meta}
    for name, (dtype, shape, first, last) in layout.items():
        body[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [first, last]}
    return json.dumps(body, separators=(",", ":")).encode()


def _header(meta: dict[str, str], layout: Layout, room: int) -> bytes:
    """The safetensors header (length and JSON) for ``layout``, padded with spaces to ``room`` bytes of JSON."""
    text = _header_json(meta, layout)
    if len(text) > room:
        raise EdgepruneError(f"image cache header of {len(text):,} bytes, over the {room:,} reserved")
    return room.to_bytes(8, "little") + text + b" " * (room - len(text))


def write_image_file(
    path: Path,
    classes: list[str],
    shape: tuple[int, int, int],
    counts: dict[str, int],
    batches: Iterable[tuple[str, np.ndarray, np.ndarray]],
    meta: dict[str, str],
) -> str:
    """Write a cache file at ``path`` from ``batches`` of (split, uint8 [b, C, H, W], int64 [b]): every training
    batch, then every test batch, ``counts[split]`` images each. Return the content digest.

    ``meta`` gets ``sums`` (per-channel sums and sums of squares of the training images) and ``sha256``
    (:func:`cache_checksum`); only the labels and one batch are held in memory at a time.
    """
    row = math.prod(shape)
    sizes = {"train_x": counts["train"] * row, "train_y": counts["train"] * 8}
    sizes |= {"test_x": counts["test"] * row, "test_y": counts["test"] * 8}
    layout: Layout = {}
    end = 0
    for name in TENSORS:
        kind = ("U8", (counts[name[:-2]], *shape)) if name.endswith("_x") else ("I64", (counts[name[:-2]],))
        layout[name], end = (*kind, end, end + sizes[name]), end + sizes[name]
    draft = {**meta, "sums": json.dumps([[2**53] * shape[0]] * 2), "sha256": "0" * 64}
    room = len(_header_json(draft, layout)) + HEADER_ROOM
    room += -room % 8
    h = ContentHasher(classes)
    histogram = torch.zeros(shape[0], 256, dtype=torch.int64)
    it = iter(batches)
    with open(path, "wb") as f:
        f.write(_header(draft, layout, room))
        for split in ("train", "test"):
            labels = _write_split(f, h, (split, counts[split], shape), it, histogram if split == "train" else None)
            h.begin(f"{split}_y", "int64", (counts[split],))
            data = labels.astype("<i8").tobytes()
            h.update(data)
            f.write(data)
        final = {**meta, "sums": json.dumps(sums_of(histogram))}
        content = h.hexdigest()
        final["sha256"] = cache_checksum(content, final)
        f.seek(0)
        f.write(_header(final, layout, room))
    return content


def _write_split(
    f: object, h: ContentHasher, what: tuple[str, int, tuple], it: Iterator, histogram: torch.Tensor | None
) -> np.ndarray:
    """Write the ``count`` images of ``split`` (``what``) from the iterator ``it``; hash them; return their labels."""
    split, count, shape = what
    h.begin(f"{split}_x", "uint8", (count, *shape))
    labels, done = [], 0
    while done < count:
        got, x, y = next(it, (None, None, None))
        if got != split or x is None or y is None:
            raise EdgepruneError(f"the {split} split has {done:,} images, {count:,} were expected")
        x = np.ascontiguousarray(x, dtype=np.uint8)
        if x.shape[1:] != tuple(shape) or len(y) != len(x) or done + len(x) > count:
            raise EdgepruneError(f"a {split} batch of shape {x.shape} does not fit {count:,} images of {shape}")
        if histogram is not None:
            histogram += channel_histogram(torch.from_numpy(x))
        h.update(x.reshape(-1))
        f.write(x.reshape(-1).data)
        labels.append(np.asarray(y, dtype=np.int64))
        done += len(x)
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def available_disk(path: Path) -> int:
    """Bytes free on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(os.statvfs(p).f_bavail * os.statvfs(p).f_frsize)


__all__ = [
    "STORAGES",
    "ContentHasher",
    "MappedStore",
    "available_disk",
    "cache_checksum",
    "channel_histogram",
    "channel_sums",
    "choose_storage",
    "content_digest",
    "file_content_digest",
    "gather_rows",
    "gather_sorted",
    "image_store",
    "is_mapped",
    "map_images",
    "mapped_sums",
    "read_labels",
    "read_range",
    "read_layout",
    "release",
    "stats_from_sums",
    "storage_note",
    "sums_of",
    "write_image_file",
]
