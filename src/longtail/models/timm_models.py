"""timm backbones, an optional extra (`pip install "longtail[timm]"`): `model.name: timm/<name>` for
any network of timm's registry (`timm.list_models()`), e.g. `timm/resnet18`, `timm/convnext_tiny`.

The backbone is timm's network without its head (`num_classes=0`: pooled features); the head is
longtail's `classifier` (model.classifier: linear or cosine) for the dataset's classes. Weights come
only from a local file, `model.pretrained`: a timm state_dict (`.pth`/`.bin` from torch.save, or
`.safetensors`), whose classifier is dropped and re-initialised (kept with model.pretrained_classifier
when its shape fits), or a longtail checkpoint of the same timm model. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError, one_line
from .cosine import CosineClassifier
from .pretrained import HEAD, load_pretrained, read_tensors

PREFIX = "timm/"
BACKBONE = "backbone."


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise LongtailError('model.name timm/... needs timm: pip install "longtail[timm]"') from None
    return timm


class TimmClassifier(nn.Module):
    """{'logits': (B, C), 'features': (B, D)} of a timm backbone and longtail's classifier."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, classifier: str = "linear", scale: float = 30.0):
        super().__init__()
        timm = _timm()
        if not timm.is_model(name):
            near = timm.list_models(f"*{name[:6]}*")[:5]
            hint = f" (similar: {', '.join(near)})" if near else ""
            raise LongtailError(f"timm has no model '{name}'{hint}; see timm.list_models()")
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        self.timm_head: Union[str, tuple, None] = self.backbone.pretrained_cfg.get("classifier")
        dim = int(self.backbone.num_features)
        if classifier == "linear":
            self.classifier: nn.Module = nn.Linear(dim, num_classes)
        else:
            self.classifier = CosineClassifier(dim, num_classes, scale)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"logits": self.classifier(features), "features": features}


def timm_names(state: dict[str, torch.Tensor], head: Union[str, tuple, None]) -> dict[str, torch.Tensor]:
    """A timm state_dict under TimmClassifier's names: the backbone under 'backbone.', timm's (first)
    head under 'classifier.'; further heads (a distillation head) are dropped. A longtail checkpoint
    (already 'backbone.'/'classifier.') is returned as it is."""
    if any(k.startswith(BACKBONE) for k in state):
        return state
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        owner = next((h for h in heads if key.startswith(h + ".")), None)
        if owner is None:
            renamed[BACKBONE + key] = value
        elif owner == heads[0]:
            renamed[HEAD + key[len(owner) + 1 :]] = value
    return renamed


def read_weights(path_text: str) -> dict[str, torch.Tensor]:
    path = Path(path_text).expanduser()
    if path.suffix != ".safetensors":
        return read_tensors(path_text)
    if not path.is_file():
        raise LongtailError(f"model.pretrained '{path}' does not exist; give a local timm weights file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LongtailError(f"model.pretrained '{path}' is not a readable safetensors file ({one_line(exc, 120)})") from None


def timm_from_cfg(cfg: ModelConfig, num_classes: int, in_channels: int) -> TimmClassifier:
    """The MODELS constructor of `timm/<name>`."""
    model = TimmClassifier(cfg.name[len(PREFIX):], num_classes, in_channels, cfg.classifier, cfg.scale)
    if cfg.pretrained is not None:
        if cfg.pretrained.split(":", 1)[0] == "torchvision":
            raise LongtailError("model.pretrained 'torchvision' is for torchvision models; for timm/... give a local weights file")
        load_pretrained(model, cfg, timm_names(read_weights(cfg.pretrained), model.timm_head))
    return model
