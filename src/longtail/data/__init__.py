"""Datasets: one table from config name to loader, and the long-tailed split of docs/datasets.md."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from ..config import Config
from ..errors import LongtailError
from ..input_spec import BackboneInput, InputSpec, Overrides, build_input_spec
from .base import DataBundle, RawDataset, TensorImages
from .cifar import CIFAR, load_cifar
from .cifar_tfrecord import build_tfrecord
from .fmnist import CLASS_NAMES as FMNIST_CLASS_NAMES, load_fmnist
from .folder import build_folder
from .image_list import build_image_lists
from .splits import holdout_split, long_tailed_counts, long_tailed_split

# In-memory datasets: name -> function(root, download) returning the balanced source.
IN_MEMORY: dict[str, Callable[[Optional[str], bool], RawDataset]] = {
    "fmnist_lt": load_fmnist,
    "cifar10_lt": lambda root, download: load_cifar("cifar10", root, download),
    "cifar100_lt": lambda root, download: load_cifar("cifar100", root, download),
}
# What `longtail inspect` needs of them without reading any file: (classes, standard n_max, training and
# test images per class of the official balanced sets, class names or None)
IN_MEMORY_SHAPES: dict[str, tuple[int, int, int, int, Optional[list[str]]]] = {
    "fmnist_lt": (10, 5000, 6000, 1000, FMNIST_CLASS_NAMES),
    "cifar10_lt": (10, CIFAR["cifar10"]["n_max"], 5000, 1000, CIFAR["cifar10"]["class_names"]),
    "cifar100_lt": (100, CIFAR["cifar100"]["n_max"], 500, 100, None),
}

# Datasets read from image files the user has: name -> bundle builder.
IMAGE_LISTS: dict[str, Callable[[Config, str], DataBundle]] = {
    "imagenet_lt": build_image_lists,  # ImageNet-LT lists of Liu et al. 2019 (1000 classes)
    "places_lt": build_image_lists,  # Places-LT lists of Liu et al. 2019 (365 classes)
    "inat2018": build_image_lists,  # iNaturalist 2018 JSON annotations (8142 classes)
    "folder": build_folder,  # your own images: a class-folder tree or path,label CSVs (data/folder.py)
    # google-research's released CIFAR-LT TFRecord files (EXP-100, drawn once by Menon et al.): cifar_tfrecord.py
    "cifar10_lt_tfrecord": build_tfrecord,
    "cifar100_lt_tfrecord": build_tfrecord,
}


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


def build_data(cfg: Config, backbone: Optional[BackboneInput] = None, spec: Optional[InputSpec] = None) -> DataBundle:
    """The configured dataset with its input spec: `spec` when given (a saved run's), else built once
    (input_spec.build_input_spec) from the dataset's statistics, `backbone` (the pretrained backbone's input,
    models.backbone_preprocessing, which the caller above both packages passes: run.load_data) and the data.* keys
    (data.mean, data.std, data.image_size, data.crop_pct)."""
    name = cfg.dataset.name
    if name in IN_MEMORY:
        bundle = make_long_tailed(IN_MEMORY[name](cfg.dataset.root, cfg.dataset.download), cfg, name)
    elif name in IMAGE_LISTS:
        bundle = IMAGE_LISTS[name](cfg, name)
    else:
        raise LongtailError(f"unknown dataset '{name}'; choose one of {', '.join(sorted([*IN_MEMORY, *IMAGE_LISTS]))}")
    if spec is not None:
        return dataclasses.replace(bundle, input=spec)
    d = cfg.data
    built = build_input_spec(bundle.dataset_input(), backbone, Overrides(d.image_size, d.mean, d.std, d.crop_pct, cfg.model.name))
    return dataclasses.replace(bundle, input=built.spec, notes=[*bundle.notes, *built.notes])


__all__ = [
    "DataBundle", "RawDataset", "TensorImages", "IN_MEMORY", "IN_MEMORY_SHAPES", "IMAGE_LISTS", "build_data", "make_long_tailed",
    "long_tailed_counts", "long_tailed_split", "holdout_split",
]
