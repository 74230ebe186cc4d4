"""Fashion-MNIST from its IDX .gz files: `dataset.root`, then Debian's dataset-fashion-mnist, then a download."""

from __future__ import annotations

import gzip
import struct
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


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise LongtailError(f"cannot read IDX file '{path}' ({exc}); the file is corrupt, delete it and fetch it again") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise LongtailError(f"'{path}' is not an IDX file of unsigned bytes; it is corrupt or of another format")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise LongtailError(f"IDX file '{path}' is truncated inside its header; fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise LongtailError(
            f"IDX file '{path}' holds {len(data) - header} bytes of data but its header says {expected}; fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_dir(candidates: list[Path]) -> Optional[Path]:
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
    return _find_dir([root / "FashionMNIST" / "raw"])


def locate(root: Optional[str], download: bool) -> Path:
    tried = []
    if root:
        tried += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    tried += [DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    found = _find_dir(tried)
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
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise LongtailError(f"Fashion-MNIST {split} images and labels in '{directory}' differ in length; fetch them again")
        if arrays[f"{split}_labels"].max() > 9:
            raise LongtailError(f"Fashion-MNIST {split} labels in '{directory}' go beyond class 9; the file is corrupt")

    def split(name: str) -> TensorImages:
        images = torch.from_numpy(arrays[f"{name}_images"].copy()).unsqueeze(1)  # N, 1, 28, 28
        return TensorImages(images, torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64)))

    return RawDataset(split("train"), split("test"), num_classes=10, n_max=5000, mean=MEAN, std=STD)
