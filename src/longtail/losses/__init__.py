"""Losses: one table from `loss.name` to constructor, each taking (loss config, class counts)."""

from __future__ import annotations

from typing import Callable, Sequence

from ..config import LossConfig
from ..errors import LongtailError
from .balanced_softmax import BalancedSoftmaxLoss
from .base import Loss
from .cross_entropy import CrossEntropyLoss
from .lgla import LGLALoss
from .gala import BaGMarLoss, GALALoss
from .ldam import LDAMLoss
from .logit_adjusted import LogitAdjustedLoss


def _bagmar(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    if (cfg.lambda1, cfg.lambda2) != (1.0, 1.0):
        raise LongtailError(
            f"loss 'bagmar' fixes lambda1 = lambda2 = 1 but the config sets {cfg.lambda1} and {cfg.lambda2}; "
            "use loss.name=gala to choose them"
        )
    return BaGMarLoss(len(counts), variant=cfg.variant)


LOSSES: dict[str, Callable[[LossConfig, Sequence[int]], Loss]] = {
    "ce": lambda cfg, counts: CrossEntropyLoss(),
    "la": lambda cfg, counts: LogitAdjustedLoss(counts, tau=cfg.tau),
    "gala": lambda cfg, counts: GALALoss(len(counts), cfg.lambda1, cfg.lambda2, cfg.variant),
    "bagmar": _bagmar,
    "balanced_softmax": lambda cfg, counts: BalancedSoftmaxLoss(counts),
    "lgla": lambda cfg, counts: LGLALoss(counts, cfg.num_experts, cfg.tau, cfg.scale),
    "ldam_drw": lambda cfg, counts: LDAMLoss(counts, cfg.max_margin, cfg.scale, cfg.drw_epoch, cfg.drw_beta),
}


def create_loss(cfg: LossConfig, class_counts: Sequence[int]) -> Loss:
    if cfg.name not in LOSSES:
        raise LongtailError(f"unknown loss '{cfg.name}'; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[cfg.name](cfg, list(class_counts))


__all__ = [
    "LOSSES", "Loss", "create_loss", "CrossEntropyLoss", "LogitAdjustedLoss", "BalancedSoftmaxLoss",
    "GALALoss", "BaGMarLoss", "LDAMLoss", "LGLALoss",
]
