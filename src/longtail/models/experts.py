"""Multi-expert networks (RIDE / SADE / LGLA style): a shared trunk, then E expert branches that each
own the later stages and end in a cosine classifier, logits_e = s * cos(w_c, f_e) with s = 30.

    CIFAR (resnet{8,20,32}_experts): shared stem + stage 1, each expert owns stages 2-3 (64-d feature).
    ImageNet-size (resnet50 / resnext50 / resnet152 _experts): torchvision stem + layer1-2 shared,
    each expert owns a copy of layer3-4 (2048-d feature).

Forward returns {'logits': mean over experts (B, C), 'expert_logits': (E, B, C),
'features': the experts' pooled features concatenated (B, E * D)}. Prediction is argmax of the mean.

The released LGLA code builds the CIFAR experts as grouped convolutions over concatenated channels;
its option-A shortcut pads the concatenated tensor as a whole, so at the first block of stage 3 an
expert's shortcut carries channels of its neighbours. Here the experts are fully independent branches.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torchvision
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError
from .cosine import CosineClassifier
from .pretrained import HEAD, pretrained_state
from .resnet_cifar import init_weights, make_stage

COSINE_SCALE = 30.0  # s of LGLA / SADE; the LGLA loss reads angles as arccos(z_y / s) with the same s


class MultiExpertNet(nn.Module):
    """`trunk` shared by all experts; `branches[e]` maps the trunk's feature map to expert e's map."""

    def __init__(self, trunk: nn.Module, branches: list[nn.Module], feature_dim: int, num_classes: int,
                 scale: float = COSINE_SCALE):
        super().__init__()
        self.trunk = trunk
        self.experts = nn.ModuleList(
            nn.Sequential(branch, nn.AdaptiveAvgPool2d(1), nn.Flatten()) for branch in branches
        )
        self.classifiers = nn.ModuleList(CosineClassifier(feature_dim, num_classes, scale) for _ in branches)
        self.num_experts = len(branches)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.trunk(x)
        features = [expert(shared) for expert in self.experts]
        expert_logits = torch.stack([head(f) for head, f in zip(self.classifiers, features)])
        return {"logits": expert_logits.mean(0), "expert_logits": expert_logits, "features": torch.cat(features, 1)}


def _check_cfg(cfg: ModelConfig, allow_pretrained: bool) -> None:
    if cfg.freeze_backbone:
        raise LongtailError(
            f"model '{cfg.name}' is a multi-expert network trained end to end; model.freeze_backbone is for "
            "single-head models (set it to false)"
        )
    if cfg.pretrained is not None and not allow_pretrained:
        raise LongtailError(f"model '{cfg.name}' has no pretrained weights; set model.pretrained to null")


# ----------------------------------------------------------------------------- CIFAR ResNets


def cifar_resnet_experts(blocks_per_stage: int, num_classes: int, in_channels: int = 3, num_experts: int = 3,
                         scale: float = COSINE_SCALE) -> MultiExpertNet:
    """CIFAR ResNet (option-A shortcuts, 16/32/64 channels): shared stem + stage 1, per-expert stages 2-3."""
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        make_stage(16, 16, blocks_per_stage, 1),
    )
    branches = [
        nn.Sequential(make_stage(16, 32, blocks_per_stage, 2), make_stage(32, 64, blocks_per_stage, 2))
        for _ in range(num_experts)
    ]
    model = MultiExpertNet(trunk, branches, 64, num_classes, scale)
    init_weights(model)  # convs only: the cosine classifiers keep their unit-norm rows
    return model


def cifar_experts_from_cfg(blocks_per_stage: int) -> Callable[[ModelConfig, int, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
        _check_cfg(cfg, allow_pretrained=False)
        return cifar_resnet_experts(blocks_per_stage, num_classes, in_channels, cfg.num_experts)

    return build


# ----------------------------------------------------------------------------- torchvision ResNets

TORCHVISION_ARCHS = {"resnet50": "resnet50", "resnext50": "resnext50_32x4d", "resnet152": "resnet152"}


def _load_backbone(tv_model: nn.Module, state: dict[str, torch.Tensor], spec: str) -> None:
    """Copy everything but the ImageNet classifier (torchvision's fc.*, which pretrained_state names
    classifier.*); any other mismatch is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    own = tv_model.state_dict()
    missing = [k for k in own if not k.startswith("fc.") and k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[:3]
        raise LongtailError(
            f"model.pretrained '{spec}' does not fit this backbone ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} mis-shaped keys, e.g. {', '.join(first)}); give a checkpoint of the same architecture"
        )
    tv_model.load_state_dict(state, strict=False)


def _torchvision_init(module: nn.Module) -> None:
    """torchvision's ResNet initialisation, redone so that every expert branch starts from its own draw."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def torchvision_resnet_experts(arch: str, num_classes: int, in_channels: int = 3, num_experts: int = 3,
                               pretrained: Optional[str] = None, scale: float = COSINE_SCALE) -> MultiExpertNet:
    """torchvision `arch` (resnet50 / resnext50_32x4d / resnet152): stem + layer1-2 shared, per-expert
    layer3-4. Pretrained weights go into the shared trunk and into every expert's copy of layer3-4."""
    tv_model = getattr(torchvision.models, arch)(weights=None)
    if pretrained is not None:
        if in_channels != 3:
            raise LongtailError(f"ImageNet weights expect 3 input channels, the dataset has {in_channels}; set model.pretrained to null")
        _load_backbone(tv_model, pretrained_state(pretrained, arch), pretrained)
    elif in_channels != 3:
        tv_model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        _torchvision_init(tv_model.conv1)
    trunk = nn.Sequential(tv_model.conv1, tv_model.bn1, tv_model.relu, tv_model.maxpool, tv_model.layer1, tv_model.layer2)
    branches = []
    for _ in range(num_experts):
        branch = copy.deepcopy(nn.Sequential(tv_model.layer3, tv_model.layer4))
        if pretrained is None:
            _torchvision_init(branch)
        branches.append(branch)
    return MultiExpertNet(trunk, branches, tv_model.fc.in_features, num_classes, scale)


def torchvision_experts_from_cfg(name: str) -> Callable[[ModelConfig, int, int], nn.Module]:
    arch = TORCHVISION_ARCHS[name]

    def build(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
        _check_cfg(cfg, allow_pretrained=True)
        return torchvision_resnet_experts(arch, num_classes, in_channels, cfg.num_experts, cfg.pretrained)

    return build
