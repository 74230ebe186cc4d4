"""Epoch-seeded samplers: the order of epoch e depends only on (seed, e), so a resumed run
draws the same batches, and every process of a distributed run agrees on it."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffled (or class-balanced) indices for one epoch, split across `world_size` processes.

    class_balanced: pick a class uniformly, then an image of it uniformly, len(labels) times
    (class-aware sampling as used by the decoupled large-scale recipes).
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        seed: int,
        shuffle: bool = True,
        class_balanced: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.seed, self.shuffle, self.class_balanced = seed, shuffle, class_balanced
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # Padded to a multiple of world_size (the first images repeat), so every process takes the same
        # number of steps; with len(labels) divisible by world_size nothing repeats.
        self.total = -(-len(self.labels) // world_size) * world_size
        # class-balanced draws: the images sorted by class, and where each class starts in that order
        self._by_class = torch.argsort(self.labels, stable=True)
        _, self._class_sizes = torch.unique(self.labels, sorted=True, return_counts=True)
        self._class_starts = torch.cumsum(self._class_sizes, 0) - self._class_sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        n = len(self.labels)
        g = epoch_generator(self.seed, self.epoch)
        if self.class_balanced:
            # vectorised (iNat has 8142 classes): a class per draw, then a uniform member of it
            picks = torch.randint(len(self._class_sizes), (n,), generator=g)
            sizes = self._class_sizes[picks]
            offsets = (torch.rand(n, generator=g, dtype=torch.float64) * sizes).long().clamp_(max=sizes - 1)
            order = self._by_class[self._class_starts[picks] + offsets]
        elif self.shuffle:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.total > n:
            order = torch.cat([order, order[: self.total - n]])
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.world_size


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the image at `position` of epoch `epoch`'s global order (distinct for every
    position below 2**32 and every (seed, epoch))."""
    return ((seed * 1_000_003 + epoch) * 4_294_967_296 + position) % 2**63


def seed32(key: int) -> int:
    """A 32-bit seed that depends on every bit of a 64-bit `key` (the splitmix64 finaliser's high half).
    torch's CPU generator keeps only the low 32 bits of a seed: given sample_seed directly, it would see
    the position alone, the same augmentation at that position in every epoch and for every run seed."""
    z = key % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 32


class SeededSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """An EpochSampler's indices as (index, augmentation seed) keys. The seed depends on (seed, epoch,
    position in the global order) only, so an image's augmentation is the same whatever the number of
    processes, DataLoader workers, or whether the workers persist across epochs (see TransformedImages)."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        order = s.global_order().tolist()
        for position in range(s.rank, s.total, s.world_size):
            yield order[position], sample_seed(s.seed, s.epoch, position)

    def __len__(self) -> int:
        return len(self.sampler)
