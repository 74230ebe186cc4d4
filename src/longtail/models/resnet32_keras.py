"""google-research's Keras CIFAR "ResNet-32" (`logit_adjustment/models.py`, `cifar_resnet32`), rebuilt in torch.

It is not He et al.'s ResNet-32 (resnet_cifar.py): every block has three convolutions, 1x1 -> 3x3 -> 1x1,
all of the stage's width (16, 32, 64), each followed by BatchNorm; the first block of every stage has a
projection shortcut (1x1 convolution + BatchNorm, also in stage 1 where the shape does not change), the
others the identity; ReLU after the residual sum. Around them:

    stem:  zero-pad 3 pixels, 3x3 convolution (16 channels, no padding) -> 36 x 36, BatchNorm, ReLU
    stages of 5 blocks, strides 1, 2, 2 (TensorFlow 'same' padding: one extra row and column at the bottom
           and right of a stride-2 3x3 convolution, none at the top and left) -> 36, 18, 9 pixels
    head:  BatchNorm (no ReLU), global average pooling, linear classifier (weights normal, std 0.01; bias 0)

Convolutions: Keras' he_normal (truncated normal, std sqrt(2 / fan_in) before truncation at 2 std).
BatchNorm: momentum 0.9 in Keras' convention (0.1 in torch's), eps 1e-5. 300,762 parameters with 10 classes.

The Keras model regularises every convolution kernel and the classifier's weight and bias with
l2(1e-4), i.e. adds 1e-4 * sum(w^2) to the loss: gradient 2e-4 * w, which is torch's SGD weight_decay 2e-4
on those parameters and none on BatchNorm (train.weight_decay 2e-4, train.norm_weight_decay 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cosine import CosineClassifier

STAGES = ((16, 1), (32, 2), (64, 2))  # (width, stride)
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # torch's convention for Keras' momentum 0.9


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv3x3(nn.Module):
    """A 3x3 convolution with TensorFlow's 'same' padding: for stride 2, the padding (total 1 or 2) goes
    to the bottom and right first."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        return self.conv(F.pad(x, pads))


class KerasBlock(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1, BatchNorm after each, ReLU between; projection shortcut when `project`."""

    def __init__(self, in_channels: int, width: int, stride: int, project: bool):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, width, 1, bias=False), _bn(width)
        self.conv2, self.bn2 = SameConv3x3(width, width, stride), _bn(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 1, bias=False), _bn(width)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(in_channels, width, 1, stride, bias=False), _bn(width)) if project else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def he_normal_(weight: torch.Tensor) -> None:
    """Keras' he_normal: truncated normal in +-2 std, std sqrt(2 / fan_in) / 0.87962566 (the truncation's
    variance correction, so the kept draws have std sqrt(2 / fan_in))."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class KerasResNet32(nn.Module):
    """Returns {'logits': (B, C), 'features': (B, 64)}."""

    def __init__(self, num_classes: int, in_channels: int = 3, blocks_per_stage: int = 5,
                 classifier: str = "linear", scale: float = 30.0):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d(3), nn.Conv2d(in_channels, 16, 3, 1, 0, bias=False), _bn(16), nn.ReLU())
        layers, channels = [], 16
        for width, stride in STAGES:
            layers.append(KerasBlock(channels, width, stride, project=True))
            layers += [KerasBlock(width, width, 1, project=False) for _ in range(blocks_per_stage - 1)]
            channels = width
        self.stages = nn.Sequential(*layers)
        self.final_bn = _bn(channels)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes) if classifier == "linear" else CosineClassifier(channels, num_classes, scale)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal_(m.weight)
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, std=0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.final_bn(self.stages(self.stem(x)))
        features = x.mean(dim=(2, 3))
        return {"logits": self.classifier(features), "features": features}
