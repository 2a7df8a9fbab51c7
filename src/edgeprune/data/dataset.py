"""The in-memory data set, :class:`ImageDataset`, and :func:`load_dataset`, which finds, bounds, caches, reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.data.bounds import ARCHIVE_SUFFIXES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, Caps, printable
from edgeprune.data.cache import CACHE_FORMAT, content_digest, default_max_data_bytes, read_cache, store_cache
from edgeprune.data.sources import load_tree
from edgeprune.data.tree import FileTree, file_digest
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime import device_of


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
        text = printable(str(e))
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
    caps = Caps(max_image_pixels, max_file_bytes, max_data_bytes)
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
        hit = read_cache(key, caps)
        if hit is None:
            tree = FileTree(path, caps, digest, progress)
            arrays = load_tree(tree, progress, False)[0]
            hit = arrays, store_cache(key, arrays, path, tree.facts)
        arrays, content = hit
    else:
        arrays, content = load_tree(FileTree(path, caps), progress, True)
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


__all__ = ["ImageDataset", "channel_stats", "check_compatible", "load_dataset"]
