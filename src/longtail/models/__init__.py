"""Models: each constructor registered under its config name (`register_model`, see longtail/catalog.py). Every model returns a dict with at least
'logits' (B, C); multi-expert models add 'expert_logits' (E, B, C). A model with a single linear
head exposes it as `.classifier` (used by tau-normalisation).

Names with a library prefix (`timm/<name>`, `clip/<name>`) stand for every model of that library
(PREFIXED); `is_known_model` is the one check of a model name, and `backbone_preprocessing` gives the
input a pretrained backbone expects (size, interpolation, mean/std, crop_pct)."""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from .. import catalog
from ..catalog import register_model
from ..config import ModelConfig
from ..errors import LongtailError
from ..input_spec import BackboneInput
from .clip_models import PREFIX as CLIP_PREFIX, check_clip_name, clip_from_cfg, clip_preprocessing
from .experts import cifar_experts_from_cfg, torchvision_experts_from_cfg
from .pretrained import with_pretrained
from .resnet32_keras import KerasResNet32
from .resnet34_cifar import resnet18_cifar, resnet34_cifar
from .resnet_cifar import resnet8, resnet20, resnet32
from .finetune import add_finetune_layers
from .libraries import MissingExtra
from .timm_models import PREFIX as TIMM_PREFIX, check_timm_name, timm_from_cfg, timm_preprocessing
from .torchvision_resnets import torchvision_from_cfg


def _cifar(build: Callable[..., nn.Module]) -> Callable[[ModelConfig, int, int], nn.Module]:
    return with_pretrained(lambda cfg, classes, channels: build(classes, channels, classifier=cfg.classifier, scale=cfg.scale))


# name -> function(cfg, num_classes, in_channels) -> model, each registered under its model.name
# single-head models; model.pretrained (a checkpoint, a state_dict file or 'torchvision') is applied when built
register_model("resnet8")(_cifar(resnet8))
register_model("resnet20")(_cifar(resnet20))
register_model("resnet32")(_cifar(resnet32))
# google-research's Keras ResNet-32 of logit_adjustment/models.py (1x1-3x3-1x1 blocks): resnet32_keras.py
register_model("resnet32_keras")(_cifar(KerasResNet32))
# torchvision-width ResNets with a 3x3 stem and no max-pool (mmpretrain's ResNet_CIFAR): resnet34_cifar.py
register_model("resnet18_cifar")(_cifar(resnet18_cifar))
register_model("resnet34_cifar")(_cifar(resnet34_cifar))
# torchvision's ImageNet networks with `fc` named `classifier` (see torchvision_resnets.py)
for _name in ("resnet50", "resnext50_32x4d", "resnet152"):
    register_model(_name)(with_pretrained(torchvision_from_cfg(_name)))
# multi-expert networks (model.num_experts branches, cosine classifiers): see experts.py
register_model("resnet8_experts")(cifar_experts_from_cfg(1))
register_model("resnet20_experts")(cifar_experts_from_cfg(3))
register_model("resnet32_experts")(cifar_experts_from_cfg(5))
for _name in ("resnet50", "resnext50", "resnet152"):
    register_model(f"{_name}_experts")(torchvision_experts_from_cfg(_name))
# any timm network, e.g. timm/convnext_tiny (optional extra longtail[timm]; model.pretrained: hub or a file): timm_models.py;
# CLIP's image tower through open_clip, e.g. clip/ViT-B-16 (optional extra longtail[clip]): clip_models.py
PREFIX_BUILDERS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {TIMM_PREFIX: timm_from_cfg, CLIP_PREFIX: clip_from_cfg}

# prefix -> (check of the name after it: raises LongtailError with a did-you-mean, preprocessing of that name)
PREFIXED: dict[str, tuple[Callable[[str], None], Callable[[str], BackboneInput]]] = {
    TIMM_PREFIX: (check_timm_name, timm_preprocessing),
    CLIP_PREFIX: (check_clip_name, clip_preprocessing),
}


def _prefix(name: str) -> Optional[str]:
    return next((p for p in PREFIXED if name.startswith(p)), None)


def is_known_model(name: str) -> bool:
    """Whether `name` is a model longtail can build (for library prefixes: a name that library knows).
    Raises LongtailError when the library of a prefix is not installed."""
    prefix = _prefix(name)
    if prefix is None:
        return name in catalog.names("model")
    try:
        PREFIXED[prefix][0](name[len(prefix):])
    except MissingExtra:
        raise
    except LongtailError:
        return False
    return True


def backbone_preprocessing(cfg: ModelConfig) -> Optional[BackboneInput]:
    """The input a pretrained library backbone expects (input_spec.BackboneInput: image size, None for any;
    interpolation, mean/std, evaluation crop_pct), for timm/ and clip/ models that start from pretrained weights;
    None otherwise (the dataset's own statistics apply). input_spec.build_input_spec makes it the run's spec."""
    prefix = _prefix(cfg.name)
    if prefix is None or cfg.pretrained is None:
        return None
    return PREFIXED[prefix][1](cfg.name[len(prefix):])


def create_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    prefix = _prefix(cfg.name)
    build = PREFIX_BUILDERS[prefix] if prefix is not None else catalog.get("model", cfg.name).obj
    return add_finetune_layers(build(cfg, num_classes, in_channels), cfg, num_classes)
