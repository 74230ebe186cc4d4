"""The image-list pipeline: DataLoader workers decode only each image's crop box to uint8, the device
finishes whole batches (colour jitter, normalisation).

Worker side (`CroppedImages`), per image: the crop box from the file header (RandomResizedCrop for
training, Resize + CenterCrop for evaluation, data/crop_decode.py), a reduced JPEG decode where the box
allows, one antialiased resize to S x S, the flip, and the colour-jitter parameters. Batches leave the
workers as uint8 (a quarter of float32's bytes), through pinned memory on CUDA, copied without blocking.

Device side (`ImageListPipeline`, `finish`): uint8 -> float, ColorJitter for the whole batch
(data/color_jitter.py), normalisation.

Every random draw of an image (crop: 40 uniforms, flip: 1, jitter: 6) comes from one generator seeded
by the image's key seed (samplers.sample_seed: seed, epoch, position), so the augmentation is the same
whatever the worker, the number of processes, or whether the run was resumed. Augmentation keys that
have no batched form here (autoaugment, randaugment, grayscale, blur, cutout) run in the worker on the
uint8 crop, with torchvision's transforms in their usual order (colour jitter then goes with them), drawn
from the default generator seeded by the same key seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset

from ..errors import LongtailError
from ..input_spec import InputSpec, normalize
from .color_jitter import JITTER_DRAWS, color_jitter, jitter_params
from .crop_decode import DRAWS_PER_CROP, decode_box, random_box
from .image_list import ImageList
from .loader import LoaderPipeline, seeded_default_generator
from .samplers import SeededSampler

FLIP_DRAW = DRAWS_PER_CROP  # the uniform deciding the flip
JITTER_AT = FLIP_DRAW + 1  # the first of the jitter's uniforms
IMAGE_DRAWS = JITTER_AT + JITTER_DRAWS  # uniforms drawn per training image


@dataclass(frozen=True)
class CropAugment:
    """The training augmentation the workers and the device share. `crop` False: the evaluation crop."""

    crop: bool = True
    flip: bool = True
    jitter: float = 0.0  # ColorJitter strength applied on the device, 0 = off
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def image_uniforms(seed: int) -> list[float]:
    """The IMAGE_DRAWS uniforms in [0, 1) of the image whose key seed is `seed`. Python's Mersenne Twister
    takes the whole 64-bit seed (torch's CPU generator keeps only its low 32 bits, the position) and is
    the same on every platform."""
    generator = random.Random(seed)
    return [generator.random() for _ in range(IMAGE_DRAWS)]


class CroppedImages(Dataset):
    """An ImageList as S x S uint8 crops (S = spec.size, resized with spec.interpolation). Keys: an index
    (evaluation: the spec's centre crop, no randomness) or (index, seed) (training, SeededSampler). Items:
    (uint8 (3, S, S), label, float32 (6,) jitter parameters, zeros when the device applies no jitter)."""

    def __init__(self, images: ImageList, spec: InputSpec, augment: Optional[CropAugment] = None,
                 worker_steps: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.images, self.augment, self.worker_steps = images, augment, worker_steps
        self.size, self.interpolation = spec.size, spec.interpolation
        self.eval_box = spec.eval_box

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        augment = self.augment if seed is not None else None
        uniforms = image_uniforms(seed) if augment is not None else None
        box = random_box(uniforms, augment.scale, augment.ratio) if augment and augment.crop else self.eval_box
        flip = bool(augment and augment.flip and uniforms[FLIP_DRAW] < 0.5)
        image = self.images.read(index, lambda path: decode_box(path, box, self.size, flip, self.interpolation))
        if self.worker_steps is not None and seed is not None:
            with seeded_default_generator(seed):
                image = self.worker_steps(image)
        params = torch.zeros(JITTER_DRAWS)
        if augment is not None and augment.jitter > 0:
            params = torch.tensor(jitter_params(uniforms[JITTER_AT:], augment.jitter))
        return image, int(self.images.targets[index]), params


def finish(x: torch.Tensor, params: torch.Tensor, jitter: bool, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 batch on its device -> normalised float32: the batched colour jitter (on 0..1 floats) if on,
    then input_spec.normalize."""
    if jitter:
        x = color_jitter(x.to(torch.float32).mul_(1.0 / 255), params)
    return normalize(x, mean, std)


class ImageListPipeline:
    """TrainBatches (see pipeline.py) of an ImageList: workers crop and decode, the device finishes."""

    def __init__(self, dataset: CroppedImages, sampler: SeededSampler, batch_size: int, seed: int,
                 device: torch.device, spec: InputSpec, num_workers: int, drop_last: bool = False):
        if dataset.augment is None:
            raise LongtailError("ImageListPipeline needs a dataset with a CropAugment")
        self.loader = LoaderPipeline(dataset, sampler, batch_size, seed, num_workers=num_workers,
                                     pin_memory=device.type == "cuda", drop_last=drop_last)
        self.device, self.jitter = device, dataset.augment.jitter > 0
        self.mean, self.std = spec.stats(device)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, params in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield finish(x, params.to(self.device, non_blocking=True), self.jitter, self.mean, self.std), y
