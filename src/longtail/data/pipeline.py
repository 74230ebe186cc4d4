"""From a DataBundle to batches: the training pipeline a config selects and the evaluation batches."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

from ..config import Config
from ..distributed import Runtime
from ..errors import LongtailError
from .base import DataBundle, TensorImages
from .loader import LoaderPipeline, TransformedImages, eval_batches as loader_eval_batches
from .samplers import EpochSampler, SeededSampler
from .transforms import image_eval_transform, image_train_transform, train_transform


class TrainBatches(Protocol):
    """What the engine iterates: normalised (images, labels) batches for one epoch at a time."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def per_process_batch(cfg: Config, runtime: Runtime) -> int:
    if cfg.train.batch_size % runtime.world_size:
        raise LongtailError(
            f"train.batch_size {cfg.train.batch_size} is the global batch and must divide evenly over "
            f"{runtime.world_size} processes"
        )
    return cfg.train.batch_size // runtime.world_size


def _labels(split) -> torch.Tensor:
    return split.labels if isinstance(split, TensorImages) else torch.as_tensor(split.targets)


def _train_dataset(bundle: DataBundle, cfg: Config) -> TransformedImages:
    if bundle.in_memory:
        size = int(bundle.train.images.shape[-1])
        return TransformedImages(bundle.train, train_transform(cfg.data, size, bundle.mean, bundle.std))
    return TransformedImages(bundle.train, image_train_transform(cfg.data, bundle.mean, bundle.std))


def train_batches(bundle: DataBundle, cfg: Config, runtime: Runtime) -> TrainBatches:
    """This process's batches. With world_size processes each takes every world_size-th image of the
    epoch's global order, so global batch k (B images) is split into equal per-process batches of
    B / world_size; images are augmented from a per-image seed, independent of the process count."""
    sampler = EpochSampler(
        _labels(bundle.train), seed=cfg.seed, class_balanced=cfg.data.sampler == "class_balanced",
        rank=runtime.rank, world_size=runtime.world_size,
    )
    return LoaderPipeline(
        _train_dataset(bundle, cfg), SeededSampler(sampler), per_process_batch(cfg, runtime), seed=cfg.seed,
        num_workers=cfg.data.num_workers, pin_memory=runtime.device.type == "cuda",
    )


def eval_batches(split, bundle: DataBundle, cfg: Config, runtime: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's shard (every world_size-th image, from image `rank`) of a split, normalised, on the
    device. `engine.predict` relies on this striding to put the gathered rows back in split order."""
    if len(split) < runtime.world_size:
        raise LongtailError(f"an evaluation split has {len(split)} images, fewer than the {runtime.world_size} processes; use fewer processes")
    shard = range(runtime.rank, len(split), runtime.world_size)
    if not bundle.in_memory:
        images = TransformedImages(split, image_eval_transform(cfg.data.image_size, bundle.mean, bundle.std))
        subset = torch.utils.data.Subset(images, list(shard))
        for x, y in loader_eval_batches(subset, cfg.eval.batch_size, cfg.data.num_workers, runtime.device.type == "cuda"):
            yield x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        return
    index = torch.arange(runtime.rank, len(split), runtime.world_size)
    mean = torch.tensor(bundle.mean, device=runtime.device).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, device=runtime.device).view(1, -1, 1, 1)
    for start in range(0, len(index), cfg.eval.batch_size):
        rows = index[start : start + cfg.eval.batch_size]
        x = split.images[rows].to(runtime.device, non_blocking=True).float().div_(255)
        yield (x - mean) / std, split.labels[rows].to(runtime.device, non_blocking=True)
