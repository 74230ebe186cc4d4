"""Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020).

    loss = CE(z + log n, y)

log n_c differs from log pi_c by the same constant for every class, which the softmax ignores,
so this is the logit-adjusted loss with tau = 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..catalog import register_loss
from ..config import LossConfig
from .base import Loss


class BalancedSoftmaxLoss(Loss):
    def __init__(self, class_counts: Sequence[int]):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("log_counts", torch.log(counts).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.log_counts, targets)


@register_loss("balanced_softmax")
def _balanced_softmax(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    return BalancedSoftmaxLoss(counts)
