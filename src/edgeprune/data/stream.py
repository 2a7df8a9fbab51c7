"""Training straight from tar shards, with no cache: ``edgeprune train --data-storage stream``.

A shard set larger than the cache folder's free disk (:class:`edgeprune.data.shards.OverDisk`), or one the user asks
to stream, is read from its shards every epoch: :class:`StreamSet` holds what one header pass found
(:func:`edgeprune.data.shards.scan`: the sample counts, so the schedule's steps are known; the image shape; the
classes) and the normalisation, and :meth:`StreamSet.loaders` gives the two torch ``DataLoader``s that
:func:`edgeprune.train.source.train_user` trains and tests on.

Training batches (:class:`StreamBatches`) come from a :class:`~edgeprune.data.shards.ShardStream`: the shard order
and a shuffle buffer drawn by the seed and the epoch (``set_epoch``, called before every epoch), cut into batches of
the run's size (the incomplete last one left out, as in memory), each augmented as a whole with edgeprune's own
batch functions (:class:`~edgeprune.data.augment.ImageStore`: ``cifar``, ``imagenet`` or ``none``), its draws from a
generator seeded by (seed, epoch), and normalised (:class:`~edgeprune.data.augment.Normalizer`). An epoch is thus
the same whenever it runs: a stopped run resumes at the start of the epoch it was in and repeats an uninterrupted
one exactly. Test batches are the test shards in order, unshuffled, unaugmented.

The normalisation (per-channel mean and standard deviation) is estimated once, from a bounded sample: the first
``ceil(STATS_SAMPLE / shards)`` images of every training shard, at most :data:`STATS_SAMPLE` in all. The run records
it in its checkpoint and ``train.json``, and a resumed run takes it from the checkpoint.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from edgeprune.data.augment import AUGMENTATIONS, ImageStore, Normalizer
from edgeprune.data.bounds import MAX_FILE_BYTES, MAX_IMAGE_PIXELS, Caps
from edgeprune.data.cache import default_max_data_bytes
from edgeprune.data.memmap import channel_sums, stats_from_sums
from edgeprune.data.shards import DEFAULT_BUFFER, OverDisk, ShardSplits, ShardStream, is_shard_input, scan
from edgeprune.errors import EdgepruneError

STATS_SAMPLE = 10_000  # training images the normalisation is estimated from, at most
STORAGE = "stream"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's augmentation draws, seeded by (``seed``, ``epoch``)."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0x5EED]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class StreamBatches(IterableDataset):
    """Batches of a shard split read as they stream: (normalised float32 [B, C, H, W], int64 labels [B]).

    ``train=True``: the epoch's order (:meth:`set_epoch`), ``len(self)`` full batches, each augmented by
    ``augment``; ``train=False``: every image in shard order, unaugmented, the last batch possibly short.
    """

    def __init__(
        self,
        files: list[Path],
        count: int,
        batch: int,
        stats: tuple[tuple[float, ...], tuple[float, ...]],
        *,
        caps: Caps,
        shape: tuple[int, int, int],
        seed: int = 0,
        augment: str = "none",
        train: bool = True,
        buffer: int = DEFAULT_BUFFER,
    ):
        if augment not in AUGMENTATIONS:
            raise EdgepruneError(f"unknown augmentation '{augment}'; choose from: {', '.join(AUGMENTATIONS)}")
        self.files, self.count, self.batch, self.shape = list(files), count, max(1, min(batch, count)), shape
        self.seed, self.augment, self.train, self.epoch = seed, augment if train else "none", train, 0
        self.stream = ShardStream(self.files, seed=seed, buffer=buffer if train else 0, caps=caps)
        self.normalize = Normalizer(*stats)
        self.record: dict | None = None  # the data signature a run records (StreamSet.loaders sets it)
        self.note = ""  # the line saying how it streams

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iterations' order and augmentation for ``epoch`` (before every epoch, as a sampler's)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches an iteration yields."""
        return self.count // self.batch if self.train else math.ceil(self.count / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches, decoded, augmented (training) and normalised."""
        self.stream.set_epoch(self.epoch)
        generator = epoch_generator(self.seed, self.epoch)
        samples = iter(self.stream)
        for done in range(len(self)):
            chunk = list(itertools.islice(samples, self.batch))
            if len(chunk) < self.batch and (self.train or done * self.batch + len(chunk) != self.count):
                raise EdgepruneError(
                    f"{self.files[0].parent}: the shards hold fewer samples than when the run began "
                    f"({self.count:,}): they changed; start the run over"
                )
            yield self._batch(chunk, generator)

    def _batch(self, chunk: list[tuple[torch.Tensor, int]], generator: torch.Generator) -> tuple:
        """One batch of decoded samples augmented as a whole and normalised, and its labels."""
        x = torch.stack([image for image, _ in chunk])
        if tuple(x.shape[1:]) != self.shape:
            raise EdgepruneError(f"{self.files[0].parent}: images of shape {tuple(x.shape[1:])}, expected {self.shape}")
        labels = torch.tensor([label for _, label in chunk], dtype=torch.int64)
        if self.augment != "none":
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a few memory-bound passes: one thread, as in memory (TrainStep.batch)
            try:
                x = ImageStore(x).augment(self.augment, torch.arange(len(x)), generator)
            finally:
                torch.set_num_threads(threads)
        return self.normalize(x), labels


