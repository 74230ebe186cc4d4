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
        # As the released NormedLinear: uniform in [-1, 1], then every class vector rescaled to norm 1.
        # The forward pass sees only directions, but the gradient of w / ||w|| scales with 1 / ||w||, so an
        # SGD step turns a row ||w||^2 times less: left at norm sqrt(D / 3) the head would learn about D / 3
        # times more slowly (21x at D = 64, ~680x at D = 2048) than the released one.
        weight = torch.empty(num_classes, in_features).uniform_(-1, 1)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            cos = F.normalize(features.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        return self.scale * cos


def make_classifier(kind: str, in_features: int, num_classes: int, scale: float = 30.0) -> nn.Module:
    """`model.classifier`: linear (with bias) or cosine (s * cos)."""
    return nn.Linear(in_features, num_classes) if kind == "linear" else CosineClassifier(in_features, num_classes, scale)


class BackboneClassifier(nn.Module):
    """{'logits': (B, C), 'features': (B, D)}: a library backbone's pooled features (timm, open_clip) and
    longtail's classifier on them."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, classifier: str = "linear", scale: float = 30.0):
        super().__init__()
        self.backbone = backbone
        self.classifier = make_classifier(classifier, dim, num_classes, scale)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"logits": self.classifier(features), "features": features}
