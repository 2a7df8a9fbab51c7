"""Data set bounds: total bytes and decoded size, streamed archives, a checksummed cache, 16-bit images, one line.

Every archive here is small on disk (zero-filled members and blank images compress well) and every cap
is small, so nothing large is allocated: the loader must refuse from sizes and headers, before reading.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import one_line_message, png_bytes, png_chunk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import edgeprune.data.cache as data_module
from edgeprune.cli import main
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.errors import EdgepruneError

MiB = 2**20


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh decode cache per test, so every load really reads and decodes (unless a test loads twice)."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))


# -- helpers -----------------------------------------------------------------------------------


def _blank_png(w: int, h: int) -> bytes:
    """A real, all-black w x h grayscale PNG, compressed row by row: never w x h bytes in memory at once."""
    z = zlib.compressobj(9)
    row = bytes(1 + w)  # filter byte 0, then w zero pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def _folder(root: Path, classes=("a", "b"), per_class: int = 2, w: int = 6, h: int = 5) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = 100 * classes.index(c) + 10 * (split == "test") + i  # every image different
                (root / split / c / f"img_{i}.png").write_bytes(png_bytes(w, h, seed=seed))
    return root


def _tar_of(archive: Path, members: dict[str, bytes | int], mode: str = "w:gz") -> Path:
    """An archive of named members: bytes as given, or an int for that many zero bytes (streamed, never held)."""
    with tarfile.open(archive, mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, int):
                info.size = content
                tar.addfile(info, _Zeros(content))
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return archive


class _Zeros(io.RawIOBase):
    """``size`` zero bytes as a file, produced a read at a time."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _layout(names_by_split: dict[str, list[str]]) -> list[str]:
    return [f"ds/{split}/{name}" for split, names in names_by_split.items() for name in names]


def _record_extracts(monkeypatch) -> list[str]:
    names: list[str] = []
    real = tarfile.TarFile.extractfile

    def extractfile(self, member):
        names.append(member if isinstance(member, str) else member.name)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    return names


def _no_decoding(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.size[0]}x{self.size[1]} image")

    for cls in (Image.Image, ImageFile.ImageFile):
        monkeypatch.setattr(cls, "load", refuse)


def _available(monkeypatch, available: int) -> None:
    """Make the memory available look like ``available`` bytes (the default cap is half of it)."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(data_module, "_cgroup_room", lambda: 2**62, raising=False)


def _peak_while(fn) -> tuple[object, int]:
    """``fn()``'s result (or exception) and the peak of Python-allocated memory while it ran."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "decoded").glob("*.safetensors"))


# -- 5. total bytes and decoded size -----------------------------------------------------------


def test_archive_of_zero_filled_members_is_refused_from_headers_by_the_default_cap(tmp_path, monkeypatch):
    """The issue's 1.4 MB tar.gz of 24 x 60 MiB members, scaled down: 24 x 1 MiB against 16 MiB available."""
    members = {name: MiB for name in _layout({"train": [f"a/{i}.png" for i in range(12)]})}
    members |= {name: MiB for name in _layout({"test": [f"a/{i}.png" for i in range(12)]})}
    archive = _tar_of(tmp_path / "zeros.tar.gz", members)
    assert archive.stat().st_size < 200_000
    _available(monkeypatch, 16 * MiB)  # default max_data_bytes: 8 MiB
    names = _record_extracts(monkeypatch)
    result, peak = _peak_while(lambda: load_dataset(archive))
    assert isinstance(result, EdgepruneError), result
    text = str(result)
    assert "\n" not in text and "max_data_bytes" in text and "--max-data-bytes" in text and "8,388,608" in text
    assert names == []  # not one member read
    assert peak < 4 * MiB
    with pytest.raises(EdgepruneError, match="max_data_bytes") as excinfo:  # the same with the cap given
        load_dataset(archive, max_data_bytes=4 * MiB)
    one_line_message(excinfo, forbid="\n\r")
    with pytest.raises(EdgepruneError, match="max_data_bytes must be a positive integer"):
        load_dataset(archive, max_data_bytes=0)


