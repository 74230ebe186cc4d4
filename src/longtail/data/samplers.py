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
        self.total = -(-len(self.labels) // world_size) * world_size  # padded to a multiple of world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        n = len(self.labels)
        g = epoch_generator(self.seed, self.epoch)
        if self.class_balanced:
            classes = torch.unique(self.labels)
            members = [torch.nonzero(self.labels == c).flatten() for c in classes]
            picks = torch.randint(len(classes), (n,), generator=g)
            order = torch.empty(n, dtype=torch.long)
            for k, idx in enumerate(members):
                where = picks == k
                order[where] = idx[torch.randint(len(idx), (int(where.sum()),), generator=g)]
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
