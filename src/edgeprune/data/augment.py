"""What a training batch gets on its way to the model: random crop and flip (:class:`ImageStore`) and normalisation.

Images stay uint8; one gather reads a batch with its crops and flips applied (index arithmetic, no
per-image loop), channels-last, and :class:`Normalizer` turns it into float32 on its device.
"""

from __future__ import annotations

import torch

PAD = 4


class ImageStore:
    """The training images (uint8 [N, C, H, W]) and vectorised batch gathers with crop and flip.

    A batch is read with one ``index_select``, zero-padded with one copy, and every output pixel
    is then gathered with one more ``index_select`` whose flat indices are a precomputed grid
    (plain or mirrored) plus one offset per image. The result is laid out channels-last (NHWC in
    memory), the layout the model trains in, so converting it to float is a contiguous pass.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x.contiguous()  # on any device: the gathers run where the images are
        _, self.channels, self.height, self.width = x.shape
        self._grids: dict[int, torch.Tensor] = {}

    def _grid(self, pad: int) -> torch.Tensor:
        """Offsets of output pixel (i, j, c) in one padded image [C, H+2p, W+2p]: [2, H, W, C], plain and mirrored."""
        if pad not in self._grids:
            c, h, w = self.channels, self.height, self.width
            hp, wp = h + 2 * pad, w + 2 * pad
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

        Offsets are in [0, 2 * pad]. Image b of the result equals ``zero_pad(x[index[b]])[:, dy:dy+H,
        dx:dx+W]``, flipped left-right when ``flip[b]``: uint8 [B, C, H, W], channels-last in memory.
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
        out = padded.view(-1).index_select(0, flat.view(-1)).view(b, h, w, c)
        return out.permute(0, 3, 1, 2)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` unaugmented, uint8 [B, C, H, W], channels-last in memory."""
        zeros = torch.zeros(len(index), dtype=torch.int64)
        return self.crop_flip(index, zeros, zeros, torch.zeros(len(index), dtype=torch.bool), pad=0)

    def random_crop_flip(
        self, index: torch.Tensor, generator: torch.Generator, pad: int = PAD, part: slice = slice(None)
    ) -> torch.Tensor:
        """``crop_flip`` of ``index[part]``, with offsets and flips drawn from ``generator`` for all of ``index``."""
        b = len(index)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        flip = torch.randint(0, 2, (b,), generator=generator).bool()
        return self.crop_flip(index[part], dy[part], dx[part], flip[part], pad)


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


__all__ = ["PAD", "ImageStore", "Normalizer"]
