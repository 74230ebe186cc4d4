"""Fashion-MNIST from its IDX .gz files: `dataset.root`, then Debian's dataset-fashion-mnist, then a download."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import LongtailError
from .base import RawDataset, TensorImages

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "longtail"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MEAN, STD = (0.2860,), (0.3530,)
# the label names of Zalando's Fashion-MNIST release, in label order
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_at_most(f, limit: int, chunk: int = 1 << 24) -> bytes:
    """Up to `limit` bytes, in chunks: a header claiming terabytes must not allocate them up front."""
    parts, got = [], 0
    while got < limit:
        part = f.read(min(limit - got, chunk))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) of unsigned bytes into an array of its shape.

    The header says how many bytes follow; only that many (plus one, to detect extra data) are read,
    so a corrupt header or a decompression bomb cannot make us read more than the file is meant to hold.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0:2] != b"\x00\x00" or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
                raise LongtailError(f"'{path}' is not an IDX file of unsigned bytes with 1 to 4 dimensions; it is corrupt or of another format")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise LongtailError(f"IDX file '{path}' is truncated inside its header; fetch it again")
            shape = struct.unpack(f">{ndim}I", dims)
            expected = math.prod(shape)
            data = _read_at_most(f, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip reports damage as any of these
        raise LongtailError(f"cannot read IDX file '{path}' ({type(exc).__name__}); the file is corrupt, delete it and fetch it again") from None
    if len(data) != expected:
        got = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise LongtailError(f"IDX file '{path}' holds {got} bytes of data but its header says {expected}; fetch it again")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def search_dirs(root: Optional[str], defaults: bool = True) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: `dataset.root` (and torchvision's layout below it), then, with
    `defaults`, Debian's dataset-fashion-mnist and longtail's own download."""
    dirs = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else []
    return dirs + ([DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"] if defaults else [])


def first_complete(candidates: list[Path]) -> Optional[Path]:
    """The first folder holding all four IDX files, or None."""
    for directory in candidates:
        if all((directory / name).is_file() for name in FILES.values()):
            return directory
    return None


def _download(root: Path) -> Optional[Path]:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception:  # offline or blocked: reported below with every place that was tried
        return None
    return first_complete([root / "FashionMNIST" / "raw"])


def locate(root: Optional[str], download: bool) -> Path:
    found = first_complete(search_dirs(root))
    if found is None and download:
        found = _download(Path(root) if root else CACHE_DIR)
    if found is None:
        raise LongtailError(
            "Fashion-MNIST not found: looked in dataset.root "
            f"({root or 'not set'}), in {DEBIAN_DIR} (apt-get install dataset-fashion-mnist) and in {CACHE_DIR}, "
            + ("and the download through torchvision failed (offline?)" if download else "and dataset.download is false")
        )
    return found


def load_fmnist(root: Optional[str], download: bool = True) -> RawDataset:
    directory = locate(root, download)
    arrays = {key: read_idx(directory / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
            raise LongtailError(
                f"Fashion-MNIST {split} files in '{directory}' hold images of shape {images.shape} and labels of shape "
                f"{labels.shape}; expected (N, 28, 28) and (N,). The files are corrupt or of another dataset"
            )
        if len(images) != len(labels) or not len(labels):
            raise LongtailError(f"Fashion-MNIST {split} images and labels in '{directory}' differ in length or are empty; fetch them again")
        if labels.max() > 9:
            raise LongtailError(f"Fashion-MNIST {split} labels in '{directory}' go beyond class 9; the file is corrupt")

    def split(name: str) -> TensorImages:
        images = torch.from_numpy(arrays[f"{name}_images"].copy()).unsqueeze(1)  # N, 1, 28, 28
        return TensorImages(images, torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64)))

    return RawDataset(split("train"), split("test"), num_classes=10, n_max=5000, mean=MEAN, std=STD,
                      class_names=list(CLASS_NAMES))
