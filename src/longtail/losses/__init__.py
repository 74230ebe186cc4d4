"""Losses: one table from `loss.name` to constructor, each taking (loss config, class counts, epochs)."""

from __future__ import annotations

from typing import Callable, Sequence

from ..config import LossConfig
from ..errors import LongtailError
from .base import Loss
from .cross_entropy import CrossEntropyLoss
from .lgla import LGLALoss

LOSSES: dict[str, Callable[[LossConfig, Sequence[int]], Loss]] = {
    "ce": lambda cfg, counts: CrossEntropyLoss(),
    "lgla": lambda cfg, counts: LGLALoss(counts, cfg.num_experts, cfg.tau, cfg.scale),
}


def create_loss(cfg: LossConfig, class_counts: Sequence[int]) -> Loss:
    if cfg.name not in LOSSES:
        raise LongtailError(f"unknown loss '{cfg.name}'; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[cfg.name](cfg, list(class_counts))


__all__ = ["LOSSES", "Loss", "CrossEntropyLoss", "LGLALoss", "create_loss"]
