"""WebDataset-style tar shards: ``--data 'shards/train-{000..099}.tar'``.

A shard is a tar file of samples, each sample consecutive members sharing a key (the member's name up to
the first dot of its file name): one image ``KEY.png|jpg|jpeg|webp`` and ``KEY.cls``, the class index as
decimal text, as WebDataset's ``ShardWriter`` writes them. Other members (``KEY.json``, ``KEY.txt``) are
skipped unread. Shards may be gzip-compressed (``.tar.gz``).

``--data`` names shards when it holds braces, or is one plain ``.tar`` with ``KEY.cls`` members among its first
four files. Patterns are expanded here, without a shell: ``{000..099}`` (a zero-padded range, the width of its first
bound) and ``{a,b,c}`` (a list), any number of groups. The test split is ``test_pattern`` when given
(``--test-data``), else the files ``test*`` beside the training shards whose names are the training pattern's
with its leading ``train`` turned into ``test`` and every brace group or number into any text
(``train-{000..099}.tar`` and ``train-007.tar`` -> ``test-*.tar``, sorted).

Every member is bounded before it is read as a data set's files are (``max_file_bytes`` per member, a tar
header asking for more refused, ``max_image_pixels`` from the image header before decoding), and the decoded
set against ``max_data_bytes``. :func:`load_shards` decodes the shards once, member by member, into the image
cache (:mod:`edgeprune.data.memmap`; memory-mapped when over the in-memory budget), or refuses a set larger than
the cache folder's free disk (:class:`OverDisk`); :class:`ShardStream` streams decoded samples with a seeded shuffle
buffer, for a torch ``DataLoader`` (and for ``edgeprune train``'s stream, :mod:`edgeprune.data.stream`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from edgeprune.data.bounds import (
    FACTS,
    MAX_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    Arrays,
    Caps,
    printable,
    reason,
)
from edgeprune.data.cache import (
    CACHE_FORMAT,
    cache_file,
    cache_meta,
    current_storage,
    default_max_data_bytes,
    read_cache,
    store_cache,
)
from edgeprune.data.decode import _decode_one, _pillow_limit
from edgeprune.data.memmap import available_disk, choose_storage, write_image_file
from edgeprune.data.progress import Progress
from edgeprune.data.tree import _open_tar, _read_chunked, _ReadTooBig
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write

SHARD_IMAGES = (".png", ".jpg", ".jpeg", ".webp")
MAX_SHARDS = 100_000  # files one pattern may name
MAX_CLS_BYTES = 32  # a class index as text
SNIFF_BOUND = 1 << 20  # the most one read may ask for while looking for .cls members in a tar
MAX_CLASS = (1 << 24) - 1  # as MAX_CLASSES in limits
DEFAULT_BUFFER = 2000  # samples in the shuffle buffer
WRITE_BATCH = 1024  # images decoded between two writes to the cache file
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


# -- patterns ----------------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Every name ``pattern`` spells: ``{000..099}`` ranges (zero-padded to the first bound's width) and ``{a,b}``
    lists, expanded left to right; a one-line error for a brace left open, an empty group or too many names."""
    parts: list[list[str]] = []
    rest = pattern
    while "{" in rest or "}" in rest:
        start, end = rest.find("{"), rest.find("}")
        if start < 0 or end < start or "{" in rest[start + 1 : end]:
            raise EdgepruneError(f"shard pattern '{pattern}': unbalanced braces")
        parts.append([rest[:start]])
        parts.append(_group(pattern, rest[start + 1 : end]))
        rest = rest[end + 1 :]
    parts.append([rest])
    count = 1
    for p in parts:
        count *= len(p)
        if count > MAX_SHARDS:
            raise EdgepruneError(f"shard pattern '{pattern}' names more than {MAX_SHARDS:,} files")
    return ["".join(choice) for choice in itertools.product(*parts)]


