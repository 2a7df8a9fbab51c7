"""Image classification data sets held entirely in memory as uint8 tensors.

Two layouts load with :func:`load_dataset`:

- image folders, ``root/<split>/<class>/*.{png,jpg,jpeg,webp,bmp,...}`` with splits ``train`` and
  ``test`` (or ``val``); class index = position of the folder name in sorted order. Any image
  Pillow reads works; all images must have one size; grayscale-only data sets get one channel.
  16-bit images are scaled to 8 bits (``round(v / 257)``), as are 32-bit integer images holding
  16-bit values; floating-point images must hold values in [0, 1] (``round(v * 255)``).
- the official CIFAR python formats: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``). These are pickles; they
  are read with an unpickler that admits only plain numpy arrays besides dicts, lists, strings and
  numbers, so a tampered file cannot run code.

Either may also come as a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive, read straight from the archive
(nothing is written out but the cache): one pass reads the member headers only, a second streams the
members the loader needs, one at a time, in archive order. A root holding nothing but one folder is
descended into.

Nothing is read or decoded blindly: a file's size is checked (from ``stat`` or the archive's member
header) before it is read, against ``max_file_bytes``; an image's width and height are checked
(from its header) before it is decoded, against ``max_image_pixels`` and the data set's one size.
``max_data_bytes`` (default: half the memory available) caps the whole data set twice, before
anything is read or decoded: the bytes of the files it is read from (with 1 KiB counted per archive
member for bookkeeping), and its decoded size, N x 3 x H x W bytes from the first image's header.
Archive members that are neither images nor CIFAR batch files are never read.

Decoded images are cached as one safetensors file per data set in ``$EDGEPRUNE_CACHE`` (default
``~/.cache/edgeprune``), keyed by the archive's content hash, or for a folder by every image's
name, size and modification time, so later loads take about a second. The cache file carries a
SHA-256 checksum of its content and metadata, verified on every read; a damaged file is ignored
(with a warning) and rebuilt, and one whose recorded file sizes, image size or data size are over
today's caps is not used (the data set is read again, and refused the same way as the first time).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io as _io
import json
import lzma
import math
import os
import pickle
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TEST_SPLITS = ("test", "val")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *SIXTEEN_BIT_MODES)
CACHE_FORMAT = "edgeprune-images/2"  # 2: the metadata holds a checksum and the facts the caps are checked on
CONTENT_FORMAT = "edgeprune-dataset/1"
CIFAR_FILES = frozenset(
    [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "train", "test", "meta"]
)
MAX_IMAGE_PIXELS = 4096 * 4096  # default cap on one image's width x height, checked before decoding
MAX_FILE_BYTES = 64 * 2**20  # default cap on one image file's size, checked before reading
MAX_BATCH_BYTES = 256 * 2**20  # least cap on a CIFAR batch file (the official CIFAR-100 train file is 155 MB)
DATA_MEMORY_SHARE = 0.5  # default max_data_bytes: this share of the memory available when loading
ARCHIVE_MEMBER_COST = 1024  # bytes counted toward max_data_bytes per archive member: the loader's bookkeeping
FACTS = ("image_pixels", "image_file_bytes", "batch_file_bytes", "source_bytes", "scan_bytes", "decoded_bytes")

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


@dataclass
class ImageDataset:
    """A labelled image data set, all of it in memory as uint8 tensors."""

    name: str
    classes: list[str]
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, from the training split
    std: tuple[float, ...]
    # Memo of content_hash; not an __init__ argument, so dataclasses.replace() (new tensors) never carries it over.
    _content_hash: str | None = field(default=None, init=False, repr=False, compare=False)

    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the class names and both splits' images and labels: equal hashes, equal data.

        Computed at first use (or by the loader) and kept: change the tensors through ``dataclasses.replace``.
        """
        if self._content_hash is None:
            self._content_hash = content_digest(self.classes, self.train_x, self.train_y, self.test_x, self.test_y)
        return self._content_hash

    def summary(self) -> str:
        """A one-line description: name, sizes, image shape, classes."""
        c, h, w = self.input_shape()
        return (
            f"{self.name}: {len(self.train_y):,} train / {len(self.test_y):,} test images, "
            f"{c}x{h}x{w}, {self.num_classes} classes"
        )


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


