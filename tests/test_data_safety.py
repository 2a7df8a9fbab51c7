"""Nothing is read or decoded blindly: image sizes from headers, file sizes from stat or tar headers."""

from __future__ import annotations

import pickle
import struct
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_message, png_bytes, png_chunk
from PIL import Image, ImageFile, WebPImagePlugin

from edgeprune.data import load_dataset
from edgeprune.errors import EdgepruneError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh decode cache per test, so every load really reads and decodes."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))


def _huge_png(w: int = 12000, h: int = 12000) -> bytes:
    """A valid-looking PNG whose IHDR claims w x h RGB pixels, a few dozen bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + png_chunk(b"IEND", b"")
    )


def _huge_webp(w: int = 12000, h: int = 12000) -> bytes:
    """A WebP (extended format) header claiming a w x h canvas, with no image data."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _folder(root: Path, classes=("a", "b"), per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / split / c / f"img_{i}.png").write_bytes(png_bytes(seed=i))
    return root


def _tar(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def _no_decoding(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.size[0]}x{self.size[1]} image")

    for cls in (Image.Image, ImageFile.ImageFile, WebPImagePlugin.WebPImageFile):
        monkeypatch.setattr(cls, "load", refuse)


def _record_extracts(monkeypatch) -> list[str]:
    names: list[str] = []
    real = tarfile.TarFile.extractfile

    def extractfile(self, member):
        names.append(member if isinstance(member, str) else member.name)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    return names


def test_huge_png_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    (root / "train" / "a" / "000_huge.png").write_bytes(_huge_png())  # sorted first: the first image decoded
    _no_decoding(monkeypatch)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(EdgepruneError) as excinfo:
            load_dataset(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = one_line_message(excinfo)
    assert "000_huge.png" in text and "12000x12000" in text and "max_image_pixels" in text
    assert time.perf_counter() - start < 5 and peak < 20 * 2**20


def test_huge_webp_is_refused_before_pillow_allocates_its_canvas(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    (root / "train" / "a" / "000_huge.webp").write_bytes(_huge_webp())

    def no_canvas(*args, **kwargs):
        raise AssertionError("Pillow's WebP decoder was created for the huge image")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", no_canvas)
    with pytest.raises(EdgepruneError) as excinfo:
        load_dataset(root)
    text = one_line_message(excinfo)
    assert "000_huge.webp" in text and "12000x12000" in text and "max_image_pixels" in text


def test_wrongly_sized_image_is_refused_before_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    (root / "train" / "b" / "odd.png").write_bytes(png_bytes(7, 7))
    decoded: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(EdgepruneError, match=r"odd\.png: image is 7x7, but .*img_0\.png is 6x5") as excinfo:
        load_dataset(root)
    one_line_message(excinfo)
    assert decoded and (7, 7) not in decoded


def test_pixel_cap_is_a_parameter_and_raising_it_lets_the_image_through(tmp_path):
    root = _folder(tmp_path / "ds")  # 6x5 = 30 pixels
    with pytest.raises(EdgepruneError, match=r"img_0\.png: image is 6x5 \(30 pixels\), over the cap of 29") as excinfo:
        load_dataset(root, max_image_pixels=29)
    assert "max_image_pixels" in one_line_message(excinfo)
    ds = load_dataset(root, max_image_pixels=30)
    assert ds.input_shape() == (3, 5, 6)
    with pytest.raises(EdgepruneError, match="max_image_pixels must be a positive integer"):
        load_dataset(root, max_image_pixels=0)
    with pytest.raises(EdgepruneError, match="max_file_bytes must be a positive integer"):
        load_dataset(root, max_file_bytes=-1)


def test_raised_pixel_cap_also_lifts_pillows_own_bomb_limit(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow alone refuses over 20 pixels
    ds = load_dataset(root, max_image_pixels=100)
    assert ds.input_shape() == (3, 5, 6)
    assert Image.MAX_IMAGE_PIXELS == 10  # restored


def test_pillow_decompression_bomb_error_is_one_line(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (999 pixels) exceeds limit")

    monkeypatch.setattr(Image, "open", bomb)
    with pytest.raises(EdgepruneError, match=r"img_0\.png: refused by Pillow .*max_image_pixels") as excinfo:
        load_dataset(root)
    one_line_message(excinfo)


def test_archive_members_that_are_not_images_are_never_read(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src" / "pets")
    (root / "README").write_text("a data set\n")
    (root / "train" / "a" / "blob.bin").write_bytes(bytes(4096))
    (root / "test" / "notes.txt").write_text("not an image")
    archive = _tar(root, tmp_path / "pets.tar.gz", "pets")
    names = _record_extracts(monkeypatch)
    ds = load_dataset(archive)
    assert ds.classes == ["a", "b"] and len(ds.train_y) == 4 and len(ds.test_y) == 4
    assert names and all(n.endswith(".png") for n in names)
    assert not any(n.endswith(("README", "blob.bin", "notes.txt")) for n in names)


def test_archive_member_over_the_cap_is_refused_from_its_header(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src" / "pets")
    big = root / "train" / "b" / "big.png"
    big.write_bytes(png_bytes() + bytes(5000))  # a valid image with trailing padding: over a 2,000-byte cap
    size = big.stat().st_size
    archive = _tar(root, tmp_path / "pets.tar.gz", "pets")
    names = _record_extracts(monkeypatch)
    with pytest.raises(EdgepruneError) as excinfo:
        load_dataset(archive, max_file_bytes=2000)
    text = one_line_message(excinfo)
    assert "pets/train/b/big.png" in text and f"{size:,} bytes" in text and "max_file_bytes" in text
    assert names and not any(n.endswith("big.png") for n in names)
    ds = load_dataset(archive, max_file_bytes=size)  # raised: read and decoded
    assert len(ds.train_y) == 5


def test_folder_file_over_the_cap_is_refused_from_its_size(tmp_path):
    root = _folder(tmp_path / "ds")
    big = root / "test" / "a" / "big.png"
    big.write_bytes(png_bytes() + bytes(5000))
    size = big.stat().st_size
    with pytest.raises(EdgepruneError) as excinfo:
        load_dataset(root, max_file_bytes=2000)
    text = one_line_message(excinfo)
    assert "big.png" in text and f"{size:,} bytes" in text and "max_file_bytes" in text
    assert len(load_dataset(root, max_file_bytes=size).test_y) == 5


def test_small_file_cap_still_admits_cifar_batch_files(tmp_path, monkeypatch):
    """The official CIFAR-100 train file is 155 MB: batch files get at least MAX_BATCH_BYTES."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        data = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 2]}
        (root / name).write_bytes(pickle.dumps(data, protocol=2))
    (root / "README.html").write_text("x" * 5000)
    archive = _tar(root, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    names = _record_extracts(monkeypatch)
    for source in (root, archive):
        ds = load_dataset(source, max_file_bytes=1000)
        assert ds.train_x.shape == (3, 3, 32, 32) and ds.test_y.tolist() == [0, 1, 2]
    assert not any(n.endswith("README.html") for n in names)
