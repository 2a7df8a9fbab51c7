"""Training straight from tar shards with no cache: ``--data-storage stream``, and auto when over the free disk."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli, small_model
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

import edgeprune
import edgeprune.data.shards as shards
import edgeprune.data.stream as stream
import edgeprune.train.source as source
from edgeprune.data.bounds import Caps
from edgeprune.data.shards import scan
from edgeprune.data.stream import StreamBatches, open_stream, stream_caps
from edgeprune.train import TrainConfig

CLASSES = 3


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh image cache per test."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _shards(root: Path, split: str, count: int, per: int, seed: int) -> str:
    """``count`` shards of ``per`` 8x8 RGB images whose brightness says their class; their brace pattern."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(count):
        with tarfile.open(root / f"{split}-{s:03d}.tar", "w") as tar:
            for i in range(per):
                y = int(rng.integers(0, CLASSES))
                a = (rng.integers(0, 96, (8, 8, 3)) + 80 * y).astype(np.uint8)
                for ext, data in (("png", _png(a)), ("cls", str(y).encode())):
                    info = tarfile.TarInfo(f"s{s:03d}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"{split}-{{000..{count - 1:03d}}}.tar")


@pytest.fixture
def pattern(tmp_path) -> str:
    """3 training shards of 20 images, 1 test shard of 15, beside each other."""
    _shards(tmp_path / "shards", "test", 1, 15, seed=1)
    return _shards(tmp_path / "shards", "train", 3, 20, seed=0)


def _train(capsys, pattern: str, out: Path, *more) -> tuple[int, str, str]:
    argv = ["train", "tiny", "--data", pattern, "--epochs", "2", "--batch-size", "16", "--lr", "0.05"]
    return run_cli(capsys, *argv, "--threads", "1", "--out", out, *more)


def _data_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("data: ")]


@pytest.mark.slow
def test_a_forced_stream_trains_learns_and_records_it(pattern, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _train(capsys, pattern, out, "--data-storage", "stream", "--epochs", "4")
    assert code == 0, err
    lines = _data_lines(err)
    assert lines == ["data: streaming 60 training images from 3 shards (as asked: --data-storage stream, no cache); "
                     "every epoch decodes them again"], err  # fmt: skip
    assert "60 train / 15 test images, 3x8x8, 3 classes (streamed from 4 shards)" in stdout
    summary = json.loads((out / "train.json").read_text())
    assert summary["data_storage"]["images"] == "stream" and summary["data"]["storage"] == "stream"
    assert summary["config"]["augment"] == "cifar" and summary["epochs"] == 4
    assert summary["normalize"]["estimated_from"] == "60 training images" and len(summary["normalize"]["std"]) == 3
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and all("test_acc" in r for r in history)
    assert history[-1]["loss"] < history[0]["loss"]  # brightness is learnable
    assert not (tmp_path / "cache" / "decoded").exists()  # nothing cached


def test_a_set_over_the_free_disk_streams_and_other_commands_refuse_it(pattern, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shards, "default_max_data_bytes", lambda: 100)  # an in-memory budget of 100 bytes
    monkeypatch.setattr(shards, "available_disk", lambda path: 1000)  # 1,000 bytes free for 14,400 decoded
    out = tmp_path / "run"
    code, _, err = _train(capsys, pattern, out, "--epochs", "1", "--quiet")
    assert code == 0, err
    code, _, err = _train(capsys, pattern, out, "--epochs", "1", "--force")
    assert code == 0, err
    (line,) = _data_lines(err)
    assert line.startswith("data: streaming 60 training images from 3 shards (no cache: 0.0 GB decoded, 0.0 GB free")
    assert json.loads((out / "train.json").read_text())["data_storage"]["images"] == "stream"
    code, _, err = run_cli(capsys, "evaluate", out, "--data", pattern)
    assert "only 'edgeprune train' streams a set this large" in one_line_error(err, code)
    code, _, err = _train(capsys, pattern, out, "--data-storage", "mapped", "--force")
    assert "free in the cache folder" in one_line_error(err, code)  # mapped, as asked: refused, not streamed


def test_a_resumed_stream_is_bit_identical_to_an_uninterrupted_one(pattern, tmp_path, capsys, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert _train(capsys, pattern, whole, "--data-storage", "stream", "--quiet")[0] == 0
    write_metrics = source._write_metrics

    def stop_after_epoch_1(out: Path, history: list[dict]) -> None:
        write_metrics(out, history)
        raise KeyboardInterrupt  # as Ctrl-C right after the first checkpoint

    monkeypatch.setattr(source, "_write_metrics", stop_after_epoch_1)
    code, _, err = _train(capsys, pattern, part, "--data-storage", "stream", "--quiet")
    assert code == 130 and "a stream resumes at the start of the epoch it was in" in err
    monkeypatch.undo()
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stream, "sample_stats", lambda *a: pytest.fail("estimated again"))  # the checkpoint's
    code, _, err = _train(capsys, pattern, part, "--data-storage", "stream", "--resume")
    assert code == 0, err
    assert err.count(source.STREAM_NOTE) == 1 and "resuming after epoch 1/2" in err
    assert (whole / "model.safetensors").read_bytes() == (part / "model.safetensors").read_bytes()

    def numbers(folder: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["loss"], r["train_acc"], r["test_acc"], r["lr"]) for r in rows]

    assert numbers(whole) == numbers(part) and len(numbers(part)) == 2
    code, _, err = _train(capsys, pattern, part, "--data-storage", "stream", "--resume", "--augment", "none", "--quiet")
    assert "different config" in one_line_error(err, code)


