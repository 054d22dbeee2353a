"""Data augmentation of a training batch as tensor operations on its device (airbench's way:
no DataLoader, no per-image Python).

- crop: the image padded by `pad` = 4 pixels on each side, then a window of the original
  size at a uniformly random offset (0..2·pad in each direction, independently per image).
  The padding is 0 in the standardised inputs, that is each channel's training mean, where
  torchvision pads the raw image with black and airbench reflects.
- flip: left-right, each image with probability 1/2.
- Cutout (DeVries & Taylor 2017, as in davda54/sam's example): with probability 1/2 a
  16×16 square set to 0 (again the mean), its top-left corner uniform in
  [−8, H − 8) × [−8, W − 8), so that it may stick out of the image.

Every random number of a batch comes from one CPU generator seeded by (seed, step): the
augmentation of step t is the same on any device, in a resumed run, and under torchrun,
where every process draws it for the whole global batch and then takes its shard.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sharpcli.errors import SharpError

KINDS = ("none", "crop", "flip-crop", "flip-crop-cutout")
PAD = 4
CUTOUT = 16
_STREAM = 2**40  # keeps these generators' seeds apart from the batch sampler's (seed, epoch)


class Draw(NamedTuple):
    """The random choices for a batch of n images, on the CPU."""

    flip: Tensor     # (n,) bool
    dy: Tensor       # (n,) int64 in [0, 2·pad]: the crop's top row in the padded image
    dx: Tensor       # (n,) int64 in [0, 2·pad]
    cut: Tensor      # (n,) bool: Cutout applied
    cut_y: Tensor    # (n,) int64: the square's top row, may be negative
    cut_x: Tensor    # (n,) int64


def check_kind(kind: str, input_shape: tuple) -> None:
    """An augmentation needs images (C, H, W) at least as large as the Cutout square's half."""
    kind = str(getattr(kind, "value", kind))
    if kind not in KINDS:
        raise SharpError(f"unknown {{augment}} {kind!r}; expected one of {', '.join(KINDS)}",
                         param="augment")
    if kind != "none" and len(input_shape) != 3:
        raise SharpError(f"{{augment={kind}}} needs images (C, H, W); this data set has inputs "
                         f"of shape {tuple(input_shape)}", param="augment")


def draw(n: int, height: int, width: int, *, seed: int, step: int, pad: int = PAD,
         size: int = CUTOUT) -> Draw:
    """The random choices of step `step` for n images, from a generator seeded by (seed, step)."""
    gen = torch.Generator().manual_seed(_STREAM + seed * 1_000_003 + step)
    flip = torch.rand(n, generator=gen) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    cut = torch.rand(n, generator=gen) < 0.5
    half = size // 2
    cut_y = torch.randint(-half, height - half, (n,), generator=gen)
    cut_x = torch.randint(-half, width - half, (n,), generator=gen)
    return Draw(flip, dy, dx, cut, cut_y, cut_x)


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Images (N, C, H, W) with those where `mask` is True mirrored left-right."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def crop(x: Tensor, dy: Tensor, dx: Tensor, pad: int = PAD) -> Tensor:
    """Each image padded by `pad` zeros, then its H×W window from row dy, column dx: one
    gather for the batch."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    images = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[images, channels, rows, cols]


def cutout(x: Tensor, apply: Tensor, top: Tensor, left: Tensor, size: int = CUTOUT) -> Tensor:
    """Images with a size×size square from (top, left), clipped to the image, set to 0 where
    `apply` is True."""
    dev = x.device
    r = torch.arange(x.shape[-2], device=dev)
    c = torch.arange(x.shape[-1], device=dev)
    top, left = top.to(dev)[:, None], left.to(dev)[:, None]
    in_rows = (r >= top) & (r < top + size)                    # (N, H)
    in_cols = (c >= left) & (c < left + size)                  # (N, W)
    square = in_rows[:, :, None] & in_cols[:, None, :] & apply.to(dev)[:, None, None]
    return x.masked_fill(square[:, None], 0.0)


def augment(x: Tensor, kind: str, *, seed: int, step: int) -> Tensor:
    """The training batch of step `step` (N, C, H, W) augmented by `kind`; `x` itself for none.
    A new tensor: the data set is never modified."""
    kind = str(getattr(kind, "value", kind))
    if kind == "none":
        return x
    check_kind(kind, tuple(x.shape[1:]))
    d = draw(len(x), x.shape[-2], x.shape[-1], seed=seed, step=step)
    out = crop(x, d.dy, d.dx)
    if kind in ("flip-crop", "flip-crop-cutout"):
        out = flip(out, d.flip)
    if kind == "flip-crop-cutout":
        out = cutout(out, d.cut, d.cut_y, d.cut_x)
    return out
