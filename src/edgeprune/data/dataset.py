"""The in-memory data set, :class:`ImageDataset`, and :func:`load_dataset`, which finds, bounds, caches, reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.data.bounds import ARCHIVE_SUFFIXES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, Caps, printable
from edgeprune.data.cache import (
    CACHE_FORMAT,
    content_digest,
    default_max_data_bytes,
    storage_preference,
    store_cache,
)
from edgeprune.data.memmap import channel_sums, mapped_sums, stats_from_sums
from edgeprune.data.shards import is_shard_input, load_shards
from edgeprune.data.sources import RESIZE_RULE, Stored, cache_keys, load_tree, lookup
from edgeprune.data.split import center_crop, stratified_holdout
from edgeprune.data.tree import FileTree, file_digest
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime import device_of


@dataclass
class ImageDataset:
    """A labelled image data set as uint8 tensors: in memory, or memory-mapped from its cache file when larger.

    Evaluation images (test, val) have the model's input size. Training images have it too, unless the set
    was resized (``resize`` names the rule): then they are stored larger, at the shorter side round(N * 8 / 7)
    centre-cropped to a square, so that random-resized crops can be taken; their centre N x N is what an
    evaluation image of the same file would be. The test split may be empty (a folder of train/ alone) when
    there is a validation split.
    """

    name: str
    classes: list[str]
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, from the training split
    std: tuple[float, ...]
    val_x: torch.Tensor | None = None  # the validation split, when there is one
    val_y: torch.Tensor | None = None
    resize: str = ""  # the resize rule the images went through ("" when used at their own size)
    # Memo of content_hash; not an __init__ argument, so dataclasses.replace() (new tensors) never carries it over.
    _content_hash: str | None = field(default=None, init=False, repr=False, compare=False)

    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image as the model takes it (an evaluation image's)."""
        c = self.train_x.shape[1]
        h, w = self.test_x.shape[2:]
        return (int(c), int(h), int(w))

    def split_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of ``split`` (train, test or val); a one-line error for a split it lacks."""
        x, y = getattr(self, f"{split}_x", None), getattr(self, f"{split}_y", None)
        if x is None or y is None:
            raise EdgepruneError(f"data set '{self.name}' has no {split} split")
        return x, y

    def signature_extras(self) -> dict:
        """What identifies the data to a checkpoint or record beyond name, sizes, classes and shape: the validation
        split's size and the resize rule, only when there are (so earlier checkpoints and records still match)."""
        return {
            **({"val": len(self.val_y)} if self.val_y is not None else {}),
            **({"resize": self.resize} if self.resize else {}),
        }

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the class names and every split's images and labels: equal hashes, equal data.

        Computed at first use (or by the loader) and kept: change the tensors through ``dataclasses.replace``.
        """
        if self._content_hash is None:
            digest = content_digest(self.classes, self.train_x, self.train_y, self.test_x, self.test_y)
            if self.val_x is not None and self.val_y is not None:
                empty = self.val_x[:0], self.val_y[:0]
                val = content_digest(self.classes, self.val_x, self.val_y, *empty)
                digest = hashlib.sha256(f"{digest}\0val\0{val}\0{self.resize}".encode()).hexdigest()
            elif self.resize:
                digest = hashlib.sha256(f"{digest}\0{self.resize}".encode()).hexdigest()
            self._content_hash = digest
        return self._content_hash

    def summary(self) -> str:
        """A one-line description: name, sizes, image shape, classes."""
        c, h, w = self.input_shape()
        val = f"{len(self.val_y):,} val / " if self.val_y is not None else ""
        test = f"{len(self.test_y):,} test" if len(self.test_y) else "no test"
        resized = f" (resized: training images {self.train_x.shape[2]}x{self.train_x.shape[3]})" if self.resize else ""
        return (
            f"{self.name}: {len(self.train_y):,} train / {val}{test} images, "
            f"{c}x{h}x{w}, {self.num_classes} classes{resized}"
        )


def check_compatible(model: nn.Module, data: ImageDataset) -> None:
    """Raise EdgepruneError unless ``model`` takes the data set's images and has one output per class."""
    c, h, w = data.input_shape()
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))), None)
    expected_c = getattr(first, "in_channels", None)
    if expected_c is not None and expected_c != c:
        raise EdgepruneError(
            f"the model takes {expected_c}-channel images, the data set '{data.name}' has {c}-channel images"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, c, h, w, device=device_of(model)))
    except RuntimeError as e:
        msg = first_line(e, limit=160)
        raise EdgepruneError(f"the model cannot take the data set's {c}x{h}x{w} images ({msg})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise EdgepruneError(
            f"train handles classification models with one (N, classes) output; this model returns a "
            f"{type(out).__name__}"
        )
    if out.ndim != 2:
        raise EdgepruneError(
            f"train handles classification models with one (N, classes) output; this model's output has shape "
            f"{tuple(out.shape)} for 2 images"
        )
    if out.shape[1] != data.num_classes:
        raise EdgepruneError(
            f"the model has {tuple(out.shape[1:])} outputs, the data set '{data.name}' has {data.num_classes} classes"
        )


