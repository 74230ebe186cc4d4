"""From a DataBundle to batches: the training pipeline a config selects and the evaluation batches."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Protocol

import torch
from torchvision.transforms import v2

from ..config import LOADER_ONLY, Config
from ..distributed import Runtime
from ..errors import LongtailError
from ..input_spec import normalize
from .base import DataBundle, TensorImages
from .batch_augment import BatchAugment
from .device import DevicePipeline
from .image_batches import CropAugment, CroppedImages, ImageListPipeline
from .loader import LoaderPipeline, TransformedImages, eval_batches as loader_eval_batches
from .samplers import EpochSampler, SeededSampler
from .transforms import photometric_steps, train_transform


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


def device_unsupported(cfg: Config) -> list[str]:
    """Augmentation keys the device pipeline does not implement (they need data.pipeline=loader) that are on; each
    declares loader_only in config.py."""
    return [key for key in LOADER_ONLY if getattr(cfg.data, key.split(".")[1])]


def choose_pipeline(bundle: DataBundle, cfg: Config) -> str:
    """`auto`: the device pipeline for in-memory datasets (fmnist_lt, cifar10_lt, cifar100_lt), unless the
    config asks for augmentation only the loader has; the loader for image-list datasets."""
    name = cfg.data.pipeline
    if name == "auto":
        return "device" if bundle.in_memory and bundle.train_resize() is None and not device_unsupported(cfg) else "loader"
    if name == "device" and bundle.in_memory and bundle.train_resize() is not None:
        raise LongtailError(f"data.pipeline=device does not resize images to {cfg.model.name}'s {bundle.train_resize()} px; "
                            "use data.pipeline=loader or auto")
    if name == "device" and not bundle.in_memory:
        raise LongtailError(
            f"data.pipeline=device needs an in-memory dataset (fmnist_lt, cifar10_lt, cifar100_lt); "
            f"'{bundle.name}' is read from image files: use data.pipeline=loader or auto"
        )
    if name == "device" and device_unsupported(cfg):
        raise LongtailError(
            f"data.pipeline=device does not implement {', '.join(device_unsupported(cfg))}; "
            "use data.pipeline=loader or turn them off"
        )
    return name


def cropped_train_images(bundle: DataBundle, cfg: Config) -> CroppedImages:
    """An image-list training split as the workers produce it: the colour jitter goes to the device,
    unless augmentation that has to follow it (autoaugment, randaugment, ...) runs in the workers."""
    steps = photometric_steps(cfg.data, bundle.spec.size, v2.AutoAugmentPolicy.IMAGENET)
    in_workers = any(not isinstance(step, v2.ColorJitter) for step in steps)
    augment = CropAugment(crop=cfg.data.crop, flip=cfg.data.flip, jitter=0.0 if in_workers else cfg.data.color_jitter)
    return CroppedImages(bundle.train, bundle.spec, augment, v2.Compose(steps) if in_workers else None)


def train_batches(bundle: DataBundle, cfg: Config, runtime: Runtime) -> TrainBatches:
    """This process's batches. With world_size processes each takes every world_size-th image of the
    epoch's global order, so global batch k (B images) is split into equal per-process batches of
    B / world_size; images are augmented from a per-image seed, independent of the process count."""
    sampler = EpochSampler(
        _labels(bundle.train), seed=cfg.seed, class_balanced=cfg.data.sampler == "class_balanced",
        rank=runtime.rank, world_size=runtime.world_size,
    )
    batch_size = per_process_batch(cfg, runtime)
    if cfg.data.drop_last and len(sampler) < batch_size:
        raise LongtailError(f"data.drop_last drops every batch: this process has {len(sampler)} training images, fewer than "
                            f"its batch of {batch_size}; lower train.batch_size or set data.drop_last=false")
    if choose_pipeline(bundle, cfg) == "device":
        height, width = bundle.train.images.shape[-2:]
        augment = BatchAugment(int(height), int(width), crop=cfg.data.crop, flip=cfg.data.flip,
                               autoaugment=cfg.data.autoaugment, cutout=cfg.data.cutout)
        return DevicePipeline(bundle.train, sampler, batch_size, cfg.seed, runtime.device, bundle.spec, augment,
                              drop_last=cfg.data.drop_last)
    if not bundle.in_memory:
        return ImageListPipeline(cropped_train_images(bundle, cfg), SeededSampler(sampler), batch_size, cfg.seed,
                                 runtime.device, bundle.spec, cfg.data.num_workers, drop_last=cfg.data.drop_last)
    return LoaderPipeline(
        TransformedImages(bundle.train, train_transform(cfg.data, bundle.spec, bundle.native_size)),
        SeededSampler(sampler), batch_size, seed=cfg.seed,
        num_workers=cfg.data.num_workers, pin_memory=runtime.device.type == "cuda", drop_last=cfg.data.drop_last,
    )


def eval_splits_on_device(bundle: DataBundle, device: torch.device) -> DataBundle:
    """On CUDA, copy the in-memory validation and test splits to the device once, so each evaluation
    reads them there instead of copying every batch from the host."""
    if not bundle.in_memory or device.type != "cuda":
        return bundle

    def move(split: Optional[TensorImages]) -> Optional[TensorImages]:
        return None if split is None else TensorImages(split.images.to(device), split.labels.to(device))

    return dataclasses.replace(bundle, val=move(bundle.val), test=move(bundle.test))


def eval_batches(split, bundle: DataBundle, cfg: Config, runtime: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's shard (every world_size-th image, from image `rank`) of a split, normalised, on the
    device. `engine.predict` relies on this striding to put the gathered rows back in split order."""
    if len(split) < runtime.world_size:
        raise LongtailError(f"an evaluation split has {len(split)} images, fewer than the {runtime.world_size} processes; use fewer processes")
    shard = range(runtime.rank, len(split), runtime.world_size)
    spec = bundle.spec
    mean, std = spec.stats(runtime.device)
    if not bundle.in_memory:  # centre crops decoded in the workers, uint8 to the device, normalised there
        subset = torch.utils.data.Subset(CroppedImages(split, spec), list(shard))
        for x, y, _ in loader_eval_batches(subset, cfg.eval.batch_size, cfg.data.num_workers, runtime.device.type == "cuda"):
            yield normalize(x.to(runtime.device, non_blocking=True), mean, std), y.to(runtime.device, non_blocking=True)
        return
    # every world_size-th image as strided views: no index tensors, no host copies when the split is on the device
    images, labels = split.images[runtime.rank :: runtime.world_size], split.labels[runtime.rank :: runtime.world_size]
    for start in range(0, len(labels), cfg.eval.batch_size):
        x = images[start : start + cfg.eval.batch_size].to(runtime.device, non_blocking=True)
        y = labels[start : start + cfg.eval.batch_size].to(runtime.device, non_blocking=True)
        # the spec's resize and centre crop on uint8, as deployment.Preprocessing does (nothing at the native size)
        yield normalize(spec.resize_for_eval(x), mean, std), y
