"""Tiny generated datasets in the official on-disk formats, for end-to-end tests without downloads.

Images are noise around a class-dependent brightness, so a model can learn a little in one epoch.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(labels: np.ndarray, shape: tuple[int, ...], num_classes: int, rng: np.random.Generator) -> np.ndarray:
    level = (labels.astype(np.float64) + 0.5) / num_classes * 200 + 25
    noise = rng.normal(0, 30, size=(len(labels), *shape))
    return np.clip(level.reshape(-1, *([1] * len(shape))) + noise, 0, 255).astype(np.uint8)


def _labels(per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_fmnist(root: Path, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> Path:
    """Fashion-MNIST's four IDX .gz files (10 classes, 28x28) in `root`; returns `root`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = _labels(per_class, 10, rng)
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", _images(labels, (28, 28), 10, rng))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def write_fake_cifar(root: Path, variant: str, train_per_class: int = 25, test_per_class: int = 5, seed: int = 0) -> Path:
    """The python-pickle CIFAR-10 (5 data batches + test_batch) or CIFAR-100 (train + test) files under
    `root`/cifar-10-batches-py or `root`/cifar-100-python; returns `root` (the dataset.root to use)."""
    rng = np.random.default_rng(seed)
    cifar10 = variant == "cifar10"
    classes, label_key = (10, b"labels") if cifar10 else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray) -> dict:
        data = _images(labels, (3, 32, 32), classes, rng).reshape(len(labels), 3072)
        return {b"data": data, label_key: labels.tolist()}

    train = _labels(train_per_class, classes, rng)
    test = _labels(test_per_class, classes, rng)
    names = [f"data_batch_{i}" for i in range(1, 6)] if cifar10 else ["train"]
    for name, part in zip(names, np.array_split(train, len(names))):
        (folder / name).write_bytes(pickle.dumps(batch(part), protocol=4))
    (folder / ("test_batch" if cifar10 else "test")).write_bytes(pickle.dumps(batch(test), protocol=4))
    return root
