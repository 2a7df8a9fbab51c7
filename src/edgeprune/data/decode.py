"""Images decoded to uint8 arrays, each checked from its header (size, pixels, the data set's budget) first."""

from __future__ import annotations

import io as _io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

import numpy as np
import torch

from edgeprune.data.bounds import over_data_cap, reason
from edgeprune.data.progress import Progress
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


def stored_side(size: int) -> int:
    """The side training images of an ``--image-size size`` data set are stored at: ``round(size * 8 / 7)``."""
    return max(size, round(size * 8 / 7))


def fit_square(arr: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] or [H, W] resized (Pillow, bilinear) so its shorter side is ``side``, then its centre square.

    The longer side becomes ``round(long * side / short)``; the square starts at ``(long - side) // 2``.
    """
    from PIL import Image

    h, w = arr.shape[:2]
    if (h, w) == (side, side):
        return arr
    scale = side / min(h, w)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    im = Image.fromarray(np.ascontiguousarray(arr)).resize((nw, nh), Image.BILINEAR)
    left, top = (nw - side) // 2, (nh - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)))


def fit_tensor(x: torch.Tensor, side: int) -> torch.Tensor:
    """:func:`fit_square` of every image of uint8 [N, C, H, W] (C = 1 or 3): uint8 [N, C, side, side]."""
    out = np.empty((len(x), x.shape[1], side, side), dtype=np.uint8)
    for i, img in enumerate(x.numpy()):
        arr = fit_square(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), side)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(out)


class _Output:
    """The decoded images: at their own size while every image has the data set's one size (``size`` x ``size``
    when a size is asked for), else every image through :func:`fit_square` to ``stored_side(size)``.

    What is checked from a header, before decoding (:meth:`check`): one size when no size is asked for, and the
    decoded size of the whole set (N x 3 x H x W) against ``max_bytes``, at the first image and on a switch to
    resizing.
    """

    def __init__(self, count: int, size: int | None, max_bytes: int, where: str):
        self.count, self.size, self.max_bytes, self.where = count, size, max_bytes, where
        self.side: int | None = None  # set once the images are resized
        self.first: tuple[str, tuple[int, int]] | None = None
        self.out: np.ndarray | None = None  # [N, 3, H, W]: no permuted copy later
        self.filled = np.zeros(count, dtype=bool)
        self.max_pixels = 0

    def _budget(self, name: str, w: int, h: int) -> None:
        need = self.count * 3 * w * h
        if need > self.max_bytes:
            what = f"{self.count:,} images of {w}x{h} (as {name}) decode to"
            raise over_data_cap(self.where, what, need, self.max_bytes)

    def check(self, name: str, size: tuple[int, int]) -> None:
        """Refuse, from its header, an image that would take the set over its budget or off its one size."""
        w, h = size
        self.max_pixels = max(self.max_pixels, w * h)
        if self.side is not None:
            return
        if self.first is None:
            if self.size is None or size == (self.size, self.size):
                self._budget(name, w, h)
            else:
                self._resize(name)
        elif size != self.first[1]:
            if self.size is None:
                fw, fh = self.first[1]
                raise EdgepruneError(
                    f"{name}: image is {w}x{h}, but {self.first[0]} is {fw}x{fh}; images of different sizes need "
                    "--image-size N (image_size=N) to resize them"
                )
            self._resize(name)

    def _resize(self, name: str) -> None:
        """From now on every image is resized; those decoded so far are resized from their uint8 pixels."""
        assert self.size is not None
        side = stored_side(self.size)
        self._budget(name, side, side)
        self.side = side
        if self.out is not None:
            old, self.out = self.out, np.empty((self.count, 3, side, side), dtype=np.uint8)
            for i in np.flatnonzero(self.filled):
                self.out[i] = fit_square(old[i].transpose(1, 2, 0), side).transpose(2, 0, 1)

    def put(self, i: int, name: str, arr: np.ndarray) -> None:
        """Place image ``i`` (uint8 [H, W, 3] or [H, W]), resized when the set is."""
        if self.side is not None:
            arr = fit_square(arr, self.side)
        if self.out is None:
            h, w = arr.shape[:2]
            self.first = (name, (w, h)) if self.side is None else None
            self.out = np.empty((self.count, 3, h, w), dtype=np.uint8)
        self.out[i] = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]  # gray: into all 3 channels
        self.filled[i] = True


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
    where: str, data: bytes, max_pixels: int, check: Callable[[str, tuple[int, int]], None]
) -> tuple[np.ndarray, bool]:
    """Decode one image to uint8 [H, W, 3] or [H, W], its size checked first; also say whether it is in colour.

    ``check`` sees the width and height from the header, before anything is decoded.
    """
    from PIL import Image

    def checked(size: tuple[int, int]) -> None:
        w, h = size
        if w * h > max_pixels:
            raise EdgepruneError(
                f"{where}: image is {w}x{h} ({w * h:,} pixels), over the cap of {max_pixels:,} pixels "
                "(raise max_image_pixels to load it)"
            )
        check(where, size)

    webp = _webp_size(data)  # Pillow's WebP reader allocates the whole canvas when it opens a file
    if webp is not None:
        checked(webp)
    try:
        with Image.open(_io.BytesIO(data)) as im:
            checked(im.size)
            im.load()
            return _to_uint8(where, im)
    except EdgepruneError:
        raise
    except Image.DecompressionBombError as e:
        raise EdgepruneError(f"{where}: refused by Pillow ({reason(e)}); raise max_image_pixels to load it") from None
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted image is a user error
        raise EdgepruneError(f"{where}: unreadable image ({reason(e)})") from None


def decode_all(
    tree: FileTree, files: list[PurePosixPath], progress: bool, size: int | None = None
) -> tuple[torch.Tensor, bool, bool]:
    """Decode every image to uint8 [N, 3, H, W]; also say whether any was in colour, and whether they were resized.

    With ``size`` None every image must have the first one's size. With ``size``, a set of ``size`` x ``size``
    images is kept as it is; any other is resized, every image through :func:`fit_square` to
    ``stored_side(size)`` (the caller crops evaluation images to ``size``). Images come in the tree's order
    (an archive's own); each goes to its place in ``files``. The decoded size is checked against
    ``max_data_bytes`` from the headers, before decoding.
    """
    index = {rel: i for i, rel in enumerate(files)}
    output = _Output(len(files), size, tree.caps.data_bytes, str(tree.root))
    color = False
    bar = Progress(progress, tty_only=True)  # a terminal only, as before
    with _pillow_limit(tree.caps.image_pixels):
        for n, (rel, data) in enumerate(tree.stream(files)):
            arr, in_color = _decode_one(tree.display(rel), data, tree.caps.image_pixels, output.check)
            del data  # one encoded file held at a time
            color = color or in_color
            output.put(index[rel], tree.display(rel), arr)
            bar.update("decoding", n + 1, len(files), "images")
    bar.update("decoding", len(files), len(files), "images", final=True)
    assert output.out is not None
    tree.facts["image_pixels"], tree.facts["decoded_bytes"] = output.max_pixels, output.out.nbytes
    return torch.from_numpy(output.out), color, output.side is not None


__all__ = ["decode_all", "fit_square", "fit_tensor", "stored_side"]