@pytest.mark.slow
def test_archive_members_are_streamed_one_at_a_time_not_held(tmp_path):
    """24 valid images, each padded with 1 MiB of zeros: holding them all would take 24 MiB."""
    png = png_bytes()
    members = {}
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(6):
                members[f"ds/{split}/{c}/{i}.png"] = png + bytes(MiB)
    archive = _tar_of(tmp_path / "padded.tar.gz", members)
    assert archive.stat().st_size < 500_000
    ds, peak = _peak_while(lambda: load_dataset(archive))  # the default caps (this machine's memory)
    assert isinstance(ds, ImageDataset), ds
    assert ds.train_x.shape == (12, 3, 5, 6) and ds.test_y.tolist() == [0] * 6 + [1] * 6
    assert peak < 8 * MiB  # one member (and its read buffers) at a time


def test_blank_4096_pngs_are_refused_from_their_headers_before_decoding(tmp_path, monkeypatch):
    """The issue's tiny tar.gz of 16 blank 4096x4096 PNGs, 805 MB decoded: refused, nothing decoded."""
    blank = _blank_png(4096, 4096)
    members = {f"ds/{split}/{c}/{i}.png": blank for split in ("train", "test") for c in "ab" for i in range(4)}
    archive = _tar_of(tmp_path / "blank.tar.gz", members)
    assert archive.stat().st_size < 300_000
    _available(monkeypatch, 256 * MiB)
    _no_decoding(monkeypatch)
    result, peak = _peak_while(lambda: load_dataset(archive))
    assert isinstance(result, EdgepruneError), result
    text = str(result)
    assert "\n" not in text and "16 images of 4096x4096" in text and f"{16 * 3 * 4096 * 4096:,} bytes" in text
    assert "max_data_bytes" in text
    assert peak < 8 * MiB
    assert _cache_files(tmp_path) == []  # no 257 MB cache file


def test_decoded_size_cap_is_exact_for_a_folder(tmp_path):
    root = tmp_path / "ds"
    blank = _blank_png(64, 64)  # ~100 bytes on disk, 64 x 64 x 3 = 12,288 bytes decoded
    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                (root / split / c / f"{i}.png").write_bytes(blank)
    with pytest.raises(EdgepruneError, match=r"8 images of 64x64 .* decode to 98,304 bytes, over the cap of 98,303"):
        load_dataset(root, max_data_bytes=8 * 3 * 64 * 64 - 1)
    ds = load_dataset(root, max_data_bytes=8 * 3 * 64 * 64)
    assert ds.input_shape() == (1, 64, 64) and int(ds.train_x.max()) == 0


def test_total_file_bytes_cap_for_a_folder(tmp_path):
    root = _folder(tmp_path / "ds")
    total = sum(p.stat().st_size for p in root.rglob("*.png"))
    with pytest.raises(EdgepruneError, match=rf"its 8 files hold {total:,} bytes, over the cap") as excinfo:
        load_dataset(root, max_data_bytes=total - 1)
    one_line_message(excinfo, forbid="\n\r")
    assert len(load_dataset(root, max_data_bytes=total).train_y) == 4


def test_archive_of_many_tiny_members_is_refused_for_its_bookkeeping(tmp_path, monkeypatch):
    members = {f"ds/train/a/{i}.txt": b"" for i in range(3000)}
    archive = _tar_of(tmp_path / "many.tar.gz", members)
    _available(monkeypatch, 2 * MiB)  # default max_data_bytes: 1 MiB, passed at the 1,025th member
    with pytest.raises(EdgepruneError, match=r"1,024 bytes per member .* over the cap of 1,048,576") as excinfo:
        load_dataset(archive)
    one_line_message(excinfo, forbid="\n\r")


