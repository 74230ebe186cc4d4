"""Long-tailed class counts and seeded per-class subsets (conventions of methods.md)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import LongtailError


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Images per class, in label order.

    exp:  n_i = int(n_max * (1 / IF) ** (i / (C - 1)))   (CIFAR-10-LT IF100 sums to 12406)
    step: the first C // 2 classes keep n_max, the rest get int(n_max / IF)
    """
    if not (isinstance(imbalance_factor, (int, float)) and math.isfinite(imbalance_factor)) or imbalance_factor < 1:
        raise LongtailError(f"imbalance factor must be a finite number >= 1 (n_max / n_min), got {imbalance_factor!r}")
    if n_max < 1 or num_classes < 1:
        raise LongtailError(f"n_max and num_classes must be positive, got {n_max} and {num_classes}")
    if profile == "exp":
        if num_classes == 1:
            counts = [n_max]
        else:
            counts = [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]
    elif profile == "step":
        head = num_classes // 2
        counts = [n_max] * head + [int(n_max / imbalance_factor)] * (num_classes - head)
    else:
        raise LongtailError(f"unknown imbalance profile '{profile}'; use 'exp' or 'step'")
    if min(counts) < 1:
        empty = counts.index(min(counts))
        raise LongtailError(
            f"imbalance factor {imbalance_factor} with n_max {n_max} leaves class {empty} with 0 images; "
            f"use an imbalance factor <= {n_max}"
        )
    return counts


def _class_order(labels: np.ndarray, cls: int, seed: int) -> np.ndarray:
    """The indices of class `cls`, shuffled by a generator seeded with (seed, cls) only,
    so a class's subset does not depend on the other classes or the machine."""
    idx = np.flatnonzero(labels == cls)
    return idx[np.random.default_rng([seed, cls]).permutation(len(idx))]


def long_tailed_split(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    counts: Sequence[int],
    seed: int,
    val_per_class: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class subsampling: keep the first counts[c] of each class's shuffled indices,
    and take a balanced validation set from the next `val_per_class` (images the subset did not use).

    Returns (train_indices, val_indices), both sorted.
    """
    labels = np.asarray(labels)
    train, val = [], []
    for cls, n in enumerate(counts):
        order = _class_order(labels, cls, seed)
        if len(order) < n + val_per_class:
            hint = (
                "; set dataset.val_source=test_holdout or dataset.val_source=none" if val_per_class else
                "; lower dataset.n_max"
            )
            raise LongtailError(
                f"class {cls} has {len(order)} training images, fewer than the {n} long-tailed + "
                f"{val_per_class} validation images asked for{hint}"
            )
        train.append(order[:n])
        val.append(order[n : n + val_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val)).astype(np.int64)


def holdout_split(labels: Sequence[int] | np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a balanced set into (rest, held_out) with `per_class` seeded images per class held out."""
    labels = np.asarray(labels)
    held = []
    for cls in np.unique(labels):
        order = _class_order(labels, int(cls), seed)
        if len(order) <= per_class:
            raise LongtailError(f"class {cls} has only {len(order)} images; cannot hold out {per_class} for validation")
        held.append(order[:per_class])
    held_idx = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held_idx)
    return rest, held_idx
