"""Decoupled training (Kang et al. 2020, "Decoupling representation and classifier"): keep a
pretrained backbone fixed and train only the linear head `model.classifier`.

Frozen parts get no gradients and stay in eval mode while training, so their BatchNorm layers use
(and keep) the pretrained running statistics instead of re-estimating them on re-sampled batches.
"""

from __future__ import annotations

from torch import nn

from ..errors import LongtailError

FROZEN = "longtail_frozen"  # attribute marking a module that `train_mode` keeps in eval mode


def freeze_backbone(model: nn.Module) -> int:
    """Freeze every parameter outside `model.classifier`; returns the number of trainable parameters left."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise LongtailError(
            f"model.freeze_backbone needs a model with a single linear head `classifier`; {type(model).__name__} has none"
        )
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)
    mark_frozen(model)
    return sum(p.numel() for p in head.parameters())


def mark_frozen(model: nn.Module) -> None:
    """Mark every module that holds parameters or buffers but trains none of its parameters, so that
    `train_mode` keeps it in eval mode (BatchNorm statistics and dropout of frozen parts stay as pretrained)."""
    for m in model.modules():
        params = list(m.parameters())
        if (params or any(True for _ in m.buffers())) and not any(p.requires_grad for p in params):
            setattr(m, FROZEN, True)


def train_mode(model: nn.Module) -> None:
    """model.train(), except for modules `freeze_backbone` marked, which stay in eval mode."""
    model.train()
    for m in model.modules():
        if getattr(m, FROZEN, False):
            m.eval()