@pytest.mark.slow
def test_tar_header_asking_for_a_huge_read_is_refused(tmp_path):
    """A GNU long-name header declaring 300 MiB: tarfile would read it whole before looking at any member."""
    size = 300 * MiB
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = size
    archive = tmp_path / "longname.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as f:
        f.write(header.tobuf(tarfile.GNU_FORMAT))
        block = bytes(MiB)
        for _ in range(size // MiB):
            f.write(block)
        f.write(bytes(1024))  # end of archive
    assert archive.stat().st_size < 2 * MiB
    result, peak = _peak_while(lambda: load_dataset(archive))
    assert isinstance(result, EdgepruneError), result
    text = str(result)
    assert "\n" not in text and f"asks to read {size:,} bytes at once" in text and "max_file_bytes" in text
    assert peak < 8 * MiB


class _ArrayOfShape:
    """Pickles as a call of numpy's array constructor: no pixel data in the file at all."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, np.dtype("u1")))


def test_cifar_pickle_calling_the_array_constructor_is_counted_before_copying(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    n = 64 * MiB // 3072  # 64 MiB of images from a file of a few dozen KB
    batch = {b"data": _ArrayOfShape((n, 3072)), b"labels": [0] * n}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    assert (root / "data_batch_1").stat().st_size < 100_000
    _available(monkeypatch, 16 * MiB)
    with pytest.raises(EdgepruneError, match=r"data_batch_1: .*67,10\d,\d+ bytes, over the cap of 8,388,608") as e:
        load_dataset(root)
    assert "max_data_bytes" in one_line_message(e, forbid="\n\r")


def test_caps_hold_on_a_cache_hit(tmp_path):
    root = _folder(tmp_path / "ds")  # 6x5 images
    assert len(load_dataset(root, max_image_pixels=30).train_y) == 4  # cached
    with pytest.raises(EdgepruneError, match=r"image is 6x5 \(30 pixels\), over the cap of 29") as excinfo:
        load_dataset(root, max_image_pixels=29)
    one_line_message(excinfo, forbid="\n\r")
    with pytest.raises(EdgepruneError, match="max_data_bytes"):
        load_dataset(root, max_data_bytes=100)
    assert len(load_dataset(root).train_y) == 4  # within the caps: the cache is used again

    src = _folder(tmp_path / "src" / "pets")
    big = src / "train" / "b" / "big.png"
    big.write_bytes(png_bytes() + bytes(5000))
    size = big.stat().st_size
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="pets")
    assert len(load_dataset(archive, max_file_bytes=size).train_y) == 5  # cached
    with pytest.raises(EdgepruneError, match=rf"big\.png: file is {size:,} bytes, over the cap of 2,000") as excinfo:
        load_dataset(archive, max_file_bytes=2000)
    one_line_message(excinfo, forbid="\n\r")


# -- 8. the cache: checksum, damage, disk full ---------------------------------------------------


def _cached(tmp_path: Path, per_class: int = 4) -> tuple[Path, ImageDataset, Path]:
    root = _folder(tmp_path / "ds", per_class=per_class)
    ds = load_dataset(root)
    (path,) = _cache_files(tmp_path)
    return root, ds, path


def _same(a: ImageDataset, b: ImageDataset) -> bool:
    return (
        a.classes == b.classes
        and torch.equal(a.train_x, b.train_x)
        and torch.equal(a.train_y, b.train_y)
        and torch.equal(a.test_x, b.test_x)
        and torch.equal(a.test_y, b.test_y)
    )


def test_cache_edited_to_fewer_images_is_rebuilt_not_trusted(tmp_path, capsys):
    root, ds, path = _cached(tmp_path)  # 8 training images
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    save_file({**t, "train_x": t["train_x"][:3].clone(), "train_y": t["train_y"][:3].clone()}, str(path), meta)
    capsys.readouterr()
    again = load_dataset(root)
    assert len(again.train_y) == 8 and _same(again, ds)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged image cache" in err and "checksum" in err


def test_cache_edited_to_out_of_range_labels_is_rebuilt(tmp_path, capsys):
    root, ds, path = _cached(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    t["train_y"][0] = 7  # 2 classes: an IndexError in training, were it trusted
    save_file(t, str(path), meta)
    again = load_dataset(root)
    assert int(again.train_y.max()) == 1 and _same(again, ds)
    assert "checksum mismatch" in capsys.readouterr().err
    # even with the checksum forged to match, labels out of range are not trusted
    t["train_y"][0] = 7
    meta = dict(meta)
    tensors = {k: t[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    meta["sha256"] = data_module._cache_checksum(data_module.content_digest(ds.classes, *tensors.values()), meta)
    save_file(tensors, str(path), meta)
    again = load_dataset(root)
    assert int(again.train_y.max()) == 1 and "labels out of range" in capsys.readouterr().err


_FUZZED: dict[str, tuple] = {}


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edit=st.one_of(
        st.tuples(st.just("random"), st.binary(max_size=600)),
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(
            st.just("flip"),
            st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
        ),
    )
)
def test_fuzzed_cache_file_is_rebuilt_or_refused_in_one_line(tmp_path, capsys, edit):
    if str(tmp_path) not in _FUZZED:  # one data set per test run (tmp_path is shared by the examples)
        _FUZZED.clear()
        root, ds, path = _cached(tmp_path, per_class=2)
        _FUZZED[str(tmp_path)] = root, ds, path, path.read_bytes()
    root, ds, path, good = _FUZZED[str(tmp_path)]
    kind, arg = edit
    if kind == "random":
        bad = arg
    elif kind == "truncate":
        bad = good[: int(arg * len(good))]
    else:
        bad = bytearray(good)
        for where, xor in arg:
            bad[int(where * len(bad))] ^= xor
        bad = bytes(bad)
    path.write_bytes(bad)
    capsys.readouterr()
    try:
        again = load_dataset(root)
    except EdgepruneError as e:
        assert "\n" not in str(e)
    else:
        assert _same(again, ds) and again.content_hash == ds.content_hash
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1


def test_cache_write_failing_with_disk_full_is_one_warning(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "ds")

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(data_module, "save_file", disk_full)
    ds = load_dataset(root)
    assert len(ds.train_y) == 4
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("warning: cannot write the image cache")
        and "No space left on device" in err
    )
    assert not any((tmp_path / "cache" / "decoded").iterdir())  # no partial file left behind


@pytest.mark.slow
@pytest.mark.e2e
def test_cache_write_over_the_file_size_limit_is_one_warning(tmp_path):
    """``ulimit -f``: the cache file is refused with EFBIG; the load goes on without a cache."""
    root = _folder(tmp_path / "ds", per_class=4, w=16, h=16)  # the cache file: about 6 KB
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        from edgeprune.data import load_dataset
        print(len(load_dataset({str(root)!r}).train_y))
        """
    )
    env = {**os.environ, "EDGEPRUNE_CACHE": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8"
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: cannot write the image cache"), proc.stderr


# -- 16-bit and float images -------------------------------------------------------------------


def _gray_folder(root: Path, arrays: list[np.ndarray], fmt: str, mode: str | None = None) -> Path:
    for split in ("train", "test"):
        for c, a in zip("ab", arrays, strict=True):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a, mode).save(root / split / c / f"0.{fmt}")
    return root


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    a = (np.arange(30, dtype=np.uint32).reshape(5, 6) * 2259).astype(np.uint16)  # 0 .. 65,511
    b = np.full((5, 6), 257 * 200, np.uint16)  # an 8-bit 200 widened to 16 bits
    ds = load_dataset(_gray_folder(tmp_path / "ds", [a, b], "png"))
    assert ds.input_shape() == (1, 5, 6)
    expected = np.rint(a / 257).astype(np.uint8)
    assert np.array_equal(ds.train_x[0, 0].numpy(), expected)
    assert np.array_equal(ds.train_x[1, 0].numpy(), np.full((5, 6), 200, np.uint8))
    assert (ds.train_x[0] == 255).float().mean() < 0.1  # was 99.7% saturated


