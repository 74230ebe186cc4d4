"""Cosine (normalised) classifier: logits = s * cos(w_c, f), both the feature and each class
row normalised to unit length (the `NormedLinear` head LDAM-DRW is trained with, Cao et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default; the norm is removed anyway

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()
