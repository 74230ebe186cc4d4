"""CIFAR-10/100 from the official python pickles, read without executing pickled code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import LongtailError, one_line
from .base import RawDataset, TensorImages

# The official batches hold dicts of lists, bytes and uint8 numpy arrays; nothing else may be built.
# _codecs.encode only turns text into bytes: Python 3 pickles of protocol 2 need it for array data.
# _frombuffer builds an array from bytes (how protocol 5 pickles arrays, e.g. a batch re-saved by hand).
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}

CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        label_key="labels", num_classes=10, n_max=5000,
        class_names=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), tv="CIFAR10",
    ),
    "cifar100": dict(
        folder="cifar-100-python", train=["train"], test=["test"],
        label_key="fine_labels", num_classes=100, n_max=500, class_names=None,  # names: read from `meta` (below)
        meta=("meta", "fine_label_names"),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), tv="CIFAR100",
    ),
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'")


def safe_unpickle(path: Path) -> Any:
    """Unpickle plain containers and numpy arrays only; anything that could run code is refused."""
    try:
        data = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise LongtailError(f"'{path}' is not a plain CIFAR batch ({one_line(exc)}); it was not loaded. Fetch the official files again") from None
    except Exception as exc:  # truncated or garbled bytes surface as many exception types
        raise LongtailError(f"'{path}' is corrupt or not a CIFAR pickle ({type(exc).__name__}); fetch the official files again") from None


def _field(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise LongtailError(f"CIFAR batch '{path}' has no '{key}' entry; it is not an official batch file")


def _labels(raw: Any, key: str, path: Path) -> np.ndarray:
    """The label list of a batch as int64, refusing anything but a flat list of integers."""
    try:
        lab = np.asarray(raw)
    except (ValueError, TypeError):  # ragged nesting
        lab = None
    if lab is not None and lab.size == 0:
        return np.zeros(0, dtype=np.int64)
    if lab is None or lab.ndim != 1 or lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
        raise LongtailError(f"CIFAR batch '{path}' has '{key}' that are not a flat list of integer labels; it is not an official batch file")
    return lab.astype(np.int64)


def _read_split(directory: Path, files: list[str], label_key: str, num_classes: int) -> TensorImages:
    images, labels = [], []
    for name in files:
        path = directory / name
        batch = safe_unpickle(path)
        if not isinstance(batch, dict):
            raise LongtailError(f"CIFAR batch '{path}' is not a dict; it is not an official batch file")
        data = _field(batch, "data", path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            what = f"of shape {data.shape} and type {data.dtype}" if isinstance(data, np.ndarray) else f"of type {type(data).__name__}"
            raise LongtailError(f"CIFAR batch '{path}' has data {what}; expected a (N, 3072) uint8 array")
        lab = _labels(_field(batch, label_key, path), label_key, path)
        if len(lab) != len(data) or (len(lab) and (lab.min() < 0 or lab.max() >= num_classes)):
            raise LongtailError(f"CIFAR batch '{path}' has labels that do not match its images or lie outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return TensorImages(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def meta_names(directory: Path, spec: dict) -> Optional[list[str]]:
    """The class names of the official `meta` file (CIFAR-100's 100 fine label names, e.g. 'maple_tree'), or
    the spec's own list; None when the file is absent (classes are then named by index)."""
    if "meta" not in spec:
        return spec["class_names"]
    name, key = spec["meta"]
    path = directory / name
    if not path.is_file():
        return None
    meta = safe_unpickle(path)
    names = meta.get(key.encode(), meta.get(key)) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != spec["num_classes"] or not all(isinstance(n, (bytes, str)) for n in names):
        raise LongtailError(f"CIFAR meta file '{path}' has no list of {spec['num_classes']} '{key}'; fetch the official files again")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def load_cifar(variant: str, root: Optional[str], download: bool = True) -> RawDataset:
    spec = CIFAR[variant]
    base = Path(root) if root else Path.home() / ".cache" / "longtail"
    directory = base / spec["folder"]
    needed = spec["train"] + spec["test"]
    if not all((directory / f).is_file() for f in needed) and download:
        try:
            import torchvision.datasets as tvd

            getattr(tvd, spec["tv"])(str(base), train=True, download=True)
        except Exception:  # offline: reported below
            pass
    missing = [f for f in needed if not (directory / f).is_file()]
    if missing:
        raise LongtailError(
            f"{variant.upper()} not found: '{directory}' lacks {', '.join(missing)}; set dataset.root to the folder "
            f"holding '{spec['folder']}' (the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
            + ("" if download else " or allow dataset.download")
        )
    return RawDataset(
        train=_read_split(directory, spec["train"], spec["label_key"], spec["num_classes"]),
        test=_read_split(directory, spec["test"], spec["label_key"], spec["num_classes"]),
        num_classes=spec["num_classes"], n_max=spec["n_max"], mean=spec["mean"], std=spec["std"],
        class_names=meta_names(directory, spec),
    )
