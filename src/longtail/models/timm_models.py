"""timm backbones, an optional extra (`pip install "longtail[timm]"`): `model.name: timm/<name>` for
any network of timm's registry (`timm.list_models()`), e.g. `timm/resnet18`, `timm/vit_base_patch16_224`.

The backbone is timm's network without its head (`num_classes=0`: pooled features); the head is
longtail's `classifier` (model.classifier: linear or cosine) for the dataset's classes. Weights
(`model.pretrained`):
- `hub`: timm's own pretrained weights, downloaded through timm's cache (Hugging Face hub) when the
  machine is online; offline, one line says how to pass a local file instead;
- a local file: a timm state_dict (`.pth`/`.bin` from torch.save, or `.safetensors`), whose classifier
  is dropped and re-initialised (kept with model.pretrained_classifier when its shape fits), or a
  longtail checkpoint of the same timm model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError, one_line
from ..input_spec import BackboneInput
from .cosine import BackboneClassifier
from .libraries import optional_import, unknown_model
from .pretrained import HEAD, load_pretrained, read_tensors

PREFIX = "timm/"
BACKBONE = "backbone."


def _timm() -> Any:
    return optional_import("timm", "model.name timm/...", "timm")


def check_timm_name(name: str) -> None:
    """One line, with timm's closest names, for a name timm does not know."""
    timm = _timm()
    if not timm.is_model(name):
        raise unknown_model("timm", name, timm.list_models(), "timm.list_models()")


def timm_preprocessing(name: str) -> BackboneInput:
    """The input timm's pretrained weights of `name` expect: size, interpolation, mean/std, and the evaluation
    crop_pct of their pretrained_cfg (0.875 to 1.0; evaluation resizes the short side to floor(S / crop_pct))."""
    timm = _timm()
    check_timm_name(name)
    pre = timm.models.get_pretrained_cfg(name)
    if pre is None:  # a network without a default weight tag (e.g. one registered by hand): ImageNet's statistics
        from timm.data import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return BackboneInput(None, "bilinear", tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), float(DEFAULT_CROP_PCT))
    return BackboneInput(int(pre.input_size[-1]), pre.interpolation or "bilinear", tuple(float(v) for v in pre.mean),
                         tuple(float(v) for v in pre.std), float(pre.crop_pct))


def _hub_backbone(timm: Any, name: str, in_channels: int) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_channels)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, no weights for this name: one answer for the user
        raise LongtailError(
            f"could not fetch timm's pretrained weights for '{name}' ({type(exc).__name__}: {one_line(exc, 100)}); "
            f"offline, download them on a machine with internet (timm.create_model('{name}', pretrained=True) "
            "fills the Hugging Face cache, ~/.cache/huggingface) or save its state_dict and pass model.pretrained=FILE"
        ) from None


class TimmClassifier(BackboneClassifier):
    """{'logits': (B, C), 'features': (B, D)} of a timm backbone and longtail's classifier."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, classifier: str = "linear", scale: float = 30.0,
                 hub: bool = False):
        timm = _timm()
        check_timm_name(name)
        if hub:
            backbone = _hub_backbone(timm, name, in_channels)
        else:
            backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        super().__init__(backbone, int(backbone.num_features), num_classes, classifier, scale)
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        self.timm_head: Union[str, tuple, None] = cfg.get("classifier")


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
    spec: Optional[str] = cfg.pretrained
    if spec is not None and spec.split(":", 1)[0] in ("torchvision", "openai"):
        raise LongtailError(f"model.pretrained '{spec}' is not for timm/... models; use 'hub' (timm's weights) or a local weights file")
    model = TimmClassifier(cfg.name[len(PREFIX):], num_classes, in_channels, cfg.classifier, cfg.scale, hub=spec == "hub")
    if spec is not None and spec != "hub":
        load_pretrained(model, cfg, timm_names(read_weights(spec), model.timm_head))
    return model
