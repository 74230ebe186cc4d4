"""Datasets: each a record registered under its config name (`register_dataset`), and the long-tailed split of
docs/datasets.md."""

from __future__ import annotations

import dataclasses
from typing import Optional

from .. import catalog
from ..catalog import register_dataset
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


def build_data(cfg: Config, backbone: Optional[BackboneInput] = None, spec: Optional[InputSpec] = None) -> DataBundle:
    """The configured dataset with its input spec: `spec` when given (a saved run's), else built once
    (input_spec.build_input_spec) from the dataset's statistics, `backbone` (the pretrained backbone's input,
    models.backbone_preprocessing, which the caller above both packages passes: run.load_data) and the data.* keys
    (data.mean, data.std, data.image_size, data.crop_pct)."""
    name = cfg.dataset.name
    record = dataset_record(name)
    if record.facts.get("in_memory"):
        bundle = make_long_tailed(record.obj(cfg.dataset.root, cfg.dataset.download), cfg, name)
    else:
        bundle = record.obj(cfg, name)
    if spec is not None:
        return dataclasses.replace(bundle, input=spec)
    d = cfg.data
    built = build_input_spec(bundle.dataset_input(), backbone, Overrides(d.image_size, d.mean, d.std, d.crop_pct, cfg.model.name))
    return dataclasses.replace(bundle, input=built.spec, notes=[*bundle.notes, *built.notes])


__all__ = [
    "DataBundle", "RawDataset", "TensorImages", "dataset_record", "build_data", "make_long_tailed",
    "long_tailed_counts", "long_tailed_split", "holdout_split",
]
