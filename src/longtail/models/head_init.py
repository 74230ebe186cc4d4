"""How the classifier starts (`model.head_init`), applied once to a fresh run before its first step.

    random       the classifier's own initialisation
    class_means  row c = mu_c / ||mu_c||, mu_c = mean of f(x) over the training images of class c (one pass, the
                 evaluation transform, the model in eval mode; a class mean is taken of raw, not normalised, features)
    text         row c = t_c / ||t_c||, t_c = CLIP's text embedding of `model.prompt` (default "a photo of a
                 {name c}.") (clip/ models; LIFT's semantic-aware initialisation, Shi et al. ICML 2024);
                 underscores in a class name are read as spaces (CIFAR-100's 'maple_tree'). A ViT head on
                 pre-projection features gets normalize(t_c P^T), P the image projection (LIFT's trainer.py
                 `init_head_text_feat`: `text_features @ image_encoder.proj.t()`, normalised again)

Rows are unit vectors: a cosine classifier then starts as s * cos(w_c, f), LIFT's head (s = model.scale); a linear
classifier gets them as weights with a zero bias.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import catalog
from ..catalog import register_head_init
from ..errors import LongtailError
from .clip_models import PROMPT


@torch.no_grad()
def class_mean_features(model: nn.Module, batches: Any, num_classes: int, device: torch.device) -> torch.Tensor:
    """(C, D) mean feature of each class over `batches` (normalised (x, y) batches), accumulated in float64."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for x, y in batches:
        features = model(x.to(device))["features"].double()
        y = y.to(device)
        if sums is None:
            sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, y, features)
        counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    model.train(was_training)
    if sums is None or bool((counts == 0).any()):
        empty = [] if sums is None else torch.nonzero(counts == 0).flatten().tolist()
        raise LongtailError(f"model.head_init=class_means needs a training image of every class; classes {empty[:8]} have none")
    return sums / counts[:, None]


def prompts(template: str, class_names: list[str]) -> list[str]:
    """The prompt of each class name, '_' read as a space (LIFT's `get_tokenized_prompts`)."""
    return [template.format(name.replace("_", " ")) for name in class_names]


def text_features(model: nn.Module, class_names: list[str], device: torch.device) -> torch.Tensor:
    """(C, D) unit rows of the head's feature space from the text embeddings of the model's prompt for each class
    name (the model's CLIP text tower; mapped through the image projection for pre-projection heads)."""
    tower = getattr(model, "text_tower", None)
    if tower is None:
        raise LongtailError(f"model.head_init=text needs a text tower (a clip/... model); {type(model).__name__} has none: "
                            "use model.head_init=class_means")
    return tower.to_head_space(tower(prompts(getattr(tower, "prompt", PROMPT), class_names), device))


def set_rows(classifier: nn.Module, rows: torch.Tensor) -> None:
    """Write unit rows into the classifier's weight (and zero its bias)."""
    weight = classifier.weight
    if tuple(weight.shape) != tuple(rows.shape):
        raise LongtailError(f"model.head_init gives {tuple(rows.shape)} rows for a classifier of shape {tuple(weight.shape)}; "
                            "the backbone's features do not match the head")
    with torch.no_grad():
        weight.copy_(F.normalize(rows.to(weight), dim=1))
        bias = getattr(classifier, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()


def _classifier(model: nn.Module, name: str) -> nn.Module:
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module) or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise LongtailError(f"model.head_init={name} needs a model with a single head `classifier`; {type(model).__name__} has none: "
                            "use model.head_init=random")
    return head


# each registered under its model.head_init name: function(model, context) -> (C, D) rows, or None for the
# classifier's own initialisation; context: batches (a callable giving the training set in evaluation form),
# num_classes, class_names (None: no names), device
@register_head_init("random")
def _random(model: nn.Module, ctx: dict[str, Any]) -> None:
    return None


@register_head_init("class_means")
def _class_means(model: nn.Module, ctx: dict[str, Any]) -> torch.Tensor:
    _classifier(model, "class_means")
    return class_mean_features(model, ctx["batches"](), ctx["num_classes"], ctx["device"])


@register_head_init("text")
def _text(model: nn.Module, ctx: dict[str, Any]) -> torch.Tensor:
    _classifier(model, "text")
    names = ctx["class_names"]
    if names is None:
        raise LongtailError("model.head_init=text needs class names, and this dataset gives only class indices; name the "
                            "classes (a folder dataset's folder names, or a CSV of names) or use model.head_init=class_means")
    return text_features(model, names, ctx["device"])


def initialise_head(model: nn.Module, name: str, context: dict[str, Any]) -> None:
    """Apply `model.head_init` (nothing for 'random')."""
    rows = catalog.get("head_init", name).obj(model, context)
    if rows is not None:
        set_rows(_classifier(model, name), rows)
