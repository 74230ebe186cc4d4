"""torchvision's ImageNet ResNets for the large-scale benchmarks: ResNet-50 (ImageNet-LT, iNat),
ResNeXt-50 32x4d (ImageNet-LT) and ResNet-152 (Places-LT, started from ImageNet weights).

The network is torchvision's own (He et al. 2016; Xie et al. 2017) with `fc` renamed `classifier`;
every other parameter keeps torchvision's name, so its ImageNet weights load as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError
from .cosine import CosineClassifier

# config name -> name of its weights enum in torchvision.models (the constructor has the config name).
# torchvision.models is imported only when one is built: it takes seconds to import.
TORCHVISION_RESNETS: dict[str, str] = {
    "resnet50": "ResNet50_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnet152": "ResNet152_Weights",
}
# The weights the long-tail literature starts from (the original torchvision release, 76.1 % top-1 for
# ResNet-50); `model.pretrained: torchvision:IMAGENET1K_V2` picks the newer recipe's weights.
DEFAULT_WEIGHTS = "IMAGENET1K_V1"


class TorchvisionResNet(nn.Module):
    """Returns {'logits': (B, C), 'features': (B, 2048)}; the head is `classifier`: 'linear' (with bias)
    or 'cosine' (s * cos(w_c, f), scale `scale`)."""

    def __init__(self, net: Any, num_classes: int, in_channels: int = 3, classifier: str = "linear",
                 scale: float = 30.0):  # net: a torchvision ResNet
        super().__init__()
        if in_channels != 3:  # grey or multi-band inputs: a fresh first convolution of the same shape otherwise
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        self.feature_dim = net.fc.in_features
        if classifier == "linear":
            self.classifier: nn.Module = nn.Linear(self.feature_dim, num_classes)
        else:
            self.classifier = CosineClassifier(self.feature_dim, num_classes, scale)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(x), 1)
        return {"logits": self.classifier(features), "features": features}


def torchvision_resnet(name: str, num_classes: int, in_channels: int = 3, **head: Any) -> TorchvisionResNet:
    """Randomly initialised (torchvision's initialisation); weights come from `model.pretrained`."""
    import torchvision.models as tvm

    return TorchvisionResNet(getattr(tvm, name)(weights=None), num_classes, in_channels, **head)


def torchvision_from_cfg(name: str) -> Callable[[ModelConfig, int, int], TorchvisionResNet]:
    """The MODELS constructor of torchvision network `name` (model.classifier and model.scale pick the head)."""

    def build(cfg: ModelConfig, num_classes: int, in_channels: int) -> TorchvisionResNet:
        return torchvision_resnet(name, num_classes, in_channels, classifier=cfg.classifier, scale=cfg.scale)

    return build


def torchvision_state_dict(model_name: str, spec: str = "torchvision") -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for `model_name` (downloaded once into $TORCH_HOME).
    `spec` is 'torchvision' (IMAGENET1K_V1) or 'torchvision:<weights name>'."""
    if model_name not in TORCHVISION_RESNETS:
        raise LongtailError(
            f"model.pretrained=torchvision needs one of {', '.join(TORCHVISION_RESNETS)}; model '{model_name}' has no "
            "torchvision weights: give a checkpoint path instead"
        )
    import torchvision.models as tvm

    enum = getattr(tvm, TORCHVISION_RESNETS[model_name])
    tag = spec.split(":", 1)[1] if ":" in spec else DEFAULT_WEIGHTS
    if tag not in enum.__members__:
        raise LongtailError(f"torchvision has no weights '{tag}' for {model_name}; choose one of {', '.join(enum.__members__)}")
    weights = enum[tag]
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # offline, proxy, disk full, bad hash: all end the same way for the user
        raise LongtailError(
            f"could not fetch torchvision's {enum.__name__}.{tag} from {weights.url} ({type(exc).__name__}); "
            "without internet, download that file elsewhere and set model.pretrained to its local path"
        ) from None