def test_32_bit_integer_images_holding_16_bit_values_are_scaled_others_refused(tmp_path):
    a = (np.arange(30, dtype=np.int32).reshape(5, 6) * 2000).astype(np.int32)
    ds = load_dataset(_gray_folder(tmp_path / "ok", [a, a], "tif", "I"))
    assert np.array_equal(ds.train_x[0, 0].numpy(), np.rint(a / 257).astype(np.uint8))
    wide = a.copy()
    wide[0, 0] = 70000
    with pytest.raises(EdgepruneError, match=r"0\.tif: 32-bit integer image with values 2000\.\.70000") as excinfo:
        load_dataset(_gray_folder(tmp_path / "wide", [a, wide], "tif", "I"))
    one_line_message(excinfo, forbid="\n\r")


def test_float_images_in_0_1_are_scaled_others_refused(tmp_path):
    a = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    ds = load_dataset(_gray_folder(tmp_path / "ok", [a, a[::-1].copy()], "tif", "F"))
    assert np.array_equal(ds.train_x[0, 0].numpy(), np.rint(a * 255).astype(np.uint8))
    assert int(ds.train_x.max()) == 255
    with pytest.raises(EdgepruneError, match=r"floating-point image with values outside \[0, 1\] \(0\.\.2\)") as e:
        load_dataset(_gray_folder(tmp_path / "bad", [a, a * 2], "tif", "F"))
    one_line_message(e, forbid="\n\r")


