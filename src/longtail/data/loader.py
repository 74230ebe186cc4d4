"""The `loader` pipeline: a torch Dataset with per-image transforms behind a DataLoader."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import LongtailError
from .base import TensorImages
from .samplers import SeededSampler, epoch_generator, seed32


class TransformedImages(Dataset):
    """A split seen one image at a time through `transform`. The split is in-memory TensorImages or
    any dataset of (uint8 image, label) pairs (e.g. an ImageList).

    Keys are plain indices or (index, seed) pairs (SeededSampler). With a seed, every random draw of the
    transform follows from that seed alone: torch's default CPU generator is seeded for the call and
    restored after it, so the caller's random state is untouched and the result does not depend on
    which process or worker loads the image.
    """

    def __init__(self, split: Any, transform: Optional[Callable] = None):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        if isinstance(self.split, TensorImages):
            return self.split.images[i], int(self.split.labels[i])
        return self.split[i]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self._load(index)
        if self.transform is None:
            return image, label
        if seed is None:
            return self.transform(image), label
        with seeded_default_generator(seed):
            return self.transform(image), label


@contextmanager
def seeded_default_generator(seed: int) -> Iterator[None]:
    """torch's default CPU generator seeded from the 64-bit `seed` (all of it: seed32) inside the block, its
    state restored after. torchvision's transforms draw from it; seeding it directly costs ~5 us
    (torch.manual_seed would also visit every accelerator: ~300 us an image)."""
    generator = torch.default_generator
    state = generator.get_state()
    try:
        generator.manual_seed(seed32(seed))
        yield
    finally:
        generator.set_state(state)


def clean_errors(batches: Iterable) -> Iterator:
    """Re-raise a LongtailError from a DataLoader worker (which arrives wrapped with the worker's
    traceback in its message) as the one-line message the dataset wrote: what follows the traceback's
    final 'module.ExceptionName: '. LongtailError has already folded that traceback onto one line."""
    try:
        yield from batches
    except LongtailError as exc:
        text = str(exc)
        marker = f"{type(exc).__name__}: "
        if "Original Traceback" not in text or marker not in text:
            raise
        raise type(exc)(text.rsplit(marker, 1)[1]) from None


class LoaderPipeline:
    """Batches for one epoch at a time. The sampler fixes the order from (seed, epoch) and, with
    SeededSampler keys, each image's augmentation from (seed, epoch, position); so the DataLoader (and
    its workers) can persist across epochs and a resumed run still sees exactly the same batches."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: Sampler,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
    ):
        self.dataset, self.sampler, self.drop_last = dataset, sampler, drop_last
        self.batch_size, self.seed = batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch = 0
        self._loader: Optional[DataLoader] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Workers persist only when every image carries its own seed; otherwise the augmentation drawn
        # in a worker depends on the worker's seed, so a new DataLoader seeded from (seed, epoch) is built.
        seeded = isinstance(self.sampler, SeededSampler)
        if self._loader is None or not seeded:
            self._loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                drop_last=self.drop_last,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=seeded and self.num_workers > 0,
                # a private generator, so creating iterators never draws from torch's global one
                generator=epoch_generator(self.seed, self.epoch, stream=1),
            )
        return clean_errors(self._loader)


def eval_batches(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> Iterator:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
    return clean_errors(loader)
