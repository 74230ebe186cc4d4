"""The `device` pipeline for in-memory datasets: the uint8 training images live as one tensor on the
training device, batches are gathered by index, augmented as whole batches and normalised in the same step.

Same batches as the loader pipeline (data/loader.py):
- the order is the same EpochSampler's global order, this process taking positions rank::world_size, cut into
  batches of the same size, the last one short (or dropped, with drop_last);
- the augmentation has the same operations and distributions (batch_augment.py); its random parameters come
  from a CPU generator seeded by (seed, epoch) alone, one row per position of the global order, so a resumed
  run, a run on another device, with another number of processes or another chunk size all see the same
  augmentation;
- with augmentation off, the tensors are bit-identical to the loader's (both normalise with input_spec.normalize).

Images are augmented a chunk at a time (a whole number of batches), which spreads the fixed cost of the
grouped AutoAugment calls (about 40 torchvision calls per chunk) over several steps: 8 batches of 128 on the
CPU, a large part of the epoch on CUDA, where each call costs kernel launches.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from ..input_spec import InputSpec, normalize
from .base import TensorImages
from .batch_augment import BatchAugment, Draws
from .batch_autoaugment import to_device
from .samplers import EpochSampler, epoch_generator

AUGMENT_STREAM = 3  # epoch_generator streams: 0 sampler order, 1 loader workers, 2 engine, 3 this pipeline
CHUNK_IMAGES = {"cpu": 1024, "cuda": 16384}  # default chunk per device type, rounded down to whole batches


@contextmanager
def host_ops_on_one_thread(device: torch.device) -> Iterator[None]:
    """On a CPU, run the pipeline's many small tensor ops on one intra-op thread: spreading each over the
    OpenMP team costs more than it saves, and on a loaded machine every op then waits for a descheduled
    thread (measured on the shared 2-core machine: 7 ms per batch of 128 on one thread, 110-320 ms on two).
    The model keeps every thread; the setting is restored before each batch is handed out."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DevicePipeline:
    """TrainBatches (see pipeline.py) over an in-memory split held on `device`, normalised by `spec` (the images
    are used at their own size: spec.size)."""

    def __init__(
        self,
        split: TensorImages,
        sampler: EpochSampler,
        batch_size: int,
        seed: int,
        device: torch.device,
        spec: InputSpec,
        augment: BatchAugment,
        chunk_images: Optional[int] = None,
        drop_last: bool = False,
    ):
        if len(sampler.labels) != len(split):
            raise ValueError(f"the sampler covers {len(sampler.labels)} images but the split has {len(split)}")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.device, self.augment, self.drop_last = device, augment, drop_last
        self.mean, self.std = spec.stats(device)
        if chunk_images is None:
            chunk_images = CHUNK_IMAGES.get(device.type, CHUNK_IMAGES["cpu"])
        self.chunk = batch_size * max(1, chunk_images // batch_size)
        self.epoch = 0

    @property
    def chunk_batches(self) -> int:
        return self.chunk // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)

    def draws(self) -> tuple[torch.Tensor, Draws]:
        """This process's share of the epoch: (positions into the split, augmentation parameters), on the CPU."""
        order = self.sampler.global_order()  # padded to a multiple of world_size by repeating its start
        n = len(self.sampler.labels)
        draws = self.augment.draw(n, epoch_generator(self.seed, self.epoch, stream=AUGMENT_STREAM))
        # the padded positions repeat the first ones, augmentation included, so every unpadded position is
        # augmented the same whatever the number of processes
        positions = torch.arange(self.sampler.rank, len(order), self.sampler.world_size)
        return order[positions], draws[positions % n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with host_ops_on_one_thread(self.device):
            order, draws = self.draws()
            if self.drop_last:  # the same images the loader pipeline's DataLoader(drop_last=True) keeps
                order, draws = order[: len(self) * self.batch_size], draws[: len(self) * self.batch_size]
            order, draws = to_device(order.contiguous(), self.device), draws.to(self.device)
        for start in range(0, len(order), self.chunk):
            with host_ops_on_one_thread(self.device):
                index = order[start : start + self.chunk]
                x = self.augment.apply(self.images[index], draws[start : start + self.chunk])
                y = self.labels[index]
            for b in range(0, len(index), self.batch_size):
                with host_ops_on_one_thread(self.device):
                    batch = normalize(x[b : b + self.batch_size], self.mean, self.std), y[b : b + self.batch_size]
                yield batch
