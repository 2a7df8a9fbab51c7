"""Image classification data sets held entirely in memory as uint8 tensors.

Two layouts load with :func:`load_dataset`:

- image folders, ``root/<split>/<class>/*.{png,jpg,jpeg,webp,bmp,...}`` with splits ``train`` and
  ``test`` (or ``val`` alone, then the test split), and a ``val`` next to ``test`` as the validation split;
  ``train`` alone with ``val_fraction``. Class index = position of the folder name in sorted order. Any image
  Pillow reads works; images of different sizes need ``image_size`` N, and are then resized at decode
  (evaluation images: shorter side round(N * 8 / 7), centre N x N; training images: the same shorter side,
  centre square, kept larger for random-resized crops); grayscale-only data sets get one channel.
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
(from its header) before it is decoded, against ``max_image_pixels`` (and, without ``image_size``, the data
set's one size).
``max_data_bytes`` (default: half the memory available) caps the whole data set twice, before
anything is read or decoded: the bytes of the files it is read from (with 1 KiB counted per archive
member for bookkeeping), and its decoded size, N x 3 x H x W bytes from the first image's header.
Archive members that are neither images nor CIFAR batch files are never read.

Decoded images are cached as one safetensors file per data set in ``$EDGEPRUNE_CACHE`` (default
``~/.cache/edgeprune``), keyed by the archive's content hash, or for a folder by every image's
name, size and modification time (and for a resized set, the size and the resize rule), so later loads take
about a second. An archive with a ``val/`` folder next to ``test/``, or without ``test/``, is not cached.
The cache file carries a SHA-256 checksum of its content and metadata, verified on every read; a damaged file is ignored
(with a warning) and rebuilt, and one whose recorded file sizes, image size or data size are over
today's caps is not used (the data set is read again, and refused the same way as the first time).
"""

from edgeprune.data.augment import AUGMENTATIONS, PAD, ImageStore, Normalizer, augment_mode
from edgeprune.data.bounds import MAX_BATCH_BYTES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS
from edgeprune.data.cache import cache_dir, content_digest, default_max_data_bytes
from edgeprune.data.dataset import (
    ImageDataset,
    channel_stats,
    check_compatible,
    holdout,
    load_dataset,
    with_validation,
)
from edgeprune.data.sources import read_pickle
from edgeprune.data.split import center_crop, stratified_holdout
from edgeprune.data.tree import file_digest

__all__ = [
    "AUGMENTATIONS",
    "MAX_BATCH_BYTES",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "PAD",
    "ImageDataset",
    "ImageStore",
    "Normalizer",
    "augment_mode",
    "cache_dir",
    "center_crop",
    "channel_stats",
    "check_compatible",
    "content_digest",
    "default_max_data_bytes",
    "file_digest",
    "holdout",
    "load_dataset",
    "read_pickle",
    "stratified_holdout",
    "with_validation",
]
