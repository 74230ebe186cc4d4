"""The CIFAR recipes' augmentation applied to a whole uint8 batch at once, with per-image randomness.

Same operations, order and distributions as the loader pipeline (data/transforms.py):
  pad-4 random crop   zero padding, offsets (dy, dx) uniform over {0, ..., 8}  (v2.RandomCrop(size, padding=4))
  horizontal flip     probability 1/2                                          (v2.RandomHorizontalFlip)
  AutoAugment         CIFAR-10 policy, per-image sub-policy                    (batch_autoaugment.py)
  Cutout              one size x size zero square, centre uniform over the image, clipped at the border
                      (transforms.Cutout)

The random parameters of a run of images are drawn together (`draw`) from one generator, one row per image,
and applied with masks and gathers (`apply`): no Python loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as nnf

from .batch_autoaugment import BatchAutoAugment, to_device

PAD = 4


@dataclass
class Draws:
    """Per-image random parameters, one row per image."""

    crop: torch.Tensor  # (n, 2) int64 offsets (top, left) into the padded image, 0..2*PAD
    flip: torch.Tensor  # (n,) bool
    cutout: torch.Tensor  # (n, 2) int64 centre (y, x)
    autoaugment: torch.Tensor  # (n, 2) int64 variant ids, -1 = not applied; stays on the CPU for grouping

    def __getitem__(self, rows: slice | torch.Tensor) -> "Draws":
        return Draws(self.crop[rows], self.flip[rows], self.cutout[rows], self.autoaugment[rows])

    def to(self, device: torch.device) -> "Draws":
        """The mask/gather parameters move to `device`; the AutoAugment ids stay on the CPU."""
        return Draws(to_device(self.crop.contiguous(), device), to_device(self.flip.contiguous(), device),
                     to_device(self.cutout.contiguous(), device), self.autoaugment)


def random_crop(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD on every side, then cut each image's H x W window at its (top, left) offset
    (one gather over the flattened padded planes)."""
    n, c, h, w = x.shape
    padded_w = w + 2 * PAD
    padded = nnf.pad(x, (PAD, PAD, PAD, PAD)).view(n, c, -1)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    flat = (rows[:, :, None] * padded_w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, flat).view(n, c, h, w)


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def cutout(x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Zero rows [cy - size//2, cy + size - size//2) x the same for columns; the square is clipped at the border."""
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    cy, cx = centres[:, 0:1], centres[:, 1:2]
    in_rows = (ys >= cy - size // 2) & (ys < cy + size - size // 2)  # (n, h)
    in_cols = (xs >= cx - size // 2) & (xs < cx + size - size // 2)  # (n, w)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(hole, 0)


class BatchAugment:
    """crop -> flip -> AutoAugment -> Cutout on uint8 (N, C, H, W) batches, each step optional."""

    def __init__(self, height: int, width: int, crop: bool = True, flip: bool = True,
                 autoaugment: bool = False, cutout: int = 0):
        self.height, self.width = height, width
        self.crop, self.flip, self.cutout = crop, flip, cutout
        self.autoaugment: Optional[BatchAutoAugment] = BatchAutoAugment(height, width) if autoaugment else None

    @property
    def active(self) -> bool:
        return bool(self.crop or self.flip or self.autoaugment or self.cutout)

    def draw(self, n: int, generator: torch.Generator) -> Draws:
        """Parameters for n images from a CPU generator. Every parameter is drawn whether or not its step is
        on, so turning one step on or off leaves the others' draws unchanged."""
        crop = torch.randint(2 * PAD + 1, (n, 2), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        cy = torch.randint(self.height, (n, 1), generator=generator)
        cx = torch.randint(self.width, (n, 1), generator=generator)
        if self.autoaugment is not None:
            autoaugment = self.autoaugment.draw(n, generator)
        else:
            autoaugment = torch.full((n, 2), -1, dtype=torch.long)
        return Draws(crop, flip, torch.cat([cy, cx], 1), autoaugment)

    def apply(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        if self.crop:
            x = random_crop(x, draws.crop)
        if self.flip:
            x = random_flip(x, draws.flip)
        if self.autoaugment is not None:
            x = self.autoaugment(x, draws.autoaugment)
        if self.cutout:
            x = cutout(x, draws.cutout, self.cutout)
        return x
