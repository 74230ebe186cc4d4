"""Per-image augmentation for the loader pipeline (torchvision transforms v2 on uint8 tensors).

In-memory datasets (CIFAR, Fashion-MNIST): pad-4 crop, flip, AutoAugment (CIFAR policy), Cutout.
Image-list datasets (ImageNet-LT, Places-LT, iNat): RandomResizedCrop and flip for training, the input spec's
Resize + CenterCrop for evaluation. Both then take the photometric keys in one order: ColorJitter,
AutoAugment, RandAugment, RandomGrayscale, GaussianBlur, Cutout.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..config import DataConfig
from ..input_spec import InputSpec, normalize


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


class SpecNormalize(torch.nn.Module):
    """The last step of every per-image transform: input_spec.normalize with the spec's mean/std (CPU tensors,
    where DataLoader workers run)."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.mean, self.std = spec.stats("cpu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return normalize(image, self.mean, self.std)


class EvalResize(torch.nn.Module):
    """The spec's evaluation resize: short side to R, centre crop S x S (InputSpec.resize_for_eval)."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.spec = spec

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.spec.resize_for_eval(image)


def train_transform(cfg: DataConfig, spec: InputSpec, native_size: int) -> v2.Compose:
    """In-memory images (native_size x native_size): pad-4 crop and flip, resized to the spec's size when it
    differs (a pretrained backbone's input size), then the photometric keys."""
    steps: list[torch.nn.Module] = []
    if cfg.crop:
        steps.append(v2.RandomCrop(native_size, padding=4))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.size != native_size:
        steps.append(v2.Resize([spec.size, spec.size], interpolation=v2.InterpolationMode(spec.interpolation), antialias=True))
    steps += photometric_steps(cfg, spec.size, v2.AutoAugmentPolicy.CIFAR10)
    steps.append(SpecNormalize(spec))
    return v2.Compose(steps)


def eval_transform(spec: InputSpec) -> v2.Compose:
    """Any uint8 (C, H, W) image -> the network's normalised input: the spec's resize and centre crop (nothing for
    an image already S x S with R = S), then normalisation. Evaluation's crop-decode (image_batches), the in-memory
    evaluation batches and deployment.Preprocessing give the same pixels."""
    return v2.Compose([EvalResize(spec), SpecNormalize(spec)])


def image_train_transform(cfg: DataConfig, spec: InputSpec) -> v2.Compose:
    """Decoded uint8 (3, H, W) images of any size -> normalised float (3, S, S), S = spec.size, one image at a
    time on the CPU, resized with the spec's interpolation. The former image-list pipeline: training now decodes
    the crop box only (image_batches.py); this stays as the reference the benchmark's 'old' row and the tests
    compare to."""
    size, mode = spec.size, v2.InterpolationMode(spec.interpolation)
    steps: list[torch.nn.Module] = [v2.RandomResizedCrop(size, interpolation=mode, antialias=True) if cfg.crop else EvalResize(spec)]
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += photometric_steps(cfg, size, v2.AutoAugmentPolicy.IMAGENET)
    steps.append(SpecNormalize(spec))
    return v2.Compose(steps)
