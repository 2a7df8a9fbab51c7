"""What a training batch gets on its way to the model: augmentation (:class:`ImageStore`) and normalisation.

Images stay uint8. ``cifar`` augmentation (pad, random crop, flip) reads a batch with one gather (index
arithmetic, no per-image loop); ``imagenet`` augmentation (random-resized crop and flip) samples every image's
box with one ``grid_sample`` over the batch. Both run where the images are, channels-last, and
:class:`Normalizer` turns the batch into float32 on its device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAD = 4
AUGMENTATIONS = ("cifar", "imagenet", "none")
CROP_SCALE = (0.35, 1.0)  # random-resized crop: share of the stored image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and its width / height, drawn log-uniformly
CROP_TRIES = 10  # boxes drawn per image until one fits; then the whole image (as torchvision does)


def augment_mode(augment: bool | str, resized: bool) -> str:
    """The augmentation a setting names: True is ``cifar`` for images at their own size, ``imagenet`` if resized."""
    if augment is True:
        return "imagenet" if resized else "cifar"
    if augment is False:
        return "none"
    return augment


def resized_crop_boxes(
    b: int, height: int, width: int, generator: torch.Generator, scale: tuple = CROP_SCALE, ratio: tuple = CROP_RATIO
) -> torch.Tensor:
    """``b`` random boxes (top, left, height, width), float64 pixels, inside a ``height`` x ``width`` image.

    Area a share ``scale`` of the image's, width / height in ``ratio`` (log-uniform): the first of CROP_TRIES
    draws that fits; when none does, the whole image (its aspect clamped into ``ratio``), centred.
    """
    area = height * width
    share = torch.rand(b, CROP_TRIES, generator=generator, dtype=torch.float64) * (scale[1] - scale[0]) + scale[0]
    logs = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(
        torch.rand(b, CROP_TRIES, generator=generator, dtype=torch.float64) * (logs[1] - logs[0]) + logs[0]
    )
    w, h = torch.sqrt(share * area * aspect), torch.sqrt(share * area / aspect)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    none = ~fits.any(1)
    whole_w = min(float(width), height * ratio[1])
    whole_h = min(float(height), width / ratio[0])
    w, h = torch.where(none, whole_w, w), torch.where(none, whole_h, h)
    u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    top = torch.where(none, (height - h) / 2, u[:, 0] * (height - h))
    left = torch.where(none, (width - w) / 2, u[:, 1] * (width - w))
    return torch.stack([top, left, h, w], 1)


class ImageStore:
    """The training images (uint8 [N, C, H, W]) and vectorised batch reads of ``size`` (default H x W) images.

    A ``cifar`` batch is read with one ``index_select``, zero-padded with one copy, and every output pixel
    is then gathered with one more ``index_select`` whose flat indices are a precomputed grid (plain or
    mirrored) plus one offset per image. Stored images larger than ``size`` (a resized set) are cropped around
    their centre. An ``imagenet`` batch samples a random box of every image with one ``grid_sample``. Results are
    laid out channels-last (NHWC in memory), the layout the model trains in.
    """

    def __init__(self, x: torch.Tensor, size: tuple[int, int] | None = None):
        self.x = x.contiguous()  # on any device: the gathers run where the images are
        _, self.channels, self.height, self.width = x.shape
        self.out_h, self.out_w = size if size is not None else (self.height, self.width)
        self._grids: dict[int, torch.Tensor] = {}

    def _grid(self, pad: int) -> torch.Tensor:
        """Offsets of output pixel (i, j, c) in one padded image [C, H+2p, W+2p]: [2, h, w, C], plain and mirrored."""
        if pad not in self._grids:
            c, h, w = self.channels, self.out_h, self.out_w
            hp, wp = self.height + 2 * pad, self.width + 2 * pad
            i = torch.arange(h).view(h, 1, 1) * wp
            j = torch.arange(w).view(1, w, 1)
            ch = torch.arange(c).view(1, 1, c) * (hp * wp)
            grid = torch.stack([ch + i + j, ch + i + (w - 1 - j)]).to(torch.int32)
            self._grids[pad] = grid.to(self.x.device)
        return self._grids[pad]

    def crop_flip(
        self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = PAD
    ) -> torch.Tensor:
        """Images ``index`` cropped at offsets (dy, dx) of their zero-padded versions, mirrored where ``flip``.

        Offsets are in [0, H + 2 * pad - h] (and likewise for x), h x w the output size. Image b of the result
        equals ``zero_pad(x[index[b]])[:, dy:dy+h, dx:dx+w]``, flipped left-right when ``flip[b]``: uint8
        [B, C, h, w], channels-last in memory.
        """
        b, c, h, w = len(index), self.channels, self.height, self.width
        hp, wp = h + 2 * pad, w + 2 * pad
        device = self.x.device
        index, dy, dx, flip = (t.to(device) for t in (index, dy, dx, flip))
        src = self.x.index_select(0, index)
        if pad:
            padded = src.new_zeros((b, c, hp, wp))
            padded[:, :, pad : pad + h, pad : pad + w] = src
        else:
            padded = src
        base = torch.arange(b, device=device) * (c * hp * wp) + dy * wp + dx  # where each crop starts
        dtype = torch.int32 if b * c * hp * wp < 2**31 else torch.int64  # int32: half the index traffic
        flat = self._grid(pad).index_select(0, flip.long()).to(dtype).view(b, -1)
        flat.add_(base.to(dtype).view(b, 1))
        out = padded.view(-1).index_select(0, flat.view(-1)).view(b, self.out_h, self.out_w, c)
        return out.permute(0, 3, 1, 2)

    @property
    def _margin(self) -> tuple[int, int]:
        """Where the centre crop of the output size starts in a stored image."""
        return (self.height - self.out_h) // 2, (self.width - self.out_w) // 2

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` unaugmented (their centre), uint8 [B, C, h, w], channels-last in memory."""
        n = len(index)
        top, left = self._margin
        dy, dx = torch.full((n,), top, dtype=torch.int64), torch.full((n,), left, dtype=torch.int64)
        return self.crop_flip(index, dy, dx, torch.zeros(n, dtype=torch.bool), pad=0)

    def random_crop_flip(
        self, index: torch.Tensor, generator: torch.Generator, pad: int = PAD, part: slice = slice(None)
    ) -> torch.Tensor:
        """``crop_flip`` of ``index[part]``, with offsets and flips drawn from ``generator`` for all of ``index``.

        Offsets are drawn within ``pad`` pixels of the centre crop (of the whole image, for images of the
        output size).
        """
        b = len(index)
        top, left = self._margin
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator) + top
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator) + left
        flip = torch.randint(0, 2, (b,), generator=generator).bool()
        return self.crop_flip(index[part], dy[part], dx[part], flip[part], pad)

    def resized_crop(self, index: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Box b (top, left, height, width; pixels) of image ``index[b]``, bilinearly resampled to the output size.

        Output pixel (i, j) samples the box at ``(top + (i + 0.5) * height / h, left + (j + 0.5) * width / w)``
        (pixel centres at k + 0.5), mirrored where ``flip``; rounded to uint8 [B, C, h, w], channels-last.
        """
        device = self.x.device
        src = self.x.index_select(0, index.to(device)).float()
        boxes = boxes.to(device, torch.float32)
        top, left, bh, bw = boxes.unbind(1)
        sx = bw / self.width * (1 - 2 * flip.to(device, torch.float32))
        theta = torch.zeros(len(index), 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * (left + bw / 2) / self.width - 1
        theta[:, 1, 1], theta[:, 1, 2] = bh / self.height, 2 * (top + bh / 2) / self.height - 1
        size = (len(index), self.channels, self.out_h, self.out_w)
        grid = F.affine_grid(theta, list(size), align_corners=False)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out.contiguous(memory_format=torch.channels_last)

    def random_resized_crop_flip(
        self, index: torch.Tensor, generator: torch.Generator, part: slice = slice(None)
    ) -> torch.Tensor:
        """``resized_crop`` of ``index[part]``; boxes (:func:`resized_crop_boxes`) and flips drawn for all ``index``."""
        boxes = resized_crop_boxes(len(index), self.height, self.width, generator)
        flip = torch.randint(0, 2, (len(index),), generator=generator).bool()
        return self.resized_crop(index[part], boxes[part], flip[part])

    def augment(
        self, mode: str, index: torch.Tensor, generator: torch.Generator, part: slice = slice(None)
    ) -> torch.Tensor:
        """Images ``index[part]`` augmented by ``mode`` (one of AUGMENTATIONS), draws made for all of ``index``."""
        if mode == "cifar":
            return self.random_crop_flip(index, generator, part=part)
        if mode == "imagenet":
            return self.random_resized_crop_flip(index, generator, part=part)
        return self.batch(index[part])


class Normalizer:
    """uint8 batches -> normalised float32 batches in channels-last layout."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self._full: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Full-size constants broadcast only over the batch: much faster than a size-3 inner broadcast.
        key = (h, w, str(device))
        if key not in self._full:
            c = self.mean.shape[1]
            scale = self.inv_std.expand(1, c, h, w).contiguous(memory_format=torch.channels_last)
            shift = (-self.mean * self.inv_std).expand(1, c, h, w).contiguous(memory_format=torch.channels_last)
            self._full[key] = (scale.to(device), shift.to(device))
        return self._full[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a uint8 [B, C, H, W] batch to normalised float32, channels-last, on its device."""
        scale, shift = self._constants(x.shape[2], x.shape[3], x.device)
        out = x.to(torch.float32, memory_format=torch.channels_last)
        return out.mul_(scale).add_(shift)


__all__ = ["AUGMENTATIONS", "PAD", "ImageStore", "Normalizer", "augment_mode", "resized_crop_boxes"]