def load_dataset(
    path: str | Path,
    limit_train: int | None = None,
    limit_test: int | None = None,
    progress: bool = False,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_data_bytes: int | None = None,
    image_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    test_data: str | Path | None = None,
    storage: str = "auto",
) -> ImageDataset:
    """Load an image-folder data set, an archive of one, an official CIFAR-10/100 python folder, or tar shards.

    ``max_image_pixels`` caps one image's width x height (checked from its header, before decoding);
    ``max_file_bytes`` caps one image file's size (checked before reading; CIFAR batch files may have
    ``max(max_file_bytes, MAX_BATCH_BYTES)``). Archive members that are neither are never read.
    ``max_data_bytes`` (default :func:`default_max_data_bytes`) caps the bytes of all files read and,
    separately, the decoded size of the data set, both checked before reading or decoding anything.
    The caps hold on a cache hit too. Every error is one line.

    ``image_size`` N (default: the images' one size; required when they differ): a set of N x N images is
    used as it is; any other is resized with Pillow (bilinear): evaluation images to the shorter side
    round(N * 8 / 7), then their centre N x N; training images to the same shorter side and their centre square,
    kept larger so that random-resized crops can be taken (see :class:`ImageDataset`). ``val_fraction`` holds
    that share of the (limited) training images out as the validation split, stratified per class, by ``seed``;
    a ``val/`` folder next to ``test/`` is the validation split otherwise. A folder of ``train/`` alone needs one
    of the two (it has no test split).

    Tar shards (``'shards/train-{000..099}.tar'``, :mod:`edgeprune.data.shards`) take their test split from
    ``test_data`` (a pattern) or the ``test-*`` shards beside them. ``storage``: ``auto`` holds a cached set in
    memory when its images fit half the memory available, else memory-maps its cache file; ``memory`` and
    ``mapped`` force one (:mod:`edgeprune.data.memmap`).
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise EdgepruneError(f"image_size must be a positive integer, got {image_size!r}")
    if val_fraction is not None and not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        raise EdgepruneError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    caps = Caps(max_image_pixels, max_file_bytes, max_data_bytes)  # type: ignore[arg-type] - checked there
    try:
        with storage_preference(storage):
            if is_shard_input(path):
                data = _shard_dataset(str(path), test_data, (limit_train, limit_test), caps, progress)
            elif test_data is not None:
                raise EdgepruneError("test_data (--test-data) names the test shards of tar-shard data only")
            else:
                data = _load_dataset(Path(path).expanduser(), limit_train, limit_test, progress, caps, image_size)
        return _with_splits(data, val_fraction, seed)
    except EdgepruneError as e:  # names from a file tree or an archive may hold line breaks
        text = printable(str(e))
        if text != str(e):
            raise EdgepruneError(text) from None
        raise


def _with_splits(data: ImageDataset, val_fraction: float | None, seed: int) -> ImageDataset:
    """``data`` with its validation split held out (``val_fraction``), its test split checked, its statistics."""
    content = data._content_hash
    if val_fraction is not None:
        data = with_validation(data, val_fraction, seed)
    elif len(data.test_y) == 0 and data.val_y is None:
        raise EdgepruneError(
            f"data set '{data.name}' has a train/ folder but no test/ (or val/): give --val-fraction F "
            "(val_fraction=F) to hold out a validation split (there is then no test accuracy)"
        )
    mean, std = channel_stats(data.train_x)
    data = replace(data, mean=mean, std=std)
    data._content_hash = content if val_fraction is None else None
    return data


def _load_dataset(
    path: Path,
    limit_train: int | None,
    limit_test: int | None,
    progress: bool,
    caps: Caps,
    size: int | None,
) -> ImageDataset:
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise EdgepruneError(f"{name} must be a positive integer, got {limit!r}")
    if caps.data_bytes is None:
        caps = replace(caps, data_bytes=default_max_data_bytes())
    named = (("max_image_pixels", caps.image_pixels), ("max_file_bytes", caps.file_bytes))
    for name, cap in (*named, ("max_data_bytes", caps.data_bytes)):
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise EdgepruneError(f"{name} must be a positive integer, got {cap!r}")
    if not path.exists():
        raise EdgepruneError(
            f"{path}: no such data set (expected an image folder, a .tar.gz of one, or a CIFAR python folder)"
        )
    stored = _read_archive(path, caps, progress, size) if path.is_file() else None
    if stored is None:
        stored = load_tree(FileTree(path, caps), progress, True, size)
    train_x, train_y, held_x, held_y, classes = stored.arrays
    n_test, n_val = stored.n_test, stored.n_val
    test_x, test_y = held_x[:n_test], held_y[:n_test]
    val = (held_x[n_test : n_test + n_val], held_y[n_test : n_test + n_val]) if n_val else None
    content = stored.content if not stored.resized and not n_val and n_test == len(held_y) else None
    if (limit_train or len(train_y)) < len(train_y) or (limit_test or len(test_y)) < len(test_y):
        content = None  # a subset: its own hash, computed when asked for
    if stored.resized:
        assert size is not None
        test_x = center_crop(test_x, size, size)
        val = (center_crop(val[0], size, size), val[1]) if val is not None else None
    train_x, train_y = _subset(train_x, train_y, limit_train)
    test_x, test_y = _subset(test_x, test_y, limit_test)
    resize = RESIZE_RULE if stored.resized else ""
    dataset = ImageDataset(_dataset_name(path), classes, train_x, train_y, test_x, test_y, (), (), *(val or ()))
    dataset.resize = resize
    dataset._content_hash = content
    return dataset


def _shard_dataset(
    pattern: str, test_data: str | Path | None, limits: tuple[int | None, int | None], caps: Caps, progress: bool
) -> ImageDataset:
    """The data set of tar shards ``pattern`` (its test split ``test_data`` or beside it), cached once decoded."""
    if caps.data_bytes is None:
        caps = replace(caps, data_bytes=default_max_data_bytes())
    for name, value in zip(("max_image_pixels", "max_file_bytes", "max_data_bytes"), vars(caps).values(), strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgepruneError(f"{name} must be a positive integer, got {value!r}")
    for name, limit in zip(("limit_train", "limit_test"), limits, strict=True):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise EdgepruneError(f"{name} must be a positive integer, got {limit!r}")
    (train_x, train_y, test_x, test_y, classes), content = load_shards(
        pattern, None if test_data is None else str(test_data), caps, progress
    )
    if (limits[0] or len(train_y)) < len(train_y) or (limits[1] or len(test_y)) < len(test_y):
        content = None  # a subset: its own hash, computed when asked for
    train_x, train_y = _subset(train_x, train_y, limits[0])
    test_x, test_y = _subset(test_x, test_y, limits[1])
    name = Path(pattern).expanduser().parent.name or "shards"
    dataset = ImageDataset(name, classes, train_x, train_y, test_x, test_y, (), ())
    dataset._content_hash = content
    return dataset


def _read_archive(path: Path, caps: Caps, progress: bool, size: int | None) -> Stored:
    """An archive's data set: from the cache, keyed by its content hash, or read (and cached when it can be)."""
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise EdgepruneError(f"{path}: not a folder or a .tar.gz/.tgz/.tar archive")
    try:
        digest = file_digest(path)
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read ({e.strerror})") from None
    keys = cache_keys(hashlib.sha256(f"{CACHE_FORMAT}\0archive\0{digest}".encode()), size)
    hit = lookup(keys, size, caps, lambda arrays: True)  # only train + test archives are cached (below)
    if hit is not None:
        return hit
    tree = FileTree(path, caps, digest, progress)
    stored = load_tree(tree, progress, False, size)
    if stored.n_val == 0 and stored.n_test == len(stored.arrays[3]):  # what the digest alone tells apart
        stored.content = store_cache(keys[stored.resized] or "", stored.arrays, path, tree.facts)
    return stored


