"""CLIP image towers through open_clip, an optional extra (`pip install "longtail[clip]"`):
`model.name: clip/<name>` for any architecture of `open_clip.list_models()`, e.g. `clip/ViT-B-16`
(Radford et al. 2021, "Learning transferable visual models from natural language supervision").

The backbone is CLIP's image tower (`visual`). For a ViT tower the head sees its *pre-projection* feature,
ln_post of the class token (width 768 for ViT-B/16), as LIFT's released code classifies it (Shi et al., ICML
2024, models/peft_vit.py, `x = self.ln_post(x)`, the projection unused); the projection P (D_v x D_t) is
kept aside, out of the parameters, to map text embeddings into that space: row c of a text-initialised head
is normalize(normalize(t_c) P^T) (LIFT's trainer.py `init_head_text_feat`). Towers without a separate
projection (ResNets: attention pooling) give their embedding as it is.

`model.finetune: zero_shot` keeps the projection and makes the head CLIP's own: logits =
exp(logit_scale) * cos(P^T f, t_c), t_c the text embedding of `model.prompt` for class c (LIFT's
`ZeroShotCLIP`).

The text tower is kept outside the model's parameters and state_dict, only to compute the text embeddings
(head_init.py); it is not trained, not saved and not exported.

Weights (`model.pretrained`): `openai` or another open_clip tag of the architecture
(`open_clip.list_pretrained_tags_by_model(name)`), `hub` (the architecture's first tag, `openai` when it
has one), downloaded through open_clip's cache when online; or a local file of the whole CLIP model
(image and text towers, an open_clip or OpenAI checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError, one_line
from ..input_spec import BackboneInput
from .cosine import BackboneClassifier
from .libraries import optional_import, unknown_model

PREFIX = "clip/"
PROMPT = "a photo of a {}."  # LIFT's (and CLIP's zero-shot) single prompt per class name


def _open_clip() -> Any:
    return optional_import("open_clip", "model.name clip/...", "clip")


def check_clip_name(name: str) -> None:
    """One line, with open_clip's closest names, for a name open_clip does not know."""
    known = _open_clip().list_models()
    if name not in known:
        raise unknown_model("open_clip", name, known, "open_clip.list_models()")


def clip_preprocessing(name: str) -> BackboneInput:
    """The input CLIP's image tower expects: its size, bicubic resizing, OpenAI's (or the config's) mean/std, and
    crop_pct 1.0: open_clip's evaluation transform resizes the short side to the crop size, then centre-crops."""
    open_clip = _open_clip()
    check_clip_name(name)
    config = open_clip.get_model_config(name) or {}
    pre = config.get("preprocess_cfg", {})
    size = config.get("vision_cfg", {}).get("image_size", 224)
    return BackboneInput(
        image_size=int(size if isinstance(size, int) else size[-1]),
        interpolation=pre.get("interpolation", "bicubic"),
        mean=tuple(float(v) for v in pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in pre.get("std", open_clip.OPENAI_DATASET_STD)),
        crop_pct=1.0,
    )


def _weights_argument(name: str, spec: Optional[str]) -> Optional[str]:
    """What open_clip.create_model takes as `pretrained`: a tag or a file path (None: random weights)."""
    if spec is None:
        return None
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(name)
    if spec == "hub":
        if not tags:
            raise LongtailError(f"open_clip has no pretrained weights for '{name}'; pass model.pretrained=FILE")
        return "openai" if "openai" in tags else tags[0]
    if spec in tags:
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    if spec.split(":", 1)[0] == "torchvision":
        raise LongtailError(f"model.pretrained '{spec}' is for torchvision models; for clip/... give an open_clip tag, 'hub' or a file")
    raise LongtailError(
        f"model.pretrained '{spec}' is neither a file nor an open_clip tag of '{name}'; "
        f"choose one of hub, {', '.join(tags[:6]) or '(no tags)'} or give a weights file"
    )


class TextTower:
    """CLIP's text encoder and tokenizer, held outside the classifier's modules (not trained, not saved).
    `image_proj`: the image tower's projection P (D_v x D_t) when the head sees pre-projection features."""

    def __init__(self, clip: nn.Module, tokenizer: Any, prompt: str = PROMPT, image_proj: Optional[torch.Tensor] = None):
        self.clip, self.tokenizer, self.prompt, self.image_proj = clip, tokenizer, prompt, image_proj

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        """(len(prompts), D_t) unit-norm text embeddings, float32."""
        self.clip.to(device)
        tokens = self.tokenizer(list(prompts)).to(device)
        return nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def to_head_space(self, text: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings (C, D_t) -> unit rows in the head's feature space: normalize(t P^T) when the head
        sees pre-projection features (D_v), else t unchanged."""
        if self.image_proj is None:
            return text
        return nn.functional.normalize(text @ self.image_proj.to(text).t(), dim=-1)


class ClipClassifier(BackboneClassifier):
    """{'logits': (B, C), 'features': (B, D)}: CLIP's image tower (pre-projection for ViTs, see the module
    docstring) and longtail's classifier; `zero_shot`: the projected embedding and CLIP's own cosine head."""

    def __init__(self, clip: nn.Module, tokenizer: Any, num_classes: int, classifier: str = "linear",
                 scale: float = 30.0, zero_shot: bool = False, prompt: str = PROMPT):
        visual = clip.visual
        proj = getattr(visual, "proj", None)
        pre_projection = isinstance(proj, torch.Tensor) and not zero_shot
        if pre_projection:
            visual.proj = None  # open_clip's VisionTransformer then returns ln_post(class token)
            dim = int(proj.shape[0])
        else:
            dim = int(visual.output_dim)
        if zero_shot:  # CLIP's head: cosine at its learned temperature, rows set from the text (head_init.py)
            classifier, scale = "cosine", float(clip.logit_scale.detach().exp())
        super().__init__(visual, dim, num_classes, classifier, scale)
        self.text_tower = TextTower(clip, tokenizer, prompt, proj.detach() if pre_projection else None)


def create_clip(name: str, pretrained: Optional[str] = None) -> nn.Module:
    """open_clip's CLIP model `name` with the weights `pretrained` (None: random), failures as one line."""
    open_clip = _open_clip()
    check_clip_name(name)
    weights = _weights_argument(name, pretrained)
    try:
        return open_clip.create_model(name, pretrained=weights)
    except RuntimeError as exc:  # load_state_dict of another architecture's file
        raise LongtailError(
            f"model.pretrained '{pretrained}' does not fit clip/{name} ({one_line(exc, 120)}); "
            "it was saved for another architecture"
        ) from None
    except Exception as exc:  # noqa: BLE001 - offline, proxy, corrupt file: one answer for the user
        raise LongtailError(
            f"could not load open_clip's weights '{pretrained}' for '{name}' ({type(exc).__name__}: {one_line(exc, 100)}); "
            "offline, download them where there is internet (open_clip.create_model(name, pretrained=tag) fills "
            "its cache) or pass model.pretrained=FILE"
        ) from None


def clip_from_cfg(cfg: ModelConfig, num_classes: int, in_channels: int) -> ClipClassifier:
    """The MODELS constructor of `clip/<name>`."""
    name = cfg.name[len(PREFIX):]
    if in_channels != 3:
        check_clip_name(name)
        raise LongtailError(f"clip/{name} takes RGB images; the dataset has {in_channels}-channel images")
    clip = create_clip(name, cfg.pretrained)
    return ClipClassifier(clip, _open_clip().get_tokenizer(name), num_classes, cfg.classifier, cfg.scale,
                          zero_shot=cfg.finetune == "zero_shot", prompt=cfg.prompt)