@dataclass(frozen=True)
class _Caps:
    """What one load may read and hold."""

    image_pixels: int
    file_bytes: int
    data_bytes: int


# -- public entry point -----------------------------------------------------------------------


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


def load_dataset(
    path: str | Path,
    limit_train: int | None = None,
    limit_test: int | None = None,
    progress: bool = False,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_data_bytes: int | None = None,
) -> ImageDataset:
    """Load an image-folder data set, an archive of one, or an official CIFAR-10/100 python folder.

    ``max_image_pixels`` caps one image's width x height (checked from its header, before decoding);
    ``max_file_bytes`` caps one image file's size (checked before reading; CIFAR batch files may have
    ``max(max_file_bytes, MAX_BATCH_BYTES)``). Archive members that are neither are never read.
    ``max_data_bytes`` (default :func:`default_max_data_bytes`) caps the bytes of all files read and,
    separately, the decoded size of the data set, both checked before reading or decoding anything.
    The caps hold on a cache hit too. Every error is one line.
    """
    try:
        return _load_dataset(
            Path(path).expanduser(), limit_train, limit_test, progress, max_image_pixels, max_file_bytes, max_data_bytes
        )
    except EdgepruneError as e:  # names from a file tree or an archive may hold line breaks
        text = _printable(str(e))
        if text != str(e):
            raise EdgepruneError(text) from None
        raise


def _load_dataset(
    path: Path,
    limit_train: int | None,
    limit_test: int | None,
    progress: bool,
    max_image_pixels: int,
    max_file_bytes: int,
    max_data_bytes: int | None,
) -> ImageDataset:
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise EdgepruneError(f"{name} must be a positive integer, got {limit!r}")
    if max_data_bytes is None:
        max_data_bytes = default_max_data_bytes()
    caps = (("max_image_pixels", max_image_pixels), ("max_file_bytes", max_file_bytes))
    for name, cap in (*caps, ("max_data_bytes", max_data_bytes)):
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise EdgepruneError(f"{name} must be a positive integer, got {cap!r}")
    caps = _Caps(max_image_pixels, max_file_bytes, max_data_bytes)
    if not path.exists():
        raise EdgepruneError(
            f"{path}: no such data set (expected an image folder, a .tar.gz of one, or a CIFAR python folder)"
        )
    name = _dataset_name(path)
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise EdgepruneError(f"{path}: not a folder or a .tar.gz/.tgz/.tar archive")
        try:
            digest = file_digest(path)
        except OSError as e:
            raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
        key = hashlib.sha256(f"{CACHE_FORMAT}\0archive\0{digest}".encode()).hexdigest()[:32]
        hit = _read_cache(key, caps)
        if hit is None:
            tree = _Tree(path, caps, digest, progress)
            arrays = _load_tree(tree, progress, False)[0]
            hit = arrays, _store_cache(key, arrays, path, tree.facts)
        arrays, content = hit
    else:
        arrays, content = _load_tree(_Tree(path, caps), progress, True)
    train_x, train_y, test_x, test_y, classes = arrays
    if (limit_train or len(train_y)) < len(train_y) or (limit_test or len(test_y)) < len(test_y):
        content = None  # a subset: its own hash, computed when asked for
    train_x, train_y = _subset(train_x, train_y, limit_train)
    test_x, test_y = _subset(test_x, test_y, limit_test)
    mean, std = channel_stats(train_x)
    dataset = ImageDataset(name, classes, train_x, train_y, test_x, test_y, mean, std)
    dataset._content_hash = content
    return dataset


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in [0, 1] pixel units."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.int64)
        total += part.sum(dim=(0, 2, 3)).double()
        squares += (part * part).sum(dim=(0, 2, 3)).double()
    count = x.numel() // c
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    std = var.sqrt() / 255.0
    return tuple(float(v) for v in mean / 255.0), tuple(max(float(v), 1e-3) for v in std)


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stratified subset: the first images of each class, classes taken in turn."""
    if limit is None or limit >= len(y):
        return x, y
    labels = y.numpy()
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # by rank within class, then by class: round robin
    keep = torch.from_numpy(np.sort(order[:limit]))
    return x[keep].contiguous(), y[keep].contiguous()


def _dataset_name(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name or str(path)


def _printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: a message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _reason(e: BaseException) -> str:
    """A library exception's text on one line (tarfile's and Pillow's may span several)."""
    return _printable(" ".join(str(e).split())) or type(e).__name__