@dataclass
class StreamSet:
    """A tar-shard data set trained on as it streams: its splits' shards and labels, normalisation and why it streams.

    It answers what the training command asks of a data set (``name``, ``classes``, ``num_classes``,
    ``input_shape()``, ``summary()``, the label arrays ``train_y`` and ``test_y``; ``val_y`` is None).
    """

    name: str
    splits: ShardSplits
    caps: Caps
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sample: int  # training images the normalisation was estimated from
    reason: str  # why it streams, for the line the command prints
    val_y: None = None

    @property
    def classes(self) -> list[str]:
        """The class names (indices as text)."""
        return self.splits.classes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.splits.classes)

    @property
    def train_y(self) -> np.ndarray:
        """The training labels, in shard order."""
        return self.splits.labels["train"]

    @property
    def test_y(self) -> np.ndarray:
        """The test labels, in shard order."""
        return self.splits.labels["test"]

    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image."""
        return tuple(int(d) for d in self.splits.shape)  # type: ignore[return-value]

    def summary(self) -> str:
        """A one-line description: name, sizes, image shape, classes."""
        c, h, w = self.input_shape()
        return (
            f"{self.name}: {len(self.train_y):,} train / {len(self.test_y):,} test images, {c}x{h}x{w}, "
            f"{self.num_classes} classes (streamed from {len(self.splits.train) + len(self.splits.test):,} shards)"
        )

    def note(self) -> str:
        """The line saying which path ran: streaming, from how many shards, and why."""
        shards = len(self.splits.train)
        return (
            f"streaming {len(self.train_y):,} training images from {shards:,} shard{'s' * (shards != 1)} "
            f"({self.reason}); every epoch decodes them again"
        )

    def normalization(self) -> dict:
        """The normalisation as the run records it."""
        return {"mean": list(self.mean), "std": list(self.std), "scale": "pixels / 255", "sample": self.sample}

    def signature(self) -> dict:
        """What identifies the stream to a checkpoint or record: a data signature's keys, storage, normalisation."""
        return {
            "name": self.name,
            "train": len(self.train_y),
            "test": len(self.test_y),
            "classes": self.classes,
            "shape": list(self.input_shape()),
            "storage": STORAGE,
            "buffer": DEFAULT_BUFFER,
            "normalize": self.normalization(),
        }

    def loaders(self, batch: int, seed: int, augment: str) -> tuple[DataLoader, DataLoader]:
        """The training and test batches as DataLoaders (batched here: ``batch_size=None``), once what a stream
        holds at a time at ``batch`` is checked against ``max_data_bytes``."""
        held = held_bytes(self.input_shape(), batch, len(self.train_y))
        if held > self.caps.data_bytes:
            raise EdgepruneError(
                f"{self.name}: streaming at batch {batch} holds {held:,} bytes (a {DEFAULT_BUFFER:,}-image shuffle "
                f"buffer and the batch's float copies), over the cap of {self.caps.data_bytes:,} bytes (raise "
                "--max-data-bytes or lower --batch-size)"
            )
        stats = (self.mean, self.std)
        common = {"caps": self.caps, "shape": self.input_shape(), "seed": seed}
        train = StreamBatches(self.splits.train, len(self.train_y), batch, stats, augment=augment, **common)
        train.record, train.note = self.signature(), self.note()
        test = StreamBatches(self.splits.test, len(self.test_y), batch, stats, train=False, **common)
        return DataLoader(train, batch_size=None), DataLoader(test, batch_size=None)


def held_bytes(shape: tuple[int, int, int], batch: int, count: int, buffer: int = DEFAULT_BUFFER) -> int:
    """Bytes a training stream holds at once: the shuffle buffer and a batch of uint8 images, and the batch's
    float32 copies (stacked, augmented, normalised: three)."""
    pixels = int(np.prod(shape))
    batch = max(1, min(batch, count))
    return min(count, buffer + batch) * pixels + 3 * 4 * batch * pixels


