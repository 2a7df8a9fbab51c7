"""Images decoded to uint8 arrays, each checked from its header (size, pixels, the data set's budget) first."""

from __future__ import annotations

import io as _io
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch

from edgeprune.data.bounds import over_data_cap, reason
from edgeprune.data.tree import FileTree
from edgeprune.errors import EdgepruneError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *SIXTEEN_BIT_MODES)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP file's first chunk header, or None if not a WebP file."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width - 1, height - 1
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":  # lossy key frame: 14-bit width, height after the start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open what ``max_pixels`` admits (its bomb check stops at 2x its own cap), warning-free."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow warns (over two lines) about odd metadata of an untrusted file: the image decodes or is refused.
        warnings.filterwarnings("ignore", module=r"PIL\.")
        if old is not None and max_pixels > old:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


@dataclass
class _Budget:
    """The decoded size check made once, at the first image: ``count`` images against ``max_bytes``."""

    count: int
    max_bytes: int
    where: str


def _check_size(
    where: str,
    size: tuple[int, int],
    max_pixels: int,
    first: tuple[str, tuple[int, int]] | None,
    budget: _Budget | None = None,
) -> None:
    """Refuse an image, from its header, that is over the pixel cap or not the data set's one size.

    At the first image (``budget`` given), also refuse the data set if its images decode to more than
    ``max_data_bytes`` (N x 3 x H x W: every image is decoded to RGB before a gray data set keeps one channel).
    """
    w, h = size
    if w * h > max_pixels:
        raise EdgepruneError(
            f"{where}: image is {w}x{h} ({w * h:,} pixels), over the cap of {max_pixels:,} pixels "
            "(raise max_image_pixels to load it)"
        )
    if first is not None and size != first[1]:
        raise EdgepruneError(
            f"{where}: image is {w}x{h}, but {first[0]} is {first[1][0]}x{first[1][1]}; "
            "all images of a data set must have one size"
        )
    if budget is not None and budget.count * 3 * w * h > budget.max_bytes:
        what = f"{budget.count:,} images of {w}x{h} (as {where}) decode to"
        raise over_data_cap(budget.where, what, budget.count * 3 * w * h, budget.max_bytes)


def _to_uint8(where: str, im: object) -> tuple[np.ndarray, bool]:
    """A loaded image as uint8, [H, W, 3] (or [H, W] for 16-bit, 32-bit and float gray); whether in colour.

    16-bit values are scaled, not clipped: ``round(v / 257)``, the inverse of the usual 8 to 16-bit
    widening ``v * 257``. 32-bit integer images must hold 16-bit values (how Pillow and TIFF hold them),
    float images values in [0, 1]; others are refused.
    """
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise EdgepruneError(
                f"{where}: 32-bit integer image with values {lo}..{hi}, outside the 16-bit range 0..65535 "
                "this loader scales to 8 bits; save it with 8 or 16 bits per pixel"
            )
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), False
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(a).all())
        lo, hi = (float(a.min()), float(a.max())) if a.size and finite else (0.0, 0.0)
        if not finite or lo < 0 or hi > 1:
            span = f"{lo:g}..{hi:g}" if finite else "NaN or infinite values"
            raise EdgepruneError(
                f"{where}: floating-point image with values outside [0, 1] ({span}); "
                "save it with 8 or 16 bits per pixel, or scale it to [0, 1]"
            )
        return np.rint(a * 255).astype(np.uint8), False
    return np.asarray(im.convert("RGB")), mode not in GRAY_MODES


def _decode_one(
    where: str,
    data: bytes,
    max_pixels: int,
    first: tuple[str, tuple[int, int]] | None,
    budget: _Budget | None = None,
) -> tuple[np.ndarray, bool]:
    """Decode one image to uint8 [H, W, 3] or [H, W], its size checked first; also say whether it is in colour."""
    from PIL import Image

    webp = _webp_size(data)  # Pillow's WebP reader allocates the whole canvas when it opens a file
    if webp is not None:
        _check_size(where, webp, max_pixels, first, budget)
    try:
        with Image.open(_io.BytesIO(data)) as im:
            _check_size(where, im.size, max_pixels, first, budget)
            im.load()
            return _to_uint8(where, im)
    except EdgepruneError:
        raise
    except Image.DecompressionBombError as e:
        raise EdgepruneError(f"{where}: refused by Pillow ({reason(e)}); raise max_image_pixels to load it") from None
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted image is a user error
        raise EdgepruneError(f"{where}: unreadable image ({reason(e)})") from None


def decode_all(tree: FileTree, files: list[PurePosixPath], progress: bool) -> tuple[torch.Tensor, bool]:
    """Decode every image to uint8 [N, 3, H, W]; also say whether any was in colour.

    Images come in the tree's order (an archive's own); each goes to its place in ``files``. The
    decoded size is checked against ``max_data_bytes`` at the first image's header, before decoding.
    """
    index = {rel: i for i, rel in enumerate(files)}
    first: tuple[str, tuple[int, int]] | None = None
    out: np.ndarray | None = None
    color = False
    last = time.perf_counter()
    show = progress and sys.stderr.isatty()
    where = str(tree.root)
    with _pillow_limit(tree.caps.image_pixels):
        for n, (rel, data) in enumerate(tree.stream(files)):
            budget = _Budget(len(files), tree.caps.data_bytes, where) if out is None else None
            arr, in_color = _decode_one(tree.display(rel), data, tree.caps.image_pixels, first, budget)
            del data  # one encoded file held at a time
            color = color or in_color
            if out is None:
                h, w = arr.shape[:2]
                first = (tree.display(rel), (w, h))
                out = np.empty((len(files), 3, h, w), dtype=np.uint8)  # [N, C, H, W]: no permuted copy later
                tree.facts["image_pixels"], tree.facts["decoded_bytes"] = w * h, out.nbytes
            out[index[rel]] = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]  # gray: into all 3 channels
            if show and time.perf_counter() - last > 0.5:
                last = time.perf_counter()
                print(f"\rdecoded {n + 1:,}/{len(files):,}", end="", file=sys.stderr, flush=True)
    if show:
        print(f"\rdecoded {len(files):,}/{len(files):,}", file=sys.stderr, flush=True)
    assert out is not None
    return torch.from_numpy(out), color


__all__ = ["decode_all"]
