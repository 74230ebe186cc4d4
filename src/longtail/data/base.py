"""What every dataset hands the engine: splits of images with labels, and the training class counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..errors import LongtailError
from ..input_spec import DatasetInput, InputSpec


@dataclass
class TensorImages:
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> np.ndarray:
        """The labels as a numpy array, as file-backed datasets (ImageList) expose them."""
        return self.labels.cpu().numpy()

    def subset(self, idx: Any) -> "TensorImages":
        """The images at positions `idx` (any integer sequence or array), in that order."""
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return TensorImages(self.images[index], self.labels[index])


@dataclass
class RawDataset:
    """A balanced source dataset before the long-tailed subsampling."""

    train: TensorImages
    test: TensorImages
    num_classes: int
    n_max: int  # the standard protocol's largest class
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: Optional[list[str]] = None


@dataclass
class DataBundle:
    """The splits a run uses. `train`, `val`, `test` are TensorImages for in-memory datasets
    or torch Datasets for image-list datasets (then `in_memory` is False)."""

    name: str
    train: Any
    val: Optional[Any]
    test: Any
    class_counts: list[int]
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]  # the dataset's own statistics: the input spec's default (input_spec.build_input_spec)
    std: tuple[float, ...]
    in_memory: bool = True
    class_names: Optional[list[str]] = None  # None: the dataset names no classes (see `names`)
    # how every pipeline makes the network's input (size, resize, interpolation, the mean/std it normalises with);
    # set once by data.build_data
    input: Optional[InputSpec] = None
    # files a run writes into its directory to record how the data was split (name -> text), and
    # lines to print about it (e.g. classes too small to split)
    split_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def native_size(self) -> Optional[int]:
        """The side of in-memory images as stored (None: image files)."""
        return int(self.train.images.shape[-1]) if self.in_memory else None

    @property
    def spec(self) -> InputSpec:
        """The input spec; a bundle made without build_data has none."""
        if self.input is None:
            raise LongtailError(f"the '{self.name}' data has no input spec; build it with longtail.data.build_data")
        return self.input

    def train_resize(self) -> Optional[int]:
        """In-memory images: the side training resizes them to (a pretrained backbone's), None when they keep
        their own."""
        return self.spec.size if self.in_memory and self.spec.size != self.native_size else None

    def names(self) -> list[str]:
        """The class names, or the class indices as strings for datasets without names."""
        return list(self.class_names) if self.class_names is not None else [str(c) for c in range(self.num_classes)]

    def dataset_input(self) -> DatasetInput:
        """What the dataset itself says about its input (input_spec.build_input_spec)."""
        return DatasetInput(self.name, self.in_channels, tuple(self.mean), tuple(self.std), self.native_size)
