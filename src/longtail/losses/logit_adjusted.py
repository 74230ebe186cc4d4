"""Logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

    loss = CE(z + tau * log pi, y),   pi_c = n_c / sum(n)

The prior is added only during training; predictions use the plain logits z, which then
estimate the balanced (class-uniform) posterior. With tau = 1 this equals Balanced Softmax.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..catalog import register_loss
from ..config import LossConfig
from ..priors import log_prior  # log(n_c / sum n + 1e-12), as Menon et al.'s code: an empty class stays finite
from .base import Loss


class LogitAdjustedLoss(Loss):
    def __init__(self, class_counts: Sequence[int], tau: float = 1.0):
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("log_prior", log_prior(class_counts))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, targets)


@register_loss("la")
def _la(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    return LogitAdjustedLoss(counts, tau=cfg.tau)
