"""Models: one table from config name to constructor. Every model returns a dict with at least
'logits' (B, C); multi-expert models add 'expert_logits' (E, B, C). A model with a single linear
head exposes it as `.classifier` (used by tau-normalisation)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError
from .experts import cifar_experts_from_cfg, torchvision_experts_from_cfg
from .pretrained import with_pretrained
from .resnet32_keras import KerasResNet32
from .resnet34_cifar import resnet18_cifar, resnet34_cifar
from .resnet_cifar import resnet8, resnet20, resnet32
from .timm_models import PREFIX as TIMM_PREFIX, timm_from_cfg
from .torchvision_resnets import torchvision_from_cfg

# name -> function(cfg, num_classes, in_channels) -> model
MODELS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    # single-head models; model.pretrained (a checkpoint, a state_dict file or 'torchvision') is applied when built
    "resnet8": with_pretrained(lambda cfg, classes, channels: resnet8(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    "resnet20": with_pretrained(lambda cfg, classes, channels: resnet20(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    "resnet32": with_pretrained(lambda cfg, classes, channels: resnet32(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    # google-research's Keras ResNet-32 of logit_adjustment/models.py (1x1-3x3-1x1 blocks): resnet32_keras.py
    "resnet32_keras": with_pretrained(lambda cfg, classes, channels: KerasResNet32(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    # torchvision-width ResNets with a 3x3 stem and no max-pool (mmpretrain's ResNet_CIFAR): resnet34_cifar.py
    "resnet18_cifar": with_pretrained(lambda cfg, classes, channels: resnet18_cifar(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    "resnet34_cifar": with_pretrained(lambda cfg, classes, channels: resnet34_cifar(classes, channels, classifier=cfg.classifier, scale=cfg.scale)),
    # torchvision's ImageNet networks with `fc` named `classifier` (see torchvision_resnets.py)
    "resnet50": with_pretrained(torchvision_from_cfg("resnet50")),
    "resnext50_32x4d": with_pretrained(torchvision_from_cfg("resnext50_32x4d")),
    "resnet152": with_pretrained(torchvision_from_cfg("resnet152")),
    # multi-expert networks (model.num_experts branches, cosine classifiers): see experts.py
    "resnet8_experts": cifar_experts_from_cfg(1),
    "resnet20_experts": cifar_experts_from_cfg(3),
    "resnet32_experts": cifar_experts_from_cfg(5),
    "resnet50_experts": torchvision_experts_from_cfg("resnet50"),
    "resnext50_experts": torchvision_experts_from_cfg("resnext50"),
    "resnet152_experts": torchvision_experts_from_cfg("resnet152"),
    # any timm network, e.g. timm/convnext_tiny (optional extra longtail[timm]; weights from a local file): timm_models.py
    TIMM_PREFIX + "<name>": timm_from_cfg,
}


def create_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    key = TIMM_PREFIX + "<name>" if cfg.name.startswith(TIMM_PREFIX) else cfg.name
    if key not in MODELS:
        raise LongtailError(f"unknown model '{cfg.name}'; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[key](cfg, num_classes, in_channels)
