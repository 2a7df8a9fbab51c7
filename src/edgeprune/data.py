"""Image classification data sets held entirely in memory as uint8 tensors.

Two layouts load with :func:`load_dataset`:

- image folders, ``root/<split>/<class>/*.{png,jpg,jpeg,webp,bmp,...}`` with splits ``train`` and
  ``test`` (or ``val``); class index = position of the folder name in sorted order. Any image
  Pillow reads works; all images must have one size; grayscale-only data sets get one channel.
- the official CIFAR python formats: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``). These are pickles; they
  are read with an unpickler that admits only plain numpy arrays besides dicts, lists, strings and
  numbers, so a tampered file cannot run code.

Either may also come as a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive, read straight from the archive
(nothing is written out but the cache). A root holding nothing but one folder is descended into.

Nothing is read or decoded blindly: a file's size is checked (from ``stat`` or the archive's member
header) before it is read, against ``max_file_bytes``; an image's width and height are checked
(from its header) before it is decoded, against ``max_image_pixels`` and the data set's one size.
Archive members that are neither images nor CIFAR batch files are never read.

Decoded images are cached as one safetensors file per data set in ``$EDGEPRUNE_CACHE`` (default
``~/.cache/edgeprune``), keyed by the archive's content hash, or for a folder by every image's
name, size and modification time, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import pickle
import sys
import tarfile
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")
CACHE_FORMAT = "edgeprune-images/1"
CIFAR_FILES = frozenset(
    [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "train", "test", "meta"]
)
MAX_IMAGE_PIXELS = 4096 * 4096  # default cap on one image's width x height, checked before decoding
MAX_FILE_BYTES = 64 * 2**20  # default cap on one image file's size, checked before reading
MAX_BATCH_BYTES = 256 * 2**20  # least cap on a CIFAR batch file (the official CIFAR-100 train file is 155 MB)

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

    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def summary(self) -> str:
        """A one-line description: name, sizes, image shape, classes."""
        c, h, w = self.input_shape()
        return (
            f"{self.name}: {len(self.train_y):,} train / {len(self.test_y):,} test images, "
            f"{c}x{h}x{w}, {self.num_classes} classes"
        )


# -- public entry point -----------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder: ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``."""
    env = os.environ.get("EDGEPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeprune"


def load_dataset(
    path: str | Path,
    limit_train: int | None = None,
    limit_test: int | None = None,
    progress: bool = False,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImageDataset:
    """Load an image-folder data set, an archive of one, or an official CIFAR-10/100 python folder.

    ``max_image_pixels`` caps one image's width x height (checked from its header, before decoding);
    ``max_file_bytes`` caps one image file's size (checked before reading; CIFAR batch files may have
    ``max(max_file_bytes, MAX_BATCH_BYTES)``). Archive members that are neither are never read.
    """
    path = Path(path).expanduser()
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise EdgepruneError(f"{name} must be a positive integer, got {limit!r}")
    for name, cap in (("max_image_pixels", max_image_pixels), ("max_file_bytes", max_file_bytes)):
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise EdgepruneError(f"{name} must be a positive integer, got {cap!r}")
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
        arrays = _read_cache(key)
        if arrays is None:
            tree = _Tree(path, max_file_bytes, digest, progress)
            arrays = _store_cache(key, _load_tree(tree, progress, False, max_image_pixels), path)
    else:
        arrays = _load_tree(_Tree(path, max_file_bytes), progress, True, max_image_pixels)
    train_x, train_y, test_x, test_y, classes = arrays
    train_x, train_y = _subset(train_x, train_y, limit_train)
    test_x, test_y = _subset(test_x, test_y, limit_test)
    mean, std = channel_stats(train_x)
    return ImageDataset(name, classes, train_x, train_y, test_x, test_y, mean, std)


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


class _Tree:
    """A read-only file tree addressed by relative POSIX paths: a folder on disk, or a tar archive."""

    def __init__(self, root: Path, max_file_bytes: int = MAX_FILE_BYTES, digest: str = "", progress: bool = False):
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.digest = digest  # set for an archive, whose wanted files are read into memory here
        self.sizes: dict[PurePosixPath, int] = {}  # every visible regular file of an archive, from its header
        self.files: dict[PurePosixPath, bytes] = {}  # the content of those the loader may need
        self.kids: dict[PurePosixPath, set[str]] = {}
        if digest:
            self._read_archive(progress)
            for p in self.sizes:
                for child in [p, *p.parents][:-1]:
                    self.kids.setdefault(child.parent, set()).add(child.name)

    def _read_archive(self, progress: bool) -> None:
        """Read the wanted members within the cap; note every member's size from its header."""
        if progress:
            print(f"reading {self.root}", file=sys.stderr, flush=True)
        try:
            with tarfile.open(self.root, "r:*") as tar:
                for member in tar:
                    parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", "")]
                    if not member.isfile() or not parts or any(p.startswith(".") for p in parts):
                        continue
                    rel = PurePosixPath(*parts)
                    self.sizes[rel] = member.size
                    if _wanted(rel) and member.size <= self.limit(rel):
                        f = tar.extractfile(member)
                        if f is not None:
                            self.files[rel] = f.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise EdgepruneError(f"{self.root}: not a readable tar archive ({e})") from None

    @property
    def is_archive(self) -> bool:
        """True for an archive read into memory."""
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
        is_batch = rel.suffix.lower() not in IMAGE_EXTENSIONS and rel.name in CIFAR_FILES
        return max(self.max_file_bytes, MAX_BATCH_BYTES) if is_batch else self.max_file_bytes

    def _too_big(self, rel: PurePosixPath, size: int) -> EdgepruneError:
        """The one-line error for a file over its size cap."""
        return EdgepruneError(
            f"{self.display(rel)}: file is {size:,} bytes, over the cap of {self.limit(rel):,} bytes "
            "(raise max_file_bytes to read it)"
        )

    def read(self, rel: PurePosixPath) -> bytes:
        """A file's content; a file over the size cap is refused from its size, unread."""
        if self.is_archive:
            if rel not in self.files:
                raise self._too_big(rel, self.sizes[rel])
            return self.files[rel]
        try:
            with open(self.root / rel, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limit(rel):
                    raise self._too_big(rel, size)
                return f.read(size)  # never more than the size checked, even if the file grows meanwhile
        except OSError as e:
            raise EdgepruneError(f"{self.display(rel)}: cannot read ({e.strerror})") from None

    def stamp(self, rel: PurePosixPath) -> str:
        """Size and modification time of a file on disk (content is covered by the digest in an archive)."""
        if self.is_archive:
            return str(self.sizes[rel])
        st = (self.root / rel).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


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


def _batch_arrays(tree: _Tree, rel: PurePosixPath, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    where = tree.display(rel)
    batch = read_pickle(tree.read(rel), where)
    if "data" not in batch or label_key not in batch:
        raise EdgepruneError(f"{where}: missing '{'data' if 'data' not in batch else label_key}' entry")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise EdgepruneError(f"{where}: 'data' must be a uint8 array of shape (N, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise EdgepruneError(f"{where}: '{label_key}' is not a list of integers") from None
    if len(y) != len(data):
        raise EdgepruneError(f"{where}: {len(data)} images but {len(y)} labels")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(y.copy())


def _label_names(tree: _Tree, rel: PurePosixPath, key: str, count: int) -> list[str]:
    if tree.is_file(rel):
        names = read_pickle(tree.read(rel), tree.display(rel)).get(key)
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
    parts = [_batch_arrays(tree, f, label_key) for f in files]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = _batch_arrays(tree, test_file, label_key)
    if len(train_y) == 0 or len(test_y) == 0:
        raise EdgepruneError(f"{tree.display(root)}: no images")
    count = max(least, int(max(train_y.max(), test_y.max())) + 1)
    classes = _label_names(tree, root / meta, names_key, count)
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


def _load_tree(tree: _Tree, progress: bool, cache: bool, max_image_pixels: int = MAX_IMAGE_PIXELS) -> Arrays:
    """Find the data set in ``tree`` and load it (decoding images, or reading them from the cache)."""
    root, kind = _find_root(tree)
    if kind != "folders":
        return _load_pickles(tree, root, kind)
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
        hit = _read_cache(key)
        if hit is not None and hit[4] == classes:
            return hit
    start = time.perf_counter()
    if progress:
        print(f"decoding {len(files):,} images of {tree.display(root)} (once)", file=sys.stderr, flush=True)
    x, color = _decode_all(tree, [p for p, _ in files], progress, max_image_pixels)
    y = torch.tensor([i for _, i in files], dtype=torch.int64)
    if not color:
        x = x[:, :1].contiguous()
    n_train = sum(len(v) for v in listing["train"].values())
    arrays = (x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)
    if progress:
        print(f"decoded in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return _store_cache(key, arrays, tree.display(root)) if cache else arrays


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
        if old is not None and max_pixels > old:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _check_size(where: str, size: tuple[int, int], max_pixels: int, first: tuple[str, tuple[int, int]] | None) -> None:
    """Refuse an image, from its header, that is over the pixel cap or not the data set's one size."""
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


def _decode_one(
    tree: _Tree, rel: PurePosixPath, max_pixels: int, first: tuple[str, tuple[int, int]] | None
) -> tuple[np.ndarray, bool]:
    """Decode one image to uint8 [H, W, 3], its size checked first; also say whether it is in colour."""
    from PIL import Image, UnidentifiedImageError

    where, data = tree.display(rel), tree.read(rel)
    webp = _webp_size(data)  # Pillow's WebP reader allocates the whole canvas when it opens a file
    if webp is not None:
        _check_size(where, webp, max_pixels, first)
    try:
        with Image.open(_io.BytesIO(data)) as im:
            _check_size(where, im.size, max_pixels, first)
            im.load()
            return np.asarray(im.convert("RGB")), im.mode not in GRAY_MODES
    except Image.DecompressionBombError as e:
        raise EdgepruneError(f"{where}: refused by Pillow ({e}); raise max_image_pixels to load it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise EdgepruneError(f"{where}: unreadable image ({e})") from None


def _decode_all(
    tree: _Tree, files: list[PurePosixPath], progress: bool, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[torch.Tensor, bool]:
    """Decode every image to uint8 [N, 3, H, W]; also say whether any was in colour."""
    first: tuple[str, tuple[int, int]] | None = None
    out: np.ndarray | None = None
    color = False
    last = time.perf_counter()
    show = progress and sys.stderr.isatty()
    with _pillow_limit(max_pixels):
        for i, rel in enumerate(files):
            arr, in_color = _decode_one(tree, rel, max_pixels, first)
            color = color or in_color
            if out is None:
                first = (tree.display(rel), (arr.shape[1], arr.shape[0]))
                out = np.empty((len(files), *arr.shape), dtype=np.uint8)
            out[i] = arr
            if show and time.perf_counter() - last > 0.5:
                last = time.perf_counter()
                print(f"\rdecoded {i + 1:,}/{len(files):,}", end="", file=sys.stderr, flush=True)
    if show:
        print(f"\rdecoded {len(files):,}/{len(files):,}", file=sys.stderr, flush=True)
    assert out is not None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), color


# -- cache ------------------------------------------------------------------------------------


def _cache_file(key: str) -> Path:
    return cache_dir() / "decoded" / f"{key}.safetensors"


def _read_cache(key: str) -> Arrays | None:
    """The arrays cached under ``key``, or None (a missing or damaged cache file is rebuilt)."""
    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT:
            return None
        classes = json.loads(meta["classes"])
        t = load_file(str(path))
        return t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def _store_cache(key: str, arrays: Arrays, source: object) -> Arrays:
    """Write ``arrays`` to the cache under ``key`` (a read-only cache only costs speed); return them."""
    train_x, train_y, test_x, test_y, classes = arrays
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    meta = {"format": CACHE_FORMAT, "classes": json.dumps(classes), "source": str(source)}
    path = _cache_file(key)
    try:
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    except OSError as e:
        print(f"warning: cannot write the image cache {path} ({e})", file=sys.stderr)
    return arrays


__all__ = ["ImageDataset", "cache_dir", "channel_stats", "file_digest", "load_dataset", "read_pickle"]
