"""Per-image augmentation for the loader pipeline (torchvision transforms on uint8 tensors)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..config import DataConfig


class Cutout(torch.nn.Module):
    """Zero one `size` x `size` square whose centre is uniform over the image; the square is
    clipped at the border (DeVries & Taylor 2017, as the GALA/LGLA recipes use it)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size - self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size - self.size // 2, w)
        image = image.clone()
        image[..., y0:y1, x0:x1] = 0
        return image


def train_transform(cfg: DataConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    steps: list[torch.nn.Module] = []
    if cfg.crop:
        steps.append(v2.RandomCrop(size, padding=4))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.autoaugment:
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    if cfg.cutout:
        steps.append(Cutout(cfg.cutout))  # on uint8, before normalising, as the reference codes do on [0, 1]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