# -- one line, never a traceback ---------------------------------------------------------------


def test_garbage_archives_give_one_line_errors(tmp_path):
    for name, content in (
        ("garbage.tar", b"this is not a tar archive at all " * 40),
        ("garbage.tar.gz", b"not gzip at all"),
        ("broken.tar.gz", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4),
        ("cut.tar.gz", _tar_of(tmp_path / "whole.tar.gz", {"ds/train/a/0.png": png_bytes()}).read_bytes()[:60]),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(EdgepruneError, match="not a readable tar archive|truncated") as excinfo:
            load_dataset(tmp_path / name)
        one_line_message(excinfo, forbid="\n\r")


def test_member_names_with_line_breaks_stay_one_line(tmp_path):
    members = {
        "ds/train/a/0.png": png_bytes(),
        "ds/train/b/evil\nname.png": b"\x89PNG\r\n\x1a\n garbage, not an image",
        "ds/test/a/0.png": png_bytes(),
        "ds/test/b/0.png": png_bytes(),
    }
    archive = _tar_of(tmp_path / "names.tar.gz", members)
    with pytest.raises(EdgepruneError, match="unreadable image") as excinfo:
        load_dataset(archive)
    assert "evil\\nname.png" in one_line_message(excinfo, forbid="\n\r")


def test_multi_line_library_errors_become_one_line(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")

    def broken(*args, **kwargs):
        raise OSError("decoder failed:\n- first line\n- second line")

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(EdgepruneError, match="unreadable image") as excinfo:
        load_dataset(root)
    assert "decoder failed: - first line - second line" in one_line_message(excinfo, forbid="\n\r")


def test_cli_max_data_bytes_is_one_line_and_exit_2(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    code = main(["evaluate", "resnet18", "--data", str(root), "--max-data-bytes", "100"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("edgeprune evaluate: error: ") and "over the cap of 100 bytes" in err
    assert "--max-data-bytes" in err


# -- the content hash --------------------------------------------------------------------------


def test_content_hash_sees_images_swapped_between_classes(tmp_path):
    root = _folder(tmp_path / "ds")
    ds = load_dataset(root)
    assert len(ds.content_hash) == 64 and int(ds.content_hash, 16) >= 0
    assert load_dataset(root).content_hash == ds.content_hash  # from the cache: the same
    a, b = root / "train" / "a" / "img_0.png", root / "train" / "b" / "img_0.png"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    for p in a, b:  # a new stamp for sure: same sizes, and a clock that may not have moved
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    swapped = load_dataset(root)
    assert torch.equal(torch.sort(swapped.train_x.flatten())[0], torch.sort(ds.train_x.flatten())[0])
    assert swapped.content_hash != ds.content_hash
    # a subset has its own; a data set built by hand has one too, equal for equal data
    sub = load_dataset(root, limit_train=2)
    assert sub.content_hash not in (ds.content_hash, swapped.content_hash)
    tensors = [t.clone() for t in (swapped.train_x, swapped.train_y, swapped.test_x, swapped.test_y)]
    by_hand = ImageDataset("x", list(swapped.classes), *tensors, swapped.mean, swapped.std)
    assert by_hand.content_hash == swapped.content_hash
    renamed = ImageDataset("x", ["b", "a"], *tensors, swapped.mean, swapped.std)
    relabelled = dataclasses.replace(by_hand, train_y=1 - by_hand.train_y)  # the memo is not carried over
    assert relabelled.content_hash not in (by_hand.content_hash, ds.content_hash)
    assert renamed.content_hash != swapped.content_hash


def test_content_hash_of_an_archive_equals_its_folder(tmp_path):
    root = _folder(tmp_path / "src" / "pets")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    from_archive, from_folder = load_dataset(archive), load_dataset(root)
    assert from_archive.content_hash == from_folder.content_hash
