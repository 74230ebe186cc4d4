"""Losses: each registers its constructor `(loss config, class counts) -> Loss` with `register_loss` in its own
file; `create_loss` builds the configured one (built-ins, or a plugin's: see longtail/catalog.py)."""

from __future__ import annotations

from typing import Sequence

from .. import catalog
from ..config import LossConfig
from ..errors import LongtailError
from .balanced_softmax import BalancedSoftmaxLoss
from .base import Loss
from .cross_entropy import CrossEntropyLoss
from .gala import BaGMarLoss, GALALoss
from .ldam import LDAMLoss
from .lgla import LGLALoss
from .logit_adjusted import LogitAdjustedLoss


def create_loss(cfg: LossConfig, class_counts: Sequence[int]) -> Loss:
    """The loss `cfg.name` for these training class counts; a constructor returning no Loss is refused in one line."""
    entry = catalog.get("loss", cfg.name)
    loss = entry.obj(cfg, list(class_counts))
    if not isinstance(loss, Loss):
        raise LongtailError(f"loss '{cfg.name}' registered by {entry.source or entry.module} returned a "
                            f"{type(loss).__name__}, not a longtail.Loss; derive the loss from longtail.Loss")
    return loss


__all__ = [
    "Loss", "create_loss", "CrossEntropyLoss", "LogitAdjustedLoss", "BalancedSoftmaxLoss",
    "GALALoss", "BaGMarLoss", "LDAMLoss", "LGLALoss",
]
