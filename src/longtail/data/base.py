"""What every dataset hands the engine: splits of images with labels, and the training class counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class TensorImages:
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawDataset:
    """A balanced source dataset before the long-tailed subsampling."""

    train: TensorImages
    test: TensorImages
    num_classes: int
    n_max: int  # the standard protocol's largest class
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool = True
