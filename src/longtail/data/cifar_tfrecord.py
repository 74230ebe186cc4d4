"""google-research's long-tailed CIFAR files (`logit_adjustment/`, Menon et al., ICLR 2021), as released.

The authors drew the long-tailed training sets once, with the EXP-100 profile, and published them as
TFRecord files (format: tfrecord.py): CIFAR-10-LT 12,406 training images, CIFAR-100-LT 10,847, and the
official 10,000-image test sets. Each record is a tf.train.Example with

    image/encoded      bytes_list, one value: the raw 32 x 32 x 3 uint8 pixels, row-major HWC (3,072 bytes)
    image/class/label  int64_list, one value: the class index

The files are the split: `dataset.imbalance_factor`, `profile`, `seed` and `n_max` do not apply, and the
class counts (hence the prior pi of logit adjustment, the released `{dataset}_base_probs.txt`) are
counted from the training file's labels. `dataset.root` is the folder holding the files; missing ones are
fetched from the release's URLs when `dataset.download` allows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import Config
from ..errors import LongtailError, one_line
from .base import DataBundle, TensorImages
from .cifar import CIFAR
from .splits import holdout_split
from .tfrecord import feature, read_examples

URL = "https://storage.googleapis.com/gresearch/logit_adjustment/"
SIDE, CHANNELS = 32, 3

# dataset name -> the release's files and what they hold
TFRECORDS = {
    "cifar10_lt_tfrecord": dict(train="cifar10-lt_train.tfrecord", test="cifar10_test.tfrecord", cifar="cifar10"),
    "cifar100_lt_tfrecord": dict(train="cifar100-lt_train.tfrecord", test="cifar100_test.tfrecord", cifar="cifar100"),
}


def default_root() -> Path:
    return Path.home() / ".cache" / "longtail" / "logit_adjustment"


def fetch(url: str, target: Path) -> None:
    """Download `url` to `target` through a temporary file in the same folder (no partial file is left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def read_split(path: Path, num_classes: int) -> TensorImages:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one release file."""
    images, labels = [], []
    for record, example in read_examples(path):
        pixels = feature(path, record, example, "image/encoded", "bytes_list")
        label = feature(path, record, example, "image/class/label", "int64_list")
        if len(pixels) != SIDE * SIDE * CHANNELS:
            raise LongtailError(f"'{path}' record {record}: image/encoded holds {len(pixels)} bytes, expected {SIDE * SIDE * CHANNELS} (raw 32x32x3 uint8)")
        if not 0 <= label < num_classes:
            raise LongtailError(f"'{path}' record {record}: label {label} lies outside 0..{num_classes - 1}")
        images.append(np.frombuffer(pixels, dtype=np.uint8))
        labels.append(label)
    if not labels:
        raise LongtailError(f"'{path}' holds no records; fetch the file again")
    hwc = np.stack(images).reshape(-1, SIDE, SIDE, CHANNELS)
    return TensorImages(torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))), torch.tensor(labels, dtype=torch.int64))


def locate(name: str, root: Optional[str], download: bool) -> tuple[Path, Path]:
    """The training and test files of dataset `name`, fetched first when missing and allowed."""
    spec = TFRECORDS[name]
    folder = Path(root) if root else default_root()
    paths = (folder / spec["train"], folder / spec["test"])
    for path in paths:
        if path.is_file() or not download:
            continue
        try:
            fetch(URL + path.name, path)
        except OSError as exc:
            raise LongtailError(f"'{path}' is missing and fetching {URL + path.name} failed ({one_line(exc)}); "
                                f"download it by hand into '{folder}' (dataset.root)") from None
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise LongtailError(f"'{folder}' lacks {', '.join(missing)}; set dataset.root to the folder holding the release's files "
                            f"({URL}<name>) or allow dataset.download")
    return paths


def build_tfrecord(cfg: Config, name: str) -> DataBundle:
    """The release's split as a DataBundle; validation: none, or dataset.val_source=test_holdout
    (dataset.val_per_class test images per class); the training file has no unused images."""
    spec = CIFAR[TFRECORDS[name]["cifar"]]
    train_path, test_path = locate(name, cfg.dataset.root, cfg.dataset.download)
    train = read_split(train_path, spec["num_classes"])
    test, val = read_split(test_path, spec["num_classes"]), None
    d = cfg.dataset
    if d.val_source == "train_unused" and d.val_per_class:
        raise LongtailError(f"dataset '{name}' is the released long-tailed file, with no unused training images; "
                            "set dataset.val_source=none or test_holdout")
    if d.val_source == "test_holdout" and d.val_per_class:
        rest, held = holdout_split(test.labels.numpy(), d.val_per_class, d.seed)
        test, val = test.subset(rest), test.subset(held)
    counts = torch.bincount(train.labels, minlength=spec["num_classes"]).tolist()
    return DataBundle(
        name=name, train=train, val=val, test=test, class_counts=counts, num_classes=spec["num_classes"],
        in_channels=CHANNELS, mean=spec["mean"], std=spec["std"], class_names=spec["class_names"],
    )
