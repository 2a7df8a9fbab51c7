"""Data sets: image folders, archives, the official CIFAR pickles, caching, subsets and errors."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.data import ImageDataset, channel_stats, load_dataset
from edgeprune.errors import EdgepruneError

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_folder(root: Path, classes: dict[str, int], size=(6, 5), mode="RGB", seed=0, test_per_class=2):
    """Write root/{train,test}/<class>/<i>.png with random pixels; return the arrays by split."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    channels = 3 if mode == "RGB" else 1
    for split, per_class in (("train", None), ("test", test_per_class)):
        for cls, n in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class or n):
                shape = (size[1], size[0], channels) if channels == 3 else (size[1], size[0])
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode).save(folder / f"img_{i:03d}.png")
                arrays[split].append((cls, a))
    return arrays


def test_image_folder_layout_classes_pixels_and_stats(tmp_path):
    arrays = write_folder(tmp_path / "ds", {"zebra": 3, "ant": 2, "mole": 4})
    (tmp_path / "ds" / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored
    ds = load_dataset(tmp_path / "ds")
    assert isinstance(ds, ImageDataset)
    assert ds.name == "ds"
    assert ds.classes == ["ant", "mole", "zebra"]  # sorted folder names
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_x.shape == (9, 3, 5, 6) and ds.test_x.shape == (6, 3, 5, 6)
    assert ds.input_shape() == (3, 5, 6)
    assert ds.train_y.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    # pixels: class-major, files sorted; written zebra first, so compare per class
    by_class = {c: [a for cls, a in arrays["train"] if cls == c] for c in ds.classes}
    expected = np.stack([a for c in ds.classes for a in by_class[c]]).transpose(0, 3, 1, 2)
    assert np.array_equal(ds.train_x.numpy(), expected)
    x = expected.astype(np.float64) / 255
    assert np.allclose(ds.mean, x.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(ds.std, x.std(axis=(0, 2, 3)), atol=1e-9)


def test_channel_stats_matches_numpy():
    x = torch.randint(0, 256, (37, 2, 4, 3), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=5)
    a = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, a.mean(axis=(0, 2, 3))) and np.allclose(std, a.std(axis=(0, 2, 3)))


def test_second_load_uses_the_cache_and_changes_invalidate_it(tmp_path, monkeypatch):
    write_folder(tmp_path / "ds", {"a": 3, "b": 3})
    first = load_dataset(tmp_path / "ds")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_decoding)
        second = load_dataset(tmp_path / "ds")
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.classes == second.classes
    # a new image changes the key: decoded again, and seen
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "ds" / "train" / "b" / "zzz.png")
    third = load_dataset(tmp_path / "ds")
    assert len(third.train_y) == len(first.train_y) + 1 and third.train_x[-1].sum() == 0


def test_archive_is_read_once_and_descended(tmp_path, cache, monkeypatch):
    write_folder(tmp_path / "src" / "pets", {"cat": 2, "dog": 3})
    (tmp_path / "src" / "pets" / "train" / "cat" / "._resource_fork.png").write_bytes(b"junk")  # hidden: skipped
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pets", arcname="./pets")
    from_archive = load_dataset(archive)
    from_folder = load_dataset(tmp_path / "src")  # single top folder: descended into
    assert from_archive.name == "pets"
    assert torch.equal(from_archive.train_x, from_folder.train_x) and from_archive.classes == ["cat", "dog"]
    assert torch.equal(from_archive.test_y, from_folder.test_y)

    def no_reading(*args, **kwargs):
        raise AssertionError("read the archive again instead of using the cache")

    monkeypatch.setattr(tarfile, "open", no_reading)
    again = load_dataset(archive)
    assert torch.equal(again.test_x, from_archive.test_x) and again.classes == ["cat", "dog"]


def test_official_cifar_archive(tmp_path):
    """The official cifar-10-python.tar.gz holds cifar-10-batches-py/: read straight from the archive."""
    rng = np.random.default_rng(3)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_pickle(root / f"data_batch_{i}", {b"data": _cifar_images(rng, 2), b"labels": [i, 0]})
    _write_pickle(root / "test_batch", {b"data": _cifar_images(rng, 2), b"labels": [1, 2]})
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py")
    ds = load_dataset(archive)
    assert ds.train_y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0] and ds.classes == [str(i) for i in range(6)]
    assert torch.equal(ds.test_x, load_dataset(root).test_x)