@pytest.mark.parametrize(
    ("more", "fragment"),
    [
        (["--val-fraction", "0.2"], "--val-fraction: not with a streamed shard set"),
        (["--limit-train", "10"], "--limit-train: not with a streamed shard set"),
        (["--device", "cuda"], None),  # no CUDA here: refused before the data; with one, not streamed
    ],
)
def test_what_a_stream_does_not_do_is_one_line(pattern, tmp_path, capsys, more, fragment):
    if fragment is None and torch.cuda.is_available():
        fragment = "--device cuda: not with a streamed shard set"
    code, _, err = _train(capsys, pattern, tmp_path / "run", "--data-storage", "stream", *more)
    line = one_line_error(err, code)
    assert fragment is None or fragment in line, line


def test_stream_storage_needs_shards_and_the_train_command(pattern, tmp_path, capsys):
    folder = tmp_path / "folder"
    (folder / "train" / "a").mkdir(parents=True)
    code, _, err = _train(capsys, str(folder), tmp_path / "run", "--data-storage", "stream")
    assert "streams tar shards only" in one_line_error(err, code)
    code, _, err = run_cli(capsys, "evaluate", "tiny", "--data", pattern, "--data-storage", "stream")
    assert "only 'edgeprune train' streams tar shards" in one_line_error(err, code)


def test_stream_batches_repeat_by_epoch_and_augment_on_whole_batches(pattern):
    caps = stream_caps()
    data = open_stream(scan(pattern, None, caps), caps, "test", "shards")
    assert data.sample == 60 and len(data.mean) == 3
    for augment in ("cifar", "imagenet", "none"):
        train, test = data.loaders(16, 7, augment)
        assert len(train) == 3 and len(test) == 1  # 60 // 16 full batches; 15 test images in one

        def epoch(n: int, train=train) -> list[torch.Tensor]:
            train.dataset.set_epoch(n)
            return [x for x, _ in train]

        first, again, other = epoch(0), epoch(0), epoch(1)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
        assert first[0].shape == (16, 3, 8, 8) and first[0].dtype == torch.float32
    (x, y), (x2, _) = next(iter(test)), next(iter(test))
    assert torch.equal(x, x2) and y.tolist() == data.test_y.tolist()  # in shard order, unaugmented
    with pytest.raises(Exception, match="unknown augmentation"):
        StreamBatches(data.splits.train, 60, 16, (data.mean, data.std), caps=Caps(1 << 20, 1 << 20, 1), shape=(3, 8, 8),
                      augment="mixup")  # fmt: skip


