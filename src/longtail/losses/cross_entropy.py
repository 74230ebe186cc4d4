"""Plain softmax cross-entropy, the empirical-risk-minimisation baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Loss


class CrossEntropyLoss(Loss):
    """CE(z, y) = -log softmax(z)_y, averaged over the batch."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)
