"""LDAM loss with deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss", NeurIPS 2019).

    m_c = max_margin * (n_min / n_c) ** (1/4)          (so m ∝ n_c^(-1/4), largest margin for the rarest class)
    loss = CE_w(z - s * m_y * onehot(y), y)

The margin is in cosine units, as in the paper, where the logits are z = s * cos(w_c, f) from a
normalised classifier of scale s (`model.classifier: cosine`, `model.scale`); the loss therefore
subtracts s * m_y in logit units. DRW: from epoch `drw_epoch` (0-based) on, CE_w weights each class by
the class-balanced weight of Cui et al. (CVPR 2019), w_c ∝ (1 - beta) / (1 - beta ** n_c), normalised
to sum to C; before it (or with drw_epoch None) all weights are 1. The weighted mean divides by the
summed weights of the batch's targets (F.cross_entropy's convention, as Cao et al.'s code).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..catalog import register_loss
from ..config import LossConfig
from .base import Loss


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    margins = counts.pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Cui et al.'s inverse effective number (1 - beta) / (1 - beta ** n_c), normalised to sum to C."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights * len(counts) / weights.sum()).float()


class LDAMLoss(Loss):
    def __init__(
        self,
        class_counts: Sequence[int],
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: Optional[int] = None,
        drw_beta: float = 0.9999,
    ):
        super().__init__()
        self.scale, self.drw_epoch = float(scale), drw_epoch
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.register_buffer("drw_weights", class_balanced_weights(class_counts, drw_beta))
        self.reweight = False  # follows the epoch through set_epoch, so it needs no saved state

    def set_epoch(self, epoch: int) -> None:
        self.reweight = self.drw_epoch is not None and epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shift = torch.zeros_like(logits).scatter_(1, targets[:, None], (self.scale * self.margins[targets])[:, None])
        return F.cross_entropy(logits - shift, targets, weight=self.drw_weights if self.reweight else None)


@register_loss("ldam_drw")
def _ldam_drw(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    return LDAMLoss(counts, cfg.max_margin, cfg.scale, cfg.drw_epoch, cfg.drw_beta)