@pytest.mark.slow
def test_shipped_mini_cifar10_with_stratified_limits():
    ds = load_dataset(MINI, limit_train=200, limit_test=50)
    assert ds.name == "cifar10-mini"
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train_x.shape == (200, 3, 32, 32) and ds.test_x.shape == (50, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [20] * 10
    assert torch.bincount(ds.test_y).tolist() == [5] * 10
    full = load_dataset(MINI)
    assert len(full.train_y) == 5000 and len(full.test_y) == 1000
    # the subset is the first images of each class, in the original order
    first20 = torch.cat([torch.nonzero(full.train_y == c).flatten()[:20] for c in range(10)]).sort().values
    assert torch.equal(ds.train_x, full.train_x[first20])
    again = load_dataset(MINI, limit_train=200, limit_test=50)
    assert torch.equal(again.train_x, ds.train_x)


def _write_pickle(path: Path, obj, protocol=2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _cifar_images(rng, n):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def test_official_cifar10_python_format(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "download" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        data, labels = _cifar_images(rng, 4), rng.integers(0, 10, 4).tolist()
        batches.append((data, labels))
        _write_pickle(
            root / f"data_batch_{i}", {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}
        )
    test_data, test_labels = _cifar_images(rng, 3), [9, 0, 4]
    _write_pickle(root / "test_batch", {b"labels": test_labels, b"data": test_data})
    _write_pickle(root / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    ds = load_dataset(tmp_path / "download")  # descends into cifar-10-batches-py
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.tolist() == sum((b[1] for b in batches), [])
    assert ds.test_y.tolist() == test_labels
    # the official row layout: 1024 red values (row-major), then green, then blue
    first = batches[0][0][0]
    assert np.array_equal(ds.train_x[0, 0].numpy(), first[:1024].reshape(32, 32))
    assert np.array_equal(ds.train_x[0, 2].numpy(), first[2048:].reshape(32, 32))
    assert np.array_equal(ds.test_x.numpy().reshape(3, -1), test_data)


def test_official_cifar100_python_format(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    train_data, fine = _cifar_images(rng, 6), [0, 99, 5, 5, 42, 7]
    train = {b"data": train_data, b"fine_labels": fine, b"coarse_labels": [0] * 6}
    _write_pickle(root / "train", train, protocol=pickle.HIGHEST_PROTOCOL)  # numpy's protocol-5 path too
    _write_pickle(root / "test", {b"data": _cifar_images(rng, 2), b"fine_labels": [3, 98], b"coarse_labels": [1, 1]})
    names = [f"class{i:03d}".encode() for i in range(100)]
    _write_pickle(root / "meta", {b"fine_label_names": names, b"coarse_label_names": []})
    ds = load_dataset(root)
    assert len(ds.classes) == 100 and ds.classes[99] == "class099"
    assert ds.train_y.tolist() == fine and ds.test_y.tolist() == [3, 98]
    assert np.array_equal(ds.train_x.numpy().reshape(6, -1), train_data)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_loader_refuses_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    _write_pickle(root / "data_batch_1", {b"data": _cifar_images(rng, 2), b"labels": [0, 1], b"x": _Evil(marker)})
    _write_pickle(root / "test_batch", {b"data": _cifar_images(rng, 2), b"labels": [0, 1]})
    with pytest.raises(EdgepruneError, match=r"data_batch_1: not a CIFAR python batch file.*refusing.*mkdir"):
        load_dataset(root)
    assert not marker.exists()


def test_grayscale_images_give_one_channel(tmp_path):
    write_folder(tmp_path / "g", {"a": 2, "b": 2}, mode="L")
    ds = load_dataset(tmp_path / "g")
    assert ds.input_shape() == (1, 5, 6) and len(ds.mean) == 1 and len(ds.std) == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(EdgepruneError, match="no such data set"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepruneError, match="empty, no data set"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "noimg" / "train" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "test" / "a").mkdir(parents=True)
    with pytest.raises(EdgepruneError, match="no images"):
        load_dataset(tmp_path / "noimg")
    with pytest.raises(EdgepruneError, match="not a data set"):
        (tmp_path / "other" / "x").mkdir(parents=True)
        (tmp_path / "other" / "y").mkdir(parents=True)
        load_dataset(tmp_path / "other")
    with pytest.raises(EdgepruneError, match="limit_train must be a positive integer"):
        load_dataset(tmp_path / "other", limit_train=0)


def test_mixed_sizes_and_unreadable_files_name_the_file(tmp_path):
    write_folder(tmp_path / "mixed", {"a": 2, "b": 2})
    odd = tmp_path / "mixed" / "train" / "b" / "odd.png"
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(odd)
    with pytest.raises(EdgepruneError, match=r"odd\.png: image is 7x7, but .* is 6x5"):
        load_dataset(tmp_path / "mixed")
    write_folder(tmp_path / "broken", {"a": 2})
    bad = tmp_path / "broken" / "test" / "a" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(EdgepruneError, match=r"bad\.jpg: unreadable image"):
        load_dataset(tmp_path / "broken")


def test_test_class_without_training_folder(tmp_path):
    write_folder(tmp_path / "ds", {"a": 2})
    (tmp_path / "ds" / "test" / "zz").mkdir()
    with pytest.raises(EdgepruneError, match="class folder 'zz' has no counterpart"):
        load_dataset(tmp_path / "ds")


def test_bad_archive(tmp_path):
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not gzip at all")
    with pytest.raises(EdgepruneError, match="not a readable tar archive"):
        load_dataset(fake)
    other = tmp_path / "file.zip"
    other.write_bytes(b"zip")
    with pytest.raises(EdgepruneError, match="not a folder or a .tar.gz"):
        load_dataset(other)