def with_validation(data: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """``data`` with ``fraction`` of its training images (:func:`stratified_holdout`) moved to its validation split.

    Held-out images are cropped as evaluation images are (a resized set stores training images larger).
    """
    if data.val_y is not None:
        raise EdgepruneError(
            f"data set '{data.name}' has a val/ folder; a validation fraction would make a second validation "
            "split: use the folder, or drop --val-fraction"
        )
    keep, held = stratified_holdout(data.train_y, fraction, seed)
    _, h, w = data.input_shape()
    val_x = center_crop(data.train_x[held], h, w).contiguous()
    return replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep], val_x=val_x, val_y=data.train_y[held])


def holdout(data: ImageDataset, fraction: float = 0.1, seed: int = 0) -> ImageDataset:
    """``data``'s training split as a data set of its own, :func:`stratified_holdout`'s held-out part its test split."""
    keep, held = stratified_holdout(data.train_y, fraction, seed)
    _, h, w = data.input_shape()
    return replace(
        data,
        name=f"{data.name} (training split, {len(held)} held out)",
        train_x=data.train_x[keep],
        train_y=data.train_y[keep],
        test_x=center_crop(data.train_x[held], h, w).contiguous(),
        test_y=data.train_y[held],
        val_x=None,
        val_y=None,
    )


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in [0, 1] pixel units."""
    sums = mapped_sums(x)  # a whole memory-mapped training split: the sums its cache file records
    return stats_from_sums(sums if sums is not None else channel_sums(x, chunk), x.numel() // x.shape[1])


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


__all__ = ["ImageDataset", "channel_stats", "check_compatible", "holdout", "load_dataset", "with_validation"]