@pytest.mark.slow
def test_train_user_calls_set_epoch_before_every_epoch(tmp_path):
    class Epochs(IterableDataset):
        def __init__(self):
            self.calls = []

        def set_epoch(self, epoch: int) -> None:
            self.calls.append(epoch)

        def __len__(self) -> int:
            return 2

        def __iter__(self):
            g = torch.Generator().manual_seed(len(self.calls))
            for _ in range(2):
                yield torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (4,), generator=g)

    data = Epochs()
    test = DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64)), 4)
    model = small_model(num_classes=CLASSES)
    edgeprune.train(model, DataLoader(data, batch_size=None), test, TrainConfig(epochs=3), progress=False)
    assert data.calls == [0, 1, 2]


def test_training_data_decides_between_the_loaded_set_and_a_stream(pattern, tmp_path):
    """The library's choice, without the CLI: memory/mapped load, stream asked for, auto over the disk, refusals."""
    caps = stream_caps()
    loaded = object()
    assert stream.training_data(lambda: loaded, pattern, None, "auto", caps) is loaded
    splits = scan(pattern, None, caps)

    def over() -> object:
        raise shards.OverDisk("too big", splits, need=10**12, free=10**9, folder=tmp_path)

    streamed = stream.training_data(over, pattern, None, "auto", caps)
    assert isinstance(streamed, stream.StreamSet) and "no cache" in streamed.note()
    asked = stream.training_data(lambda: pytest.fail("a stream asked for loads nothing"), pattern, None, "stream", caps)
    assert isinstance(asked, stream.StreamSet) and len(asked.train_y) == len(streamed.train_y) == 60
    with pytest.raises(shards.OverDisk):  # mapped was asked for: no silent switch to a stream
        stream.training_data(over, pattern, None, "mapped", caps)
    with pytest.raises(edgeprune.EdgepruneError, match="--val-fraction: not with a streamed shard set"):
        given = [("--limit-train", False), ("--val-fraction", True)]
        stream.training_data(over, pattern, None, "auto", caps, given=given)
    with pytest.raises(edgeprune.EdgepruneError, match="streams tar shards only"):
        stream.training_data(lambda: loaded, str(tmp_path / "photos"), None, "stream", caps)


def test_a_stream_is_capped_by_what_it_holds_not_by_the_whole_set(tmp_path):
    """A set over --max-data-bytes is refused for caching (naming the stream), streamed when asked for, and a
    stream whose buffer and batch would pass the cap is refused before the first batch."""
    pattern = _shards(tmp_path / "big", "train", 3, 1000, seed=0)  # 3,000 8x8 images: 576,000 bytes decoded
    _shards(tmp_path / "big", "test", 1, 10, seed=1)
    caps = Caps(stream_caps().image_pixels, stream_caps().file_bytes, 500_000)
    with pytest.raises(edgeprune.EdgepruneError, match="over the cap of 500,000 bytes .*--data-storage stream"):
        shards.load_shards(pattern, None, caps)
    streamed = stream.training_data(lambda: pytest.fail("not loaded"), pattern, None, "stream", caps)
    held = stream.held_bytes(streamed.input_shape(), 16, len(streamed.train_y))
    assert held == 2016 * 192 + 12 * 16 * 192 < 500_000 < 3010 * 192  # the buffer, not the set
    train, _ = streamed.loaders(16, seed=0, augment="cifar")
    x, y = next(iter(train))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.shape == (16,)
    with pytest.raises(edgeprune.EdgepruneError, match=r"streaming at batch 1000 holds [\d,]+ bytes .* lower --batch"):
        streamed.loaders(1000, seed=0, augment="cifar")
