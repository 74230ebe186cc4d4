"""Cosine (normalised) classifier: logits = s * cos(w_c, f), the feature and each class row
normalised to unit length, no bias. The head LDAM-DRW trains with (Cao et al. 2019, `NormedLinear`)
and the one every LGLA / RIDE expert ends in (s = 30)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Computed in float32 even under autocast: LDAM's margins and LGLA's angles (arccos(z_y / s))
    read these logits back as cosines."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = float(scale)
        # uniform in [-1, 1] as the reference NormedLinear; only the direction matters after normalising
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            cos = F.normalize(features.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        return self.scale * cos