def stream_caps(
    max_image_pixels: int | None = None, max_file_bytes: int | None = None, max_data_bytes: int | None = None
) -> Caps:
    """The caps a stream reads under (defaults for those not given), each checked."""
    caps = Caps(
        max_image_pixels or MAX_IMAGE_PIXELS,
        max_file_bytes or MAX_FILE_BYTES,
        max_data_bytes or default_max_data_bytes(),
    )
    for name, value in zip(("max_image_pixels", "max_file_bytes", "max_data_bytes"), vars(caps).values(), strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgepruneError(f"{name} must be a positive integer, got {value!r}")
    return caps


def sample_stats(splits: ShardSplits, caps: Caps, limit: int = STATS_SAMPLE) -> tuple[tuple, tuple, int]:
    """Per-channel mean and std of the first ``ceil(limit / shards)`` images of every training shard, and a count."""
    per = max(1, math.ceil(limit / len(splits.train)))
    sums, count = None, 0
    for f in splits.train:
        images = [image for image, _ in itertools.islice(iter(ShardStream([f], buffer=0, caps=caps)), per)]
        if not images:
            continue
        part = channel_sums(torch.stack(images))
        sums = part if sums is None else [[a + b for a, b in zip(*pair, strict=True)] for pair in zip(sums, part)]
        count += len(images)
        if count >= limit:
            break
    if sums is None:
        raise EdgepruneError(f"{splits.train[0]}...: no training images")
    mean, std = stats_from_sums(sums, count * splits.shape[1] * splits.shape[2])
    return mean, std, count


def open_stream(splits: ShardSplits, caps: Caps, reason: str, name: str, normalize: dict | None = None) -> StreamSet:
    """The stream of a scanned shard set; its normalisation ``normalize`` (a run's record) or estimated now."""
    if normalize is None:
        return StreamSet(name, splits, caps, *sample_stats(splits, caps), reason)
    return StreamSet(name, splits, caps, *_recorded(normalize, splits.shape[0]), reason)


def _recorded(normalize: dict, channels: int) -> tuple[tuple, tuple, int]:
    """Mean, std and sample size from a checkpoint's record, checked."""
    try:
        mean, std = tuple(float(v) for v in normalize["mean"]), tuple(float(v) for v in normalize["std"])
        sample = normalize["sample"]
    except (KeyError, TypeError, ValueError):
        raise EdgepruneError("the checkpoint's normalisation is not a stream's (mean, std, sample)") from None
    good = all(math.isfinite(v) for v in mean) and all(math.isfinite(v) and v > 0 for v in std)
    if len(mean) != channels or len(std) != channels or not good or not isinstance(sample, int):
        raise EdgepruneError(f"the checkpoint's normalisation is not {channels} channels' finite mean and std")
    return mean, std, sample


def stream_shards(pattern: str, test_pattern: str | None, caps: Caps, normalize: dict | None = None) -> StreamSet:
    """The stream the user asked for (``--data-storage stream``): the shards scanned, no cache looked at or written."""
    splits = scan(pattern, test_pattern, caps, streamed=True)  # nothing is held but a buffer: loaders() checks it
    return open_stream(splits, caps, "as asked: --data-storage stream, no cache", shard_set_name(pattern), normalize)


def stream_over_disk(pattern: str, error: OverDisk, caps: Caps, normalize: dict | None = None) -> StreamSet:
    """The stream of a shard set too large to cache (``error``: how :func:`~.shards.load_shards` refused it)."""
    why = f"no cache: {error.need / 1e9:.1f} GB decoded, {error.free / 1e9:.1f} GB free in {error.folder}"
    return open_stream(error.splits, caps, why, shard_set_name(pattern), normalize)


def training_data(
    load: Callable[[], object],
    pattern: str,
    test_pattern: str | None,
    storage: str,
    caps: Caps,
    *,
    normalize: dict | None = None,
    given: Sequence[tuple[str, bool]] = (),
) -> object:
    """What a run trains on: ``load()``'s data set (in memory or memory-mapped), or a :class:`StreamSet` of tar shards
    when ``storage`` is ``stream``, or ``auto`` and ``load`` found the decoded set larger than the free disk.

    ``given``: (option, used) for each of the caller's options a stream cannot honour; one used is refused in one
    line when the run streams. ``normalize``: a resumed stream's recorded normalisation (it keeps its numbers)."""
    if storage == STORAGE and not is_shard_input(pattern):
        raise EdgepruneError("--data-storage stream streams tar shards only: --data 'shards/train-{000..099}.tar'")
    over = None
    if storage != STORAGE:
        try:
            return load()
        except OverDisk as e:
            if storage != "auto":
                raise
            over = e
    for option, used in given:
        if used:
            raise EdgepruneError(
                f"{option}: not with a streamed shard set (decoded from its shards every epoch, no cache; it trains "
                "in one process on the CPU, on all of its training and test shards)"
            )
    if over is None:
        return stream_shards(pattern, test_pattern, caps, normalize)
    return stream_over_disk(pattern, over, caps, normalize)


def shard_set_name(pattern: str) -> str:
    """A shard set's name: its folder's, as a cached shard set's."""
    return Path(str(pattern)).expanduser().parent.name or "shards"


__all__ = [
    "STATS_SAMPLE",
    "STORAGE",
    "StreamBatches",
    "StreamSet",
    "epoch_generator",
    "held_bytes",
    "open_stream",
    "sample_stats",
    "shard_set_name",
    "stream_caps",
    "stream_over_disk",
    "stream_shards",
    "training_data",
]
