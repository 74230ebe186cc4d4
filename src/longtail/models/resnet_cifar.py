"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, option-A
(parameter-free, zero-padded) shortcuts, global average pooling, a 64-d feature and a linear classifier.
ResNet-32 has 5 basic blocks per stage; ResNet-8 (1 block) is the fast variant for tests and quick runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cosine import CosineClassifier


class ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels."""

    def __init__(self, out_channels: int, in_channels: int):
        super().__init__()
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Option B: a strided 1x1 convolution and BatchNorm (torchvision's and mmpretrain's `downsample`)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; where the shape changes, the shortcut is option A (parameter-free)
    or, with `project`, option B (`projection`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        if not changes_shape:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = projection(in_channels, out_channels, stride) if project else ShortcutA(out_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_channels: int, out_channels: int, blocks: int, stride: int, project: bool = False) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride, project)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions. Heads keep their own initialisation: a linear head PyTorch's default
    nn.Linear draw (uniform in +-1/sqrt(fan_in), weight std 1/sqrt(3 fan_in)), as the released ResNet-32
    (feature network + DotProduct_Classifier) leaves it; Kaiming normal would give it std sqrt(2 / fan_in),
    2.4x larger. A cosine head keeps its unit-norm rows (cosine.py)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """Returns {'logits': (B, C), 'features': (B, 64)}. `classifier`: 'linear' (with bias) or
    'cosine' (s * cos(w_c, f), scale `scale`)."""

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3,
                 classifier: str = "linear", scale: float = 30.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = make_stage(16, 16, blocks_per_stage, 1)
        self.stage2 = make_stage(16, 32, blocks_per_stage, 2)
        self.stage3 = make_stage(32, 64, blocks_per_stage, 2)
        self.feature_dim = 64
        self.classifier = nn.Linear(64, num_classes) if classifier == "linear" else CosineClassifier(64, num_classes, scale)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return {"logits": self.classifier(features), "features": features}


def resnet32(num_classes: int, in_channels: int = 3, **head) -> CifarResNet:
    return CifarResNet(5, num_classes, in_channels, **head)


def resnet20(num_classes: int, in_channels: int = 3, **head) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels, **head)


def resnet8(num_classes: int, in_channels: int = 3, **head) -> CifarResNet:
    return CifarResNet(1, num_classes, in_channels, **head)
