"""Per-image augmentation for the loader pipeline (torchvision transforms v2 on uint8 tensors).

In-memory datasets (CIFAR, Fashion-MNIST): pad-4 crop, flip, AutoAugment (CIFAR policy), Cutout.
Image-list datasets (ImageNet-LT, Places-LT, iNat): RandomResizedCrop and flip for training, Resize(256/224 *
size) + CenterCrop for evaluation. Both then take the photometric keys in one order: ColorJitter,
AutoAugment, RandAugment, RandomGrayscale, GaussianBlur, Cutout.
"""

from __future__ import annotations

from typing import Optional

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


def _blur_kernel(size: int) -> int:
    """About a tenth of the image, odd (23 at 224, as in SimCLR-style recipes)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def photometric_steps(cfg: DataConfig, size: int, policy: v2.AutoAugmentPolicy) -> list[torch.nn.Module]:
    """The photometric keys' transforms on uint8 (3, H, W), in the order every pipeline applies them."""
    steps: list[torch.nn.Module] = []
    if cfg.color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=cfg.color_jitter, contrast=cfg.color_jitter, saturation=cfg.color_jitter))
    if cfg.autoaugment:
        steps.append(v2.AutoAugment(policy))
    if cfg.randaugment:
        steps.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
    if cfg.grayscale > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale))
    if cfg.blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=cfg.blur))
    if cfg.cutout:
        steps.append(Cutout(cfg.cutout))  # on uint8, before normalising, as the reference codes do on [0, 1]
    return steps


def train_transform(cfg: DataConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                    resize: Optional[int] = None, interpolation: str = "bilinear") -> v2.Compose:
    """In-memory images (size x size): pad-4 crop and flip, (a pretrained backbone's `resize`,) then the photometric keys."""
    steps: list[torch.nn.Module] = []
    if cfg.crop:
        steps.append(v2.RandomCrop(size, padding=4))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if resize is not None:
        steps.append(v2.Resize([resize, resize], interpolation=v2.InterpolationMode(interpolation), antialias=True))
        size = resize
    steps += photometric_steps(cfg, size, v2.AutoAugmentPolicy.CIFAR10)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def resize_for_eval(size: int) -> int:
    """The short side before the centre crop: 256 for 224, same ratio for other sizes."""
    return int(round(size * 256 / 224))


def image_train_transform(cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...],
                          interpolation: str = "bilinear") -> v2.Compose:
    """Decoded uint8 (3, H, W) images of any size -> normalised float (3, S, S), S = data.image_size, one
    image at a time on the CPU; `interpolation` (bilinear | bicubic, a pretrained backbone's) resizes. The
    former image-list pipeline: training now decodes the crop box only (image_batches.py); this stays as the
    reference the benchmark's 'old' row and the tests compare to."""
    size, mode = cfg.image_size, v2.InterpolationMode(interpolation)
    if cfg.crop:
        steps: list[torch.nn.Module] = [v2.RandomResizedCrop(size, interpolation=mode, antialias=True)]
    else:
        steps = [v2.Resize(resize_for_eval(size), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += photometric_steps(cfg, size, v2.AutoAugmentPolicy.IMAGENET)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def image_eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str = "bilinear") -> v2.Compose:
    """Resize + CenterCrop + normalise on a decoded image: the reference for image_batches' evaluation crop."""
    return v2.Compose([
        v2.Resize(resize_for_eval(size), interpolation=v2.InterpolationMode(interpolation), antialias=True), v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])
