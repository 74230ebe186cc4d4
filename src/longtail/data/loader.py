"""The `loader` pipeline: a torch Dataset with per-image transforms behind a DataLoader."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .base import TensorImages
from .samplers import EpochSampler, epoch_generator


class TransformedImages(Dataset):
    """An in-memory split seen one image at a time through `transform`."""

    def __init__(self, split: TensorImages, transform: Optional[Callable] = None):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.split.images[i]
        return (self.transform(image) if self.transform else image), int(self.split.labels[i])


class LoaderPipeline:
    """Batches for one epoch at a time. A new DataLoader per epoch, seeded from (seed, epoch), so the
    augmentation drawn in the workers is reproducible and a resumed run sees the same batches."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: EpochSampler,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset, self.sampler = dataset, sampler
        self.batch_size, self.seed = batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=epoch_generator(self.seed, self.epoch, stream=1),
        )
        return iter(loader)


def eval_batches(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
