"""Datasets: each a record registered under its config name (`register_dataset`), and the long-tailed split of
docs/datasets.md."""

from __future__ import annotations

import dataclasses

from .. import catalog
from ..catalog import register_dataset
from ..config import Config
from ..errors import LongtailError
from ..models import backbone_preprocessing
from .base import DataBundle, RawDataset, TensorImages
from .cifar import CIFAR, load_cifar
from .cifar_tfrecord import build_tfrecord
from .fmnist import CLASS_NAMES as FMNIST_CLASS_NAMES, load_fmnist
from .folder import build_folder
from .image_list import build_image_lists
from .splits import holdout_split, long_tailed_counts, long_tailed_split

# Each dataset is one record, its catalog entry (longtail/catalog.py): the builder registered here, and its facts
#   in_memory    True: the builder is (root, download) -> RawDataset, a balanced source that make_long_tailed
#                subsamples; False: the builder is (cfg, name) -> DataBundle, splits read from files
#   channels     image channels; native_size: the side of its images (None: image files, resized to data.image_size)
#   given_split  the training split is given (its imbalance comes from its counts, not dataset.imbalance_factor)
#   class_names  where the class names come from; protocol: (classes, n_max, training and test images per class of
#                the official balanced sets), what `longtail inspect` counts without reading a file
_CIFAR10, _CIFAR100 = CIFAR["cifar10"], CIFAR["cifar100"]
register_dataset("fmnist_lt", class_names=FMNIST_CLASS_NAMES, protocol=(10, 5000, 6000, 1000))(load_fmnist)
register_dataset("cifar10_lt", class_names=_CIFAR10["class_names"], protocol=(10, _CIFAR10["n_max"], 5000, 1000))(
    lambda root, download: load_cifar("cifar10", root, download))
register_dataset("cifar100_lt", class_names=None, protocol=(100, _CIFAR100["n_max"], 500, 100))(
    lambda root, download: load_cifar("cifar100", root, download))
# ImageNet-LT / Places-LT lists of Liu et al. 2019 (1000 / 365 classes), iNaturalist 2018 JSON annotations (8142)
for _name in ("imagenet_lt", "places_lt", "inat2018"):
    register_dataset(_name, class_names="dataset.class_names, or iNat's JSON categories")(build_image_lists)
# your own images: a class-folder tree or path,label CSVs (data/folder.py)
register_dataset("folder", class_names="the folder names, or the CSV's labels")(build_folder)
# google-research's released CIFAR-LT TFRecord files (EXP-100, drawn once by Menon et al.): cifar_tfrecord.py
for _name in ("cifar10_lt_tfrecord", "cifar100_lt_tfrecord"):
    register_dataset(_name, class_names="CIFAR's")(build_tfrecord)


def dataset_record(name: str) -> catalog.Entry:
    """The record of dataset `name` with its builder (one line with a did-you-mean when unknown)."""
    return catalog.get("dataset", name)


def make_long_tailed(raw: RawDataset, cfg: Config, name: str) -> DataBundle:
    """Subsample the balanced training set to the configured profile and carve the validation split."""
    d = cfg.dataset
    n_max = d.n_max if d.n_max is not None else raw.n_max
    counts = long_tailed_counts(n_max, raw.num_classes, d.imbalance_factor, d.profile)
    from_unused = d.val_per_class if d.val_source == "train_unused" else 0
    train_idx, val_idx = long_tailed_split(raw.train.labels.numpy(), counts, d.seed, from_unused)
    test, val = raw.test, None
    if d.val_source == "train_unused" and d.val_per_class:
        val = raw.train.subset(val_idx)
    elif d.val_source == "test_holdout" and d.val_per_class:
        rest, held = holdout_split(raw.test.labels.numpy(), d.val_per_class, d.seed)
        test, val = raw.test.subset(rest), raw.test.subset(held)
    return DataBundle(
        name=name, train=raw.train.subset(train_idx), val=val, test=test, class_counts=counts,
        num_classes=raw.num_classes, in_channels=int(raw.train.images.shape[1]), mean=raw.mean, std=raw.std,
        class_names=raw.class_names,
    )


def build_data(cfg: Config) -> DataBundle:
    """The configured dataset; `data.mean` / `data.std`, when set, replace the dataset's own statistics."""
    name = cfg.dataset.name
    record = dataset_record(name)
    if record.facts.get("in_memory"):
        bundle = make_long_tailed(record.obj(cfg.dataset.root, cfg.dataset.download), cfg, name)
    else:
        bundle = record.obj(cfg, name)
    # a pretrained backbone's statistics first; explicit data.mean / data.std override them
    return with_normalization(with_backbone_preprocessing(bundle, cfg), cfg)


def with_normalization(bundle: DataBundle, cfg: Config) -> DataBundle:
    """Images become (x / 255 - mean) / std per channel; data.mean / data.std (0..1 scale) override the
    dataset's values, e.g. mean 0.5 and std 1 give google-research's x / 255 - 0.5."""
    stats = {"mean": cfg.data.mean, "std": cfg.data.std}
    for key, values in stats.items():
        if values is not None and len(values) != bundle.in_channels:
            raise LongtailError(f"config key 'data.{key}' has {len(values)} values but '{bundle.name}' images have "
                                f"{bundle.in_channels} channels; give one value per channel")
    if cfg.data.mean is None and cfg.data.std is None:
        return bundle
    return dataclasses.replace(
        bundle, mean=tuple(cfg.data.mean) if cfg.data.mean is not None else bundle.mean,
        std=tuple(cfg.data.std) if cfg.data.std is not None else bundle.std,
    )


def with_backbone_preprocessing(bundle: DataBundle, cfg: Config) -> DataBundle:
    """A pretrained timm/ or clip/ backbone's mean/std (when its channels match the images') and resizing
    interpolation replace the dataset's, so training, evaluation, predict and export feed it what it was
    pretrained on (models.backbone_preprocessing). Image files are resized to data.image_size; a note says
    when that differs from the backbone's own size. In-memory images (28 or 32 px) are resized to the backbone's
    size, as LIFT feeds CIFAR to CLIP at 224 px (after the pad-crop and flip; the loader pipeline)."""
    pre = backbone_preprocessing(cfg.model)
    if pre is None:
        return bundle
    notes, size, resize = list(bundle.notes), pre["image_size"], None
    if not bundle.in_memory and size is not None and size != cfg.data.image_size:
        notes.append(f"{cfg.model.name} was pretrained at {size} px; this run resizes to data.image_size={cfg.data.image_size}")
    if bundle.in_memory and size is not None and size != int(bundle.train.images.shape[-1]):
        resize = size
        notes.append(f"images are resized from {int(bundle.train.images.shape[-1])} to {size} px, {cfg.model.name}'s input size")
    same_channels = len(pre["mean"]) == bundle.in_channels
    return dataclasses.replace(bundle, mean=tuple(pre["mean"]) if same_channels else bundle.mean,
                               std=tuple(pre["std"]) if same_channels else bundle.std,
                               interpolation=pre["interpolation"], resize=resize, notes=notes)


__all__ = [
    "DataBundle", "RawDataset", "TensorImages", "dataset_record", "build_data", "make_long_tailed",
    "long_tailed_counts", "long_tailed_split", "holdout_split",
]
