"""Images of any size (--image-size), imagenet-style augmentation (--augment) and a validation split (--val-fraction,
a val/ folder): checked against independent Pillow and torch computations."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, one_line_error, run_cli
from PIL import Image

from edgeprune.data import ImageStore, center_crop, load_dataset, stratified_holdout, with_validation
from edgeprune.data.augment import CROP_RATIO, CROP_SCALE, resized_crop_boxes

# (width, height, mode) of the images of each class folder: mixed sizes and aspect ratios, gray and RGBA among them
SHAPES = [(40, 30, "RGB"), (30, 50, "L"), (24, 24, "RGBA"), (64, 48, "RGB"), (33, 17, "RGB"), (20, 28, "L")]


def _image(w: int, h: int, mode: str, seed: int, shade: int) -> Image.Image:
    """A random image with a class-dependent brightness (so a tiny model can learn something)."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 128, (h, w, 4), dtype=np.uint8) + shade).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(a[..., 0], "L")
    if mode == "RGBA":
        return Image.fromarray(a, "RGBA")
    return Image.fromarray(a[..., :3], "RGB")


def _mixed(root: Path, splits=("train", "test"), per_class: int = 6, classes=("a", "b")) -> Path:
    """An image folder of the SHAPES, ``per_class`` per class and split (cycling through the shapes)."""
    seed = 0
    for split in splits:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            n = per_class if split == "train" else max(2, per_class // 3)
            for i in range(n):
                w, h, mode = SHAPES[(i + k) % len(SHAPES)]
                _image(w, h, mode, seed, 100 * k).save(folder / f"img_{i:02d}.png")
                seed += 1
    return root


def _pillow(path: Path, side: int, crop: int) -> np.ndarray:
    """An independent resize: RGB, shorter side ``side`` (bilinear), the centre ``crop`` x ``crop`` of the centre
    square; as [3, crop, crop]."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (side, round(h * side / w)) if w <= h else (round(w * side / h), side)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - side) // 2 + (side - crop) // 2, (nh - side) // 2 + (side - crop) // 2
    return np.asarray(im.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)


def test_mixed_sizes_resize_to_pillow_values(tmp_path):
    root = _mixed(tmp_path / "mixed")
    data = load_dataset(root, image_size=16)
    # training images at round(16 * 8 / 7) = 18, centre square; evaluation images 16 x 16; gray and RGBA as RGB
    assert tuple(data.train_x.shape) == (12, 3, 18, 18) and tuple(data.test_x.shape) == (4, 3, 16, 16)
    assert data.input_shape() == (3, 16, 16) and data.resize
    train_files = sorted((root / "train" / "a").iterdir()) + sorted((root / "train" / "b").iterdir())
    test_files = sorted((root / "test" / "a").iterdir()) + sorted((root / "test" / "b").iterdir())
    for i in (0, 1, 2, 7):  # RGB 40x30, gray 30x50, RGBA 24x24, and a class-b image
        assert np.array_equal(data.train_x[i].numpy(), _pillow(train_files[i], 18, 18)), train_files[i]
    for i in (0, 1, 3):
        assert np.array_equal(data.test_x[i].numpy(), _pillow(test_files[i], 18, 16)), test_files[i]
    assert data.train_y.tolist() == [0] * 6 + [1] * 6
    # the evaluation crop of a stored training image is the evaluation image of the same file
    assert torch.equal(center_crop(data.train_x[:3], 16, 16), torch.from_numpy(
        np.stack([_pillow(f, 18, 16) for f in train_files[:3]])))  # fmt: skip


def test_switch_to_resizing_after_images_of_the_asked_size(tmp_path):
    # the first images decoded are already 24 x 24; the third is not: those before it are resized from their pixels
    root = tmp_path / "late"
    shapes = {"train/a": [(24, 24, "RGB"), (24, 24, "L"), (30, 40, "RGB")], "train/b": [(24, 24, "RGBA")],
              "test/a": [(24, 24, "RGB")], "test/b": [(24, 24, "RGB")]}  # fmt: skip
    files = []
    for n, (folder, sizes) in enumerate(shapes.items()):
        (root / folder).mkdir(parents=True)
        for i, (w, h, mode) in enumerate(sizes):
            files.append(root / folder / f"{i}.png")
            _image(w, h, mode, 10 * n + i, 40 * n).save(files[-1])
    data = load_dataset(root, image_size=24)
    assert data.resize and tuple(data.train_x.shape) == (4, 3, 27, 27)
    for i, f in enumerate(files[:4]):
        assert np.array_equal(data.train_x[i].numpy(), _pillow(f, 27, 27)), f
    for i, f in enumerate(files[4:]):
        assert np.array_equal(data.test_x[i].numpy(), _pillow(f, 27, 24)), f


def test_mixed_sizes_need_image_size(tmp_path):
    root = _mixed(tmp_path / "mixed")
    message = assert_one_line_error(lambda: load_dataset(root), "--image-size N", "different sizes")
    assert "img_" in message  # names the two images whose sizes differ


def test_one_size_at_its_size_is_as_before_and_cached_once(tmp_path, cache):
    root = tmp_path / "same"
    for split in ("train", "test"):
        for k, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                _image(10, 10, "RGB", 10 * k + i + (0 if split == "train" else 5), 50 * k).save(
                    root / split / name / f"{i}.png"
                )
    before = set((cache / "decoded").glob("*")) if (cache / "decoded").exists() else set()
    plain = load_dataset(root)
    files = set((cache / "decoded").glob("*"))
    assert len(files - before) == 1
    sized = load_dataset(root, image_size=10)
    assert set((cache / "decoded").glob("*")) == files  # the same cache entry, no second one
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(plain, name), getattr(sized, name))
    assert not sized.resize and sized.content_hash == plain.content_hash
    # another size: resized, cached under a key of its own (with the size), read back equal
    small = load_dataset(root, image_size=8)
    assert tuple(small.train_x.shape[1:]) == (3, 9, 9) and small.input_shape() == (3, 8, 8)
    assert len(set((cache / "decoded").glob("*")) - files) == 1
    again = load_dataset(root, image_size=8)
    assert torch.equal(again.train_x, small.train_x) and torch.equal(again.test_x, small.test_x)
    assert small.content_hash != plain.content_hash


def test_cached_resized_set_equals_first_decode(tmp_path, cache):
    root = _mixed(tmp_path / "mixed")
    first = load_dataset(root, image_size=12)
    count = len(list((cache / "decoded").glob("*")))
    second = load_dataset(root, image_size=12)
    assert len(list((cache / "decoded").glob("*"))) == count
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    other = load_dataset(root, image_size=20)
    assert other.input_shape() == (3, 20, 20) and tuple(other.train_x.shape[2:]) == (23, 23)


def test_cifar_python_batches_resize(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"labels": [0, 1, 2, 3, 4], b"data": data}, f, protocol=2)
    native = load_dataset(root, image_size=32)
    assert not native.resize and native.input_shape() == (3, 32, 32)
    small = load_dataset(root, image_size=20)
    assert tuple(small.train_x.shape) == (25, 3, 23, 23) and small.input_shape() == (3, 20, 20)
    # the same Pillow resize as an image file of those pixels gets
    png = tmp_path / "first.png"
    Image.fromarray(data[1].reshape(3, 32, 32).transpose(1, 2, 0), "RGB").save(png)
    assert np.array_equal(small.train_x[1].numpy(), _pillow(png, 23, 23))
    assert np.array_equal(small.test_x[1].numpy(), _pillow(png, 23, 20))


# -- augmentation ---------------------------------------------------------------------------------------------------


def _store(n: int = 6, side: int = 20, out: int = 16, seed: int = 0) -> tuple[torch.Tensor, ImageStore]:
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return x, ImageStore(x, (out, out))


def test_imagenet_augmentation_shape_and_determinism():
    x, store = _store()
    index = torch.tensor([0, 3, 5, 1])
    a = store.augment("imagenet", index, torch.Generator().manual_seed(7))
    b = store.augment("imagenet", index, torch.Generator().manual_seed(7))
    c = store.augment("imagenet", index, torch.Generator().manual_seed(8))
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a share of the batch (a torchrun process's) is the same images as in the whole batch's draw
    part = store.augment("imagenet", index, torch.Generator().manual_seed(7), slice(1, 3))
    assert torch.equal(part, a[1:3])


def test_resized_crop_boxes_inside_the_image_and_in_range():
    boxes = resized_crop_boxes(4000, 30, 20, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= 30 + 1e-9).all() and (left + w <= 20 + 1e-9).all())
    share, aspect = h * w / 600, w / h
    assert bool((share >= CROP_SCALE[0] - 1e-9).all() and (share <= CROP_SCALE[1] + 1e-9).all())
    assert bool((aspect >= CROP_RATIO[0] - 1e-9).all() and (aspect <= CROP_RATIO[1] + 1e-9).all())
    # the whole range is drawn (at most 8/9 of a 3:2 image fits the aspect limit of 4:3)
    assert float(share.min()) < 0.45 and float(share.max()) > 0.85
    assert 0.3 < float((left + w / 2).mean()) / 20 * 2 - 0.5 < 0.7  # centres spread, not all at one side


def test_resized_crop_values_and_flip():
    x, store = _store(n=3, side=40, out=16)
    index = torch.tensor([2, 0])
    # a box of exactly the output size at whole pixels is a plain crop; flipped, its mirror image
    boxes = torch.tensor([[3.0, 5.0, 16.0, 16.0], [0.0, 24.0, 16.0, 16.0]])
    plain = store.resized_crop(index, boxes, torch.tensor([False, False]))
    assert torch.equal(plain[0], x[2, :, 3:19, 5:21]) and torch.equal(plain[1], x[0, :, 0:16, 24:40])
    flipped = store.resized_crop(index, boxes, torch.tensor([True, False]))
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1])
    # a box twice the output size: every output pixel the mean of a 2x2 block (bilinear at the block's centre)
    half = store.resized_crop(index[:1], torch.tensor([[4.0, 2.0, 32.0, 32.0]]), torch.tensor([False]))
    expected = F.avg_pool2d(x[2:3, :, 4:36, 2:34].float(), 2)  # rounded: within half a level (and float error)
    assert float((half.float() - expected).abs().max()) <= 0.5 + 1e-3


def test_cifar_and_none_on_resized_images_crop_around_the_centre():
    x, store = _store(n=4, side=18, out=16)
    index = torch.arange(4)
    assert torch.equal(store.augment("none", index, torch.Generator()), center_crop(x, 16, 16))
    out = store.augment("cifar", index, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16)
    # at its own size (output = stored size) cifar draws exactly as before: pad-crop offsets 0..8, then flips
    native = ImageStore(x)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (4,), generator=g), torch.randint(0, 9, (4,), generator=g)
    flip = torch.randint(0, 2, (4,), generator=g).bool()
    padded = F.pad(x, (4, 4, 4, 4))
    expected = torch.stack([padded[i, :, dy[i] : dy[i] + 18, dx[i] : dx[i] + 18] for i in range(4)])
    expected = torch.where(flip.view(-1, 1, 1, 1), expected.flip(-1), expected)
    assert torch.equal(native.augment("cifar", index, torch.Generator().manual_seed(3)), expected)


# -- validation split ---------------------------------------------------------------------------------------------


def test_stratified_holdout_sizes_classes_and_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 17 + [3] * 3 + [4])
    keep, held = stratified_holdout(labels, 0.2, seed=5)
    assert len(held) == round(0.2 * len(labels)) and len(keep) + len(held) == len(labels)
    assert not set(keep.tolist()) & set(held.tolist())
    for c in range(5):
        n_c = int((labels == c).sum())
        held_c = int((labels[held] == c).sum())
        assert abs(held_c - 0.2 * n_c) <= 1, (c, held_c)
        assert int((labels[keep] == c).sum()) >= 1  # every class keeps a training image
    again = stratified_holdout(labels, 0.2, seed=5)
    assert torch.equal(again[1], held) and not torch.equal(stratified_holdout(labels, 0.2, seed=6)[1], held)
    assert_one_line_error(lambda: stratified_holdout(labels, 1.0), "between 0 and 1")


def test_val_fraction_holds_out_training_images(tmp_path):
    root = _mixed(tmp_path / "mixed", per_class=10)
    full = load_dataset(root, image_size=12)
    data = load_dataset(root, image_size=12, val_fraction=0.2, seed=3)
    assert len(data.val_y) == 4 and len(data.train_y) == 16 and data.val_x.shape[1:] == (3, 12, 12)
    assert data.val_y.tolist().count(0) == 2 and data.val_y.tolist().count(1) == 2
    keep, held = stratified_holdout(full.train_y, 0.2, seed=3)
    assert torch.equal(data.val_x, center_crop(full.train_x[held], 12, 12))
    assert torch.equal(data.train_x, full.train_x[keep]) and torch.equal(data.test_x, full.test_x)
    assert "16 train / 4 val / 6 test" in data.summary()
    assert data.content_hash != full.content_hash


def test_val_folder_is_the_validation_split(tmp_path):
    root = _mixed(tmp_path / "three", splits=("train", "test", "val"))
    data = load_dataset(root, image_size=12)
    assert len(data.val_y) == 4 and len(data.test_y) == 4 and data.val_x.shape[1:] == (3, 12, 12)
    val_files = sorted((root / "val" / "a").iterdir())
    assert np.array_equal(data.val_x[0].numpy(), _pillow(val_files[0], 14, 12))
    assert_one_line_error(lambda: load_dataset(root, image_size=12, val_fraction=0.1), "val/ folder", "--val-fraction")
    assert_one_line_error(lambda: with_validation(data, 0.1), "val/ folder")


def test_train_folder_alone_needs_a_validation_split(tmp_path):
    root = _mixed(tmp_path / "alone", splits=("train",))
    assert_one_line_error(lambda: load_dataset(root, image_size=12), "no test/", "--val-fraction")
    data = load_dataset(root, image_size=12, val_fraction=0.25)
    assert len(data.test_y) == 0 and data.test_x.shape[1:] == (3, 12, 12) and len(data.val_y) == 3
    again = load_dataset(root, image_size=12, val_fraction=0.25)  # from the cache
    assert torch.equal(again.val_x, data.val_x) and len(again.test_y) == 0


@pytest.mark.slow
def test_train_cli_image_size_imagenet_val_fraction(tmp_path, capsys):
    root = _mixed(tmp_path / "mixed", per_class=10)
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", root, "--image-size", 24, "--augment", "imagenet", "--val-fraction", 0.1]
    code, stdout, err = run_cli(capsys, *args, "--epochs", 2, "--batch-size", 6, "--out", out, "--quiet")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in records)
    summary = json.loads((out / "train.json").read_text())
    assert summary["config"]["augment"] == "imagenet" and summary["val_accuracy"] == records[-1]["val_acc"]
    assert summary["data"]["shape"] == [3, 24, 24] and summary["data"]["val"] == 2 and summary["data"]["resize"]
    assert "validation accuracy" in stdout and "18 train / 2 val / 6 test" in stdout
    # resuming with another augmentation is refused (the checkpoint records it)
    code, _, err = run_cli(capsys, *args[:7], "none", *args[8:], "--epochs", 3, "--batch-size", 6, "--out", out,
                           "--quiet", "--resume")  # fmt: skip
    assert "augment" in one_line_error(err, code)


@pytest.mark.slow
def test_train_cli_train_folder_alone(tmp_path, capsys):
    root = _mixed(tmp_path / "alone", splits=("train",), per_class=8)
    out = tmp_path / "run"
    base = ["train", "tiny", "--data", root, "--image-size", 16, "--epochs", 1, "--batch-size", 4, "--quiet"]
    code, _, err = run_cli(capsys, *base, "--out", out)
    assert "--val-fraction" in one_line_error(err, code)
    code, stdout, err = run_cli(capsys, *base, "--val-fraction", 0.25, "--out", out)
    assert code == 0, err
    assert "no test split" in stdout and "test accuracy" not in stdout
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_acc" not in record and 0 <= record["val_acc"] <= 1
    assert json.loads((out / "train.json").read_text())["config"]["augment"] == "imagenet"
    # its checkpoint (epochs with a validation accuracy only) resumes: the finished run is extended
    base[base.index("--epochs") + 1] = 2
    code, stdout, err = run_cli(capsys, *base, "--val-fraction", 0.25, "--out", out, "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == record and "test_acc" not in records[1]