def _over_data_cap(where: str, what: str, size: int, cap: int) -> EdgepruneError:
    """The one-line error for a data set over ``max_data_bytes``."""
    return EdgepruneError(
        f"{where}: {what} {size:,} bytes, over the cap of {cap:,} bytes "
        "(raise max_data_bytes, --max-data-bytes, to load it)"
    )


# -- files on disk or in an archive -----------------------------------------------------------


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wanted(rel: PurePosixPath) -> bool:
    """Whether the loader may need a file's content: an image or an official CIFAR batch file."""
    return rel.suffix.lower() in IMAGE_EXTENSIONS or rel.name in CIFAR_FILES


class _ReadTooBig(Exception):
    """tarfile asked for more bytes at once than any file the loader reads may have."""


class _BoundedReads:
    """A tar stream for tarfile that refuses any one read over ``bound`` bytes.

    tarfile reads a long-name or pax header whole, whatever size its header declares: a few MB of
    compressed zeros could otherwise make it allocate gigabytes before any member is looked at.
    """

    def __init__(self, raw: object, bound: int) -> None:
        self.raw = raw
        self.bound = bound

    def read(self, size: int = -1) -> bytes:
        """At most ``bound`` bytes; a larger (or unbounded) request is refused."""
        if size is None or size < 0 or size > self.bound:
            raise _ReadTooBig(size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move in the (decompressed) stream; forward only, in the loader's use."""
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        """The position in the (decompressed) stream."""
        return self.raw.tell()


def _open_tar(path: Path, bound: int) -> tuple[tarfile.TarFile, object]:
    """Open ``path`` (plain, gzip, bzip2 or xz tar) for reading, every read bounded; also its raw file to close."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller, after the TarFile
    try:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(b"BZh"):
            stream = bz2.BZ2File(raw)
        elif magic.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(raw)
        else:
            stream = raw
        return tarfile.open(fileobj=_BoundedReads(stream, bound), mode="r:"), raw
    except BaseException:
        raw.close()
        raise


class _Tree:
    """A read-only file tree addressed by relative POSIX paths: a folder on disk, or a tar archive."""

    def __init__(self, root: Path, caps: _Caps, digest: str = "", progress: bool = False):
        self.root = root
        self.caps = caps
        self.digest = digest  # set for an archive, whose member headers are read here (not their content)
        self.sizes: dict[PurePosixPath, int] = {}  # every visible regular file of an archive, from its header
        self.members: dict[PurePosixPath, tarfile.TarInfo] = {}  # the headers of those the loader may need
        self.kids: dict[PurePosixPath, set[str]] = {}
        self.facts = dict.fromkeys(FACTS, 0)  # what the caps were checked on, kept with the cache
        if digest:
            self._scan_archive(progress)
            for p in self.sizes:
                for child in [p, *p.parents][:-1]:
                    self.kids.setdefault(child.parent, set()).add(child.name)

    def _unreadable(self, e: BaseException) -> EdgepruneError:
        """The one-line error for an archive tarfile or a decompressor cannot read."""
        if isinstance(e, _ReadTooBig):
            return EdgepruneError(
                f"{self.root}: a tar header asks to read {e.args[0]:,} bytes at once, over the cap of "
                f"{self.read_bound:,} bytes (raise max_file_bytes to read it)"
            )
        return EdgepruneError(f"{self.root}: not a readable tar archive ({_reason(e)})")

    @property
    def read_bound(self) -> int:
        """The most bytes one read from an archive may ask for: the largest file the loader may read."""
        return max(self.caps.file_bytes, MAX_BATCH_BYTES)

    def _scan_archive(self, progress: bool) -> None:
        """Note every member's header, reading no content; stop once the wanted members pass ``max_data_bytes``."""
        if progress:
            print(_printable(f"reading {self.root}"), file=sys.stderr, flush=True)
        wanted = count = 0
        try:
            tar, raw = _open_tar(self.root, self.read_bound)
            with raw, tar:
                member = tar.next()
                while member is not None and wanted + count * ARCHIVE_MEMBER_COST <= self.caps.data_bytes:
                    tar.members.clear()  # tarfile keeps every header it reads; the loader keeps what it needs
                    count += 1
                    parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", "")]
                    if member.isfile() and parts and not any(p.startswith(".") for p in parts):
                        rel = PurePosixPath(*parts)
                        if rel in self.members:  # a later member of the same name replaces it, as tar does
                            wanted -= self.members.pop(rel).size
                        self.sizes[rel] = member.size
                        if _wanted(rel):
                            self.members[rel] = member
                            wanted += member.size
                    member = tar.next()
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
            raise self._unreadable(e) from None
        self.facts["scan_bytes"] = total = wanted + count * ARCHIVE_MEMBER_COST
        if total > self.caps.data_bytes:
            raise _over_data_cap(
                str(self.root),
                f"its images and batch files, with {ARCHIVE_MEMBER_COST:,} bytes per member counted for "
                f"bookkeeping ({count:,} members so far), come to",
                total,
                self.caps.data_bytes,
            )

    @property
    def is_archive(self) -> bool:
        """True for an archive."""
        return bool(self.digest)

    def display(self, rel: PurePosixPath) -> str:
        """A name for messages."""
        return f"{self.root}:{rel}" if self.is_archive else str(self.root / rel)

    def is_dir(self, rel: PurePosixPath) -> bool:
        """Whether ``rel`` is a folder."""
        return rel in self.kids if self.is_archive else (self.root / rel).is_dir()

    def is_file(self, rel: PurePosixPath) -> bool:
        """Whether ``rel`` is a file."""
        return rel in self.sizes if self.is_archive else (self.root / rel).is_file()

    def children(self, rel: PurePosixPath) -> list[PurePosixPath]:
        """Visible entries of folder ``rel`` (hidden names skipped), sorted."""
        if self.is_archive:
            kids = self.kids.get(rel, set())
        else:
            kids = {p.name for p in (self.root / rel).iterdir()}
        return [rel / k for k in sorted(kids) if not k.startswith(".")]

    def limit(self, rel: PurePosixPath) -> int:
        """The most bytes read of one file: ``max_file_bytes``, at least ``MAX_BATCH_BYTES`` for CIFAR batches."""
        return max(self.caps.file_bytes, MAX_BATCH_BYTES) if _is_batch(rel) else self.caps.file_bytes

    def _too_big(self, rel: PurePosixPath, size: int) -> EdgepruneError:
        """The one-line error for a file over its size cap."""
        return EdgepruneError(
            f"{self.display(rel)}: file is {size:,} bytes, over the cap of {self.limit(rel):,} bytes "
            "(raise max_file_bytes to read it)"
        )

    def size(self, rel: PurePosixPath) -> int:
        """A file's size, from its archive header or ``stat``."""
        if self.is_archive:
            return self.sizes[rel]
        try:
            return (self.root / rel).stat().st_size
        except OSError as e:
            raise EdgepruneError(f"{self.display(rel)}: cannot read ({e.strerror})") from None

    def plan(self, rels: list[PurePosixPath]) -> None:
        """Check the total size of the files about to be read against ``max_data_bytes``, before reading any.

        (Each file's own cap is checked as it comes to be read, from its size: it is never read either.)
        """
        total = 0
        for rel in rels:
            size = self.size(rel)
            total += size
            fact = "batch_file_bytes" if _is_batch(rel) else "image_file_bytes"
            self.facts[fact] = max(self.facts[fact], size)
        self.facts["source_bytes"] = total
        if total > self.caps.data_bytes:
            raise _over_data_cap(str(self.root), f"its {len(rels):,} files hold", total, self.caps.data_bytes)

    def read(self, rel: PurePosixPath) -> bytes:
        """A file's content from disk; a file over the size cap is refused from its size, unread."""
        try:
            with open(self.root / rel, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limit(rel):
                    raise self._too_big(rel, size)
                return f.read(size)  # never more than the size checked, even if the file grows meanwhile
        except OSError as e:
            raise EdgepruneError(f"{self.display(rel)}: cannot read ({e.strerror})") from None

    def stream(self, rels: list[PurePosixPath]) -> Iterator[tuple[PurePosixPath, bytes]]:
        """Each file of ``rels`` with its content, one at a time: in the given order, or an archive's own order.

        An archive is read in one forward pass (seeking back in a compressed stream starts it over), and
        only one member is held at a time.
        """
        if not self.is_archive:
            for rel in rels:
                yield rel, self.read(rel)
            return
        order = sorted(set(rels), key=lambda r: self.members[r].offset_data)
        try:
            tar, raw = _open_tar(self.root, self.read_bound)
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
            raise self._unreadable(e) from None
        with raw, tar:
            for rel in order:
                info = self.members[rel]
                if info.size > self.limit(rel):
                    raise self._too_big(rel, info.size)
                try:
                    f = tar.extractfile(info)
                    data = _read_chunked(f, info.size) if f is not None else b""
                except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
                    raise self._unreadable(e) from None
                if len(data) != info.size:
                    raise EdgepruneError(f"{self.display(rel)}: truncated in the archive")
                yield rel, data
                del data  # not held while the next member is read

    def stamp(self, rel: PurePosixPath) -> str:
        """Size and modification time of a file on disk (content is covered by the digest in an archive)."""
        if self.is_archive:
            return str(self.sizes[rel])
        st = (self.root / rel).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


def _read_chunked(f: object, size: int, chunk: int = 1 << 18) -> bytes:
    """Up to ``size`` bytes of ``f``, a chunk at a time.

    One large read of a member passes through three buffered layers (tarfile's, gzip's, zlib's), each
    allocating the whole size: chunks keep the transient to about twice the content.
    """
    parts = []
    while size > 0:
        part = f.read(min(chunk, size))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _is_batch(rel: PurePosixPath) -> bool:
    """Whether ``rel`` names an official CIFAR batch (or meta) file rather than an image."""
    return rel.suffix.lower() not in IMAGE_EXTENSIONS and rel.name in CIFAR_FILES


# -- layout detection -------------------------------------------------------------------------


def _has_splits(tree: _Tree, root: PurePosixPath) -> bool:
    return tree.is_dir(root / "train") and any(tree.is_dir(root / s) for s in TEST_SPLITS)


def _is_cifar10(tree: _Tree, root: PurePosixPath) -> bool:
    return tree.is_file(root / "data_batch_1") and tree.is_file(root / "test_batch")


def _is_cifar100(tree: _Tree, root: PurePosixPath) -> bool:
    return tree.is_file(root / "train") and tree.is_file(root / "test")


def _find_root(tree: _Tree) -> tuple[PurePosixPath, str]:
    """Go down through folders holding nothing but one folder; say which layout the data set has."""
    root = PurePosixPath(".")
    for _ in range(16):
        if _is_cifar10(tree, root):
            return root, "cifar10"
        if _is_cifar100(tree, root):
            return root, "cifar100"
        if _has_splits(tree, root):
            return root, "folders"
        entries = tree.children(root)
        if len(entries) == 1 and tree.is_dir(entries[0]):
            root = entries[0]
        else:
            break
    if not tree.children(root):
        raise EdgepruneError(f"{tree.display(root)}: empty, no data set")
    raise EdgepruneError(
        f"{tree.display(root)}: not a data set: expected train/ and test/ folders of class folders, "
        "cifar-10-batches-py (data_batch_1..5, test_batch) or cifar-100-python (train, test)"
    )


# -- official CIFAR python pickles ------------------------------------------------------------


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, restricted to latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _frombuffer(buf: object, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """numpy's protocol-5 array constructor, for plain (non-object) arrays only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and plain numpy arrays."""

    _reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array reconstructor
    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> object:
        """Refuse every global except numpy's array constructors and latin-1 bytes."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'") from None


def read_pickle(data: bytes, where: str) -> dict:
    """Unpickle one official CIFAR batch file safely (no code can run); keys are decoded to str."""
    try:
        obj = _CifarUnpickler(_io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is a user error
        raise EdgepruneError(f"{where}: not a CIFAR python batch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise EdgepruneError(f"{where}: not a CIFAR python batch file (holds a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_arrays(tree: _Tree, rel: PurePosixPath, content: bytes, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    where = tree.display(rel)
    batch = read_pickle(content, where)
    if "data" not in batch or label_key not in batch:
        raise EdgepruneError(f"{where}: missing '{'data' if 'data' not in batch else label_key}' entry")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise EdgepruneError(f"{where}: 'data' must be a uint8 array of shape (N, 3072)")
    # A pickle may call numpy's array constructor for any shape: count it before copying into it.
    tree.facts["decoded_bytes"] += data.nbytes
    if tree.facts["decoded_bytes"] > tree.caps.data_bytes:
        raise _over_data_cap(
            where, "with the batches before it, the images take", tree.facts["decoded_bytes"], tree.caps.data_bytes
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise EdgepruneError(f"{where}: '{label_key}' is not a list of integers") from None
    if len(y) != len(data):
        raise EdgepruneError(f"{where}: {len(data)} images but {len(y)} labels")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(y.copy())


def _label_names(names: object, count: int) -> list[str]:
    if isinstance(names, list) and len(names) >= count:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(count)]


def _load_pickles(tree: _Tree, root: PurePosixPath, kind: str) -> Arrays:
    if kind == "cifar10":
        files = [root / f"data_batch_{i}" for i in range(1, 6) if tree.is_file(root / f"data_batch_{i}")]
        test_file, label_key, meta, names_key, least = root / "test_batch", "labels", "batches.meta", "label_names", 0
    else:
        files, test_file = [root / "train"], root / "test"
        label_key, meta, names_key, least = "fine_labels", "meta", "fine_label_names", 100
    meta = root / meta
    needed = [*files, test_file] + ([meta] if tree.is_file(meta) else [])
    tree.plan(needed)
    parts: dict[PurePosixPath, tuple[torch.Tensor, torch.Tensor]] = {}
    names: object = None
    for rel, content in tree.stream(needed):  # an archive's members come in its own order
        if rel == meta:
            names = read_pickle(content, tree.display(rel)).get(names_key)
        else:
            parts[rel] = _batch_arrays(tree, rel, content, label_key)
        del content
    train_x, train_y = torch.cat([parts[f][0] for f in files]), torch.cat([parts[f][1] for f in files])
    test_x, test_y = parts.pop(test_file)
    parts.clear()
    if len(train_y) == 0 or len(test_y) == 0:
        raise EdgepruneError(f"{tree.display(root)}: no images")
    count = max(least, int(max(train_y.max(), test_y.max())) + 1)
    classes = _label_names(names, count)
    if int(min(train_y.min(), test_y.min())) < 0:
        raise EdgepruneError(f"{tree.display(root)}: negative labels")
    return train_x, train_y, test_x, test_y, classes


# -- image folders ----------------------------------------------------------------------------


def _list_split(tree: _Tree, split: PurePosixPath) -> dict[str, list[PurePosixPath]]:
    """Class name -> sorted image files of one split folder."""
    return {
        d.name: [p for p in tree.children(d) if p.suffix.lower() in IMAGE_EXTENSIONS and tree.is_file(p)]
        for d in tree.children(split)
        if tree.is_dir(d)
    }


def _load_tree(tree: _Tree, progress: bool, cache: bool) -> tuple[Arrays, str | None]:
    """Find the data set in ``tree`` and load it (decoding images, or reading them from the cache).

    Also the content digest, when the cache was read or written (None otherwise).
    """
    root, kind = _find_root(tree)
    if kind != "folders":
        return _load_pickles(tree, root, kind), None
    test_name = next(s for s in TEST_SPLITS if tree.is_dir(root / s))
    splits = {"train": root / "train", "test": root / test_name}
    listing = {split: _list_split(tree, folder) for split, folder in splits.items()}
    classes = sorted(listing["train"])
    if not classes:
        raise EdgepruneError(f"{tree.display(splits['train'])}: no class folders")
    for split, by_class in listing.items():
        if not any(by_class.values()):
            raise EdgepruneError(f"{tree.display(splits[split])}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    extra = sorted(set(listing["test"]) - set(classes))
    if extra:
        raise EdgepruneError(
            f"{tree.display(splits['test'])}: class folder '{extra[0]}' has no counterpart in "
            f"{tree.display(splits['train'])}"
        )
    files = [(p, i) for split in ("train", "test") for i, c in enumerate(classes) for p in listing[split].get(c, [])]
    key = ""
    if cache:  # every image's name, size and modification time
        h = hashlib.sha256(f"{CACHE_FORMAT}\0{Path(tree.display(root)).resolve()}".encode())
        for p, i in files:
            h.update(f"{p.relative_to(root)}\0{tree.stamp(p)}\0{i}\n".encode())
        key = h.hexdigest()[:32]
        hit = _read_cache(key, tree.caps)
        if hit is not None and hit[0][4] == classes:
            return hit
    tree.plan([p for p, _ in files])
    start = time.perf_counter()
    if progress:
        print(_printable(f"decoding {len(files):,} images of {tree.display(root)} (once)"), file=sys.stderr, flush=True)
    x, color = _decode_all(tree, [p for p, _ in files], progress)
    y = torch.tensor([i for _, i in files], dtype=torch.int64)
    if not color:
        x = x[:, :1].contiguous()
    n_train = sum(len(v) for v in listing["train"].values())
    arrays = (x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)
    if progress:
        print(f"decoded in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if cache:
        return arrays, _store_cache(key, arrays, tree.display(root), tree.facts)
    return arrays, None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP file's first chunk header, or None if not a WebP file."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width - 1, height - 1
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":  # lossy key frame: 14-bit width, height after the start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open what ``max_pixels`` admits (its bomb check stops at 2x its own cap), warning-free."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow warns (over two lines) about odd metadata of an untrusted file: the image decodes or is refused.
        warnings.filterwarnings("ignore", module=r"PIL\.")
        if old is not None and max_pixels > old:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


@dataclass
class _Budget:
    """The decoded size check made once, at the first image: ``count`` images against ``max_bytes``."""

    count: int
    max_bytes: int
    where: str


def _check_size(
    where: str,
    size: tuple[int, int],
    max_pixels: int,
    first: tuple[str, tuple[int, int]] | None,
    budget: _Budget | None = None,
) -> None:
    """Refuse an image, from its header, that is over the pixel cap or not the data set's one size.

    At the first image (``budget`` given), also refuse the data set if its images decode to more than
    ``max_data_bytes`` (N x 3 x H x W: every image is decoded to RGB before a gray data set keeps one channel).
    """
    w, h = size
    if w * h > max_pixels:
        raise EdgepruneError(
            f"{where}: image is {w}x{h} ({w * h:,} pixels), over the cap of {max_pixels:,} pixels "
            "(raise max_image_pixels to load it)"
        )
    if first is not None and size != first[1]:
        raise EdgepruneError(
            f"{where}: image is {w}x{h}, but {first[0]} is {first[1][0]}x{first[1][1]}; "
            "all images of a data set must have one size"
        )
    if budget is not None and budget.count * 3 * w * h > budget.max_bytes:
        what = f"{budget.count:,} images of {w}x{h} (as {where}) decode to"
        raise _over_data_cap(budget.where, what, budget.count * 3 * w * h, budget.max_bytes)


def _to_uint8(where: str, im: object) -> tuple[np.ndarray, bool]:
    """A loaded image as uint8, [H, W, 3] (or [H, W] for 16-bit, 32-bit and float gray); whether in colour.

    16-bit values are scaled, not clipped: ``round(v / 257)``, the inverse of the usual 8 to 16-bit
    widening ``v * 257``. 32-bit integer images must hold 16-bit values (how Pillow and TIFF hold them),
    float images values in [0, 1]; others are refused.
    """
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise EdgepruneError(
                f"{where}: 32-bit integer image with values {lo}..{hi}, outside the 16-bit range 0..65535 "
                "this loader scales to 8 bits; save it with 8 or 16 bits per pixel"
            )
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), False
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(a).all())
        lo, hi = (float(a.min()), float(a.max())) if a.size and finite else (0.0, 0.0)
        if not finite or lo < 0 or hi > 1:
            span = f"{lo:g}..{hi:g}" if finite else "NaN or infinite values"
            raise EdgepruneError(
                f"{where}: floating-point image with values outside [0, 1] ({span}); "
                "save it with 8 or 16 bits per pixel, or scale it to [0, 1]"
            )
        return np.rint(a * 255).astype(np.uint8), False
    return np.asarray(im.convert("RGB")), mode not in GRAY_MODES


def _decode_one(
    where: str,
    data: bytes,
    max_pixels: int,
    first: tuple[str, tuple[int, int]] | None,
    budget: _Budget | None = None,
) -> tuple[np.ndarray, bool]:
    """Decode one image to uint8 [H, W, 3] or [H, W], its size checked first; also say whether it is in colour."""
    from PIL import Image

    webp = _webp_size(data)  # Pillow's WebP reader allocates the whole canvas when it opens a file
    if webp is not None:
        _check_size(where, webp, max_pixels, first, budget)
    try:
        with Image.open(_io.BytesIO(data)) as im:
            _check_size(where, im.size, max_pixels, first, budget)
            im.load()
            return _to_uint8(where, im)
    except EdgepruneError:
        raise
    except Image.DecompressionBombError as e:
        raise EdgepruneError(f"{where}: refused by Pillow ({_reason(e)}); raise max_image_pixels to load it") from None
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted image is a user error
        raise EdgepruneError(f"{where}: unreadable image ({_reason(e)})") from None


def _decode_all(tree: _Tree, files: list[PurePosixPath], progress: bool) -> tuple[torch.Tensor, bool]:
    """Decode every image to uint8 [N, 3, H, W]; also say whether any was in colour.

    Images come in the tree's order (an archive's own); each goes to its place in ``files``. The
    decoded size is checked against ``max_data_bytes`` at the first image's header, before decoding.
    """
    index = {rel: i for i, rel in enumerate(files)}
    first: tuple[str, tuple[int, int]] | None = None
    out: np.ndarray | None = None
    color = False
    last = time.perf_counter()
    show = progress and sys.stderr.isatty()
    where = str(tree.root)
    with _pillow_limit(tree.caps.image_pixels):
        for n, (rel, data) in enumerate(tree.stream(files)):
            budget = _Budget(len(files), tree.caps.data_bytes, where) if out is None else None
            arr, in_color = _decode_one(tree.display(rel), data, tree.caps.image_pixels, first, budget)
            del data  # one encoded file held at a time
            color = color or in_color
            if out is None:
                h, w = arr.shape[:2]
                first = (tree.display(rel), (w, h))
                out = np.empty((len(files), 3, h, w), dtype=np.uint8)  # [N, C, H, W]: no permuted copy later
                tree.facts["image_pixels"], tree.facts["decoded_bytes"] = w * h, out.nbytes
            out[index[rel]] = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]  # gray: into all 3 channels
            if show and time.perf_counter() - last > 0.5:
                last = time.perf_counter()
                print(f"\rdecoded {n + 1:,}/{len(files):,}", end="", file=sys.stderr, flush=True)
    if show:
        print(f"\rdecoded {len(files):,}/{len(files):,}", file=sys.stderr, flush=True)
    assert out is not None
    return torch.from_numpy(out), color


# -- cache ------------------------------------------------------------------------------------


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


def _facts_fit(facts: dict[str, int], tensor_bytes: int, caps: _Caps) -> bool:
    """Whether a cached data set is within today's caps, by what its first load read and decoded."""
    return (
        facts["image_pixels"] <= caps.image_pixels
        and facts["image_file_bytes"] <= caps.file_bytes
        and facts["batch_file_bytes"] <= max(caps.file_bytes, MAX_BATCH_BYTES)
        and max(facts["source_bytes"], facts["scan_bytes"], facts["decoded_bytes"], tensor_bytes) <= caps.data_bytes
    )


def _damaged(path: Path, why: str) -> None:
    print(_printable(f"warning: ignoring the damaged image cache {path} ({why}); decoding again"), file=sys.stderr)


def _read_cache(key: str, caps: _Caps) -> tuple[Arrays, str] | None:
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
        _damaged(path, _reason(e))
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


def _store_cache(key: str, arrays: Arrays, source: object, facts: dict[str, int]) -> str:
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
        why = _reason(e).removeprefix(f"{path}: ")  # a write error may name the file already
        print(_printable(f"warning: cannot write the image cache {path} ({why})"), file=sys.stderr)
    return content


__all__ = [
    "ImageDataset",
    "cache_dir",
    "channel_stats",
    "content_digest",
    "default_max_data_bytes",
    "file_digest",
    "load_dataset",
    "read_pickle",
]