def _group(pattern: str, body: str) -> list[str]:
    """The names one brace group stands for."""
    match = _RANGE.match(body)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        if hi < lo:
            raise EdgepruneError(f"shard pattern '{pattern}': range {{{body}}} runs backwards")
        if hi - lo >= MAX_SHARDS:
            raise EdgepruneError(f"shard pattern '{pattern}' names more than {MAX_SHARDS:,} files")
        width = len(match.group(1).lstrip("-"))
        return [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    items = body.split(",")
    if not body or len(items) < 2 and ".." in body or any(not item for item in items):
        raise EdgepruneError(f"shard pattern '{pattern}': bad group {{{body}}} (use {{000..099}} or {{a,b,c}})")
    return items


def is_shard_input(text: str | Path) -> bool:
    """Whether ``--data`` names tar shards: a pattern with braces, or one plain ``.tar`` holding ``KEY.cls`` members
    among its first four files (a compressed archive without braces is read as an archive of image folders)."""
    text = str(text)
    if "{" in text or "}" in text:
        return True
    path = Path(text).expanduser()
    if not path.is_file() or not text.lower().endswith(".tar"):
        return False
    try:
        tar, raw = _open_tar(path, SNIFF_BOUND)  # a plain tar: tarfile seeks past members, reading headers only
        with raw, tar:
            files = (m for m in iter(tar.next, None) if m.isfile())
            return any(m.name.endswith(".cls") for _, m in zip(range(4), files, strict=False))
    except Exception:  # noqa: BLE001 - not a tar we can read: the archive loader says why
        return False


def shard_files(pattern: str) -> list[Path]:
    """The shard files ``pattern`` names, each of which must exist."""
    names = expand_braces(str(pattern))
    paths = [Path(n).expanduser() for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
        raise EdgepruneError(f"shard pattern '{pattern}': {missing[0]}: no such file{more}")
    return paths


def test_pattern_for(train_pattern: str) -> list[Path]:
    """The test shards beside ``train_pattern``: its file name, ``train`` -> ``test``, groups and numbers -> ``*``."""
    path = Path(str(train_pattern)).expanduser()
    name = path.name
    if not name.startswith("train"):
        raise EdgepruneError(
            f"shard pattern '{train_pattern}': no test split: give --test-data PATTERN (test_data=...), or name "
            "the shards train-... and test-..."
        )
    glob = re.sub(r"\{[^{}]*\}|\d+", "*", "test" + name[len("train") :])
    found = (
        sorted(p for p in path.parent.iterdir() if fnmatch.fnmatchcase(p.name, glob)) if path.parent.is_dir() else []
    )
    if not found:
        raise EdgepruneError(
            f"shard pattern '{train_pattern}': no test shards {path.parent / glob}: give --test-data PATTERN"
        )
    return found


# -- reading samples ---------------------------------------------------------------------------------------------


def _key(name: str) -> tuple[str, str]:
    """A member's sample key and extension (WebDataset's: the file name splits at its first dot)."""
    p = PurePosixPath(name)
    stem, dot, ext = p.name.partition(".")
    return str(p.parent / stem), (dot + ext).lower()


def _label(where: str, data: bytes) -> int:
    text = data.decode("ascii", "replace").strip()
    if not text.isdigit() or int(text) > MAX_CLASS:
        shown = printable(text[:20])
        raise EdgepruneError(f"{where}: a .cls member must hold a class index 0..{MAX_CLASS}, got '{shown}'")
    return int(text)


def samples(
    path: Path, caps: Caps, images: bool = True, stats: dict[str, int] | None = None
) -> Iterator[tuple[str, int, bytes]]:
    """(where, label, encoded image) for each sample of one shard, in its order; ``images=False``: no image read.

    ``stats`` gets the largest image member's size (``image_file_bytes``) and the bytes of all members read or
    skipped (``source_bytes``), added to what it holds.
    """
    stats = stats if stats is not None else {}
    try:
        tar, raw = _open_tar(path, max(caps.file_bytes, MAX_CLS_BYTES))
    except _ReadTooBig as e:
        raise _too_big(path, e) from None
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
        raise EdgepruneError(f"{path}: not a readable tar shard ({reason(e)})") from None
    with raw, tar:
        key, parts = None, {}
        for member in _members(path, tar):
            k, ext = _key(member.name)
            if k != key and key is not None:
                yield _sample(path, key, parts)
                parts = {}
            key = k
            wanted = ext == ".cls" or (images and ext in SHARD_IMAGES)
            if not wanted and ext not in SHARD_IMAGES:
                continue
            limit = MAX_CLS_BYTES if ext == ".cls" else caps.file_bytes
            if member.size > limit:
                what = "a .cls member" if ext == ".cls" else "file"
                raise EdgepruneError(
                    f"{path}:{member.name}: {what} is {member.size:,} bytes, over the cap of {limit:,} bytes"
                    + ("" if ext == ".cls" else " (raise max_file_bytes to read it)")
                )
            stats["source_bytes"] = stats.get("source_bytes", 0) + member.size
            if ext in SHARD_IMAGES:
                stats["image_file_bytes"] = max(stats.get("image_file_bytes", 0), member.size)
            if ext in parts:
                raise EdgepruneError(f"{path}:{member.name}: a second {ext} member for sample '{key}'")
            parts[ext] = _read(path, tar, member) if wanted else b""
        if key is not None:
            yield _sample(path, key, parts)


def _members(path: Path, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The regular-file members of a shard, headers only, every read bounded."""
    while True:
        try:
            member = tar.next()
        except _ReadTooBig as e:
            raise _too_big(path, e) from None
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
            raise EdgepruneError(f"{path}: not a readable tar shard ({reason(e)})") from None
        if member is None:
            return
        tar.members.clear()  # tarfile keeps every header it reads
        if member.isfile():
            yield member


def _too_big(path: Path, e: _ReadTooBig) -> EdgepruneError:
    return EdgepruneError(
        f"{path}: a tar header asks to read {e.args[0]:,} bytes at once, over the cap (raise max_file_bytes to read it)"
    )


def _read(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    try:
        f = tar.extractfile(member)
        data = _read_chunked(f, member.size) if f is not None else b""
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
        raise EdgepruneError(f"{path}:{member.name}: unreadable ({reason(e)})") from None
    if len(data) != member.size:
        raise EdgepruneError(f"{path}:{member.name}: truncated in the shard")
    return data


def _sample(path: Path, key: str, parts: dict[str, bytes]) -> tuple[str, int, bytes]:
    where = printable(f"{path}:{key}")
    found = [ext for ext in SHARD_IMAGES if ext in parts]
    if ".cls" not in parts or not found:
        missing = "a .cls member" if ".cls" not in parts else f"an image ({'|'.join(SHARD_IMAGES)})"
        raise EdgepruneError(f"{where}: sample has no {missing}")
    if len(found) > 1:
        raise EdgepruneError(f"{where}: sample has {len(found)} images ({', '.join(found)}), expected one")
    return where, _label(where, parts[".cls"]), parts[found[0]]


# -- decoding ----------------------------------------------------------------------------------------------------


class _Decoder:
    """Decodes samples to uint8 [C, H, W] of one size: the first image's (channels: 1 if it is gray, else 3)."""

    def __init__(self, caps: Caps):
        self.caps = caps
        self.size: tuple[int, int] | None = None
        self.channels = 0
        self.max_pixels = 0

    def _check(self, where: str, size: tuple[int, int]) -> None:
        self.max_pixels = max(self.max_pixels, size[0] * size[1])
        if self.size is not None and size != self.size:
            w, h = self.size
            raise EdgepruneError(f"{where}: image is {size[0]}x{size[1]}, the shards' first is {w}x{h}: one size")

    def __call__(self, where: str, data: bytes) -> np.ndarray:
        """One image as uint8 [C, H, W]."""
        with _pillow_limit(self.caps.image_pixels):
            arr, color = _decode_one(where, data, self.caps.image_pixels, self._check)
        if self.size is None:
            self.size, self.channels = (arr.shape[1], arr.shape[0]), 3 if color else 1
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if self.channels == 1 and color:
            raise EdgepruneError(f"{where}: in colour, the shards' first image is grayscale (one channel)")
        return arr.transpose(2, 0, 1)[: self.channels]


@dataclass
class ShardSplits:
    """The shard files of a data set's splits, and what one header pass found in them."""

    train: list[Path]
    test: list[Path]
    labels: dict[str, np.ndarray]  # per split, in shard order
    shape: tuple[int, int, int]
    classes: list[str]
    facts: dict[str, int]  # what the caps were checked on (bounds.FACTS), kept with the cache

    def decoded_bytes(self) -> int:
        """Bytes of all decoded images."""
        return sum(len(v) for v in self.labels.values()) * int(np.prod(self.shape))


def scan(train_pattern: str, test_pattern: str | None, caps: Caps, streamed: bool = False) -> ShardSplits:
    """Find both splits' shards, read every label (images unread, but the first) and check the decoded size
    against ``max_data_bytes`` (``streamed``: no set is held, so the check is the stream's, when it is batched)."""
    train = shard_files(train_pattern)
    test = shard_files(test_pattern) if test_pattern else test_pattern_for(train_pattern)
    labels, stats = {}, {}
    for split, files in (("train", train), ("test", test)):
        ys = [y for f in files for _, y, _ in samples(f, caps, images=False, stats=stats)]
        labels[split] = np.array(ys, dtype=np.int64)
        if not len(labels[split]):
            raise EdgepruneError(f"{split} shards {files[0]}...: no samples")
    where, _, first = next(samples(train[0], caps))
    decoder = _Decoder(caps)
    image = decoder(where, first)
    count = max(int(labels["train"].max()), int(labels["test"].max())) + 1
    facts = dict.fromkeys(FACTS, 0) | {k: stats.get(k, 0) for k in ("image_file_bytes", "source_bytes")}
    splits = ShardSplits(train, test, labels, tuple(image.shape), [str(i) for i in range(count)], facts)
    need = splits.decoded_bytes()
    facts["image_pixels"], facts["decoded_bytes"] = image.shape[1] * image.shape[2], need
    if need > caps.data_bytes and not streamed:
        n = sum(len(v) for v in labels.values())
        raise EdgepruneError(
            f"{train_pattern}: {n:,} images of {image.shape[2]}x{image.shape[1]} decode to {need:,} bytes, over the "
            f"cap of {caps.data_bytes:,} bytes (raise max_data_bytes, --max-data-bytes, to cache it, or train from the "
            "shards with 'edgeprune train --data-storage stream')"
        )
    return splits


def decoded(splits: ShardSplits, caps: Caps, progress: bool = False) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(split, uint8 [b, C, H, W], labels [b]) batches of every image, train then test, in shard order."""
    decoder = _Decoder(caps)
    done, total = 0, sum(len(v) for v in splits.labels.values())
    bar = Progress(progress, tty_only=True)  # a terminal only, as before
    for split, files in (("train", splits.train), ("test", splits.test)):
        batch, ys = [], []
        for f in files:
            for where, y, data in samples(f, caps):
                image = decoder(where, data)
                if image.shape != splits.shape:
                    raise EdgepruneError(f"{where}: image of shape {image.shape}, the shards' first is {splits.shape}")
                batch.append(image)
                ys.append(y)
                if len(batch) == WRITE_BATCH:
                    yield split, np.stack(batch), np.array(ys, dtype=np.int64)
                    done += len(batch)
                    batch, ys = [], []
                    bar.update("decoding", done, total, "images")
        if batch:
            yield split, np.stack(batch), np.array(ys, dtype=np.int64)
    bar.update("decoding", total, total, "images", final=True)


def shard_key(splits: ShardSplits, prefix: str) -> str:
    """The cache key of a shard set: every shard's path, size and modification time."""
    h = hashlib.sha256(f"{prefix}\0shards".encode())
    for split, files in (("train", splits.train), ("test", splits.test)):
        for f in files:
            st = f.stat()
            h.update(f"{split}\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def arrays_in_memory(splits: ShardSplits, caps: Caps, progress: bool = False) -> Arrays:
    """Both splits decoded into memory."""
    out = {s: np.empty((len(splits.labels[s]), *splits.shape), dtype=np.uint8) for s in ("train", "test")}
    filled = {"train": 0, "test": 0}
    for split, x, _ in decoded(splits, caps, progress):
        out[split][filled[split] : filled[split] + len(x)] = x
        filled[split] += len(x)
    ys = {s: torch.from_numpy(splits.labels[s].copy()) for s in out}
    return torch.from_numpy(out["train"]), ys["train"], torch.from_numpy(out["test"]), ys["test"], splits.classes


class OverDisk(EdgepruneError):
    """A shard set too large to cache: over the in-memory budget and the cache folder's free disk.

    ``edgeprune train`` streams such a set (:mod:`edgeprune.data.stream`); everything else refuses it in one line.
    """

    def __init__(self, message: str, splits: ShardSplits, need: int, free: int, folder: Path):
        super().__init__(message)
        self.splits, self.need, self.free, self.folder = splits, need, free, folder


def load_shards(train_pattern: str, test_pattern: str | None, caps: Caps, progress: bool = False) -> tuple[Arrays, str]:
    """A shard set's arrays and content digest: from the cache, else decoded once into it, member by member.

    A set within the in-memory budget is decoded into memory (and cached as a folder's is); a larger one is
    written straight into a cache file, never held, and memory-mapped from it. A set larger than the cache
    folder's free disk is refused in one line (:class:`OverDisk`, before anything is decoded): ``edgeprune train``
    streams it instead (:mod:`edgeprune.data.stream`).
    """
    splits = scan(train_pattern, test_pattern, caps)
    key = shard_key(splits, CACHE_FORMAT)
    hit = read_cache(key, caps)
    if hit is not None and hit[0][4] == splits.classes:
        return hit
    need = splits.decoded_bytes()
    in_memory = choose_storage(need, default_max_data_bytes(), current_storage()) == "memory"
    path = cache_file(key)
    free = available_disk(path.parent) if not in_memory else need
    if need > free:
        raise OverDisk(
            f"{train_pattern}: the decoded images take {need / 1e9:.1f} GB, over the memory budget and the "
            f"{free / 1e9:.1f} GB free in the cache folder {path.parent} (set EDGEPRUNE_CACHE to a larger disk; only "
            "'edgeprune train' streams a set this large, with no cache)",
            splits,
            need,
            free,
            path.parent,
        )
    if progress:
        n = sum(len(v) for v in splits.labels.values())
        print(printable(f"decoding {n:,} images of {train_pattern} (once)"), file=sys.stderr, flush=True)
    if in_memory:
        arrays = arrays_in_memory(splits, caps, progress)
        return arrays, store_cache(key, arrays, train_pattern, splits.facts)
    counts = {s: len(splits.labels[s]) for s in ("train", "test")}
    meta = cache_meta(splits.classes, train_pattern, splits.facts)
    atomic_write(
        path, lambda p: write_image_file(p, splits.classes, splits.shape, counts, decoded(splits, caps, progress), meta)
    )
    hit = read_cache(key, caps)
    if hit is None:
        raise EdgepruneError(f"{path}: the image cache just written cannot be read back")
    return hit


# -- streaming ---------------------------------------------------------------------------------------------------


def shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """``items`` in a random order drawn with a buffer of ``size``: each comes out at most ``size`` places late."""
    pool: list = []
    for item in items:
        if len(pool) < size:
            pool.append(item)
            continue
        j = int(rng.integers(len(pool)))
        yield pool[j]
        pool[j] = item
    rng.shuffle(pool)
    yield from pool


class ShardStream(torch.utils.data.IterableDataset):
    """The samples of a shard pattern (or a list of shard files) as a torch ``IterableDataset`` of (uint8 [C, H, W],
    label).

    Each iteration shuffles the shard order and then the samples through a ``buffer``-sample shuffle buffer, by
    ``seed`` and the epoch (:meth:`set_epoch`): the same seed and epoch give the same order. ``buffer=0``: shard
    order, unshuffled. Nothing but the buffer is held; every member is bounded as :func:`samples` says.
    """

    def __init__(
        self, pattern: str | list[Path], seed: int = 0, buffer: int = DEFAULT_BUFFER, caps: Caps | None = None
    ):
        if not isinstance(buffer, int) or isinstance(buffer, bool) or not 0 <= buffer <= 10_000_000:
            raise EdgepruneError(f"shuffle buffer must be an integer in [0, 10000000], got {buffer!r}")
        caps = caps or Caps(MAX_IMAGE_PIXELS, MAX_FILE_BYTES, 1)  # the data-size cap is not used: nothing is held
        files = [Path(f) for f in pattern] if isinstance(pattern, list | tuple) else shard_files(pattern)
        self.files, self.caps, self.seed, self.buffer, self.epoch = files, caps, seed, buffer, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iterations' order for ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        """The samples, decoded, in this epoch's order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        files = list(self.files)
        if self.buffer:
            rng.shuffle(files)
        decoder = _Decoder(self.caps)
        raw = ((where, y, data) for f in files for where, y, data in samples(f, self.caps))
        order = shuffle_buffer(raw, self.buffer, rng) if self.buffer else raw
        for where, y, data in order:
            yield torch.from_numpy(np.ascontiguousarray(decoder(where, data))), y


__all__ = [
    "DEFAULT_BUFFER",
    "OverDisk",
    "ShardSplits",
    "ShardStream",
    "arrays_in_memory",
    "decoded",
    "expand_braces",
    "is_shard_input",
    "load_shards",
    "samples",
    "scan",
    "shard_files",
    "shard_key",
    "shuffle_buffer",
    "test_pattern_for",
]
