"""Data sets larger than memory: the memory-mapped image cache, the memory-or-mapped switch, and tar shards."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import one_line_message, png_bytes, run_cli, small_model
from PIL import Image
from safetensors.torch import load_file

import edgeprune.data.cache as cache
import edgeprune.data.memmap as memmap
from edgeprune.data import ImageDataset, channel_stats, load_dataset
from edgeprune.data.bounds import FACTS, Caps
from edgeprune.data.shards import ShardStream, expand_braces, shard_files
from edgeprune.errors import EdgepruneError
from edgeprune.train import TrainConfig, train

CAPS = Caps(4096 * 4096, 64 << 20, 1 << 40)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh image cache per test."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))


def _arrays(n_train: int = 40, n_test: int = 12, shape=(3, 8, 8), classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, n_train + n_test).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], [f"c{i}" for i in range(classes)]


def _write(path: Path, arrays, batch: int = 7) -> str:
    """Write ``arrays`` as a cache file from batches of ``batch`` images; return the content digest."""
    train_x, train_y, test_x, test_y, classes = arrays

    def batches():
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            for s in range(0, len(x), batch):
                yield split, x[s : s + batch], y[s : s + batch]

    meta = cache.cache_meta(classes, "generated", dict.fromkeys(FACTS, 0))
    counts = {"train": len(train_y), "test": len(test_y)}
    return memmap.write_image_file(path, classes, train_x.shape[1:], counts, batches(), meta)


def _dataset(arrays, name: str = "d") -> ImageDataset:
    tx, ty, vx, vy, classes = arrays
    mean, std = channel_stats(tx)
    return ImageDataset(name, classes, tx, ty, vx, vy, mean, std)


# -- the memory-mapped cache file ------------------------------------------------------------------------------


def test_cache_file_round_trip_mapped_and_in_memory(tmp_path):
    raw = _arrays()
    torch_arrays = (*(torch.from_numpy(a) for a in raw[:4]), raw[4])
    path = tmp_path / "set.safetensors"
    content = _write(path, raw)
    assert content == memmap.content_digest(raw[4], *torch_arrays[:4])  # streamed digest = in-memory digest
    loaded = load_file(str(path))  # an ordinary safetensors file
    assert all(torch.equal(loaded[k], t) for k, t in zip(memmap.TENSORS, torch_arrays[:4], strict=True))

    mapped, got = cache.read_cache_file(path, CAPS, budget=0)  # over the budget: mapped
    assert got == content and mapped[4] == raw[4]
    assert memmap.is_mapped(mapped[0]) and memmap.is_mapped(mapped[2]) and not memmap.is_mapped(mapped[1])
    assert all(torch.equal(a, b) for a, b in zip(mapped[:4], torch_arrays[:4], strict=True))
    assert "memory-mapped from" in memmap.storage_note(mapped[0]) and "over the in-memory budget" in (
        memmap.storage_note(mapped[0])
    )
    # the sums recorded while writing normalise exactly as a pass over the images does
    assert memmap.mapped_sums(mapped[0]) == memmap.channel_sums(torch_arrays[0])
    assert channel_stats(mapped[0]) == channel_stats(torch_arrays[0].clone())

    held, got = cache.read_cache_file(path, CAPS, budget=1 << 30)  # within the budget: in memory
    assert got == content and not memmap.is_mapped(held[0])
    assert all(torch.equal(a, b) for a, b in zip(held[:4], torch_arrays[:4], strict=True))


def test_checksum_is_read_in_chunks_not_the_whole_file(tmp_path, monkeypatch):
    raw = _arrays(n_train=600, n_test=50, shape=(3, 32, 32))  # 2 MB of images
    path = tmp_path / "set.safetensors"
    content = _write(path, raw, batch=64)
    monkeypatch.setattr(memmap, "HASH_CHUNK", 64 << 10)
    _, layout = memmap.read_layout(path)
    tracemalloc.start()
    try:
        digest = memmap.file_content_digest(path, layout, raw[4])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == content
    assert peak < path.stat().st_size // 8  # a chunk at a time, never the file


@pytest.mark.parametrize("where", ["image", "label", "header"])
def test_corrupted_cache_file_is_detected_in_one_warning(tmp_path, capsys, where):
    raw = _arrays()
    path = tmp_path / "set.safetensors"
    _write(path, raw)
    _, layout = memmap.read_layout(path)
    data = bytearray(path.read_bytes())
    if where == "image":
        data[layout["train_x"][2] + 100] ^= 0x01  # one bit of one pixel
    elif where == "label":
        data[layout["test_y"][2]] ^= 0x01
    else:
        at = data.index(b"generated")
        data[at : at + 3] = b"deg"  # the metadata's checksum no longer matches
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert cache.read_cache_file(path, CAPS, budget=0) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged image cache" in err and "checksum mismatch" in err


def test_truncated_cache_file_is_one_warning(tmp_path, capsys):
    path = tmp_path / "set.safetensors"
    _write(path, _arrays())
    path.write_bytes(path.read_bytes()[:-5])
    assert cache.read_cache_file(path, CAPS, budget=0) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged image cache" in err


def test_gather_rows_reads_sorted_and_returns_the_batch_order(tmp_path, monkeypatch):
    raw = _arrays(n_train=50)
    path = tmp_path / "set.safetensors"
    _write(path, raw)
    (x, *_), _ = cache.read_cache_file(path, CAPS, budget=0)
    index = torch.tensor([31, 2, 2, 49, 0, 17])
    offsets = []
    real = memmap.os.preadv
    monkeypatch.setattr(memmap.os, "preadv", lambda fd, bufs, at: offsets.append(at) or real(fd, bufs, at))
    out = memmap.gather_rows(x, index)
    assert torch.equal(out, torch.from_numpy(raw[0][index.numpy()]))
    _, layout = memmap.read_layout(path)
    row = 3 * 8 * 8
    assert offsets == [layout["train_x"][2] + i * row for i in sorted(index.tolist())]  # read in file order
    assert torch.equal(memmap.gather_rows(x[10:], index[index < 40]), torch.from_numpy(raw[0][10:][[31, 2, 2, 0, 17]]))
    with pytest.raises(IndexError):
        memmap.gather_rows(x, torch.tensor([3, 50]))
    offsets.clear()
    assert torch.equal(memmap.read_range(x, 45, 60), torch.from_numpy(raw[0][45:]))  # evaluation's reads
    assert offsets == [layout["train_x"][2] + 45 * row]
    assert memmap.read_range(x, 50, 60).shape == (0, 3, 8, 8)


# -- training from the mapping ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("augment", [True, False])
def test_training_on_the_mapped_path_is_bit_identical(tmp_path, monkeypatch, augment):
    monkeypatch.setattr(memmap, "RELEASE_BYTES", 4096)  # drop the mapped pages every few batches too
    raw = _arrays(n_train=96, n_test=24, shape=(3, 12, 12), classes=4)
    path = tmp_path / "set.safetensors"
    _write(path, raw)
    mapped = cache.read_cache_file(path, CAPS, budget=0)[0]
    held = cache.read_cache_file(path, CAPS, budget=1 << 30)[0]
    assert memmap.is_mapped(mapped[0]) and not memmap.is_mapped(held[0])
    results = []
    for arrays in (held, mapped):
        model = small_model(seed=3, num_classes=4)
        config = TrainConfig(epochs=2, batch_size=16, seed=5, augment=augment)
        result = train(model, _dataset(arrays), config, progress=False, threads=1)
        results.append((result.history, {k: v.clone() for k, v in model.state_dict().items()}))
    (h1, s1), (h2, s2) = results
    assert [(r["loss"], r["test_acc"]) for r in h1] == [(r["loss"], r["test_acc"]) for r in h2]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_a_run_resumed_on_the_mapped_path_matches_one_in_memory(tmp_path):
    raw = _arrays(n_train=64, n_test=16, shape=(3, 12, 12), classes=4)
    path = tmp_path / "set.safetensors"
    _write(path, raw)
    held = _dataset(cache.read_cache_file(path, CAPS, budget=1 << 30)[0])
    mapped = _dataset(cache.read_cache_file(path, CAPS, budget=0)[0])
    config = TrainConfig(epochs=2, batch_size=16, seed=1)
    whole = small_model(seed=2, num_classes=4)
    train(whole, held, config, progress=False, threads=1)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise _Stop

    resumed = small_model(seed=2, num_classes=4)
    with pytest.raises(_Stop):
        train(resumed, mapped, config, tmp_path / "run", progress=False, threads=1, callback=stop_after_first)
    resumed = small_model(seed=9, num_classes=4)  # other weights: the checkpoint must bring them back
    train(resumed, mapped, config, tmp_path / "run", resume=True, progress=False, threads=1)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "train.json").read_text())["data_storage"]["images"] == "mapped"


# -- the switch: memory or mapped, by size -------------------------------------------------------------------


def test_choose_storage_by_size_against_the_budget():
    assert memmap.choose_storage(1000, 1000) == "memory"
    assert memmap.choose_storage(1001, 1000) == "mapped"
    assert memmap.choose_storage(10, 1000, "mapped") == "mapped"
    assert memmap.choose_storage(10**12, 1000, "memory") == "memory"
    with pytest.raises(EdgepruneError, match="unknown data storage 'disk'"):
        memmap.choose_storage(1, 1, "disk")


def _folder(root: Path, per_class: int = 6) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = 100 * (c == "b") + 10 * (split == "test") + i
                (root / split / c / f"{i}.png").write_bytes(png_bytes(8, 8, seed=seed))
    return root


def _available(monkeypatch, available: int) -> None:
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(cache, "_cgroup_room", lambda: 2**62)


def test_a_cached_set_over_half_the_memory_available_is_mapped(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")  # 24 images of 3x8x8 and their labels: 4,608 + 192 bytes
    first = load_dataset(root)  # decoded, cached, in memory
    assert not memmap.is_mapped(first.train_x)
    _available(monkeypatch, 2 * 4800)  # a budget of 4,800 bytes: the set fits
    assert not memmap.is_mapped(load_dataset(root, max_data_bytes=1 << 20).train_x)
    _available(monkeypatch, 2 * 4799)  # one byte short
    again = load_dataset(root, max_data_bytes=1 << 20)
    assert memmap.is_mapped(again.train_x) and memmap.is_mapped(again.test_x)
    assert torch.equal(again.train_x, first.train_x) and again.content_hash == first.content_hash
    assert (again.mean, again.std) == (first.mean, first.std)
    assert "over the in-memory budget of 0.00 GB" in memmap.storage_note(again.train_x)
    forced = load_dataset(root, storage="memory", max_data_bytes=1 << 20)
    assert not memmap.is_mapped(forced.train_x)
    with pytest.raises(EdgepruneError, match="unknown data storage"):
        load_dataset(root, storage="swap")


@pytest.mark.slow
def test_train_says_which_path_ran_in_its_output_and_train_json(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    load_dataset(root)  # decoded and cached: a cached set is what gets mapped
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", root, "--epochs", "1", "--batch-size", "8", "--out", out]
    code, _, err = run_cli(capsys, *args, "--data-storage", "mapped", "--threads", "1")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("data: ")]
    assert len(lines) == 1 and "memory-mapped from" in lines[0] and "as asked" in lines[0]
    storage = json.loads((out / "train.json").read_text())["data_storage"]
    assert storage["images"] == "mapped" and "memory-mapped from" in storage["note"]
    code, _, err = run_cli(capsys, *args, "--force", "--threads", "1")
    assert code == 0, err
    assert json.loads((out / "train.json").read_text())["data_storage"]["images"] == "memory"
    assert "data: " not in err


# -- tar shards ------------------------------------------------------------------------------------------------


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _shards(root: Path, split: str, count: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` shards split-000.tar... of ``per`` random 6x5 RGB images; their images and labels in order."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for s in range(count):
        samples = []
        for i in range(per):
            a = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
            y = int(rng.integers(0, 4))
            ext = ("png", "webp", "png")[i % 3] if split == "train" else "png"
            data = _png(a) if ext == "png" else _lossless_webp(a)
            samples.append((f"{split}/s{s:03d}_{i:04d}", {ext: data, "cls": str(y).encode(), "json": b"{}"}))
            xs.append(a.transpose(2, 0, 1))
            ys.append(y)
        _shard(root / f"{split}-{s:03d}.tar", samples)
    return np.stack(xs), np.array(ys)


def _lossless_webp(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def test_three_shards_read_back_with_the_right_images_and_labels(tmp_path):
    root = tmp_path / "shards"
    x, y = _shards(root, "train", 3, 5, seed=1)
    tx, ty = _shards(root, "test", 1, 4, seed=2)
    ds = load_dataset(str(root / "train-{000..002}.tar"))  # the test split: test-*.tar beside them
    assert ds.train_x.shape == (15, 3, 5, 6) and ds.test_x.shape == (4, 3, 5, 6)
    assert torch.equal(ds.train_x, torch.from_numpy(x)) and ds.train_y.tolist() == y.tolist()
    assert torch.equal(ds.test_x, torch.from_numpy(tx)) and ds.test_y.tolist() == ty.tolist()
    assert ds.classes == [str(i) for i in range(int(max(y.max(), ty.max())) + 1)] and ds.name == "shards"
    again = load_dataset(str(root / "train-{000..002}.tar"), test_data=str(root / "test-{000..000}.tar"))
    assert again.content_hash == ds.content_hash  # the cache, keyed by the shards
    mapped = load_dataset(str(root / "train-{000..002}.tar"), storage="mapped")
    assert memmap.is_mapped(mapped.train_x) and torch.equal(mapped.train_x, ds.train_x)
    one = load_dataset(str(root / "train-001.tar"))  # one shard, known by its .cls members
    assert one.train_y.tolist() == y[5:10].tolist()


def test_shards_over_the_memory_budget_are_written_straight_to_a_mapped_cache(tmp_path, monkeypatch):
    root = tmp_path / "shards"
    x, y = _shards(root, "train", 3, 4, seed=3)
    _shards(root, "test", 1, 2, seed=4)
    _available(monkeypatch, 2 * 100)  # a budget of 100 bytes: 12 images of 90 bytes do not fit
    monkeypatch.setattr(cache, "store_cache", lambda *a: pytest.fail("held the set in memory"))
    ds = load_dataset(str(root / "train-{000..002}.tar"), max_data_bytes=1 << 20)
    assert memmap.is_mapped(ds.train_x) and torch.equal(ds.train_x, torch.from_numpy(x))
    assert ds.train_y.tolist() == y.tolist()


def test_brace_patterns():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar"] + [
        "b/x-8.tar",
        "b/x-9.tar",
        "b/x-10.tar",
    ]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("s-{0098..0100}.tar") == ["s-0098.tar", "s-0099.tar", "s-0100.tar"]


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("s-{000..002.tar", "unbalanced braces"),
        ("s-000..002}.tar", "unbalanced braces"),
        ("s-{{0..1}}.tar", "unbalanced braces"),
        ("s-{5..2}.tar", "runs backwards"),
        ("s-{}.tar", "bad group"),
        ("s-{a,,b}.tar", "bad group"),
        ("s-{0..1}-{0..999999}.tar", "more than 100,000 files"),
    ],
)
def test_bad_brace_patterns_are_one_line_errors(pattern, fragment):
    with pytest.raises(EdgepruneError, match=fragment) as info:
        expand_braces(pattern)
    one_line_message(info)


def test_missing_shards_and_test_split_are_one_line_errors(tmp_path):
    root = tmp_path / "shards"
    _shards(root, "train", 2, 2, seed=0)
    with pytest.raises(EdgepruneError, match=r"train-002\.tar: no such file") as info:
        shard_files(str(root / "train-{000..003}.tar"))
    assert "and 1 more" in one_line_message(info)
    with pytest.raises(EdgepruneError, match="no test shards .*--test-data") as info:
        load_dataset(str(root / "train-{000..001}.tar"))
    one_line_message(info)
    with pytest.raises(EdgepruneError, match="tar-shard data only"):
        load_dataset(str(tmp_path), test_data="x-{0..1}.tar")


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ({"png": None}, "sample has no a .cls member"),
        ({"cls": b"1"}, "sample has no an image"),
        ({"png": None, "cls": b"one"}, "must hold a class index"),
        ({"png": None, "cls": b"-3"}, "must hold a class index"),
        ({"png": None, "jpg": None, "cls": b"1"}, "has 2 images"),
        ({"png": b"not a png", "cls": b"1"}, "unreadable image"),
        ({"png": None, "cls": b"1" * 40}, "a .cls member is 40 bytes, over the cap of 32"),
    ],
)
def test_bad_shard_members_are_one_line_errors(tmp_path, members, fragment):
    image = png_bytes(6, 5)
    good = ("k/ok", {"png": image, "cls": b"0"})
    bad = ("k/bad", {ext: image if data is None else data for ext, data in members.items()})
    _shard(tmp_path / "train-0.tar", [good, bad])
    _shard(tmp_path / "test-0.tar", [good])
    with pytest.raises(EdgepruneError, match=fragment) as info:
        load_dataset(str(tmp_path / "train-{0..0}.tar"))
    assert "train-0.tar" in one_line_message(info, forbid="\n\r")


def test_shard_members_are_bounded_before_they_are_read(tmp_path):
    big = png_bytes(6, 5) + bytes(5000)  # a valid PNG with trailing bytes
    _shard(tmp_path / "train-0.tar", [("a", {"png": big, "cls": b"0"})])
    _shard(tmp_path / "test-0.tar", [("a", {"png": png_bytes(6, 5), "cls": b"0"})])
    with pytest.raises(EdgepruneError, match=r"a\.png: file is 5,\d+ bytes, over the cap of 2,000") as info:
        load_dataset(str(tmp_path / "train-{0..0}.tar"), max_file_bytes=2000)
    one_line_message(info)
    with pytest.raises(EdgepruneError, match=r"over the cap of 29 pixels"):
        load_dataset(str(tmp_path / "train-{0..0}.tar"), max_image_pixels=29)
    with pytest.raises(EdgepruneError, match="max_data_bytes"):
        load_dataset(str(tmp_path / "train-{0..0}.tar"), max_data_bytes=100)


def test_a_shard_header_asking_for_a_huge_read_is_refused(tmp_path):
    info = tarfile.TarInfo("k/" + "a" * (2 << 20) + ".png")  # a 2 MiB GNU long name, read whole by tarfile
    data = png_bytes(6, 5)
    info.size = len(data)
    with tarfile.open(tmp_path / "train-0.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    _shard(tmp_path / "test-0.tar", [("a", {"png": data, "cls": b"0"})])
    with pytest.raises(EdgepruneError, match=r"asks to read 2,097,\d+ bytes at once") as excinfo:
        load_dataset(str(tmp_path / "train-{0..0}.tar"), max_file_bytes=1 << 20)
    one_line_message(excinfo)


def test_shard_stream_shuffles_with_a_seeded_buffer(tmp_path):
    root = tmp_path / "shards"
    x, y = _shards(root, "train", 3, 6, seed=5)
    pattern = str(root / "train-{000..002}.tar")
    as_written = [int(label) for _, label in ShardStream(pattern, buffer=0)]
    assert as_written == y.tolist()
    runs = {}
    for seed, epoch in ((0, 0), (0, 0), (0, 1), (1, 0)):
        stream = ShardStream(pattern, seed=seed, buffer=8)
        stream.set_epoch(epoch)
        runs.setdefault((seed, epoch), []).append([img.numpy().tobytes() for img, _ in stream])
    a, b = runs[(0, 0)]
    assert a == b  # the same seed and epoch: the same order
    assert a != [img.tobytes() for img in x]  # shuffled
    assert sorted(a) == sorted(img.tobytes() for img in x)  # every sample once
    assert runs[(0, 1)][0] != a and runs[(1, 0)][0] != a
    with pytest.raises(EdgepruneError, match="shuffle buffer"):
        ShardStream(pattern, buffer=-1)
