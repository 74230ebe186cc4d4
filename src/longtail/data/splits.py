"""Long-tailed class counts and seeded per-class subsets (conventions in docs/datasets.md)."""

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


def split_share(n: int, asked: int) -> int:
    """Images a class of `n` gives to each of val and test: what was asked, at most (n - 1) // 2, so that
    val + test never take all of a class (it keeps at least one training image)."""
    return max(0, min(asked, (n - 1) // 2))


def stratified_split(
    labels: Sequence[int] | np.ndarray, num_classes: int, seed: int, val_per_class: int, test_per_class: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """A seeded per-class split of one labelled set into (train, val, test) indices, each sorted.

    Each class's images are shuffled by (seed, class) alone; test takes the first
    split_share(n, test_per_class), val the next split_share(n, val_per_class), training the rest.
    So a class's split depends on neither the other classes nor, for test, on val_per_class.
    Also returns the classes that gave val or test fewer images than asked (too small to split fully).
    """
    labels = np.asarray(labels)
    train, val, test, short = [], [], [], []
    for cls in range(num_classes):
        order = _class_order(labels, cls, seed)
        n_test, n_val = split_share(len(order), test_per_class), split_share(len(order), val_per_class)
        if n_test < test_per_class or n_val < val_per_class:
            short.append(cls)
        test.append(order[:n_test])
        val.append(order[n_test : n_test + n_val])
        train.append(order[n_test + n_val :])
    joined = [np.sort(np.concatenate(part)).astype(np.int64) if part else np.zeros(0, np.int64) for part in (train, val, test)]
    return joined[0], joined[1], joined[2], short
