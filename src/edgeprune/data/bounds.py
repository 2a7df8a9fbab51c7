"""What one load may read and hold (the caps and their one-line errors), and the names of the files it reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import torch

from edgeprune.errors import EdgepruneError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CIFAR_FILES = frozenset(
    [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "train", "test", "meta"]
)
MAX_IMAGE_PIXELS = 4096 * 4096  # default cap on one image's width x height, checked before decoding
MAX_FILE_BYTES = 64 * 2**20  # default cap on one image file's size, checked before reading
MAX_BATCH_BYTES = 256 * 2**20  # least cap on a CIFAR batch file (the official CIFAR-100 train file is 155 MB)
ARCHIVE_MEMBER_COST = 1024  # bytes counted toward max_data_bytes per archive member: the loader's bookkeeping
FACTS = ("image_pixels", "image_file_bytes", "batch_file_bytes", "source_bytes", "scan_bytes", "decoded_bytes")

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


@dataclass(frozen=True)
class Caps:
    """What one load may read and hold."""

    image_pixels: int
    file_bytes: int
    data_bytes: int


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: a message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def reason(e: BaseException) -> str:
    """A library exception's text on one line (tarfile's and Pillow's may span several)."""
    return printable(" ".join(str(e).split())) or type(e).__name__


def over_data_cap(where: str, what: str, size: int, cap: int) -> EdgepruneError:
    """The one-line error for a data set over ``max_data_bytes``."""
    return EdgepruneError(
        f"{where}: {what} {size:,} bytes, over the cap of {cap:,} bytes "
        "(raise max_data_bytes, --max-data-bytes, to load it)"
    )


def is_wanted(rel: PurePosixPath) -> bool:
    """Whether the loader may need a file's content: an image or an official CIFAR batch file."""
    return rel.suffix.lower() in IMAGE_EXTENSIONS or rel.name in CIFAR_FILES


def is_batch(rel: PurePosixPath) -> bool:
    """Whether ``rel`` names an official CIFAR batch (or meta) file rather than an image."""
    return rel.suffix.lower() not in IMAGE_EXTENSIONS and rel.name in CIFAR_FILES


__all__ = [
    "ARCHIVE_SUFFIXES",
    "CIFAR_FILES",
    "FACTS",
    "IMAGE_EXTENSIONS",
    "MAX_BATCH_BYTES",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "Caps",
    "is_batch",
    "is_wanted",
    "over_data_cap",
    "printable",
    "reason",
]
