"""Plain softmax cross-entropy, the empirical-risk-minimisation baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..catalog import register_loss
from .base import Loss


@register_loss("ce")
class CrossEntropyLoss(Loss):
    """CE(z, y) = -log softmax(z)_y, averaged over the batch."""

    def __init__(self, cfg: object = None, class_counts: object = None):  # the registry's (loss config, counts)
        super().__init__()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)
