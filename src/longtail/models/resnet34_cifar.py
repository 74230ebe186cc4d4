"""ResNet-18/34 in their CIFAR form (mmpretrain's `ResNet_CIFAR`): torchvision's four stages of BasicBlocks
(64, 128, 256, 512 channels, strides 1, 2, 2, 2, projection shortcuts where the shape changes) behind a
3x3 stride-1 stem without max-pool, so a 32x32 image keeps 32x32 into stage 1 (4x4 after stage 4); global
average pooling, a 512-d feature and a linear classifier.

Initialisation as mmpretrain's: convolutions Kaiming normal (fan_out, ReLU gain), BatchNorm weight 1 and
bias 0, the last BatchNorm of every residual branch zeroed (`zero_init_residual`, so each block starts as
the identity), the linear head normal with std 0.01 and bias 0.
ResNet-34 [3, 4, 6, 3] has 21,282,122 parameters with 10 classes (21,328,292 with 100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cosine import CosineClassifier
from .resnet_cifar import BasicBlock, make_stage

WIDTHS = (64, 128, 256, 512)


class ResNetCifarStem(nn.Module):
    """Returns {'logits': (B, C), 'features': (B, 512)}; `blocks` per stage, e.g. (3, 4, 6, 3) for ResNet-34."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int, in_channels: int = 3,
                 classifier: str = "linear", scale: float = 30.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU())
        stages, channels = [], WIDTHS[0]
        for index, (count, width) in enumerate(zip(blocks, WIDTHS)):
            stages.append(make_stage(channels, width, count, 1 if index == 0 else 2, project=True))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes) if classifier == "linear" else CosineClassifier(channels, num_classes, scale)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, std=0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stages(self.stem(x))
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return {"logits": self.classifier(features), "features": features}


def resnet34_cifar(num_classes: int, in_channels: int = 3, **head) -> ResNetCifarStem:
    return ResNetCifarStem((3, 4, 6, 3), num_classes, in_channels, **head)


def resnet18_cifar(num_classes: int, in_channels: int = 3, **head) -> ResNetCifarStem:
    return ResNetCifarStem((2, 2, 2, 2), num_classes, in_channels, **head)
